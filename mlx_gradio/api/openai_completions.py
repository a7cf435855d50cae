"""OpenAI's plain completions (editors' autocomplete): a prompt read as it is, without the chat template."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.jobs import ChatMessage
from . import fields
from .answer import Answer
from .call import UNCAPPED, ChatCall, model_of, sampling
from .errors import ApiError, bad_request
from .openai_chat import sse, usage

DEFAULT_MAX_TOKENS = 16  # OpenAI's own default for this endpoint


def read_completion(body: Any) -> ChatCall:
    """Check a completion body: one prompt, no suffix (fill-in-the-middle is not served), no echo."""
    model = model_of(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise bad_request("'prompt' must be a non-empty string (one prompt per request).", "prompt")
    if body.get("suffix"):
        raise bad_request("'suffix' (fill in the middle) is not served by this API; send the prompt alone.", "suffix")
    if fields.flag(body, "echo") or body.get("logprobs") or fields.number(body, "n", 1, 1, 1, integer=True) != 1:
        raise bad_request("'echo', 'logprobs' and 'n' other than 1 are not served by this API.")
    max_tokens = fields.number(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, UNCAPPED, integer=True)
    params = sampling(body, max_tokens)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options")
    return ChatCall(model, (ChatMessage("user", fields.text(prompt, "prompt")),), params, fields.stops(body),
                    fields.flag(body, "stream"), fields.flag(options, "include_usage"), max_tokens, thinking=False,
                    raw=True)


def _body(call_id: str, model: str, text: str, finish: str | None) -> dict:
    return {"id": call_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]}


class OpenAICompletions:
    """POST /v1/completions."""

    endpoint = "completions"

    def read(self, body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
        return read_completion(body)

    def whole(self, model: str, answer: Answer, call: ChatCall) -> dict:
        # A prompt that opens a thinking block still gets all of the text back, in the order it came.
        return {**_body(f"cmpl-{uuid.uuid4().hex[:24]}", model, answer.reasoning + answer.text, answer.finish),
                "usage": usage(answer.stats)}

    async def stream(self, model: str, answer: Answer, call: ChatCall) -> AsyncIterator[str]:
        call_id = f"cmpl-{uuid.uuid4().hex[:24]}"
        async for reasoning, text in answer.pieces():
            yield sse(_body(call_id, model, reasoning + text, None))
        yield sse(_body(call_id, model, "", answer.finish))
        if call.include_usage:
            yield sse({**_body(call_id, model, "", None), "choices": [], "usage": usage(answer.stats)})
        yield "data: [DONE]\n\n"

    def error_event(self, error: ApiError) -> str:
        return sse(error.openai_body())
