"""The Chat tab's event handlers: call the controller, turn what it returns into component updates.

Each handler passes Gradio's request on, so the controller knows who is asking.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..chats import chat
from ..controller import Controller
from ..controller.conversations import PAGE_SIZE
from ..controller.views import ChatSettings, ChatView, ConversationPage, PageView
from ..models.folders import LocalModel
from ..store import USER_SETTING_FIELDS
from . import render
from .guest_errors import guest_safe


def chat_outputs(view: ChatView) -> tuple:
    """(chatbot, message box, conversation id, title, stats line, versions row, version label, regenerate,
    continue)."""
    conversation = view.conversation
    if view.streaming:
        box = gr.update(submit_btn=False, stop_btn=True, **({"value": None} if view.clear_input else {}))
    else:
        box = gr.update(value=view.restore_input) if view.restore_input else gr.skip()
    label = render.version_label(conversation)
    return (
        render.chatbot_messages(conversation, view.draft, view.streaming),
        box,
        view.conversation_id,
        conversation["title"] if conversation else "",
        "" if view.streaming else render.stats_line(conversation),
        gr.update(visible=bool(label) and not view.streaming),
        label,
        gr.update(interactive=not view.streaming),
        gr.update(visible=not view.streaming and chat.can_continue(conversation)),
    )


def list_outputs(page: ConversationPage) -> tuple[dict, dict]:
    """(conversation list, "show more" button)."""
    choices = [(render.conversation_label(s.title, s.updated), s.id) for s in page.summaries]
    selected = page.selected if page.selected in {s.id for s in page.summaries} else None
    hidden = page.total - len(page.summaries)
    return (gr.update(choices=choices, value=selected),
            gr.update(visible=hidden > 0, value=f"Show more ({hidden:,})"))


def settings_outputs(view: ChatSettings) -> list:
    """The settings' values in `USER_SETTING_FIELDS` order; the Think switch shows only where the model has one."""
    values: list = [view.values[name] for name in USER_SETTING_FIELDS]
    values[USER_SETTING_FIELDS.index("thinking")] = gr.update(value=view.values["thinking"],
                                                              visible=view.thinking_switch)
    return values


def preset_choices(presets: list[dict], selected: str | None = None) -> dict:
    """The system-prompt preset dropdown."""
    return gr.update(choices=[(p["name"], p["id"]) for p in presets], value=selected)


def picker(models: list[LocalModel], selected: str) -> dict:
    """The model dropdown: the models by key (never a path), `selected` (a path or a key) picked."""
    value = next((m.key for m in models if selected in (m.path, m.key)), None)
    return gr.update(choices=[(m.label, m.key) for m in models], value=value)


def picker_choices(controller: Controller) -> dict:
    """The chat's model picker with the models on disk now (its selection stays)."""
    return gr.update(choices=[(m.label, m.key) for m in controller.models.available()])


@dataclass(frozen=True)
class ChatHandles:
    """The Chat tab's components the Models tab updates: the tabs, the model picker and its status line."""

    tabs: gr.Tabs
    model: gr.Dropdown
    status: gr.Markdown


