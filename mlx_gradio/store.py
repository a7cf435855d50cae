"""Everything the app keeps on disk: settings in TinyDB, conversations one file each.

`mlx-gradio.json` (TinyDB) holds the app's settings (owner's choices) and each user's own chat
settings; `conversations/` holds one file per conversation (conversation_store.py). Every
write is atomic, and a write that fails changes nothing in memory either. A database written
by an earlier version, with the conversations inside it, is migrated on the first start.
"""

from __future__ import annotations

import copy
import logging
import shutil
import sys
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tinydb import Query, TinyDB
from tinydb.storages import Storage

from .chats import chat
from .chats.conversation_store import ConversationStore, valid_id
from .engine.jobs import SamplingParams
from .errors import StoreWriteFailed
from .files import encode_json, move_aside, read_json, write_atomic

log = logging.getLogger(__name__)

DB_NAME = "mlx-gradio.json"
CONVERSATIONS_DIR = "conversations"
LOCAL_USER = "local"  # the one owner when the app runs without a login
RESERVED_NAME = (f"The login name “{LOCAL_USER}” is reserved: it stands for the one user of the app without "
                 "logins. Pick another name.")

USER_SETTING_FIELDS = ("system_prompt", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                       "seed", "max_tokens", "thinking")
DEFAULT_USER_SETTINGS: dict[str, Any] = {"model": None, "system_prompt": "", **asdict(SamplingParams()),
                                         "thinking": True}
DEFAULT_APP_SETTINGS: dict[str, Any] = {
    "model": None,  # the model an owner picked last: where a new user starts
    "model_folders": [],
    "context_limit": 0,  # tokens; 0 means each model's own context length
    "cache_budget_gb": 0.0,  # prompt caches in memory; 0 means a quarter of this machine's RAM
    "idle_unload_minutes": 0.0,  # unload each engine model after this long without a reply; 0: never
    "memory_budget_gb": 0.0,  # what loaded models and their caches may take; 0: most of what MLX may use here
    "pinned_models": [],  # model folders the engine keeps loaded (never unloaded while idle or for room)
    "disk_cache_gb": 2.0,  # conversations' prompt caches kept on disk across restarts; 0: none
    "api_enabled": False,  # the app's own OpenAI-compatible API
    "api_host": "127.0.0.1",
    "api_port": 8421,  # not LM Studio's 1234, Ollama's 11434 nor mlx_lm.server's 8080
    "api_origins": [],  # web pages that may call the API (none: no CORS)
}


class AtomicJSONStorage(Storage):
    """A TinyDB storage that keeps the data in memory and replaces the file atomically on write.

    TinyDB changes what `read` returns in place before it calls `write`, so `read` hands out a
    copy: a write that fails leaves the data in memory as it was on disk.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._data: dict | None = None

    def load(self) -> None:
        """Parse the file; raises ValueError or OSError if it cannot be read."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self._data = None
            return
        data = read_json(self.path)
        if not isinstance(data, dict):
            raise ValueError(f"top level is a {type(data).__name__}, not an object")
        self._data = data

    def read(self) -> dict | None:
        """A copy of the whole database."""
        return copy.deepcopy(self._data)

    def write(self, data: dict) -> None:
        """Write atomically; only then does the data in memory change."""
        write_atomic(self.path, encode_json(data))
        self._data = copy.deepcopy(data)


class SettingsStore:
    """App settings and per-user settings in one small TinyDB file, safe to call from any thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self.recovered_from: Path | None = None
        storage = AtomicJSONStorage(self.path)
        try:
            storage.load()
        except (ValueError, OSError) as exc:
            self.recovered_from = move_aside(self.path, str(exc))
            log.error("Settings %s could not be read; started with defaults (the old file is %s)",
                      self.path, self.recovered_from)
            storage.load()
        self._db = TinyDB(self.path, storage=lambda _path: storage)

    def app(self) -> dict[str, Any]:
        """The app's settings, with defaults for anything never saved."""
        with self._lock:
            saved = self._db.table("app").get(doc_id=1) or {}
            return {**copy.deepcopy(DEFAULT_APP_SETTINGS), **copy.deepcopy(dict(saved))}

    def update_app(self, **changes: Any) -> dict[str, Any]:
        """Save app settings; raises `StoreWriteFailed` with nothing changed."""
        with self._lock:
            table = self._db.table("app")
            if table.contains(doc_id=1):
                table.update(changes, doc_ids=[1])
            else:
                table.insert(changes)
            return self.app()

    def user(self, user: str) -> dict[str, Any]:
        """One user's chat settings; a new user starts from the defaults and the owner's model."""
        with self._lock:
            saved = self._db.table("users").get(Query().user == user) or {}
            defaults = {**copy.deepcopy(DEFAULT_USER_SETTINGS), "model": self.app()["model"]}
            merged = {**defaults, **copy.deepcopy(dict(saved))}
            merged.pop("user", None)
            return merged

    def has_user(self, user: str) -> bool:
        """Whether `user` has saved chat settings."""
        with self._lock:
            return self._db.table("users").contains(Query().user == user)

    def update_user(self, user: str, **changes: Any) -> dict[str, Any]:
        """Save one user's settings; raises `StoreWriteFailed` with nothing changed."""
        with self._lock:
            self._db.table("users").upsert({"user": user, **changes}, Query().user == user)
            return self.user(user)

    def documents(self, table: str) -> list[dict]:
        """Every document of a table (copies)."""
        with self._lock:
            return [copy.deepcopy(dict(d)) for d in self._db.table(table).all()]

    def upsert(self, table: str, key: str, document: dict) -> None:
        """Save a document, replacing the one with the same `key` field; raises `StoreWriteFailed`."""
        with self._lock:
            self._db.table(table).upsert(document, Query()[key] == document[key])

    def remove(self, table: str, key: str, value: str) -> None:
        """Delete the documents whose `key` field is `value`."""
        with self._lock:
            self._db.table(table).remove(Query()[key] == value)

    def legacy_tables(self) -> tuple[dict | None, list[dict]]:
        """The settings and conversations a database from before per-conversation files holds."""
        with self._lock:
            settings = self._db.table("settings").get(doc_id=1)
            conversations = self._db.table("conversations").all()
            return (dict(settings) if settings else None), [dict(c) for c in conversations]

    def drop_legacy_tables(self) -> None:
        """Remove the old tables once their content lives elsewhere."""
        with self._lock:
            for name in ("settings", "conversations"):
                if name in self._db.tables():
                    self._db.drop_table(name)

    def close(self) -> None:
        """Close the database file."""
        with self._lock:
            self._db.close()


