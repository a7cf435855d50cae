"""The engine thread: answers (the demo model), stop, prompt-cache reuse, queueing, unload (the tiny llama)."""

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


def test_follow_up_reuses_the_cache_and_matches_a_cold_run(engine, tiny_llama: Path):
    first, first_stats = ask(engine, "warm", tiny_llama, [FRANCE])
    turn2 = [FRANCE, ChatMessage("assistant", first), ChatMessage("user", "And of Germany?")]
    warm, warm_stats = ask(engine, "warm", tiny_llama, turn2)
    cold, cold_stats = ask(engine, "cold", tiny_llama, turn2)
    assert warm == cold and warm
    assert cold_stats.cached_tokens == 0
    # Everything of turn one (prompt and reply) came from the cache; only the new turn was prefilled.
    assert warm_stats.cached_tokens == first_stats.prompt_tokens + first_stats.generation_tokens
    assert warm_stats.prefilled_tokens == warm_stats.prompt_tokens - warm_stats.cached_tokens
    assert 0 < warm_stats.prefilled_tokens < warm_stats.prompt_tokens / 2

    def cache_matches_tokens() -> bool:
        entry = engine._worker.caches.take("warm")
        engine._worker.caches.put("warm", entry)
        return entry.cache[0].offset == len(entry.tokens)

    assert engine.call(cache_matches_tokens).result()


def test_regenerate_trims_the_cache_back_to_the_prompt(engine, tiny_llama: Path):
    first, _ = ask(engine, "regen", tiny_llama, [FRANCE])
    again, stats = ask(engine, "regen", tiny_llama, [FRANCE])
    assert again == first
    assert stats.cached_tokens == stats.prompt_tokens - 1  # one token is always prefilled for logits


def test_stop_ends_the_reply_and_keeps_what_was_written(engine, tiny_llama: Path):
    params = SamplingParams(temperature=0.0, max_tokens=8000)  # far more than any machine writes before Stop lands
    story = ChatMessage("user", "Write a long story about a dragon.")
    generation = engine.generate(ChatRequest("stop", str(tiny_llama), (story,), params))
    text, pieces, stats = "", 0, None
    for event in generation.events():
        if event.text:
            text += event.text
            pieces += 1
            if pieces == 3:
                generation.stop()
        stats = event.stats or stats
    assert stats.finish_reason == "stopped"
    assert 3 <= stats.generation_tokens < params.max_tokens
    assert text.strip()
    # The conversation goes on normally after a stop, from the cache of what was written.
    follow, follow_stats = ask(engine, "stop", tiny_llama, [story, ChatMessage("assistant", text), FRANCE])
    assert follow and follow_stats.finish_reason == "length"
    assert follow_stats.cached_tokens >= stats.prompt_tokens + stats.generation_tokens - 1


