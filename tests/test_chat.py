"""Conversation records and their rendering: turns, reply versions, notices, what the model sees."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from mlx_gradio.chats import chat, conversation_io
from mlx_gradio.controller.views import Draft
from mlx_gradio.engine.jobs import GenerationStats
from mlx_gradio.errors import ChatEditError
from mlx_gradio.ui import render

STATS = asdict(GenerationStats(40, 30, 9.0, 12, 6.2, 0.8, 0.13, "length", context_length=8192))


def conversation_with_turns() -> dict:
    conversation = chat.new_conversation("ann", "/models/m")
    chat.add_user_message(conversation, "Look at this", ["/data/images/a.png"])
    chat.add_reply_version(conversation, 1, "A red square.", STATS, "/models/m")
    chat.add_user_message(conversation, "And now?", [])
    chat.add_reply_version(conversation, 3, "Still red.", None, "/models/m")
    return conversation


def test_first_message_titles_the_conversation():
    conversation = conversation_with_turns()
    assert conversation["title"] == "Look at this"
    assert chat.title_from("  a " * 40, []).endswith("…") and len(chat.title_from("a " * 40, [])) <= 48
    assert chat.title_from("", ["x.png"]) == "Image chat"


def test_regenerate_adds_versions_and_switching_flips_between_them():
    conversation = conversation_with_turns()
    slot = chat.reply_slot(conversation)
    assert slot == 3
    chat.add_reply_version(conversation, slot, "Red, still.", None, "/models/m")
    last = conversation["messages"][-1]
    assert [v["content"] for v in last["versions"]] == ["Still red.", "Red, still."] and last["current"] == 1
    assert render.version_label(conversation) == "2 / 2"
    chat.select_version(conversation, -1)
    assert chat.current_version(last)["content"] == "Still red."
    chat.select_version(conversation, -1)  # stays at the first
    assert last["current"] == 0 and render.version_label(conversation) == "1 / 2"
    with pytest.raises(ChatEditError):
        chat.reply_slot(chat.new_conversation("ann"))


def test_the_model_sees_current_versions_and_skips_unanswered_turns():
    conversation = conversation_with_turns()
    chat.add_user_message(conversation, "No reply came to this", [])
    chat.mark_unanswered(conversation, len(conversation["messages"]), "model failed")
    chat.add_user_message(conversation, "Try this instead", [])
    messages = chat.model_messages(conversation, len(conversation["messages"]), "Be brief.")
    assert [m.role for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1].content == "Try this instead" and messages[1].images == ("/data/images/a.png",)
    assert chat.model_messages(conversation, 2, "  ")[0].role == "user"


def test_an_unanswered_turn_shows_a_notice_and_edit_indexes_skip_it():
    conversation = conversation_with_turns()
    chat.add_user_message(conversation, "Unanswered", [])
    chat.mark_unanswered(conversation, 5, "The model could not be loaded.")
    chat.add_user_message(conversation, "Later", [])
    shown = render.chatbot_messages(conversation)
    assert [m["role"] for m in shown] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    assert "No reply: The model could not be loaded." in shown[5]["content"]
    assert chat.message_at(conversation, 6) == 5  # the notice takes a place on screen, not in the record
    assert chat.message_at(conversation, 4) == 4
    chat.add_reply_version(conversation, 6, "Answer", None, "/m")
    assert "error" not in conversation["messages"][5]


def test_edit_makes_a_copy_and_leaves_the_original_alone():
    conversation = conversation_with_turns()
    changed = chat.edited(conversation, 0, "Look again")
    assert changed["messages"] == [{"role": "user", "content": "Look again", "images": ["/data/images/a.png"]}]
    assert changed["title"] == "Look again"
    assert len(conversation["messages"]) == 4 and conversation["messages"][0]["content"] == "Look at this"
    for bad in (1, 9, -1, "0"):
        with pytest.raises(ChatEditError):
            chat.edited(conversation, bad, "nope")


def test_a_conversation_from_the_previous_version_is_upgraded():
    old = {"id": "a" * 32, "title": "t", "model": "/m", "created": 1.0, "updated": 2.0, "messages": [
        {"role": "user", "content": "hi", "images": []},
        {"role": "assistant", "content": "hello", "images": [], "stats": STATS}]}
    new = chat.upgrade(old, "local")
    assert new["owner"] == "local" and new["schema"] == chat.SCHEMA_VERSION
    assert chat.current_version(new["messages"][1]) == {"content": "hello", "stats": STATS, "model": "/m",
                                                        "created": 2.0}
    assert chat.upgrade(new, "other") is new


def test_the_chat_shows_text_images_and_a_stats_line_outside_the_messages():
    conversation = conversation_with_turns()
    history = render.chatbot_messages(conversation)
    assert history[0]["content"][1] == "Look at this" and history[0]["content"][0]["path"]
    assert history[1] == {"role": "assistant", "content": "A red square."}  # copy gives the model's words only
    conversation["messages"].pop()
    conversation["messages"].pop()
    line = render.stats_line(conversation)
    assert "m · 0.80 s to first token" in line and "6.2 tok/s" in line and "30/40 prompt tokens cached" in line
    assert "max tokens reached" in line and "context 52 / 8,192 tokens" in line


def test_a_reply_being_written_shows_at_its_place():
    conversation = conversation_with_turns()
    shown = render.chatbot_messages(conversation, Draft(3, "", "Reading the prompt: 10 / 40 tokens"))
    assert shown[3]["content"] == "*Reading the prompt: 10 / 40 tokens*" and len(shown) == 4
    shown = render.chatbot_messages(conversation, Draft(4, "Par", ""))
    assert shown[-1]["content"] == "Par" and len(shown) == 5


def test_export_writes_the_whole_conversation(tmp_path):
    conversation = conversation_with_turns()
    path = conversation_io.export_json(conversation, tmp_path)
    assert json.loads(path.read_text()) == conversation
    assert path.name.startswith("Look-at-this-")


def test_dates_in_the_list_are_short():
    now = 1_800_000_000.0
    assert render.when(now - 60, now).count(":") == 1
    assert render.when(now - 86_400, now) == "yesterday"
    assert len(render.when(now - 3 * 86_400, now)) == 3  # a weekday
    assert render.when(now - 400 * 86_400, now).endswith(("2025", "2026", "2027"))


def test_a_reply_with_thinking_shows_a_folded_block_and_edit_indexes_count_it():
    conversation = chat.new_conversation("ann")
    chat.add_user_message(conversation, "Capital of France?", [])
    chat.add_reply_version(conversation, 1, "Paris.", None, "/m", reasoning="\nThe capital.\n", thought_s=72.4)
    chat.add_user_message(conversation, "And Spain?", [])
    shown = render.chatbot_messages(conversation)
    assert shown[1] == {"role": "assistant", "content": "The capital.",
                        "metadata": {"title": "Thought for 1 min 12 s", "status": "done"}}
    assert shown[2] == {"role": "assistant", "content": "Paris."}
    assert chat.message_at(conversation, 3) == 2  # the thinking block takes a place on screen
    # While the reply streams and the answer has not begun, the block is open and pending.
    conversation["messages"][1]["versions"][0]["thought_s"] = None
    streaming = render.chatbot_messages(conversation, streaming=True)
    assert streaming[1]["metadata"] == {"title": "Thinking…", "status": "pending"}
