"""The models the engine holds: loaded on demand, kept within a memory budget, the least recently used unloaded to
make room for the next; pinned ones stay. Runs on the engine thread only (see thread.py)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelLoadFailed, ModelTooLarge
from ..models.fit import gb
from ..models.folders import model_name, read_config

log = logging.getLogger(__name__)

@dataclass
class LoadedModel:
    """A model in memory with its tokenizer (text) or processor (vision), and what the engine keeps for it."""

    path: str
    name: str
    vision: bool
    model: Any
    processor: Any
    config: dict
    weight_bytes: int = 0  # the parameters' bytes, measured once loaded
    vocabulary: Any = None  # llguidance's view of the tokenizer, built for the first structured answer
    vision_features: Any = None  # mlx-vlm's VisionFeatureCache (vision models)
    prefill_tps: float | None = None  # its prompt reading speed, once measured
    last_used: float = 0.0  # time.time() of its load or its last reply: idle unloading counts from it
    idle_unload_s: float | None = None  # its own idle time, as the last request that set one asked (None: the engine's)


@dataclass(frozen=True)
class ModelInMemory:
    """What the engine panel shows of one loaded model (no MLX objects: safe on any thread)."""

    path: str
    name: str
    vision: bool
    weight_bytes: int
    cache_bytes: int  # its conversations' prompt caches in memory
    conversations: int
    context_tokens: int  # the longest conversation it holds a cache of
    last_used: float
    pinned: bool
    idle_unload_s: float | None  # its own idle time (None: the engine's)


def load_model(path: str) -> LoadedModel:
    """Load a model folder with mlx-lm, or mlx-vlm if it is a vision model."""
    from mlx.utils import tree_flatten

    folder = Path(path)
    config = read_config(folder)
    vision = "vision_config" in config
    try:
        if vision:
            from mlx_vlm import load as vlm_load

            model, processor = vlm_load(str(folder))
        else:
            from mlx_lm import load as lm_load

            model, processor = lm_load(str(folder))
    except Exception as exc:  # noqa: BLE001 - any failure (ImportError, MemoryError, ...) is a failed load
        log.exception("Loading %s failed", folder)
        raise ModelLoadFailed(f"{model_name(folder)} could not be loaded: {type(exc).__name__}: {exc}") from exc
    weights = sum(int(array.nbytes) for _, array in tree_flatten(model.parameters()))
    return LoadedModel(str(folder), model_name(folder), vision, model, processor, config, weights,
                       last_used=time.time())


class LoadedModels:
    """Loaded models by folder, the least recently used first, within `budget` bytes (weights and prompt caches;
    None: no bound)."""

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.pinned: set[str] = set()
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()

    def use(self, path: str) -> LoadedModel | None:
        """The loaded model at `path`, now the most recently used; None if it is not loaded."""
        loaded = self._models.get(path)
        if loaded is not None:
            self._models.move_to_end(path)
        return loaded

    def peek(self, path: str) -> LoadedModel | None:
        """The loaded model at `path`, its place in line unchanged."""
        return self._models.get(path)

    @property
    def latest(self) -> LoadedModel | None:
        """The most recently used model."""
        return next(reversed(self._models.values()), None)

    def add(self, loaded: LoadedModel) -> None:
        self._models[loaded.path] = loaded

    def remove(self, path: str) -> LoadedModel | None:
        return self._models.pop(path, None)

    def __iter__(self) -> Iterator[LoadedModel]:
        return iter(list(self._models.values()))

    def __len__(self) -> int:
        return len(self._models)

    def held(self, cache_bytes: Callable[[str], int]) -> dict[str, int]:
        """The bytes each loaded model holds: its weights and its prompt caches."""
        return {path: m.weight_bytes + cache_bytes(path) for path, m in self._models.items()}

    def make_room(self, name: str, needed: int, cache_bytes: Callable[[str], int]) -> list[str]:
        """The models to unload, least recently used first, so that `needed` more bytes fit the budget; a model
        that cannot fit even then is refused with the sizes."""
        if self.budget is None:
            return []
        if needed > self.budget:
            raise ModelTooLarge(f"{name} needs {gb(needed)}, more than the {gb(self.budget)} the engine may use "
                                "for models here.")
        held = self.held(cache_bytes)
        free, victims = self.budget - sum(held.values()), []
        for path in self._models:
            if free >= needed:
                break
            if path not in self.pinned:
                victims.append(path)
                free += held[path]
        if free < needed:
            pinned = ", ".join(f"{self._models[p].name} ({gb(held[p])})" for p in self._models if p in self.pinned)
            raise ModelTooLarge(f"{name} needs {gb(needed)}; of the {gb(self.budget)} the engine may use for models, "
                                f"pinned models hold {gb(self.budget - free)}: {pinned}.")
        return victims

    def over_budget(self, cache_bytes: Callable[[str], int]) -> list[str]:
        """The unpinned models to unload, least recently used first, to be within a budget that was lowered."""
        if self.budget is None:
            return []
        held = self.held(cache_bytes)
        total, victims = sum(held.values()), []
        for path in self._models:
            if total <= self.budget:
                break
            if path not in self.pinned:
                victims.append(path)
                total -= held[path]
        return victims

    def _idle_times(self, idle_s: float) -> dict[str, float]:
        """When each unpinned model that is ever unloaded while idle will be (time.time()): after its own idle
        time, else after `idle_s` (0: never)."""
        times = {}
        for path, m in self._models.items():
            after = idle_s if m.idle_unload_s is None else m.idle_unload_s
            if path not in self.pinned and after:
                times[path] = m.last_used + after
        return times

    def idle(self, idle_s: float, now: float) -> list[str]:
        """The unpinned models whose idle time (their own, else `idle_s`) has passed since their last use."""
        return [path for path, at in self._idle_times(idle_s).items() if at <= now]

    def next_idle_at(self, idle_s: float) -> float | None:
        """When the next unpinned model becomes idle (time.time()), None if none will."""
        return min(self._idle_times(idle_s).values(), default=None)
