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
from .call import UNCAPPED, ChatCall, answer_format, model_of, sampling, tool
from .errors import ApiError, bad_request
from .openai_chat import MAX_IMAGE_BYTES

MAX_STOP_SEQUENCES = 16


def read_messages(body: Any, save_image: Callable[[bytes], str], need_max_tokens: bool = True) -> ChatCall:
    """Check a Messages body (`need_max_tokens` False for count_tokens, which takes none)."""
    model = model_of(body, anthropic=True)
    max_tokens = fields.number(body, "max_tokens", None, 1, UNCAPPED, integer=True)
    if max_tokens is None and need_max_tokens:
        raise bad_request("max_tokens: required.", "max_tokens")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages: must be a non-empty list.", "messages")
    # A system turn among the messages (Claude Code sends one) joins the system prompt: many chat templates take
    # a system prompt only at the start.
    turns = [turn for i, m in enumerate(raw) for turn in _message(m, f"messages.{i}", save_image)]
    system = _system(body.get("system"), [t.content for t in turns if t.role == "system"])
    messages = tuple(t for t in turns if t.role != "system")
    thinking = body.get("thinking") or {}
    if not isinstance(thinking, dict):
        raise bad_request("thinking: must be an object.", "thinking")
    output = body.get("output_config") or {}
    if not isinstance(output, dict):
        raise bad_request("output_config: must be an object.", "output_config")
    # `output_format` is where the structured outputs beta put it before `output_config.format`.
    where = "output_config.format" if output.get("format") is not None else "output_format"
    fmt, grammar = answer_format(output.get("format", body.get("output_format")), where)
    return ChatCall(model, (*system, *messages), sampling(body, max_tokens or UNCAPPED, temperature_max=1.0),
                    fields.stops(body, "stop_sequences", MAX_STOP_SEQUENCES), fields.flag(body, "stream"),
                    include_usage=True, max_tokens=max_tokens, thinking=thinking.get("type") != "disabled",
                    tools=_tools(body), answer_format=fmt, grammar=grammar)


def _tools(body: dict) -> tuple[dict, ...]:
    """Anthropic's tools (name, description, input_schema) as chat templates take them; none with tool_choice
    "none". Server tools (web search and the like) cannot run here and are refused."""
    raw = body.get("tools") or []
    choice = body.get("tool_choice") or {}
    if not isinstance(raw, list) or not isinstance(choice, dict):
        raise bad_request("tools: must be a list (and tool_choice an object).", "tools")
    if choice.get("type") == "none":
        return ()
    tools = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or entry.get("type", "custom") != "custom":
            raise bad_request(f"tools.{i}: only tools this API's client runs itself (name, input_schema) are "
                              "served here.", f"tools.{i}")
        tools.append(tool(entry.get("name"), entry.get("description"), entry.get("input_schema"), f"tools.{i}"))
    return tuple(tools)


def _system(system: Any, more: list[str]) -> tuple[ChatMessage, ...]:
    """The system prompt (a string or text blocks), with the system turns of the messages after it."""
    if system is None or system == "":
        texts = []
    elif isinstance(system, str):
        texts = [fields.text(system, "system")]
    elif isinstance(system, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in system):
        texts = ["\n".join(fields.text(b.get("text"), "system") for b in system)]
    else:
        raise bad_request("system: must be a string or a list of text blocks.", "system")
    texts += [text for text in more if text]
    return (ChatMessage("system", "\n\n".join(texts)),) if texts else ()


def _message(raw: Any, where: str, save_image: Callable[[bytes], str]) -> tuple[ChatMessage, ...]:
    """One Messages turn as the engine's messages: a user turn's tool results come first, one message each."""
    if not isinstance(raw, dict) or raw.get("role") not in ("user", "assistant", "system"):
        raise bad_request(f"{where}: must be an object with role 'user' or 'assistant' and content.", where)
    role, content = raw["role"], raw.get("content")
    if isinstance(content, str):
        return (ChatMessage(role, fields.text(content, f"{where}.content")),)
    if not isinstance(content, list):
        raise bad_request(f"{where}.content: must be a string or a list of content blocks.", where)
    texts, images, thoughts, calls, results = [], [], [], [], []
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
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                raise bad_request(f"{name}: a tool_use block needs a name and an input object.", name)
            calls.append({"id": str(block.get("id") or f"toolu_{j}"), "name": block["name"],
                          "arguments": block.get("input", {})})
        elif kind == "tool_result" and role == "user":
            results.append(ChatMessage("tool", _result_text(block.get("content"), name),
                                       tool_call_id=str(block.get("tool_use_id") or "")))
        else:
            raise bad_request(f"{name}: a {kind!r} block is not served here (text, image, thinking, tool_use and "
                              "tool_result are).", name)
    if results and not (texts or images):
        return tuple(results)
    return (*results, ChatMessage(role, "\n".join(texts), tuple(images), "\n".join(thoughts), tuple(calls)))


def _result_text(content: Any, where: str) -> str:
    """A tool result's text (a string or text blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return fields.text(content, where)
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "\n".join(fields.text(b.get("text"), where) for b in content)
    raise bad_request(f"{where}: a tool result's content must be text here.", where)


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
    if answer.tool_calls and answer.finish == "stop":
        return "tool_use"
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
        if answer.text or not (content or answer.tool_calls):
            content.append({"type": "text", "text": answer.text})
        content += [{"type": "tool_use", "id": call["id"], "name": call["name"], "input": call["arguments"]}
                    for call in answer.tool_calls]
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
        if open_kind != "text" and not answer.text and not answer.tool_calls:
            if open_kind is not None:
                yield _event("content_block_stop", {"index": index})
            index, open_kind = index + 1, "text"
            yield _event("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
        if open_kind is not None:
            yield _event("content_block_stop", {"index": index})
        for call in answer.tool_calls:
            index += 1
            block = {"type": "tool_use", "id": call["id"], "name": call["name"], "input": {}}
            yield _event("content_block_start", {"index": index, "content_block": block})
            yield _event("content_block_delta", {"index": index, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(call["arguments"], ensure_ascii=False)}})
            yield _event("content_block_stop", {"index": index})
        yield _event("message_delta", {"delta": {"stop_reason": stop_reason(answer),
                                                 "stop_sequence": answer.stop_sequence},
                                       "usage": usage(answer.stats)})
        yield _event("message_stop", {})

    def error_event(self, error: ApiError) -> str:
        return f"event: error\ndata: {json.dumps(error.anthropic_body(), ensure_ascii=False)}\n\n"
