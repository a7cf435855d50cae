"""Each conversation's own model and settings, the models' recommended sampling, and system-prompt presets.

A new chat starts from the user's defaults, with the picked model's recommended sampling (its
`generation_config.json`) on top; a conversation records the model and settings of its replies,
and changing them while it is open changes that conversation only.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from typing import Any

import gradio as gr

from .. import errors
from ..chats import chat
from ..models.folders import has_thinking_switch, recommended_sampling
from ..serving.remote import is_remote
from ..store import USER_SETTING_FIELDS, Store
from .access import Access, Caller
from .conversations import ConversationsPart
from .feedback import user_errors
from .models import ModelsPart
from .settings import LIMITS, MAX_SYSTEM_PROMPT, clamp, parse_user_settings
from .views import ChatSettings

log = logging.getLogger(__name__)

PRESETS = "prompt_presets"
MAX_PRESET_NAME = 80


class ChatSettingsPart:
    """Handlers for the chat's settings panel: what it shows for a conversation, saving it, presets."""

    def __init__(self, store: Store, access: Access, models: ModelsPart, conversations: ConversationsPart) -> None:
        self.store = store
        self.access = access
        self.models = models
        self.conversations = conversations

    def _name(self, model: str) -> str:
        """What to call a model in the note."""
        return self.models.name_of(model) if model else ""

    def recommended(self, model: str) -> dict[str, float]:
        """A local model's recommended sampling, clamped to the settings' ranges."""
        if not model or is_remote(model):
            return {}
        return {name: clamp(name, value) for name, value in recommended_sampling(model).items()}

    def defaults(self, caller: Caller, model: str) -> dict[str, Any]:
        """A new chat's settings: the user's defaults, with the model's recommended sampling on top."""
        saved = self.store.settings.user(caller.user)
        return {**{name: saved[name] for name in USER_SETTING_FIELDS}, **self.recommended(model)}

    def _view(self, caller: Caller, conversation: dict | None, model: str) -> ChatSettings:
        values = self.defaults(caller, model)
        if conversation is not None:
            values.update(_known(conversation.get("settings")))
        return ChatSettings(self.models.key_of(model) if model else "", values, self.recommended(model),
                            self._name(model),
                            own=conversation is not None and bool(conversation.get("settings")),
                            thinking_switch=bool(model) and not is_remote(model) and has_thinking_switch(model))

    # --- handlers ---------------------------------------------------------------------------

    def show(self, conversation_id: str, picked: str, request: gr.Request) -> ChatSettings:
        """Handler: the model and settings for the open conversation (its own), or for a new chat.

        Opening a conversation selects its model (loading it if needed); a model that is gone
        leaves the picked one in place, with a note.
        """
        with user_errors("show the conversation's settings"):
            caller = self.access.caller(request)
            conversation = self.conversations.own(caller, conversation_id) if conversation_id else None
            model, missing = self._model_of(caller, conversation, picked)
            if conversation is not None and not missing:
                self.models.use(caller, model)
        return replace(self._view(caller, conversation, model), missing_model=missing)

    def _model_of(self, caller: Caller, conversation: dict | None, picked: str) -> tuple[str, str]:
        """The model to show and the name of a conversation's model that is no longer offered ("" if none)."""
        try:
            fallback = self.models.model_for(caller, picked) if picked else self.models.selected(caller)
        except (errors.ModelNotFound, errors.AccessDenied) as exc:  # e.g. a server that has stopped
            log.debug("The picked model %s is not offered now (%s); showing this user's last one", picked, exc)
            fallback = self.models.selected(caller)
        recorded = (conversation or {}).get("model")
        if not recorded:
            return fallback, ""
        try:
            return self.models.model_for(caller, recorded), ""
        except (errors.ModelNotFound, errors.AccessDenied) as exc:
            log.info("Conversation %s was made with %s, which is not offered now: %s", conversation["id"],
                     recorded, exc)
            return fallback, self._name(recorded)

    def pick_model(self, conversation_id: str, model: str, request: gr.Request) -> ChatSettings:
        """Handler: a model was picked; an open conversation keeps it, a new chat takes its recommended sampling."""
        with user_errors("use that model"):
            caller = self.access.caller(request)
            model = self.models.model_for(caller, model)
            conversation = (self.conversations.change(caller, conversation_id, lambda c: c.update(model=model))
                            if conversation_id else None)
            self.models.use(caller, model)
        return self._view(caller, conversation, model)

    def save(self, conversation_id: str, *values: Any, request: gr.Request) -> None:
        """Handler: settings changed; they belong to the open conversation, or (in a new chat) are the defaults."""
        with user_errors("save the settings"):
            caller = self.access.caller(request)
            settings = parse_user_settings(values)
            if not conversation_id:
                self.store.settings.update_user(caller.user, **settings)
                return
            self.conversations.change(caller, conversation_id, lambda c: c.update(settings=settings))

    # --- system-prompt presets --------------------------------------------------------------

    def presets(self, request: gr.Request) -> list[dict]:
        """Handler: this user's presets, by name."""
        with user_errors("list the presets"):
            caller = self.access.caller(request)
            return self._presets(caller)

    def _presets(self, caller: Caller) -> list[dict]:
        found = [p for p in self.store.settings.documents(PRESETS) if p.get("user") == caller.user]
        return sorted(found, key=lambda p: p["name"].casefold())

    def _preset(self, caller: Caller, preset_id: str) -> dict:
        found = next((p for p in self._presets(caller) if p["id"] == preset_id), None)
        if found is None:
            raise errors.ChatEditError("Pick a preset first.")
        return found

    def save_preset(self, name: str, text: str, request: gr.Request) -> tuple[list[dict], str]:
        """Handler: save the system prompt as a preset (a preset of that name is replaced); returns presets and id."""
        with user_errors("save the preset"):
            caller = self.access.caller(request)
            name = _preset_name(name)
            text = chat.clean_text(str(text or ""))
            if not text.strip():
                raise errors.ChatEditError("Write a system prompt first, then save it as a preset.")
            same = next((p for p in self._presets(caller) if p["name"] == name), None)
            preset = {"id": same["id"] if same else uuid.uuid4().hex, "user": caller.user, "name": name,
                      "text": text[:MAX_SYSTEM_PROMPT]}
            self.store.settings.upsert(PRESETS, "id", preset)
            return self._presets(caller), preset["id"]

    def preset_text(self, preset_id: str, request: gr.Request) -> str:
        """Handler: the text of a preset."""
        with user_errors("use the preset"):
            return self._preset(self.access.caller(request), preset_id)["text"]

    def rename_preset(self, preset_id: str, name: str, request: gr.Request) -> list[dict]:
        """Handler: rename a preset."""
        with user_errors("rename the preset"):
            caller = self.access.caller(request)
            preset = self._preset(caller, preset_id)
            name = _preset_name(name)
            if any(p["name"] == name and p["id"] != preset_id for p in self._presets(caller)):
                raise errors.ChatEditError(f"There is a preset called “{name}” already.")
            self.store.settings.upsert(PRESETS, "id", {**preset, "name": name})
            return self._presets(caller)

    def delete_preset(self, preset_id: str, request: gr.Request) -> list[dict]:
        """Handler: delete a preset."""
        with user_errors("delete the preset"):
            caller = self.access.caller(request)
            self._preset(caller, preset_id)
            self.store.settings.remove(PRESETS, "id", preset_id)
            return self._presets(caller)


def _known(settings: Any) -> dict[str, Any]:
    """A conversation's recorded settings that are well formed (an imported file may hold anything)."""
    if not isinstance(settings, dict):
        return {}
    known: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "system_prompt" and isinstance(value, str):
            known[name] = chat.clean_text(value)[:MAX_SYSTEM_PROMPT]
        elif name == "thinking" and isinstance(value, bool):
            known[name] = value
        elif name in LIMITS and name in USER_SETTING_FIELDS and isinstance(value, (int, float)):
            known[name] = clamp(name, value)
    return known


def _preset_name(name: Any) -> str:
    """A preset's name from the page: one line, not empty, not too long."""
    cleaned = " ".join(chat.clean_text(str(name or "")).split())[:MAX_PRESET_NAME]
    if not cleaned:
        raise errors.ChatEditError("Type a name for the preset.")
    return cleaned
