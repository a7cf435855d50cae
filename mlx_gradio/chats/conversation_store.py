"""Conversations on disk: one JSON file each, and an in-memory index of their summaries.

A save writes only the conversation it changes (temp file, fsync, rename), so it costs the same
with ten conversations or ten thousand. The index (id, owner, title, model, dates) answers the
conversation list without reading any conversation. It is kept in memory and written to
`index.json` when the store closes; at start every file whose size or modification time differs
from the index is read again, so a crash costs a re-read of the changed files, never data.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import ConversationNotFound, StoreReadFailed, StoreWriteFailed
from ..files import encode_json, move_aside, read_json, write_atomic

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: never a path, whatever a request sends


@dataclass(frozen=True)
class ConversationSummary:
    """What the conversation list shows about a conversation."""

    id: str
    owner: str
    title: str
    model: str | None
    created: float
    updated: float
    messages: int


@dataclass(frozen=True)
class _IndexRow:
    """A summary and the file state it was read from."""

    summary: ConversationSummary
    mtime_ns: int
    size: int


def summary_of(conversation: dict) -> ConversationSummary:
    """The list entry of a conversation record."""
    return ConversationSummary(
        id=conversation["id"],
        owner=conversation.get("owner") or "",
        title=conversation.get("title") or "New chat",
        model=conversation.get("model"),
        created=float(conversation.get("created") or 0.0),
        updated=float(conversation.get("updated") or 0.0),
        messages=len(conversation.get("messages") or ()),
    )


def valid_id(conversation_id: object) -> bool:
    """Whether `conversation_id` has the shape of an id this store hands out."""
    return isinstance(conversation_id, str) and ID_PATTERN.fullmatch(conversation_id) is not None


def _message_texts(conversation: dict) -> list[str]:
    """Every text of a conversation that search looks at, reply versions included."""
    texts = []
    for message in conversation.get("messages") or ():
        texts.append(message.get("content") or "")
        texts += [version.get("content") or "" for version in message.get("versions") or ()]
    return texts


@functools.lru_cache(maxsize=64)
def _raw_pattern(needle: str) -> re.Pattern:
    """`needle` as it appears in a JSON file: words JSON-escaped, any whitespace (or escaped \\n, \\t) between."""
    words = [re.escape(json.dumps(word, ensure_ascii=False)[1:-1]) for word in needle.split()]
    return re.compile(r"(?:\s|\\[nrt])+".join(words))


class ConversationStore:
    """Conversation files in one folder, safe to call from any thread."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._lock = threading.RLock()
        self._rows: dict[str, _IndexRow] = {}
        self._dirty = False
        self.moved_aside: list[Path] = []
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load()

    # --- reading --------------------------------------------------------------------------

    def _path(self, conversation_id: str) -> Path:
        return self.folder / f"{conversation_id}.json"

    def _load(self) -> None:
        """Build the index from `index.json`, re-reading every file that changed since it was written."""
        known = self._read_index()
        for entry in self.folder.iterdir():
            conversation_id = entry.name.removesuffix(".json")
            if entry.suffix != ".json" or not valid_id(conversation_id):
                continue
            stat = entry.stat()
            row = known.get(conversation_id)
            if row is not None and (row.mtime_ns, row.size) == (stat.st_mtime_ns, stat.st_size):
                self._rows[conversation_id] = row
                continue
            try:
                conversation = self._read_file(entry)
            except StoreReadFailed as exc:  # kept as it is; its old row, if any, stands in until the next start
                log.warning("%s", exc)
                if row is not None:
                    self._rows[conversation_id] = row
                continue
            if conversation is not None:
                self._rows[conversation_id] = _IndexRow(summary_of(conversation), stat.st_mtime_ns, stat.st_size)
                self._dirty = True
        if set(known) - set(self._rows):
            self._dirty = True
        self.flush_index()

    def _read_index(self) -> dict[str, _IndexRow]:
        """The rows saved in `index.json`; an unreadable index is rebuilt from the files."""
        path = self.folder / INDEX_NAME
        if not path.exists():
            return {}
        try:
            rows = read_json(path)["rows"]
            return {row["id"]: _IndexRow(ConversationSummary(**row["summary"]), row["mtime_ns"], row["size"])
                    for row in rows}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("The conversation index %s could not be read (%s); rebuilding it from the files", path, exc)
            return {}

    def _read_file(self, path: Path) -> dict | None:
        """One conversation file; one that is not a conversation (bad JSON, cut short) is moved aside and None
        returned. A file that cannot be read just now (permissions, too many open files) stays where it is:
        `StoreReadFailed`."""
        try:
            conversation = read_json(path)
            if not isinstance(conversation, dict) or not isinstance(conversation.get("messages"), list):
                raise ValueError("not a conversation record")
            return conversation
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreReadFailed(f"The conversation file {path.name} could not be read just now "
                                  f"({exc.strerror or exc}); it is kept as it is.") from exc
        except ValueError as exc:
            try:
                self.moved_aside.append(move_aside(path, str(exc)))
            except OSError as move_failed:
                log.error("%s is not a conversation (%s) and could not be moved aside: %s", path, exc, move_failed)
            return None

    def get(self, conversation_id: str) -> dict:
        """A whole conversation, read from its file; raises `ConversationNotFound`."""
        with self._lock:
            if not valid_id(conversation_id) or conversation_id not in self._rows:
                raise ConversationNotFound("That conversation does not exist (any more).")
            conversation = self._read_file(self._path(conversation_id))
            if conversation is None:
                del self._rows[conversation_id]
                self._dirty = True
                raise ConversationNotFound("That conversation's file could not be read; it was moved aside.")
            return conversation

    def owner_of(self, conversation_id: str) -> str | None:
        """Who a conversation belongs to, or None if there is no such conversation."""
        with self._lock:
            row = self._rows.get(conversation_id) if valid_id(conversation_id) else None
            return row.summary.owner if row else None

    def summary(self, conversation_id: str) -> ConversationSummary | None:
        """The list entry of one conversation, or None."""
        with self._lock:
            row = self._rows.get(conversation_id) if valid_id(conversation_id) else None
            return row.summary if row else None

    def list(self, owner: str, query: str = "", offset: int = 0,
             limit: int = 50) -> tuple[list[ConversationSummary], int]:
        """One page of `owner`'s conversations, newest first, and how many match in all.

        A query matches titles and the text of every message (case-insensitive).
        """
        with self._lock:
            rows = [row.summary for row in self._rows.values() if row.summary.owner == owner]
        rows.sort(key=lambda s: s.updated, reverse=True)
        needle = " ".join(query.split()).casefold()
        if needle:
            rows = [s for s in rows if needle in s.title.casefold() or self._text_matches(s.id, needle)]
        return rows[offset: offset + limit], len(rows)

    def _text_matches(self, conversation_id: str, needle: str) -> bool:
        """Whether a conversation's messages contain `needle` (casefolded, whitespace collapsed)."""
        path = self._path(conversation_id)
        try:
            raw = path.read_bytes().decode("utf-8", "replace").casefold()
        except OSError as exc:  # it went away, or cannot be read just now: not a match this time
            log.debug("Cannot search conversation %s: %s", conversation_id, exc)
            return False
        # Quick check on the raw JSON text (a file with \\u escapes is checked parsed).
        if "\\u" not in raw and not _raw_pattern(needle).search(raw):
            return False
        try:
            conversation = read_json(path)
        except (OSError, ValueError) as exc:
            log.debug("Cannot search conversation %s: %s", conversation_id, exc)
            return False
        return any(needle in " ".join(text.split()).casefold() for text in _message_texts(conversation))

    # --- writing --------------------------------------------------------------------------

    def save(self, conversation: dict, create: bool = True, stamp: bool = True) -> dict | None:
        """Write a conversation, stamping its update time (unless `stamp` is False); returns the record written.

        With `create=False` a conversation deleted in the meantime stays deleted: nothing is
        written and None is returned. Raises `StoreWriteFailed` with nothing changed.
        """
        conversation_id = conversation.get("id")
        if not valid_id(conversation_id):
            raise ConversationNotFound("That conversation does not exist.")
        record = {**conversation, "updated": time.time()} if stamp else dict(conversation)
        payload = encode_json(record)
        path = self._path(conversation_id)
        with self._lock:
            if not create and conversation_id not in self._rows:
                return None
            write_atomic(path, payload)
            try:
                stat = path.stat()
                mtime_ns, size = stat.st_mtime_ns, stat.st_size
            except OSError as exc:
                log.debug("Cannot stat %s after writing it (%s); it is read again at the next start", path, exc)
                mtime_ns, size = 0, 0
            self._rows[conversation_id] = _IndexRow(summary_of(record), mtime_ns, size)
            self._dirty = True
        return record

    def delete(self, conversation_id: str) -> None:
        """Remove a conversation's file for good; raises `ConversationNotFound` or `StoreWriteFailed`."""
        with self._lock:
            if not valid_id(conversation_id) or conversation_id not in self._rows:
                raise ConversationNotFound("That conversation does not exist (any more).")
            try:
                self._path(conversation_id).unlink(missing_ok=True)
            except OSError as exc:
                raise StoreWriteFailed(f"The conversation file could not be deleted ({exc.strerror or exc}).") from exc
            del self._rows[conversation_id]
            self._dirty = True

    def flush_index(self) -> None:
        """Write `index.json` if the index changed since it was last written (a failure only costs a re-read)."""
        with self._lock:
            if not self._dirty:
                return
            rows = [{"id": cid, "summary": asdict(row.summary), "mtime_ns": row.mtime_ns, "size": row.size}
                    for cid, row in self._rows.items()]
            try:
                write_atomic(self.folder / INDEX_NAME, encode_json({"rows": rows}))
                self._dirty = False
            except StoreWriteFailed as exc:
                log.warning("The conversation index was not written: %s (it is rebuilt at the next start)", exc)

    def close(self) -> None:
        """Write the index so the next start reads no conversation file."""
        self.flush_index()
