"""The models on this machine: a real Hugging Face cache on disk, listed, used and deleted through the controller."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import gradio as gr
import pytest

from mlx_gradio.controller.access import Access
from mlx_gradio.errors import ModelNotFound
from mlx_gradio.hub.search import HubService
from mlx_gradio.models import hf_cache

TEXT = "mlx-community/tiny-random-llama"
ANN, GUS = gr.Request(username="ann", session_hash="a"), gr.Request(username="gus", session_hash="g")


def fill_cache(local_hub, cache: Path, repo_id: str = TEXT) -> Path:
    """Download a repository from the local Hub with huggingface_hub itself, as `hf download` would."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, cache_dir=cache, endpoint=local_hub.url))


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def test_the_cache_lists_complete_and_partial_downloads(local_hub, tmp_path):
    cache = tmp_path / "hf"
    snapshot = fill_cache(local_hub, cache)
    partial = cache / "models--someone--half-done" / "blobs"
    partial.mkdir(parents=True)
    (partial / "abc.incomplete").write_bytes(b"\0" * 5000)
    listed = {m.repo_id: m for m in hf_cache.scan(cache)}
    assert listed[TEXT].complete and listed[TEXT].path == str(snapshot) and listed[TEXT].last_used
    assert listed[TEXT].size_on_disk == disk_bytes(cache / f"models--{TEXT.replace('/', '--')}" / "blobs")
    assert not listed["someone/half-done"].complete and listed["someone/half-done"].size_on_disk == 5000
    assert [m.name for m in hf_cache.loadable_models(cache)] == [TEXT]  # only complete snapshots reach the picker
    (snapshot / "model.safetensors").unlink()  # a weight file gone: no longer loadable
    assert not {m.repo_id: m for m in hf_cache.scan(cache)}[TEXT].complete


@pytest.mark.parametrize("repo_id", ["../etc", "a/../../b", "/etc/passwd", "a/b/c", "..", "a/..", "a\\..\\b", ""])
def test_ids_that_are_not_owner_name_are_refused(tmp_path, repo_id):
    with pytest.raises(ModelNotFound):
        hf_cache.plan_delete(tmp_path, repo_id)


def test_delete_frees_what_it_announced_and_the_model_leaves_the_picker(make_controller, local_hub, tmp_path):
    controller = make_controller(access=Access(owners={"ann": "pw"}, guests={"gus": "pw"}),
                                 hub=HubService(local_hub.url), cache_dir=tmp_path / "hf")
    snapshot = fill_cache(local_hub, tmp_path / "hf")
    library, models = controller.library, controller.models
    assert str(snapshot) in {m.path for m in models.available()}
    [entry] = [e for e in library.list(ANN) if e.where == "HF cache"]
    assert entry.complete and entry.fit in ("fits", "tight") and entry.key == f"hf:{TEXT}"
    # It is loaded and in use: delete unloads it first.
    assert library.use(entry.key, ANN) == str(snapshot)
    controller.engine.load(str(snapshot)).result()
    plan = library.plan_delete(entry.key, ANN)
    before = shutil.disk_usage(tmp_path).used
    repo_bytes = disk_bytes(tmp_path / "hf" / f"models--{TEXT.replace('/', '--')}" / "blobs")
    assert plan.freed_bytes == repo_bytes and plan.removes_files
    library.delete(entry.key, ANN)
    assert not (tmp_path / "hf" / f"models--{TEXT.replace('/', '--')}").exists()
    assert before - shutil.disk_usage(tmp_path).used >= repo_bytes * 0.9
    assert str(snapshot) not in {m.path for m in controller.engine.status().models}
    assert str(snapshot) not in {m.path for m in models.available()}
    assert controller.store.settings.app()["model"] is None  # the owner's default no longer points at it


def test_guests_cannot_list_use_or_delete(make_controller, local_hub, tmp_path):
    controller = make_controller(access=Access(owners={"ann": "pw"}, guests={"gus": "pw"}),
                                 hub=HubService(local_hub.url), cache_dir=tmp_path / "hf")
    fill_cache(local_hub, tmp_path / "hf")
    library, downloads = controller.library, controller.downloads
    for call in (lambda: library.list(GUS), lambda: library.downloaded(TEXT, GUS),
                 lambda: library.use(f"hf:{TEXT}", GUS),
                 lambda: library.plan_delete(f"hf:{TEXT}", GUS), lambda: library.delete(f"hf:{TEXT}", GUS),
                 lambda: downloads.start(TEXT, GUS), lambda: downloads.list(GUS),
                 lambda: controller.hub.sign_in("hf_x" * 4, GUS)):
        with pytest.raises(gr.Error, match="Only the owner"):
            call()
    assert hf_cache.scan(tmp_path / "hf")[0].complete  # nothing happened


def test_only_the_apps_own_folders_are_deleted(make_controller, local_hub, demo_model, tiny_llama, tmp_path):
    controller = make_controller(cache_dir=tmp_path / "hf")
    local = gr.Request(session_hash="l")
    outside = tmp_path / "elsewhere" / "my-model"
    shutil.copytree(tiny_llama, outside)
    controller.models.add_folder(str(outside), local)
    library = controller.library
    entry = next(e for e in library.list(local) if e.path == str(outside))
    assert entry.where == "folder"
    plan = library.plan_delete(entry.key, local)
    assert not plan.removes_files and plan.freed_bytes == 0
    library.delete(entry.key, local)
    assert (outside / "model.safetensors").exists()  # only taken off the list
    assert str(outside) not in {m.path for m in controller.models.available()}
    for key in ("dir:/etc", f"dir:{tmp_path}", "dir:../../", "hf:../x", "other"):
        with pytest.raises(gr.Error):
            library.plan_delete(key, local)
    # The demo model under the data dir is a link in the tests: deleting it removes the link, not the target.
    demo = next(e for e in library.list(local) if e.where == "built-in demo")
    library.delete(demo.key, local)
    assert (demo_model / "model.safetensors").exists() and not Path(demo.path).exists()


