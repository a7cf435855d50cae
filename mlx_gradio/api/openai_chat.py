"""OpenAI's chat completions: a request body read into the engine's terms, and the answer in OpenAI's shape."""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.jobs import ChatMessage, GenerationStats
from . import fields
from .answer import Answer
from .call import UNCAPPED, ChatCall, answer_format, model_of, sampling, tool
from .errors import ApiError, bad_request

MAX_IMAGE_BYTES = 20_000_000
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def read_chat(body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
    """Check a chat completion body; `save_image` keeps an image's bytes and returns its path."""
    model = model_of(body)
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty list.", "messages")
    if fields.number(body, "n", 1, 1, 1, integer=True) != 1:
        raise bad_request("'n' must be 1.", "n")
    messages = tuple(_message(m, f"messages[{i}]", save_image) for i, m in enumerate(raw))
    max_tokens = fields.number(body, "max_completion_tokens", None, 1, UNCAPPED, integer=True)
    if max_tokens is None:
        max_tokens = fields.number(body, "max_tokens", None, 1, UNCAPPED, integer=True)
    params = sampling(body, max_tokens or UNCAPPED)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad_request("'stream_options' must be an object.", "stream_options")
    template = body.get("chat_template_kwargs") or {}
    if not isinstance(template, dict):
        raise bad_request("'chat_template_kwargs' must be an object.", "chat_template_kwargs")
    fmt, grammar = answer_format(body.get("response_format"), "response_format", schema_in="json_schema")
    return ChatCall(model, messages, params, fields.stops(body), fields.flag(body, "stream"),
                    fields.flag(options, "include_usage"), max_tokens, fields.flag(template, "enable_thinking", True),
                    tools=_tools(body), answer_format=fmt, grammar=grammar)


def _tools(body: dict) -> tuple[dict, ...]:
    """The function tools offered (none with `tool_choice` "none"); the model chooses whether to call one."""
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list.", "tools")
    if body.get("tool_choice") == "none":
        return ()
    tools = []
    for i, entry in enumerate(raw):
        function = entry.get("function") if isinstance(entry, dict) and entry.get("type") == "function" else None
        if not isinstance(function, dict):
            raise bad_request(f"'tools[{i}]' must be a function tool: {{\"type\": \"function\", \"function\": …}}.",
                              f"tools[{i}]")
        tools.append(tool(function.get("name"), function.get("description"), function.get("parameters"),
                          f"tools[{i}]"))
    return tuple(tools)


def _message(raw: Any, where: str, save_image: Callable[[bytes], str]) -> ChatMessage:
    if not isinstance(raw, dict):
        raise bad_request(f"'{where}' must be an object with a role and content.", where)
    role = raw.get("role")
    if role == "tool":
        call_id = raw.get("tool_call_id") or ""
        return ChatMessage("tool", _text_of(raw.get("content"), where), tool_call_id=fields.text(call_id, where))
    if role == "assistant" and raw.get("tool_calls"):
        return ChatMessage("assistant", _text_of(raw.get("content") or "", where),
                           tool_calls=_calls(raw["tool_calls"], f"{where}.tool_calls"))
    if role not in ROLES:
        raise bad_request(f"'{where}.role' must be one of {', '.join(ROLES)}; it is {role!r}.", f"{where}.role")
    content = raw.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return ChatMessage(ROLES[role], fields.text(content, f"{where}.content"))
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or a list of parts.", f"{where}.content")
    texts, images = [], []
    for j, part in enumerate(content):
        name = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            texts.append(fields.text(part.get("text"), f"{name}.text"))
        elif kind == "image_url" and role == "user":
            images.append(save_image(image_bytes(part.get("image_url"), name)))
        else:
            raise bad_request(f"'{name}' must be a text part{' or an image_url part' if role == 'user' else ''}.",
                              name)
    return ChatMessage(ROLES[role], "\n".join(texts), tuple(images))


def _text_of(content: Any, where: str) -> str:
    """A message's text: a string or text parts."""
    if isinstance(content, str):
        return fields.text(content, f"{where}.content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "\n".join(fields.text(p.get("text"), f"{where}.content") for p in content)
    raise bad_request(f"'{where}.content' must be text.", f"{where}.content")


def _calls(raw: Any, where: str) -> tuple[dict, ...]:
    """An assistant's earlier tool calls, their arguments read from JSON."""
    if not isinstance(raw, list):
        raise bad_request(f"'{where}' must be a list.", where)
    calls = []
    for i, entry in enumerate(raw):
        function = entry.get("function") if isinstance(entry, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise bad_request(f"'{where}[{i}]' must be a function call with a name.", f"{where}[{i}]")
        arguments = function.get("arguments") or "{}"
        try:
            arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        except json.JSONDecodeError as exc:
            raise bad_request(f"'{where}[{i}].function.arguments' is not JSON: {exc}.", f"{where}[{i}]") from exc
        calls.append({"id": str(entry.get("id") or f"call_{i}"), "name": function["name"], "arguments": arguments})
    return tuple(calls)


def tool_calls(answer: Answer, streaming: bool = False) -> list[dict]:
    """The answer's tool calls as OpenAI sends them (arguments as a JSON string; `index` when streamed)."""
    return [{**({"index": i} if streaming else {}), "id": call["id"], "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}
            for i, call in enumerate(answer.tool_calls)]


def image_bytes(image: Any, where: str) -> bytes:
    """An image part's bytes: only `data:` URLs (the API fetches nothing from the network)."""
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise bad_request(f"'{where}.image_url' must be a data: URL with base64 image bytes (this API fetches "
                          "no URLs).", where)
    encoded = url.split(";base64,", 1)[1]
    if len(encoded) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise bad_request(f"'{where}' is larger than {MAX_IMAGE_BYTES // 1_000_000} MB.", where)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"'{where}.image_url' is not valid base64.", where) from exc


# --- answers ---------------------------------------------------------------------------------


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(stats: GenerationStats | None) -> dict:
    """OpenAI's usage block, with the prompt tokens read from the prompt cache."""
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.generation_tokens if stats else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": stats.cached_tokens if stats else 0}}


def completion(call_id: str, model: str, text: str, reasoning: str, finish: str,
               stats: GenerationStats | None, calls: list[dict] | None = None) -> dict:
    """The whole answer of a request that did not stream."""
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else "")}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return {"id": call_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": usage(stats)}


def chunk(call_id: str, model: str, delta: dict | None, finish: str | None = None,
          usage_block: dict | None = None) -> dict:
    """One streamed piece: a delta, the finish reason, or (with no choices) the usage."""
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    piece = {"id": call_id, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": choices}
    if usage_block is not None:
        piece["usage"] = usage_block
    return piece


def sse(data: dict) -> str:
    """One server-sent event as OpenAI's API sends them."""
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


class OpenAIChat:
    """POST /v1/chat/completions."""

    endpoint = "chat/completions"

    def read(self, body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
        return read_chat(body, save_image)

    def whole(self, model: str, answer: Answer, call: ChatCall) -> dict:
        finish = "tool_calls" if answer.tool_calls and answer.finish == "stop" else answer.finish
        return completion(completion_id(), model, answer.text, answer.reasoning, finish, answer.stats,
                          tool_calls(answer))

    async def stream(self, model: str, answer: Answer, call: ChatCall) -> AsyncIterator[str]:
        call_id = completion_id()
        yield sse(chunk(call_id, model, {"role": "assistant", "content": ""}))
        async for reasoning, text in answer.pieces():
            delta = {"reasoning_content": reasoning} if reasoning else {}
            if text:
                delta["content"] = text
            yield sse(chunk(call_id, model, delta))
        if answer.tool_calls:
            yield sse(chunk(call_id, model, {"tool_calls": tool_calls(answer, streaming=True)}))
        finish = "tool_calls" if answer.tool_calls and answer.finish == "stop" else answer.finish
        yield sse(chunk(call_id, model, {}, finish))
        if call.include_usage:
            yield sse(chunk(call_id, model, None, usage_block=usage(answer.stats)))
        yield "data: [DONE]\n\n"

    def error_event(self, error: ApiError) -> str:
        return sse(error.openai_body())
