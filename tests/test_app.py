"""The whole app on a free port, driven with gradio_client like a browser tab would drive it.

The answer to a question is checked on the demo model; everything else on the tiny llama.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import gradio as gr
import pytest
from gradio_client import handle_file

from mlx_gradio.store import DB_NAME, LOCAL_USER

GREEDY = ["", 0.0, 1.0, 0, 0.0, 1.0, -1, 12, True]  # system prompt, temperature ... max tokens, think
LOCAL = gr.Request(session_hash="direct-test")


def page(client) -> dict:
    """What a fresh tab loads: selected model, status, conversations and settings."""
    model, status, conversations, *settings, _context, _budget, _disk, account, _note, _presets = client.predict(
        api_name="/page_load")
    settings = [s["value"] if isinstance(s, dict) else s for s in settings]  # the Think switch comes as an update
    return {"model": model["value"], "models": model["choices"], "status": status,
            "conversations": conversations["choices"], "settings": settings, "account": account}


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


def answer(outputs: list) -> str:
    """The model's words in the final reply."""
    return last_reply(outputs[-1])


def stats(outputs: list) -> str:
    """The stats line under the chat after the reply."""
    return outputs[-1][3]


def conversations(app) -> list:
    """The local owner's conversation summaries, newest first."""
    return app.store.conversations.list(LOCAL_USER)[0]


def test_reply_streams_in_and_the_conversation_is_saved(start_app):
    app = start_app(demo=True)
    client = app.client()
    tab = page(client)
    assert tab["model"] == Path(app.controller.models.demo_path).name  # by name: the picker shows no paths
    outputs = send(client, "What is the capital of France?", tab["model"])
    assert "Paris" in answer(outputs)
    assert "tok/s" in stats(outputs) and "tok/s" not in answer(outputs)  # copy gives the words only
    assert "context" in stats(outputs) and "/ 8,192 tokens" in stats(outputs)
    partial = [last_reply(o) for o in outputs[1:-1]]
    assert any(p and "Paris" not in p for p in partial), "the reply arrived in one piece, not streamed"
    [saved] = conversations(app)
    record = app.store.conversations.get(saved.id)
    assert saved.title == "What is the capital of France?"
    reply = record["messages"][1]["versions"][0]
    assert "Paris" in reply["content"] and reply["stats"]["generation_tokens"] > 0
    assert reply["model"] == app.controller.models.demo_path  # the store keeps the folder; the page, its name


def test_regenerate_keeps_every_version_and_stop_keeps_what_was_written(start_app):
    app = start_app()
    client = app.client()
    model = page(client)["model"]
    first = answer(send(client, "What is the capital of France?", model))
    again = client.submit(model, *GREEDY, api_name="/regenerate")
    again.result(timeout=300)
    assert answer(again.outputs()) == first
    [saved] = conversations(app)
    [user, reply] = app.store.conversations.get(saved.id)["messages"]
    prompt = reply["versions"][1]["stats"]["prompt_tokens"]
    assert f"{prompt - 1}/{prompt} prompt tokens cached" in stats(again.outputs())  # all but the one it must read
    assert again.outputs()[-1][4] == "2 / 2"
    assert len(reply["versions"]) == 2 and reply["current"] == 1
    previous = client.predict(api_name="/previous_version")
    assert previous[4] == "1 / 2" and app.store.conversations.get(saved.id)["messages"][1]["current"] == 0

    long = [*GREEDY[:-2], 8000, True]  # far more than any machine writes before the Stop lands
    job = client.submit({"text": "Write a long story about a dragon.", "files": []}, model, *long, api_name="/send")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any("*" not in last_reply(o) and last_reply(o) for o in job.outputs()):
        time.sleep(0.2)
    client.predict(api_name="/stop")
    job.result(timeout=120)
    assert "stopped" in stats(job.outputs())
    stored = app.store.conversations.get(saved.id)["messages"][-1]["versions"][0]
    assert stored["stats"]["finish_reason"] == "stopped" and stored["stats"]["generation_tokens"] < 8000
    assert stored["content"].strip() and stored["content"].strip() in answer(job.outputs())


def test_edit_answers_again_from_the_edited_message(start_app):
    app = start_app()
    client = app.client()
    model = page(client)["model"]
    first = answer(send(client, "What is the capital of France?", model))
    [saved] = conversations(app)
    edit = gr.EditData(None, {"index": 0, "value": "What is the capital of Germany?", "previous_value": ""})
    views = list(app.controller.replies.edit(saved.id, model, *GREEDY, edit=edit, request=LOCAL))
    edited = views[-1].conversation["messages"][1]["versions"][0]["content"]
    messages = app.store.conversations.get(saved.id)["messages"]
    assert messages[0]["content"] == "What is the capital of Germany?" and len(messages) == 2
    assert edited and edited != first and messages[1]["versions"][0]["content"] == edited  # answered again


def test_image_reaches_the_vision_model(start_app, tiny_vlm: Path, images):
    app = start_app()
    client = app.client()
    page(client)
    picker, _ = client.predict(str(tiny_vlm), api_name="/add_model_folder")
    assert picker["value"] == tiny_vlm.name
    red = send(client, "Describe it.", str(tiny_vlm), files=[images["red"]])
    user_content = red[-1][0][0]["content"]
    assert any(part.get("type") == "file" for part in user_content)
    client.predict(api_name="/new_chat")
    noise = send(client, "Describe it.", str(tiny_vlm), files=[images["noise"]])
    assert answer(red) != answer(noise)
    stored = [app.store.conversations.get(c.id) for c in conversations(app)]
    kept = [Path(m["images"][0]) for c in stored for m in c["messages"] if m.get("images")]
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
    with pytest.raises(Exception, match="at most 8 images"):
        send(client, "What is this?", str(tiny_vlm), files=[images["red"]] * 9)
    assert conversations(app) == []
    assert not (app.data_dir / "images").exists()


