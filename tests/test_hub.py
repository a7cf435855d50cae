"""Searching the Hub and reading a model's details, with the real client against the Hub on 127.0.0.1."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from mlx_gradio.errors import GatedRepo, HubUnreachable, RepoNotFound
from mlx_gradio.hub.search import HubService, bits_of, card_intro, needed_files, weights_from_parameters
from mlx_gradio.models.hf_cache import valid_repo_id
from mlx_gradio.testing.local_hub import HubRepo, LocalHub, repo_from_folder

TEXT, VISION = "mlx-community/SmolLM2-135M-Instruct-4bit", "mlx-community/tiny-qwen2-vl-bf16"
CARD = "---\nlicense: apache-2.0\n---\n# SmolLM2\n\n![logo](x.png)\n\nA small model\nthat answers in English.\n\nMore."
TEMPLATE = "{% if tools %}{{ tools }}{% endif %}<think>{{ messages }}</think>"


@pytest.fixture(scope="module")
def hub(demo_model: Path, tiny_vlm: Path):
    text = repo_from_folder(TEXT, demo_model, downloads=500, likes=3)
    text.files["README.md"] = CARD.encode()
    text.files["model.gguf"] = b"GGUF" + b"\0" * 100  # another format: not needed when safetensors exist
    tokenizer_config = json.loads(text.files["tokenizer_config.json"])
    text.files["tokenizer_config.json"] = json.dumps({**tokenizer_config, "chat_template": TEMPLATE}).encode()
    vision = repo_from_folder(VISION, tiny_vlm, downloads=90, likes=30, pipeline_tag="image-text-to-text")
    gated = HubRepo("meta/gated-model-4bit", {"config.json": b"{}"}, gated=True, downloads=10)
    local = LocalHub([text, vision, gated])
    yield local
    local.close()


def test_a_search_page_is_one_request_and_is_kept_for_a_while(hub: LocalHub):
    service = HubService(hub.url)
    before = hub.count("GET /api/models?")
    page = service.search(sort="downloads")
    assert [m.repo_id for m in page.models] == [TEXT, VISION, "meta/gated-model-4bit"]
    assert hub.count("GET /api/models?") == before + 1
    service.search(sort="downloads")
    assert hub.count("GET /api/models?") == before + 1  # cached
    text = page.models[0]
    assert text.bits == 4 and text.downloads == 500 and not text.vision and text.parameters == 135_000_000
    assert abs(text.weight_bytes - 115_231_651) < 100_000  # from the Hub's parameter counts, before any download
    assert page.models[1].vision and page.models[1].bits == 16 and page.models[2].gated
    assert page.models[2].weight_bytes is None  # the Hub said nothing: shown as "—", never a guess


def test_filters_sort_and_pages(hub: LocalHub):
    service = HubService(hub.url)
    assert [m.repo_id for m in service.search(task="vision").models] == [VISION]
    assert [m.repo_id for m in service.search(sort="likes").models][0] == VISION
    assert [m.repo_id for m in service.search(author="meta").models] == ["meta/gated-model-4bit"]
    assert [m.repo_id for m in service.search("smol").models] == [TEXT]
    assert TEXT not in [m.repo_id for m in service.search(max_size_gb=0.05).models]
    first = service.search(page_size=2)
    second = service.search(page=1, page_size=2)
    assert first.has_more and not second.has_more and len(first.models) == 2 and len(second.models) == 1


def test_details_give_files_config_card_and_capabilities(hub: LocalHub, demo_model: Path):
    details = HubService(hub.url).details(TEXT)
    needed = {f.path for f in details.files if f.needed}
    assert needed == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert details.download_bytes == sum(len(hub.repos[TEXT].files[path]) for path in needed)
    assert details.card_intro == "A small model that answers in English."
    assert details.tools is True and details.thinking is True and not details.vision
    assert details.shape.weight_bytes == (demo_model / "model.safetensors").stat().st_size
    assert details.shape.context_length == 8192 and details.shape.full_layers == 30
    assert details.shape.kv_dtype_bytes == 4  # the demo model's float tensors are float32
    vision = HubService(hub.url).details(VISION)
    assert vision.vision and vision.thinking is not True


def test_missing_gated_and_unreachable_are_clear_errors(hub: LocalHub):
    service = HubService(hub.url)
    with pytest.raises(RepoNotFound, match="no repository nobody/nothing"):
        service.details("nobody/nothing")
    with pytest.raises(GatedRepo, match="gated: accept its terms"):
        service.details("meta/gated-model-4bit")
    for bad in ("../etc/passwd", "/abs/path", "a/b/c", "", None, "owner/..", "owner/../x"):
        with pytest.raises(RepoNotFound, match="is not a model id"):
            service.details(bad)
    hub.faults.down = True
    try:
        started = time.monotonic()
        with pytest.raises(HubUnreachable, match="error \\(503\\)"):
            HubService(hub.url).search("anything")
        assert time.monotonic() - started < 10  # not the client's minute of retries
    finally:
        hub.faults.down = False


def test_a_hub_that_is_not_there_is_unreachable_at_once():
    gone = LocalHub([])
    url = gone.url
    gone.close()
    with pytest.raises(HubUnreachable, match="cannot be reached"):
        HubService(url).search()


def test_small_helpers():
    assert valid_repo_id("mlx-community/Qwen2.5-0.5B-Instruct-4bit") and not valid_repo_id("x/../y")
    assert bits_of("mlx-community/Qwen3-4B-8bit") == 8 and bits_of("a/b-bf16") == 16 and bits_of("a/b") is None
    assert bits_of("a/b", {"quantization": {"bits": 6, "group_size": 64}}) == 6
    assert weights_from_parameters({"BF16": 10, "F32": 5}) == (40, 15)
    assert weights_from_parameters({"U32": 100, "BF16": 10}) == (420, None)  # packed: the count says nothing exact
    assert weights_from_parameters({"U32": 100}, "mlx-community/Qwen2.5-0.5B-Instruct-4bit") == (400, 500_000_000)
    assert weights_from_parameters({"U32": 1}, "mlx-community/SmolLM2-135M-Instruct")[1] == 135_000_000
    assert needed_files(["model.safetensors", "pytorch_model.bin", "config.json", "x.gguf", "sub/config.json"]) == {
        "model.safetensors", "config.json"}
    assert needed_files(["pytorch_model.bin", "config.json"]) == {"pytorch_model.bin", "config.json"}
    assert card_intro("# Title\n\nFirst words\nhere.\n\nSecond.") == "First words here."


def test_reading_details_leaves_the_shared_cache_alone(hub: LocalHub, tmp_path: Path):
    from huggingface_hub import constants

    HubService(hub.url, files_dir=tmp_path / "files").details(TEXT)
    assert list((tmp_path / "files").rglob("config.json"))
    # Otherwise every model looked at would be listed as half downloaded under "On this machine".
    assert not (Path(constants.HF_HUB_CACHE) / f"models--{TEXT.replace('/', '--')}").exists()
