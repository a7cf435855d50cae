"""OpenAI's Responses API (what newer OpenAI clients speak): input items in, output items and typed events out."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.jobs import ChatMessage, GenerationStats
from . import fields
from .answer import Answer
from .call import UNCAPPED, ChatCall, model_of, sampling
from .errors import ApiError, bad_request
from .openai_chat import image_bytes

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = ("input_text", "output_text", "text")


def read_response_request(body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
    """Check a Responses body: `input` (a string or message items), `instructions`, sampling."""
    model = model_of(body)
    if body.get("tools") and body.get("tool_choice") != "none":
        raise bad_request("Tools are not served by this API yet; send the request without 'tools'.", "tools")
    if body.get("previous_response_id"):
        raise bad_request("Responses are not stored here: send the whole conversation in 'input'.",
                          "previous_response_id")
    text_format = ((body.get("text") or {}).get("format") or {}) if isinstance(body.get("text"), dict) else {}
    if text_format.get("type", "text") != "text":
        raise bad_request("Only plain text output is served by this API yet ('text.format' of type 'text').",
                          "text.format")
    system = ()
    if body.get("instructions"):
        system = (ChatMessage("system", fields.text(body["instructions"], "instructions")),)
    raw = body.get("input")
    if isinstance(raw, str) and raw:
        messages: tuple[ChatMessage, ...] = (ChatMessage("user", fields.text(raw, "input")),)
    elif isinstance(raw, list) and raw:
        messages = tuple(_item(item, f"input[{i}]", save_image) for i, item in enumerate(raw))
    else:
        raise bad_request("'input' must be a non-empty string or list of messages.", "input")
    max_tokens = fields.number(body, "max_output_tokens", None, 1, UNCAPPED, integer=True)
    reasoning = body.get("reasoning") or {}
    thinking = not (isinstance(reasoning, dict) and reasoning.get("effort") in ("none", "minimal"))
    return ChatCall(model, (*system, *messages), sampling(body, max_tokens or UNCAPPED), (),
                    fields.flag(body, "stream"), include_usage=True, max_tokens=max_tokens, thinking=thinking)


def _item(raw: Any, where: str, save_image: Callable[[bytes], str]) -> ChatMessage:
    if not isinstance(raw, dict) or raw.get("type", "message") != "message" or raw.get("role") not in ROLES:
        kind = raw.get("type") if isinstance(raw, dict) else None
        if kind in ("function_call", "function_call_output"):
            raise bad_request(f"'{where}': function calls are not served by this API yet.", where)
        raise bad_request(f"'{where}' must be a message with a role ({', '.join(ROLES)}) and content.", where)
    role, content = ROLES[raw["role"]], raw.get("content")
    if isinstance(content, str):
        return ChatMessage(role, fields.text(content, f"{where}.content"))
    if not isinstance(content, list):
        raise bad_request(f"'{where}.content' must be a string or a list of parts.", where)
    texts, images = [], []
    for j, part in enumerate(content):
        name = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS:
            texts.append(fields.text(part.get("text"), f"{name}.text"))
        elif kind == "input_image" and role == "user":
            images.append(save_image(image_bytes(part.get("image_url"), name)))
        else:
            raise bad_request(f"'{name}' must be an input_text{' or input_image' if role == 'user' else ''} part.",
                              name)
    return ChatMessage(role, "\n".join(texts), tuple(images))


# --- answers ---------------------------------------------------------------------------------


def usage(stats: GenerationStats | None) -> dict:
    prompt = stats.prompt_tokens if stats else 0
    completion = stats.generation_tokens if stats else 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": stats.cached_tokens if stats else 0},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt + completion}


def _reasoning_item(item_id: str, text: str) -> dict:
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [{"type": "reasoning_text", "text": text}]}


def _message_item(item_id: str, text: str, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}


class OpenAIResponses:
    """POST /v1/responses."""

    endpoint = "responses"

    def read(self, body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
        return read_response_request(body, save_image)

    def _response(self, response_id: str, model: str, call: ChatCall, output: list[dict], answer: Answer | None,
                  created: int) -> dict:
        done = answer is not None and answer.stats is not None
        cut = done and answer.finish == "length"
        return {"id": response_id, "object": "response", "created_at": created, "model": model,
                "status": ("incomplete" if cut else "completed") if done else "in_progress",
                "incomplete_details": {"reason": "max_output_tokens"} if cut else None, "error": None,
                "output": output, "parallel_tool_calls": False, "tool_choice": "none", "tools": [],
                "temperature": call.params.temperature, "top_p": call.params.top_p,
                "max_output_tokens": call.max_tokens, "text": {"format": {"type": "text"}}, "metadata": {},
                "usage": usage(answer.stats) if done else None}

    def whole(self, model: str, answer: Answer, call: ChatCall) -> dict:
        output = [_reasoning_item(f"rs_{uuid.uuid4().hex[:24]}", answer.reasoning)] if answer.reasoning else []
        output.append(_message_item(f"msg_{uuid.uuid4().hex[:24]}", answer.text, "completed"))
        return self._response(f"resp_{uuid.uuid4().hex[:24]}", model, call, output, answer, int(time.time()))

    async def stream(self, model: str, answer: Answer, call: ChatCall) -> AsyncIterator[str]:
        response_id, created, sequence = f"resp_{uuid.uuid4().hex[:24]}", int(time.time()), iter(range(1 << 62))

        def event(kind: str, **data: Any) -> str:
            payload = {"type": kind, "sequence_number": next(sequence), **data}
            return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

        started = self._response(response_id, model, call, [], None, created)
        yield event("response.created", response=started)
        yield event("response.in_progress", response=started)
        output: list[dict] = []
        texts: dict[str, str] = {}  # the open item's kind -> its text so far
        open_kind, item_id = None, ""

        def close() -> list[str]:
            if open_kind is None:
                return []
            text, index = texts[open_kind], len(output)
            if open_kind == "reasoning":
                item = _reasoning_item(item_id, text)
                closing = [event("response.reasoning_text.done", item_id=item_id, output_index=index,
                                 content_index=0, text=text)]
            else:
                item = _message_item(item_id, text, "completed")
                part = item["content"][0]
                closing = [event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                                 text=text, logprobs=[]),
                           event("response.content_part.done", item_id=item_id, output_index=index,
                                 content_index=0, part=part)]
            output.append(item)
            return [*closing, event("response.output_item.done", output_index=index, item=item)]

        def begin(kind: str) -> list[str]:
            nonlocal open_kind, item_id
            opened = close()
            open_kind, texts[kind] = kind, ""
            item_id = f"{'rs' if kind == 'reasoning' else 'msg'}_{uuid.uuid4().hex[:24]}"
            index = len(output)
            if kind == "reasoning":
                return [*opened, event("response.output_item.added", output_index=index,
                                       item=_reasoning_item(item_id, ""))]
            item = _message_item(item_id, "", "in_progress")
            return [*opened, event("response.output_item.added", output_index=index, item={**item, "content": []}),
                    event("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                          part=item["content"][0])]

        async for reasoning, text in answer.pieces():
            for kind, piece in (("reasoning", reasoning), ("message", text)):
                if not piece:
                    continue
                if open_kind != kind:
                    for line in begin(kind):
                        yield line
                texts[kind] += piece
                delta = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
                extra = {} if kind == "reasoning" else {"logprobs": []}
                yield event(delta, item_id=item_id, output_index=len(output), content_index=0, delta=piece, **extra)
        if open_kind != "message":
            for line in begin("message"):
                yield line
        for line in close():
            yield line
        finished = self._response(response_id, model, call, output, answer, created)
        yield event("response.incomplete" if finished["status"] == "incomplete" else "response.completed",
                    response=finished)

    def error_event(self, error: ApiError) -> str:
        body = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return f"event: error\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"
