"""Conversations in and out: export as JSON or Markdown, import our JSON or an OpenAI-style `messages` list.

An import never trusts paths: images and files of an imported conversation are kept only if they
are already in this app's own folders, so a crafted file cannot make the app show or read
anything else on the machine.
"""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from ..engine.jobs import GenerationStats
from ..errors import ImportFailed
from ..files import write_atomic
from ..models.folders import model_name
from . import chat

MAX_IMPORT_BYTES = 20_000_000
MAX_MESSAGES = 10_000
MAX_SETTING_TEXT = 100_000  # a system prompt; the settings panel cuts it to its own limit


def _file_stem(conversation: dict) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in conversation["title"])[:40].strip("-")
    return f"{safe or 'conversation'}-{conversation['id'][:8]}"


def without_paths(conversation: dict) -> dict:
    """A copy to hand a guest: models by name, attachments by file name, no folder of the owner's machine."""
    def model(value: Any) -> Any:
        return model_name(value) if isinstance(value, str) and value else value

    messages = []
    for message in conversation["messages"]:
        if message["role"] == "user":
            shown = {**message, "images": [Path(p).name for p in message.get("images") or []]}
            if message.get("files"):
                shown["files"] = [{"name": f["name"]} for f in message["files"]]
            messages.append(shown)
        else:
            messages.append({**message, "versions": [{**v, "model": model(v.get("model"))}
                                                     for v in message["versions"]]})
    return {**conversation, "model": model(conversation.get("model")), "messages": messages}


def export_json(conversation: dict, folder: Path) -> Path:
    """Write a conversation to `folder` as pretty JSON and return the file (`StoreWriteFailed` on a full disk)."""
    target = folder / f"{_file_stem(conversation)}.json"
    text = json.dumps(conversation, indent=2, ensure_ascii=False)
    write_atomic(target, text.encode("utf-8", "backslashreplace"))
    return target


def to_markdown(conversation: dict) -> str:
    """A conversation as Markdown: each turn under a heading, thinking folded in a <details> block."""
    lines = [f"# {conversation['title']}", ""]
    settings = conversation.get("settings") or {}
    if settings.get("system_prompt"):
        lines += ["**System prompt:**", "", *(f"> {line}" for line in settings["system_prompt"].splitlines()), ""]
    for message in conversation["messages"]:
        if message["role"] == "user":
            lines += ["## You", ""]
            attached = [Path(p).name for p in message.get("images") or []] + [
                f["name"] for f in message.get("files") or []]
            if attached:
                lines += [f"*Attached: {', '.join(attached)}*", ""]
            lines += [message["content"], ""]
            continue
        version = chat.current_version(message)
        model = model_name(version["model"]) if version.get("model") else "the model"
        lines += [f"## {model}", ""]
        if version.get("reasoning"):
            lines += ["<details><summary>Thinking</summary>", "", version["reasoning"].strip(), "", "</details>", ""]
        lines += [version["content"], ""]
    return "\n".join(lines).rstrip() + "\n"


def export_markdown(conversation: dict, folder: Path) -> Path:
    """Write a conversation to `folder` as Markdown and return the file (`StoreWriteFailed` on a full disk)."""
    target = folder / f"{_file_stem(conversation)}.md"
    write_atomic(target, to_markdown(conversation).encode("utf-8", "backslashreplace"))
    return target


def read_import(path: Path, owner: str, own_folders: list[Path]) -> dict:
    """A new conversation for `owner` from our JSON export or an OpenAI-style messages list.

    Raises `ImportFailed` with what is wrong. Attachments outside `own_folders` are left out.
    """
    try:
        if Path(path).stat().st_size > MAX_IMPORT_BYTES:
            raise ImportFailed(f"The file is larger than {MAX_IMPORT_BYTES // 1_000_000} MB.")
        data = json.loads(Path(path).read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise ImportFailed(f"The file could not be read ({exc.strerror or exc}).") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise ImportFailed(f"The file is not JSON ({exc}).") from exc
    if isinstance(data, dict) and isinstance(data.get("messages"), list) and "schema" in data:
        return _from_ours(data, owner, own_folders)
    messages = data.get("messages") if isinstance(data, dict) else data
    if isinstance(messages, list):
        return _from_openai(messages, owner, data.get("title") if isinstance(data, dict) else None)
    raise ImportFailed("The file holds neither a conversation exported by this app nor a list of "
                       "{\"role\", \"content\"} messages.")


def _text(content: Any) -> str:
    """The text of an OpenAI message's content: a string, or the text parts of a list."""
    if isinstance(content, str):
        return chat.clean_text(content)
    if isinstance(content, list):
        return chat.clean_text("\n".join(str(part.get("text") or "") for part in content
                                          if isinstance(part, dict) and part.get("type") == "text"))
    if content is None:
        return ""
    raise ImportFailed("A message's content is neither text nor a list of parts.")


def _from_openai(messages: list, owner: str, title: Any) -> dict:
    """A conversation from [{"role", "content"}, ...]; system messages become its system prompt."""
    if not messages or len(messages) > MAX_MESSAGES:
        raise ImportFailed(f"The list has {len(messages)} messages; it needs 1 to {MAX_MESSAGES:,}.")
    conversation = chat.new_conversation(owner)
    system = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "developer", "user", "assistant"):
            raise ImportFailed(f"Message {i + 1} has no role of system, user or assistant.")
        text = _text(message.get("content"))
        if message["role"] in ("system", "developer"):
            system.append(text)
        elif message["role"] == "user":
            chat.add_user_message(conversation, text, [])
        else:
            chat.add_reply_version(conversation, len(conversation["messages"]), text, None, None,
                                   _text(message.get("reasoning_content") or message.get("reasoning")))
    if not conversation["messages"]:
        raise ImportFailed("The list has no user or assistant messages.")
    if system:
        conversation["settings"] = {"system_prompt": "\n\n".join(system)}
    if _line(title):
        conversation["title"] = _line(title)
    return conversation


