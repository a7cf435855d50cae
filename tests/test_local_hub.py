"""The Hub stand-in on 127.0.0.1 answers the real huggingface_hub client the way the Hub does."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_gradio.testing.local_hub import LocalHub, repo_from_folder

REPO = "mlx-community/tiny-qwen2-vl-4bit"


@pytest.fixture
def hub(tiny_vlm: Path):
    local = LocalHub([repo_from_folder(REPO, tiny_vlm, downloads=42, likes=7, pipeline_tag="image-text-to-text")])
    yield local
    local.close()


def test_search_info_and_tree_in_one_request_each(hub: LocalHub, tiny_vlm: Path):
    from huggingface_hub import HfApi

    api = HfApi(endpoint=hub.url)
    [found] = api.list_models(filter="mlx", search="qwen2", sort="downloads", limit=10,
                              expand=["downloads", "likes", "safetensors", "config", "pipeline_tag"])
    assert (found.id, found.downloads, found.likes, found.pipeline_tag) == (REPO, 42, 7, "image-text-to-text")
    assert found.safetensors.total > 0 and found.config["model_type"] == "qwen2_vl"
    assert hub.count("GET /api/models?") == 1
    info = api.model_info(REPO, files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes == {p.name: p.stat().st_size for p in tiny_vlm.iterdir() if p.is_file()}
    assert list(api.list_models(filter="mlx", search="nothing-like-this", limit=10)) == []


def test_a_snapshot_download_gives_the_same_files(hub: LocalHub, tiny_vlm: Path, tmp_path: Path):
    from huggingface_hub import snapshot_download

    folder = Path(snapshot_download(REPO, endpoint=hub.url, cache_dir=tmp_path / "hf"))
    for original in tiny_vlm.iterdir():
        if original.is_file():
            assert (folder / original.name).read_bytes() == original.read_bytes()


def test_missing_and_gated_repos_raise_the_clients_typed_errors(hub: LocalHub):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    api = HfApi(endpoint=hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("nobody/nothing")
    hub.repos[REPO].gated = True
    with pytest.raises(GatedRepoError):
        api.model_info(REPO)
    assert api.model_info(REPO, token=hub.token).id == REPO
