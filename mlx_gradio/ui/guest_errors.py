"""Errors a guest sees name no path or URL of the owner's machine, whichever handler raised them.

The Chat tab's handlers are the ones guests reach; `guest_safe` wraps each of them once, so a sentence
written for the owner ("There is no model folder at /Users/ann/models/x") reaches a guest as "… at x".
The log keeps the whole sentence.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import gradio as gr

from ..controller.feedback import public

T = TypeVar("T")


def guest_safe(cls: type[T]) -> type[T]:
    """Wrap every public handler of `cls` whose first argument is the request (`self.controller` decides)."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        parameters = list(inspect.signature(member).parameters)
        if parameters[1:2] == ["request"]:
            setattr(cls, name, _wrapped(member))
    return cls


def _wrapped(handler: Callable) -> Callable:
    """`handler` with a guest's errors made public; a generator stays a generator (Gradio streams it)."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(self: Any, request: gr.Request, *args: Any, **kwargs: Any):
            try:
                yield from handler(self, request, *args, **kwargs)
            except gr.Error as exc:
                if (shown := _for_guest(self, request, exc)) is None:
                    raise
                raise shown from exc
        return streaming

    @functools.wraps(handler)
    def plain(self: Any, request: gr.Request, *args: Any, **kwargs: Any):
        try:
            return handler(self, request, *args, **kwargs)
        except gr.Error as exc:
            if (shown := _for_guest(self, request, exc)) is None:
                raise
            raise shown from exc
    return plain


def _for_guest(events: Any, request: gr.Request, exc: gr.Error) -> gr.Error | None:
    """The error as a guest may see it (None for an owner: they see it as it is)."""
    if events.controller.is_owner(request):
        return None
    return gr.Error(public(str(exc.message)), duration=exc.duration, visible=exc.visible,
                    title=public(str(exc.title)), print_exception=False)
