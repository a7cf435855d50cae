"""Prompt caches on disk: kept across engine restarts, checked on load, bounded by a budget."""

from __future__ import annotations

import shutil
import threading
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


def test_a_follow_up_after_a_restart_reads_only_the_new_tokens_and_answers_the_same(tmp_path, tiny_llama):
    first = engine_with_files(tmp_path)
    reply, stats1 = ask(first, CID, tiny_llama, [FRANCE])
    first.shutdown()  # writes the cache it holds
    assert (tmp_path / f"{CID}.safetensors").exists()

    turn2 = [FRANCE, ChatMessage("assistant", reply), ChatMessage("user", "And of Germany?")]
    second = engine_with_files(tmp_path)
    warm, warm_stats = ask(second, CID, tiny_llama, turn2)
    cold, cold_stats = ask(second, "cold", tiny_llama, turn2)  # no file: reads the whole history
    second.shutdown()
    assert warm == cold
    assert cold_stats.cached_tokens == 0
    assert warm_stats.cached_tokens == stats1.prompt_tokens + stats1.generation_tokens  # all of turn one
    assert warm_stats.prefilled_tokens == warm_stats.prompt_tokens - warm_stats.cached_tokens < cold_stats.prompt_tokens / 2


def test_a_cache_is_written_after_a_reply_while_idle_and_only_once(tmp_path, tiny_llama):
    engine = engine_with_files(tmp_path, cache_limit=1)
    ask(engine, "a" * 32, tiny_llama, [FRANCE])
    wait_until_saved(engine, 1)  # idle after the reply: the engine writes the cache before it waits for a job
    (tmp_path / f"{'a' * 32}.safetensors").unlink()
    ask(engine, "b" * 32, tiny_llama, [ChatMessage("user", "Hi")])  # evicts a's cache from memory (limit 1)
    wait_until_saved(engine, 1)
    assert not (tmp_path / f"{'a' * 32}.safetensors").exists()  # saved already: not written again
    engine.forget_conversation("b" * 32).result()
    assert not list(tmp_path.glob("b*.safetensors"))
    engine.shutdown()


def test_a_cache_not_yet_on_disk_is_written_when_it_leaves_memory(tmp_path, tiny_llama):
    engine = engine_with_files(tmp_path, cache_limit=1)
    engine.load(str(tiny_llama)).result()
    # Hold the engine thread, queue two replies behind it: the second follows the first with no idle moment
    # between them, so the first one's cache is still only in memory when the second pushes it out.
    release = threading.Event()
    held = engine.call(release.wait)
    replies = [engine.generate(ChatRequest(c * 32, str(tiny_llama), (FRANCE,), PARAMS)) for c in "ab"]
    assert not list(tmp_path.glob("*.safetensors"))
    release.set()
    held.result()
    for generation in replies:
        assert [event.stats for event in generation.events()][-1].finish_reason == "length"
    wait_until_saved(engine, 2)
    # b's cache was written at the idle moment; a's had left memory before that: it was written on eviction.
    assert engine.status().cached_conversations == 1
    assert (tmp_path / f"{'a' * 32}.safetensors").exists() and (tmp_path / f"{'b' * 32}.safetensors").exists()
    engine.shutdown()


def test_a_file_for_another_model_or_a_corrupt_file_is_ignored_and_deleted(tmp_path, tiny_llama):
    other_model = tmp_path / "another-model"
    shutil.copytree(tiny_llama, other_model)
    files = tmp_path / "caches"
    engine = engine_with_files(files)
    first, _ = ask(engine, CID, tiny_llama, [FRANCE])
    engine.unload().result()  # written on unload, while the model is known
    path = files / f"{CID}.safetensors"
    assert path.exists()
    # Another model answers in the same conversation: the file is not used, and it is replaced.
    _, stats = ask(engine, CID, other_model, [FRANCE])
    assert stats.cached_tokens == 0
    engine.unload().result()
    assert engine.call(lambda: load_prompt_cache(str(path), return_metadata=True)[1]["model"]).result() == \
        str(other_model)

    path.write_bytes(b"\x00" * 64)  # a truncated, corrupt file
    text, stats = ask(engine, CID, tiny_llama, [FRANCE])
    assert text == first and stats.cached_tokens == 0
    engine.shutdown()
    assert path.exists() and path.stat().st_size > 64  # the corrupt file was replaced by a good one


def test_the_disk_budget_drops_the_oldest_and_zero_keeps_none(tmp_path, tiny_llama):
    engine = engine_with_files(tmp_path)
    ask(engine, "c" * 32, tiny_llama, [FRANCE])
    wait_until_saved(engine, 1)
    one = (tmp_path / f"{'c' * 32}.safetensors").stat().st_size
    engine.set_disk_cache_budget(int(one * 1.5)).result()
    ask(engine, "d" * 32, tiny_llama, [FRANCE])
    deadline = time.monotonic() + 60
    while not (tmp_path / f"{'d' * 32}.safetensors").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert sorted(p.name[0] for p in tmp_path.glob("*.safetensors")) == ["d"]
    engine.set_disk_cache_budget(0).result()
    assert not list(tmp_path.glob("*.safetensors"))
    ask(engine, "e" * 32, tiny_llama, [FRANCE])
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
    first_stats = first.store.conversations.get(summary.id)["messages"][-1]["versions"][0]["stats"]
    views = list(second.controller.replies.send(summary.id, {"text": "And of Germany?"}, model, *GREEDY,
                                                request=LOCAL))
    stats = views[-1].conversation["messages"][-1]["versions"][0]["stats"]
    assert stats["cached_tokens"] == first_stats["prompt_tokens"] + first_stats["generation_tokens"]
