"""Replies never destroy what was there: versions, failed sends, edits and regenerates, one reply at a time.

These drive the controller's handlers directly (with a `gr.Request` per tab, no Blocks, no HTTP)
and step through their views, so each test knows exactly which point a reply has reached. Replies
come from the tiny llama: what is checked is what happens to them, not their words.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gradio as gr
import pytest

from mlx_gradio.chats import chat
from mlx_gradio.store import LOCAL_USER
from mlx_gradio.ui import render
from tests.test_app import GREEDY

TAB_A, TAB_B = gr.Request(session_hash="tab-a"), gr.Request(session_hash="tab-b")
STRICT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.index0 > 0 and messages[loop.index0 - 1]['role'] == message['role'] %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def strict_model(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """The tiny llama with a chat template that refuses two turns of one role in a row."""
    folder = tmp_path_factory.mktemp("models") / "strict-llama"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(tiny_llama / name, folder / name)
    (folder / "model.safetensors").symlink_to(tiny_llama / "model.safetensors")
    config = json.loads((tiny_llama / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": STRICT_TEMPLATE}))
    return folder


@pytest.fixture(scope="module")
def broken_model(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A model folder that looks whole but whose weights file is garbage: loading it fails."""
    folder = tmp_path_factory.mktemp("models") / "broken-model"
    folder.mkdir()
    shutil.copy(tiny_llama / "config.json", folder / "config.json")
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json" + b"\0" * 64)
    return folder


def run(views, collected: list) -> None:
    """Step a handler to its end, keeping every view it showed."""
    for view in views:
        collected.append(view)


def reply_text(message: dict) -> str:
    return chat.current_version(message)["content"]


def no_placeholder(view) -> bool:
    """Whether the chat, as shown, holds no "waiting" or "reading" placeholder."""
    return view.draft is None and not view.streaming and all(
        "Waiting for the model" not in str(m["content"]) for m in render.chatbot_messages(view.conversation))


def test_a_failed_send_keeps_the_turn_with_a_notice_and_the_next_send_works(make_controller, broken_model, strict_model):
    controller = make_controller()
    replies = controller.replies
    controller.store.settings.update_app(model_folders=[str(broken_model), str(strict_model)])
    views: list = []
    with pytest.raises(gr.Error, match="could not be loaded"):
        run(replies.send("", {"text": "Hello?"}, str(broken_model), *GREEDY, request=TAB_A), views)
    assert no_placeholder(views[-1])
    conversation_id = views[-1].conversation_id
    [turn] = controller.store.conversations.get(conversation_id)["messages"]
    assert turn["content"] == "Hello?" and "could not be loaded" in turn["error"]
    assert "No reply" in render.chatbot_messages(views[-1].conversation)[-1]["content"]
    assert controller.engine.status().state == "error"

    # The next message, to a template that refuses two user turns in a row, is answered.
    views = []
    run(replies.send(conversation_id, {"text": "What is the capital of France?"}, str(strict_model), *GREEDY,
                     request=TAB_A), views)
    messages = controller.store.conversations.get(conversation_id)["messages"]
    assert [m["role"] for m in messages] == ["user", "user", "assistant"]
    assert reply_text(messages[2]) and chat.current_version(messages[2])["stats"]["finish_reason"] == "length"
    assert "error" in messages[0]  # the unanswered turn keeps its note; the model never saw it


def test_retry_answers_an_unanswered_turn(make_controller, tiny_llama, broken_model):
    controller = make_controller()
    replies = controller.replies
    views: list = []
    with pytest.raises(gr.Error):
        run(replies.send("", {"text": "What is the capital of France?"}, str(broken_model), *GREEDY,
                         request=TAB_A), views)
    conversation_id = views[-1].conversation_id
    views = []
    run(replies.regenerate(conversation_id, str(tiny_llama), *GREEDY, request=TAB_A), views)
    [turn, reply] = controller.store.conversations.get(conversation_id)["messages"]
    assert "error" not in turn and reply_text(reply)


def test_a_failed_or_stopped_regenerate_leaves_the_previous_version_current(make_controller, tiny_llama, broken_model):
    controller = make_controller()
    replies = controller.replies
    model = str(tiny_llama)
    views: list = []
    run(replies.send("", {"text": "What is the capital of France?"}, model, *GREEDY, request=TAB_A), views)
    conversation_id = views[-1].conversation_id
    first = reply_text(controller.store.conversations.get(conversation_id)["messages"][1])

    views = []
    with pytest.raises(gr.Error, match="could not be loaded"):
        run(replies.regenerate(conversation_id, str(broken_model), *GREEDY, request=TAB_A), views)
    assert no_placeholder(views[-1]) and reply_text(views[-1].conversation["messages"][1]) == first

    regenerating = replies.regenerate(conversation_id, model, *GREEDY, request=TAB_A)
    assert next(regenerating).draft is not None  # the reply is claimed, nothing has run yet
    replies.stop(conversation_id, TAB_A)
    views = list(regenerating)
    assert no_placeholder(views[-1])
    [reply] = controller.store.conversations.get(conversation_id)["messages"][1:]
    assert len(reply["versions"]) == 1 and reply_text(reply) == first


