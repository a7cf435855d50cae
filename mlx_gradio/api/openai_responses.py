"""OpenAI's Responses API (what newer OpenAI clients speak): input items in, output items and typed events out."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from ..engine.jobs import ChatMessage, GenerationStats
from . import fields
from .answer import Answer
from .call import UNCAPPED, ChatCall, answer_format, model_of, sampling, tool
from .errors import ApiError, bad_request
from .openai_chat import image_bytes

log = logging.getLogger(__name__)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
TEXT_PARTS = ("input_text", "output_text", "text")


def read_response_request(body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
    """Check a Responses body: `input` (a string or message items), `instructions`, sampling."""
    model = model_of(body)
    if body.get("previous_response_id"):
        raise bad_request("Responses are not stored here: send the whole conversation in 'input'.",
                          "previous_response_id")
    text = body.get("text") or {}
    if not isinstance(text, dict):
        raise bad_request("'text' must be an object.", "text")
    fmt, grammar = answer_format(text.get("format"), "text.format")
    system = ()
    if body.get("instructions"):
        system = (ChatMessage("system", fields.text(body["instructions"], "instructions")),)
    raw = body.get("input")
    if isinstance(raw, str) and raw:
        messages: tuple[ChatMessage, ...] = (ChatMessage("user", fields.text(raw, "input")),)
    elif isinstance(raw, list) and raw:
        messages = _items(raw, save_image)
    else:
        raise bad_request("'input' must be a non-empty string or list of messages.", "input")
    max_tokens = fields.number(body, "max_output_tokens", None, 1, UNCAPPED, integer=True)
    tools, namespaces = _tools(body)
    reasoning = body.get("reasoning") or {}
    thinking = not (isinstance(reasoning, dict) and reasoning.get("effort") in ("none", "minimal"))
    return ChatCall(model, (*system, *messages), sampling(body, max_tokens or UNCAPPED), (),
                    fields.flag(body, "stream"), include_usage=True, max_tokens=max_tokens, thinking=thinking,
                    tools=tools, answer_format=fmt, grammar=grammar, namespaces=namespaces)


def _tools(body: dict) -> tuple[tuple[dict, ...], dict[str, str]]:
    """Function tools (name, description, parameters at the top level, as this API writes them), those grouped in
    a `namespace` among them, and the namespace of each of those by name; none with `tool_choice` "none".

    Tools that run on OpenAI's side (web search, files, code, MCP) or take free text (custom) cannot run here:
    offered, they are left out (the model answers without them, and the log says so); forced, they are refused.
    """
    raw = body.get("tools") or []
    if not isinstance(raw, list):
        raise bad_request("'tools' must be a list.", "tools")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") not in (None, "function", "allowed_tools"):
        raise bad_request(f"'tool_choice': a {choice.get('type')} tool cannot run here; only function tools (which "
                          "the client runs itself) are served.", "tool_choice")
    if choice == "none":
        return (), {}
    tools, namespaces, left_out = [], {}, []
    for i, entry in enumerate(raw):
        kind = entry.get("type") if isinstance(entry, dict) else None
        if kind == "namespace" and isinstance(entry.get("tools"), list):
            for j, inner in enumerate(entry["tools"]):
                if isinstance(inner, dict) and inner.get("type") == "function":
                    tools.append(_function(inner, f"tools[{i}].tools[{j}]"))
                    namespaces[inner["name"]] = fields.text(entry.get("name"), f"tools[{i}].name")
                else:
                    left_out.append(f"{entry.get('name')}.{inner.get('name') if isinstance(inner, dict) else j}")
        elif kind == "function":
            tools.append(_function(entry, f"tools[{i}]"))
        elif isinstance(kind, str):
            left_out.append(str(entry.get("name") or kind))
        else:
            raise bad_request(f"'tools[{i}]' must be a tool with a type.", f"tools[{i}]")
    if left_out:
        log.debug("Tools a client offered that cannot run here were left out: %s", ", ".join(left_out))
    return tuple(tools), namespaces


def _function(entry: dict, where: str) -> dict:
    return tool(entry.get("name"), entry.get("description"), entry.get("parameters"), where)


def _items(raw: list, save_image: Callable[[bytes], str]) -> tuple[ChatMessage, ...]:
    """Input items as the engine's messages: function calls join the assistant turn before them (or make one),
    their outputs become tool results."""
    messages: list[ChatMessage] = []
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "function_call":
            call = _call(item, where)
            if messages and messages[-1].role == "assistant" and not messages[-1].images:
                last = messages.pop()
                messages.append(ChatMessage("assistant", last.content, (), last.reasoning, (*last.tool_calls, call)))
            else:
                messages.append(ChatMessage("assistant", "", tool_calls=(call,)))
        elif kind == "reasoning":
            continue  # an earlier answer's reasoning item, sent back as clients do: the model does not read it
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(ChatMessage("tool", output if isinstance(output, str) else json.dumps(output),
                                        tool_call_id=str(item.get("call_id") or "")))
        else:
            messages.append(_item(item, where, save_image))
    return tuple(messages)


def _call(item: dict, where: str) -> dict:
    if not isinstance(item.get("name"), str):
        raise bad_request(f"'{where}': a function call needs a name.", where)
    arguments = item.get("arguments") or "{}"
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError as exc:
        raise bad_request(f"'{where}.arguments' is not JSON: {exc}.", where) from exc
    return {"id": str(item.get("call_id") or item.get("id") or where), "name": item["name"], "arguments": arguments}


def _item(raw: Any, where: str, save_image: Callable[[bytes], str]) -> ChatMessage:
    if not isinstance(raw, dict) or raw.get("type", "message") != "message" or raw.get("role") not in ROLES:
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


def _call_items(answer: Answer, call: ChatCall) -> list[dict]:
    """The model's tool calls as function_call items, each with the namespace its function came in."""
    items = []
    for made in answer.tool_calls:
        item = {"type": "function_call", "id": f"fc_{uuid.uuid4().hex[:24]}", "call_id": made["id"],
                "name": made["name"], "arguments": json.dumps(made["arguments"], ensure_ascii=False),
                "status": "completed"}
        if made["name"] in call.namespaces:
            item["namespace"] = call.namespaces[made["name"]]
        items.append(item)
    return items


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
                "output": output, "parallel_tool_calls": False, "tool_choice": "auto" if call.tools else "none",
                "tools": [{"type": "function", **t["function"]} for t in call.tools],
                "temperature": call.params.temperature, "top_p": call.params.top_p,
                "max_output_tokens": call.max_tokens, "text": {"format": call.answer_format or {"type": "text"}},
                "metadata": {},
                "usage": usage(answer.stats) if done else None}

    def whole(self, model: str, answer: Answer, call: ChatCall) -> dict:
        output = [_reasoning_item(f"rs_{uuid.uuid4().hex[:24]}", answer.reasoning)] if answer.reasoning else []
        if answer.text or not answer.tool_calls:
            output.append(_message_item(f"msg_{uuid.uuid4().hex[:24]}", answer.text, "completed"))
        output += _call_items(answer, call)
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
        if open_kind != "message" and not answer.tool_calls:
            for line in begin("message"):
                yield line
        for line in close():
            yield line
        for item in _call_items(answer, call):
            index = len(output)
            yield event("response.output_item.added", output_index=index, item={**item, "arguments": "",
                                                                                "status": "in_progress"})
            yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                        delta=item["arguments"])
            yield event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                        arguments=item["arguments"])
            output.append(item)
            yield event("response.output_item.done", output_index=index, item=item)
        finished = self._response(response_id, model, call, output, answer, created)
        yield event("response.incomplete" if finished["status"] == "incomplete" else "response.completed",
                    response=finished)

    def error_event(self, error: ApiError) -> str:
        body = {"type": "error", "code": error.code, "message": error.message, "param": error.param}
        return f"event: error\ndata: {json.dumps(body, ensure_ascii=False)}\n\n"
