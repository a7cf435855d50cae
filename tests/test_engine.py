"""The engine thread with the real demo model: answers, stop, prompt-cache reuse, queueing, unload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mlx_gradio.engine.jobs import ChatMessage, ChatRequest, GenerationStats, SamplingParams
from mlx_gradio.errors import ImageNeedsVisionModel, ModelNotFound

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
FRANCE = ChatMessage("user", "What is the capital of France?")


def ask(engine, conversation_id: str, model: Path, messages, params=GREEDY,
        context_limit: int = 0) -> tuple[str, GenerationStats]:
    """Run one reply to the end; return its text and stats."""
    generation = engine.generate(ChatRequest(conversation_id, str(model), tuple(messages), params, context_limit))
    text, stats = "", None
    for event in generation.events():
        text += event.text
        stats = event.stats or stats
    return text, stats


def test_answers_the_france_question(engine, demo_model: Path):
    text, stats = ask(engine, "france", demo_model, [FRANCE])
    assert "Paris" in text
    assert stats.finish_reason == "stop"
    assert stats.prompt_tokens > 20 and stats.cached_tokens == 0
    assert stats.generation_tokens >= 5 and stats.generation_tps > 0 and stats.peak_memory_gb > 0
    assert 0 < stats.time_to_first_token < 120


def test_follow_up_reuses_the_cache_and_matches_a_cold_run(engine, demo_model: Path):
    first, _ = ask(engine, "warm", demo_model, [FRANCE])
    turn2 = [FRANCE, ChatMessage("assistant", first), ChatMessage("user", "And of Germany?")]
    warm, warm_stats = ask(engine, "warm", demo_model, turn2)
    cold, cold_stats = ask(engine, "cold", demo_model, turn2)
    assert warm == cold and "Berlin" in warm
    assert cold_stats.cached_tokens == 0
    # Everything of turn one (prompt and reply) came from the cache; only the new turn was prefilled.
    assert warm_stats.cached_tokens >= 40
    assert warm_stats.prefilled_tokens == warm_stats.prompt_tokens - warm_stats.cached_tokens
    assert warm_stats.prefilled_tokens < 20

    def cache_matches_tokens() -> bool:
        entry = engine._worker.caches.take("warm")
        engine._worker.caches.put("warm", entry)
        return entry.cache[0].offset == len(entry.tokens)

    assert engine.call(cache_matches_tokens).result()


def test_regenerate_trims_the_cache_back_to_the_prompt(engine, demo_model: Path):
    first, _ = ask(engine, "regen", demo_model, [FRANCE])
    again, stats = ask(engine, "regen", demo_model, [FRANCE])
    assert again == first
    assert stats.cached_tokens == stats.prompt_tokens - 1  # one token is always prefilled for logits


def test_stop_ends_the_reply_and_keeps_what_was_written(engine, demo_model: Path):
    params = SamplingParams(temperature=0.0, max_tokens=200)
    story = ChatMessage("user", "Write a long story about a dragon.")
    generation = engine.generate(ChatRequest("stop", str(demo_model), (story,), params))
    text, pieces, stats = "", 0, None
    for event in generation.events():
        if event.text:
            text += event.text
            pieces += 1
            if pieces == 3:
                generation.stop()
        stats = event.stats or stats
    assert stats.finish_reason == "stopped"
    assert 3 <= stats.generation_tokens < 10
    assert text.strip()
    # The conversation goes on normally after a stop.
    follow, follow_stats = ask(engine, "stop", demo_model, [story, ChatMessage("assistant", text), FRANCE])
    assert "Paris" in follow and follow_stats.cached_tokens > 0


def test_two_sessions_queue_without_mixing(engine, demo_model: Path):
    results = {}

    def session(name: str, question: str) -> None:
        results[name] = ask(engine, name, demo_model, [ChatMessage("user", question)])[0]

    threads = [threading.Thread(target=session, args=("fr", "What is the capital of France?")),
               threading.Thread(target=session, args=("de", "What is the capital of Germany?"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert "Paris" in results["fr"] and "Berlin" in results["de"]


def test_unknown_model_and_image_to_text_model_are_clear_errors(engine, demo_model: Path, images):
    with pytest.raises(ModelNotFound):
        ask(engine, "x", Path("/nonexistent/model"), [FRANCE])
    with pytest.raises(ImageNeedsVisionModel, match="reads text only"):
        ask(engine, "x", demo_model, [ChatMessage("user", "What is this?", (str(images["red"]),))])


def test_unload_gives_the_memory_back(engine, demo_model: Path):
    import mlx.core as mx

    engine.load(str(demo_model)).result()
    loaded = engine.call(mx.get_active_memory).result()
    engine.unload().result()
    unloaded = engine.call(mx.get_active_memory).result()
    assert engine.status().state == "empty"
    assert loaded - unloaded > 80_000_000  # the 115 MB of weights are gone


def test_shutdown_stops_a_running_reply_and_frees_the_thread(demo_model: Path):
    from mlx_gradio.engine.thread import Engine

    own = Engine()
    story = ChatMessage("user", "Write a long story about a dragon.")
    events = own.generate(ChatRequest("bye", str(demo_model), (story,), SamplingParams(0.0, max_tokens=500))).events()
    next(event for event in events if event.text)
    started = time.monotonic()
    own.shutdown()
    assert time.monotonic() - started < 10
    assert not own._thread.is_alive()
    assert [event for event in events][-1].stats.finish_reason == "stopped"


def test_stop_while_the_prompt_is_read_keeps_the_cache_consistent(demo_model: Path):
    from mlx_gradio.engine.thread import Engine

    own = Engine()  # a fresh engine reads a prompt in small chunks until it has measured the model's speed
    words = " ".join(f"item{i}" for i in range(24))
    question = [ChatMessage("user", f"Here is a list: {words}. Which item comes first?")]
    generation = own.generate(ChatRequest("prefill", str(demo_model), tuple(question), GREEDY))
    progress, stats = [], None
    for event in generation.events():
        if event.status.startswith("Reading the prompt:"):
            progress.append(event.status)
            generation.stop()
        stats = event.stats or stats
    assert progress, "no progress was reported while the prompt was read"
    assert stats.finish_reason == "stopped"
    # Here (about 9 prompt tokens/s) Stop lands between chunks of the read; a machine that finishes
    # the read before the Stop arrives stops at the first token instead. Either way the cache holds
    # what was read, and the follow-up reads only the rest and answers exactly like a cold run.
    read = int(progress[0].split(": ")[1].split(" / ")[0].replace(",", ""))
    resumed, resumed_stats = ask(own, "prefill", demo_model, question)
    cold, cold_stats = ask(own, "prefill-cold", demo_model, question)
    assert resumed == cold
    assert read <= resumed_stats.cached_tokens and cold_stats.cached_tokens == 0
    own.shutdown()


def test_the_prompt_read_ends_between_chunks_once_stop_is_asked():
    from mlx_gradio.engine.generation import PrefillProgress, PrefillStopped
    from mlx_gradio.engine.jobs import Generation

    generation = Generation(ChatRequest("x", "/m", ()))
    progress = PrefillProgress(generation, reused=10, total=110)
    progress(0, 100)
    progress(32, 100)  # mlx-lm calls this after each chunk it has read
    assert next(generation.events()).status == "Reading the prompt: 42 / 110 tokens"
    generation = Generation(ChatRequest("x", "/m", ()))
    progress = PrefillProgress(generation, reused=10, total=110)
    generation.stop()
    with pytest.raises(PrefillStopped) as stopped:
        progress(64, 100)
    assert stopped.value.processed == 64
    progress(100, 100)  # once the whole prompt is read, Stop acts between tokens instead


def test_any_load_failure_ends_in_the_error_state(engine, demo_model: Path, tmp_path: Path, monkeypatch):
    import shutil

    import mlx_lm

    from mlx_gradio.errors import ModelLoadFailed

    # Out of memory or a missing module during a load cannot be caused for real on this machine:
    # mlx-lm's `load` is replaced by one that raises them.
    for n, failure in enumerate([MemoryError("out of memory"), ImportError("No module named 'kernels'"),
                                 ZeroDivisionError("a bug in a model file")]):
        folder = tmp_path / f"model-{n}"
        shutil.copytree(demo_model, folder, symlinks=True)

        def fail(*_args, failure=failure, **_kwargs):
            raise failure

        monkeypatch.setattr(mlx_lm, "load", fail)
        with pytest.raises(ModelLoadFailed, match=type(failure).__name__):
            engine.load(str(folder)).result()
        status = engine.status()
        assert status.state == "error" and type(failure).__name__ in status.message
    monkeypatch.undo()
    engine.load(str(demo_model)).result()
    assert engine.status().state == "ready"


def test_a_long_chat_drops_its_oldest_turns_and_keeps_its_start_for_the_cache(engine, demo_model: Path):
    history = []
    for n in range(1, 9):
        history += [ChatMessage("user", f"What is {n} plus {n}?"),
                    ChatMessage("assistant", f"{n} plus {n} is {2 * n}.")]
    limit = 160
    params = SamplingParams(temperature=0.0, max_tokens=8)
    turn = [*history, FRANCE]
    text, stats = ask(engine, "long", demo_model, turn, params, context_limit=limit)
    assert stats.dropped_messages > 0 and stats.context_length == limit
    assert stats.prompt_tokens + stats.generation_tokens <= limit
    assert "Paris" in text
    follow = [*turn, ChatMessage("assistant", text), ChatMessage("user", "And of Germany?")]
    text, follow_stats = ask(engine, "long", demo_model, follow, params, context_limit=limit)
    assert follow_stats.dropped_messages == stats.dropped_messages  # the same start: the cache is reused
    assert follow_stats.cached_tokens > stats.prompt_tokens // 2 and "Berlin" in text


def test_a_message_longer_than_the_context_is_refused_before_reading(engine, demo_model: Path):
    from mlx_gradio.errors import ContextTooLong

    huge = ChatMessage("user", "word " * 2_000)
    generation = engine.generate(ChatRequest("huge", str(demo_model), (huge,), GREEDY, context_limit=512))
    statuses = []
    with pytest.raises(ContextTooLong, match="context holds 512"):
        for event in generation.events():
            statuses.append(event.status)
    assert not any(statuses)


def test_the_status_tells_memory_and_caches_and_an_idle_model_is_unloaded_then_loaded_again(demo_model: Path):
    from mlx_gradio.engine.thread import Engine

    engine = Engine()
    try:
        text, _ = ask(engine, "idle", demo_model, [FRANCE])
        status = engine.status()
        assert status.state == "ready" and status.memory_bytes > 50_000_000 and status.peak_bytes >= status.memory_bytes
        assert status.cached_conversations == 1 and status.cache_bytes > 0 and status.last_used > 0
        engine.set_idle_unload(1.0)
        deadline = time.monotonic() + 30
        while engine.status().state != "empty":
            assert time.monotonic() < deadline, "the idle model was not unloaded"
            time.sleep(0.1)
        idle = engine.status()
        assert "next message loads it again" in idle.message and idle.cached_conversations == 0
        assert idle.memory_bytes < status.memory_bytes / 2
        engine.set_idle_unload(0)
        again, _ = ask(engine, "idle-2", demo_model, [FRANCE])  # loads it again by itself
        assert again == text and engine.status().state == "ready"
    finally:
        engine.shutdown()
