"""Send, regenerate, edit, stop and reply versions: replies that never destroy what was there.

A reply takes its place in the conversation with its first token. Until then nothing that was
saved changes: a regenerate that fails leaves the previous version current, an edit that fails
leaves the conversation as it was (the edited text goes back to the message box), and a send
that fails keeps the user's turn with a note and a retry. One reply at a time per conversation.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr

from .. import errors
from ..chats import attachments, chat
from ..engine.jobs import ChatRequest, Generation, GenerationEvent, GenerationStats
from ..engine.thread import Engine
from ..serving.remote import is_remote
from ..store import Store
from .access import Access, Caller
from .conversations import ConversationsPart
from .feedback import message_for, public, user_errors
from .models import ModelsPart
from .settings import parse_user_settings, sampling_params
from .views import ChatView, Draft

log = logging.getLogger(__name__)

MAX_IMAGES = 8  # per message
MAX_FILES = 8  # text files per message
# At most 20 browser updates a second while a reply streams. A guest's reply waits this times the number of
# replies streaming at once, so guests share the page's work rather than slow the owner's page.
STREAM_INTERVAL_S = 0.05
SAVE_INTERVAL_S = 5.0  # a reply being written is saved this often, so a crash loses little
MAX_REPLIES = 64  # under way at once (streaming or waiting for the model); a guest's next one beyond is refused
MAX_GUEST_CONVERSATIONS = 1000  # a guest who has this many deletes some before starting another
MAX_GUEST_UPLOAD_BYTES = 1_000_000_000  # images and files a guest may upload in all
UPLOADED = "uploaded_bytes"  # in a guest's settings: what they have uploaded so far


@dataclass(eq=False)
class ActiveReply:
    """A reply being written into one conversation, and the tab that asked for it."""

    user: str
    session: str
    owner: bool  # whether an owner asked: a guest's errors and notes name no path or URL of the owner's
    streaming: bool = False  # its text has begun to come (it no longer waits for the model)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    generation: Generation | None = None

    def attach(self, generation: Generation) -> None:
        """The engine took the reply; a stop asked for before this still applies."""
        self.generation = generation
        if self.stop_requested.is_set():
            generation.stop()

    def stop(self) -> None:
        """End the reply after the current token (or before it begins)."""
        self.stop_requested.set()
        if self.generation is not None:
            self.generation.stop()


@dataclass
class _Reply:
    """What one reply has produced so far."""

    text: str = ""
    reasoning: str = ""
    thinking_since: float | None = None  # when the first thinking text came
    thought_before: float = 0.0  # thinking time of the reply this one continues
    thought_s: float | None = None  # how long the model thought, once the answer began (or the reply ended)
    stats: GenerationStats | None = None
    committed: bool = False
    earlier_stats: dict | None = None  # the stats of the reply this one continues
    model_name: str = ""  # what wrote it, named when it began
    error: errors.AppError | None = None
    cancelled: bool = False

    def add(self, event: GenerationEvent, now: float) -> None:
        """Take in one event of the stream."""
        if event.reasoning:
            self.reasoning += event.reasoning
            self.thinking_since = self.thinking_since or now
        if event.text:
            self.end_thinking(now)
        self.text += event.text
        self.stats = event.stats or self.stats

    def end_thinking(self, now: float) -> None:
        """A reply that ended while still thinking thought until now."""
        if self.thinking_since is not None and self.thought_s is None:
            self.thought_s = self.thought_before + now - self.thinking_since

    @classmethod
    def continuing(cls, version: dict) -> _Reply:
        """A reply that writes on from the end of `version`, in place."""
        reasoning, text = version.get("reasoning") or "", version["content"]
        still_thinking = bool(reasoning) and not text
        return cls(text=text, reasoning=reasoning, committed=True, earlier_stats=version.get("stats"),
                   thought_before=(version.get("thought_s") or 0.0) if still_thinking else 0.0,
                   thought_s=None if still_thinking else version.get("thought_s"))

    @property
    def started(self) -> bool:
        """Whether any text (answer or thinking) has come."""
        return bool(self.text or self.reasoning)


class RepliesPart:
    """Handlers that write replies into conversations."""

    def __init__(self, engine: Engine, store: Store, access: Access, models: ModelsPart,
                 conversations: ConversationsPart, images_dir: Path, upload_dir: Path) -> None:
        self.engine = engine
        self.store = store
        self.access = access
        self.models = models
        self.conversations = conversations
        self.images_dir = images_dir
        self.files_dir = images_dir.parent / "files"
        self.upload_dir = Path(upload_dir).resolve()
        self._active: dict[str, ActiveReply] = {}
        self._active_lock = threading.Lock()

    def is_streaming(self, conversation_id: str) -> bool:
        """Whether a reply is being written into this conversation."""
        with self._active_lock:
            return conversation_id in self._active

    def _claim(self, conversation_id: str, caller: Caller) -> ActiveReply:
        """Reserve a conversation for one reply; a second one is refused."""
        with self._active_lock:
            if conversation_id in self._active:
                raise errors.ReplyInProgress("A reply is already being written into this conversation.")
            self._refuse_second_reply(caller)
            active = self._active[conversation_id] = ActiveReply(caller.user, caller.session, caller.is_owner)
            return active

    def _refuse_second_reply(self, caller: Caller) -> None:
        """A guest has one reply under way at a time, and none while the app has as many as it takes
        (called with the lock held)."""
        if caller.is_owner:
            return
        if any(a.user == caller.user for a in self._active.values()):
            raise errors.ReplyInProgress("You have a reply being written already (in another conversation or "
                                         "tab): one at a time for each guest, so everyone gets a turn.")
        if len(self._active) >= MAX_REPLIES:
            raise errors.Busy(f"The app is busy: {len(self._active)} replies are under way, as many as it "
                              "takes at once.")

    def stop_conversation(self, conversation_id: str) -> None:
        """Stop whatever reply is being written into a conversation (it is being deleted)."""
        with self._active_lock:
            active = self._active.get(conversation_id)
        if active is not None:
            active.stop()

    def stop_all(self) -> None:
        """Stop every reply being written, from the engine or a server (the app is quitting)."""
        with self._active_lock:
            active = list(self._active.values())
        for reply in active:
            reply.stop()

    def _stream_interval(self, active: ActiveReply) -> float:
        """Seconds between two page updates of this reply: an owner's as often as they come, a guest's less
        often the more replies stream at once."""
        if active.owner:
            return STREAM_INTERVAL_S
        with self._active_lock:
            return STREAM_INTERVAL_S * max(1, sum(a.streaming for a in self._active.values()))

    def _release(self, conversation_id: str, active: ActiveReply) -> None:
        with self._active_lock:
            if self._active.get(conversation_id) is active:
                del self._active[conversation_id]

    def _check_guest_bounds(self, caller: Caller, conversation_id: str, uploads: list[str]) -> None:
        """A guest keeps at most so many conversations, and uploads at most so many bytes in all (what is
        uploaded stays on this machine's disk); a reply they may not have now is refused before their files are
        kept."""
        with self._active_lock:
            self._refuse_second_reply(caller)
        if not conversation_id:
            kept = self.store.conversations.list(caller.user, limit=0)[1]
            if kept >= MAX_GUEST_CONVERSATIONS:
                raise errors.ChatEditError(f"You keep {kept:,} conversations, the most a guest may; delete some "
                                           "to start another.")
        uploaded = self.store.settings.user(caller.user).get(UPLOADED, 0)
        if uploads and uploaded + _size_of([self._uploaded(u) for u in uploads]) > MAX_GUEST_UPLOAD_BYTES:
            raise errors.InvalidAttachment(f"You have uploaded {uploaded / 1e9:.1f} GB; a guest may upload "
                                           f"{MAX_GUEST_UPLOAD_BYTES / 1e9:.0f} GB in all. Ask the owner for more "
                                           "room, or send the message without its files.")

    def _uploaded(self, path: str) -> str:
        """An attachment's path, if it is a file uploaded through the page; nothing else on the server is read."""
        if not Path(path).resolve().is_relative_to(self.upload_dir):
            raise errors.InvalidImage("An attachment must be uploaded with the message box.")
        return path

    # --- handlers ---------------------------------------------------------------------------

    def send(self, conversation_id: str, message: Any, model_path: str, *settings: Any,
             request: gr.Request) -> Iterator[ChatView]:
        """Handler: add the user's message (text, images and text files) and stream the reply.

        Bad input raises before anything changes; the message box keeps its text.
        """
        with user_errors("send the message"):
            caller = self.access.caller(request)
            text, uploads = _message_parts(message)
            if not text.strip() and not uploads:
                raise errors.ChatEditError("Type a message or attach a file first.")
            pictures = [upload for upload in uploads if attachments.is_image(upload)]
            documents = [upload for upload in uploads if not attachments.is_image(upload)]
            if len(pictures) > MAX_IMAGES:
                raise errors.InvalidImage(f"A message can carry at most {MAX_IMAGES} images; "
                                          f"this one has {len(pictures)}.")
            if len(documents) > MAX_FILES:
                raise errors.InvalidAttachment(f"A message can carry at most {MAX_FILES} files; "
                                               f"this one has {len(documents)}.")
            values = parse_user_settings(settings)
            model = self.models.model_for(caller, model_path)
            if pictures and not self.models.is_vision(model):
                raise errors.ImageNeedsVisionModel(f"{self.models.name_of(model)} reads text only.")
            if not caller.is_owner:
                self._check_guest_bounds(caller, conversation_id, uploads)
            files = [attachments.ingest_text(self._uploaded(upload), self.files_dir) for upload in documents]
            images = [str(_ingest(self._uploaded(upload), self.images_dir)) for upload in pictures]
            conversation = (self.conversations.own(caller, conversation_id) if conversation_id
                            else chat.new_conversation(caller.user, model))
            self._remember_model(caller, model)
            active = self._claim(conversation["id"], caller)
        try:
            chat.add_user_message(conversation, text.strip(), images, files)
            conversation.update(model=model, settings=values)
            with user_errors("send the message"):
                conversation = self.conversations.save_reply(conversation, create=True)
                if uploads and not caller.is_owner:
                    uploaded = self.store.settings.user(caller.user).get(UPLOADED, 0)
                    self.store.settings.update_user(caller.user, **{UPLOADED: uploaded + _size_of(uploads)})
            slot = len(conversation["messages"])
            yield from self._reply(active, conversation, slot, model, values, fallback=conversation,
                                   mark_unanswered=True, clear_input=True)
        finally:
            self.conversations.reply_ended(conversation["id"], lambda: self._release(conversation["id"], active))

    def regenerate(self, conversation_id: str, model_path: str, *settings: Any,
                   request: gr.Request) -> Iterator[ChatView]:
        """Handler: answer the last user message again, as a new version of the reply."""
        with user_errors("regenerate the reply"):
            caller = self.access.caller(request)
            if not conversation_id:
                raise errors.ChatEditError("There is nothing to regenerate yet: send a message first.")
            values = parse_user_settings(settings)
            model = self.models.model_for(caller, model_path)
            conversation = self.conversations.own(caller, conversation_id)
            slot = chat.reply_slot(conversation)
            self._remember_model(caller, model)
            active = self._claim(conversation_id, caller)
        try:
            unanswered = slot == len(conversation["messages"])
            yield from self._reply(active, conversation, slot, model, values, fallback=conversation,
                                   mark_unanswered=unanswered)
        finally:
            self.conversations.reply_ended(conversation_id, lambda: self._release(conversation_id, active))

    def edit(self, conversation_id: str, model_path: str, *settings: Any, edit: gr.EditData,
             request: gr.Request) -> Iterator[ChatView]:
        """Handler: the user edited one of their messages; answer again from there."""
        with user_errors("edit the message"):
            caller = self.access.caller(request)
            shown = edit.index[0] if isinstance(edit.index, (tuple, list)) and edit.index else edit.index
            text = chat.clean_text(edit.value if isinstance(edit.value, str) else _text_of(edit.value)).strip()
            values = parse_user_settings(settings)
            model = self.models.model_for(caller, model_path)
            original = self.conversations.own(caller, conversation_id)
            index = chat.message_at(original, shown if isinstance(shown, int) else -1)
            changed = chat.edited(original, index, text)
            self._remember_model(caller, model)
            active = self._claim(conversation_id, caller)
        try:
            yield from self._reply(active, changed, index + 1, model, values, fallback=original,
                                   mark_unanswered=False, restore={"text": text, "files": []})
        finally:
            self.conversations.reply_ended(conversation_id, lambda: self._release(conversation_id, active))

    def continue_reply(self, conversation_id: str, model_path: str, *settings: Any,
                       request: gr.Request) -> Iterator[ChatView]:
        """Handler: write on from the end of the last reply, which max tokens or Stop cut short."""
        with user_errors("continue the reply"):
            caller = self.access.caller(request)
            if not conversation_id:
                raise errors.ChatEditError("Open a conversation with a reply to continue.")
            values = parse_user_settings(settings)
            model = self.models.model_for(caller, model_path)
            if is_remote(model):
                raise errors.ChatEditError(f"{self.models.name_of(model)} is a server: an OpenAI-style server cannot "
                                           "write on from the middle of a reply. Pick a model this app runs, or ↻.")
            conversation = self.conversations.own(caller, conversation_id)
            slot = chat.continuable_slot(conversation)
            self._remember_model(caller, model)
            active = self._claim(conversation_id, caller)
        try:
            yield from self._reply(active, conversation, slot, model, values, fallback=conversation,
                                   mark_unanswered=False, continuing=True)
        finally:
            self.conversations.reply_ended(conversation_id, lambda: self._release(conversation_id, active))

    def stop(self, conversation_id: str, request: gr.Request) -> None:
        """Handler: stop the reply this tab started (what was written stays)."""
        with user_errors("stop the reply"):
            caller = self.access.caller(request)
        with self._active_lock:
            mine = [(cid, active) for cid, active in self._active.items()
                    if active.user == caller.user and active.session == caller.session]
        for cid, active in mine:
            if not conversation_id or cid == conversation_id:
                active.stop()

    def previous_version(self, conversation_id: str, request: gr.Request) -> ChatView:
        """Handler: show the previous version of the last reply."""
        return self._switch_version(conversation_id, -1, request)

    def next_version(self, conversation_id: str, request: gr.Request) -> ChatView:
        """Handler: show the next version of the last reply."""
        return self._switch_version(conversation_id, +1, request)

    def _switch_version(self, conversation_id: str, delta: int, request: gr.Request) -> ChatView:
        with user_errors("show that version"):
            caller = self.access.caller(request)
            conversation = self.conversations.change(caller, conversation_id,
                                                     lambda conversation: chat.select_version(conversation, delta),
                                                     while_streaming=False)
        return ChatView(conversation)

    # --- one reply --------------------------------------------------------------------------

    def _reply(self, active: ActiveReply, base: dict, slot: int, model: str, values: dict, fallback: dict,
               mark_unanswered: bool, clear_input: bool = False, restore: dict | None = None,
               continuing: bool = False) -> Iterator[ChatView]:
        """Stream the reply at `slot` of `base`; it replaces nothing until its first token.

        `fallback` is what stays if no reply comes; `mark_unanswered` notes on its last user turn why.
        `continuing` writes on from the end of the reply at `slot`, in place.
        """
        messages = (chat.continuation_messages if continuing else chat.model_messages)(base, slot,
                                                                                        values["system_prompt"])
        request = ChatRequest(base["id"], model, messages, sampling_params(values),
                              context_limit=self.store.settings.app()["context_limit"],
                              thinking=values["thinking"], continue_last=continuing, client=active.user,
                              first=active.owner)
        reply = _Reply.continuing(chat.current_version(base["messages"][slot])) if continuing else _Reply()
        reply.model_name = self.models.name_of(model)  # now: a server or endpoint may be gone when the reply ends
        base.update(model=model, settings=values)  # a conversation keeps the model and settings of its replies
        conversation = base
        status = "Waiting for the model…"
        draft = None if continuing else Draft(slot, "", status)
        yield ChatView(base, draft, streaming=True, clear_input=clear_input)
        generation = None
        try:
            for status in self.models.wait_for_demo(model):
                yield ChatView(base, draft and Draft(slot, "", status), streaming=True)
            generation = self.models.generate(request)
            active.attach(generation)
            last_yield, last_save = 0.0, time.monotonic()  # the first event is shown at once (the wait, if any)
            for event in generation.events():
                now = time.monotonic()
                reply.add(event, now)
                active.streaming = reply.started
                status = event.status or status
                saved: dict | None = conversation
                if reply.started and not reply.committed:
                    chat.add_reply_version(conversation, slot, reply.text, None, model, reply.reasoning,
                                           reply.thought_s)
                    reply.committed = True
                    saved, last_save = self.conversations.save_reply(conversation), now
                elif reply.committed:
                    chat.update_reply_version(conversation, slot, reply.text, reply.earlier_stats, reply.reasoning,
                                              reply.thought_s)
                    if now - last_save >= SAVE_INTERVAL_S:
                        saved, last_save = self.conversations.save_reply(conversation), now
                if saved is None:
                    log.info("Conversation %s was deleted while its reply was written; the reply ends", base["id"])
                    break
                if event.done or now - last_yield >= self._stream_interval(active):
                    draft = None if reply.committed else Draft(slot, reply.text, status)
                    yield ChatView(conversation, draft, streaming=True)
                    last_yield = now
        except errors.AppError as exc:
            reply.error = exc
        except GeneratorExit:
            # The tab switched chats or went away: keep what was written, note why nothing came.
            reply.cancelled = True
            try:
                self._settle(reply, conversation, slot, model, fallback, mark_unanswered, active.owner)
            except gr.Error as exc:
                log.error("A cancelled reply in conversation %s could not be saved: %s", base["id"], exc)
            raise
        finally:
            if generation is not None:
                generation.stop()  # a no-op once finished
        final, applied = self._settle(reply, conversation, slot, model, fallback, mark_unanswered, active.owner)
        restore_input = restore if restore and not applied else None
        yield ChatView(final, restore_input=restore_input)
        if reply.error is not None:
            log.warning("Reply in conversation %s failed: %s", base["id"], reply.error)
            note = " The conversation is unchanged; your edited text is in the message box." if restore_input else ""
            raise gr.Error(message_for(reply.error, guest=not active.owner) + note, title="Could not finish the reply")

    def _settle(self, reply: _Reply, conversation: dict, slot: int, model: str, fallback: dict,
                mark_unanswered: bool, owner: bool) -> tuple[dict | None, bool]:
        """Put the finished reply (or the reason there is none) in place and save it.

        Returns what the chat shows now (None if the conversation was deleted meanwhile) and
        whether the reply took its place.
        """
        # A Continue that fails or is cut off before its stats keeps those of the reply it continued.
        stats = ({**asdict(reply.stats), "model_name": reply.model_name} if reply.stats
                 else reply.earlier_stats)
        finished = reply.stats is not None and reply.stats.finish_reason in ("stop", "length")
        reply.end_thinking(time.monotonic())
        if reply.committed:
            chat.update_reply_version(conversation, slot, reply.text, stats, reply.reasoning, reply.thought_s)
            result, applied = conversation, True
        elif finished and reply.error is None:
            chat.add_reply_version(conversation, slot, "", stats, model)  # the model ended at once: an empty answer
            result, applied = conversation, True
        elif mark_unanswered:
            why = _why_no_reply(reply)
            chat.mark_unanswered(fallback, slot, why if owner else public(why))
            result, applied = fallback, False
        else:
            return fallback, False
        with user_errors("save the reply"):
            # A conversation deleted while its reply was written stays deleted.
            return self.conversations.save_reply(result), applied

    def _remember_model(self, caller: Caller, model: str) -> None:
        """Keep the model a reply was asked with as this user's choice (the settings stay the conversation's)."""
        if self.store.settings.user(caller.user)["model"] != model:
            self.models.remember(caller, model)


def _why_no_reply(reply: _Reply) -> str:
    """The note shown on a user turn that got no reply."""
    if reply.error is not None:
        return str(reply.error)
    if reply.cancelled:
        return "the reply was cancelled before it began."
    return "stopped before the reply began."


def _message_parts(message: Any) -> tuple[str, list[str]]:
    """The text and uploaded file paths of a message from the message box (or an API call)."""
    if isinstance(message, str):
        message = {"text": message}
    if not isinstance(message, dict):
        raise errors.ChatEditError("The message has no text or files.")
    text = message.get("text")
    files = message.get("files") or []
    if not isinstance(text, (str, type(None))) or not isinstance(files, list):
        raise errors.ChatEditError("The message has no text or files.")
    return chat.clean_text(text or ""), [_file_path(f) for f in files]


def _file_path(item: Any) -> str:
    """The local path of an uploaded file, whether Gradio passed a string or a file dict."""
    path = item if isinstance(item, str) else (item.get("path") or item.get("name")) if isinstance(item, dict) else None
    if not isinstance(path, str) or not path:
        raise errors.InvalidImage("An attachment could not be read.")
    return path


def _size_of(uploads: list[str]) -> int:
    """Bytes of uploaded files (one gone meanwhile counts nothing: its ingest fails with a sentence)."""
    total = 0
    for upload in uploads:
        try:
            total += Path(upload).stat().st_size
        except OSError as exc:
            log.debug("Cannot size the upload %s: %s", upload, exc)
    return total


def _ingest(upload: str, images_dir: Path) -> Path:
    """Validate and keep an uploaded image."""
    from ..chats.images import ingest_image

    return ingest_image(upload, images_dir)


def _text_of(content: Any) -> str:
    """The text in an edited chatbot message, whatever shape Gradio passed it in."""
    if isinstance(content, list):
        return " ".join(_text_of(part) for part in content if _text_of(part))
    if isinstance(content, dict):
        return str(content.get("text") or "")
    return str(content or "")
