"""TinyDB persistence for settings and conversations: one file, one lock, atomic writes.

TinyDB is not thread-safe and Gradio calls handlers from many threads, so every access goes
through one lock. Each write goes to a temporary file that is fsynced and renamed over the
database, so killing the app mid-write leaves either the old or the new file, never half of one.
A file that cannot be read at start is moved aside and the app starts with defaults.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from .errors import ConversationNotFound
from .jobs import SamplingParams

log = logging.getLogger(__name__)

DEFAULT_SETTINGS: dict[str, Any] = {
    "model": None,
    "model_folders": [],
    "system_prompt": "",
    **asdict(SamplingParams()),
}


class AtomicJSONStorage(Storage):
    """A TinyDB storage that keeps the data in memory and replaces the file atomically on write."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict | None = None

    def read(self) -> dict | None:
        """The whole database; parsed from disk once, then served from memory."""
        if self._data is None:
            if not self.path.exists() or self.path.stat().st_size == 0:
                return None
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError(f"top level is a {type(data).__name__}, not an object")
            self._data = data
        return self._data

    def write(self, data: dict) -> None:
        """Write to a temporary file, fsync it, then rename it over the database."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, ensure_ascii=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.path.parent)
        self._data = data


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable where the platform allows syncing a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        log.debug("Cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("Cannot fsync directory %s: %s", folder, exc)
    finally:
        os.close(fd)


def new_conversation(title: str = "New chat", model: str | None = None) -> dict:
    """A fresh conversation record."""
    now = time.time()
    return {"id": uuid.uuid4().hex, "title": title, "model": model, "created": now, "updated": now, "messages": []}


class Store:
    """Settings and conversations in one TinyDB file, safe to call from any thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.recovered_from: Path | None = None
        self._db = self._open()

    def _open(self) -> TinyDB:
        """Open the database; move an unreadable file aside and start empty."""
        storage = AtomicJSONStorage(self.path)
        try:
            storage.read()
        except (ValueError, UnicodeDecodeError, OSError) as exc:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(self.path, aside)
            log.error("Database %s could not be read (%s); moved it to %s and started with defaults",
                      self.path, exc, aside)
            self.recovered_from = aside
        return TinyDB(self.path, storage=lambda _path: storage)

    def take_recovery_notice(self) -> str | None:
        """A one-time warning for the UI if the database was moved aside at start."""
        with self._lock:
            aside, self.recovered_from = self.recovered_from, None
        if aside is None:
            return None
        return (f"The saved data in {self.path} could not be read, so it was moved to {aside} "
                "and mlx-gradio started with default settings.")

    # --- settings -------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """All settings, with defaults for anything never saved."""
        with self._lock:
            saved = self._db.table("settings").get(doc_id=1) or {}
            return {**copy.deepcopy(DEFAULT_SETTINGS), **copy.deepcopy(dict(saved))}

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        """Save the given settings and return them all."""
        with self._lock:
            table = self._db.table("settings")
            if table.contains(doc_id=1):
                table.update(changes, doc_ids=[1])
            else:
                table.insert(changes)
            return self.settings()

    # --- conversations --------------------------------------------------------------------

    def conversations(self) -> list[dict]:
        """Summaries (id, title, model, updated) of all conversations, newest first."""
        with self._lock:
            rows = [
                {"id": c["id"], "title": c["title"], "model": c.get("model"), "updated": c["updated"]}
                for c in self._db.table("conversations").all()
            ]
        return sorted(rows, key=lambda c: c["updated"], reverse=True)

    def conversation(self, conversation_id: str) -> dict:
        """One whole conversation; raises `ConversationNotFound`."""
        with self._lock:
            doc = self._db.table("conversations").get(Query().id == conversation_id)
            if doc is None:
                raise ConversationNotFound(conversation_id)
            return copy.deepcopy(dict(doc))

    def save_conversation(self, conversation: dict, create: bool = True) -> dict | None:
        """Insert or replace a conversation, stamping its update time.

        With `create=False` a conversation deleted in the meantime stays deleted: nothing is
        written and None is returned.
        """
        conversation = {**copy.deepcopy(conversation), "updated": time.time()}
        with self._lock:
            table = self._db.table("conversations")
            if create:
                table.upsert(conversation, Query().id == conversation["id"])
            elif not table.update(conversation, Query().id == conversation["id"]):
                return None
        return conversation

    def rename_conversation(self, conversation_id: str, title: str) -> None:
        """Give a conversation a new title."""
        with self._lock:
            if not self._db.table("conversations").update({"title": title}, Query().id == conversation_id):
                raise ConversationNotFound(conversation_id)

    def delete_conversation(self, conversation_id: str) -> None:
        """Remove a conversation for good."""
        with self._lock:
            if not self._db.table("conversations").remove(Query().id == conversation_id):
                raise ConversationNotFound(conversation_id)

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()
