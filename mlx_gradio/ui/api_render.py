"""The App API panel as Markdown: its state, how to call it, and its latest requests."""

from __future__ import annotations

import time

from ..api.activity import RequestRecord
from ..controller.api import ApiView


def status_markdown(view: ApiView) -> str:
    """On or off, where, and what a client sets."""
    if not view.running:
        return ("**App API: off.** Switch it on so that editors, coding agents and scripts use the models of "
                "this app through the OpenAI API, from the same engine (one copy of a model in memory), and "
                "its ready servers.")
    if view.keys:
        access = f"{len(view.keys)} key{'s' if len(view.keys) > 1 else ''}: every request must send one"
    else:
        access = "no keys: programs on this machine only"
    return (f"**App API: on** at `{view.url}` · {access}.\n\n"
            f"`OPENAI_BASE_URL={view.url}` · `ANTHROPIC_BASE_URL={view.url.removesuffix('/v1')}` · the key as "
            "`OPENAI_API_KEY` / `ANTHROPIC_API_KEY` (anything without keys) · models: `GET /v1/models` (this "
            "app's models, and its ready servers as `server:…`)")


def requests_markdown(records: list[RequestRecord]) -> str:
    """The latest requests, newest first (no prompt text)."""
    if not records:
        return "*No requests yet.*"
    rows = ["| When | Client | Model | Status | Tokens in (cached) / out | First token | Speed |",
            "|---|---|---|---|---|---|---|"]
    for r in records:
        first = f"{r.first_token_s:.2f} s" if r.first_token_s is not None else ""
        speed = f"{r.tokens_per_s:.1f} tok/s" if r.tokens_per_s else ""
        status = f"{r.status}" + (f" · {_cell(r.note)}" if r.note else "")
        rows.append(f"| {time.strftime('%H:%M:%S', time.localtime(r.at))} | {_cell(r.client)} | {_cell(r.model)} | "
                    f"{status} | {r.prompt_tokens:,} ({r.cached_tokens:,}) / {r.completion_tokens:,} | {first} | "
                    f"{speed} |")
    return "\n".join(rows)


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")[:120]
