"""GGUF files from LM Studio and Ollama folders (laid out as those apps do, in a temp home) and importing them."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import gradio as gr
import pytest

from mlx_gradio.controller.access import Access
from mlx_gradio.models.gguf_sources import find_gguf_files
from tests.test_gguf import header_only_gguf, write_tiny_gguf


@pytest.fixture
def home(tmp_path: Path, monkeypatch) -> Path:
    """A home folder with LM Studio's and Ollama's model folders holding small GGUF files."""
    monkeypatch.delenv("OLLAMA_MODELS", raising=False)
    home = tmp_path / "home"
    studio = home / ".lmstudio" / "models" / "lmstudio-community" / "tiny-llama-GGUF"
    studio.mkdir(parents=True)
    write_tiny_gguf(studio / "tiny-llama-F32.gguf")
    header_only_gguf(studio / "tiny-llama-Q5_K_M.gguf", tensor_type=13)
    shutil.copy(studio / "tiny-llama-F32.gguf", studio / "mmproj-tiny-f16.gguf")  # a vision projector: not a model
    old = home / ".cache" / "lm-studio" / "models" / "someone" / "qwen-GGUF"
    old.mkdir(parents=True)
    write_tiny_gguf(old / "qwen.gguf", arch="qwen2")
    ollama = home / ".ollama" / "models"
    blob = (studio / "tiny-llama-F32.gguf").read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    (ollama / "blobs").mkdir(parents=True)
    (ollama / "blobs" / f"sha256-{digest}").write_bytes(blob)
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "tinyllama" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:00", "size": 10},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": len(blob)}]}))
    broken = manifest.parent.parent / "gone" / "7b"
    broken.parent.mkdir(parents=True)
    broken.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                              "digest": "sha256:" + "f" * 64}]}))  # its blob was deleted
    (manifest.parent.parent / "junk").write_text("not json")
    return home


def test_lm_studio_and_ollama_files_are_found_with_what_can_be_imported(home: Path):
    found = {(f.app, f.name): f for f in find_gguf_files(home)}
    assert set(found) == {("LM Studio", "lmstudio-community/tiny-llama-GGUF/tiny-llama-F32.gguf"),
                          ("LM Studio", "lmstudio-community/tiny-llama-GGUF/tiny-llama-Q5_K_M.gguf"),
                          ("LM Studio", "someone/qwen-GGUF/qwen.gguf"), ("Ollama", "tinyllama:latest")}
    assert found[("Ollama", "tinyllama:latest")].problem == ""
    assert found[("LM Studio", "lmstudio-community/tiny-llama-GGUF/tiny-llama-F32.gguf")].problem == ""
    assert "Q5_K" in found[("LM Studio", "lmstudio-community/tiny-llama-GGUF/tiny-llama-Q5_K_M.gguf")].problem
    assert "qwen2" in found[("LM Studio", "someone/qwen-GGUF/qwen.gguf")].problem
    assert [f.problem for f in find_gguf_files(home)][:2] == ["", ""]  # importable ones first
    assert find_gguf_files(home / "nobody") == []


def test_cut_short_and_corrupt_files_are_listed_as_unreadable_and_the_rest_still_listed(home: Path):
    """A half-finished download, or garbage where a length belongs, must not break the whole list."""
    import struct

    studio = home / ".lmstudio" / "models" / "someone" / "broken-GGUF"
    studio.mkdir(parents=True)
    whole = (home / ".lmstudio" / "models" / "lmstudio-community" / "tiny-llama-GGUF" / "tiny-llama-F32.gguf")
    data = whole.read_bytes()
    (studio / "cut-at-10.gguf").write_bytes(data[:10])  # inside the first numbers
    (studio / "cut-at-300.gguf").write_bytes(data[:300])  # inside the metadata
    huge_string = data[:24] + struct.pack("<Q", 2 ** 62) + b"x" * 64  # a key "as long" as the whole disk
    (studio / "huge-length.gguf").write_bytes(huge_string)
    many = data[:4] + struct.pack("<IQQ", 3, 2 ** 40, 2 ** 40) + b"\0" * 64  # more entries than bytes
    (studio / "many-entries.gguf").write_bytes(many)
    nested = data[:4] + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + b"".join(
        struct.pack("<IIQ", 9, 9, 1) for _ in range(1)) + struct.pack("<IQ", 9, 1) * 20  # arrays in arrays
    (studio / "nested.gguf").write_bytes(nested)
    found = {f.name.split("/")[-1]: f for f in find_gguf_files(home)}
    for name in ("cut-at-10.gguf", "cut-at-300.gguf", "huge-length.gguf", "many-entries.gguf", "nested.gguf"):
        assert found[name].problem, name
    assert "truncated" in found["cut-at-300.gguf"].problem and "truncated" in found["huge-length.gguf"].problem
    assert "more header entries" in found["many-entries.gguf"].problem
    assert found["tiny-llama-F32.gguf"].problem == ""  # the good ones are still there, importable


def test_ollama_models_elsewhere_are_found_through_ollama_models(home: Path, tmp_path: Path, monkeypatch):
    moved = tmp_path / "ollama-store"
    shutil.move(home / ".ollama" / "models", moved)
    monkeypatch.setenv("OLLAMA_MODELS", str(moved))
    assert ("Ollama", "tinyllama:latest") in {(f.app, f.name) for f in find_gguf_files(home)}


def test_an_ollama_model_is_imported_under_its_name_and_offered_in_the_picker(start_app, home: Path):
    app = start_app(access=Access(owners={"ann": "pw"}, guests={"gus": "pw"}))
    app.controller.library.home = home
    ann, gus = gr.Request(username="ann", session_hash="a"), gr.Request(username="gus", session_hash="g")
    with pytest.raises(gr.Error, match="Only the owner"):
        app.controller.library.other_apps(gus)
    ollama = next(f for f in app.controller.library.other_apps(ann) if f.app == "Ollama")
    with pytest.raises(gr.Error, match="no longer there"):
        list(app.controller.library.import_found(str(app.data_dir / "mlx-gradio.json"), ann))  # only listed files
    *_, (models, selected, note) = app.controller.library.import_found(ollama.path, ann)
    assert selected in {m.path for m in models} and Path(selected) == app.data_dir / "models" / "tinyllama-latest"
    assert (Path(selected) / "model.safetensors").is_file()
    assert any(e.path == selected and e.where == "imported" for e in app.controller.library.list(ann))
