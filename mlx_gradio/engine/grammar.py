"""JSON schemas as llguidance grammars: what a structured answer must follow, checked before a reply is queued.

No MLX here: the API checks a request's schema with this before it takes a place in the engine's queue.
"""

from __future__ import annotations

import json

import llguidance

ANY_OBJECT = {"type": "object"}  # OpenAI's `json_object`: any JSON object


def json_grammar(schema: dict | bool) -> str:
    """The llguidance grammar of a JSON schema (compact JSON, no free whitespace, so a model cannot pad forever);
    a `ValueError` names what in the schema cannot be followed."""
    compiler = llguidance.JsonCompiler(separators=(", ", ": "), whitespace_pattern="")
    return compiler.compile(json.dumps(schema))
