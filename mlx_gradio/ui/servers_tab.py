"""The Servers tab (owners only): the in-process engine, a profile form, Start / Stop / Restart, and a live
view of the servers.

The live view refreshes once a second only while this tab is the one shown.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from ..controller import Controller
from ..serving.distributed_hosts import COPY_BUTTON
from ..serving.distributed_plan import PIPELINE, TENSOR
from ..serving.profiles import BACKENDS, DISTRIBUTED, TEXT, VISION, ServerProfile
from . import server_render
from .api_panel import build_api_panel
from .chat_events import ChatHandles, picker_choices
from .fields import checked

FIELDS = ("name", "model", "kind", "host", "port", "max_tokens", "temperature", "top_p", "prompt_cache_size",
          "api_key", "extra_args", "allowed_origins", "start_with_app", "keep_running", "restart_when_stuck",
          "network_ok", "hosts", "split_mode", "backend")
TAB_ID = "servers"
COPY_REFRESH_S = 1.0  # how often a model copy's progress is shown (its hosts are asked less often)


class ServersEvents:
    """Handlers for the Servers tab; `gr.Request` and event data come first (Gradio fills them in there)."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    def form(self, profile: ServerProfile) -> tuple:
        """(profile id, its fields...)."""
        return (profile.id, *(getattr(profile, name) for name in FIELDS))

    def choices(self, request: gr.Request, selected: str, draft: ServerProfile | None = None) -> dict:
        """The saved profiles, and the one being filled in (named as not saved yet) when there is one."""
        choices = [(p.name, p.id) for p in self.controller.servers.profiles(request)]
        if draft is not None:
            choices.append((f"{draft.name} (new, not saved yet)", draft.id))
        return gr.update(choices=choices, value=draft.id if draft is not None else selected or None)

    def models(self) -> dict:
        return gr.update(choices=[(m.label, m.path) for m in self.controller.models.available()])

    def load(self, request: gr.Request) -> tuple:
        """The first saved profile, or a new one for the chat's model on a free port (Start is one click)."""
        if not self.controller.is_owner(request):
            return (gr.skip(),) * (len(FIELDS) + 8)
        profiles = self.controller.servers.profiles(request)
        draft = None if profiles else self.controller.servers.draft(request)
        profile = profiles[0] if profiles else draft
        app = self.controller.store.settings.app()
        return (self.choices(request, profile.id, draft), self.models(), *self.form(profile),
                self.engine(request), app["idle_unload_minutes"], app["memory_budget_gb"],
                *self.endpoints(request))

    def save_idle(self, request: gr.Request, minutes: Any) -> float:
        return self.controller.settings.save_idle_unload(minutes, request)

    def save_budget(self, request: gr.Request, budget_gb: Any) -> tuple:
        return self.controller.settings.save_memory_budget(budget_gb, request), self.engine(request)

    def pick(self, request: gr.Request, profile_id: str) -> tuple:
        profile = next((p for p in self.controller.servers.profiles(request) if p.id == profile_id), None)
        return self.form(profile) if profile else (gr.skip(),) * (len(FIELDS) + 1)

    def new(self, request: gr.Request) -> tuple:
        draft = self.controller.servers.draft(request)
        return (self.choices(request, "", draft), *self.form(draft))

    def save(self, request: gr.Request, profile_id: str, *values: Any) -> tuple:
        profile = self.controller.servers.save({"id": profile_id, **dict(zip(FIELDS, values, strict=True))}, request)
        gr.Info(f"Saved {profile.name}.")
        return self.choices(request, profile.id), profile.id

    def start(self, request: gr.Request, profile_id: str, *values: Any) -> tuple:
        """Save the form, then start its server; the live view takes over."""
        choices, profile_id = self.save(request, profile_id, *values)
        self.controller.servers.start(profile_id, request)
        return choices, profile_id, *self.watch(request, profile_id)

    def stop(self, request: gr.Request, profile_id: str) -> tuple:
        self.controller.servers.stop(profile_id, request)
        return self.watch(request, profile_id)

    def restart(self, request: gr.Request, profile_id: str, *values: Any) -> tuple:
        choices, profile_id = self.save(request, profile_id, *values)
        self.controller.servers.restart(profile_id, request)
        return choices, profile_id, *self.watch(request, profile_id)

    def plan(self, request: gr.Request, profile_id: str, *values: Any) -> str:
        return self.controller.servers.plan({"id": profile_id, **dict(zip(FIELDS, values, strict=True))}, request)

    def copy(self, request: gr.Request, profile_id: str, *values: Any,
             progress: gr.Progress = gr.Progress()) -> Iterator[tuple]:
        """Save the form, copy its model to the hosts that lack it, and show the progress until the copy ends,
        then the plan again."""
        choices, profile_id = self.save(request, profile_id, *values)
        status = self.controller.servers.copy_model(profile_id, request)
        while status is not None and status.running:
            progress(status.fraction, desc=f"Copying to {', '.join(status.plan.targets)}")
            yield choices, profile_id, server_render.copy_markdown(status), gr.skip()
            time.sleep(COPY_REFRESH_S)
            status = self.controller.servers.copy_status(profile_id, request)
        yield choices, profile_id, server_render.copy_markdown(status), self.plan(request, profile_id, *values)

    def stop_copy(self, request: gr.Request, profile_id: str) -> str:
        return server_render.copy_markdown(self.controller.servers.stop_copy(profile_id, request))

    @staticmethod
    def kind_changed(kind: str) -> dict:
        """The hosts, split and backend show for a distributed profile only."""
        return gr.update(visible=kind == DISTRIBUTED)

    def duplicate(self, request: gr.Request, profile_id: str) -> tuple:
        copy = self.controller.servers.duplicate(profile_id, request)
        return (self.choices(request, copy.id), *self.form(copy))

    def delete(self, request: gr.Request, profile_id: str) -> tuple:
        self.controller.servers.delete(profile_id, request)
        choices, *form = self.new(request)
        return (*form, choices)

    def watch(self, request: gr.Request, profile_id: str) -> tuple:
        """(the servers' live view, the picked server's log tail, how to call it)."""
        watched = self.controller.servers.watch(request)
        ranks = {s.profile_id: self.controller.servers.ranks(s.profile_id, request) for s, _ in watched
                 if s.kind == DISTRIBUTED}
        status = next((s for s, _ in watched if s.profile_id == profile_id), None)
        log = self.controller.servers.log_tail(profile_id, request) if profile_id else ""
        has_key = bool(status and status.kind == VISION and any(
            p.api_key for p in self.controller.servers.profiles(request) if p.id == profile_id))
        return server_render.servers_html(watched, ranks), log, server_render.snippets(status, has_key)

    def engine(self, request: gr.Request) -> str:
        return server_render.engine_markdown(self.controller.models.engine_status(request))

    def in_memory(self, request: gr.Request, picked: str | None) -> tuple:
        """(the loaded models to pick from, the picked one kept if it is still loaded, whether it is pinned)."""
        models = self.controller.models.engine_status(request).models
        picked = picked if any(m.path == picked for m in models) else (models[0].path if models else None)
        pinned = any(m.path == picked and m.pinned for m in models)
        return gr.update(choices=[(m.name, m.path) for m in models], value=picked), pinned

    def load_engine(self, request: gr.Request, picked: str | None) -> tuple:
        self.controller.models.load_selected(request)
        return self.engine(request), *self.in_memory(request, picked)

    def unload_engine(self, request: gr.Request, picked: str | None) -> tuple:
        """Unload the picked model (none picked: every one)."""
        self.controller.models.unload(request, picked or "")
        return self.engine(request), *self.in_memory(request, None)

    def pin_engine(self, request: gr.Request, picked: str | None, pinned: bool) -> str:
        if picked:
            self.controller.settings.pin(picked, bool(pinned), request)
        return self.engine(request)

    def pick_engine(self, request: gr.Request, picked: str | None) -> bool:
        return self.in_memory(request, picked)[1]

    def tick(self, request: gr.Request, profile_id: str, offered: list, held: list, picked: str | None) -> tuple:
        """The live view and the engine; when a server became ready or went away, the chat's picker too, and
        when the engine's models changed, the list to pick one from."""
        view = self.watch(request, profile_id)  # the owner check comes first
        ready = sorted(t.key for t in self.controller.servers.targets())
        picker = picker_choices(self.controller) if ready != sorted(offered or []) else gr.skip()
        loaded = sorted(m.path for m in self.controller.models.engine_status(request).models)
        memory = self.in_memory(request, picked) if loaded != sorted(held or []) else (gr.skip(), gr.skip())
        return (*view, self.engine(request), picker, ready, *memory, loaded)

    # --- endpoints --------------------------------------------------------------------------

    def endpoints(self, request: gr.Request) -> tuple:
        """(the endpoints as text, the picker to remove one)."""
        found = self.controller.servers.endpoints(request)
        lines = [f"- **{e['name']}** · `{e['base_url']}` · model `{e['model']}`"
                 + (" · vision" if e.get("vision") else "") + (" · key set" if e["has_key"] else "") for e in found]
        return ("\n".join(lines) or "*No endpoints yet.*",
                gr.update(choices=[(e["name"], e["id"]) for e in found], value=None))

    def add_endpoint(self, request: gr.Request, name: str, url: str, key: str, model: str, vision: bool) -> tuple:
        endpoint = self.controller.servers.add_endpoint(name, url, key, model, vision, request)
        if endpoint["problem"]:
            gr.Warning(f"{endpoint['name']} is in the chat's model list, but does not answer: {endpoint['problem']}")
        else:
            gr.Info(f"{endpoint['name']} answers; it is in the chat's model list.")
        return ("", "", "", "", False, *self.endpoints(request), picker_choices(self.controller))

    def remove_endpoint(self, request: gr.Request, endpoint_id: str) -> tuple:
        self.controller.servers.remove_endpoint(endpoint_id, request)
        return (*self.endpoints(request), picker_choices(self.controller))

    def tab_selected(self, event: gr.SelectData) -> tuple[gr.Timer, gr.Timer]:
        """The live views (servers, the API's requests) tick only while the Servers tab is shown."""
        shown = event.value == "Servers" or getattr(event, "id", None) == TAB_ID
        return gr.Timer(active=shown), gr.Timer(active=shown)


