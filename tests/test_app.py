"""The whole app on a free port, driven with gradio_client like a browser tab would drive it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import handle_file

from mlx_gradio.app_factory import DB_NAME

GREEDY = ["", 0.0, 1.0, 0, 0.0, 1.0, -1, 12]  # system prompt, temperature ... max tokens


def page(client) -> dict:
    """What a fresh tab loads: selected model, status, conversations and settings."""
    model, status, conversations, *settings = client.predict(api_name="/page_load")
    return {"model": model["value"], "models": model["choices"], "status": status,
            "conversations": conversations["choices"], "settings": settings}


def send(client, text: str, model: str, files=(), settings=GREEDY) -> list:
    """Send a message and collect every streamed output; returns the list of outputs."""
    job = client.submit({"text": text, "files": [handle_file(str(f)) for f in files]}, model, *settings,
                        api_name="/send")
    job.result(timeout=300)
    return job.outputs()


def last_reply(output: tuple) -> str:
    """The text of the last assistant message in one streamed output."""
    content = output[0][-1]["content"]
    return " ".join(part.get("text", "") for part in content)


def reply_text(outputs: list) -> str:
    """The text of the last assistant message once the reply is complete (with its stats line)."""
    return last_reply(outputs[-1])


def answer(outputs: list) -> str:
    """The model's words in the final reply, without the stats line."""
    return reply_text(outputs).split('\n\n<span class="reply-stats">')[0]


def test_reply_streams_in_and_the_conversation_is_saved(start_app):
    app = start_app()
    client = app.client()
    tab = page(client)
    assert tab["model"] == app.controller.demo_path
    outputs = send(client, "What is the capital of France?", tab["model"])
    assert "Paris" in reply_text(outputs)
    assert "tok/s" in reply_text(outputs)  # the stats line under the reply
    partial = [last_reply(o) for o in outputs[1:-1]]
    assert any(p and "Paris" not in p for p in partial), "the reply arrived in one piece, not streamed"
    [saved] = app.controller.store.conversations()
    conversation = app.controller.store.conversation(saved["id"])
    assert saved["title"] == "What is the capital of France?"
    assert "Paris" in conversation["messages"][1]["content"]
    assert conversation["messages"][1]["stats"]["generation_tokens"] > 0


def test_regenerate_and_stop(start_app):
    app = start_app()
    client = app.client()
    model = page(client)["model"]
    first = answer(send(client, "What is the capital of France?", model))
    again = client.submit(model, *GREEDY, api_name="/regenerate")
    again.result(timeout=300)
    assert answer(again.outputs()) == first
    assert "36/37 prompt tokens cached" in reply_text(again.outputs())
    [saved] = app.controller.store.conversations()
    assert len(app.controller.store.conversation(saved["id"])["messages"]) == 2

    long = [*GREEDY[:-1], 300]
    job = client.submit({"text": "Write a long story about a dragon.", "files": []}, model, *long, api_name="/send")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("*" not in last_reply(o) and last_reply(o) for o in job.outputs()):
        time.sleep(0.2)
    client.predict(api_name="/stop")
    job.result(timeout=120)
    assert "stopped" in reply_text(job.outputs())
    stored = app.controller.store.conversation(saved["id"])["messages"][-1]
    assert stored["stats"]["finish_reason"] == "stopped" and stored["stats"]["generation_tokens"] < 300


def test_edit_answers_again_from_the_edited_message(start_app):
    app = start_app()
    client = app.client()
    model = page(client)["model"]
    send(client, "What is the capital of France?", model)
    [saved] = app.controller.store.conversations()
    edit = gr.EditData(None, {"index": 0, "value": "What is the capital of Germany?", "previous_value": ""})
    outputs = list(app.controller.edit(saved["id"], model, *GREEDY, edit=edit))
    assert "Berlin" in outputs[-1][0][-1]["content"]
    messages = app.controller.store.conversation(saved["id"])["messages"]
    assert [m["content"] for m in messages][0] == "What is the capital of Germany?" and len(messages) == 2


def test_image_reaches_the_vision_model(start_app, tiny_vlm: Path, images):
    app = start_app()
    client = app.client()
    page(client)
    picker, _ = client.predict(str(tiny_vlm), api_name="/add_model_folder")
    assert picker["value"] == str(tiny_vlm)
    red = send(client, "Describe it.", str(tiny_vlm), files=[images["red"]])
    user_content = red[-1][0][0]["content"]
    assert any(part.get("type") == "file" for part in user_content)
    client.predict(api_name="/new_chat")
    noise = send(client, "Describe it.", str(tiny_vlm), files=[images["noise"]])
    assert answer(red) != answer(noise)
    stored = [app.controller.store.conversation(c["id"]) for c in app.controller.store.conversations()]
    kept = [Path(m["images"][0]) for c in stored for m in c["messages"] if m["images"]]
    assert len(kept) == 2 and all(p.parent == app.data_dir / "images" and p.exists() for p in kept)