def test_a_token_is_checked_kept_in_huggingface_hubs_storage_masked_and_never_logged(make_controller, local_hub, caplog):
    from huggingface_hub import constants, get_token

    caplog.set_level(logging.DEBUG)
    controller = make_controller()
    local = gr.Request(session_hash="l")
    hub = controller.hub
    with pytest.raises(gr.Error, match="did not accept"):
        hub.sign_in("hf_wrongwrongwrong", local)
    with pytest.raises(gr.Error, match="not a Hugging Face token"):
        hub.sign_in("password123", local)
    hint = hub.sign_in(f"  {local_hub.token}\n", local)
    assert get_token() == local_hub.token and Path(constants.HF_TOKEN_PATH).read_text().strip() == local_hub.token
    assert hint == f"hf_…{local_hub.token[-4:]}" and local_hub.token not in hint
    assert caplog.records and local_hub.token not in caplog.text  # every logger, at debug level
    assert hub.sign_out(local) == "" and get_token() is None


def test_offline_the_search_says_so_and_the_local_models_still_work(make_controller, tmp_path):
    from mlx_gradio.net import free_port

    controller = make_controller(hub=HubService(f"http://127.0.0.1:{free_port()}"), cache_dir=tmp_path / "hf",
                                 demo=True)  # no Hub there; the demo model is all this machine has
    local = gr.Request(session_hash="l")
    with pytest.raises(gr.Error, match="cannot be reached"):
        controller.hub.search("smol", "", "any", 0, "downloads", 0, local)
    with pytest.raises(gr.Error, match="cannot be reached"):
        controller.downloads.start(TEXT, local)
    assert [e.where for e in controller.library.list(local)] == ["built-in demo"]
    assert controller.downloads.list(local) == [] and controller.hub.token_hint(local) == ""
    demo = controller.models.demo_path
    controller.models.select(demo, local)
    controller.engine.load(demo).result()  # the chat's model loads as ever
    assert controller.engine.status().state == "ready"


def test_a_model_that_is_downloading_cannot_be_deleted(make_controller, local_hub, tmp_path):
    controller = make_controller(hub=HubService(local_hub.url), cache_dir=tmp_path / "hf")
    local = gr.Request(session_hash="l")
    local_hub.faults.bytes_per_second = 20e3  # the tiny llama takes half a minute: it is still coming
    try:
        controller.downloads.start(TEXT, local)
        folder = tmp_path / "hf" / f"models--{TEXT.replace('/', '--')}"
        while not folder.exists():
            time.sleep(0.05)
        with pytest.raises(gr.Error, match="cancel it first"):
            controller.library.plan_delete(f"hf:{TEXT}", local)
        controller.downloads.cancel(TEXT, local)
    finally:
        local_hub.faults.bytes_per_second = 0


def test_a_model_from_the_cache_is_named_by_its_repo_id_not_its_commit(make_controller, local_hub, tmp_path):
    from mlx_gradio.chats import chat, conversation_io
    from mlx_gradio.ui import render
    from tests.test_chat import STATS

    controller = make_controller(hub=HubService(local_hub.url), cache_dir=tmp_path / "hf")
    snapshot = fill_cache(local_hub, tmp_path / "hf")
    assert snapshot.parent.name == "snapshots" and snapshot.name != "tiny-random-llama"  # a commit hash
    [offered] = [m for m in controller.models.available() if m.path == str(snapshot)]
    assert offered.name == TEXT
    controller.engine.load(str(snapshot)).result()
    status = controller.engine.status()
    assert status.model_name == TEXT and f"**{TEXT}** loaded" in render.status_markdown(status)
    assert controller.models.name_of(str(snapshot)) == TEXT
    conversation = chat.new_conversation("ann", str(snapshot))
    chat.add_user_message(conversation, "Hello", [])
    chat.add_reply_version(conversation, 1, "Hi.", STATS, str(snapshot))
    line = render.stats_line(conversation)
    assert TEXT in line and snapshot.name not in line
    assert f"## {TEXT}" in conversation_io.to_markdown(conversation)


def test_the_cache_is_scanned_again_only_when_it_changed(local_hub, tmp_path, monkeypatch):
    """A scan visits every file of every repository; the picker asks several times per message."""
    import huggingface_hub

    cache = tmp_path / "hf"
    scans = []
    real = huggingface_hub.scan_cache_dir
    monkeypatch.setattr(huggingface_hub, "scan_cache_dir", lambda folder: scans.append(folder) or real(folder))
    fill_cache(local_hub, cache)
    assert [m.name for m in hf_cache.loadable_models(cache)] == [TEXT]
    hf_cache.loadable_models(cache)
    hf_cache.scan(cache)
    assert len(scans) == 1
    fill_cache(local_hub, cache, "mlx-community/tiny-qwen2-vl-bf16")  # a download: scanned again
    assert {m.name for m in hf_cache.loadable_models(cache)} == {TEXT, "mlx-community/tiny-qwen2-vl-bf16"}
    assert len(scans) == 2
    hf_cache.delete(cache, hf_cache.plan_delete(cache, TEXT))  # (planning a delete reads the cache afresh)
    scans.clear()
    assert [m.name for m in hf_cache.loadable_models(cache)] == ["mlx-community/tiny-qwen2-vl-bf16"]
    hf_cache.loadable_models(cache)
    assert len(scans) == 1  # after a delete, once
