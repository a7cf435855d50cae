"""Assemble the tabs into one `gr.Blocks` app and say how to launch it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..controller import Controller
from .chat_tab import build_chat_tab

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MAX_UPLOAD = "20mb"


def build_app(controller: Controller) -> gr.Blocks:
    """The whole mlx-gradio interface."""
    # No analytics: a local app does not report its use to anyone.
    with gr.Blocks(title="mlx-gradio", fill_height=True, analytics_enabled=False) as blocks:
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                build_chat_tab(controller, blocks)
    return blocks


def launch_options(controller: Controller) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` that every way of starting the app shares."""
    return {
        "theme": gr.themes.Soft(),
        "css_paths": [ASSETS / "style.css"],
        "allowed_paths": [str(controller.images_dir), str(controller.exports_dir)],
        "max_file_size": MAX_UPLOAD,
        "favicon_path": str(ASSETS / "favicon.svg"),
    }