def test_bad_uploads_are_refused_and_change_nothing(start_app, tiny_vlm: Path, images):
    app = start_app()
    client = app.client()
    demo_model = page(client)["model"]
    with pytest.raises(Exception, match="reads text only.*Pick a vision model"):
        send(client, "What is this?", demo_model, files=[images["red"]])
    client.predict(str(tiny_vlm), api_name="/add_model_folder")
    with pytest.raises(Exception, match="notes.png is not an image"):
        send(client, "What is this?", str(tiny_vlm), files=[images["fake"]])
    with pytest.raises(Exception, match="9000×9000 pixels"):
        send(client, "What is this?", str(tiny_vlm), files=[images["bomb"]])
    assert app.controller.store.conversations() == []
    assert not (app.data_dir / "images").exists()


def test_settings_and_conversations_survive_a_restart(start_app, tmp_path: Path, tiny_vlm: Path):
    data_dir = tmp_path / "kept"
    first = start_app(data_dir)
    client = first.client()
    page(client)
    client.predict(str(tiny_vlm), api_name="/add_model_folder")
    custom = ["Answer in French.", 0.0, 0.8, 40, 0.05, 1.1, 7, 8]
    client.predict(*custom, api_name="/save_settings")
    reply = answer(send(client, "Hello there", str(tiny_vlm), settings=custom))
    first.close()

    second = start_app(data_dir)
    reopened = second.client()
    tab = page(reopened)
    assert tab["settings"] == custom
    assert tab["model"] == str(tiny_vlm)
    [(title, conversation_id)] = tab["conversations"]
    assert title == "Hello there"
    history, opened_title = reopened.predict(conversation_id, api_name="/open_conversation")
    assert opened_title == "Hello there"
    assert answer([(history,)]) == reply


def test_corrupt_database_is_moved_aside_and_the_app_starts(start_app, tmp_path: Path):
    data_dir = tmp_path / "broken"
    data_dir.mkdir()
    (data_dir / DB_NAME).write_text("{ this is not json")
    app = start_app(data_dir)
    tab = page(app.client())
    assert tab["settings"][1] == 0.0  # default temperature
    [aside] = data_dir.glob(f"{DB_NAME}.corrupt-*")
    assert aside.read_text() == "{ this is not json"
    assert app.controller.store.take_recovery_notice() is None  # the page already showed it


def test_two_tabs_chat_at_the_same_time(start_app):
    app = start_app()
    first, second = app.client(), app.client()
    model = page(first)["model"]
    page(second)
    answers = {}

    def chat(name: str, client, question: str) -> None:
        answers[name] = reply_text(send(client, question, model))

    threads = [threading.Thread(target=chat, args=("fr", first, "What is the capital of France?")),
               threading.Thread(target=chat, args=("de", second, "What is the capital of Germany?"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert "Paris" in answers["fr"] and "Berlin" in answers["de"]
    assert len(app.controller.store.conversations()) == 2


def test_import_gguf_and_add_folder_from_the_page(start_app, tmp_path: Path):
    from tests.test_gguf import write_tiny_gguf

    app = start_app()
    client = app.client()
    page(client)
    write_tiny_gguf(tmp_path / "tiny-llama.gguf")
    picker, note = client.predict(str(tmp_path / "tiny-llama.gguf"), api_name="/import_gguf")
    imported = app.data_dir / "models" / "tiny-llama"
    assert picker["value"] == str(imported) and (imported / "model.safetensors").exists()
    assert any(path == str(imported) for _, path in picker["choices"])
    deadline = time.monotonic() + 60
    while "tiny-llama** loaded" not in client.predict(api_name="/page_load")[1] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "loaded (text)" in client.predict(api_name="/page_load")[1]
    with pytest.raises(Exception, match="There is no file at"):
        client.predict(str(tmp_path / "missing.gguf"), api_name="/import_gguf")
    with pytest.raises(Exception, match="has no config.json"):
        client.predict(str(tmp_path), api_name="/add_model_folder")
    with pytest.raises(Exception, match="There is no model folder at"):
        client.predict(str(tmp_path / "deleted-model"), api_name="/select_model")
    assert page(client)["model"] == str(imported)  # still selected after the refused ones
