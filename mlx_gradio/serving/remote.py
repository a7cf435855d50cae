"""Replies from an OpenAI-compatible server instead of the in-process engine, with the `openai` client.

A `RemoteTarget` is a running server of this app or an endpoint an owner added (URL, optional
key, model name). `start_remote` returns the same `Generation` handle the engine does: its
events stream the text, and the last one carries stats measured at this end (time to first
token, tokens per second); `stop()` closes the stream after the current chunk.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import mimetypes
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.jobs import ChatRequest, Generation, GenerationEvent, GenerationStats
from ..engine.reasoning import ThinkSplitter
from ..errors import GenerationFailed

log = logging.getLogger(__name__)

SERVER_PREFIX, ENDPOINT_PREFIX = "server:", "endpoint:"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # a slow model on a CPU may think long before its first token
CHECK_TIMEOUT = 30.0  # for the one-token answer that shows an endpoint works


@dataclass(frozen=True)
class RemoteTarget:
    """Where a remote reply comes from."""

    key: str  # the picker's value: "server:<profile id>" or "endpoint:<id>"
    name: str
    base_url: str
    api_key: str = field(repr=False)
    model: str  # the `model` field of the request
    vision: bool
    # While a reply streams through one of this app's servers: its supervisor does not probe it, and each chunk
    # counts as a sign of life (the context manager yields the callable to call on one).
    activity: Callable[[], AbstractContextManager[Callable[[], None]]] = field(
        default=lambda: nullcontext(lambda: None), repr=False, compare=False)


def is_remote(model: str) -> bool:
    """Whether a picker value names a server or an endpoint rather than a model folder."""
    return isinstance(model, str) and model.startswith((SERVER_PREFIX, ENDPOINT_PREFIX))


def ask_one_token(base_url: str, api_key: str, model: str, timeout: float) -> tuple[str | None, bool]:
    """(None, _) if the OpenAI-compatible server at `base_url` answers a one-token chat completion within
    `timeout`; else (what went wrong, whether waiting longer cannot help: an error answer rather than none yet)."""
    body = {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}], "stream": False}
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(),
                                     headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode("utf-8", errors="replace").strip()
        return f"HTTP {exc.code} {detail}".strip(), exc.code not in (408, 425, 429, 502, 503, 504)
    except (OSError, ValueError, http.client.HTTPException) as exc:  # no answer, or one that is not HTTP/JSON
        return str(exc) or type(exc).__name__, False
    if isinstance(answer, dict) and answer.get("choices"):
        return None, False
    return f"an answer without choices: {str(answer)[:200]}", True


def check_answers(target: RemoteTarget, timeout: float = CHECK_TIMEOUT) -> str | None:
    """None if `target` answers a one-token chat completion within `timeout`; else what went wrong."""
    return ask_one_token(target.base_url, target.api_key, target.model, timeout)[0]


def openai_messages(request: ChatRequest) -> list[dict]:
    """The conversation in OpenAI's format; images become data URLs."""
    messages = []
    for message in request.messages:
        if not message.images:
            messages.append({"role": message.role, "content": message.content})
            continue
        parts: list[dict] = [{"type": "text", "text": message.content}] if message.content else []
        for path in message.images:
            mime = mimetypes.guess_type(path)[0] or "image/png"
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append({"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}})
        messages.append({"role": message.role, "content": parts})
    return messages


@dataclass
class _Progress:
    """What the reader has seen of a remote reply so far (written by its thread, read by `stop()`)."""

    started: float = field(default_factory=time.perf_counter)
    first: float = 0.0
    last: float = 0.0
    chunks: int = 0
    usage: object | None = None
    finish: str = "stop"

    def stats(self) -> GenerationStats:
        """The reply's numbers, measured at this end (the server's token count when it sent one)."""
        usage = self.usage
        tokens = getattr(usage, "completion_tokens", 0) or self.chunks
        decode_s = self.last - self.first
        return GenerationStats(
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0, cached_tokens=0, prompt_tps=0.0,
            generation_tokens=tokens, generation_tps=(tokens - 1) / decode_s if decode_s > 0 and tokens > 1 else 0.0,
            time_to_first_token=(self.first - self.started) if self.first else 0.0, peak_memory_gb=0.0,
            finish_reason={"stop_requested": "stopped", "length": "length"}.get(self.finish, "stop"))


@dataclass(eq=False)
class RemoteGeneration(Generation):
    """A reply from a server or endpoint. `stop()` ends it for its reader at once, whatever the server does: even
    before its first chunk (a long prompt read by a CPU server, a stalled endpoint). The thread reading the server
    lets go at the server's next chunk, or when the server gives up."""

    progress: _Progress = field(default_factory=_Progress, repr=False)
    _ended: bool = field(default=False, repr=False)
    _end_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def stop(self) -> None:
        super().stop()
        self.progress.finish = "stop_requested"
        self.end(GenerationEvent(stats=self.progress.stats()))

    def end(self, final: GenerationEvent | BaseException) -> None:
        """Hand over the last event (the stats, or the error) once, whoever comes first: the reader or Stop."""
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        self.put(final)


def start_remote(target: RemoteTarget, request: ChatRequest) -> Generation:
    """Stream a reply from `target` on a thread of its own; read it like an engine reply."""
    generation = RemoteGeneration(request)
    threading.Thread(target=_stream, args=(target, generation), name="remote-reply", daemon=True).start()
    return generation


def _stream(target: RemoteTarget, generation: RemoteGeneration) -> None:
    import httpx
    import openai

    request, params, progress = generation.request, generation.request.params, generation.progress
    client = openai.OpenAI(base_url=target.base_url, api_key=target.api_key or "not-needed", max_retries=0,
                           timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT))
    splitter = ThinkSplitter()  # for servers that leave `<think>` in the text
    # The servers of this app (mlx-lm's, mlx-vlm's) take the Think switch; other endpoints may refuse unknown fields.
    think = ({"chat_template_kwargs": {"enable_thinking": request.thinking}, "enable_thinking": request.thinking}
             if target.key.startswith(SERVER_PREFIX) else {})
    try:
        with target.activity() as answered:
            stream = client.chat.completions.create(
                model=target.model, messages=openai_messages(request), stream=True, max_tokens=params.max_tokens,
                temperature=params.temperature, top_p=params.top_p, stream_options={"include_usage": True},
                extra_body=think or None, **({"seed": params.seed} if params.seed >= 0 else {}))
            with stream:
                for chunk in stream:
                    if generation.stop_requested:
                        log.debug("The reply from %s was stopped; its stream is closed", target.name)
                        return
                    answered()
                    progress.usage = chunk.usage or progress.usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    progress.finish = choice.finish_reason or progress.finish
                    delta = choice.delta
                    text = delta.content or "" if delta else ""
                    # mlx-lm's server sends the thinking as `reasoning`, others as `reasoning_content`.
                    reasoning = getattr(delta, "reasoning", None) or getattr(delta, "reasoning_content", None) or ""
                    if text or reasoning:
                        progress.last = time.perf_counter()
                        progress.first = progress.first or progress.last
                        progress.chunks += 1
                        split_reasoning, answer = splitter.feed(text)
                        generation.put(GenerationEvent(text=answer, reasoning=reasoning + split_reasoning))
                rest_reasoning, rest = splitter.flush()
                if rest_reasoning or rest:
                    generation.put(GenerationEvent(text=rest, reasoning=rest_reasoning))
    except openai.APIStatusError as exc:
        generation.end(GenerationFailed(f"{target.name} answered with an error ({exc.status_code}): "
                                        f"{_detail(exc)}"))
        return
    except (openai.APIError, httpx.HTTPError, OSError) as exc:
        if generation.stop_requested:
            log.debug("The stopped reply from %s ended with %s", target.name, exc)
            return
        generation.end(GenerationFailed(f"{target.name} ({target.base_url}) cannot be reached: {exc}"))
        return
    generation.end(GenerationEvent(stats=progress.stats()))


def _detail(exc) -> str:
    """The error message a server put in its answer, shortened."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            body = body.get("message", body)
    return str(body or exc.message)[:300]
