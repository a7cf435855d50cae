"""Per-conversation prompt caches: bounded by count and by bytes, least recently used first out."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_gradio.engine.prompt_cache import CachedPrompt, ConversationCaches, cache_nbytes


@dataclass
class Layer:
    """Stands in for one layer of a KV cache: only its size matters to the budget."""

    nbytes: int


def entry(mb: int, layers: int = 2) -> CachedPrompt:
    return CachedPrompt([1, 2, 3], [Layer(mb * 1_000_000 // layers) for _ in range(layers)])


def test_the_least_recently_used_go_first_when_the_bytes_run_out():
    caches = ConversationCaches(limit=10, budget_bytes=30_000_000)
    for name in "abc":
        caches.put(name, entry(10))
    assert caches.nbytes == 30_000_000 and len(caches) == 3
    caches.put("a", caches.take("a"))  # "a" is used again: "b" is now the oldest
    caches.put("d", entry(10))
    assert "b" not in caches and all(name in caches for name in "acd")
    caches.set_budget(15_000_000)
    assert len(caches) == 1 and "d" in caches


def test_the_count_limit_still_applies_and_a_cache_too_big_for_the_budget_is_not_kept():
    caches = ConversationCaches(limit=2, budget_bytes=None)
    for name in "abc":
        caches.put(name, entry(1))
    assert "a" not in caches and len(caches) == 2
    small = ConversationCaches(limit=5, budget_bytes=5_000_000)
    small.put("huge", entry(50))
    assert len(small) == 0


def test_sizes_are_read_from_mlx_lm_lists_and_mlx_vlm_states():
    class State:  # mlx-vlm's PromptCacheState keeps the layer list in `.cache`
        cache = [Layer(7), Layer(5)]

    assert cache_nbytes([Layer(3), Layer(4)]) == 7 and cache_nbytes(State()) == 12 and cache_nbytes(None) == 0
