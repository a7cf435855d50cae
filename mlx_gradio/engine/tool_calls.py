"""Tool calls in a reply: the text between a model's tool-call markers, parsed by mlx-lm's parser for it."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .reasoning import partial_suffix

log = logging.getLogger(__name__)


@dataclass
class ToolCallSplitter:
    """Feed answer text piece by piece; get back the text outside the markers and the calls completed."""

    start: str
    end: str
    parse: Callable[[str], Any]  # mlx-lm's parser of one call's text (a dict, or a list of them)
    _inside: bool = False
    _held: str = ""  # a call's text so far, or what may be the beginning of a marker

    def feed(self, text: str) -> tuple[str, list[dict]]:
        buffer, self._held = self._held + text, ""
        outside, calls = [], []
        while buffer:
            if self._inside:
                at = buffer.find(self.end)
                if at < 0:
                    self._held = buffer
                    break
                calls += self._parsed(buffer[:at])
                buffer, self._inside = buffer[at + len(self.end):], False
                continue
            at = buffer.find(self.start)
            if at < 0:
                keep = partial_suffix(buffer, self.start)
                outside.append(buffer[: len(buffer) - keep])
                self._held = buffer[len(buffer) - keep:]
                break
            outside.append(buffer[:at])
            buffer, self._inside = buffer[at + len(self.start):], True
        return "".join(outside), calls

    def flush(self) -> tuple[str, list[dict]]:
        """At the reply's end: a call cut off by max tokens is parsed if it can be, else dropped (logged)."""
        held, self._held = self._held, ""
        if self._inside:
            self._inside = False
            return "", self._parsed(held)
        return held, []

    def _parsed(self, text: str) -> list[dict]:
        try:
            parsed = self.parse(text)
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
            log.warning("A tool call could not be read (%s: %s); it was likely cut off: %r", type(exc).__name__,
                        exc, text[:200])
            return []
        calls = []
        for call in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                log.warning("A tool call without a name was left out: %r", call)
                continue
            arguments = call.get("arguments", {})
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    log.debug("A tool call's arguments are not JSON; passed on as text: %r", arguments[:200])
            calls.append({"id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}", "name": call["name"],
                          "arguments": arguments})
        return calls


def tool_splitter(tokenizer: Any, tools: tuple[dict, ...]) -> ToolCallSplitter | None:
    """A splitter for a request that offers tools to a model whose tokenizer knows its tool-call markers."""
    if not tools or not getattr(tokenizer, "has_tool_calling", False) or tokenizer.tool_parser is None:
        return None
    return ToolCallSplitter(tokenizer.tool_call_start, tokenizer.tool_call_end,
                            lambda text: tokenizer.tool_parser(text, list(tools)))
