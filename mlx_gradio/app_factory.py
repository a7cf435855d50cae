"""Wire the real services into a controller and build the app (used by app.py and the tests)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .controller import Controller
from .controller.access import Access
from .controller.settings import cache_budget_bytes, memory_budget_bytes
from .engine.prompt_files import PromptFiles
from .engine.thread import Engine
from .hub.search import HubService
from .store import Store
from .ui.blocks import build_app


def create_controller(data_dir: Path, access: Access | None = None, upload_dir: Path | None = None,
                      hub: HubService | None = None, cache_dir: Path | None = None) -> Controller:
    """A controller on a fresh engine thread and the store in `data_dir`.

    Uploads come from Gradio's folder, the Hub from `HF_ENDPOINT` and the model cache from
    `HF_HUB_CACHE` / `HF_HOME` unless given.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    store = Store(data_dir)
    app = store.settings.app()
    engine = Engine(cache_budget=cache_budget_bytes(app["cache_budget_gb"]),
                    idle_unload_s=60 * app["idle_unload_minutes"],
                    prompt_files=PromptFiles(data_dir / "prompt-caches", int(app["disk_cache_gb"] * 1e9)),
                    memory_budget=memory_budget_bytes(app["memory_budget_gb"]))
    engine.set_pinned(set(app["pinned_models"]))
    return Controller(engine, store, data_dir, access, upload_dir, hub, cache_dir)


def create_app(data_dir: Path, access: Access | None = None, hub: HubService | None = None,
               cache_dir: Path | None = None) -> tuple[gr.Blocks, Controller]:
    """The Blocks app and its controller for `data_dir`."""
    controller = create_controller(data_dir, access, hub=hub, cache_dir=cache_dir)
    return build_app(controller), controller
