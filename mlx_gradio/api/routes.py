"""The API's routes on the engine the chat uses (and the app's ready servers): /v1/models, OpenAI's chat
completions, responses and completions, Anthropic's messages.

Every refusal is an answer in OpenAI's error shape with the right status (400 a bad field, 401 a
missing or wrong key, 404 an unknown model, 429 a full queue with `Retry-After`); nothing answers
with a traceback. Each request is recorded (never its prompt).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from .. import errors
from ..chats.images import ingest_image
from ..engine.jobs import ChatRequest, Generation
from ..files import write_atomic
from ..models.folders import LocalModel
from . import fields
from .activity import RequestLog, RequestRecord
from .answer import Answer, api_error
from .anthropic_messages import AnthropicMessages, read_messages
from .call import ChatCall, Dialect
from .errors import ApiError, bad_request, too_many, unauthorized, unknown_model
from .keys import ApiKeys
from .openai_chat import OpenAIChat
from .openai_completions import OpenAICompletions
from .openai_responses import OpenAIResponses

log = logging.getLogger(__name__)

SERVER = "server"  # the source of a model that one of this app's ready servers serves
MAX_UNDER_WAY = 16  # generation requests at once (waiting for the model or streaming); more get a 429
RETRY_AFTER_S = 5
MAX_BODY_BYTES = 64_000_000
DISCONNECT_CHECK_S = 0.5  # how often a reply answered whole looks whether its client is still there
LOCAL_CLIENT = "this machine"
MAX_TTL_S = 30 * 24 * 3600


@dataclass(frozen=True)
class Catalog:
    """What the API serves, as the app sees it."""

    models: Callable[[], list[LocalModel]]  # the models on this machine and this app's ready servers (no endpoints)
    prepare: Callable[[str], None]  # blocks until a model can be used (the demo model is fetched first)
    generate: Callable[[ChatRequest], Generation]
    loaded: Callable[[], str | None]  # the folder of the model the engine holds
    context_limit: Callable[[], int]  # tokens (0: each model's own)
    count_tokens: Callable[[ChatRequest], int]  # a prompt's tokens by its model's template (loads the model)


class Scratch:
    """A request's own temporary folder (its images), removed when the request ends."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    def image(self, data: bytes) -> str:
        """Keep an image's bytes once they are checked to be an image; returns its path."""
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="mlx-gradio-api-"))
        raw = self.folder / f"upload-{len(list(self.folder.iterdir()))}"
        try:
            write_atomic(raw, data)
            return str(ingest_image(raw, self.folder))
        except errors.InvalidImage as exc:
            raise bad_request(f"An image part could not be read: {exc}", "messages") from exc
        except errors.StoreWriteFailed as exc:
            raise ApiError(500, f"The image could not be kept for the reply: {exc}", kind="server_error") from exc

    def close(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class ApiService:
    """The routes and what they share: the keys, the request log and the count of requests under way."""

    def __init__(self, catalog: Catalog, keys: ApiKeys, requests: RequestLog) -> None:
        self.catalog = catalog
        self.keys = keys
        self.requests = requests
        self._under_way = 0
        self._lock = threading.Lock()

    def build(self, origins: list[str]) -> FastAPI:
        """The FastAPI app; web pages of `origins` may call it (none unless the owner lists some)."""
        app = FastAPI(title="mlx-gradio API", docs_url=None, redoc_url=None, openapi_url=None)
        if origins:
            app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
                               allow_headers=["Authorization", "Content-Type", "x-api-key"])

        @app.exception_handler(ApiError)
        async def refused(request: Request, exc: ApiError) -> JSONResponse:
            return _refusal(request, exc)

        @app.exception_handler(HTTPException)
        async def no_route(request: Request, exc: HTTPException) -> JSONResponse:
            return _refusal(request, ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}.",
                                              code="not_found" if exc.status_code == 404 else None))

        @app.exception_handler(Exception)
        async def failed(request: Request, exc: Exception) -> JSONResponse:
            log.error("API %s %s failed", request.method, request.url.path, exc_info=exc)
            return _refusal(request, ApiError(500, "The app failed on this request; its log says why.",
                                              kind="server_error"))

        @app.get("/health")
        async def health() -> dict:
            return {"status": "ok"}

        @app.get("/v1/models")
        async def models(request: Request) -> dict:
            self.client(request)
            return {"object": "list", "data": [self._model_card(m) for m in await self._models()]}

        @app.get("/v1/models/{model_id:path}")
        async def model(model_id: str, request: Request) -> dict:
            self.client(request)
            return self._model_card(self._find(model_id, await self._models()))

        @app.post("/v1/chat/completions")
        async def chat_completions(request: Request) -> Response:
            return await self._generate(request, OpenAIChat())

        @app.post("/v1/responses")
        async def responses(request: Request) -> Response:
            return await self._generate(request, OpenAIResponses())

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await self._generate(request, OpenAICompletions())

        @app.post("/v1/messages")
        async def messages(request: Request) -> Response:
            return await self._generate(request, AnthropicMessages())

        @app.post("/v1/messages/count_tokens")
        async def count_tokens(request: Request) -> dict:
            return await self._count_tokens(request)

        return app

    # --- who asks ---------------------------------------------------------------------------

    def client(self, request: Request) -> str:
        """The name of the key the request sends (`Authorization: Bearer …` or `x-api-key`); with no keys
        made, every request is from this machine (the API then listens on loopback only)."""
        secret = request.headers.get("x-api-key") or ""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            secret = secret or token.strip()
        if not self.keys.all():
            return LOCAL_CLIENT
        if not secret:
            raise unauthorized("This API needs a key: send it as 'Authorization: Bearer <key>' or 'x-api-key'.")
        key = self.keys.match(secret)
        if key is None:
            raise unauthorized("That API key is not valid (it may have been revoked); ask the owner for one.")
        return key.name

    # --- models -----------------------------------------------------------------------------

    async def _models(self) -> list[LocalModel]:
        return await anyio.to_thread.run_sync(self.catalog.models)  # may scan the HF cache

    def _model_card(self, model: LocalModel) -> dict:
        try:
            created = int(Path(model.path).stat().st_mtime)
        except OSError:
            created = 0  # the demo model before it is fetched
        server = model.source == SERVER
        return {"id": model.key, "object": "model", "created": created, "owned_by": "mlx-gradio",
                "loaded": server or model.path in self.catalog.loaded(), "vision": model.vision,
                "size_bytes": model.size_bytes, **({"server": model.name} if server else {})}

    @staticmethod
    def _find(model_id: object, models: list[LocalModel]) -> LocalModel:
        found = next((m for m in models if model_id in (m.key, m.name)), None)
        if found is None:
            raise unknown_model(model_id)
        return found

    # --- generation -------------------------------------------------------------------------

    def _claim(self) -> None:
        with self._lock:
            if self._under_way >= MAX_UNDER_WAY:
                raise too_many(RETRY_AFTER_S, f"{self._under_way} requests are under way, as many as this API "
                                              f"takes at once; try again in {RETRY_AFTER_S} s.")
            self._under_way += 1

    def _release(self) -> None:
        with self._lock:
            self._under_way -= 1

    async def _generate(self, request: Request, dialect: Dialect) -> Response:
        """A reply in `dialect`'s shapes: checked, queued for the engine, streamed or whole."""
        started = time.perf_counter()
        record = RequestRecord(LOCAL_CLIENT, dialect.endpoint)
        scratch = Scratch()
        lease = _Lease(scratch.close)
        try:
            record.client = self.client(request)
            body = await _json(request)
            call, ttl = dialect.read(body, scratch.image), _ttl(body)
            record.model = call.model
            model = self._find(call.model, await self._models())
            if call.raw and model.vision:
                raise bad_request(f"{model.key} is a vision model; plain completions need a text model (use chat "
                                  "completions for this one).", "model")
            if call.tools and model.vision:
                raise bad_request(f"{model.key} is a vision model; tools are served with text models only.", "tools")
            if model.source == SERVER:
                _refuse_on_a_server(model, call)
            if call.tools and call.grammar:
                raise bad_request("A response format and tools together are not served: the format would keep the "
                                  "model from calling a tool. Send one or the other.", "tools")
            self._claim()
            lease.then(self._release)
            await anyio.to_thread.run_sync(self.catalog.prepare, model.path)  # the demo model may be fetched
            reply = replace(self._request(record.client, model, call, body.get("prompt_cache_key")),
                            idle_unload_s=ttl)
            answer = Answer(self.catalog.generate(reply), call.stop, started)
            lease.then(answer.generation.stop)
            await answer.begin()
            if call.stream:
                stream = _Stream(self._stream(dialect, answer, call, model.key, record, started, lease), lease.end)
                lease = None  # the stream ends it, however it ends
                return stream
            if await _read_unless_gone(request, answer):
                record.status, record.note = 499, "the client went away; the reply was stopped"
            self._finish(record, answer, call, started)
            return JSONResponse(dialect.whole(model.key, answer, call))
        except (ApiError, errors.AppError) as exc:
            raise self._refused(record, exc, started) from exc
        finally:
            if lease is not None:
                lease.end()

    async def _count_tokens(self, request: Request) -> dict:
        """Anthropic's token count of a Messages request's prompt, by the model's own template and tokenizer."""
        started = time.perf_counter()
        record = RequestRecord(LOCAL_CLIENT, "messages/count_tokens")
        scratch = Scratch()
        try:
            record.client = self.client(request)
            call = read_messages(await _json(request), scratch.image, need_max_tokens=False)
            record.model = call.model
            model = self._find(call.model, await self._models())
            if model.source == SERVER:
                raise bad_request(f"{model.key} is served by the server “{model.name}”, whose tokenizer this app "
                                  "does not hold; count tokens with one of this app's own models.", "model")
            await anyio.to_thread.run_sync(self.catalog.prepare, model.path)
            count = await anyio.to_thread.run_sync(self.catalog.count_tokens,
                                                   self._request(record.client, model, call))
            record.prompt_tokens, record.seconds = count, time.perf_counter() - started
            self.requests.add(record)
            return {"input_tokens": count}
        except (ApiError, errors.AppError) as exc:
            raise self._refused(record, exc, started) from exc
        finally:
            scratch.close()

    def _refused(self, record: RequestRecord, exc: ApiError | errors.AppError, started: float) -> ApiError:
        """Record a refusal; returns it as the API's error."""
        error = exc if isinstance(exc, ApiError) else api_error(exc)
        record.status, record.note, record.seconds = error.status, error.message, time.perf_counter() - started
        self.requests.add(record)
        return error

    def _request(self, client: str, model: LocalModel, call: ChatCall, cache_key: object = None) -> ChatRequest:
        return ChatRequest(_conversation_of(client, call, cache_key), model.path, call.messages, call.params,
                           context_limit=self.catalog.context_limit(), thinking=call.thinking, raw=call.raw,
                           tools=call.tools, grammar=call.grammar, client=f"api:{client}")

    async def _stream(self, dialect: Dialect, answer: Answer, call: ChatCall, model: str, record: RequestRecord,
                      started: float, lease: _Lease) -> AsyncIterator[str]:
        try:
            async for event in dialect.stream(model, answer, call):
                yield event
            self._finish(record, answer, call, started)
        except errors.AppError as exc:
            error = api_error(exc)
            record.status, record.note = error.status, f"failed while streaming: {error.message}"
            self._finish(record, answer, call, started)
            yield dialect.error_event(error)
        except BaseException:  # the client went away (a cancelled stream): the reply is stopped, the slot freed
            record.status, record.note = 499, "the client went away; the reply was stopped"
            self._finish(record, answer, call, started)
            raise
        finally:
            lease.end()

    def _finish(self, record: RequestRecord, answer: Answer, call: ChatCall, started: float) -> None:
        stats = answer.stats
        record.seconds = time.perf_counter() - started
        record.first_token_s = answer.first_token_s
        if stats is not None:
            record.prompt_tokens, record.cached_tokens = stats.prompt_tokens, stats.cached_tokens
            record.completion_tokens, record.tokens_per_s = stats.generation_tokens, stats.generation_tps
            room = stats.context_length - stats.prompt_tokens if stats.context_length else None
            if call.max_tokens is not None and room is not None and call.max_tokens > room:
                record.note = record.note or f"max_tokens {call.max_tokens:,} capped at the {room:,} the context left"
        self.requests.add(record)