def test_a_failed_edit_changes_nothing_and_gives_the_text_back(make_controller, tiny_llama, broken_model):
    controller = make_controller()
    replies = controller.replies
    views: list = []
    run(replies.send("", {"text": "What is the capital of France?"}, str(tiny_llama), *GREEDY,
                     request=TAB_A), views)
    conversation_id = views[-1].conversation_id
    before = controller.store.conversations.get(conversation_id)
    edit = gr.EditData(None, {"index": 0, "value": "What is the capital of Spain?", "previous_value": ""})
    views = []
    with pytest.raises(gr.Error, match="your edited text is in the message box"):
        run(replies.edit(conversation_id, str(broken_model), *GREEDY, edit=edit, request=TAB_A), views)
    assert views[-1].restore_input == {"text": "What is the capital of Spain?", "files": []}
    assert controller.store.conversations.get(conversation_id)["messages"] == before["messages"]


def test_one_reply_at_a_time_per_conversation_and_stop_is_per_tab(make_controller, tiny_llama):
    controller = make_controller()
    replies, conversations = controller.replies, controller.conversations
    model = str(tiny_llama)
    sending = replies.send("", {"text": "What is the capital of France?"}, model, *GREEDY, request=TAB_A)
    conversation_id = next(sending).conversation_id  # tab A's reply holds the conversation from here on
    with pytest.raises(gr.Error, match="already being written"):
        list(replies.regenerate(conversation_id, model, *GREEDY, request=TAB_B))
    with pytest.raises(gr.Error, match="already being written"):
        list(replies.send(conversation_id, {"text": "me too"}, model, *GREEDY, request=TAB_B))
    with pytest.raises(gr.Error, match="being written"):
        replies.next_version(conversation_id, TAB_B)
    replies.stop(conversation_id, TAB_B)  # another tab's Stop does not end tab A's reply
    views = list(sending)
    reply = controller.store.conversations.get(conversation_id)["messages"][1]
    assert reply_text(reply) and chat.current_version(reply)["stats"]["finish_reason"] == "length"
    assert no_placeholder(views[-1])
    # Once the reply is done the conversation is free again.
    conversations.rename(conversation_id, "Capitals", TAB_B)
    assert controller.store.conversations.list(LOCAL_USER)[0][0].title == "Capitals"


def test_changes_made_while_a_reply_streams_are_kept_when_it_is_saved(make_controller, tiny_llama, tiny_thinking):
    """A rename, new settings and another model picked while the reply is written: the reply's saves take them
    in instead of writing its own copy over them, and one that comes after its last save is kept too."""
    controller = make_controller()
    replies, conversations, settings = controller.replies, controller.conversations, controller.chat_settings
    controller.store.settings.update_app(model_folders=[str(tiny_llama), str(tiny_thinking)])
    sending = replies.send("", {"text": "Write a long story about a dragon."}, str(tiny_llama),
                           *GREEDY[:-2], 60, True, request=TAB_A)
    views = [next(sending)]
    conversation_id = views[0].conversation_id
    conversations.rename(conversation_id, "Dragons", TAB_B)
    settings.save(conversation_id, "Be brief.", 0.3, 1.0, 0, 0.0, 1.0, -1, 99, True, request=TAB_B)
    settings.pick_model(conversation_id, str(tiny_thinking), TAB_B)
    assert controller.is_streaming(conversation_id)
    for view in sending:  # the reply goes on with what it was sent with, and saves as it goes
        views.append(view)
    saved = controller.store.conversations.get(conversation_id)
    assert saved["title"] == "Dragons" and saved["model"] == str(tiny_thinking)
    assert saved["settings"]["system_prompt"] == "Be brief." and saved["settings"]["max_tokens"] == 99
    version = chat.current_version(saved["messages"][1])
    assert version["model"] == str(tiny_llama) and version["stats"]["generation_tokens"] == 60  # what wrote it
    reopened = settings.show(conversation_id, "", TAB_A)
    assert reopened.values["max_tokens"] == 99 and reopened.model == "tiny-thinking"


def test_a_continue_that_fails_keeps_the_replys_stats_and_its_continue(make_controller, tiny_llama, broken_model):
    controller = make_controller()
    controller.store.settings.update_app(model_folders=[str(tiny_llama), str(broken_model)])
    views: list = []
    run(controller.replies.send("", {"text": "Tell me a story."}, str(tiny_llama), *GREEDY, request=TAB_A), views)
    conversation_id = views[-1].conversation_id
    before = chat.current_version(controller.store.conversations.get(conversation_id)["messages"][1])
    assert before["stats"]["finish_reason"] == "length"  # cut by max tokens: Continue is offered
    with pytest.raises(gr.Error):
        run(controller.replies.continue_reply(conversation_id, str(broken_model), *GREEDY, request=TAB_A), views)
    after = chat.current_version(controller.store.conversations.get(conversation_id)["messages"][1])
    assert after["content"] == before["content"] and after["stats"] == before["stats"]
    assert chat.continuable_slot(controller.store.conversations.get(conversation_id)) == 1


