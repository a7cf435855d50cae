"""A reply from the engine read in an event loop: one thread per reply hands its events over as they come."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator

from ..engine.jobs import Generation, GenerationEvent

log = logging.getLogger(__name__)

_END = object()


async def events(generation: Generation) -> AsyncIterator[GenerationEvent]:
    """The generation's events; whoever stops reading (a client that went away) stops the generation."""
    loop = asyncio.get_running_loop()
    arrived: asyncio.Queue = asyncio.Queue()

    def hand_over(item: object) -> None:
        try:
            loop.call_soon_threadsafe(arrived.put_nowait, item)
        except RuntimeError as exc:  # the API stopped while the reply went on: nobody is left to read it
            log.debug("A reply's event found the API's loop closed: %s", exc)

    def pump() -> None:
        try:
            for event in generation.events():
                hand_over(event)
        except BaseException as exc:  # noqa: BLE001 - the reader re-raises it
            hand_over(exc)
        else:
            hand_over(_END)

    threading.Thread(target=pump, name="api-reply", daemon=True).start()
    try:
        while (item := await arrived.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        generation.stop()
