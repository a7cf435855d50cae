"""The App API panel of the Servers tab: on and off, host and port, keys, the latest requests. Wiring only."""

from __future__ import annotations

from typing import Any

import gradio as gr

from ..controller import Controller
from ..controller.api import ApiView
from . import api_render
from .fields import checked


class ApiEvents:
    """Handlers of the App API panel; `gr.Request` comes first."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    @staticmethod
    def outputs(view: ApiView) -> tuple:
        """(status, on, host, port, origins, keys, requests)."""
        keys = gr.update(choices=[(f"{k.name} ({k.hint}…)", k.id) for k in view.keys], value=None)
        return (api_render.status_markdown(view), view.running, view.host, view.port, ", ".join(view.origins),
                keys, api_render.requests_markdown(view.requests))

    def show(self, request: gr.Request) -> tuple:
        if not self.controller.is_owner(request):  # guests never see the panel (its tab is hidden from them)
            return (gr.skip(),) * 7
        return self.outputs(self.controller.api.view(request))

    def apply(self, request: gr.Request, enabled: bool, host: str, port: Any, origins: str) -> tuple:
        return self.outputs(self.controller.api.apply(enabled, host, port, origins, request))

    def make_key(self, request: gr.Request, name: str) -> tuple:
        view, secret = self.controller.api.create_key(name, request)
        gr.Info("Copy the new key now: it is not shown again.")
        return (*self.outputs(view), gr.update(value=secret, visible=True), "")

    def revoke(self, request: gr.Request, key_id: str) -> tuple:
        return (*self.outputs(self.controller.api.revoke_key(key_id, request)), gr.update(value="", visible=False))

    def live(self, request: gr.Request) -> tuple:
        if not self.controller.is_owner(request):
            return gr.skip(), gr.skip()
        view = self.controller.api.view(request)
        return api_render.status_markdown(view), api_render.requests_markdown(view.requests)


def build_api_panel(controller: Controller, blocks: gr.Blocks) -> gr.Timer:
    """Lay out the panel and wire it; returns its timer, which ticks while the Servers tab is shown."""
    events = ApiEvents(controller)
    with gr.Accordion("App API: the models of this app for other programs (OpenAI and Anthropic APIs)", open=True,
                      elem_id="api-panel"):
        status = gr.Markdown(elem_id="api-status")
        with gr.Row():
            enabled = gr.Checkbox(label="On", scale=0, min_width=80, elem_id="api-on")
            host = gr.Textbox(label="Host", max_lines=1, info="127.0.0.1: this machine only; another needs a key")
            port = checked(gr.Number(label="Port", precision=0, minimum=1024, maximum=65535, elem_id="api-port"))
            origins = gr.Textbox(label="Web pages that may call it (origins, comma-separated)", max_lines=1,
                                 placeholder="none: programs only, no web page")
            apply = gr.Button("Apply", size="sm", scale=0, min_width=80, elem_id="api-apply")
        with gr.Row():
            key_name = gr.Textbox(label="New key's name", placeholder="editor", max_lines=1)
            make_key = gr.Button("Make a key", size="sm", scale=0, min_width=100, elem_id="api-make-key")
            key_pick = gr.Dropdown(label="Keys", choices=[])
            revoke = gr.Button("Revoke", size="sm", variant="stop", scale=0, min_width=80)
        secret = gr.Textbox(label="The new key: copy it now, it is not shown again", visible=False,
                            interactive=False, buttons=["copy"], elem_id="api-secret")
        requests = gr.Markdown(elem_id="api-requests")
    timer = gr.Timer(2.0, active=False)
    shown = [status, enabled, host, port, origins, key_pick, requests]
    blocks.load(events.show, None, shown, api_visibility="private")
    apply.click(events.apply, [enabled, host, port, origins], shown, api_name="apply_api")
    make_key.click(events.make_key, key_name, [*shown, secret, key_name], api_name="make_api_key")
    revoke.click(events.revoke, key_pick, [*shown, secret], api_name="revoke_api_key")
    timer.tick(events.live, None, [status, requests], show_progress="hidden", api_visibility="private")
    return timer
