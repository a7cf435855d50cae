"""Several models in the engine at once: loaded on demand within a memory budget, the least recently used one
unloaded to make room, pinned ones kept, each unloaded after its own idle time (tiny random models)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mlx_gradio.engine.jobs import ChatMessage, ChatRequest, SamplingParams
from mlx_gradio.engine.thread import Engine
from mlx_gradio.errors import ModelTooLarge
from mlx_gradio.models.folders import folder_size

SHORT = SamplingParams(temperature=0.0, max_tokens=4)
HELLO = (ChatMessage("user", "Hello"),)


def ask(engine: Engine, conversation_id: str, model: Path):
    """One short reply; its stats."""
    stats = None
    for event in engine.generate(ChatRequest(conversation_id, str(model), HELLO, SHORT)).events():
        stats = event.stats or stats
    return stats


def loaded(engine: Engine) -> list[str]:
    """The loaded models' folder names, the most recently used first."""
    return [Path(m.path).name for m in engine.status().models]


def wait_until(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture
def three(tiny_llama: Path, tiny_thinking: Path, tiny_tool_llama: Path) -> list[Path]:
    return [tiny_llama, tiny_thinking, tiny_tool_llama]


def test_two_models_stay_loaded_and_the_least_recently_used_makes_room_for_a_third(three: list[Path]):
    a, b, c = three
    sizes = [folder_size(m) for m in three]
    # Room for two models and their caches, not for three.
    engine = Engine(memory_budget=sizes[0] + sizes[1] + int(sizes[2] * 0.75))
    try:
        ask(engine, "a", a)
        ask(engine, "b", b)
        assert loaded(engine) == [b.name, a.name]
        wait_until(lambda: all(m.conversations == 1 for m in engine.status().models),
                   "each model's conversation is not shown")  # the cache is kept just after the last event
        shown = {Path(m.path).name: m for m in engine.status().models}
        assert shown[a.name].weight_bytes > 0 and shown[a.name].cache_bytes > 0
        assert shown[a.name].context_tokens > len("Hello")
        ask(engine, "a", a)  # used again: now b is the least recently used
        ask(engine, "c", c)
        assert loaded(engine) == [c.name, a.name]
        wait_until(lambda: engine.status().cached_conversations == 2, "b's cache did not go with b")
        assert sum(m.weight_bytes + m.cache_bytes for m in engine.status().models) <= engine.status().memory_budget
    finally:
        engine.shutdown()


def test_a_pinned_model_stays_and_a_model_that_cannot_fit_is_refused_with_the_sizes(three: list[Path]):
    a, b, c = three
    sizes = [folder_size(m) for m in three]
    engine = Engine(memory_budget=sizes[0] + sizes[1] + int(sizes[2] * 0.75))
    try:
        engine.set_pinned({str(a)}).result()
        ask(engine, "a", a)
        ask(engine, "b", b)
        ask(engine, "c", c)  # a is the least recently used, but pinned: b goes
        assert loaded(engine) == [c.name, a.name]

        engine.set_memory_budget(int(sizes[0] * 1.5)).result()  # lowered: room for the pinned one only
        assert loaded(engine) == [a.name]
        with pytest.raises(ModelTooLarge, match=rf"pinned models hold .*{a.name}"):
            ask(engine, "b", b)
        engine.set_memory_budget(sizes[1] // 2).result()
        with pytest.raises(ModelTooLarge, match=r"needs \d+ MB, more than the \d+ MB the engine may use"):
            ask(engine, "b", b)
        assert loaded(engine) == [a.name]  # a refusal unloads nothing
    finally:
        engine.shutdown()


def test_a_conversation_that_changes_models_never_reads_the_other_models_cache(tiny_llama: Path, tmp_path: Path):
    from mlx_gradio.testing.tiny_llama import build_tiny_llama

    a, b = tiny_llama, build_tiny_llama(tmp_path / "other-weights", seed=1)  # the same tokenizer and template
    engine = Engine()
    try:
        first = ask(engine, "same", a)
        other = ask(engine, "same", b)  # the same conversation and prompt on another model: read afresh
        assert other.cached_tokens == 0 and first.prompt_tokens == other.prompt_tokens
        again = ask(engine, "same", b)
        assert again.cached_tokens > 0
        assert loaded(engine) == [b.name, a.name]  # without a budget both stay
    finally:
        engine.shutdown()


def test_each_model_is_unloaded_after_its_own_idle_time_and_a_pinned_one_stays(three: list[Path]):
    a, b, _ = three
    engine = Engine()
    try:
        ask(engine, "a", a)
        ask(engine, "b", b)
        engine.set_pinned({str(b)}).result()
        engine.set_idle_unload(1.0)
        wait_until(lambda: loaded(engine) == [b.name], "the idle model was not unloaded")
        status = engine.status()
        assert a.name in status.message and "unloaded while idle" in status.message
        assert status.state == "ready" and status.model_path == str(b)
        engine.set_pinned(set()).result()
        wait_until(lambda: not loaded(engine), "the unpinned model was not unloaded")
        assert engine.status().state == "empty"
    finally:
        engine.shutdown()


def test_a_request_sets_its_models_own_idle_time(three: list[Path]):
    a, b, _ = three
    engine = Engine()  # the engine's own setting: never unload while idle
    try:
        for event in engine.generate(ChatRequest("a", str(a), HELLO, SHORT, idle_unload_s=1.0)).events():
            pass
        ask(engine, "b", b)
        wait_until(lambda: loaded(engine) == [b.name], "the model with its own idle time was not unloaded")
    finally:
        engine.shutdown()
