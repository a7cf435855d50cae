"""Chat settings (each user's own) and engine settings (the owner's), read safely from whatever the page sends."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import gradio as gr

from .. import errors
from ..chats import chat
from ..engine.jobs import SamplingParams
from ..engine.thread import Engine
from ..models.fit import FITS_SHARE
from ..models.memory import machine_memory
from ..store import USER_SETTING_FIELDS, Store
from .access import Access
from .feedback import user_errors

log = logging.getLogger(__name__)

MAX_SYSTEM_PROMPT = 100_000
# name: (kind, lowest, highest); values outside are clamped, values that are not numbers use the default
LIMITS: dict[str, tuple[type, float, float]] = {
    "temperature": (float, 0.0, 5.0),
    "top_p": (float, 0.0, 1.0),
    "top_k": (int, 0, 100_000),
    "min_p": (float, 0.0, 1.0),
    "repetition_penalty": (float, 0.1, 5.0),
    "seed": (int, -1, 2**31 - 1),
    "max_tokens": (int, 1, 1_000_000),
    "context_limit": (int, 0, 10_000_000),
    "cache_budget_gb": (float, 0.0, 100_000.0),
    "idle_unload_minutes": (float, 0.0, 7 * 24 * 60),
    "memory_budget_gb": (float, 0.0, 100_000.0),
    "disk_cache_gb": (float, 0.0, 100_000.0),
}
DEFAULTS: dict[str, Any] = {**vars(SamplingParams()), "context_limit": 0, "cache_budget_gb": 0.0,
                            "idle_unload_minutes": 0.0, "disk_cache_gb": 2.0, "memory_budget_gb": 0.0}


def number(raw: Any, default: float, low: float, high: float, kind: type = float) -> int | float:
    """A number from the page, clamped to [low, high]; blanks and non-numbers give `default`."""
    try:
        value = float(raw)
    except (TypeError, ValueError, OverflowError) as exc:
        log.debug("Not a number from the page (%s); using %s", exc, default)
        return default
    if math.isnan(value):
        return default
    value = min(max(value, low), high)
    return int(value) if kind is int else value


def clamp(name: str, raw: Any) -> int | float:
    """A setting from the page, clamped to its range in `LIMITS`."""
    kind, low, high = LIMITS[name]
    return number(raw, DEFAULTS[name], low, high, kind)


def parse_user_settings(values: Sequence[Any]) -> dict[str, Any]:
    """The chat settings in `USER_SETTING_FIELDS` order, cleaned and clamped."""
    if len(values) != len(USER_SETTING_FIELDS):
        raise gr.Error(f"Expected {len(USER_SETTING_FIELDS)} settings, got {len(values)}.")
    raw = dict(zip(USER_SETTING_FIELDS, values, strict=True))
    prompt = raw.pop("system_prompt")
    thinking = raw.pop("thinking")
    settings = {"system_prompt": chat.clean_text(prompt if isinstance(prompt, str) else "")[:MAX_SYSTEM_PROMPT],
                "thinking": thinking if isinstance(thinking, bool) else True}
    settings.update({name: clamp(name, value) for name, value in raw.items()})
    return settings


def sampling_params(settings: dict[str, Any]) -> SamplingParams:
    """The sampling settings of a reply."""
    return SamplingParams(**{name: settings[name] for name in vars(SamplingParams())})


class SettingsPart:
    """Handlers that save the owner's engine settings."""

    def __init__(self, engine: Engine, store: Store, access: Access) -> None:
        self.engine = engine
        self.store = store
        self.access = access

    def save_engine(self, context_limit: Any, cache_budget_gb: Any, disk_cache_gb: Any, request: gr.Request) -> None:
        """Handler: the owner's engine settings: a context limit, the memory and the disk for prompt caches."""
        with user_errors("save the engine settings"):
            caller = self.access.caller(request)
            self.access.require_owner(caller, "change the engine settings")
            app = self.store.settings.update_app(context_limit=clamp("context_limit", context_limit),
                                                 cache_budget_gb=clamp("cache_budget_gb", cache_budget_gb),
                                                 disk_cache_gb=clamp("disk_cache_gb", disk_cache_gb))
        self.engine.set_cache_budget(cache_budget_bytes(app["cache_budget_gb"]))
        self.engine.set_disk_cache_budget(int(app["disk_cache_gb"] * 1e9))

    def save_memory_budget(self, budget_gb: Any, request: gr.Request) -> float:
        """Handler: what loaded models and their caches may take (0: automatic); models beyond it are unloaded,
        the least recently used first."""
        with user_errors("save the memory for models"):
            self.access.require_owner(self.access.caller(request), "change the engine settings")
            app = self.store.settings.update_app(memory_budget_gb=clamp("memory_budget_gb", budget_gb))
        self.engine.set_memory_budget(memory_budget_bytes(app["memory_budget_gb"])).result()
        return app["memory_budget_gb"]

    def pin(self, model_path: str, pinned: bool, request: gr.Request) -> None:
        """Handler: keep a loaded model in memory (never unloaded while idle or to make room), or not."""
        with user_errors("pin that model"):
            self.access.require_owner(self.access.caller(request), "pin models")
            if pinned and model_path not in {m.path for m in self.engine.status().models}:
                raise errors.ModelNotFound("That model is not loaded; load it first, then pin it.")
            pins = set(self.store.settings.app()["pinned_models"]) - {model_path} | ({model_path} if pinned else set())
            app = self.store.settings.update_app(pinned_models=sorted(pins))
        self.engine.set_pinned(set(app["pinned_models"])).result()

    def save_idle_unload(self, minutes: Any, request: gr.Request) -> float:
        """Handler: unload each of the engine's models after this many minutes without a reply (0: never)."""
        with user_errors("save the idle unload time"):
            self.access.require_owner(self.access.caller(request), "change the engine settings")
            app = self.store.settings.update_app(idle_unload_minutes=clamp("idle_unload_minutes", minutes))
        self.engine.set_idle_unload(60 * app["idle_unload_minutes"])
        return app["idle_unload_minutes"]


def memory_budget_bytes(budget_gb: float) -> int:
    """Bytes loaded models and their caches may take: the setting, or MLX's limit here less a margin for the
    runtime and everything else (the share a model "fits" within)."""
    if budget_gb > 0:
        return int(budget_gb * 1e9)
    return int(machine_memory().limit * FITS_SHARE)


def cache_budget_bytes(budget_gb: float) -> int:
    """Bytes the prompt caches may hold: the setting, or a quarter of this machine's memory."""
    if budget_gb > 0:
        return int(budget_gb * 1e9)
    import psutil

    return psutil.virtual_memory().total // 4
