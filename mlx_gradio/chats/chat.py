"""Conversation records: turns, reply versions, regenerate and edit, and what the model sees.

A conversation is a plain dict as the store keeps it: `id`, `owner`, `title`, `model`, `settings`,
`created`, `updated` and `messages`. A user message is `{"role": "user", "content", "images"}`
(plus `"files"`, attached text files `{"name", "path"}`, and `"error"` when no reply came); an
assistant message keeps every version of the reply,
`{"role": "assistant", "versions": [{"content", "stats", "model", "created"}], "current": i}`;
a version of a reasoning model's reply adds `"reasoning"` (its thinking) and `"thought_s"`.
"""

from __future__ import annotations

import copy
import logging
import time
import uuid

from ..engine.jobs import ChatMessage
from ..errors import ChatEditError
from .attachments import with_files

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
TITLE_LENGTH = 48


def new_conversation(owner: str, model: str | None = None, title: str = "New chat") -> dict:
    """A fresh conversation record."""
    now = time.time()
    return {"id": uuid.uuid4().hex, "owner": owner, "title": title, "model": model, "created": now,
            "updated": now, "schema": SCHEMA_VERSION, "messages": []}


def upgrade(conversation: dict, owner: str) -> dict:
    """A conversation in this version's shape (older ones kept one `content` per reply, no owner)."""
    if conversation.get("schema") == SCHEMA_VERSION:
        return conversation
    messages = []
    for message in conversation.get("messages") or ():
        if message.get("role") == "assistant" and "versions" not in message:
            version = {"content": message.get("content") or "", "stats": message.get("stats"),
                       "model": conversation.get("model"), "created": conversation.get("updated") or 0.0}
            messages.append({"role": "assistant", "versions": [version], "current": 0})
        else:
            messages.append({"role": message.get("role", "user"), "content": message.get("content") or "",
                             "images": list(message.get("images") or [])})
    return {**conversation, "owner": conversation.get("owner") or owner, "schema": SCHEMA_VERSION,
            "messages": messages}


