"""Number fields that answer a crafted API call with a sentence naming the field.

Gradio's own Slider and Number compare what they are sent with their bounds before anything else, so a
word or `null` where a number belongs ends in its generic "upstream" error. `checked` makes one check the
type first; the page itself looks and works the same.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import gradio as gr

T = TypeVar("T", gr.Slider, gr.Number)


def checked_number(payload: Any, label: str | None, minimum: float | None, maximum: float | None,
                   optional: bool = False) -> float | None:
    """`payload` if it is a finite number (or None where the field may be empty); else a `gr.Error` naming the
    field and what it takes."""
    if payload is None and optional:
        return None
    if isinstance(payload, bool) or not isinstance(payload, (int, float)) or not math.isfinite(payload):
        low = "" if minimum is None else f" from {minimum:g}"
        high = "" if maximum is None else f" to {maximum:g}"
        raise gr.Error(f"“{label or 'A number field'}” takes a number{low}{high}, not {str(payload)[:40]!r}.",
                       title="That value cannot be used")
    return payload


def checked(component: T) -> T:
    """`component` (a gr.Slider or gr.Number) with the type of what it is sent checked before its bounds; a
    Number may be left empty. (Its `preprocess` is wrapped on the instance: a subclass of a Gradio component
    would make Gradio write a type-stub file next to this module when it is imported.)"""
    original = component.preprocess
    optional = isinstance(component, gr.Number)

    def preprocess(payload: Any) -> Any:
        return original(checked_number(payload, component.label, component.minimum, component.maximum, optional))

    component.preprocess = preprocess
    return component
