"""Anthropic's Messages API: a request read into the engine's terms, the answer as content blocks and events."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.jobs import ChatMessage, GenerationStats
from . import fields
from .answer import Answer
from .call import UNCAPPED, ChatCall, sampling
from .errors import ApiError, bad_request
from .openai_chat import MAX_IMAGE_BYTES

MAX_STOP_SEQUENCES = 16


def read_messages(body: Any, save_image: Callable[[bytes], str], need_max_tokens: bool = True) -> ChatCall:
    """Check a Messages body (`need_max_tokens` False for count_tokens, which takes none)."""
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request("model: required, one of the ids GET /v1/models lists.", "model")
    max_tokens = fields.number(body, "max_tokens", None, 1, UNCAPPED, integer=True)
    if max_tokens is None and need_max_tokens:
        raise bad_request("max_tokens: required.", "max_tokens")
    if body.get("tools") and (body.get("tool_choice") or {}).get("type") != "none":
        raise bad_request("tools: not served by this API yet; send the request without tools.", "tools")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages: must be a non-empty list.", "messages")
    system = _system(body.get("system"))
    messages = tuple(_message(m, f"messages.{i}", save_image) for i, m in enumerate(raw))
    thinking = body.get("thinking") or {}
    if not isinstance(thinking, dict):
        raise bad_request("thinking: must be an object.", "thinking")
    return ChatCall(model, (*system, *messages), sampling(body, max_tokens or UNCAPPED, temperature_max=1.0),
                    fields.stops(body, "stop_sequences", MAX_STOP_SEQUENCES), fields.flag(body, "stream"),
                    include_usage=True, max_tokens=max_tokens, thinking=thinking.get("type") != "disabled")


def _system(system: Any) -> tuple[ChatMessage, ...]:
    if system is None or system == "":
        return ()
    if isinstance(system, str):
        return (ChatMessage("system", fields.text(system, "system")),)
    if isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        return (ChatMessage("system", "\n".join(fields.text(b.get("text"), "system") for b in system)),)
    raise bad_request("system: must be a string or a list of text blocks.", "system")


def _message(raw: Any, where: str, save_image: Callable[[bytes], str]) -> ChatMessage:
    if not isinstance(raw, dict) or raw.get("role") not in ("user", "assistant"):
        raise bad_request(f"{where}: must be an object with role 'user' or 'assistant' and content.", where)
    role, content = raw["role"], raw.get("content")
    if isinstance(content, str):
        return ChatMessage(role, fields.text(content, f"{where}.content"))
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: must be a string or a list of content blocks.", where)
    texts, images, thoughts = [], [], []
    for j, block in enumerate(content):
        name = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(fields.text(block.get("text"), f"{name}.text"))
        elif kind == "image" and role == "user":
            images.append(save_image(_image_bytes(block.get("source"), name)))
        elif kind == "thinking" and role == "assistant":
            thoughts.append(fields.text(block.get("thinking", ""), f"{name}.thinking"))
        elif kind == "redacted_thinking" and role == "assistant":
            continue  # nothing a local model can read
        elif kind in ("tool_use", "tool_result"):
            raise bad_request(f"{name}: tool blocks are not served by this API yet.", name)
        else:
            raise bad_request(f"{name}: a {kind!r} block is not served here (text, image, thinking are).", name)
    return ChatMessage(role, "\n".join(texts), tuple(images), "\n".join(thoughts))


def _image_bytes(source: Any, where: str) -> bytes:
    if not isinstance(source, dict) or source.get("type") != "base64" or not isinstance(source.get("data"), str):
        raise bad_request(f"{where}.source: must be a base64 image (this API fetches no URLs).", where)
    if len(source["data"]) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise bad_request(f"{where}: larger than {MAX_IMAGE_BYTES // 1_000_000} MB.", where)
    try:
        return base64.b64decode(source["data"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"{where}.source.data: not valid base64.", where) from exc


# --- answers ---------------------------------------------------------------------------------


def usage(stats: GenerationStats | None) -> dict:
    """Anthropic's usage: the prompt tokens read from the prompt cache apart from the others."""
    prompt, cached = (stats.prompt_tokens, stats.cached_tokens) if stats else (0, 0)
    return {"input_tokens": prompt - cached, "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0,
            "output_tokens": stats.generation_tokens if stats else 0}


def stop_reason(answer: Answer) -> str:
    if answer.stop_sequence is not None:
        return "stop_sequence"
    return "max_tokens" if answer.finish == "length" else "end_turn"


def _event(kind: str, data: dict) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


class AnthropicMessages:
    """POST /v1/messages."""

    endpoint = "messages"

    def read(self, body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
        return read_messages(body, save_image)

    def whole(self, model: str, answer: Answer, call: ChatCall) -> dict:
        content: list[dict] = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning, "signature": ""})
        if answer.text or not content:
            content.append({"type": "text", "text": answer.text})
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop_reason(answer), "stop_sequence": answer.stop_sequence,
                "usage": usage(answer.stats)}

    async def stream(self, model: str, answer: Answer, call: ChatCall) -> AsyncIterator[str]:
        message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                   "content": [], "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0}}
        yield _event("message_start", {"message": message})
        yield _event("ping", {})
        index, open_kind = -1, None
        async for reasoning, text in answer.pieces():
            for kind, piece in (("thinking", reasoning), ("text", text)):
                if not piece:
                    continue
                if open_kind != kind:
                    if open_kind is not None:
                        yield _event("content_block_stop", {"index": index})
                    index, open_kind = index + 1, kind
                    block = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else \
                        {"type": "text", "text": ""}
                    yield _event("content_block_start", {"index": index, "content_block": block})
                delta = {"type": "thinking_delta", "thinking": piece} if kind == "thinking" else \
                    {"type": "text_delta", "text": piece}
                yield _event("content_block_delta", {"index": index, "delta": delta})
        if open_kind != "text" and not answer.text:
            if open_kind is not None:
                yield _event("content_block_stop", {"index": index})
            index, open_kind = index + 1, "text"
            yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        yield _event("content_block_stop", {"index": index})
        yield _event("message_delta", {"delta": {"stop_reason": stop_reason(answer),
                                                 "stop_sequence": answer.stop_sequence},
                                       "usage": usage(answer.stats)})
        yield _event("message_stop", {})

    def error_event(self, error: ApiError) -> str:
        return f"event: error\ndata: {json.dumps(error.anthropic_body(), ensure_ascii=False)}\n\n"
