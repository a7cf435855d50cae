"""Downloads with the real huggingface_hub client from the Hub on 127.0.0.1 into a real cache on disk.

What needs a big file (progress on the way, cancel and resume halfway, a dropped connection)
downloads the demo model (119 MB); the rest the tiny llama. What is kept across app runs is kept
in the real settings store.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path

import pytest

from mlx_gradio.errors import NotEnoughSpace
from mlx_gradio.hub.downloads import CANCELLED, DONE, FAILED, INTERRUPTED, DownloadProgress, Downloads
from mlx_gradio.hub.search import HubService
from mlx_gradio.store import Store
from mlx_gradio.testing.local_hub import LocalHub, repo_from_folder

TEXT = "mlx-community/SmolLM2-135M-Instruct-4bit"
TINY = "mlx-community/tiny-random-llama"
WEIGHTS = "model.safetensors"
FAST_RETRIES = (0.2, 0.2, 0.2)


@pytest.fixture
def hub(demo_model: Path, tiny_llama: Path):
    """A fresh Hub per test, since tests throttle it and break it on purpose."""
    local = LocalHub([repo_from_folder(TEXT, demo_model), repo_from_folder(TINY, tiny_llama)])
    yield local
    local.close()


def make(hub: LocalHub, cache: Path, store: Store | None = None, retries=FAST_RETRIES) -> Downloads:
    """Downloads into `cache`, recording unfinished ones in `store` (a new store beside the cache if none)."""
    store = store or Store(cache.parent / "data")
    return Downloads(cache, hub.url, store.downloads, retry_delays=retries)


def wait_for(downloads: Downloads, repo_id: str, until, timeout: float = 120) -> DownloadProgress:
    """Poll (as the UI does, once in a while) until `until(progress)` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = downloads.get(repo_id)
        if until(progress):
            return progress
        time.sleep(0.1)
    raise AssertionError(f"timed out; last progress {downloads.get(repo_id)}")


def finished(progress: DownloadProgress) -> bool:
    return not progress.active


def test_a_download_fetches_only_what_the_model_needs_then_loads_and_answers(hub, tiny_llama, tmp_path, engine):
    from tests.test_engine import FRANCE, ask

    hub.repos[TINY].files["model.gguf"] = b"GGUF" + b"\0" * 1000  # another format: skipped
    details = HubService(hub.url).details(TINY)
    downloads = make(hub, tmp_path / "hf")
    started = downloads.start(details)
    assert started.total_bytes == details.download_bytes and started.state in ("queued", "downloading")
    done = wait_for(downloads, TINY, finished)
    assert done.state == DONE, done.message
    assert done.done_bytes == done.total_bytes and done.fraction == 1.0
    snapshot = Path(done.path)
    assert snapshot.is_relative_to(tmp_path / "hf") and (snapshot / WEIGHTS).is_file()
    assert not (snapshot / "model.gguf").exists() and "model.gguf" not in " ".join(hub.requests)
    for name in ("config.json", WEIGHTS, "tokenizer.json"):
        assert hashlib.sha256((snapshot / name).read_bytes()).digest() == \
            hashlib.sha256((tiny_llama / name).read_bytes()).digest()
    text, _ = ask(engine, "downloaded", snapshot, [FRANCE])
    assert text and text == ask(engine, "original", tiny_llama, [FRANCE])[0]  # the same weights, the same reply


def test_progress_moves_while_bytes_arrive_and_has_a_speed(hub, tmp_path):
    hub.faults.bytes_per_second = 25e6  # ~5 s for the demo model
    downloads = make(hub, tmp_path / "hf")
    downloads.start(HubService(hub.url).details(TEXT))
    seen = []
    while not finished(progress := downloads.get(TEXT)):
        seen.append(progress)
        time.sleep(0.5)
    assert progress.state == DONE, progress.message
    moving = [p for p in seen if 0 < p.done_bytes < p.total_bytes]
    assert len({p.done_bytes for p in moving}) >= 3  # several distinct values on the way, not 0 then 100 %
    speeds = [p.bytes_per_second for p in moving if p.bytes_per_second]
    assert speeds and 5e6 < max(speeds) < 60e6  # the Hub sends 25 MB/s (in 10 MB chunks, so it starts low)
    assert any(p.seconds_left for p in moving)