def _number(value: Any) -> float | None:
    """A number read from a file (not a bool, not NaN), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return None


def _line(value: Any, limit: int = 200) -> str:
    """One line of text from a file, cleaned (lone surrogates replaced), "" if it is not text."""
    return chat.clean_text(" ".join(value.split()))[:limit] if isinstance(value, str) else ""


def _stats(stats: Any) -> dict | None:
    """A reply's numbers, kept only when every number the stats line shows is there; each of the right type."""
    if not isinstance(stats, dict):
        return None
    kept: dict[str, Any] = {}
    for f in fields(GenerationStats):
        if f.type in ("int", "float"):
            value = _number(stats.get(f.name))
            if value is None and f.default is MISSING:
                return None
            if value is not None:
                kept[f.name] = int(value) if f.type == "int" else value
    kept["finish_reason"] = _line(stats.get("finish_reason"), 40)
    if stats.get("model_name"):
        kept["model_name"] = _line(stats["model_name"])
    return kept


def _version(version: dict) -> dict:
    """A reply version with only the fields this app writes, each of the right type (stats kept only whole)."""
    cleaned = {"content": _text(version.get("content")), "stats": _stats(version.get("stats")),
               "model": version["model"] if isinstance(version.get("model"), str) else None,
               "created": _number(version.get("created")) or 0.0}
    if version.get("reasoning"):
        cleaned.update(reasoning=_text(version["reasoning"]), thought_s=_number(version.get("thought_s")))
    return cleaned


def _settings(settings: Any) -> dict:
    """Recorded settings: names with plain values (text cleaned); the settings panel checks their ranges."""
    if not isinstance(settings, dict):
        return {}
    kept: dict[str, Any] = {}
    for name, value in settings.items():
        if not isinstance(name, str) or len(name) > 40:
            continue
        if isinstance(value, str):
            kept[name] = chat.clean_text(value)[:MAX_SETTING_TEXT]
        elif isinstance(value, bool) or _number(value) is not None:
            kept[name] = value
    return kept


def _from_ours(data: dict, owner: str, own_folders: list[Path]) -> dict:
    """A copy of an exported conversation, with a new id and owner; foreign paths are dropped, every field is
    checked and its text cleaned."""
    def own(path: Any) -> bool:
        return isinstance(path, str) and any(Path(path).resolve().is_relative_to(f.resolve()) for f in own_folders)

    def listed(value: Any) -> list:
        return value if isinstance(value, list) else []

    if len(data["messages"]) > MAX_MESSAGES:
        raise ImportFailed(f"The conversation has {len(data['messages']):,} messages; at most {MAX_MESSAGES:,} "
                           "can be imported.")
    for i, message in enumerate(data["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise ImportFailed(f"Message {i + 1} is not a message with a user or assistant role.")
    conversation = chat.upgrade(data, owner)
    messages = []
    for message in conversation["messages"]:
        if message["role"] == "user":
            kept = {"role": "user", "content": _text(message.get("content")),
                    "images": [p for p in listed(message.get("images")) if own(p) and Path(p).exists()]}
            files = [f for f in listed(message.get("files")) if isinstance(f, dict) and own(f.get("path"))]
            if files:
                kept["files"] = [{"name": _line(f.get("name")) or Path(f["path"]).name, "path": f["path"]}
                                 for f in files]
            messages.append(kept)
        else:
            versions = [v for v in listed(message.get("versions")) if isinstance(v, dict)]
            if not versions:
                raise ImportFailed("The conversation has a reply without any text.")
            current = message.get("current") if isinstance(message.get("current"), int) else 0
            messages.append({"role": "assistant", "current": min(max(current, 0), len(versions) - 1),
                             "versions": [_version(v) for v in versions]})
    model = conversation.get("model") if isinstance(conversation.get("model"), str) else None
    fresh = chat.new_conversation(owner, model, _line(conversation.get("title")) or "Imported")
    settings = _settings(conversation.get("settings"))
    created = _number(conversation.get("created"))
    return {**fresh, "messages": messages, "created": created if created and created > 0 else time.time(),
            **({"settings": settings} if settings else {})}