class Records:
    """One table of documents with an id field: unfinished downloads, server profiles, running servers."""

    def __init__(self, settings: SettingsStore, table: str, key: str) -> None:
        self.settings, self.table, self.key = settings, table, key

    def all(self) -> list[dict]:
        return self.settings.documents(self.table)

    def save(self, document: dict) -> None:
        self.settings.upsert(self.table, self.key, document)

    def remove(self, value: str) -> None:
        self.settings.remove(self.table, self.key, value)


class Store:
    """The settings and the conversations of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.settings = SettingsStore(self.data_dir / DB_NAME)
        self.conversations = ConversationStore(self.data_dir / CONVERSATIONS_DIR)
        self.downloads = Records(self.settings, "downloads", "repo_id")
        self.server_profiles = Records(self.settings, "server_profiles", "id")
        self.running_servers = Records(self.settings, "running_servers", "profile_id")
        self.endpoints = Records(self.settings, "endpoints", "id")
        self.api_keys = Records(self.settings, "api_keys", "id")
        self._notices: list[str] = []
        if self.settings.recovered_from:
            self._notices.append(f"The saved settings could not be read, so they were moved to "
                                 f"{self.settings.recovered_from} and mlx-gradio started with defaults.")
        self._migrate()
        for aside in self.conversations.moved_aside:
            self._notices.append(f"A conversation file could not be read and was moved to {aside}.")

    def _migrate(self) -> None:
        """Move settings and conversations out of a database written by an earlier version.

        The old file is copied first; a migration that cannot finish (a full disk) leaves the old
        tables in place, says so, and runs again at the next start.
        """
        settings, conversations = self.settings.legacy_tables()
        if settings is None and not conversations:
            return
        backup = self.data_dir / f"{DB_NAME}.before-migration-{time.strftime('%Y%m%d-%H%M%S')}"
        skipped = []
        try:
            shutil.copy2(self.settings.path, backup)
            for old in conversations:
                if not valid_id(old.get("id")):
                    old = {**old, "id": uuid.uuid4().hex}
                try:
                    upgraded = chat.upgrade(old, LOCAL_USER)
                except (AttributeError, TypeError, KeyError, ValueError) as exc:
                    log.error("Conversation %s could not be migrated (%s); it stays in %s", old["id"], exc, backup)
                    skipped.append(old.get("title") or old["id"])
                    continue
                if not self.conversations.summary(upgraded["id"]):
                    self.conversations.save(upgraded, stamp=False)
            if settings:
                app_keys = {"model", "model_folders"}
                self.settings.update_app(**{k: v for k, v in settings.items() if k in app_keys})
                self.settings.update_user(LOCAL_USER, **{k: v for k, v in settings.items()
                                                        if k in DEFAULT_USER_SETTINGS})
            self.settings.drop_legacy_tables()
        except (StoreWriteFailed, OSError) as exc:
            backup.unlink(missing_ok=True)  # the old tables are still in place; a copy cut short helps nobody
            log.error("Migrating %s failed (%s); it runs again at the next start", self.settings.path, exc)
            self._notices.append(f"Moving the conversations to the new layout failed ({exc}). Nothing is lost: "
                                 "they stay in mlx-gradio.json and the move is tried again at the next start.")
            return
        if skipped:
            self._notices.append(f"{len(skipped)} conversation(s) could not be read during the move to the new "
                                 f"layout ({', '.join(skipped[:3])}); they are kept in {backup}.")
        log.info("Migrated %d conversations and the settings to the new layout (backup: %s)",
                 len(conversations) - len(skipped), backup)

    def hand_over(self, from_user: str, to_user: str) -> int:
        """Give every conversation of `from_user` to `to_user`, and their chat settings if `to_user` has none yet;
        returns how many conversations changed hands. Raises `StoreWriteFailed` for one that could not be written
        (those before it have moved; the rest move at the next call)."""
        summaries, _ = self.conversations.list(from_user, limit=sys.maxsize)
        for summary in summaries:
            conversation = self.conversations.get(summary.id)
            self.conversations.save({**conversation, "owner": to_user}, create=False, stamp=False)
        if not self.settings.has_user(to_user) and self.settings.has_user(from_user):
            self.settings.update_user(to_user, **self.settings.user(from_user))
        return len(summaries)

    def notify(self, notice: str) -> None:
        """A sentence for the next owner page load."""
        self._notices.append(notice)

    def take_notices(self) -> list[str]:
        """Warnings for the owner about data moved aside at start, each given once."""
        notices, self._notices = self._notices, []
        return notices

    def close(self) -> None:
        """Write the conversation index and close the settings database."""
        self.conversations.close()
        self.settings.close()