def build_servers_tab(controller: Controller, blocks: gr.Blocks, chat: ChatHandles) -> None:
    """Lay out the Servers tab inside the current Blocks context and wire it to the controller."""
    events = ServersEvents(controller)
    profile_id = gr.State("")
    api_timer = build_api_panel(controller, blocks)
    with gr.Group(elem_id="engine-panel"):
        engine = gr.Markdown(elem_id="engine-status")
        with gr.Row(equal_height=False):
            engine_model = gr.Dropdown(label="Loaded model", choices=[], scale=2, min_width=220,
                                       elem_id="engine-model")
            with gr.Column(scale=1, min_width=200):
                pin = gr.Checkbox(label="Keep it loaded (pin)", elem_id="engine-pin")
                with gr.Row():
                    unload_engine = gr.Button("Unload", size="sm", min_width=80, elem_id="engine-unload")
                    load_engine = gr.Button("Load the chat's model", size="sm", min_width=160)
            idle = checked(gr.Number(label="Unload each after idle minutes (0 = never)", minimum=0, scale=1,
                                     min_width=200, elem_id="engine-idle"))
            budget = checked(gr.Number(label="Memory for models, GB (0 = automatic)", minimum=0, scale=1,
                                       min_width=200, elem_id="engine-budget"))
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=360):
            profile = gr.Dropdown(label="Profile", choices=[], elem_id="server-profile")
            with gr.Row():
                new = gr.Button("New", size="sm", min_width=60)
                duplicate = gr.Button("Duplicate", size="sm", min_width=60)
                delete = gr.Button("Delete profile", variant="stop", size="sm", min_width=60)
            name = gr.Textbox(label="Name", max_lines=1, elem_id="server-name")
            model = gr.Dropdown(label="Model", choices=[], elem_id="server-model")
            kind = gr.Radio([TEXT, VISION, DISTRIBUTED], elem_id="server-kind",
                            label="Server (text: mlx_lm.server, vision: mlx_vlm.server, distributed: mlx_lm.server "
                                  "over several machines with mlx.launch)")
            with gr.Group(visible=False) as split_group:
                hosts = gr.Textbox(label="Hosts, one per rank (rank 0 first, answering on the host and port below)",
                                   lines=3, placeholder="127.0.0.1\n127.0.0.1\n127.0.0.1", elem_id="server-hosts",
                                   info="ssh names or addresses reachable without a password; 127.0.0.1 for a rank "
                                        "on this machine; or a hostfile's JSON")
                with gr.Row():
                    split_mode = gr.Radio([TENSOR, PIPELINE], label="Split", value=TENSOR)
                    backend = gr.Radio(list(BACKENDS), label="Backend (ring: TCP; jaccl: RDMA over Thunderbolt 5)",
                                       value="ring")
                check_plan = gr.Button("Check the plan", size="sm", elem_id="server-plan-check")
                plan = gr.Markdown(elem_id="server-plan")
                with gr.Row():
                    copy = gr.Button(COPY_BUTTON, size="sm", elem_id="server-copy")
                    stop_copy = gr.Button("Stop copying", size="sm", elem_id="server-copy-stop")
                copy_note = gr.Markdown(elem_id="server-copy-note")
            with gr.Row():
                host = gr.Textbox(label="Host", max_lines=1, info="127.0.0.1: this machine only")
                port = checked(gr.Number(label="Port", precision=0, minimum=1024, maximum=65535, elem_id="server-port"))
            with gr.Accordion("Defaults, key and arguments", open=False):
                max_tokens = checked(gr.Number(label="Max tokens per reply", precision=0, minimum=1))
                temperature = checked(gr.Slider(0, 2, step=0.05, label="Temperature (mlx-lm)"))
                top_p = checked(gr.Slider(0.01, 1, step=0.01, label="Top p (mlx-lm)"))
                prompt_cache_size = checked(gr.Number(label="Prompt caches kept (mlx-lm)", precision=0, minimum=0))
                api_key = gr.Textbox(label="API key (mlx-vlm only; mlx-lm's server has none)", type="password",
                                     max_lines=1)
                extra_args = gr.Textbox(label="Extra arguments", placeholder="--kv-bits 8", max_lines=1)
                allowed_origins = gr.Textbox(
                    label="Web pages allowed to call it (origins, comma-separated; * for any page)",
                    placeholder="none: only programs, no web page", max_lines=1, elem_id="server-origins",
                    info="mlx-lm only: mlx-vlm's server answers every web page, and has no option to change that.")
                network_ok = gr.Checkbox(label="I understand that on a network address, without a key, anyone "
                                               "who can reach this machine can use the server")
            with gr.Row():
                start_with_app = gr.Checkbox(label="Start with the app")
                keep_running = gr.Checkbox(label="Keep running when the app quits")
                restart_when_stuck = gr.Checkbox(label="Restart it when it stops answering")
            with gr.Row():
                start = gr.Button("▶ Start", variant="primary", size="sm", min_width=60, elem_id="server-start")
                stop = gr.Button("■ Stop", size="sm", min_width=60, elem_id="server-stop")
                restart = gr.Button("↻ Restart", size="sm", min_width=60)
                save = gr.Button("Save", size="sm", min_width=60)
        with gr.Column(scale=3, min_width=420):
            live = gr.HTML(elem_id="servers-live")
            calling = gr.Markdown(elem_id="server-snippets")
            log = gr.Code(label="Log (the picked profile's server)", language=None, lines=14, interactive=False,
                          elem_id="server-log")
    with gr.Accordion("OpenAI-compatible endpoints for the chat", open=False):
        gr.Markdown("Ready servers are in the Chat tab's model list by themselves. Add any other "
                    "OpenAI-compatible URL here (another machine, another app) to chat through it too.")
        endpoint_list = gr.Markdown(elem_id="endpoint-list")
        with gr.Row():
            endpoint_name = gr.Textbox(label="Name", max_lines=1)
            endpoint_url = gr.Textbox(label="Base URL", placeholder="http://127.0.0.1:8080/v1", max_lines=1)
            endpoint_model = gr.Textbox(label="Model name it expects", placeholder="default_model", max_lines=1)
        with gr.Row():
            endpoint_key = gr.Textbox(label="API key (optional)", type="password", max_lines=1)
            endpoint_vision = gr.Checkbox(label="Reads images")
            add_endpoint = gr.Button("Add endpoint", size="sm")
        with gr.Row():
            endpoint_pick = gr.Dropdown(label="Endpoint", choices=[])
            remove_endpoint = gr.Button("Remove endpoint", size="sm")
    ticker = gr.Timer(1.0, active=False)
    offered = gr.State([])
    held = gr.State([])

    fields = [name, model, kind, host, port, max_tokens, temperature, top_p, prompt_cache_size, api_key,
              extra_args, allowed_origins, start_with_app, keep_running, restart_when_stuck, network_ok, hosts,
              split_mode, backend]
    form = [profile_id, *fields]
    view = [live, log, calling]
    blocks.load(events.load, None, [profile, model, *form, engine, idle, budget, endpoint_list, endpoint_pick],
                api_visibility="private")
    profile.input(events.pick, profile, form, api_visibility="private").then(
        events.watch, profile_id, view, api_visibility="private")
    new.click(events.new, None, [profile, *form], api_name="server_draft")
    kind.change(events.kind_changed, kind, split_group, api_visibility="private")
    check_plan.click(events.plan, form, plan, api_name="plan_server")
    copy.click(events.copy, form, [profile, profile_id, copy_note, plan], api_name="copy_model_to_hosts",
               show_progress_on=[copy_note])
    stop_copy.click(events.stop_copy, profile_id, copy_note, api_name="stop_model_copy")
    duplicate.click(events.duplicate, profile_id, [profile, *form], api_name="duplicate_server_profile")
    save.click(events.save, form, [profile, profile_id], api_name="save_server_profile")
    start.click(events.start, form, [profile, profile_id, *view], api_name="start_server")
    stop.click(events.stop, profile_id, view, api_name="stop_server")
    restart.click(events.restart, form, [profile, profile_id, *view], api_name="restart_server")
    delete.click(events.delete, profile_id, [*form, profile], api_name="delete_server_profile")
    ticker.tick(events.tick, [profile_id, offered, held, engine_model],
                [*view, engine, chat.model, offered, engine_model, pin, held], show_progress="hidden",
                api_visibility="private")
    endpoint_fields = [endpoint_name, endpoint_url, endpoint_key, endpoint_model, endpoint_vision]
    add_endpoint.click(events.add_endpoint, endpoint_fields, [*endpoint_fields, endpoint_list, endpoint_pick,
                                                              chat.model], api_name="add_endpoint")
    remove_endpoint.click(events.remove_endpoint, endpoint_pick, [endpoint_list, endpoint_pick, chat.model],
                          api_name="remove_endpoint")
    load_engine.click(events.load_engine, engine_model, [engine, engine_model, pin], api_name="load_engine")
    unload_engine.click(events.unload_engine, engine_model, [engine, engine_model, pin], api_name="unload_engine")
    engine_model.input(events.pick_engine, engine_model, pin, api_visibility="private")
    pin.input(events.pin_engine, [engine_model, pin], engine, api_name="pin_model")
    gr.on([idle.blur, idle.submit], events.save_idle, idle, idle, api_name="save_idle_unload")
    gr.on([budget.blur, budget.submit], events.save_budget, budget, [budget, engine], api_name="save_memory_budget")
    chat.tabs.select(events.tab_selected, None, [ticker, api_timer], api_visibility="private")
