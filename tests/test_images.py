"""Uploaded images: real images are kept by content hash, anything else is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_gradio.errors import InvalidImage
from mlx_gradio.images import ingest_image


def test_image_is_copied_by_content_hash(tmp_path: Path, images):
    stored = ingest_image(images["red"], tmp_path / "store")
    again = ingest_image(images["red"], tmp_path / "store")
    assert stored == again and stored.suffix == ".png" and stored.read_bytes() == images["red"].read_bytes()
    assert ingest_image(images["noise"], tmp_path / "store") != stored


def test_text_file_with_an_image_name_is_refused(tmp_path: Path, images):
    with pytest.raises(InvalidImage, match="notes.png is not an image"):
        ingest_image(images["fake"], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_decompression_bomb_is_refused_before_decoding(tmp_path: Path, images):
    with pytest.raises(InvalidImage, match="9000×9000 pixels"):
        ingest_image(images["bomb"], tmp_path / "store")
    assert not (tmp_path / "store").exists()


def test_truncated_image_is_refused(tmp_path: Path, images):
    cut = tmp_path / "cut.png"
    cut.write_bytes(images["noise"].read_bytes()[:200])
    with pytest.raises(InvalidImage, match="cut.png"):
        ingest_image(cut, tmp_path / "store")
