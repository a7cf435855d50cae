"""The one facade the tabs call: it drives the services and turns their errors into `gr.Error`.

Each public method is a Gradio handler: plain arguments in, component values out. Services
raise typed errors (errors.py); `user_errors` logs them with context and shows the user a
sentence that says what to do next.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gradio as gr

from . import chat, demo, errors
from .engine import Engine
from .jobs import Generation, SamplingParams
from .models import LocalModel, describe_folder, is_vision_model, list_models
from .store import Store, new_conversation

log = logging.getLogger(__name__)

SETTING_FIELDS = ("system_prompt", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed", "max_tokens")
STREAM_INTERVAL_S = 0.05  # at most 20 browser updates a second while a reply streams

ADVICE = {
    errors.ModelNotFound: "Pick another model in the list, or add its folder under “Add a model”.",
    errors.ModelLoadFailed: "The folder may be incomplete, or hold a model type this mlx-lm / mlx-vlm cannot run.",
    errors.DemoModelUnavailable: "Check that this machine can reach PyPI, or pick another model.",
    errors.InvalidImage: "The conversation is unchanged.",
    errors.ImageNeedsVisionModel: "Pick a vision model (marked “vision” in the model list) to chat about images.",
    errors.ConversationNotFound: "It may have been deleted in another tab; start a new chat.",
    errors.UnsupportedGGUF: "",
    errors.GenerationFailed: "Try again, or pick another model.",
    errors.ChatEditError: "",
}


def message_for(exc: errors.AppError) -> str:
    """The sentence a user sees for a service error."""
    advice = next((text for kind, text in ADVICE.items() if isinstance(exc, kind)), "")
    return f"{exc} {advice}".strip()


@contextmanager
def user_errors(action: str) -> Iterator[None]:
    """Log a service error with what was being done, and re-raise it as a `gr.Error`."""
    try:
        yield
    except errors.AppError as exc:
        log.warning("%s failed: %s", action, exc)
        raise gr.Error(message_for(exc), title=f"Could not {action}") from exc


def sampling_params(settings: dict) -> SamplingParams:
    """Sampling settings from the saved settings, with defaults for blank fields."""
    defaults = SamplingParams()

    def value(name: str, kind: type) -> Any:
        raw = settings.get(name)
        return kind(raw) if raw is not None and raw != "" else getattr(defaults, name)

    return SamplingParams(
        temperature=max(0.0, value("temperature", float)),
        top_p=min(1.0, max(0.0, value("top_p", float))),
        top_k=max(0, value("top_k", int)),
        min_p=min(1.0, max(0.0, value("min_p", float))),
        repetition_penalty=max(0.1, value("repetition_penalty", float)),
        seed=value("seed", int),
        max_tokens=max(1, value("max_tokens", int)),
    )


class Controller:
    """Everything the UI can do, wired to the engine, the store and the model folders."""

    def __init__(self, engine: Engine, store: Store, data_dir: Path) -> None:
        self.engine = engine
        self.store = store
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.exports_dir = self.data_dir / "exports"
        self._active: dict[str, Generation] = {}
        self._active_lock = threading.Lock()
        self._demo_job: Future | None = None

    # --- models -----------------------------------------------------------------------------

    @property
    def demo_path(self) -> str:
        """Folder of the built-in demo model (it may not exist yet)."""
        return str(demo.demo_model_dir(self.data_dir))

    def demo_model(self) -> LocalModel:
        """The picker entry of the demo model, ready or not."""
        if demo.demo_model_ready(self.data_dir):
            return describe_folder(self.demo_path, "demo")
        return LocalModel(demo.DEMO_NAME, self.demo_path, "demo", vision=False, size_bytes=demo.DEMO_SIZE_BYTES)

    def models(self) -> list[LocalModel]:
        """Every model the picker offers."""
        return list_models(self.demo_model(), self.store.settings()["model_folders"])

    def model_choices(self) -> list[tuple[str, str]]:
        """(label, path) pairs for the model dropdown."""
        return [(m.label, m.path) for m in self.models()]

    def selected_model(self) -> str:
        """The model the settings name, or the demo model."""
        return self.store.settings()["model"] or self.demo_path

    def start_loading(self, path: str) -> None:
        """Queue the load of `path` on the engine (fetching the demo model first if needed)."""
        if path == self.demo_path and not demo.demo_model_ready(self.data_dir):
            if self._demo_job is None or self._demo_job.done():
                self._demo_job = self.engine.call(self._prepare_demo)
        future = self.engine.load(path)
        future.add_done_callback(_log_failure(f"Loading {path}"))

    def _prepare_demo(self) -> Path:
        """Engine job: fetch and convert the demo model, reporting progress in the status."""
        def report(message: str) -> None:
            self.engine.set_status(state="loading", model_name=demo.DEMO_NAME, message=message)

        try:
            return demo.prepare_demo_model(self.data_dir, report)
        except errors.DemoModelUnavailable as exc:
            self.engine.set_status(state="error", message=message_for(exc))
            raise

    def resolve_model(self, spec: str) -> str:
        """A model folder for a path or a Hugging Face repo id in the local cache."""
        if Path(spec).expanduser().is_dir():
            return describe_folder(spec, "folder").path
        for model in self.models():
            if model.name == spec:
                return model.path
        raise errors.ModelNotFound(f"“{spec}” is neither a model folder nor a model in the Hugging Face cache.")

    def startup(self, model: str | None = None) -> None:
        """Select `model` (or the saved one, or the demo) and start loading it in the background."""
        path = self.resolve_model(model) if model else self.selected_model()
        if model:
            self._remember_model(path)
        self.start_loading(path)

    def _remember_model(self, path: str) -> None:
        """Save `path` as the selected model, and as an added folder if it is not known yet."""
        settings = self.store.settings()
        folders = settings["model_folders"]
        known = {self.demo_path, *folders} | {m.path for m in self.models()}
        if path not in known:
            folders = [*folders, path]
        self.store.update_settings(model=path, model_folders=folders)

    def select_model(self, path: str) -> str:
        """Handler: the user picked a model; remember it, start loading it, show the status."""
        if not path:
            return self.model_status()
        if path != self.demo_path:
            with user_errors("load that model"):
                describe_folder(path, "folder")  # a folder deleted since the list was shown
        self.store.update_settings(model=path)
        self.start_loading(path)
        return self.model_status()

    def add_model_folder(self, folder: str) -> tuple[dict, str]:
        """Handler: add a model folder by path and select it."""
        with user_errors("add that folder"):
            model = describe_folder(folder.strip(), "folder")
        self._remember_model(model.path)
        self.start_loading(model.path)
        gr.Info(f"Added {model.name}.")
        return gr.update(choices=self.model_choices(), value=model.path), ""

    def import_gguf(self, gguf_path: str) -> Iterator[tuple[dict, str]]:
        """Handler: convert a GGUF file into an mlx-lm folder under the data dir and select it."""
        from .gguf import check_convertible

        source = Path(gguf_path.strip()).expanduser()
        with user_errors("import that GGUF file"):
            if not source.is_file():
                raise errors.UnsupportedGGUF(f"There is no file at {source}.")
            check_convertible(source)
        target = self.data_dir / "models" / source.stem
        yield gr.update(), f"Converting {source.name}… (this can take a minute for large files)"
        with user_errors("import that GGUF file"):
            self.engine.call(_import_gguf, source, target).result()
        self._remember_model(str(target))
        self.start_loading(str(target))
        yield gr.update(choices=self.model_choices(), value=str(target)), ""

    def model_status(self) -> str:
        """Markdown for the status line beside the model picker."""
        status = self.engine.status()
        if status.state == "ready":
            kind = "vision" if status.vision else "text"
            busy = " · generating" if status.generating else ""
            return f'{_dot("ready")} **{status.model_name}** loaded ({kind}){busy}'
        if status.state == "loading":
            return f"{_dot('loading')} {status.message or 'Loading…'}"
        if status.state == "error":
            return f"{_dot('error')} {status.message}"
        return f"{_dot('empty')} No model loaded yet"

    # --- settings and page load ---------------------------------------------------------------

    def save_settings(self, *values: Any) -> None:
        """Handler: save the system prompt and sampling settings (in `SETTING_FIELDS` order)."""
        self.store.update_settings(**dict(zip(SETTING_FIELDS, values, strict=True)))

    def page_load(self) -> tuple:
        """Handler: everything a fresh browser tab shows, read from the store."""
        notice = self.store.take_recovery_notice()
        if notice:
            gr.Warning(notice, duration=None)
        settings = self.store.settings()
        model_picker = gr.update(choices=self.model_choices(), value=self.selected_model())
        return (model_picker, self.model_status(), self.conversation_list(), *[settings[f] for f in SETTING_FIELDS])

    # --- conversations --------------------------------------------------------------------------

    def conversation_list(self, selected: str | None = None) -> dict:
        """The conversation radio list, newest first."""
        choices = [(c["title"], c["id"]) for c in self.store.conversations()]
        return gr.update(choices=choices, value=selected if selected else None)

    def open_conversation(self, conversation_id: str) -> tuple[list, str, str]:
        """Handler: show a saved conversation; returns chatbot, conversation id, title."""
        if not conversation_id:
            return [], "", ""
        with user_errors("open that conversation"):
            conversation = self.store.conversation(conversation_id)
        return chat.to_chatbot(conversation), conversation_id, conversation["title"]

    def new_chat(self) -> tuple[list, str, str, dict]:
        """Handler: an empty chat; it is saved once the first message is sent."""
        return [], "", "", self.conversation_list()

    def rename_conversation(self, conversation_id: str, title: str) -> dict:
        """Handler: rename the open conversation."""
        title = " ".join(title.split())
        if not conversation_id or not title:
            raise gr.Error("Open a conversation and type a new title first.")
        with user_errors("rename the conversation"):
            self.store.rename_conversation(conversation_id, title)
        return self.conversation_list(conversation_id)

    def delete_conversation(self, conversation_id: str) -> tuple[list, str, str, dict]:
        """Handler: delete the open conversation and show an empty chat."""
        if conversation_id:
            with user_errors("delete the conversation"):
                self.store.delete_conversation(conversation_id)
            self.engine.forget_conversation(conversation_id)
        return self.new_chat()

    def export_conversation(self, conversation_id: str) -> dict:
        """Handler: write the open conversation as JSON and offer it for download."""
        if not conversation_id:
            raise gr.Error("Open a conversation to export it.")
        with user_errors("export the conversation"):
            conversation = self.store.conversation(conversation_id)
        return gr.update(value=str(chat.export_json(conversation, self.exports_dir)), visible=True)

    # --- chatting -------------------------------------------------------------------------------

    def send(self, conversation_id: str, message: dict | None, model_path: str, *settings: Any) -> Iterator[tuple]:
        """Handler: add the user's message (text and images) and stream the reply.

        Yields (chatbot, textbox, conversation list, conversation id). Bad input raises before
        anything changes.
        """
        message = message or {}
        text = (message.get("text") or "").strip()
        uploads = [_file_path(f) for f in message.get("files") or []]
        if not text and not uploads:
            raise gr.Error("Type a message or attach an image first.")
        model_path = model_path or self.selected_model()
        with user_errors("send the message"):
            if uploads and not self._is_vision(model_path):
                raise errors.ImageNeedsVisionModel(f"{Path(model_path).name} reads text only.")
            images = [str(_ingest(u, self.images_dir)) for u in uploads]
            conversation = (self.store.conversation(conversation_id) if conversation_id
                            else new_conversation(model=model_path))
        chat.add_user_message(conversation, text, images)
        conversation = self.store.save_conversation(conversation)
        yield from self._stream_reply(conversation, model_path, settings, clear_input=True)

    def regenerate(self, conversation_id: str, model_path: str, *settings: Any) -> Iterator[tuple]:
        """Handler: answer the last user message again."""
        if not conversation_id:
            raise gr.Error("There is nothing to regenerate yet: send a message first.")
        with user_errors("regenerate the reply"):
            conversation = self.store.conversation(conversation_id)
            chat.cut_for_regenerate(conversation)
        yield from self._stream_reply(conversation, model_path, settings)

    def edit(self, conversation_id: str, model_path: str, *settings: Any, edit: gr.EditData) -> Iterator[tuple]:
        """Handler: the user edited one of their messages; answer again from there."""
        index = edit.index[0] if isinstance(edit.index, (tuple, list)) else edit.index
        new_text = edit.value if isinstance(edit.value, str) else _text_of(edit.value)
        with user_errors("edit the message"):
            conversation = self.store.conversation(conversation_id)
            chat.cut_for_edit(conversation, index, new_text)
        yield from self._stream_reply(conversation, model_path, settings)

    def stop(self, conversation_id: str) -> None:
        """Handler: stop the reply streaming into this conversation (what was written stays)."""
        with self._active_lock:
            generation = self._active.get(conversation_id)
        if generation is not None:
            generation.stop()

    def _is_vision(self, model_path: str) -> bool:
        """Whether a model reads images (the demo model does not, even before it exists)."""
        return model_path != self.demo_path and is_vision_model(model_path)

    def _stream_reply(self, conversation: dict, model_path: str, settings: tuple, clear_input: bool = False):
        """Stream the next reply into the chatbot, then save it with its stats.

        Yields (chatbot, textbox, conversation list, conversation id); the textbox shows its stop
        button until `input_ready` (chained after the event) puts the send button back.
        """
        values = dict(zip(SETTING_FIELDS, settings, strict=True))
        model_path = model_path or self.selected_model()
        self.store.update_settings(model=model_path, **values)
        request = chat.build_request(conversation, model_path, values.get("system_prompt") or "",
                                     sampling_params(values))
        conversation["model"] = model_path
        conversation_id = conversation["id"]
        reply = {"role": "assistant", "content": "", "images": [], "stats": None}
        shown = {**conversation, "messages": [*conversation["messages"], reply]}
        busy = gr.update(submit_btn=False, stop_btn=True, **({"value": None} if clear_input else {}))
        text, stats, status = "", None, "Waiting for the model…"
        yield chat.to_chatbot(shown, status), busy, self.conversation_list(conversation_id), conversation_id
        generation = None
        try:
            with user_errors("finish the reply"):
                for status in self._prepare_demo_if_needed(model_path):
                    yield chat.to_chatbot(shown, status), gr.skip(), gr.skip(), gr.skip()
                generation = self.engine.generate(request)
                with self._active_lock:
                    self._active[conversation_id] = generation
                last_yield = time.monotonic()
                for event in generation.events():
                    text += event.text
                    status = event.status or status
                    stats = event.stats
                    now = time.monotonic()
                    if event.done or now - last_yield >= STREAM_INTERVAL_S:
                        reply.update(content=text)
                        yield chat.to_chatbot(shown, status), gr.skip(), gr.skip(), gr.skip()
                        last_yield = now
        finally:
            if generation is not None:
                generation.stop()  # a no-op once finished; ends the reply if the browser went away
                with self._active_lock:
                    self._active.pop(conversation_id, None)
            if text or stats:
                chat.add_reply(conversation, text, stats)
            if self.store.save_conversation(conversation, create=False) is None:
                log.info("Conversation %s was deleted while its reply streamed; the reply is dropped",
                         conversation_id)
        yield chat.to_chatbot(conversation), gr.skip(), self.conversation_list(conversation_id), conversation_id

    def _prepare_demo_if_needed(self, model_path: str) -> Iterator[str]:
        """If the demo model is not converted yet, wait for it, yielding its progress messages."""
        if model_path != self.demo_path or demo.demo_model_ready(self.data_dir):
            return
        self.start_loading(model_path)
        job = self._demo_job
        while not job.done():
            yield self.engine.status().message or "Preparing the demo model…"
            wait([job], timeout=0.5)
        job.result()

    def input_ready(self) -> dict:
        """Handler: put the send button back on the textbox once a reply is over (or failed)."""
        return gr.update(submit_btn=True, stop_btn=False)


def _dot(state: str) -> str:
    """A coloured status dot (styled in assets/style.css)."""
    return f'<span class="status-dot {state}">●</span>'


def _import_gguf(source: Path, target: Path) -> Path:
    """Engine job: import a GGUF file (MLX reads it, so it runs on the engine thread)."""
    from .gguf import import_gguf

    return import_gguf(source, target)


def _ingest(upload: str, images_dir: Path) -> Path:
    """Validate and keep an uploaded image."""
    from .images import ingest_image

    return ingest_image(upload, images_dir)


def _file_path(item: Any) -> str:
    """The local path of an uploaded file, whether Gradio passed a string or a file dict."""
    return item if isinstance(item, str) else item.get("path") or item["name"]


def _text_of(content: Any) -> str:
    """The text in an edited chatbot message, whatever shape Gradio passed it in."""
    if isinstance(content, list):
        return " ".join(_text_of(part) for part in content if _text_of(part))
    if isinstance(content, dict):
        return content.get("text") or ""
    return str(content or "")


def _log_failure(action: str):
    """A future callback that logs a failed background job (the status line shows it too)."""
    def callback(future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            log.warning("%s failed: %s", action, exc)

    return callback
