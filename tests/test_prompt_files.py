"""Prompt caches on disk: kept across engine restarts, checked on load, bounded by a budget."""

from __future__ import annotations

import time
from pathlib import Path

from mlx_lm.models.cache import load_prompt_cache

from mlx_gradio.engine.jobs import ChatMessage, ChatRequest, SamplingParams
from mlx_gradio.engine.prompt_files import PromptFiles
from mlx_gradio.engine.thread import Engine
from tests.test_app import GREEDY, LOCAL, page, send

PARAMS = SamplingParams(temperature=0.0, max_tokens=12)
FRANCE = ChatMessage("user", "What is the capital of France?")
CID = "0123456789abcdef0123456789abcdef"


def ask(engine: Engine, conversation_id: str, model: Path, messages) -> tuple[str, object]:
    generation = engine.generate(ChatRequest(conversation_id, str(model), tuple(messages), PARAMS))
    text, stats = "", None
    for event in generation.events():
        text += event.text
        stats = event.stats or stats
    return text, stats


def wait_until_saved(engine: Engine, count: int, timeout_s: float = 60) -> None:
    """Wait for the engine's idle moment to write caches to disk (it does so once no job waits)."""
    deadline = time.monotonic() + timeout_s
    while engine.status().saved_conversations != count:
        assert time.monotonic() < deadline, f"{engine.status().saved_conversations} caches on disk, not {count}"
        time.sleep(0.05)


def engine_with_files(folder: Path, budget: int = 10**9, **kwargs) -> Engine:
    return Engine(prompt_files=PromptFiles(folder, budget), **kwargs)


def test_a_follow_up_after_a_restart_reads_only_the_new_tokens_and_answers_the_same(tmp_path, demo_model):
    first = engine_with_files(tmp_path)
    reply, stats1 = ask(first, CID, demo_model, [FRANCE])
    first.shutdown()  # writes the cache it holds
    assert (tmp_path / f"{CID}.safetensors").exists()

    turn2 = [FRANCE, ChatMessage("assistant", reply), ChatMessage("user", "And of Germany?")]
    second = engine_with_files(tmp_path)
    warm, warm_stats = ask(second, CID, demo_model, turn2)
    cold, cold_stats = ask(second, "cold", demo_model, turn2)  # no file: reads the whole history
    second.shutdown()
    assert warm == cold
    assert cold_stats.cached_tokens == 0
    assert warm_stats.cached_tokens >= stats1.prompt_tokens
    assert warm_stats.prefilled_tokens < 20


def test_a_cache_is_written_when_it_leaves_memory_and_after_a_reply_while_idle(tmp_path, demo_model):
    engine = engine_with_files(tmp_path, cache_limit=1)
    ask(engine, "a" * 32, demo_model, [FRANCE])
    wait_until_saved(engine, 1)  # idle after the reply: the engine writes the cache before it waits for a job
    (tmp_path / f"{'a' * 32}.safetensors").unlink()
    ask(engine, "b" * 32, demo_model, [ChatMessage("user", "Hi")])  # evicts a's cache from memory (limit 1)
    wait_until_saved(engine, 1)
    assert not (tmp_path / f"{'a' * 32}.safetensors").exists()  # saved already: not written again
    engine.forget_conversation("b" * 32).result()
    assert not list(tmp_path.glob("b*.safetensors"))
    engine.shutdown()


def test_a_file_for_another_model_or_a_corrupt_file_is_ignored_and_deleted(tmp_path, demo_model, thinking_model):
    engine = engine_with_files(tmp_path)
    ask(engine, CID, demo_model, [FRANCE])
    engine.unload().result()  # written on unload, while the model is known
    path = tmp_path / f"{CID}.safetensors"
    assert path.exists()
    # Another model answers in the same conversation: the file is not used, and it is replaced.
    _, stats = ask(engine, CID, thinking_model, [FRANCE])
    assert stats.cached_tokens == 0
    engine.unload().result()
    assert engine.call(lambda: load_prompt_cache(str(path), return_metadata=True)[1]["model"]).result() == \
        str(thinking_model)

    path.write_bytes(b"\x00" * 64)  # a truncated, corrupt file
    text, stats = ask(engine, CID, demo_model, [FRANCE])
    assert "Paris" in text and stats.cached_tokens == 0
    engine.shutdown()
    assert path.exists() and path.stat().st_size > 64  # the corrupt file was replaced by a good one


def test_the_disk_budget_drops_the_oldest_and_zero_keeps_none(tmp_path, demo_model):
    engine = engine_with_files(tmp_path)
    ask(engine, "c" * 32, demo_model, [FRANCE])
    wait_until_saved(engine, 1)
    one = (tmp_path / f"{'c' * 32}.safetensors").stat().st_size
    engine.set_disk_cache_budget(int(one * 1.5)).result()
    ask(engine, "d" * 32, demo_model, [FRANCE])
    deadline = time.monotonic() + 60
    while not (tmp_path / f"{'d' * 32}.safetensors").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sorted(p.name[0] for p in tmp_path.glob("*.safetensors")) == ["d"]
    engine.set_disk_cache_budget(0).result()
    assert not list(tmp_path.glob("*.safetensors"))
    ask(engine, "e" * 32, demo_model, [FRANCE])
    engine.shutdown()
    assert not list(tmp_path.glob("*.safetensors"))


def test_the_app_restarted_answers_a_follow_up_from_the_saved_cache(start_app, tmp_path):
    data_dir = tmp_path / "kept"
    first = start_app(data_dir)
    client = first.client()
    model = page(client)["model"]
    send(client, "What is the capital of France?", model)
    [summary] = first.store.conversations.list("local")[0]
    first.close()
    assert (data_dir / "prompt-caches" / f"{summary.id}.safetensors").exists()

    second = start_app(data_dir)
    views = list(second.controller.replies.send(summary.id, {"text": "And of Germany?"}, model, *GREEDY,
                                                request=LOCAL))
    stats = views[-1].conversation["messages"][-1]["versions"][0]["stats"]
    assert stats["cached_tokens"] > 40 and stats["prompt_tokens"] - stats["cached_tokens"] < 20