def test_cancel_keeps_the_partial_file_and_resume_fetches_only_the_rest(hub, tmp_path):
    hub.faults.bytes_per_second = 20e6
    downloads = make(hub, tmp_path / "hf")
    details = HubService(hub.url).details(TEXT)
    downloads.start(details)
    wait_for(downloads, TEXT, lambda p: p.done_bytes > 0.3 * p.total_bytes)
    downloads.cancel(TEXT)
    cancelled = wait_for(downloads, TEXT, finished)
    assert cancelled.state == CANCELLED and "Resume" in cancelled.message
    partial = downloads.partial_bytes(TEXT)
    assert partial > 0.25 * details.download_bytes
    hub.faults.bytes_per_second = 0
    sent_before = hub.bytes_sent
    resumed = downloads.start(details)
    assert resumed.done_bytes < resumed.total_bytes
    done = wait_for(downloads, TEXT, finished)
    assert done.state == DONE, done.message
    assert hub.bytes_sent - sent_before < details.download_bytes - partial * 0.9  # the Range request did its job


def test_a_restart_lists_the_interrupted_download_and_resumes_it(hub, tmp_path):
    hub.faults.bytes_per_second = 20e6
    details = HubService(hub.url).details(TEXT)
    store = Store(tmp_path / "data")
    first = make(hub, tmp_path / "hf", store)
    first.start(details)
    wait_for(first, TEXT, lambda p: p.done_bytes > 0.2 * p.total_bytes)
    first.shutdown()  # the app quits mid-download
    store.close()
    hub.faults.bytes_per_second = 0
    reopened = Store(tmp_path / "data")  # the next run reads what the first one wrote to disk
    [record] = reopened.downloads.all()
    assert record["repo_id"] == TEXT and record["state"] == INTERRUPTED
    second = make(hub, tmp_path / "hf", reopened)
    [listed] = second.list()
    assert listed.repo_id == TEXT and listed.state == INTERRUPTED and listed.total_bytes == details.download_bytes
    second.start(details)
    assert wait_for(second, TEXT, finished).state == DONE
    second.shutdown()
    reopened.close()
    assert Store(tmp_path / "data").downloads.all() == []  # done: nothing left to resume, on disk either


def test_a_dropped_connection_is_resumed_and_the_file_is_whole(hub, demo_model, tmp_path):
    hub.faults.drop_after[WEIGHTS] = 30_000_000
    downloads = make(hub, tmp_path / "hf")
    downloads.start(HubService(hub.url).details(TEXT))
    done = wait_for(downloads, TEXT, finished)
    assert done.state == DONE, done.message
    assert (Path(done.path) / WEIGHTS).read_bytes() == (demo_model / WEIGHTS).read_bytes()
    assert WEIGHTS not in hub.faults.drop_after  # the drop did happen


def test_a_hub_that_fails_for_a_moment_is_retried_with_backoff(hub, tmp_path):
    details = HubService(hub.url).details(TINY)
    hub.faults.fail_next = 12  # a few attempts' worth of failed requests
    delays = (1.0, 2.0, 3.0, 3.0, 3.0)
    downloads = make(hub, tmp_path / "hf", retries=delays)
    downloads.start(details)
    changes = []  # (when, message) each time the message changes
    while not finished(progress := downloads.get(TINY)):
        if not changes or changes[-1][1] != progress.message:
            changes.append((time.monotonic(), progress.message))
        time.sleep(0.02)
    changes.append((time.monotonic(), progress.message))
    assert progress.state == DONE, progress.message
    assert hub.faults.fail_next == 0
    waits = [(at, changes[n + 1][0] - at, message) for n, (at, message) in enumerate(changes[:-1])
             if "Trying again" in message]
    assert len(waits) >= 2, changes
    announced = [float(re.search(r"Trying again in (\d+) s", message)[1]) for _, _, message in waits]
    assert announced == list(delays[: len(waits)])  # each wait longer than the one before, as configured
    for (_, waited, message), delay in zip(waits, delays):
        assert "could not be reached" in message and waited >= delay - 0.1  # and it was waited out


