"""MLX work on the engine thread: load and unload models, generate replies with cache reuse.

Everything here runs on the engine's worker thread only (see engine.py). Text models go through
mlx-lm, models whose `config.json` has a `vision_config` through mlx-vlm.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx

from .errors import ImageNeedsVisionModel, ModelLoadFailed, ModelNotFound
from .jobs import ChatMessage, Generation, GenerationEvent, GenerationStats, SamplingParams
from .models import read_config
from .prompt_cache import CachedPrompt, ConversationCaches, common_prefix_length

if TYPE_CHECKING:
    from PIL import Image

    from .engine import Engine

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model in memory with its tokenizer (text) or processor (vision)."""

    path: str
    name: str
    vision: bool
    model: Any
    processor: Any
    config: dict


@dataclass
class Relayed:
    """What `_relay` saw of a reply: the last response, why it ended, and the tokens."""

    last: Any = None
    finish: str = "stop"
    first_token_at: float | None = None
    tokens: list[int] = field(default_factory=list)


def load_model(path: str) -> LoadedModel:
    """Load a model folder with mlx-lm, or mlx-vlm if it is a vision model."""
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
    except (ValueError, OSError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelLoadFailed(f"{folder.name} could not be loaded: {exc}") from exc
    return LoadedModel(str(folder), folder.name, vision, model, processor, config)


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """mlx-lm's sampler and logits processors for the given settings."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    sampler = make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)
    processors = make_logits_processors(
        repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None
    )
    return {"sampler": sampler, "logits_processors": processors}


def _relay(responses: Iterator[Any], generation: Generation) -> Relayed:
    """Hand each piece of text to the reader, stopping between tokens if asked.

    Works for mlx-lm's and mlx-vlm's stream responses alike (`.text`, `.token`, `.finish_reason`).
    """
    relayed = Relayed()
    for response in responses:
        relayed.last = response
        relayed.tokens.append(response.token)
        if relayed.first_token_at is None:
            relayed.first_token_at = time.perf_counter()
        if response.text:
            generation.put(GenerationEvent(text=response.text))
        if response.finish_reason:
            relayed.finish = response.finish_reason
        elif generation.stop_requested:
            relayed.finish = "stopped"
            break
    responses.close()
    return relayed


def _final_event(generation: Generation, relayed: Relayed, prompt_tokens: int, cached_tokens: int,
                 generation_tokens: int) -> GenerationEvent:
    """The last event of a reply, with its stats."""
    last = relayed.last
    return GenerationEvent(stats=GenerationStats(
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        prompt_tps=last.prompt_tps if last else 0.0,
        generation_tokens=generation_tokens,
        generation_tps=last.generation_tps if last else 0.0,
        time_to_first_token=(relayed.first_token_at or time.perf_counter()) - generation.submitted_at,
        peak_memory_gb=mx.get_peak_memory() / 1e9,
        finish_reason=relayed.finish,
    ))


def _vision_message(message: ChatMessage) -> dict:
    """A chat message for mlx-vlm's template, with an image marker per attached image."""
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts = [{"type": "image"} for _ in message.images]
    return {"role": message.role, "content": [*parts, {"type": "text", "text": message.content}]}


def _open_rgb(path: str) -> Image.Image:
    """An attached image as an RGB PIL image."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _empty_stats(finish_reason: str) -> GenerationStats:
    """Stats of a reply that never started."""
    return GenerationStats(0, 0, 0.0, 0, 0.0, 0.0, 0.0, finish_reason)


class Worker:
    """The engine thread's state: the loaded model and the conversations' prompt caches."""

    def __init__(self, engine: Engine, cache_limit: int) -> None:
        self.engine = engine
        self.loaded: LoadedModel | None = None
        self.caches = ConversationCaches(cache_limit)
        self.vision_features: Any = None  # mlx-vlm's VisionFeatureCache for the loaded vision model

    def ensure_model(self, path: str) -> LoadedModel:
        """Load `path` unless it is already loaded; the previous model is unloaded first."""
        if self.loaded is not None and self.loaded.path == str(Path(path)):
            return self.loaded
        read_config(path)  # a missing or broken folder fails here, before the current model is dropped
        self.unload()
        name = Path(path).name
        self.engine.set_status(state="loading", model_path=str(path), model_name=name, message=f"Loading {name}…")
        started = time.perf_counter()
        try:
            self.loaded = load_model(path)
        except (ModelLoadFailed, ModelNotFound) as exc:
            self.engine.set_status(state="error", message=str(exc))
            raise
        log.info("Loaded %s (%s) in %.1f s", path, "vision" if self.loaded.vision else "text",
                 time.perf_counter() - started)
        self.engine.set_status(state="ready", vision=self.loaded.vision, message="")
        return self.loaded

    def unload(self) -> None:
        """Drop the model and every cache, and give the memory back to the system."""
        if self.loaded is None:
            return
        log.info("Unloading %s", self.loaded.path)
        self.loaded = None
        self.caches.clear()
        self.vision_features = None
        gc.collect()
        mx.clear_cache()
        self.engine.set_status(state="empty", model_path=None, model_name=None, vision=False, message="")

    def close(self) -> None:
        """Unload, then release this thread's MLX streams (MLX aborts at exit if a thread still owns one)."""
        self.unload()
        mx.clear_streams()

    def reply(self, generation: Generation) -> None:
        """Generate one reply, putting its events on the generation's queue."""
        request = generation.request
        if generation.stop_requested:
            generation.put(GenerationEvent(stats=_empty_stats("stopped")))
            return
        loaded = self.ensure_model(request.model_path)
        has_images = any(m.images for m in request.messages)
        if has_images and not loaded.vision:
            raise ImageNeedsVisionModel(f"{loaded.name} reads text only.")
        if request.params.seed >= 0:
            mx.random.seed(request.params.seed)
        mx.reset_peak_memory()
        if loaded.vision:
            self._vision_reply(loaded, generation)
        else:
            self._text_reply(loaded, generation)

    def _text_reply(self, loaded: LoadedModel, generation: Generation) -> None:
        """Stream a reply from an mlx-lm model, reusing the conversation's KV cache."""
        from mlx_lm import stream_generate
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        request = generation.request
        tokenizer = loaded.processor
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        tokens = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True))

        entry = self.caches.take(request.conversation_id)
        reused = 0
        if entry is not None and can_trim_prompt_cache(entry.cache):
            # Keep at least one token to prefill: the model needs logits for the next token.
            reused = min(common_prefix_length(entry.tokens, tokens), len(tokens) - 1)
            trim_prompt_cache(entry.cache, len(entry.tokens) - reused)
            cache = entry.cache
        else:
            cache = make_prompt_cache(loaded.model)
        if len(tokens) - reused > 1:
            generation.put(GenerationEvent(status=f"Reading the prompt ({len(tokens) - reused} new tokens)…"))

        relayed = _relay(stream_generate(
            loaded.model, tokenizer, tokens[reused:], max_tokens=request.params.max_tokens,
            prompt_cache=cache, **sampling_kwargs(request.params),
        ), generation)
        # The cache now holds the prompt and every token the generator handed out.
        self.caches.put(request.conversation_id, CachedPrompt(tokens + relayed.tokens, cache))
        generation.put(_final_event(generation, relayed, len(tokens), reused, len(relayed.tokens)))

    def _vision_reply(self, loaded: LoadedModel, generation: Generation) -> None:
        """Stream a reply from an mlx-vlm model; mlx-vlm reuses the conversation's KV cache itself."""
        from mlx_vlm import PromptCacheState, VisionFeatureCache, stream_generate
        from mlx_vlm.prompt_utils import apply_chat_template

        request = generation.request
        params = request.params
        images = [_open_rgb(path) for m in request.messages for path in m.images]
        messages = [_vision_message(m) for m in request.messages]
        prompt = apply_chat_template(loaded.processor, loaded.config, messages, num_images=len(images))
        entry = self.caches.take(request.conversation_id)
        state = entry.cache if entry is not None else PromptCacheState()
        if self.vision_features is None:
            self.vision_features = VisionFeatureCache()
        generation.put(GenerationEvent(status="Reading the prompt…"))

        chunks = stream_generate(
            loaded.model, loaded.processor, prompt, image=images or None, max_tokens=params.max_tokens,
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=params.min_p,
            repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
            prompt_cache_state=state, vision_cache=self.vision_features,
        )
        # mlx-vlm records the turn's tokens only at the end; it trims by the cache's real length,
        # so a turn stopped early leaves the state safe to reuse.
        relayed = _relay(chunks, generation)
        self.caches.put(request.conversation_id, CachedPrompt(list(state.token_ids or []), state))
        last = relayed.last
        generation.put(_final_event(generation, relayed, last.prompt_tokens if last else 0,
                                    last.cached_tokens if last else 0, last.generation_tokens if last else 0))
