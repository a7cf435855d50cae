"""Per-conversation KV caches, so a new turn prefills only the tokens the cache does not hold."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 8


@dataclass
class CachedPrompt:
    """A model cache, the exact tokens it holds in order, and how many leading messages the prompt left out.

    `model` is the folder of the model it belongs to; `saved` says the file on disk holds exactly this
    (prompt_files.py).
    """

    tokens: list[int]
    cache: Any
    dropped: int = 0
    model: str = ""
    saved: bool = False


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def cache_nbytes(cache: Any) -> int:
    """Bytes a cache holds: mlx-lm's list of layer caches, or mlx-vlm's state that wraps one."""
    layers = getattr(cache, "cache", cache)
    if not isinstance(layers, (list, tuple)):
        return 0
    return sum(int(getattr(layer, "nbytes", 0) or 0) for layer in layers)


class ConversationCaches:
    """The caches of the most recently used conversations, bounded by count and by bytes.

    The least recently used is dropped first (handed to `on_evict`, which may keep it on disk);
    a cache larger than the whole budget is not kept.
    """

    def __init__(self, limit: int = DEFAULT_LIMIT, budget_bytes: int | None = None,
                 on_evict: Callable[[str, CachedPrompt], None] | None = None) -> None:
        self.limit = limit
        self.budget_bytes = budget_bytes
        self.on_evict = on_evict
        self._entries: OrderedDict[str, tuple[CachedPrompt, int]] = OrderedDict()

    def take(self, conversation_id: str) -> CachedPrompt | None:
        """Remove and return a conversation's cache (it is put back once the reply is done)."""
        entry = self._entries.pop(conversation_id, None)
        return entry[0] if entry else None

    def put(self, conversation_id: str, entry: CachedPrompt) -> None:
        """Keep a conversation's cache, evicting the least recently used beyond the limits."""
        self._entries[conversation_id] = (entry, cache_nbytes(entry.cache))
        self._entries.move_to_end(conversation_id)
        self._evict()

    def set_budget(self, budget_bytes: int | None) -> None:
        """Change the byte budget, evicting at once if the caches now hold more."""
        self.budget_bytes = budget_bytes
        self._evict()

    @property
    def nbytes(self) -> int:
        """Bytes all kept caches hold."""
        return sum(size for _, size in self._entries.values())

    def nbytes_of(self, model: str) -> int:
        """Bytes the caches of one model hold."""
        return sum(size for entry, size in self._entries.values() if entry.model == model)

    def of_model(self, model: str) -> list[CachedPrompt]:
        """The caches of one model, least recently used first."""
        return [entry for entry, _ in self._entries.values() if entry.model == model]

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.limit
                                 or (self.budget_bytes is not None and self.nbytes > self.budget_bytes)):
            evicted, (entry, size) = self._entries.popitem(last=False)
            log.debug("Dropped the prompt cache of conversation %s (%d bytes)", evicted, size)
            if self.on_evict is not None:
                self.on_evict(evicted, entry)

    def unsaved(self) -> list[str]:
        """Conversations whose cache differs from its file, most recently used first."""
        return [cid for cid, (entry, _) in reversed(self._entries.items()) if not entry.saved]

    def get(self, conversation_id: str) -> CachedPrompt | None:
        """A conversation's cache, left in place."""
        entry = self._entries.get(conversation_id)
        return entry[0] if entry else None

    def clear(self, model: str | None = None) -> None:
        """Drop every cache, or those of one `model` (it is unloaded), each through `on_evict`."""
        for conversation_id in [cid for cid, (entry, _) in self._entries.items() if model in (None, entry.model)]:
            entry, _ = self._entries.pop(conversation_id)
            if self.on_evict is not None:
                self.on_evict(conversation_id, entry)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, conversation_id: str) -> bool:
        return conversation_id in self._entries