def test_a_hub_that_stays_down_ends_in_a_clear_failure(hub, tmp_path):
    details = HubService(hub.url).details(TINY)
    hub.faults.down = True
    downloads = make(hub, tmp_path / "hf", retries=(0.1,))
    downloads.start(details)
    failed = wait_for(downloads, TINY, finished, timeout=300)
    assert failed.state == FAILED and "reach" in failed.message.lower()


def test_a_file_of_the_wrong_size_is_an_error_and_is_not_kept(hub, tmp_path):
    details = HubService(hub.url).details(TINY)
    hub.faults.replace["config.json"] = b'{"model_type": "llama"}'  # shorter than the listing says
    downloads = make(hub, tmp_path / "hf")
    downloads.start(details)
    failed = wait_for(downloads, TINY, finished)
    assert failed.state == FAILED and "config.json" in failed.message and "announced" in failed.message
    snapshot = tmp_path / "hf" / f"models--{TINY.replace('/', '--')}" / "snapshots" / details.sha
    assert not (snapshot / "config.json").exists()
    hub.faults.replace.clear()
    downloads.start(details)  # Resume fetches the removed file again and only that
    assert wait_for(downloads, TINY, finished).state == DONE


def test_a_gated_repo_needs_the_token(hub, tiny_llama, tmp_path, monkeypatch):
    gated = repo_from_folder("meta/gated-4bit", tiny_llama, gated=True)
    hub.add(gated)
    monkeypatch.setenv("HF_TOKEN", hub.token)
    details = HubService(hub.url).details("meta/gated-4bit")
    monkeypatch.delenv("HF_TOKEN")
    downloads = make(hub, tmp_path / "hf")
    downloads.start(details)
    failed = wait_for(downloads, "meta/gated-4bit", finished)
    assert failed.state == FAILED and "token" in failed.message
    monkeypatch.setenv("HF_TOKEN", hub.token)
    downloads.start(details)
    assert wait_for(downloads, "meta/gated-4bit", finished).state == DONE


def test_a_repo_gone_since_its_details_were_read(hub, tmp_path):
    details = HubService(hub.url).details(TINY)
    del hub.repos[TINY]
    downloads = make(hub, tmp_path / "hf")
    downloads.start(details)
    failed = wait_for(downloads, TINY, finished)
    assert failed.state == FAILED and "no repository" in failed.message.lower()


def test_no_download_starts_without_the_space_for_it(hub, small_disk):
    downloads = make(hub, small_disk / "hf")
    with pytest.raises(NotEnoughSpace, match="GB free"):
        downloads.start(HubService(hub.url).details(TEXT))
    assert downloads.list() == [] and not (small_disk / "hf").exists()


def test_progress_updates_from_many_threads_add_up():
    """huggingface_hub calls the hook from several download threads at once."""
    from mlx_gradio.hub.downloads import Tracker, progress_bar_class

    tracker = Tracker(DownloadProgress(TEXT, "", "downloading", 0, 10**9))
    bar = progress_bar_class(tracker)(total=10**9, name="huggingface_hub.snapshot_download")
    threads = [threading.Thread(target=lambda: [bar.update(1) for _ in range(10_000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert tracker.snapshot().done_bytes == 40_000  # no update lost between threads


def test_several_downloads_run_at_once(hub, tiny_vlm, tmp_path):
    hub.add(repo_from_folder("mlx-community/tiny-qwen2-vl-bf16", tiny_vlm))
    service, downloads = HubService(hub.url), make(hub, tmp_path / "hf")
    repos = (TINY, "mlx-community/tiny-qwen2-vl-bf16")
    details = [service.details(repo_id) for repo_id in repos]
    hub.faults.bytes_per_second = min(d.download_bytes for d in details) / 2  # each takes seconds, on any machine
    for each in details:
        downloads.start(each)
    while any(p.active for p in downloads.list()):
        time.sleep(0.1)
    assert [p.state for p in downloads.list()] == [DONE, DONE]
    assert hub.most_repos_at_once == 2  # the Hub was sending files of both at the same moment
