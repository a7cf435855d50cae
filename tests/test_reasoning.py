"""Thinking blocks: split from the answer as they stream, the Think switch, and not fed back to the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_gradio.chats import chat
from mlx_gradio.engine.jobs import ChatMessage, ChatRequest, SamplingParams
from mlx_gradio.engine.reasoning import ThinkSplitter, opens_thinking

GREEDY = SamplingParams(temperature=0.0, max_tokens=24)
FRANCE = ChatMessage("user", "What is the capital of France?")


def split(pieces: list[str], **kwargs) -> tuple[str, str]:
    splitter = ThinkSplitter(**kwargs)
    parts = [splitter.feed(piece) for piece in pieces] + [splitter.flush()]
    return "".join(r for r, _ in parts), "".join(a for _, a in parts)


@pytest.mark.parametrize("pieces", [
    ["<think>\nPlan it.\n</think>\n\nParis."],
    ["\n<th", "ink>", "\nPlan", " it.\n</", "think>", "\n\nPar", "is."],
    list("<think>\nPlan it.\n</think>\n\nParis."),
])
def test_a_thinking_block_is_split_from_the_answer_wherever_the_pieces_break(pieces: list[str]):
    reasoning, answer = split(pieces)
    assert reasoning.strip() == "Plan it."
    assert answer == "Paris."


def test_a_block_the_prompt_opened_and_custom_markers():
    assert split(["Plan.", "</think>", "Paris."], thinking=True) == ("Plan.", "Paris.")
    assert split(["<|think:start|>a<|think:end|>b"], start="<|think:start|>", end="<|think:end|>") == ("a", "b")
    assert opens_thinking("<|im_start|>assistant\n<think>\n")
    assert not opens_thinking("<|im_start|>assistant\n<think>\n\n</think>\n")
    assert not opens_thinking("<|im_start|>assistant\n")


def test_markers_inside_an_answer_are_text_and_an_unclosed_block_stays_thinking():
    assert split(["Use the ", "<think>", " tag."]) == ("", "Use the <think> tag.")
    assert split(["Paris.", "</think>"]) == ("", "Paris.</think>")
    assert split(["<think>", "still going", "</thi"]) == ("still going</thi", "")
    assert split(["<", "b>bold</b>"]) == ("", "<b>bold</b>")


def ask(engine, conversation_id: str, model: Path, messages, thinking: bool = True) -> tuple[str, str, object]:
    generation = engine.generate(ChatRequest(conversation_id, str(model), tuple(messages), GREEDY,
                                             thinking=thinking))
    reasoning, text, stats = "", "", None
    for event in generation.events():
        reasoning += event.reasoning
        text += event.text
        stats = event.stats or stats
    return reasoning, text, stats


def test_a_template_that_opens_thinking_streams_the_thinking_apart(engine, thinking_model: Path):
    reasoning, text, stats = ask(engine, "think-on", thinking_model, [FRANCE])
    assert reasoning.strip() == "Capital of France."
    assert text.strip() == "The capital of France is Paris."
    assert "<think>" not in text + reasoning and "</think>" not in text + reasoning
    assert stats.finish_reason == "stop"


def test_the_think_switch_uses_the_templates_no_thinking_mode(engine, tiny_thinking: Path):
    # The tiny llama never writes </think>: with the switch on, the block the prompt opened holds the whole
    # reply; off, the template closes the block first and the whole reply is the answer.
    reasoning, text, _ = ask(engine, "think-on", tiny_thinking, [FRANCE])
    assert reasoning.strip() and text == ""
    reasoning, text, _ = ask(engine, "think-off", tiny_thinking, [FRANCE], thinking=False)
    assert reasoning == "" and text.strip() and "think>" not in text


def test_earlier_thinking_is_not_fed_back():
    conversation = chat.new_conversation("ann")
    chat.add_user_message(conversation, "What is the capital of France?", [])
    chat.add_reply_version(conversation, 1, "Paris.", None, "/m", reasoning="Capital of France.", thought_s=1.5)
    chat.add_user_message(conversation, "And Germany?", [])
    messages = chat.model_messages(conversation, 3, "")
    assert messages[1] == ChatMessage("assistant", "Paris.", reasoning="Capital of France.")

    from mlx_gradio.engine.generation import template_message

    class Template:
        chat_template = "{{ message['content'] }}"

    class ReasoningTemplate:
        chat_template = "{{ message.reasoning_content }}{{ message['content'] }}"

    assert template_message(Template(), messages[1]) == {"role": "assistant", "content": "Paris."}
    assert template_message(ReasoningTemplate(), messages[1])["reasoning_content"] == "Capital of France."


def test_the_think_switch_shows_only_for_templates_that_take_it(make_controller, tiny_thinking: Path,
                                                                 tiny_llama: Path):
    import gradio as gr

    from mlx_gradio.ui.chat_events import settings_outputs

    controller = make_controller()
    controller.store.settings.update_app(model_folders=[str(tiny_thinking), str(tiny_llama)])
    tab = gr.Request(session_hash="think")
    with_switch = controller.chat_settings.show("", str(tiny_thinking), tab)
    without = controller.chat_settings.show("", str(tiny_llama), tab)
    assert with_switch.thinking_switch and not without.thinking_switch
    assert settings_outputs(with_switch)[-1]["visible"] is True and settings_outputs(without)[-1]["visible"] is False
