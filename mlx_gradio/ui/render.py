"""What the browser shows: chatbot messages, the stats line, the status dot, list labels.

Plain functions of the controller's data; the only Gradio-specific part is the image cache,
which hands Gradio files already in its cache so a streaming update never re-reads a photo.
"""

from __future__ import annotations

import html
import logging
import time
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

from ..chats import chat
from ..controller.views import ChatSettings, Draft
from ..engine.thread import EngineStatus
from ..models.folders import model_name

log = logging.getLogger(__name__)

FINISH_NOTES = {"length": "max tokens reached", "stopped": "stopped", "error": "ended by an error"}


def chatbot_messages(conversation: dict | None, draft: Draft | None = None, streaming: bool = False) -> list[dict]:
    """The `gr.Chatbot` messages of a conversation, with a reply being written shown at its place.

    While `streaming`, a reply still thinking shows its thinking block open and pending.
    """
    history: list[dict] = []
    messages = (conversation or {}).get("messages", [])
    for i, message in enumerate(messages):
        if draft is not None and i == draft.slot:
            history.append(_draft_message(draft))
        if message["role"] == "user":
            history.append({"role": "user", "content": _user_content(message)})
            if chat.has_notice(messages, i) and not (draft is not None and draft.slot == i + 1):
                history.append({"role": "assistant", "content": f"⚠ *No reply: {message['error']}* "
                                                                f"Use ↻ to try again."})
        elif not (draft is not None and i == draft.slot):
            history += _reply_messages(chat.current_version(message), streaming)
    if draft is not None and draft.slot >= len(messages):
        history.append(_draft_message(draft))
    return history


def _reply_messages(version: dict, streaming: bool) -> list[dict]:
    """A reply: its thinking as a collapsible block ("Thought for 12 s"), then the answer."""
    shown: list[dict] = []
    reasoning = (version.get("reasoning") or "").strip()
    if reasoning:
        thinking = streaming and version.get("thought_s") is None
        title = "Thinking…" if thinking else f"Thought for {_duration(version.get('thought_s') or 0.0)}"
        shown.append({"role": "assistant", "content": reasoning,
                      "metadata": {"title": title, "status": "pending" if thinking else "done"}})
    if version["content"] or not shown:
        shown.append({"role": "assistant", "content": version["content"]})
    return shown


def _duration(seconds: float) -> str:
    """"12 s", "2 min 5 s"."""
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 1 else "less than a second"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if rest else f"{minutes} min"


def _draft_message(draft: Draft) -> dict:
    """A reply being written: its text so far, or what is happening before the first token."""
    return {"role": "assistant", "content": draft.text or f"*{draft.status or 'Waiting for the model…'}*"}


def _user_content(message: dict) -> str | list:
    """A user turn: its images and attached files (from Gradio's cache) and its text."""
    parts: list = [{"path": cached_image(path)} for path in message.get("images") or []]
    parts += [{"path": cached_image(f["path"]), "alt_text": f["name"]} for f in message.get("files") or []]
    if message["content"]:
        parts.append(message["content"])
    return parts if len(parts) != 1 else parts[0]


_CACHED: OrderedDict[str, str] = OrderedDict()  # image -> its copy in Gradio's cache, most recently shown last
MAX_CACHED_IMAGES = 1000


def cached_image(path: str) -> str:
    """The copy of an image in Gradio's cache (made once), so updates do not hash the file again."""
    from gradio import processing_utils, utils

    cached = _CACHED.get(path)
    if cached is not None and Path(cached).exists():
        _CACHED.move_to_end(path)
        return cached
    try:
        cached = processing_utils.save_file_to_cache(path, utils.get_upload_folder())
    except OSError as exc:
        log.warning("Image %s cannot be shown: %s", path, exc)
        return path
    _CACHED[path] = cached
    while len(_CACHED) > MAX_CACHED_IMAGES:  # the least recently shown are hashed again if they come back
        _CACHED.popitem(last=False)
    return cached


