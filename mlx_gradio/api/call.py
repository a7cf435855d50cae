"""A generation request as every dialect reads it, and what a dialect does with the answer."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..engine.grammar import ANY_OBJECT, json_grammar
from ..engine.jobs import ChatMessage, SamplingParams
from . import fields
from .answer import Answer
from .errors import ApiError, bad_request

UNCAPPED = 2**31 - 1  # the most max_tokens may ask; the engine gives what the context leaves (and the log says so)


@dataclass(frozen=True)
class ChatCall:
    """What a request asks for, checked."""

    model: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    max_tokens: int | None  # what the client asked for (None: as many as the context leaves)
    thinking: bool = True  # for templates that can think or not
    raw: bool = False  # the one message is the whole prompt (a plain completion)
    tools: tuple[dict, ...] = ()  # as OpenAI describes them: {"type": "function", "function": {...}}
    answer_format: dict | None = None  # the format asked for, as the request wrote it (None: free text)
    grammar: str = ""  # the llguidance grammar of that format, which decoding is held to
    namespaces: dict[str, str] = field(default_factory=dict)  # a tool's namespace by its name (Responses)


class Dialect(Protocol):
    """One API's request and answer shapes (OpenAI chat or completions, Anthropic messages)."""

    endpoint: str  # as the request log names it

    def read(self, body: Any, save_image: Callable[[bytes], str]) -> ChatCall:
        """The request, checked; an `ApiError` names what is wrong."""

    def whole(self, model: str, answer: Answer, call: ChatCall) -> dict:
        """The answer of a request that did not stream."""

    def stream(self, model: str, answer: Answer, call: ChatCall) -> AsyncIterator[str]:
        """The answer as server-sent events; `Answer.pieces` raises `AppError` if the reply fails."""

    def error_event(self, error: ApiError) -> str:
        """A failure after the stream began, as this API sends it."""


def sampling(body: dict, max_tokens: int, temperature_max: float = 2.0) -> SamplingParams:
    """The sampling fields OpenAI's and mlx-lm's clients send (greedy unless asked otherwise, as mlx_lm.server)."""
    return SamplingParams(
        temperature=fields.number(body, "temperature", 0.0, 0, temperature_max),
        top_p=fields.number(body, "top_p", 1.0, 0, 1),
        top_k=fields.number(body, "top_k", 0, 0, 1_000_000, integer=True),
        min_p=fields.number(body, "min_p", 0.0, 0, 1),
        repetition_penalty=fields.number(body, "repetition_penalty", 1.0, 0.01, 10),
        seed=fields.number(body, "seed", -1, -(2**63), 2**63 - 1, integer=True),
        max_tokens=max_tokens)


def tool(name: Any, description: Any, parameters: Any, where: str) -> dict:
    """One tool the model may call, checked, as chat templates take it (OpenAI's function format)."""
    if not isinstance(name, str) or not name:
        raise bad_request(f"'{where}' needs a name.", where)
    if parameters is not None and not isinstance(parameters, dict):
        raise bad_request(f"'{where}': the parameters must be a JSON schema object.", where)
    function = {"name": fields.text(name, where), "parameters": parameters or {"type": "object", "properties": {}}}
    if description:
        function["description"] = fields.text(description, where)
    return {"type": "function", "function": function}


def answer_format(value: Any, where: str, schema_in: str | None = None) -> tuple[dict | None, str]:
    """A response format and its grammar: `text` (free), `json_object` (any object) or `json_schema`, the schema
    under `schema_in` (OpenAI chat's `json_schema`) or beside the type (Responses, Anthropic)."""
    if value is None:
        return None, ""
    if not isinstance(value, dict):
        raise bad_request(f"'{where}' must be an object with a type.", where)
    kind = value.get("type")
    if kind == "text":
        return None, ""
    if kind == "json_object":
        return value, json_grammar(ANY_OBJECT)
    if kind != "json_schema":
        raise bad_request(f"'{where}.type' must be text, json_object or json_schema; it is {kind!r}.", where)
    holder = value.get(schema_in) if schema_in else value
    if not isinstance(holder, dict):
        raise bad_request(f"'{where}.{schema_in}' must be an object with a schema.", where)
    schema = holder.get("schema", {})
    if not isinstance(schema, (dict, bool)):
        raise bad_request(f"'{where}': the schema must be a JSON schema object.", where)
    try:
        return value, json_grammar(schema)
    except ValueError as exc:
        raise bad_request(f"'{where}': the JSON schema cannot be followed: {exc}", where) from exc


def model_of(body: Any, anthropic: bool = False) -> str:
    """The model a request body names (the body must be a JSON object)."""
    if not isinstance(body, dict):
        raise bad_request("The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(("model: required, " if anthropic else "'model' is required: ") +
                          "one of the ids GET /v1/models lists.", "model")
    return model
