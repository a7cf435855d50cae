"""Conversation records: titles, regenerate and edit cuts, requests and chatbot rendering."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from mlx_gradio import chat
from mlx_gradio.errors import ChatEditError
from mlx_gradio.jobs import GenerationStats, SamplingParams
from mlx_gradio.store import new_conversation

STATS = GenerationStats(40, 30, 9.0, 12, 6.2, 0.8, 0.13, "length")


def conversation_with_turns() -> dict:
    conversation = new_conversation()
    chat.add_user_message(conversation, "Look at this", ["/data/images/a.png"])
    chat.add_reply(conversation, "A red square.", STATS)
    chat.add_user_message(conversation, "And now?", [])
    chat.add_reply(conversation, "Still red.", None)
    return conversation


def test_first_message_titles_the_conversation():
    conversation = conversation_with_turns()
    assert conversation["title"] == "Look at this"
    assert chat.title_from("  a " * 40, []).endswith("…") and len(chat.title_from("a " * 40, [])) <= 48
    assert chat.title_from("", ["x.png"]) == "Image chat"


def test_regenerate_drops_the_last_reply_only():
    conversation = conversation_with_turns()
    chat.cut_for_regenerate(conversation)
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant", "user"]
    with pytest.raises(ChatEditError):
        chat.cut_for_regenerate(new_conversation())


def test_edit_replaces_the_text_keeps_images_and_drops_what_followed():
    conversation = conversation_with_turns()
    chat.cut_for_edit(conversation, 0, "Look again")
    assert conversation["messages"] == [{"role": "user", "content": "Look again", "images": ["/data/images/a.png"]}]
    with pytest.raises(ChatEditError):
        chat.cut_for_edit(conversation_with_turns(), 1, "not mine")
    with pytest.raises(ChatEditError):
        chat.cut_for_edit(conversation_with_turns(), 9, "gone")


def test_request_carries_system_prompt_images_and_params():
    conversation = conversation_with_turns()
    params = SamplingParams(temperature=0.0, max_tokens=5)
    request = chat.build_request(conversation, "/models/m", "Be brief.", params)
    assert request.messages[0].role == "system" and request.messages[0].content == "Be brief."
    assert request.messages[1].images == ("/data/images/a.png",)
    assert request.params == params and request.model_path == "/models/m"
    assert chat.build_request(conversation, "/m", "  ", params).messages[0].role == "user"


def test_chatbot_shows_images_text_and_a_stats_line():
    history = chat.to_chatbot(conversation_with_turns())
    assert history[0] == {"role": "user", "content": [{"path": "/data/images/a.png"}, "Look at this"]}
    assert history[1]["content"].startswith("A red square.")
    assert "0.80 s to first token" in history[1]["content"] and "6.2 tok/s" in history[1]["content"]
    assert "30/40 prompt tokens cached" in history[1]["content"] and "max tokens reached" in history[1]["content"]
    assert history[3] == {"role": "assistant", "content": "Still red."}
    pending = chat.to_chatbot({"messages": [{"role": "assistant", "content": ""}]}, "Loading…")
    assert pending[0]["content"] == "*Loading…*"


def test_export_writes_the_whole_conversation(tmp_path):
    conversation = conversation_with_turns()
    path = chat.export_json(conversation, tmp_path)
    assert json.loads(path.read_text()) == conversation
    assert path.name.startswith("Look-at-this-")
    assert asdict(STATS) == conversation["messages"][1]["stats"]
