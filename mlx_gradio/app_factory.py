"""Wire the real services into a controller and build the app (used by app.py and the tests)."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from .controller import Controller
from .engine import Engine
from .store import Store
from .ui.blocks import build_app

DB_NAME = "mlx-gradio.json"


def create_controller(data_dir: Path) -> Controller:
    """A controller on a fresh engine thread and the store in `data_dir`."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    return Controller(Engine(), Store(data_dir / DB_NAME), data_dir)


def create_app(data_dir: Path) -> tuple[gr.Blocks, Controller]:
    """The Blocks app and its controller for `data_dir`."""
    controller = create_controller(data_dir)
    return build_app(controller), controller