def stats_line(conversation: dict | None) -> str:
    """HTML for the line under the chat: the last reply's numbers and how full the context is."""
    stats = chat.last_stats(conversation) if conversation else None
    if not stats:
        return ""
    model = stats.get("model_name") or _model_of_last_reply(conversation)  # a server's name, not its key
    parts = [model] if model else []
    parts += [
        f"{stats['time_to_first_token']:.2f} s to first token",
        f"{stats['generation_tps']:.1f} tok/s",
        f"{stats['generation_tokens']} tokens",
        f"{stats['peak_memory_gb'] * 1000:.0f} MB peak",
    ]
    if stats.get("cached_tokens"):
        parts.append(f"{stats['cached_tokens']}/{stats['prompt_tokens']} prompt tokens cached")
    note = FINISH_NOTES.get(stats.get("finish_reason", ""))
    if note:
        parts.append(note)
    if stats.get("context_length"):
        used = stats["prompt_tokens"] + stats["generation_tokens"]
        parts.append(f"context {used:,} / {stats['context_length']:,} tokens")
    if stats.get("dropped_messages"):
        parts.append(f"the {stats['dropped_messages']} oldest messages were left out to fit the context")
    return f'<span class="reply-stats">{html.escape(" · ".join(parts))}</span>'


def _model_of_last_reply(conversation: dict) -> str:
    """The folder name of the model that wrote the reply shown last."""
    for message in reversed(conversation["messages"]):
        if message["role"] == "assistant":
            model = chat.current_version(message).get("model")
            return model_name(model) if model else ""
    return ""


SAMPLING_LABELS = {"temperature": "temperature", "top_p": "top p", "top_k": "top k", "min_p": "min p",
                   "repetition_penalty": "repetition penalty"}


def settings_note(view: ChatSettings) -> str:
    """The line under the settings: whose settings these are, and what the model recommends."""
    parts = []
    if view.missing_model:
        parts.append(f"⚠ This conversation was written with **{view.missing_model}**, which is not here any more; "
                     "it goes on with the model picked above.")
    parts.append("This conversation's own settings." if view.own else "Settings for a new chat.")
    if view.recommended:
        values = ", ".join(f"{SAMPLING_LABELS[name]} {value:g}" for name, value in view.recommended.items())
        parts.append(f"Recommended by {view.model_name} (its generation_config.json): {values}.")
    return " ".join(parts)


def version_label(conversation: dict | None) -> str:
    """"2 / 3" when the last reply has several versions, else empty."""
    messages = (conversation or {}).get("messages") or []
    if not messages or messages[-1]["role"] != "assistant" or len(messages[-1]["versions"]) < 2:
        return ""
    last = messages[-1]
    return f"{last['current'] + 1} / {len(last['versions'])}"


def status_markdown(status: EngineStatus) -> str:
    """The status line beside the model picker, with a coloured dot."""
    if status.state == "ready":
        kind = "vision" if status.vision else "text"
        busy = " · generating" if status.generating else ""
        if status.message:  # a server or an endpoint: nothing is loaded here
            return f'{_dot("ready")} **{status.model_name}** ({kind}) · {status.message}'
        return f'{_dot("ready")} **{status.model_name}** loaded ({kind}){busy}'
    if status.state == "loading":
        return f"{_dot('loading')} {status.message or 'Loading…'}"
    if status.state == "error":
        return f"{_dot('error')} {status.message}"
    if status.model_name:
        return f"{_dot('empty')} **{status.model_name}** is not in memory yet: the next message loads it"
    return f"{_dot('empty')} No model loaded yet"


def _dot(state: str) -> str:
    """A coloured status dot (styled in assets/style.css)."""
    return f'<span class="status-dot {state}">●</span>'


def when(timestamp: float, now: float | None = None) -> str:
    """A short date for the conversation list: a time today, a weekday this week, a date otherwise."""
    moment = datetime.fromtimestamp(timestamp)
    today = datetime.fromtimestamp(time.time() if now is None else now)
    days = (today.date() - moment.date()).days
    if days < 1:
        return moment.strftime("%H:%M")
    if days == 1:
        return "yesterday"
    if days < 7:
        return moment.strftime("%a")
    if moment.year == today.year:
        return f"{moment.day} {moment.strftime('%b')}"
    return f"{moment.day} {moment.strftime('%b %Y')}"


def conversation_label(title: str, updated: float) -> str:
    """A conversation's entry in the list: when it changed, then its title."""
    return f"{when(updated)} · {title}"
