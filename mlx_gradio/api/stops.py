"""Stop sequences: text is passed on as it comes, except the end that may be the start of one."""

from __future__ import annotations


class StopText:
    """Cuts a stream of text at the first stop sequence, holding back what may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop sequence that ended the text

    def feed(self, piece: str) -> str:
        """The text that can be passed on now; after a stop sequence, nothing more."""
        if self.stopped or not self.stops:
            return "" if self.stopped else piece
        text = self.held + piece
        found = [(i, stop) for stop in self.stops if (i := text.find(stop)) >= 0]
        if found:
            at, self.matched = min(found)
            self.stopped, self.held = True, ""
            return text[:at]
        keep = max((n for stop in self.stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """What was held back, once the reply has ended without a stop sequence."""
        held, self.held = self.held, ""
        return "" if self.stopped else held
