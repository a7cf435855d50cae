"""Assemble the tabs into one `gr.Blocks` app and say how to launch it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from ..controller import Controller
from .chat_events import ChatHandles
from .chat_tab import REPLY_SLOTS, build_chat_tab
from .models_tab import build_models_tab
from .servers_tab import build_servers_tab

ASSETS = Path(__file__).resolve().parents[2] / "assets"
MAX_UPLOAD = "20mb"
PAGE_THREADS = 40  # Gradio's own default, for pages and clicks: replies waiting for the model never take these
DELETE_CACHE = (3600, 24 * 3600)  # every hour, remove uploads and cached copies older than a day


def build_app(controller: Controller) -> gr.Blocks:
    """The whole mlx-gradio interface."""
    # No analytics: a local app does not report its use to anyone.
    with gr.Blocks(title="mlx-gradio", fill_height=True, analytics_enabled=False, delete_cache=DELETE_CACHE) as blocks:
        with gr.Tabs() as tabs:
            with gr.Tab("Chat", id="chat"):
                model, status = build_chat_tab(controller, blocks)
            chat = ChatHandles(tabs, model, status)
            with gr.Tab("Models", id="models", visible=False) as models:  # owners only
                build_models_tab(controller, blocks, chat)
            with gr.Tab("Servers", id="servers", visible=False) as servers:  # owners only
                build_servers_tab(controller, blocks, chat)

        def owners_tabs(request: gr.Request) -> tuple[dict, dict]:
            owner = controller.is_owner(request)
            return gr.update(visible=owner), gr.update(visible=owner)

        blocks.load(owners_tabs, None, [models, servers], api_visibility="private")
    return blocks


def launch_options(controller: Controller) -> dict[str, Any]:
    """Keyword arguments for `Blocks.launch` that every way of starting the app shares.

    Nothing in the data dir is served: images reach the page as copies in Gradio's cache, and
    exports are written to a temporary folder.
    """
    access = controller.access
    return {
        "theme": gr.themes.Soft(),
        "css_paths": [ASSETS / "style.css"],
        "allowed_paths": [],
        "blocked_paths": [str(controller.data_dir)],
        "max_file_size": MAX_UPLOAD,
        "favicon_path": str(ASSETS / "favicon.svg"),  # also the icon of the installed app (PWA)
        "pwa": True,  # the page can be installed as a desktop app, named after the Blocks' title
        "auth": access.authenticate if access.login_required else None,
        "max_threads": PAGE_THREADS + REPLY_SLOTS,
        "auth_message": "Sign in to mlx-gradio." if access.login_required else None,
    }