def clean_text(text: str) -> str:
    """Text as a model and a JSON file can hold it: split surrogate pairs joined, lone surrogates replaced."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def title_from(text: str, images: list[str], files: list[dict] | None = None) -> str:
    """A conversation title from its first message."""
    line = " ".join(text.split())
    if not line and files:
        line = ", ".join(f["name"] for f in files)
    if not line:
        return "Image chat" if images else "New chat"
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


def add_user_message(conversation: dict, text: str, images: list[str], files: list[dict] | None = None) -> None:
    """Append a user turn (and title an untitled conversation after it)."""
    if not conversation["messages"]:
        conversation["title"] = title_from(text, images, files)
    message = {"role": "user", "content": text, "images": list(images)}
    if files:
        message["files"] = list(files)
    conversation["messages"].append(message)


def current_version(message: dict) -> dict:
    """The version of an assistant message the chat shows."""
    versions = message.get("versions") or [{"content": "", "stats": None, "model": None}]
    return versions[min(max(message.get("current", 0), 0), len(versions) - 1)]


def reply_slot(conversation: dict) -> int:
    """Where the next version of the last reply goes: the last assistant message, or after an unanswered turn."""
    messages = conversation["messages"]
    if not messages:
        raise ChatEditError("There is no message to answer yet: send one first.")
    return len(messages) - 1 if messages[-1]["role"] == "assistant" else len(messages)


def add_reply_version(conversation: dict, slot: int, content: str, stats: dict | None, model: str | None,
                      reasoning: str = "", thought_s: float | None = None) -> None:
    """Put a reply at `slot`: a new version of the reply there, or a new assistant message."""
    messages = conversation["messages"]
    version = {"content": content, "stats": stats, "model": model, "created": time.time()}
    if reasoning:
        version.update(reasoning=reasoning, thought_s=thought_s)
    if slot < len(messages) and messages[slot]["role"] == "assistant":
        messages[slot]["versions"].append(version)
        messages[slot]["current"] = len(messages[slot]["versions"]) - 1
    else:
        messages.insert(slot, {"role": "assistant", "versions": [version], "current": 0})
    if slot > 0 and messages[slot - 1]["role"] == "user":
        messages[slot - 1].pop("error", None)


def update_reply_version(conversation: dict, slot: int, content: str, stats: dict | None,
                         reasoning: str = "", thought_s: float | None = None) -> None:
    """Replace the text, thinking and stats of the version shown at `slot` (as the reply streams on)."""
    version = current_version(conversation["messages"][slot])
    version["content"] = content
    version["stats"] = stats
    if reasoning:
        version.update(reasoning=reasoning, thought_s=thought_s)


def mark_unanswered(conversation: dict, slot: int, error: str) -> None:
    """Note on the user turn before `slot` why no reply came (the chat shows it with a retry)."""
    messages = conversation["messages"]
    if 0 < slot <= len(messages) and messages[slot - 1]["role"] == "user":
        messages[slot - 1]["error"] = error


def has_notice(messages: list[dict], index: int) -> bool:
    """Whether the chat shows a "no reply" notice after message `index` (a user turn that got no reply)."""
    message = messages[index]
    return (message["role"] == "user" and bool(message.get("error"))
            and (index + 1 == len(messages) or messages[index + 1]["role"] == "user"))


def shown_count(messages: list[dict], index: int) -> int:
    """How many chat messages message `index` takes on screen: a notice or a thinking block adds one."""
    message = messages[index]
    if message["role"] == "user":
        return 2 if has_notice(messages, index) else 1
    version = current_version(message)
    return 2 if version.get("reasoning") and version.get("content") else 1


def message_at(conversation: dict, shown_index: int) -> int:
    """The stored index of the message the chat shows at `shown_index` (notices take a place too)."""
    messages = conversation["messages"]
    shown = 0
    for index in range(len(messages)):
        if shown == shown_index:
            return index
        shown += shown_count(messages, index)
    raise ChatEditError("Only your own messages can be edited.")


def select_version(conversation: dict, delta: int) -> None:
    """Show the previous (-1) or next (+1) version of the last reply."""
    messages = conversation["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise ChatEditError("There is no reply to switch versions of.")
    last = messages[-1]
    last["current"] = min(max(last.get("current", 0) + delta, 0), len(last["versions"]) - 1)


def edited(conversation: dict, index: int, text: str) -> dict:
    """A copy of the conversation with user message `index` rewritten and everything after it dropped."""
    messages = conversation["messages"]
    if not isinstance(index, int) or not 0 <= index < len(messages) or messages[index]["role"] != "user":
        raise ChatEditError("Only your own messages can be edited.")
    result = copy.deepcopy(conversation)
    result["messages"] = result["messages"][: index + 1]
    result["messages"][index]["content"] = text
    result["messages"][index].pop("error", None)
    if index == 0:
        result["title"] = title_from(text, result["messages"][0].get("images") or [])
    return result


def model_messages(conversation: dict, slot: int, system_prompt: str) -> tuple[ChatMessage, ...]:
    """What the model sees to write the reply at `slot`.

    A user turn that never got a reply is left out when another user turn follows it, so
    templates that demand alternating roles always get them.
    """
    history = conversation["messages"][:slot]
    messages = [ChatMessage("system", system_prompt)] if system_prompt.strip() else []
    for i, message in enumerate(history):
        if message["role"] == "user":
            if i + 1 < len(history) and history[i + 1]["role"] == "user":
                continue
            messages.append(ChatMessage("user", with_files(message["content"], message.get("files") or []),
                                        tuple(message.get("images") or ())))
        else:
            version = current_version(message)
            messages.append(ChatMessage("assistant", version["content"], reasoning=version.get("reasoning") or ""))
    return tuple(messages)


def continuation_messages(conversation: dict, slot: int, system_prompt: str) -> tuple[ChatMessage, ...]:
    """What the model sees to write on from the end of the reply at `slot`: the reply so far comes last."""
    version = current_version(conversation["messages"][slot])
    partial = ChatMessage("assistant", version["content"], reasoning=version.get("reasoning") or "")
    return (*model_messages(conversation, slot, system_prompt), partial)


def continuable_slot(conversation: dict) -> int:
    """Where the last reply is, if it was cut short (max tokens or Stop) and can be written on."""
    messages = conversation["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise ChatEditError("There is no reply to continue.")
    stats = current_version(messages[-1]).get("stats") or {}
    if stats.get("finish_reason") not in ("length", "stopped"):
        raise ChatEditError("Only a reply that was cut short (by max tokens or Stop) can be continued.")
    return len(messages) - 1


def can_continue(conversation: dict | None) -> bool:
    """Whether the last reply can be continued."""
    try:
        return conversation is not None and continuable_slot(conversation) >= 0
    except ChatEditError as exc:
        log.debug("No Continue: %s", exc)
        return False


def last_stats(conversation: dict) -> dict | None:
    """The stats of the reply the chat shows last, if any."""
    for message in reversed(conversation["messages"]):
        if message["role"] == "assistant":
            return current_version(message).get("stats")
    return None
