"""The model picker: which models are offered, who may pick or add which, and loading them."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from dataclasses import replace
from pathlib import Path

import gradio as gr

from .. import errors
from ..engine.jobs import ChatRequest, Generation
from ..engine.thread import Engine, EngineStatus
from ..models import demo, hf_cache
from ..models.folders import LocalModel, describe_folder, is_vision_model, list_models, model_name
from ..serving.remote import ENDPOINT_PREFIX, RemoteTarget, check_answers, is_remote, start_remote
from ..store import Store
from .access import Access, Caller
from .feedback import message_for, public, user_errors

log = logging.getLogger(__name__)


class ModelsPart:
    """Handlers and helpers for the model picker, the status line and adding models."""

    def __init__(self, engine: Engine, store: Store, data_dir: Path, access: Access, cache_dir: Path,
                 remote_targets: Callable[[], list[RemoteTarget]] = list) -> None:
        self.engine = engine
        self.remote_targets = remote_targets  # ready servers of this app and endpoints the owners added
        self.store = store
        self.data_dir = Path(data_dir)
        self.access = access
        self.cache_dir = Path(cache_dir)
        self._demo_job: Future | None = None
        self._checked: dict[str, str | None] = {}  # endpoint key -> what its last check found (None: answered)

    # --- what is offered --------------------------------------------------------------------

    @property
    def demo_path(self) -> str:
        """Folder of the built-in demo model (it may not exist yet)."""
        return str(demo.demo_model_dir(self.data_dir))

    def demo_model(self) -> LocalModel:
        """The picker entry of the demo model, ready or not."""
        if demo.demo_model_ready(self.data_dir):
            return describe_folder(self.demo_path, "demo")
        return LocalModel(demo.DEMO_NAME, self.demo_path, "demo", vision=False, size_bytes=demo.DEMO_SIZE_BYTES)

    def available(self) -> list[LocalModel]:
        """Every model the picker offers (the same for every user)."""
        remote = [LocalModel(t.name, t.key, t.key.split(":")[0], t.vision, 0, key=t.key) for t in self.remote_targets()]
        return list_models(self.demo_model(), self.store.settings.app()["model_folders"],
                           hf_cache.loadable_models(self.cache_dir)) + remote

    def target(self, key: str) -> RemoteTarget:
        """The server or endpoint a picker value names; raises `ModelNotFound` if it is gone or not ready."""
        found = next((t for t in self.remote_targets() if t.key == key), None)
        if found is None:
            raise errors.ModelNotFound("That server is not running (or that endpoint was removed); pick another "
                                       "model, or start the server in the Servers tab.")
        return found

    def key_of(self, path: str) -> str:
        """The picker's value for a model folder, server or endpoint ("" for one that is not offered now)."""
        if is_remote(path):
            return path
        return next((m.key for m in self.available() if m.path == path), "")

    def name_of(self, path: str) -> str:
        """What to call a model in a sentence: a server's or endpoint's name (a gone one is still named), else
        the folder's."""
        if not is_remote(path):
            return model_name(path)
        found = next((t for t in self.remote_targets() if t.key == path), None)
        return found.name if found is not None else "a server that is not running"

    def generate(self, request: ChatRequest) -> Generation:
        """A reply from the engine, or from the server or endpoint the request names."""
        if is_remote(request.model_path):
            return start_remote(self.target(request.model_path), request)
        return self.engine.generate(request)

    def selected(self, caller: Caller) -> str:
        """The model this user picked last, else the owner's, else the demo model."""
        return self.store.settings.user(caller.user)["model"] or self.demo_path

    def model_for(self, caller: Caller, path: str | None) -> str:
        """The model folder to use for `path`: one of the offered models, or (owners only) any model folder."""
        if not path:
            return self.selected(caller)
        if not isinstance(path, str):
            raise errors.ModelNotFound("Pick a model from the list.")
        if path in (self.demo_path, *self.store.settings.app()["model_folders"]):
            return path
        offered = next((m for m in self.available() if path in (m.key, m.path)), None)  # scans the HF cache
        if offered is not None:
            return offered.path
        if is_remote(path):
            return self.target(path).key  # says the server is not running
        if not caller.is_owner:
            raise errors.AccessDenied("That model is not offered here; pick one from the list.")
        return describe_folder(path, "folder").path

    def is_vision(self, path: str) -> bool:
        """Whether a model reads images (the demo model does not, even before it exists)."""
        if is_remote(path):
            return self.target(path).vision
        return path != self.demo_path and is_vision_model(path)

    # --- loading ----------------------------------------------------------------------------

    def start_loading(self, path: str) -> None:
        """Queue the load of `path` on the engine (fetching the demo model first if needed); a server or
        endpoint has nothing to load."""
        if is_remote(path):
            return
        if path == self.demo_path and not demo.demo_model_ready(self.data_dir):
            if self._demo_job is None or self._demo_job.done():
                self._demo_job = self.engine.call(self._prepare_demo)
        self.engine.load(path).add_done_callback(_log_failure(f"Loading {path}"))

    def _prepare_demo(self) -> Path:
        """Engine job: fetch and convert the demo model, reporting progress in the status."""
        def report(message: str) -> None:
            self.engine.set_status(state="loading", model_path=self.demo_path, model_name=demo.DEMO_NAME,
                                   message=message)

        try:
            return demo.prepare_demo_model(self.data_dir, report)
        except errors.DemoModelUnavailable as exc:
            self.engine.set_status(state="error", model_path=self.demo_path, message=message_for(exc))
            raise
        except Exception as exc:  # noqa: BLE001 - whatever broke, the status must not stay on "loading"
            log.exception("Preparing the demo model failed")
            self.engine.set_status(state="error", model_path=self.demo_path,
                                   message=f"The demo model could not be prepared: {exc}")
            raise errors.DemoModelUnavailable(f"The demo model could not be prepared: {exc}") from exc

    def wait_for_demo(self, model_path: str) -> Iterator[str]:
        """If the demo model is not converted yet, wait for it, yielding its progress messages."""
        if model_path != self.demo_path or demo.demo_model_ready(self.data_dir):
            return
        self.start_loading(model_path)
        job = self._demo_job
        while not job.done():
            yield self.engine.status().message or "Preparing the demo model…"
            wait([job], timeout=0.5)
        job.result()

    def prepare(self, model_path: str) -> None:
        """Block until `model_path` can be used (the demo model is fetched and converted first)."""
        for _ in self.wait_for_demo(model_path):
            pass

    def resolve(self, spec: str) -> str:
        """A model folder for a path or a Hugging Face repo id in the local cache (the --model flag)."""
        if Path(spec).expanduser().is_dir():
            return describe_folder(spec, "folder").path
        for model in self.available():
            if model.name == spec:
                return model.path
        raise errors.ModelNotFound(f"“{spec}” is neither a model folder nor a model in the Hugging Face cache.")

    def startup(self, model: str | None = None) -> None:
        """Select `model` (or the owner's last one, or the demo) and start loading it in the background."""
        path = self.resolve(model) if model else (self.store.settings.app()["model"] or self.demo_path)
        if model:
            self._offer(path)
        self.start_loading(path)

    def _offer(self, path: str) -> None:
        """Make `path` the owners' model, adding it to the picker if it is not there yet."""
        folders = self.store.settings.app()["model_folders"]
        known = {self.demo_path, *folders} | {m.path for m in self.available()}
        self.store.settings.update_app(model=path, model_folders=folders if path in known else [*folders, path])

    def remember(self, caller: Caller, path: str) -> None:
        """Save `path` as this user's model; an owner's pick is also offered to everyone and the default."""
        self.store.settings.update_user(caller.user, model=path)
        if caller.is_owner:
            self._offer(path)

    # --- handlers ---------------------------------------------------------------------------

    def status(self, request: gr.Request) -> EngineStatus:
        """Handler: the state of this user's model for the status line (a server's, or the engine's)."""
        with user_errors("show the model's status"):
            caller = self.access.caller(request)
        return self.status_for(caller)

    def status_for(self, caller: Caller) -> EngineStatus:
        """The status of this user's model (a server's, or the engine's); a guest's names no path or URL."""
        selected = self.selected(caller)
        status = self.remote_status(selected) or self.engine.status().of(selected)
        if caller.is_owner:
            return status
        return replace(status, model_path=None, message=public(status.message))

    def check(self, path: str) -> str | None:
        """Ask an endpoint for one token now; what went wrong (None: it answered) is what its status line says
        until the next check. A server of this app needs none: its supervisor knows."""
        if not path.startswith(ENDPOINT_PREFIX):
            return None
        target = self.target(path)
        problem = self._checked[path] = check_answers(target)
        log.log(logging.WARNING if problem else logging.INFO, "Endpoint %s: %s", target.name, problem or "it answers")
        return problem

    def remote_status(self, path: str) -> EngineStatus | None:
        """For a server or endpoint: ready if it is offered and (an endpoint) answered its last check, else an
        error; None for a model folder."""
        if not is_remote(path):
            return None
        try:
            target = self.target(path)
            problem = self._checked[path] if path in self._checked else self.check(path)
        except errors.ModelNotFound as exc:
            log.debug("The status line of %s: %s", path, exc)
            return EngineStatus(state="error", message=str(exc))
        if problem:
            return EngineStatus(state="error", model_path=path, model_name=target.name,
                                message=f"{target.name} does not answer: {problem}")
        return EngineStatus(state="ready", model_path=path, model_name=target.name, vision=target.vision,
                            message=f"answers from {target.base_url}")

    def engine_status(self, request: gr.Request) -> EngineStatus:
        """Handler: what the in-process engine holds (memory, caches) for the Servers tab; owners only."""
        with user_errors("show the engine"):
            self.access.require_owner(self.access.caller(request), "see the engine")
        return self.engine.status()

    def load_selected(self, request: gr.Request) -> EngineStatus:
        """Handler: load this owner's chat model into the engine now."""
        with user_errors("load the model"):
            caller = self.access.caller(request)
            self.access.require_owner(caller, "load models")
            path = self.selected(caller)
        self.start_loading(path)
        return self.engine.status()

    def unload(self, request: gr.Request, model_path: str = "") -> EngineStatus:
        """Handler: free one loaded model (none named: every one) and its caches; the next message loads it
        again."""
        with user_errors("unload the model"):
            self.access.require_owner(self.access.caller(request), "unload models")
            self.engine.unload(model_path or None).result()
        return self.engine.status()

    def select(self, path: str, request: gr.Request) -> EngineStatus:
        """Handler: the user picked a model; remember it, start loading it."""
        with user_errors("load that model"):
            caller = self.access.caller(request)
            if not path:
                return self.engine.status()
            path = self.model_for(caller, path)
            self.use(caller, path)
            if is_remote(path):
                self.check(path)  # "ready" on the status line means it answered just now
        return self.status_for(caller)

    def use(self, caller: Caller, path: str) -> None:
        """Remember a model as this user's choice and start loading it (a no-op when it is loaded)."""
        if self.store.settings.user(caller.user)["model"] != path:
            self.remember(caller, path)
        self.start_loading(path)

    def add_folder(self, folder: str, request: gr.Request) -> tuple[list[LocalModel], str]:
        """Handler: add a model folder by path and select it; returns the models and the selection."""
        with user_errors("add that folder"):
            caller = self.access.caller(request)
            self.access.require_owner(caller, "add model folders")
            model = describe_folder(str(folder or "").strip(), "folder")
            self.remember(caller, model.path)
        self.start_loading(model.path)
        gr.Info(f"Added {model.name}.")
        return self.available(), model.path

    def import_gguf(self, gguf_path: str, request: gr.Request,
                    name: str = "") -> Iterator[tuple[list[LocalModel] | None, str | None, str]]:
        """Handler: convert a GGUF file into an mlx-lm folder under the data dir (named `name`, else after the
        file) and select it. Yields (models or None, selected path or None, note).
        """
        from ..models.gguf import check_convertible

        with user_errors("import that GGUF file"):
            caller = self.access.caller(request)
            self.access.require_owner(caller, "import files")
            source = Path(str(gguf_path or "").strip()).expanduser()
            if not source.is_file():
                raise errors.UnsupportedGGUF(f"There is no file at {source}.")
            check_convertible(source)
        target = self._import_target(name or source.stem)
        yield None, None, f"Converting {source.name}… (this can take a minute for large files)"
        with user_errors("import that GGUF file"):
            self.engine.call(_import_gguf, source, target).result()
            self.remember(caller, str(target))
        self.start_loading(str(target))
        yield self.available(), str(target), ""

    def _import_target(self, name: str) -> Path:
        """A new folder under the data dir's models for an imported file; never an existing model."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(name).name.removesuffix(".gguf")).lstrip(".-") or "imported-model"
        target = self.data_dir / "models" / stem
        n = 1
        while target.exists():
            n += 1
            target = self.data_dir / "models" / f"{stem}-{n}"
        return target


def _import_gguf(source: Path, target: Path) -> Path:
    """Engine job: import a GGUF file (MLX reads it, so it runs on the engine thread)."""
    from ..models.gguf import import_gguf

    try:
        return import_gguf(source, target)
    except errors.AppError:
        raise
    except OSError as exc:
        raise errors.StoreWriteFailed(f"{target} could not be written ({exc.strerror or exc}).") from exc
    except Exception as exc:  # noqa: BLE001 - a file whose header looked right but whose content did not convert
        log.exception("Importing %s failed", source)
        raise errors.UnsupportedGGUF(f"{source.name} could not be converted: {type(exc).__name__}: {exc}") from exc


def _log_failure(action: str) -> Callable[[Future], None]:
    """A future callback that logs a failed background job (the status line shows it too)."""
    def callback(future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            log.warning("%s failed: %s", action, exc)

    return callback