class _Lease:
    """What a request holds until it ends (its slot, its reply, its images), let go once however it ends."""

    def __init__(self, first: Callable[[], None]) -> None:
        self._ends = [first]

    def then(self, end: Callable[[], None]) -> None:
        self._ends.append(end)

    def end(self) -> None:
        ends, self._ends = self._ends, []
        for end in reversed(ends):
            end()


class _Stream(StreamingResponse):
    """Server-sent events that end their request's lease even when the client left before the first one."""

    def __init__(self, events: AsyncIterator[str], end: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._end = end

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._end()


async def _read_unless_gone(request: Request, answer: Answer) -> bool:
    """Read a reply that is answered whole; a client that hangs up meanwhile stops it. Returns whether it did."""
    gone = False

    async def watch() -> None:
        nonlocal gone
        while not await request.is_disconnected():
            await asyncio.sleep(DISCONNECT_CHECK_S)
        gone = True
        answer.generation.stop()

    watcher = asyncio.create_task(watch())
    try:
        async for _ in answer.pieces():
            pass
    finally:
        watcher.cancel()
    return gone


def _refuse_on_a_server(model: LocalModel, call: ChatCall) -> None:
    """What a reply through one of this app's servers cannot carry: its chat messages and sampling pass on, not a
    plain completion's raw prompt, tools, or a response format (the server reads its own tokens, not this app's
    grammar)."""
    what = ("a plain completion" if call.raw else "tools" if call.tools else "a response format" if call.grammar
            else "")
    if what:
        raise bad_request(f"{model.key} is served by the server “{model.name}”, which this app passes chat "
                          f"messages to but not {what}; use one of this app's own models for that.",
                          "tools" if call.tools else "model")


def _refusal(request: Request, error: ApiError) -> JSONResponse:
    """A refusal in the shape of the API the path belongs to (Anthropic's for /v1/messages, else OpenAI's)."""
    anthropic = request.url.path.startswith("/v1/messages")
    return JSONResponse(error.anthropic_body() if anthropic else error.openai_body(), status_code=error.status,
                        headers=error.headers)


def _ttl(body: dict) -> float | None:
    """LM Studio's `ttl`: seconds the model may stay loaded without a request before it is unloaded."""
    return fields.number(body, "ttl", None, 1, MAX_TTL_S)


def _conversation_of(client: str, call: ChatCall, cache_key: object = None) -> str:
    """The prompt cache a request reads: one per client and conversation, a conversation known by OpenAI's
    `prompt_cache_key` when the client sends one, else by how it opens (its system prompt and first user
    message). A client that resends its conversation reuses its prefix, and its other conversations (an agent's
    side requests) keep caches of their own; plain completions share one."""
    if isinstance(cache_key, str) and cache_key:
        opening = ["key", cache_key]
    elif call.raw:
        opening = []
    else:
        opening = ([m.content for m in call.messages if m.role == "system"][:1] +
                   [m.content for m in call.messages if m.role == "user"][:1])
    return "api-" + hashlib.sha256(json.dumps([client, *opening]).encode()).hexdigest()[:24]


async def _json(request: Request) -> object:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise ApiError(413, f"The request is larger than {MAX_BODY_BYTES // 1_000_000} MB.")
    try:
        return json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"The body is not valid JSON: {exc}.") from exc
