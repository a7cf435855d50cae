"""Per-conversation KV caches, so a new turn prefills only the tokens the cache does not hold."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_LIMIT = 4


@dataclass
class CachedPrompt:
    """A model cache and the exact tokens it holds, in order."""

    tokens: list[int]
    cache: Any


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class ConversationCaches:
    """The caches of the most recently used conversations; the least recent is dropped first."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, CachedPrompt] = OrderedDict()

    def take(self, conversation_id: str) -> CachedPrompt | None:
        """Remove and return a conversation's cache (it is put back once the reply is done)."""
        return self._entries.pop(conversation_id, None)

    def put(self, conversation_id: str, entry: CachedPrompt) -> None:
        """Keep a conversation's cache, evicting the least recently used beyond the limit."""
        self._entries[conversation_id] = entry
        self._entries.move_to_end(conversation_id)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every cache (when the model changes)."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
