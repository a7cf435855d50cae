"""The Models tab's list of what is on this machine: use a model in the chat, delete it. Owners only.

Deleting is planned and shown before it happens, and only ever removes a repository folder of
the Hugging Face cache or a model folder under the app's data dir; a folder added from elsewhere
is only taken off the list.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import gradio as gr

from .. import errors
from ..engine.thread import Engine
from ..hub.downloads import Downloads
from ..models import hf_cache
from ..models.fit import weights_verdict
from ..models.gguf_sources import FoundGGUF, find_gguf_files
from ..models.memory import MachineMemory
from ..store import Store
from .access import Access
from .feedback import user_errors
from .models import ModelsPart

log = logging.getLogger(__name__)

HF_PREFIX, DIR_PREFIX = "hf:", "dir:"


@dataclass(frozen=True)
class LocalEntry:
    """One row of the Local models list."""

    key: str  # "hf:owner/name" or "dir:/path", what the buttons act on
    name: str
    where: str  # "HF cache", "built-in demo", "imported", "folder"
    path: str
    size_bytes: int
    last_used: datetime | None
    complete: bool
    vision: bool
    fit: str


@dataclass(frozen=True)
class DeleteView:
    """What Delete will do, shown before it is confirmed."""

    key: str
    name: str
    freed_bytes: int
    removes_files: bool  # False: the folder is only taken off the list


class LibraryPart:
    """Handlers for the models on this machine."""

    def __init__(self, models: ModelsPart, engine: Engine, store: Store, access: Access, downloads: Downloads,
                 memory: Callable[[], MachineMemory], home: Path | None = None) -> None:
        self.models = models
        self.downloads = downloads
        self.engine = engine
        self.store = store
        self.access = access
        self.cache_dir = downloads.cache_dir
        self.memory = memory
        self.home = Path(home or Path.home())  # where LM Studio and Ollama keep their models

    @property
    def imported_dir(self) -> Path:
        return self.models.data_dir / "models"

    def list(self, request: gr.Request) -> list[LocalEntry]:
        """Handler: the demo model, added folders, imported models and the Hugging Face cache."""
        with user_errors("list the models on this machine"):
            self.access.require_owner(self.access.caller(request), "manage models")
        memory = self.memory()
        entries = []
        for model in self.models.available():
            if model.source not in ("demo", "folder"):  # the cache is listed below; servers are not on disk
                continue
            where = {"demo": "built-in demo"}.get(model.source) or (
                "imported" if Path(model.path).parent == self.imported_dir else "folder")
            entries.append(LocalEntry(f"{DIR_PREFIX}{model.path}", model.name, where, model.path, model.size_bytes,
                                      None, True, model.vision, weights_verdict(model.size_bytes, memory)))
        for cached in hf_cache.scan(self.cache_dir):
            entries.append(LocalEntry(f"{HF_PREFIX}{cached.repo_id}", cached.repo_id, "HF cache", cached.path,
                                      cached.size_on_disk, cached.last_used, cached.complete, cached.vision,
                                      weights_verdict(cached.size_on_disk, memory) if cached.complete else "—"))
        return entries

    def downloaded(self, repo_id: Any, request: gr.Request) -> bool:
        """Handler: whether the cache holds a complete snapshot of `repo_id` (one scan of the cache)."""
        with user_errors("look at the models on this machine"):
            self.access.require_owner(self.access.caller(request), "manage models")
        return any(m.repo_id == repo_id and m.complete for m in hf_cache.scan(self.cache_dir))

    def other_apps(self, request: gr.Request) -> list[FoundGGUF]:
        """Handler: GGUF files LM Studio and Ollama downloaded, and whether each can be imported."""
        with user_errors("look for LM Studio and Ollama models"):
            self.access.require_owner(self.access.caller(request), "import models")
        return find_gguf_files(self.home)

    def import_found(self, path: Any, request: gr.Request) -> Iterator[tuple]:
        """Handler: import one of the files `other_apps` lists (and no other path), named as that app names it."""
        with user_errors("import that file"):
            self.access.require_owner(self.access.caller(request), "import models")
            found = next((f for f in find_gguf_files(self.home) if f.path == path), None)
            if found is None:
                raise errors.UnsupportedGGUF("That file is no longer there; press “Look again”.")
        yield from self.models.import_gguf(found.path, request, name=found.name.replace(":", "-"))

    def use(self, key: Any, request: gr.Request) -> str:
        """Handler: make a model this owner's chat model and start loading it; returns its picker value."""
        with user_errors("use that model"):
            caller = self.access.caller(request)
            self.access.require_owner(caller, "manage models")
            path = self._loadable_path(str(key or ""))
            self.models.remember(caller, path)
        self.models.start_loading(path)
        return path

    def plan_delete(self, key: Any, request: gr.Request) -> DeleteView:
        """Handler: what deleting a model would free, before anything is deleted."""
        with user_errors("delete that model"):
            self.access.require_owner(self.access.caller(request), "delete models")
            return self._plan(str(key or ""))

    def delete(self, key: Any, request: gr.Request) -> DeleteView:
        """Handler: delete a model (unloading it first if the engine holds it)."""
        with user_errors("delete that model"):
            self.access.require_owner(self.access.caller(request), "delete models")
            view = self._plan(str(key or ""))
            path = self._path_of(view.key)
            loaded = {m.path for m in self.engine.status().models}
            for folder in loaded & {path, str(Path(path).absolute())} if path else ():
                self.engine.unload(folder).result()
            try:
                if view.key.startswith(HF_PREFIX):
                    hf_cache.delete(self.cache_dir, hf_cache.plan_delete(self.cache_dir, view.name))
                elif view.removes_files:
                    folder = Path(path)
                    folder.unlink() if folder.is_symlink() else shutil.rmtree(folder)
            except OSError as exc:
                raise errors.StoreWriteFailed(f"{view.name} could not be deleted ({exc.strerror or exc}).") from exc
            self._forget(path)
        gr.Info(f"Deleted {view.name}." if view.removes_files else f"Took {view.name} off the list.")
        return view

    # --- helpers ----------------------------------------------------------------------------

    def _plan(self, key: str) -> DeleteView:
        if key.startswith(HF_PREFIX):
            download = self.downloads.get(key.removeprefix(HF_PREFIX))
            if download is not None and download.active:
                raise errors.DownloadInProgress(f"{download.repo_id} is downloading; cancel it first.")
            plan = hf_cache.plan_delete(self.cache_dir, key.removeprefix(HF_PREFIX))
            return DeleteView(key, plan.repo_id, plan.freed_bytes, True)
        path = self._listed_folder(key)
        inside = Path(path).parent == self.imported_dir
        size = sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) if inside else 0
        return DeleteView(key, Path(path).name, size if not Path(path).is_symlink() else 0, inside)

    def _listed_folder(self, key: str) -> str:
        """The folder a "dir:" key names, if the app lists it; never any other path."""
        path = key.removeprefix(DIR_PREFIX)
        folders = {m.path for m in self.models.available() if m.source in ("demo", "folder")}
        if not key.startswith(DIR_PREFIX) or path not in folders:
            raise errors.ModelNotFound("That model is not in the list any more; refresh the list.")
        return path

    def _loadable_path(self, key: str) -> str:
        if key.startswith(HF_PREFIX):
            repo_id = key.removeprefix(HF_PREFIX)
            entry = next((m for m in hf_cache.scan(self.cache_dir) if m.repo_id == repo_id), None)
            if entry is None:
                raise errors.ModelNotFound(f"{repo_id} is not in the Hugging Face cache.")
            if not entry.complete:
                raise errors.ModelNotFound(f"{repo_id} is only partly downloaded; resume its download first.")
            return entry.path
        return self._listed_folder(key)

    def _path_of(self, key: str) -> str:
        if key.startswith(HF_PREFIX):
            return next((m.path for m in hf_cache.scan(self.cache_dir) if m.repo_id == key.removeprefix(HF_PREFIX)),
                        "")
        return key.removeprefix(DIR_PREFIX)

    def _forget(self, path: str) -> None:
        """No setting points at a deleted model any more."""
        settings = self.store.settings.app()
        folders = [f for f in settings["model_folders"] if f != path]
        model = None if settings["model"] == path else settings["model"]
        self.store.settings.update_app(model=model, model_folders=folders)
        log.info("Forgot %s in the settings", path)
