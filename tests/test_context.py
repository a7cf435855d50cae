"""Fitting a conversation into a context: which turns go, and that its start stays put as the chat grows."""

from __future__ import annotations

import pytest

from mlx_gradio.engine.context import fit_prompt
from mlx_gradio.engine.jobs import ChatMessage
from mlx_gradio.errors import ContextTooLong
from mlx_gradio.models.folders import context_length


def encode(messages) -> list[int]:
    """A stand-in tokenizer (no model is needed for this logic): one token per word, two per message."""
    return [0] * sum(len(m.content.split()) + 2 for m in messages)


def chat_of(turns: int, system: str = "Be brief.") -> list[ChatMessage]:
    messages = [ChatMessage("system", system)] if system else []
    for n in range(turns):
        messages += [ChatMessage("user", f"question {n} " + "word " * 10), ChatMessage("assistant", "answer " * 10)]
    return [*messages, ChatMessage("user", "the last question")]


def test_a_short_chat_is_sent_whole_with_room_for_the_reply():
    fitted = fit_prompt(encode, chat_of(3), context=1000, max_tokens=100)
    assert fitted.dropped == 0 and len(fitted.tokens) == len(encode(chat_of(3))) and fitted.max_tokens == 100


def test_hundreds_of_turns_fit_and_the_start_moves_rarely():
    context, max_tokens = 512, 64
    starts = []
    hint = 0
    for turns in range(1, 300):
        messages = chat_of(turns)
        fitted = fit_prompt(encode, messages, context, max_tokens, hint)
        assert len(fitted.tokens) + fitted.max_tokens <= context
        assert fitted.dropped % 2 == 0  # the kept history starts with a user turn
        kept = messages[1 + fitted.dropped:]
        assert kept[0].role == "user" and kept[-1].content == "the last question"
        starts.append(fitted.dropped)
        hint = fitted.dropped
    moves = sum(1 for a, b in zip(starts, starts[1:], strict=False) if a != b)
    assert moves < len(starts) / 4  # most turns keep the previous start, so the prompt cache stays useful


def test_the_system_prompt_is_never_dropped():
    fitted = fit_prompt(encode, chat_of(50, system="You are a pirate."), context=200, max_tokens=20)
    assert fitted.dropped > 0
    assert len(fitted.tokens) == len(encode([ChatMessage("system", "You are a pirate."),
                                             *chat_of(50)[1 + fitted.dropped:]]))


def test_a_message_that_alone_does_not_fit_is_refused_with_its_size():
    huge = [ChatMessage("user", "word " * 5000)]
    with pytest.raises(ContextTooLong, match=r"takes 5,002 tokens.*context holds 4,096, of which 1,024"):
        fit_prompt(encode, huge, context=4096, max_tokens=2000)


def test_context_length_comes_from_the_config_and_a_limit_lowers_it():
    assert context_length({"max_position_embeddings": 8192}) == 8192
    assert context_length({"text_config": {"max_position_embeddings": 32768}}, limit=4096) == 4096
    assert context_length({}) == 4096
    assert context_length({"max_position_embeddings": 2048}, limit=100_000) == 2048
