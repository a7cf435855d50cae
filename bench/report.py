"""Markdown tables for the benchmarks: each row says how many runs its figure is the median of, and a
ratio with a goal says whether it met it."""

from __future__ import annotations

import argparse
import logging
import operator
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

GOALS = {"≥": operator.ge, "≤": operator.le, "<": operator.lt, ">": operator.gt}


@dataclass(frozen=True)
class Row:
    """One measure: its runs and unit, and for a ratio the row it is compared with (itself for the baseline)
    and the goal the ratio should meet ("≥ 0.95", "≤ 0.1")."""

    measure: str
    runs: Sequence[float]
    unit: str = ""
    digits: int = 2
    compared_with: Row | None = None
    goal: str = ""
    baseline: bool = False

    @property
    def median(self) -> float:
        return statistics.median(self.runs)

    @property
    def ratio(self) -> float | None:
        if self.baseline:
            return 1.0
        return None if self.compared_with is None else self.median / self.compared_with.median

    def met(self) -> str:
        """"yes", "**no**", or "" for a row without a goal."""
        if not self.goal or self.ratio is None:
            return ""
        sign, bound = self.goal.split()
        return "yes" if GOALS[sign](round(self.ratio, 3), float(bound)) else "**no**"

    def cells(self) -> list[str]:
        spread = f"{min(self.runs):.{self.digits}f}–{max(self.runs):.{self.digits}f}" if len(self.runs) > 1 else ""
        ratio = "" if self.ratio is None else f"{self.ratio:.3f}"
        return [self.measure, f"{self.median:.{self.digits}f}{self.unit}", spread, str(len(self.runs)), ratio,
                self.goal, self.met()]


def print_table(title: str, rows: Sequence[Row]) -> None:
    """The rows as a markdown table under `title`; a row that misses its goal says so in bold."""
    print(f"\n{title}\n")
    print("| Measure | Median | Range of runs | Runs | Ratio | Goal | Met |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row.cells()) + " |")


def demo_arguments(doc: str) -> argparse.Namespace:
    """The options of a benchmark of the demo model (where it is kept, how many runs), warnings logged."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "mlx-gradio-bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    return args
