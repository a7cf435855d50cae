"""Files in the chat: text attachments in the prompt, binaries refused; export as Markdown, import JSON."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from mlx_gradio.chats import chat, conversation_io
from mlx_gradio.chats.attachments import MAX_TEXT_BYTES
from mlx_gradio.errors import ImportFailed
from mlx_gradio.store import LOCAL_USER
from mlx_gradio.ui import render
from tests.test_app import GREEDY, page, send

NOTES = "Shopping list:\n- flour\n- salt\n- yeast\n"


def test_a_text_file_reaches_the_model_as_a_named_block_and_shows_as_an_attachment(start_app, tmp_path: Path):
    app = start_app()
    client = app.client()
    model = page(client)["model"]
    notes = tmp_path / "list.md"
    notes.write_text(NOTES)
    outputs = send(client, "What is on my list?", model, files=[notes])
    [summary] = app.store.conversations.list(LOCAL_USER)[0]
    record = app.store.conversations.get(summary.id)
    [attached] = record["messages"][0]["files"]
    assert attached["name"] == "list.md" and Path(attached["path"]).read_text() == NOTES
    assert Path(attached["path"]).is_relative_to(app.data_dir / "files")  # kept: Gradio's temp copy may go
    [_, user] = chat.model_messages(record, 1, "Be brief.")
    assert user.content == f'<file name="list.md">\n{NOTES.rstrip()}\n</file>\n\nWhat is on my list?'
    stats = record["messages"][1]["versions"][0]["stats"]
    assert stats["prompt_tokens"] > 40  # the file's lines were read by the model
    shown = outputs[-1][0][0]["content"]  # the user's turn in the chat: the file, then the text
    assert [part["type"] for part in shown] == ["file", "text"] and "list.md" in json.dumps(shown[0])
    assert render.chatbot_messages(record)[0]["content"][0]["alt_text"] == "list.md"


def test_binary_non_utf8_and_huge_files_are_refused_and_nothing_changes(start_app, tmp_path: Path):
    app = start_app()
    client = app.client()
    model = page(client)["model"]
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"text\x00\x01\x02 and zeros")
    latin = tmp_path / "old.csv"
    latin.write_bytes("caf\xe9,1\n".encode("latin-1"))
    huge = tmp_path / "huge.log"
    huge.write_bytes(b"a line of log\n" * (MAX_TEXT_BYTES // 14 + 10))
    for path, reason in ((binary, "is a binary file"), (latin, "is not UTF-8 text"), (huge, "can be at most 1 MB")):
        with pytest.raises(Exception, match=reason):
            send(client, "Read this.", model, files=[path])
    assert app.store.conversations.list(LOCAL_USER)[1] == 0
    assert not (app.data_dir / "files").exists()


def conversation_with_everything() -> dict:
    record = chat.new_conversation(LOCAL_USER, "/models/qwen3")
    record["settings"] = {"system_prompt": "Be brief.", "temperature": 0.6}
    chat.add_user_message(record, "What is on the list?", [], [{"name": "list.md", "path": "/nowhere/list.md"}])
    chat.add_reply_version(record, 1, "Flour and salt.", None, "/models/qwen3", "The list has two items.", 2.0)
    return record


def test_markdown_export_has_each_turn_the_thinking_folded_and_the_attachments(tmp_path: Path):
    text = conversation_io.export_markdown(conversation_with_everything(), tmp_path).read_text()
    assert text.startswith("# What is on the list?\n")
    assert "> Be brief." in text and "## You" in text and "*Attached: list.md*" in text
    assert "## qwen3\n\n<details><summary>Thinking</summary>\n\nThe list has two items.\n\n</details>" in text
    assert text.rstrip().endswith("Flour and salt.")


def test_json_and_openai_imports_round_trip_and_foreign_paths_are_dropped(make_controller, tmp_path: Path,
                                                                           tiny_llama: Path):
    controller = make_controller()
    original = conversation_with_everything()
    exported = conversation_io.export_json(original, tmp_path)
    upload_dir = controller.conversations.upload_dir
    upload_dir.mkdir(parents=True, exist_ok=True)
    ours = upload_dir / "ours.json"
    ours.write_bytes(exported.read_bytes())
    view = controller.conversations.import_file(str(ours), gr.Request(session_hash="import"))
    imported = controller.store.conversations.get(view.conversation_id)
    assert imported["id"] != original["id"] and imported["owner"] == LOCAL_USER
    assert [m.get("content") for m in imported["messages"]] == ["What is on the list?", None]
    assert chat.current_version(imported["messages"][1])["reasoning"] == "The list has two items."
    assert "files" not in imported["messages"][0]  # /nowhere is not one of the controller's folders
    assert imported["settings"]["system_prompt"] == "Be brief."

    # A hand-edited file with broken stats and versions still opens and renders.
    broken = json.loads(exported.read_text())
    broken["messages"][1]["versions"][0].update(stats={"generation_tps": "fast"}, thought_s="long", created=None)
    broken["messages"][1]["current"] = 7
    ours.write_text(json.dumps(broken))
    view = controller.conversations.import_file(str(ours), gr.Request(session_hash="import"))
    version = chat.current_version(view.conversation["messages"][1])
    assert version["stats"] is None and version["thought_s"] is None and version["content"] == "Flour and salt."
    assert render.stats_line(view.conversation) == "" and len(render.chatbot_messages(view.conversation)) == 3

    openai_style = upload_dir / "openai.json"
    openai_style.write_text(json.dumps({"messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Spain?"}]}))
    view = controller.conversations.import_file(str(openai_style), gr.Request(session_hash="import"))
    record = view.conversation
    assert [m["role"] for m in record["messages"]] == ["user", "assistant", "user"]
    assert record["title"] == "Capital of France?" and record["settings"]["system_prompt"] == "You are terse."
    # The imported conversation goes on like any other.
    views = list(controller.replies.send(record["id"], {"text": "Thanks."}, str(tiny_llama),
                                             *GREEDY, request=gr.Request(session_hash="import")))
    assert views[-1].conversation["messages"][-1]["role"] == "assistant"


@pytest.mark.parametrize("content, why", [
    (b"not json", "not JSON"),
    (b'{"hello": 1}', "neither a conversation"),
    (b'[{"role": "wizard", "content": "hi"}]', "no role"),
    (b"[]", "needs 1 to"),
    (b'{"schema": 1, "messages": ["x"]}', "Message 1 is not a message"),
    (b'{"schema": 2, "messages": [{"role": "user", "content": "hi"}, 7]}', "Message 2 is not a message"),
    (b'{"schema": 2, "messages": [{"role": "assistant", "versions": "abc"}]}', "reply without any text"),
])
def test_a_bad_import_says_what_is_wrong(tmp_path: Path, content: bytes, why: str):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(ImportFailed, match=why):
        conversation_io.read_import(path, LOCAL_USER, [])


def test_every_field_of_an_import_is_checked_and_its_text_cleaned(make_controller, tmp_path: Path):
    """Wrong types, a date that is a word, and lone surrogates (which Gradio's JSON encoder cannot write, so a
    page that shows them never loads) become a conversation the page can show and the store can write."""
    from mlx_gradio.controller.access import Access

    controller = make_controller(access=Access(owners={"ann": "pw"}))
    ann = gr.Request(username="ann", session_hash="import")
    upload_dir = controller.conversations.upload_dir
    upload_dir.mkdir(parents=True, exist_ok=True)
    odd = upload_dir / "odd.json"
    odd.write_text(json.dumps({
        "schema": 2, "title": "Plan \ud800 B\n", "created": "yesterday", "model": 42,
        "settings": {"system_prompt": "Be \udfff brief", "temperature": "hot", "top_k": 5, "x" * 50: 1},
        "messages": [
            {"role": "user", "content": "Hi \ud83d", "images": "not-a-list", "files": [{"name": "\udc00.py",
                                                                                         "path": 7}]},
            {"role": "assistant", "current": "second", "versions": [
                {"content": "Hello", "created": "noon", "model": ["x"],
                 "stats": {**{k: 1 for k in ("prompt_tokens", "cached_tokens", "prompt_tps", "generation_tokens",
                                             "generation_tps", "time_to_first_token", "peak_memory_gb")},
                           "finish_reason": "stop\ud800", "model_name": "m\udbff", "junk": {"deep": 1}}},
                {"content": "Hi there"}]}]}, ensure_ascii=True))
    view = controller.conversations.import_file(str(odd), ann)
    record = view.conversation
    json.dumps(record, ensure_ascii=False).encode("utf-8")  # no lone surrogate is left anywhere
    assert record["title"] == "Plan \ufffd B" and record["model"] is None and record["owner"] == "ann"
    assert record["created"] > 1e9 and record["settings"] == {"system_prompt": "Be \ufffd brief", "temperature": "hot",
                                                                "top_k": 5}
    user, reply = record["messages"]
    assert user["content"] == "Hi \ufffd" and user["images"] == [] and "files" not in user
    first = reply["versions"][0]
    assert first["created"] == 0.0 and first["model"] is None and reply["current"] == 0
    assert first["stats"]["finish_reason"] == "stop\ufffd" and "junk" not in first["stats"]
    assert [v["content"] for v in reply["versions"]] == ["Hello", "Hi there"]
    numbered = upload_dir / "numbered.json"
    numbered.write_text(json.dumps({"schema": 2, "messages": [{"role": "assistant", "versions": [{"content": 5}]}]}))
    with pytest.raises(gr.Error, match="neither text nor a list"):
        controller.conversations.import_file(str(numbered), ann)
    # The page of that user still loads, and the conversation opens (its settings shown within their ranges).
    page = controller.page_load(ann)
    assert any(s.id == record["id"] for s in page.conversations.summaries)
    shown = controller.chat_settings.show(record["id"], "", ann)
    assert shown.values["system_prompt"] == "Be \ufffd brief"


def test_an_import_from_outside_the_upload_folder_is_refused(make_controller, tmp_path: Path):
    controller = make_controller()
    secret = tmp_path / "elsewhere.json"
    secret.write_text('[{"role": "user", "content": "hi"}]')
    with pytest.raises(gr.Error, match="Pick a JSON file"):
        controller.conversations.import_file(str(secret), gr.Request(session_hash="import"))
