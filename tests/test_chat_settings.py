"""Each conversation keeps its model and settings; models' recommended sampling; system-prompt presets."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from mlx_gradio.store import DEFAULT_USER_SETTINGS, LOCAL_USER
from mlx_gradio.ui import render
from tests.test_app import GREEDY

TAB = gr.Request(session_hash="settings-tab")
PIRATE = ["Talk like a pirate.", 0.0, 1.0, 0, 0.0, 1.0, -1, 6, True]


@pytest.fixture(scope="module")
def qwen_like(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """The tiny llama with a generation_config.json that recommends its own sampling (as Qwen3's does)."""
    folder = tmp_path_factory.mktemp("models") / "recommending-model"
    folder.mkdir()
    for item in tiny_llama.iterdir():
        if item.name == "generation_config.json":
            continue
        (folder / item.name).symlink_to(item)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20, "eos_token_id": 2}))
    return folder


def test_a_conversation_brings_back_its_model_and_settings(make_controller, tiny_llama: Path, qwen_like: Path):
    controller = make_controller()
    controller.store.settings.update_app(model_folders=[str(tiny_llama), str(qwen_like)])
    parts = controller
    model = str(tiny_llama)
    views = list(parts.replies.send("", {"text": "Hello"}, model, *PIRATE, request=TAB))
    pirate_id = views[-1].conversation_id
    assert views[-1].conversation["settings"]["system_prompt"] == "Talk like a pirate."

    fresh = parts.chat_settings.show("", str(qwen_like), TAB)  # a new chat: defaults + the model's recommendation
    assert fresh.values["system_prompt"] == "" and not fresh.own
    assert (fresh.values["temperature"], fresh.values["top_p"], fresh.values["top_k"]) == (0.6, 0.95, 20)
    assert "Recommended by recommending-model" in render.settings_note(fresh) and "top k 20" in render.settings_note(
        fresh)

    reopened = parts.chat_settings.show(pirate_id, str(qwen_like), TAB)
    assert reopened.model == "tiny-random-llama" and reopened.own  # the picker names it
    assert [reopened.values[k] for k in ("system_prompt", "max_tokens", "temperature")] == ["Talk like a pirate.", 6,
                                                                                           0.0]
    # Changing a setting while it is open changes this conversation only, not the defaults for new chats.
    parts.chat_settings.save(pirate_id, *PIRATE[:-2], 9, True, request=TAB)
    assert controller.store.conversations.get(pirate_id)["settings"]["max_tokens"] == 9
    assert controller.store.settings.user(LOCAL_USER)["max_tokens"] == DEFAULT_USER_SETTINGS["max_tokens"]
    # Picking another model in the open conversation keeps it with the conversation, settings unchanged.
    picked = parts.chat_settings.pick_model(pirate_id, str(qwen_like), TAB)
    assert picked.values["temperature"] == 0.0 and controller.store.conversations.get(pirate_id)["model"] == str(qwen_like)
    # In a new chat, picking a model takes its recommended sampling.
    assert parts.chat_settings.pick_model("", str(qwen_like), TAB).values["temperature"] == 0.6
    # Saved with no conversation open, settings are the defaults for new chats.
    parts.chat_settings.save("", "Be brief.", 0.2, 1.0, 0, 0.0, 1.0, -1, 64, False, request=TAB)
    assert parts.chat_settings.show("", model, TAB).values["system_prompt"] == "Be brief."


def test_a_conversation_whose_model_is_gone_keeps_going_with_the_picked_one(make_controller, tiny_llama: Path,
                                                                            tmp_path: Path, qwen_like: Path):
    controller = make_controller()
    parts = controller
    gone = tmp_path / "deleted-model"
    gone.mkdir()
    for item in qwen_like.iterdir():
        (gone / item.name).symlink_to(item)
    controller.store.settings.update_app(model_folders=[str(gone)])
    views = list(parts.replies.send("", {"text": "Hi"}, str(gone), *GREEDY, request=TAB))
    controller.store.settings.update_app(model_folders=[str(tiny_llama)])
    for item in gone.iterdir():
        item.unlink()
    gone.rmdir()
    view = parts.chat_settings.show(views[-1].conversation_id, str(tiny_llama), TAB)
    assert view.model == "tiny-random-llama" and view.missing_model == "deleted-model"
    assert "deleted-model" in render.settings_note(view) and "not here any more" in render.settings_note(view)


def test_presets_are_saved_renamed_used_and_deleted(make_controller):
    controller = make_controller()
    part = controller.chat_settings
    presets, pirate = part.save_preset("Pirate", "Talk like a pirate.", TAB)
    presets, poet = part.save_preset("Poet", "Answer in verse.", TAB)
    assert [p["name"] for p in presets] == ["Pirate", "Poet"]
    assert part.preset_text(pirate, TAB) == "Talk like a pirate."
    presets, again = part.save_preset("Pirate", "Talk like a pirate, arr.", TAB)  # same name: replaced
    assert again == pirate and len(presets) == 2 and part.preset_text(pirate, TAB).endswith("arr.")
    with pytest.raises(gr.Error, match="already"):
        part.rename_preset(poet, "Pirate", TAB)
    assert [p["name"] for p in part.rename_preset(poet, "Bard", TAB)] == ["Bard", "Pirate"]
    with pytest.raises(gr.Error, match="Write a system prompt first"):
        part.save_preset("Empty", "  ", TAB)
    with pytest.raises(gr.Error, match="Type a name"):
        part.save_preset("  ", "text", TAB)
    assert [p["name"] for p in part.delete_preset(poet, TAB)] == ["Pirate"]
    with pytest.raises(gr.Error, match="Pick a preset"):
        part.preset_text(poet, TAB)