def test_two_sessions_queue_without_mixing(engine, tiny_llama: Path):
    questions = {"fr": "What is the capital of France?", "de": "What is the capital of Germany?"}
    alone = {name: ask(engine, f"{name}-alone", tiny_llama, [ChatMessage("user", q)])[0] for name, q in questions.items()}
    results = {}

    def session(name: str) -> None:
        results[name] = ask(engine, name, tiny_llama, [ChatMessage("user", questions[name])])[0]

    threads = [threading.Thread(target=session, args=(name,)) for name in questions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert alone["fr"] != alone["de"]
    assert results == alone  # each answer is the one its question gets alone: nothing of the other leaked in


def test_waiting_replies_take_turns_an_owners_first_then_one_client_after_another(engine, tiny_llama: Path):
    """One client with three replies waiting cannot keep another's one waiting behind them all, and an owner's
    reply goes first; a reply that waits is told how many are ahead."""
    engine.load(str(tiny_llama)).result(timeout=120)
    gate = threading.Event()
    busy = engine.call(gate.wait)  # the engine is busy with something else while the replies come in
    asked = [("gus", False), ("gus", False), ("gus", False), ("gia", False), ("ann", True)]
    generations = [engine.generate(ChatRequest(f"{client}-{n}", str(tiny_llama), (FRANCE,), GREEDY, client=client,
                                               first=first)) for n, (client, first) in enumerate(asked)]
    ended, statuses = [], {}

    def read(n: int) -> None:
        for event in generations[n].events():
            statuses.setdefault(n, event.status)
        ended.append(n)

    readers = [threading.Thread(target=read, args=(n,)) for n in range(len(asked))]
    for reader in readers:
        reader.start()
    gate.set()
    busy.result(timeout=60)
    for reader in readers:
        reader.join(timeout=300)
    assert [asked[n][0] for n in ended] == ["ann", "gus", "gia", "gus", "gus"]
    assert statuses[2] == "Waiting for the model: 2 replies ahead of this one…"
    assert statuses[1] == "Waiting for the model: 1 reply ahead of this one…"


def test_unknown_model_and_image_to_text_model_are_clear_errors(engine, tiny_llama: Path, images):
    with pytest.raises(ModelNotFound):
        ask(engine, "x", Path("/nonexistent/model"), [FRANCE])
    with pytest.raises(ImageNeedsVisionModel, match="reads text only"):
        ask(engine, "x", tiny_llama, [ChatMessage("user", "What is this?", (str(images["red"]),))])


def test_unload_gives_the_memory_back(engine, demo_model: Path):
    import mlx.core as mx

    engine.load(str(demo_model)).result()
    loaded = engine.call(mx.get_active_memory).result()
    engine.unload().result()
    unloaded = engine.call(mx.get_active_memory).result()
    assert engine.status().state == "empty"
    assert loaded - unloaded > 80_000_000  # the 115 MB of weights are gone


def test_shutdown_stops_a_running_reply_and_frees_the_thread(tiny_llama: Path):
    from mlx_gradio.engine.thread import Engine

    own = Engine()
    story = ChatMessage("user", "Write a long story about a dragon.")
    events = own.generate(ChatRequest("bye", str(tiny_llama), (story,), SamplingParams(0.0, max_tokens=8000))).events()
    next(event for event in events if event.text)
    started = time.monotonic()
    own.shutdown()
    assert time.monotonic() - started < 10
    assert not own._thread.is_alive()
    assert [event for event in events][-1].stats.finish_reason == "stopped"


def test_stop_while_the_prompt_is_read_keeps_the_cache_consistent(tiny_llama: Path):
    from mlx_gradio.engine.thread import Engine

    own = Engine()  # a fresh engine reads a prompt in small chunks until it has measured the model's speed
    words = " ".join(f"item{i}" for i in range(500))  # about 90 chunks of 32: Stop lands mid-read on any machine
    question = [ChatMessage("user", f"Here is a list: {words}. Which item comes first?")]
    generation = own.generate(ChatRequest("prefill", str(tiny_llama), tuple(question), GREEDY))
    progress, stats = [], None
    for event in generation.events():
        if event.status.startswith("Reading the prompt:"):
            progress.append(event.status)
            generation.stop()
        stats = event.stats or stats
    assert progress, "no progress was reported while the prompt was read"
    assert stats.finish_reason == "stopped" and stats.generation_tokens == 0  # stopped during the read
    # The cache holds what was read: the follow-up reads only the rest and answers exactly like a cold run.
    read = int(progress[0].split(": ")[1].split(" / ")[0].replace(",", ""))
    total = int(progress[0].split(" / ")[1].split()[0].replace(",", ""))
    assert read < total == stats.prompt_tokens
    resumed, resumed_stats = ask(own, "prefill", tiny_llama, question)
    cold, cold_stats = ask(own, "prefill-cold", tiny_llama, question)
    assert resumed == cold
    assert read <= resumed_stats.cached_tokens < total and cold_stats.cached_tokens == 0
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


def test_any_load_failure_ends_in_the_error_state(engine, tiny_llama: Path, tmp_path: Path, monkeypatch):
    import shutil

    import mlx_lm

    from mlx_gradio.errors import ModelLoadFailed

    # Out of memory or a missing module during a load cannot be caused for real on this machine:
    # mlx-lm's `load` is replaced by one that raises them.
    for n, failure in enumerate([MemoryError("out of memory"), ImportError("No module named 'kernels'"),
                                 ZeroDivisionError("a bug in a model file")]):
        folder = tmp_path / f"model-{n}"
        shutil.copytree(tiny_llama, folder, symlinks=True)

        def fail(*_args, failure=failure, **_kwargs):
            raise failure

        monkeypatch.setattr(mlx_lm, "load", fail)
        with pytest.raises(ModelLoadFailed, match=type(failure).__name__):
            engine.load(str(folder)).result()
        status = engine.status()
        assert status.state == "error" and type(failure).__name__ in status.message
    monkeypatch.undo()
    engine.load(str(tiny_llama)).result()
    assert engine.status().state == "ready"


def test_a_failure_in_the_engines_own_work_is_logged_and_survived(tiny_llama: Path, tmp_path: Path, caplog):
    """Writing a prompt cache to disk fails with a bug (a real one cannot be made on demand: the file writer is
    replaced by one that raises); the engine logs it, does not try that cache again, and goes on answering."""
    import logging

    from mlx_gradio.engine.prompt_files import PromptFiles
    from mlx_gradio.engine.thread import Engine

    files = PromptFiles(tmp_path / "prompt-cache", budget_bytes=1 << 30)
    own = Engine(prompt_files=files)
    try:
        failures = []

        def broken_save(*args, **kwargs):
            failures.append(args[0])
            raise RuntimeError("a bug in the cache writer")

        files.save = broken_save
        with caplog.at_level(logging.ERROR, logger="mlx_gradio"):
            ask(own, "first", tiny_llama, [FRANCE])
            deadline = time.monotonic() + 60
            while "first" not in failures and time.monotonic() < deadline:  # written when the engine is idle
                time.sleep(0.05)
            assert failures == ["first"]
            text, stats = ask(own, "second", tiny_llama, [FRANCE])
            assert stats.generation_tokens > 0 and own.call(lambda: 42).result(timeout=60) == 42
        assert "Could not keep the prompt cache of conversation first on disk" in caplog.text
        assert "a bug in the cache writer" in caplog.text and own._thread.is_alive()
    finally:
        own.shutdown()
    assert failures.count("first") == 1  # not tried again after every job, nor at the unload on exit
    assert not own._thread.is_alive()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread that died
def test_an_engine_thread_that_dies_anyway_is_replaced_and_the_app_says_so(tiny_llama: Path, caplog):
    """Something that is not an Exception ends the thread (it cannot happen on purpose: a job raises it); the
    reply in flight gets an error, and the next job finds a new thread, with a status that says what happened."""
    import logging

    from mlx_gradio.engine.thread import Engine
    from mlx_gradio.errors import GenerationFailed

    own = Engine()
    try:
        own.load(str(tiny_llama)).result(timeout=120)

        worker = own.call(lambda: own._worker).result(timeout=60)

        def fatal(generation) -> None:
            raise SystemExit("something ended the thread")

        worker.reply = fatal
        with caplog.at_level(logging.ERROR, logger="mlx_gradio.engine.thread"):
            with pytest.raises(GenerationFailed, match="internal error"):
                ask(own, "dies", tiny_llama, [FRANCE])
            own._thread.join(30)
            assert not own._thread.is_alive()
            assert own.call(lambda: 42).result(timeout=60) == 42  # a new thread, with a new worker
        assert "ended unexpectedly; starting a new one" in caplog.text
        assert own.status().state == "error" and "restarted" in own.status().message
        text, stats = ask(own, "after", tiny_llama, [FRANCE])
        assert stats.generation_tokens > 0 and own.status().state == "ready"
    finally:
        own.shutdown()


def test_a_long_chat_drops_its_oldest_turns_and_keeps_its_start_for_the_cache(engine, tiny_llama: Path):
    history = []
    for n in range(1, 9):
        history += [ChatMessage("user", f"What is {n} plus {n}?"),
                    ChatMessage("assistant", f"{n} plus {n} is {2 * n}.")]
    limit = 160
    params = SamplingParams(temperature=0.0, max_tokens=8)
    turn = [*history, FRANCE]
    text, stats = ask(engine, "long", tiny_llama, turn, params, context_limit=limit)
    assert stats.dropped_messages > 0 and stats.context_length == limit
    assert stats.prompt_tokens + stats.generation_tokens <= limit
    assert text and stats.generation_tokens == params.max_tokens
    follow = [*turn, ChatMessage("assistant", text), ChatMessage("user", "And of Germany?")]
    text, follow_stats = ask(engine, "long", tiny_llama, follow, params, context_limit=limit)
    assert follow_stats.dropped_messages == stats.dropped_messages  # the same start: the cache is reused
    assert follow_stats.cached_tokens > stats.prompt_tokens // 2 and text


def test_a_message_longer_than_the_context_is_refused_before_reading(engine, tiny_llama: Path):
    from mlx_gradio.errors import ContextTooLong

    huge = ChatMessage("user", "word " * 2_000)
    generation = engine.generate(ChatRequest("huge", str(tiny_llama), (huge,), GREEDY, context_limit=512))
    statuses = []
    with pytest.raises(ContextTooLong, match="context holds 512"):
        for event in generation.events():
            statuses.append(event.status)
    assert not any(statuses)


def test_the_status_tells_memory_and_caches_and_an_idle_model_is_unloaded_then_loaded_again(tiny_llama: Path):
    from mlx_gradio.engine.thread import Engine

    engine = Engine()
    try:
        text, _ = ask(engine, "idle", tiny_llama, [FRANCE])
        with open(tiny_llama / "model.safetensors", "rb") as file:  # the tensors' bytes: the file less its header
            weights = (tiny_llama / "model.safetensors").stat().st_size - 8 - int.from_bytes(file.read(8), "little")
        status = engine.status()
        assert status.state == "ready" and status.memory_bytes > weights and status.peak_bytes >= status.memory_bytes
        assert status.cached_conversations == 1 and status.cache_bytes > 0 and status.last_used > 0
        engine.set_idle_unload(1.0)
        deadline = time.monotonic() + 30
        while engine.status().state != "empty":
            assert time.monotonic() < deadline, "the idle model was not unloaded"
            time.sleep(0.1)
        idle = engine.status()
        assert "next message loads it again" in idle.message and idle.cached_conversations == 0
        # MLX counts the memory of the whole process (other engines too): this one gave back its weights and cache.
        assert status.memory_bytes - idle.memory_bytes >= weights + status.cache_bytes
        engine.set_idle_unload(0)
        again, _ = ask(engine, "idle-2", tiny_llama, [FRANCE])  # loads it again by itself
        assert again == text and engine.status().state == "ready"
    finally:
        engine.shutdown()
