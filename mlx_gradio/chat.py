"""Conversation records: adding turns, cutting them back for regenerate and edit, and rendering.

A conversation is a plain dict as the store keeps it: `id`, `title`, `model`, `created`,
`updated` and `messages`, each message `{"role", "content", "images", "stats"}`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from .errors import ChatEditError
from .jobs import ChatMessage, ChatRequest, GenerationStats, SamplingParams

TITLE_LENGTH = 48
FINISH_NOTES = {"length": "max tokens reached", "stopped": "stopped"}


def title_from(text: str, images: list[str]) -> str:
    """A conversation title from its first message."""
    line = " ".join(text.split())
    if not line:
        return "Image chat" if images else "New chat"
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def add_user_message(conversation: dict, text: str, images: list[str]) -> None:
    """Append a user turn (and title an untitled conversation after it)."""
    if not conversation["messages"]:
        conversation["title"] = title_from(text, images)
    conversation["messages"].append({"role": "user", "content": text, "images": list(images)})


def add_reply(conversation: dict, text: str, stats: GenerationStats | None) -> None:
    """Append an assistant turn with its stats."""
    conversation["messages"].append(
        {"role": "assistant", "content": text, "images": [], "stats": asdict(stats) if stats else None}
    )


def cut_for_regenerate(conversation: dict) -> None:
    """Drop the last reply so the last user message can be answered again."""
    messages = conversation["messages"]
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    if not messages:
        raise ChatEditError("There is no message to answer yet: send one first.")


def cut_for_edit(conversation: dict, index: int, text: str) -> None:
    """Replace the text of user message `index` and drop everything after it."""
    messages = conversation["messages"]
    if not 0 <= index < len(messages) or messages[index]["role"] != "user":
        raise ChatEditError("Only your own messages can be edited.")
    messages[index] = {**messages[index], "content": text}
    del messages[index + 1:]


def build_request(conversation: dict, model_path: str, system_prompt: str, params: SamplingParams) -> ChatRequest:
    """The engine request for the next reply of `conversation`."""
    messages = [ChatMessage("system", system_prompt)] if system_prompt.strip() else []
    messages += [
        ChatMessage(m["role"], m["content"], tuple(m.get("images") or ()))
        for m in conversation["messages"]
    ]
    return ChatRequest(conversation["id"], model_path, tuple(messages), params)


def format_stats(stats: dict) -> str:
    """The small line under a reply: time to first token, speed, tokens, memory."""
    parts = [
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
    return " · ".join(parts)


def to_chatbot(conversation: dict | None, pending: str = "") -> list[dict]:
    """The `gr.Chatbot` messages for a conversation; `pending` shows in an empty last reply."""
    history = []
    for message in (conversation or {}).get("messages", []):
        if message["role"] == "user":
            parts: list = [{"path": path} for path in message.get("images") or []]
            if message["content"]:
                parts.append(message["content"])
            history.append({"role": "user", "content": parts if len(parts) != 1 else parts[0]})
        else:
            text = message["content"] or (f"*{pending}*" if pending else "")
            if message.get("stats"):
                text += f'\n\n<span class="reply-stats">{format_stats(message["stats"])}</span>'
            history.append({"role": "assistant", "content": text})
    return history


def export_json(conversation: dict, folder: Path) -> Path:
    """Write a conversation to `folder` as pretty JSON and return the file."""
    folder.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in conversation["title"])[:40].strip("-")
    target = folder / f"{safe or 'conversation'}-{conversation['id'][:8]}.json"
    target.write_text(json.dumps(conversation, indent=2, ensure_ascii=False), encoding="utf-8")
    return target
