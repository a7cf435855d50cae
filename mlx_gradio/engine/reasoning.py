"""Reasoning models: split a streamed reply into its thinking block and its answer.

Qwen3, DeepSeek-R1 distills and their kind write `<think>…</think>` (or their own markers)
before the answer; some chat templates open the block in the generation prompt already, so
the reply starts inside it. Only a block at the very start of a reply counts: a model that
writes the marker in the middle of an answer is quoting it.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START, THINK_END = "<think>", "</think>"


def partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (the marker may still be arriving)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def reply_text(reasoning: str, answer: str, start: str, end: str, opened: bool) -> str:
    """A reply as the model wrote it, markers included (to write on after it); `opened`: the prompt opened the block."""
    if not reasoning:
        return answer
    text = ("" if opened else start) + reasoning
    return f"{text}{end}\n\n{answer}" if answer else text


def opens_thinking(prompt_tail: str, start: str = THINK_START, end: str = THINK_END) -> bool:
    """Whether a prompt ends inside a thinking block (its template opened one for the reply)."""
    return prompt_tail.rfind(start) > prompt_tail.rfind(end)


@dataclass
class ThinkSplitter:
    """Feed reply text piece by piece; get back (reasoning, answer) text for each piece."""

    start: str = THINK_START
    end: str = THINK_END
    thinking: bool = False  # inside the thinking block right now
    closed: bool = False  # the block ended (or the answer began): no second one
    _pending: str = ""  # text that may be the beginning of a marker
    _trim: bool = False  # the block just ended: the blank lines before the answer go

    def feed(self, text: str) -> tuple[str, str]:
        """Split the next piece of the reply."""
        buffer = self._pending + text
        self._pending = ""
        reasoning, answer = [], []
        while buffer:
            if self.thinking:
                at = buffer.find(self.end)
                if at < 0:
                    keep = partial_suffix(buffer, self.end)
                    reasoning.append(buffer[: len(buffer) - keep])
                    self._pending = buffer[len(buffer) - keep:]
                    break
                reasoning.append(buffer[:at])
                buffer = buffer[at + len(self.end):]
                self.thinking, self.closed, self._trim = False, True, True
                continue
            stripped = buffer.lstrip()
            if self._trim:
                buffer, self._trim = stripped, not stripped
            if self.closed or stripped and not self.start.startswith(stripped[: len(self.start)]):
                self.closed = True
                answer.append(buffer)
                break
            if stripped.startswith(self.start):
                buffer = stripped[len(self.start):]
                self.thinking = True
                continue
            self._pending = buffer  # only whitespace or the start of the marker so far
            break
        return "".join(reasoning), "".join(answer)

    def flush(self) -> tuple[str, str]:
        """The text held back at the end of the reply."""
        rest, self._pending = self._pending, ""
        return (rest, "") if self.thinking else ("", rest)
