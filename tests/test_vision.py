"""Vision replies through the engine with a tiny random-weight Qwen2-VL (mlx-vlm's own classes)."""

from __future__ import annotations

from pathlib import Path

from mlx_gradio.engine.jobs import ChatMessage, SamplingParams
from tests.test_engine import ask

GREEDY = SamplingParams(temperature=0.0, max_tokens=8)


def test_answers_with_an_image_and_different_images_change_the_answer(engine, tiny_vlm: Path, images):
    red, red_stats = ask(engine, "red", tiny_vlm, [ChatMessage("user", "Describe it.", (str(images["red"]),))], GREEDY)
    noise, _ = ask(engine, "noise", tiny_vlm, [ChatMessage("user", "Describe it.", (str(images["noise"]),))], GREEDY)
    again, _ = ask(engine, "again", tiny_vlm, [ChatMessage("user", "Describe it.", (str(images["red"]),))], GREEDY)
    assert red and red_stats.generation_tokens == 8
    assert red == again  # greedy and deterministic
    assert red != noise  # the image reached the model
    assert engine.status().vision


def test_image_stays_in_the_conversation_and_the_cache_is_reused(engine, tiny_vlm: Path, images):
    turn1 = [ChatMessage("user", "Describe it.", (str(images["red"]),))]
    first, _ = ask(engine, "vwarm", tiny_vlm, turn1, GREEDY)
    turn2 = [*turn1, ChatMessage("assistant", first), ChatMessage("user", "More?")]
    warm, warm_stats = ask(engine, "vwarm", tiny_vlm, turn2, GREEDY)
    cold, cold_stats = ask(engine, "vcold", tiny_vlm, turn2, GREEDY)
    assert warm == cold
    assert cold_stats.cached_tokens == 0 and warm_stats.cached_tokens > 20
    # Without the image in turn one the second answer differs: the image is part of the history.
    other, _ = ask(engine, "vother", tiny_vlm,
                   [ChatMessage("user", "Describe it.", (str(images["noise"]),)), *turn2[1:]], GREEDY)
    assert other != warm


def test_text_only_message_to_a_vision_model(engine, tiny_vlm: Path):
    text, stats = ask(engine, "vtext", tiny_vlm, [ChatMessage("user", "Hello")], GREEDY)
    assert text and stats.prompt_tokens > 0


def test_the_model_sees_a_sideways_photo_upright(engine, tiny_vlm: Path, images, tmp_path: Path):
    from PIL import Image

    upright = Image.open(images["noise"])
    exif = Image.Exif()
    exif[0x0112] = 6  # the pixels are stored turned; show them turned 90° clockwise
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "sideways.png", exif=exif)
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "turned.png")  # no EXIF: really turned

    def describe(path: Path, name: str) -> str:
        return ask(engine, name, tiny_vlm, [ChatMessage("user", "Describe it.", (str(path),))], GREEDY)[0]

    assert describe(tmp_path / "sideways.png", "sideways") == describe(images["noise"], "upright")
    assert describe(tmp_path / "turned.png", "turned") != describe(images["noise"], "upright-2")
