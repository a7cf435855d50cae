"""Reading a request body's fields: each one checked, a wrong one refused with its name."""

from __future__ import annotations

import math
from typing import Any

from .errors import bad_request


def number(body: dict, name: str, default: float | None, low: float, high: float,
           integer: bool = False) -> float | None:
    """A number in [low, high] (`null` or absent: `default`)."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad_request(f"'{name}' must be a number, not {value!r}.", name)
    if integer and value != int(value):
        raise bad_request(f"'{name}' must be a whole number, not {value!r}.", name)
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be from {low:g} to {high:g}; it is {value!r}.", name)
    return int(value) if integer else float(value)


def flag(body: dict, name: str, default: bool = False) -> bool:
    """true or false (absent: `default`)."""
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"'{name}' must be true or false, not {value!r}.", name)
    return value


def text(value: Any, name: str) -> str:
    """A string (a lone surrogate, which no model's tokenizer takes, is refused)."""
    if not isinstance(value, str):
        raise bad_request(f"'{name}' must be a string.", name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise bad_request(f"'{name}' is not valid Unicode text.", name) from exc
    return value


def stops(body: dict, name: str = "stop", most: int = 4) -> tuple[str, ...]:
    """Stop sequences: a string or a list of up to `most` non-empty strings."""
    value = body.get(name)
    if value is None:
        return ()
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, list) or len(listed) > most or not all(isinstance(s, str) and s for s in listed):
        raise bad_request(f"'{name}' must be a string or a list of at most {most} non-empty strings.", name)
    return tuple(text(s, name) for s in listed)
