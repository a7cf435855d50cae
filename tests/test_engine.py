"""The engine thread with the real demo model: answers, stop, prompt-cache reuse, queueing, unload."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from mlx_gradio.errors import ImageNeedsVisionModel, ModelNotFound
from mlx_gradio.jobs import ChatMessage, ChatRequest, GenerationStats, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_tokens=12)
FRANCE = ChatMessage("user", "What is the capital of France?")


def ask(engine, conversation_id: str, model: Path, messages, params=GREEDY) -> tuple[str, GenerationStats]:
    """Run one reply to the end; return its text and stats."""
    generation = engine.generate(ChatRequest(conversation_id, str(model), tuple(messages), params))
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
        entry = engine._worker.caches._entries["warm"]
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
    from mlx_gradio.engine import Engine

    own = Engine()
    story = ChatMessage("user", "Write a long story about a dragon.")
    events = own.generate(ChatRequest("bye", str(demo_model), (story,), SamplingParams(0.0, max_tokens=500))).events()
    next(event for event in events if event.text)
    started = time.monotonic()
    own.shutdown()
    assert time.monotonic() - started < 10
    assert not own._thread.is_alive()
    assert [event for event in events][-1].stats.finish_reason == "stopped"
