"""What grows with use stays within bounds: the Hub's answers and details files, shown images, server logs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from mlx_gradio.hub import search
from mlx_gradio.hub.search import HubService, prune_files
from mlx_gradio.serving.profiles import new_profile
from mlx_gradio.serving.supervisor import LOG_ROTATE_BYTES, Server, Servers, ServerStatus
from mlx_gradio.store import Store
from mlx_gradio.ui import render


def test_the_hubs_answers_are_kept_for_a_while_and_only_so_many(local_hub, monkeypatch):
    monkeypatch.setattr(search, "MAX_CACHED", 3)
    hub = HubService(local_hub.url)
    for query in ("smol", "tiny", "qwen", "llama", "vl"):
        hub.search(query)
    assert len(hub._cache) == 3
    before = len(local_hub.requests)
    hub.search("vl")  # the newest is still kept: no request
    assert len(local_hub.requests) == before


def test_the_details_files_are_pruned_oldest_first(tmp_path: Path):
    for n, age in enumerate((300, 200, 100)):
        repo = tmp_path / f"models--someone--model-{n}" / "snapshots" / "abc"
        repo.mkdir(parents=True)
        card = repo / "README.md"
        card.write_bytes(b"x" * 1000)
        os.utime(card, (time.time() - age, time.time() - age))
    prune_files(tmp_path, 2500)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["models--someone--model-1", "models--someone--model-2"]


def test_shown_images_are_remembered_up_to_a_bound(tmp_path: Path, images, monkeypatch):
    monkeypatch.setattr(render, "MAX_CACHED_IMAGES", 2)
    monkeypatch.setattr(render, "_CACHED", render.OrderedDict())
    shown = []
    for n in range(3):
        copy = tmp_path / f"picture-{n}.png"
        copy.write_bytes(images["red"].read_bytes() + bytes([n]))  # three different files
        shown.append(render.cached_image(str(copy)))
    assert list(render._CACHED) == [str(tmp_path / "picture-1.png"), str(tmp_path / "picture-2.png")]
    assert all(Path(p).exists() for p in shown)


def test_a_running_servers_log_is_rotated_and_it_writes_on(tmp_path: Path, tiny_llama: Path):
    """The server's own end of the log is a file opened for appending, as the supervisor opens it."""
    servers = Servers(tmp_path / "logs", tmp_path / "hf", Store(tmp_path / "data").running_servers)
    try:
        profile = new_profile("tiny", str(tiny_llama))
        log_path = tmp_path / "logs" / f"{profile.id}.log"
        log_path.parent.mkdir()
        server = Server(profile, log_path, ServerStatus(profile.id, profile.name, profile.kind, profile.model,
                                                        profile.url, "ready"))
        with open(log_path, "ab", buffering=0) as out:
            out.write(b"old line\n" * (LOG_ROTATE_BYTES // 9 + 1))
            servers._rotate_running_log(server)
            out.write(b"new line\n")
        assert log_path.read_bytes() == b"new line\n"
        assert log_path.with_suffix(".log.1").stat().st_size > LOG_ROTATE_BYTES
        servers._rotate_running_log(server)  # small again: left alone
        assert log_path.read_bytes() == b"new line\n"
    finally:
        servers.shutdown()
