"""Continue: a reply cut short by max tokens (or Stop) is written on in place, from the cache.

The controller's handlers are called directly (no Blocks, no HTTP); mechanics on the tiny llama,
words (thinking, a reply that ends by itself) on the demo model.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest

from mlx_gradio.chats import chat
from mlx_gradio.ui.chat_events import chat_outputs
from tests.test_app import GREEDY

TAB = gr.Request(session_hash="continue-tab")


def settings(max_tokens: int) -> list:
    return [*GREEDY[:-2], max_tokens, True]


def last_version(view) -> dict:
    return chat.current_version(view.conversation["messages"][-1])


def test_a_cut_reply_continues_in_place_and_reads_the_same_as_one_long_reply(make_controller, tiny_llama):
    controller = make_controller()
    replies, model = controller.replies, str(tiny_llama)
    question = {"text": "Write one sentence about the sea."}
    whole = list(replies.send("", question, model, *settings(20), request=TAB))[-1]
    cut = list(replies.send("", question, model, *settings(8), request=TAB))[-1]
    # The tiny llama never ends a reply by itself: both are cut, and both offer Continue.
    assert [last_version(v)["stats"]["finish_reason"] for v in (cut, whole)] == ["length", "length"]
    assert chat_outputs(cut)[-1]["visible"] is True and chat_outputs(whole)[-1]["visible"] is True

    views = list(replies.continue_reply(cut.conversation_id, model, *settings(12), request=TAB))
    version = last_version(views[-1])
    assert len(views[-1].conversation["messages"][-1]["versions"]) == 1  # written on in place, not a new version
    assert version["content"].startswith(last_version(cut)["content"])
    assert version["content"] == last_version(whole)["content"]  # greedy: the same words as one long reply
    stats = version["stats"]
    assert stats["prompt_tokens"] - stats["cached_tokens"] <= 2  # the cache held the prompt and the cut reply
    saved = controller.store.conversations.get(cut.conversation_id)
    assert chat.current_version(saved["messages"][-1])["content"] == version["content"]


def test_a_reply_cut_while_thinking_thinks_on_then_answers(make_controller, thinking_model: Path):
    controller = make_controller(demo=True)
    controller.store.settings.update_app(model_folders=[str(thinking_model)])
    replies, model = controller.replies, str(thinking_model)
    cut = list(replies.send("", {"text": "What is the capital of France?"}, model, *settings(2), request=TAB))[-1]
    assert last_version(cut)["content"] == "" and last_version(cut)["reasoning"]
    views = list(replies.continue_reply(cut.conversation_id, model, *settings(24), request=TAB))
    version = last_version(views[-1])
    assert version["reasoning"].strip() == "Capital of France."
    assert version["content"].strip() == "The capital of France is Paris."
    assert version["thought_s"] > last_version(cut)["thought_s"] > 0


def test_only_a_cut_reply_can_be_continued(make_controller):
    controller = make_controller(demo=True)
    replies, model = controller.replies, controller.models.demo_path
    done = list(replies.send("", {"text": "Say hi."}, model, *settings(64), request=TAB))[-1]
    assert last_version(done)["stats"]["finish_reason"] == "stop"
    assert chat_outputs(done)[-1]["visible"] is False
    with pytest.raises(gr.Error, match="Only a reply that was cut short"):
        list(replies.continue_reply(done.conversation_id, model, *settings(8), request=TAB))
    with pytest.raises(gr.Error, match="Open a conversation"):
        list(replies.continue_reply("", model, *settings(8), request=TAB))
    other = gr.Request(session_hash="other", username=None)
    with pytest.raises(gr.Error, match="does not exist"):
        list(replies.continue_reply("f" * 32, model, *settings(8), request=other))
