"""One reply read for the API: its first event awaited (so a refusal is still an HTTP error), stop sequences
applied, the time to the first token and the stats kept."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from .. import errors
from ..engine.jobs import Generation, GenerationEvent, GenerationStats
from . import bridge
from .errors import ApiError
from .stops import StopText


class Answer:
    """The pieces (thinking, text) of one reply, and how it ended."""

    def __init__(self, generation: Generation, stops: tuple[str, ...], started: float) -> None:
        self.generation = generation
        self._events = bridge.events(generation)
        self._stops = StopText(stops)
        self._started = started
        self._first: GenerationEvent | None = None
        self.stats: GenerationStats | None = None
        self.first_token_s: float | None = None
        self.finish = "stop"
        self.text = ""
        self.reasoning = ""
        self.tool_calls: list[dict] = []  # {"id", "name", "arguments"}, as the model's parser read them

    @property
    def stop_sequence(self) -> str | None:
        """The stop sequence that ended the text, if one did."""
        return self._stops.matched

    async def begin(self) -> None:
        """Wait for the reply's first words (or its end); a refusal of the engine is raised as an `ApiError`."""
        try:
            async for event in self._events:
                if event.text or event.reasoning or event.tool_calls or event.done:
                    self._first = event
                    return
        except errors.AppError as exc:
            raise api_error(exc) from exc

    async def pieces(self) -> AsyncIterator[tuple[str, str]]:
        """(thinking, text) as they come, text cut at a stop sequence; raises `AppError` if the reply fails."""
        pending = [self._first] if self._first is not None else []
        self._first = None
        for event in pending:
            for piece in self._take(event):
                yield piece
        if self.stats is not None:
            return
        async for event in self._events:
            for piece in self._take(event):
                yield piece
            if self.stats is not None:
                return

    def _take(self, event: GenerationEvent) -> list[tuple[str, str]]:
        text = self._stops.feed(event.text) if event.text else ""
        if self._stops.stopped:
            self.generation.stop()  # the engine ends after this token; its stats still come
        if event.done:
            self.stats = event.stats
            text += self._stops.flush()
            self.finish = "length" if event.stats.finish_reason == "length" and not self._stops.stopped else "stop"
        self.tool_calls += event.tool_calls
        if event.tool_calls and self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self._started
        if not (text or event.reasoning):
            return []
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self._started
        self.text += text
        self.reasoning += event.reasoning
        return [(event.reasoning, text)]


def api_error(exc: errors.AppError) -> ApiError:
    """The HTTP status and code of an engine's refusal."""
    if isinstance(exc, errors.ContextTooLong):
        return ApiError(400, str(exc), code="context_length_exceeded", param="messages")
    if isinstance(exc, (errors.ImageNeedsVisionModel, errors.InvalidImage)):
        return ApiError(400, str(exc), param="messages")
    if isinstance(exc, errors.ModelTooLarge):
        return ApiError(400, f"{exc} The app's owner can unpin a model or raise the memory for models in the "
                             "Servers tab.", code="model_too_large", param="model")
    if isinstance(exc, errors.StructuredOutputUnavailable):
        return ApiError(400, str(exc), param="response_format")
    if isinstance(exc, errors.ModelNotFound):
        return ApiError(404, str(exc), code="model_not_found", param="model")
    if isinstance(exc, errors.DemoModelUnavailable):
        return ApiError(503, str(exc), kind="server_error")
    return ApiError(500, str(exc), kind="server_error")