def test_settings_and_conversations_survive_a_restart(start_app, tmp_path: Path, tiny_vlm: Path):
    data_dir = tmp_path / "kept"
    first = start_app(data_dir)
    client = first.client()
    page(client)
    client.predict(str(tiny_vlm), api_name="/add_model_folder")
    custom = ["Answer in French.", 0.0, 0.8, 40, 0.05, 1.1, 7, 8, False]
    client.predict(*custom, api_name="/save_settings")  # no conversation open in this client: the defaults
    reply = answer(send(client, "Hello there", str(tiny_vlm), settings=custom))
    first.close()

    second = start_app(data_dir)
    reopened = second.client()
    tab = page(reopened)
    assert tab["settings"] == custom
    assert tab["model"] == tiny_vlm.name
    [(label, conversation_id)] = tab["conversations"]
    assert label.endswith(" · Hello there")
    history, _box, opened_title, line, _versions = reopened.predict(conversation_id, api_name="/open_conversation")
    assert opened_title == "Hello there" and "tok/s" in line
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
    assert app.store.take_notices() == []  # the page already showed it


def test_two_tabs_chat_at_the_same_time(start_app):
    app = start_app()
    first, second = app.client(), app.client()
    model = page(first)["model"]
    page(second)
    answers = {}

    def chat(name: str, client, question: str) -> None:
        answers[name] = answer(send(client, question, model))

    questions = {"fr": "What is the capital of France?", "de": "What is the capital of Germany?"}
    threads = [threading.Thread(target=chat, args=("fr", first, questions["fr"])),
               threading.Thread(target=chat, args=("de", second, questions["de"]))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert answers["fr"] and answers["de"] and answers["fr"] != answers["de"]
    stored = {}
    for summary in conversations(app):
        user, reply = app.store.conversations.get(summary.id)["messages"]
        stored[user["content"]] = reply["versions"][0]["content"].strip()
    assert stored == {questions[name]: answers[name] for name in questions}  # each tab got its own reply


def test_import_gguf_and_add_folder_from_the_page(start_app, tmp_path: Path):
    from tests.test_gguf import write_tiny_gguf

    app = start_app()
    client = app.client()
    page(client)
    write_tiny_gguf(tmp_path / "tiny-llama.gguf")
    picker, note = client.predict(str(tmp_path / "tiny-llama.gguf"), api_name="/import_gguf")
    imported = app.data_dir / "models" / "tiny-llama"
    assert picker["value"] == "tiny-llama" and (imported / "model.safetensors").exists()
    assert any(key == "tiny-llama" for _, key in picker["choices"])
    deadline = time.monotonic() + 60
    while "tiny-llama** loaded" not in page(client)["status"] and time.monotonic() < deadline:
        time.sleep(0.3)
    assert "loaded (text)" in page(client)["status"]
    again, _ = client.predict(str(tmp_path / "tiny-llama.gguf"), api_name="/import_gguf")
    assert again["value"] == "tiny-llama-2" and (app.data_dir / "models" / "tiny-llama-2").is_dir()  # never over
    with pytest.raises(Exception, match="There is no file at"):
        client.predict(str(tmp_path / "missing.gguf"), api_name="/import_gguf")
    with pytest.raises(Exception, match="has no config.json"):
        client.predict(str(tmp_path), api_name="/add_model_folder")
    with pytest.raises(Exception, match="There is no model folder at"):
        client.predict(str(tmp_path / "deleted-model"), api_name="/select_model")
    assert page(client)["model"] == "tiny-llama-2"  # still selected


def test_the_page_can_be_installed_as_a_desktop_app_with_its_name_and_icon(start_app):
    import json
    from urllib.request import urlopen

    app = start_app()
    manifest = json.loads(urlopen(app.url + "manifest.json", timeout=30).read())
    assert manifest["name"] == "mlx-gradio" and manifest["display"] == "standalone"
    [icon] = manifest["icons"]
    assert icon["type"] == "image/svg+xml"
    with urlopen(app.url + icon["src"].lstrip("/"), timeout=30) as answer:
        assert answer.read() == (Path(__file__).resolve().parents[1] / "assets" / "favicon.svg").read_bytes()
    assert 'rel="manifest"' in urlopen(app.url, timeout=30).read().decode()


WRONG_TYPES = [(1, "Temperature", "hot"), (2, "Top p", None), (3, "Top k", "ten"), (4, "Min p", [0.1]),
               (5, "Repetition penalty", {"x": 1}), (6, "Seed", "lucky"), (7, "Max new tokens", None),
               (7, "Max new tokens", True)]


def test_a_crafted_call_with_a_value_of_the_wrong_type_gets_a_sentence_naming_the_field(start_app):
    """Gradio's own number fields answer a word or null with a generic error; these name the field."""
    app = start_app()
    client = app.client()
    tab = page(client)
    for position, label, value in WRONG_TYPES:
        settings = list(GREEDY)
        settings[position] = value
        with pytest.raises(Exception, match=f"“{label}.*” takes a number") as refused:
            send(client, "Hello", tab["model"], settings=settings)
        assert "upstream" not in str(refused.value).lower()
    assert app.store.conversations.list(LOCAL_USER)[1] == 0  # nothing was sent
