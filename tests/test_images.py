"""Uploaded images: real images are kept by content hash, anything else is refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_gradio.chats.images import ingest_image
from mlx_gradio.engine.generation import load_for_model
from mlx_gradio.errors import InvalidImage


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


def upright_picture():
    """A 60×40 picture whose quarters differ, so any rotation or flip changes it."""
    from PIL import Image

    picture = Image.new("RGB", (60, 40), (255, 0, 0))
    picture.paste((0, 255, 0), (30, 0, 60, 20))
    picture.paste((0, 0, 255), (0, 20, 30, 40))
    return picture


def test_exif_orientation_is_applied_before_the_model_sees_the_image(tmp_path: Path):
    from PIL import Image

    upright = upright_picture()
    stored = tmp_path / "rotated.png"
    # A camera that was held sideways stores the pixels turned and says so in the EXIF orientation (6:
    # turn 90° clockwise to show).
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, exif=exif)
    seen = load_for_model(stored)
    assert seen.size == (60, 40) and seen.mode == "RGB"
    assert list(seen.get_flattened_data()) == list(upright.get_flattened_data())
    plain = tmp_path / "plain.png"
    upright.save(plain)
    assert list(load_for_model(plain).get_flattened_data()) == list(upright.get_flattened_data())


def test_transparency_is_flattened_onto_white(tmp_path: Path):
    from PIL import Image

    rgba = Image.new("RGBA", (4, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "alpha.png")
    seen = list(load_for_model(tmp_path / "alpha.png").get_flattened_data())
    assert seen[:3] == [(255, 255, 255), (0, 0, 0), (127, 127, 127)]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10])
    palette.putpixel((1, 0), 1)
    palette.save(tmp_path / "palette.gif", transparency=0)
    assert list(load_for_model(tmp_path / "palette.gif").get_flattened_data()) == [(255, 255, 255), (200, 10, 10)]