@guest_safe
class ChatEvents:
    """Handlers for the Chat tab's components.

    Gradio fills in `gr.Request` (and `gr.EditData`) only in parameters before `*args`, so they come first.
    """

    def __init__(self, controller: Controller) -> None:
        self.controller = controller

    # --- page -------------------------------------------------------------------------------

    def page_load(self, request: gr.Request) -> tuple:
        """Model picker, status, conversation list, settings, owner-only panels and the account line."""
        page: PageView = self.controller.page_load(request)
        for notice in page.notices:
            gr.Warning(notice, duration=None)
        settings = settings_outputs(page.settings)
        account = (f"Signed in as **{page.user}** ({'owner' if page.is_owner else 'guest'}) · "
                   "[Log out](/logout)") if page.login_required else ""
        return (
            picker(page.models, page.model),
            render.status_markdown(page.status),
            *list_outputs(page.conversations),
            *settings,
            page.app_settings["context_limit"],
            page.app_settings["cache_budget_gb"],
            page.app_settings["disk_cache_gb"],
            gr.update(visible=page.is_owner),
            gr.update(visible=page.is_owner),
            account,
            render.settings_note(page.settings),
            preset_choices(self.controller.chat_settings.presets(request)),
        )

    def status(self, request: gr.Request) -> str:
        return render.status_markdown(self.controller.models.status(request))

    # --- conversations ----------------------------------------------------------------------

    def list(self, request: gr.Request, query: str, limit: Any, selected: str) -> tuple:
        return list_outputs(self.controller.conversations.list(query, limit, selected, request))

    def search(self, request: gr.Request, query: str, selected: str) -> tuple:
        return (*self.list(request, query, PAGE_SIZE, selected), PAGE_SIZE)

    def show_more(self, request: gr.Request, query: str, limit: Any, selected: str) -> tuple:
        limit = (limit if isinstance(limit, int) else PAGE_SIZE) + PAGE_SIZE
        return (*self.list(request, query, limit, selected), limit)

    def open(self, request: gr.Request, conversation_id: str) -> tuple:
        return chat_outputs(self.controller.conversations.open(conversation_id, request))

    def new(self, request: gr.Request) -> tuple:
        return chat_outputs(self.controller.conversations.new(request))

    def rename(self, request: gr.Request, conversation_id: str, title: str) -> None:
        self.controller.conversations.rename(conversation_id, title, request)

    def delete(self, request: gr.Request, conversation_id: str) -> tuple:
        return chat_outputs(self.controller.conversations.delete(conversation_id, request))

    def export(self, request: gr.Request, conversation_id: str) -> dict:
        return gr.update(value=self.controller.conversations.export(conversation_id, request), visible=True)

    def export_markdown(self, request: gr.Request, conversation_id: str) -> dict:
        path = self.controller.conversations.export(conversation_id, request, markdown=True)
        return gr.update(value=path, visible=True)

    def import_conversation(self, request: gr.Request, upload: Any) -> tuple:
        path = upload if isinstance(upload, str) else getattr(upload, "name", None)
        view = self.controller.conversations.import_file(path, request)
        gr.Info(f"Imported “{view.conversation['title']}”.")
        return chat_outputs(view)

    # --- replies ----------------------------------------------------------------------------

    def send(self, request: gr.Request, conversation_id: str, message: Any, model: str,
             *settings: Any) -> Iterator[tuple]:
        for view in self.controller.replies.send(conversation_id, message, model, *settings, request=request):
            yield chat_outputs(view)

    def regenerate(self, request: gr.Request, conversation_id: str, model: str, *settings: Any) -> Iterator[tuple]:
        for view in self.controller.replies.regenerate(conversation_id, model, *settings, request=request):
            yield chat_outputs(view)

    def edit(self, request: gr.Request, edit: gr.EditData, conversation_id: str, model: str,
             *settings: Any) -> Iterator[tuple]:
        for view in self.controller.replies.edit(conversation_id, model, *settings, edit=edit, request=request):
            yield chat_outputs(view)

    def continue_reply(self, request: gr.Request, conversation_id: str, model: str,
                       *settings: Any) -> Iterator[tuple]:
        for view in self.controller.replies.continue_reply(conversation_id, model, *settings, request=request):
            yield chat_outputs(view)

    def stop(self, request: gr.Request, conversation_id: str) -> None:
        self.controller.replies.stop(conversation_id, request)

    def previous_version(self, request: gr.Request, conversation_id: str) -> tuple:
        return chat_outputs(self.controller.replies.previous_version(conversation_id, request))

    def next_version(self, request: gr.Request, conversation_id: str) -> tuple:
        return chat_outputs(self.controller.replies.next_version(conversation_id, request))

    @staticmethod
    def input_ready() -> dict:
        """Put the send button back on the message box once a reply is over (or failed)."""
        return gr.update(submit_btn=True, stop_btn=False)

    # --- models and settings ----------------------------------------------------------------

    def add_model_folder(self, request: gr.Request, folder: str) -> tuple[dict, str]:
        models, selected = self.controller.models.add_folder(folder, request)
        return picker(models, selected), ""

    def import_gguf(self, request: gr.Request, path: str) -> Iterator[tuple]:
        for models, selected, note in self.controller.models.import_gguf(path, request):
            yield (picker(models, selected) if models is not None else gr.skip()), note

    def show_settings(self, request: gr.Request, conversation_id: str, model: str) -> tuple:
        """(model picker, status line, *settings, settings note) for the conversation just shown."""
        view = self.controller.chat_settings.show(conversation_id, model, request)
        status = self.controller.models.status(request)
        return (gr.update(value=view.model), render.status_markdown(status), *settings_outputs(view),
                render.settings_note(view))

    def settings_note(self, request: gr.Request, conversation_id: str, model: str) -> str:
        """The note under the settings, once a reply has made a new chat a conversation of its own."""
        return render.settings_note(self.controller.chat_settings.show(conversation_id, model, request))

    def pick_model(self, request: gr.Request, conversation_id: str, model: str) -> tuple:
        """(status line, *settings, settings note) once a model is picked."""
        view = self.controller.chat_settings.pick_model(conversation_id, model, request)
        status = self.controller.models.status(request)
        return render.status_markdown(status), *settings_outputs(view), render.settings_note(view)

    def save_settings(self, request: gr.Request, conversation_id: str, *values: Any) -> None:
        self.controller.chat_settings.save(conversation_id, *values, request=request)

    def save_preset(self, request: gr.Request, name: str, text: str) -> tuple:
        presets, selected = self.controller.chat_settings.save_preset(name, text, request)
        gr.Info("Preset saved.")
        return preset_choices(presets, selected), ""

    def use_preset(self, request: gr.Request, preset_id: str) -> str:
        return self.controller.chat_settings.preset_text(preset_id, request)

    def rename_preset(self, request: gr.Request, preset_id: str, name: str) -> tuple:
        return preset_choices(self.controller.chat_settings.rename_preset(preset_id, name, request), preset_id), ""

    def delete_preset(self, request: gr.Request, preset_id: str) -> dict:
        return preset_choices(self.controller.chat_settings.delete_preset(preset_id, request))

    def save_engine_settings(self, request: gr.Request, context_limit: Any, cache_budget_gb: Any,
                             disk_cache_gb: Any) -> None:
        self.controller.settings.save_engine(context_limit, cache_budget_gb, disk_cache_gb, request)
