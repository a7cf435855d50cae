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
    for change in (lambda: conversations.rename(conversation_id, "other", TAB_B),
                   lambda: replies.next_version(conversation_id, TAB_B)):
        with pytest.raises(gr.Error, match="being written"):
            change()
    replies.stop(conversation_id, TAB_B)  # another tab's Stop does not end tab A's reply
    views = list(sending)
    reply = controller.store.conversations.get(conversation_id)["messages"][1]
    assert reply_text(reply) and chat.current_version(reply)["stats"]["finish_reason"] == "length"
    assert no_placeholder(views[-1])
    # Once the reply is done the conversation is free again.
    conversations.rename(conversation_id, "Capitals", TAB_B)
    assert controller.store.conversations.list(LOCAL_USER)[0][0].title == "Capitals"


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
