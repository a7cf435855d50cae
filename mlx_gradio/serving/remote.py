"""Replies from an OpenAI-compatible server instead of the in-process engine, with the `openai` client.

A `RemoteTarget` is a running server of this app or an endpoint an owner added (URL, optional
key, model name). `start_remote` returns the same `Generation` handle the engine does: its
events stream the text, and the last one carries stats measured at this end (time to first
token, tokens per second); `stop()` closes the stream after the current chunk.
"""

from __future__ import annotations

import base64
import logging
import mimetypes
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.jobs import ChatRequest, Generation, GenerationEvent, GenerationStats
from ..engine.reasoning import ThinkSplitter
from ..errors import GenerationFailed

log = logging.getLogger(__name__)

SERVER_PREFIX, ENDPOINT_PREFIX = "server:", "endpoint:"
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # a slow model on a CPU may think long before its first token


@dataclass(frozen=True)
class RemoteTarget:
    """Where a remote reply comes from."""

    key: str  # the picker's value: "server:<profile id>" or "endpoint:<id>"
    name: str
    base_url: str
    api_key: str = field(repr=False)
    model: str  # the `model` field of the request
    vision: bool


def is_remote(model: str) -> bool:
    """Whether a picker value names a server or an endpoint rather than a model folder."""
    return isinstance(model, str) and model.startswith((SERVER_PREFIX, ENDPOINT_PREFIX))


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


def start_remote(target: RemoteTarget, request: ChatRequest) -> Generation:
    """Stream a reply from `target` on a thread of its own; read it like an engine reply."""
    generation = Generation(request)
    threading.Thread(target=_stream, args=(target, generation), name="remote-reply", daemon=True).start()
    return generation


def _stream(target: RemoteTarget, generation: Generation) -> None:
    import httpx
    import openai

    request, params = generation.request, generation.request.params
    client = openai.OpenAI(base_url=target.base_url, api_key=target.api_key or "not-needed", max_retries=0,
                           timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT))
    started = time.perf_counter()
    first = last = 0.0
    chunks, finish, usage = 0, "stop", None
    splitter = ThinkSplitter()  # for servers that leave `<think>` in the text
    # The servers of this app (mlx-lm's, mlx-vlm's) take the Think switch; other endpoints may refuse unknown fields.
    think = ({"chat_template_kwargs": {"enable_thinking": request.thinking}, "enable_thinking": request.thinking}
             if target.key.startswith(SERVER_PREFIX) else {})
    try:
        stream = client.chat.completions.create(
            model=target.model, messages=openai_messages(request), stream=True, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, stream_options={"include_usage": True},
            extra_body=think or None, **({"seed": params.seed} if params.seed >= 0 else {}))
        with stream:
            for chunk in stream:
                if generation.stop_requested:
                    finish = "stop_requested"
                    break
                usage = chunk.usage or usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                finish = choice.finish_reason or finish
                delta = choice.delta
                text = delta.content or "" if delta else ""
                # mlx-lm's server sends the thinking as `reasoning`, others as `reasoning_content`.
                reasoning = getattr(delta, "reasoning", None) or getattr(delta, "reasoning_content", None) or ""
                if text or reasoning:
                    last = time.perf_counter()
                    first = first or last
                    chunks += 1
                    split_reasoning, answer = splitter.feed(text)
                    generation.put(GenerationEvent(text=answer, reasoning=reasoning + split_reasoning))
            rest_reasoning, rest = splitter.flush()
            if rest_reasoning or rest:
                generation.put(GenerationEvent(text=rest, reasoning=rest_reasoning))
    except openai.APIStatusError as exc:
        generation.put(GenerationFailed(f"{target.name} answered with an error ({exc.status_code}): "
                                        f"{_detail(exc)}"))
        return
    except (openai.APIError, OSError) as exc:
        generation.put(GenerationFailed(f"{target.name} ({target.base_url}) cannot be reached: {exc}"))
        return
    tokens = usage.completion_tokens if usage and usage.completion_tokens else chunks
    decode_s = last - first
    generation.put(GenerationEvent(stats=GenerationStats(
        prompt_tokens=usage.prompt_tokens if usage else 0, cached_tokens=0, prompt_tps=0.0,
        generation_tokens=tokens, generation_tps=(tokens - 1) / decode_s if decode_s > 0 and tokens > 1 else 0.0,
        time_to_first_token=(first - started) if first else 0.0, peak_memory_gb=0.0,
        finish_reason={"stop_requested": "stopped", "length": "length"}.get(finish, "stop"))))


def _detail(exc) -> str:
    """The error message a server put in its answer, shortened."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        body = body.get("error", body)
        if isinstance(body, dict):
            body = body.get("message", body)
    return str(body or exc.message)[:300]