def test_a_message_too_long_for_the_context_is_refused_before_any_prompt_read(make_controller, tiny_llama):
    controller = make_controller()
    paste = "All work and no play makes Jack a dull boy. " * 4_500  # about 200,000 characters
    views: list = []
    with pytest.raises(gr.Error, match=r"too long for this model.*context holds 8,192"):
        run(controller.replies.send("", {"text": paste}, str(tiny_llama), *GREEDY,
                                        request=TAB_A), views)
    statuses = [v.draft.status for v in views if v.draft]
    assert not any(status.startswith("Reading the prompt") for status in statuses)
    assert no_placeholder(views[-1])
    assert controller.engine.status().state == "ready" and not controller.engine.status().generating


def test_deleting_a_conversation_while_its_reply_is_written_keeps_it_deleted(make_controller, tiny_llama):
    controller = make_controller()
    replies, conversations = controller.replies, controller.conversations
    sending = replies.send("", {"text": "Write a long story about a dragon."}, str(tiny_llama),
                           *GREEDY[:-2], 200, True, request=TAB_A)
    conversation_id = next(sending).conversation_id
    conversations.delete(conversation_id, TAB_B)  # the same user, from another tab
    views = list(sending)
    assert views[-1].conversation is None
    assert controller.store.conversations.list(LOCAL_USER)[1] == 0
    assert not (controller.data_dir / "conversations" / f"{conversation_id}.json").exists()


def test_a_full_disk_is_a_sentence_for_images_exports_and_model_picks_too(make_controller, tiny_llama, tiny_vlm,
                                                                        small_disk, images, monkeypatch):
    import tempfile

    from tests.conftest import fill_disk

    controller = make_controller(small_disk / "data")
    views: list = []
    run(controller.replies.send("", {"text": "Hello"}, str(tiny_llama), *GREEDY, request=TAB_A), views)
    conversation_id = views[-1].conversation_id
    upload = controller.conversations.upload_dir / "red.png"
    upload.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(images["red"], upload)
    monkeypatch.setattr(tempfile, "tempdir", str(small_disk))  # exports are written to the temp dir
    controller.store.settings.update_app(model_folders=[str(tiny_llama), str(tiny_vlm)])
    filler = fill_disk(small_disk)
    before = controller.store.conversations.get(conversation_id)
    with pytest.raises(gr.Error, match=r"could not be written \(No space left on device\).*Free some disk space"):
        list(controller.replies.send(conversation_id, {"text": "And this?", "files": [str(upload)]}, str(tiny_vlm),
                                     *GREEDY, request=TAB_A))
    assert not list((small_disk / "data" / "images").glob(".*.tmp"))  # no half-written image is left
    for export in (lambda: controller.conversations.export(conversation_id, TAB_A),
                   lambda: controller.conversations.export(conversation_id, TAB_A, markdown=True)):
        with pytest.raises(gr.Error, match="No space left on device"):
            export()
    with pytest.raises(gr.Error, match="No space left on device"):
        controller.models.select(str(tiny_vlm), TAB_A)
    assert controller.store.conversations.get(conversation_id)["messages"] == before["messages"]
    filler.unlink()
    assert Path(controller.conversations.export(conversation_id, TAB_A)).exists()


def test_a_full_disk_is_a_clear_error_and_the_next_send_after_freeing_space_works(make_controller, tiny_llama, small_disk):
    from tests.conftest import fill_disk

    controller = make_controller(small_disk / "data")
    model = str(tiny_llama)
    filler = fill_disk(small_disk)
    with pytest.raises(gr.Error, match=r"No space left on device.*Free some disk space") as refused:
        list(controller.replies.send("", {"text": "What is the capital of France?"}, model, *GREEDY,
                                         request=TAB_A))
    assert refused.value.title == "Could not send the message"
    with pytest.raises(gr.Error, match="No space left"):
        controller.chat_settings.save("", "Be brief.", 0.5, 1.0, 0, 0.0, 1.0, -1, 12, True, request=TAB_A)
    assert controller.store.conversations.list(LOCAL_USER)[1] == 0
    assert controller.store.settings.user(LOCAL_USER)["system_prompt"] == ""
    filler.unlink()
    views = list(controller.replies.send("", {"text": "What is the capital of France?"}, model, *GREEDY,
                                             request=TAB_A))
    assert reply_text(views[-1].conversation["messages"][1])
    assert controller.store.conversations.list(LOCAL_USER)[1] == 1


def test_what_a_user_asks_wrongly_is_logged_as_info_and_trouble_as_a_warning(make_controller, caplog):
    import logging

    controller = make_controller()
    with caplog.at_level(logging.DEBUG, logger="mlx_gradio.controller.feedback"):
        with pytest.raises(gr.Error, match="Type a message"):
            list(controller.replies.send("", {"text": "  "}, "", *GREEDY, request=TAB_A))
        with pytest.raises(gr.Error, match="does not exist"):
            controller.conversations.open("0" * 32, TAB_A)
    levels = {record.getMessage().split(" failed")[0]: record.levelname for record in caplog.records}
    assert levels == {"send the message": "INFO", "open that conversation": "WARNING"}
