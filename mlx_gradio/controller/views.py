"""What handlers hand the UI to show: plain dataclasses, rendered by mlx_gradio/ui/render.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..chats.conversation_store import ConversationSummary
from ..engine.thread import EngineStatus
from ..models.folders import LocalModel


@dataclass(frozen=True)
class Draft:
    """A reply being written that is not part of the conversation yet."""

    slot: int
    text: str = ""
    status: str = ""


@dataclass(frozen=True)
class ChatView:
    """What the chat shows after a step of a handler."""

    conversation: dict | None  # None: an empty new chat
    draft: Draft | None = None
    streaming: bool = False
    clear_input: bool = False
    restore_input: dict | None = None  # put back into the message box (an edit that was not applied)

    @property
    def conversation_id(self) -> str:
        """The id the tab keeps for this chat ("" for a new chat)."""
        return self.conversation["id"] if self.conversation else ""


@dataclass(frozen=True)
class ChatSettings:
    """The model and settings the chat shows: an open conversation's own, or a new chat's defaults."""

    model: str  # the picker's value: the model's key, never a path
    values: dict  # USER_SETTING_FIELDS -> value
    recommended: dict  # the model's recommended sampling (generation_config.json)
    model_name: str = ""
    own: bool = False  # the conversation recorded settings of its own
    missing_model: str = ""  # the conversation's model, when it is no longer on this machine
    thinking_switch: bool = False  # the model's template can turn thinking off


@dataclass(frozen=True)
class ConversationPage:
    """One page of a user's conversation list."""

    summaries: list[ConversationSummary]
    total: int
    selected: str | None = None


@dataclass(frozen=True)
class PageView:
    """Everything a fresh browser tab shows."""

    user: str
    is_owner: bool
    login_required: bool
    models: list[LocalModel]
    model: str
    status: EngineStatus
    settings: ChatSettings
    app_settings: dict
    conversations: ConversationPage
    notices: list[str] = field(default_factory=list)
