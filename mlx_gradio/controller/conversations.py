"""The conversation list and the open conversation: each user reaches their own conversations only."""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import gradio as gr

from .. import errors
from ..chats import chat, conversation_io
from ..engine.thread import Engine
from ..store import Store
from .access import Access, Caller
from .feedback import user_errors
from .views import ChatView, ConversationPage

log = logging.getLogger(__name__)

PAGE_SIZE = 40
MAX_QUERY = 200
EXPORT_MAX_AGE_S = 3600


class ConversationsPart:
    """Handlers for listing, searching, opening, renaming, deleting and exporting conversations."""

    def __init__(self, engine: Engine, store: Store, access: Access, is_streaming: Callable[[str], bool],
                 stop_replies: Callable[[str], None], upload_dir: Path, own_folders: list[Path]) -> None:
        self.upload_dir = Path(upload_dir).resolve()
        self.own_folders = own_folders  # where an imported conversation's attachments may be
        self.engine = engine
        self.store = store
        self.access = access
        self._is_streaming = is_streaming  # whether a reply is being written into a conversation
        self._stop_replies = stop_replies  # end the reply being written into a conversation
        # One change at a time to any conversation: a reply's saves and the tabs' changes never overwrite each
        # other. A change made while a reply is being written waits for that reply's next save (`save_reply`).
        self._writing = threading.RLock()
        self._pending: dict[str, list[Callable[[dict], None]]] = {}

    def change(self, caller: Caller, conversation_id: str, fn: Callable[[dict], None],
               while_streaming: bool = True) -> dict:
        """Apply `fn` to this user's conversation and keep it: now, or (while a reply is being written into it)
        with that reply's next save; `while_streaming=False` refuses it then. Returns the conversation as it is
        with the change."""
        with self._writing:
            conversation = self.own(caller, conversation_id)
            streaming = self._is_streaming(conversation_id)
            if streaming and not while_streaming:
                raise errors.ReplyInProgress("A reply is being written into this conversation.")
            fn(conversation)
            if streaming:
                self._pending.setdefault(conversation_id, []).append(fn)
            elif self.store.conversations.save(conversation, create=False, stamp=False) is None:
                raise errors.ConversationNotFound("That conversation does not exist (any more).")
            return conversation

    def save_reply(self, conversation: dict, create: bool = False) -> dict | None:
        """A reply's save: the changes the tabs made meanwhile are taken in first (None: it was deleted)."""
        with self._writing:
            for fn in self._pending.pop(conversation["id"], []):
                fn(conversation)
            return self.store.conversations.save(conversation, create=create)

    def reply_ended(self, conversation_id: str, release: Callable[[], None]) -> None:
        """`release` the conversation from its reply, and keep the changes that came after the reply's last
        save (it was the last chance to take them in)."""
        with self._writing:
            release()
            late = self._pending.pop(conversation_id, [])
            if not late or self.store.conversations.summary(conversation_id) is None:
                return
            with user_errors("save the conversation's changes"):
                conversation = self.store.conversations.get(conversation_id)
                for fn in late:
                    fn(conversation)
                self.store.conversations.save(conversation, create=False, stamp=False)


    def own(self, caller: Caller, conversation_id: str) -> dict:
        """A conversation of this user; another user's is refused exactly like one that does not exist."""
        owner = self.store.conversations.owner_of(conversation_id)
        if owner is None or owner != caller.user:
            raise errors.ConversationNotFound("That conversation does not exist (any more).")
        return chat.upgrade(self.store.conversations.get(conversation_id), caller.user)

    def page(self, caller: Caller, query: str = "", limit: int = PAGE_SIZE,
             selected: str | None = None) -> ConversationPage:
        """The first `limit` of this user's conversations that match `query`, newest first."""
        query = str(query or "")[:MAX_QUERY]
        limit = max(PAGE_SIZE, min(int(limit or PAGE_SIZE), 100_000))
        summaries, total = self.store.conversations.list(caller.user, query, 0, limit)
        return ConversationPage(summaries, total, selected or None)

    # --- handlers ---------------------------------------------------------------------------

    def list(self, query: str, limit: int, selected: str, request: gr.Request) -> ConversationPage:
        """Handler: the conversation list for the search box and the number of entries shown."""
        with user_errors("list the conversations"):
            caller = self.access.caller(request)
            return self.page(caller, query, _as_int(limit), selected)

    def open(self, conversation_id: str, request: gr.Request) -> ChatView:
        """Handler: show one of the user's conversations."""
        with user_errors("open that conversation"):
            caller = self.access.caller(request)
            if not conversation_id:
                return ChatView(None)
            return ChatView(self.own(caller, conversation_id))

    def new(self, request: gr.Request) -> ChatView:
        """Handler: an empty chat; it is saved once the first message is sent."""
        with user_errors("start a new chat"):
            self.access.caller(request)
        return ChatView(None)

    def rename(self, conversation_id: str, title: str, request: gr.Request) -> None:
        """Handler: rename the open conversation."""
        title = " ".join(str(title or "").split())[:200]
        with user_errors("rename the conversation"):
            caller = self.access.caller(request)
            if not conversation_id or not title:
                raise errors.ChatEditError("Open a conversation and type a new title first.")
            self.change(caller, conversation_id, lambda conversation: conversation.update(title=chat.clean_text(title)))

    def delete(self, conversation_id: str, request: gr.Request) -> ChatView:
        """Handler: delete the open conversation and show an empty chat."""
        with user_errors("delete the conversation"):
            caller = self.access.caller(request)
            if conversation_id:
                self.own(caller, conversation_id)
                self.store.conversations.delete(conversation_id)
                self._stop_replies(conversation_id)  # a reply being written is not saved: it stays deleted
                self.engine.forget_conversation(conversation_id)
        return ChatView(None)

    def export(self, conversation_id: str, request: gr.Request, markdown: bool = False) -> str:
        """Handler: write the open conversation as JSON (or Markdown) into a temporary folder and return the file."""
        with user_errors("export the conversation"):
            caller = self.access.caller(request)
            if not conversation_id:
                raise errors.ChatEditError("Open a conversation to export it.")
            conversation = self.own(caller, conversation_id)
        if not caller.is_owner:
            conversation = conversation_io.without_paths(conversation)
        # Gradio copies the file into its own cache and serves it from there; no folder of ours is exposed.
        write = conversation_io.export_markdown if markdown else conversation_io.export_json
        with user_errors("export the conversation"):
            return str(write(conversation, _export_folder()))

    def import_file(self, upload: str, request: gr.Request) -> ChatView:
        """Handler: a conversation from an uploaded JSON file (ours, or OpenAI-style messages), opened."""
        with user_errors("import the conversation"):
            caller = self.access.caller(request)
            if not isinstance(upload, str) or not Path(upload).resolve().is_relative_to(self.upload_dir):
                raise errors.ImportFailed("Pick a JSON file with the Import button.")
            conversation = conversation_io.read_import(Path(upload), caller.user, self.own_folders)
            saved = self.store.conversations.save(conversation)
        log.info("Imported conversation %s (%d messages) for %s", saved["id"], len(saved["messages"]), caller.user)
        return ChatView(saved)

def _export_folder() -> Path:
    """A new folder for one export, under the system's temp dir; exports older than an hour are removed."""
    root = Path(tempfile.gettempdir()) / "mlx-gradio-exports"
    try:
        root.mkdir(exist_ok=True)
        for old in root.iterdir():
            try:
                if time.time() - old.stat().st_mtime > EXPORT_MAX_AGE_S:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError as exc:
                log.debug("Cannot check old export %s: %s", old, exc)
        return Path(tempfile.mkdtemp(dir=root))
    except OSError as exc:
        raise errors.StoreWriteFailed(f"The export could not be written to {root} ({exc.strerror or exc}).") from exc


def _as_int(value: object) -> int:
    """A count from the page (a number or a numeric string), else the page size."""
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError) as exc:
        log.debug("Not a count from the page (%s); showing %d", exc, PAGE_SIZE)
        return PAGE_SIZE
