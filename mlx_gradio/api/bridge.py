"""A reply from the engine read in an event loop: the loop waits without a thread of its own turning."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio.to_thread

from ..engine.jobs import Generation, GenerationEvent


async def events(generation: Generation) -> AsyncIterator[GenerationEvent]:
    """The generation's events; whoever stops reading (a client that went away) stops the generation."""
    iterator = generation.events()
    try:
        while True:
            # A cancelled read leaves its thread waiting for the next event, which the stop below brings soon.
            event = await anyio.to_thread.run_sync(next, iterator, None, abandon_on_cancel=True)
            if event is None:
                return
            yield event
    finally:
        generation.stop()
