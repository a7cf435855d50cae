"""MLX work on the engine thread: load and unload models, generate replies with cache reuse.

Everything here runs on the engine's worker thread only (see thread.py). Text models go through
mlx-lm, models whose `config.json` has a `vision_config` through mlx-vlm.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
from PIL import Image, ImageOps

from ..errors import ImageNeedsVisionModel
from ..models.fit import gb
from ..models.folders import context_length, folder_size, model_name, read_config
from .context import fit_prompt
from .jobs import ChatMessage, ChatRequest, Generation, GenerationEvent, GenerationStats, SamplingParams
from .loaded_models import LoadedModel, LoadedModels, ModelInMemory, load_model
from .prompt_cache import CachedPrompt, ConversationCaches, common_prefix_length
from .prompt_files import PromptFiles
from .reasoning import THINK_END, THINK_START, ThinkSplitter, opens_thinking, reply_text
from .structured import GrammarProcessor, grammar_tokenizer
from .tool_calls import ToolCallSplitter, tool_splitter

log = logging.getLogger(__name__)

PREFILL_CHUNK_S = 1.0  # a prompt is read in chunks of about this long, so Stop and shutdown act between them
FIRST_PREFILL_STEP = 32  # tokens per chunk before this model's reading speed is known
PREFILL_STEPS = (16, 2048)  # the fewest and most tokens per chunk


@dataclass
class Relayed:
    """What `_relay` saw of a reply: the last response, why it ended, and the tokens."""

    last: Any = None
    finish: str = "stop"
    first_token_at: float | None = None
    tokens: list[int] = field(default_factory=list)


def sampling_kwargs(params: SamplingParams, held: list | None = None) -> dict[str, Any]:
    """mlx-lm's sampler and logits processors for the given settings; `held` ones (a grammar's) go last, so the
    tokens they mask stay masked."""
    from mlx_lm.sample_utils import make_logits_processors, make_sampler

    sampler = make_sampler(temp=params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)
    processors = make_logits_processors(
        repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None
    )
    return {"sampler": sampler, "logits_processors": processors + list(held or [])}


def end_tokens(loaded: LoadedModel, tokenizer: Any) -> list[int]:
    """The token ids that end a reply: mlx-lm's wrapper knows them; for mlx-vlm, the config's or the tokenizer's."""
    ids = getattr(tokenizer, "eos_token_ids", None) or loaded.config.get("eos_token_id")
    if ids is None:
        ids = getattr(tokenizer, "eos_token_id", None)
    if ids is None:
        return []
    return sorted(ids) if isinstance(ids, (list, tuple, set)) else [int(ids)]


def held_to_grammar(loaded: LoadedModel, request: ChatRequest, tokenizer: Any, prompt_tail: str) -> list:
    """The request's grammar as a logits processor (none for free text); thinking the prompt opened stays free."""
    if not request.grammar:
        return []
    if loaded.vocabulary is None:
        loaded.vocabulary = grammar_tokenizer(tokenizer, end_tokens(loaded, tokenizer), loaded.name)
    start, end = thinking_markers(tokenizer)
    return [GrammarProcessor(request.grammar, loaded.vocabulary, tokenizer,
                             wait_for=end if opens_thinking(prompt_tail, start, end) else "")]


def thinking_markers(tokenizer: Any) -> tuple[str, str]:
    """The model's own thinking markers where mlx-lm knows them, `<think>` / `</think>` otherwise."""
    return (getattr(tokenizer, "think_start", None) or THINK_START, getattr(tokenizer, "think_end", None) or THINK_END)


def thinking_splitter(tokenizer: Any, prompt_tail: str, partial: ChatMessage | None = None) -> ThinkSplitter:
    """A splitter starting inside the block when the prompt opened one, or where a `partial` reply was cut."""
    start, end = thinking_markers(tokenizer)
    if partial is not None:
        return ThinkSplitter(start, end, thinking=bool(partial.reasoning) and not partial.content,
                             closed=bool(partial.content or partial.reasoning))
    return ThinkSplitter(start, end, thinking=opens_thinking(prompt_tail, start, end))


def continued_prompt(prompt: str, partial: ChatMessage, tokenizer: Any) -> str:
    """The text after a generation prompt that makes the model write on from where `partial` was cut."""
    start, end = thinking_markers(tokenizer)
    return reply_text(partial.reasoning, partial.content, start, end, opens_thinking(prompt[-200:], start, end))


def template_message(tokenizer: Any, message: ChatMessage) -> dict:
    """A text message for a chat template; earlier thinking only for templates that read it."""
    entry: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.reasoning and "reasoning_content" in (getattr(tokenizer, "chat_template", None) or ""):
        entry["reasoning_content"] = message.reasoning
    if message.tool_calls:
        entry["tool_calls"] = [{"id": call["id"], "type": "function",
                                "function": {"name": call["name"], "arguments": call["arguments"]}}
                               for call in message.tool_calls]
    if message.tool_call_id:
        entry["tool_call_id"] = message.tool_call_id
    return entry


def _relay(responses: Iterator[Any], generation: Generation, splitter: ThinkSplitter,
           continued_by: Any = None, tools: ToolCallSplitter | None = None) -> Relayed:
    """Hand each piece of text to the reader (thinking apart from the answer), stopping between tokens if asked.

    Works for mlx-lm's and mlx-vlm's stream responses alike (`.text`, `.token`, `.finish_reason`).
    `continued_by` is the tokenizer when the reply writes on from a cut one: the streaming detokenizer
    drops the space before a reply's first word, which there belongs to the text. `tools` takes the
    model's tool calls out of the answer.
    """
    relayed = Relayed()
    spaced = continued_by is None
    for response in responses:
        relayed.last = response
        relayed.tokens.append(response.token)
        if relayed.first_token_at is None:
            relayed.first_token_at = time.perf_counter()
        if response.text:
            text = response.text
            if not spaced:
                spaced = True
                if continued_by.decode([relayed.tokens[0]]).startswith(" ") and not text.startswith(" "):
                    text = " " + text
            _put_text(generation, *splitter.feed(text), tools)
        if response.finish_reason:
            relayed.finish = response.finish_reason
        elif generation.stop_requested:
            relayed.finish = "stopped"
            break
    responses.close()
    _put_text(generation, *splitter.flush(), tools)
    if tools is not None:
        answer, calls = tools.flush()
        _put_text(generation, "", answer, None, calls)
    return relayed


def _put_text(generation: Generation, reasoning: str, answer: str, tools: ToolCallSplitter | None = None,
              calls: list[dict] | None = None) -> None:
    calls = list(calls or [])
    if tools is not None:
        answer, found = tools.feed(answer)
        calls += found
    if reasoning or answer or calls:
        generation.put(GenerationEvent(text=answer, reasoning=reasoning, tool_calls=tuple(calls)))


def _final_event(generation: Generation, relayed: Relayed, prompt_tokens: int, cached_tokens: int,
                 generation_tokens: int, context: int, dropped: int) -> GenerationEvent:
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
        context_length=context,
        dropped_messages=dropped,
    ))


class PrefillStopped(Exception):
    """Stop was asked for while the prompt was read; `processed` tokens are in the cache."""

    def __init__(self, processed: int) -> None:
        super().__init__(f"stopped after {processed} prompt tokens")
        self.processed = processed


@dataclass
class PrefillProgress:
    """mlx-lm's prompt progress callback: reports progress and ends the read when Stop is asked for."""

    generation: Generation
    reused: int
    total: int

    def __call__(self, processed: int, total: int) -> None:
        if processed >= total:
            return
        if self.generation.stop_requested:
            raise PrefillStopped(processed)
        if processed:
            self.generation.put(GenerationEvent(status=f"Reading the prompt: {self.reused + processed:,} / "
                                                       f"{self.total:,} tokens"))


def _vision_message(message: ChatMessage) -> dict:
    """A chat message for mlx-vlm's template, with an image marker per attached image."""
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts = [{"type": "image"} for _ in message.images]
    return {"role": message.role, "content": [*parts, {"type": "text", "text": message.content}]}


def load_for_model(path: str | Path) -> Image.Image:
    """An attached image as a model should see it: upright (EXIF orientation) and RGB, transparency on white."""
    with Image.open(path) as image:
        upright = ImageOps.exif_transpose(image)
    if upright.has_transparency_data:
        rgba = upright.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return upright.convert("RGB")


class Worker:
    """The engine thread's state: the loaded models and the conversations' prompt caches (in memory and on disk)."""

    def __init__(self, set_status: Callable[..., None], cache_limit: int, cache_budget: int | None,
                 files: PromptFiles | None = None, memory_budget: int | None = None) -> None:
        self.set_status = set_status
        self.models = LoadedModels(memory_budget)
        self.files = files
        self.caches = ConversationCaches(cache_limit, cache_budget, on_evict=self._write)

    def ensure_model(self, path: str) -> LoadedModel:
        """The model at `path`, loaded unless it is; the least recently used ones are unloaded first when the
        memory budget needs the room."""
        path = str(Path(path))
        loaded = self.models.use(path)
        if loaded is not None:
            self._show(loaded)
            return loaded
        read_config(path)  # a missing or broken folder fails here, before any model is dropped
        name = model_name(path)
        for victim in self.models.make_room(name, folder_size(Path(path)), self.caches.nbytes_of):
            self.unload(victim, f"to make room for {name}")
        self.set_status(state="loading", model_path=path, model_name=name, message=f"Loading {name}…")
        started = time.perf_counter()
        try:
            loaded = load_model(path)
        except Exception as exc:  # noqa: BLE001 - whatever broke, the status must not stay on "loading"
            self.set_status(state="error", message=str(exc) or type(exc).__name__)
            raise
        self.models.add(loaded)
        log.info("Loaded %s (%s, %s) in %.1f s; %d model(s) in memory", path, "vision" if loaded.vision else "text",
                 gb(loaded.weight_bytes), time.perf_counter() - started, len(self.models))
        self._show(loaded)
        return loaded

    def _show(self, loaded: LoadedModel) -> None:
        self.set_status(state="ready", model_path=loaded.path, model_name=loaded.name, vision=loaded.vision,
                        message="", **self._held())

    def _held(self) -> dict:
        """The status fields of what is loaded: set with every change, so a caller that waited for a load or an
        unload reads the list it made."""
        return {"models": self.in_memory(), "memory_budget": self.models.budget}

    def unload(self, path: str | None = None, why: str = "") -> None:
        """Drop one model (None: every one) with its caches, and give the memory back to the system."""
        paths = [m.path for m in self.models] if path is None else [str(Path(path))]
        dropped = False
        for folder in paths:
            if self.models.peek(folder) is None:
                continue
            log.info("Unloading %s%s", folder, f" {why}" if why else "")
            self.caches.clear(folder)  # written to disk first, while the model they belong to is known
            self.models.remove(folder)
            dropped = True
        if not dropped:
            return
        gc.collect()
        mx.clear_cache()
        latest = self.models.latest
        if latest is None:
            self.set_status(state="empty", model_path=None, model_name=None, vision=False, message="", **self._held())
        else:
            self._show(latest)

    def set_memory_budget(self, budget: int | None) -> None:
        """Bound the bytes models and their caches may take; the least recently used go at once if they now
        take more."""
        self.models.budget = budget
        for victim in self.models.over_budget(self.caches.nbytes_of):
            self.unload(victim, "to stay within the memory budget")
        self.set_status(**self._held())

    def set_pinned(self, paths: set[str]) -> None:
        """Keep these models loaded (never unloaded while idle or to make room)."""
        self.models.pinned = set(paths)
        self.set_status(**self._held())

    def unload_idle(self, idle_s: float) -> list[str]:
        """Unload every unpinned model unused for `idle_s` seconds; returns their names."""
        names = []
        for path in self.models.idle(idle_s, time.time()):
            loaded = self.models.peek(path)
            names.append(loaded.name)
            after = idle_s if loaded.idle_unload_s is None else loaded.idle_unload_s
            self.unload(path, f"after {after:.0f} s without a reply")
        return names

    def in_memory(self) -> tuple[ModelInMemory, ...]:
        """The loaded models as the engine panel shows them, the most recently used first."""
        shown = []
        for loaded in reversed(list(self.models)):
            caches = self.caches.of_model(loaded.path)
            shown.append(ModelInMemory(loaded.path, loaded.name, loaded.vision, loaded.weight_bytes,
                                       self.caches.nbytes_of(loaded.path), len(caches),
                                       max((len(c.tokens) for c in caches), default=0), loaded.last_used,
                                       loaded.path in self.models.pinned, loaded.idle_unload_s))
        return tuple(shown)

    def usage(self) -> dict:
        """Memory, models, caches and last use, for the engine's status (read on this thread)."""
        files = self.files.files() if self.files is not None else []
        return {"memory_bytes": int(mx.get_active_memory()), "peak_bytes": int(mx.get_peak_memory()),
                "cached_conversations": len(self.caches), "cache_bytes": self.caches.nbytes,
                "saved_conversations": len(files), "saved_bytes": self.files.nbytes if files else 0,
                "last_used": max((m.last_used for m in self.models), default=0.0), **self._held()}

    def _write(self, conversation_id: str, entry: CachedPrompt) -> None:
        """Keep a text model's cache on disk (it leaves memory, or the engine has a moment)."""
        if not self._savable(entry):
            return
        try:
            self.files.save(conversation_id, entry, entry.model)
        except Exception:  # noqa: BLE001 - the cache stays in memory; the reply or unload that wrote it goes on
            log.exception("Could not keep the prompt cache of conversation %s on disk", conversation_id)
        entry.saved = True  # written, or not writable (no budget, too big, disk full, a bug): not tried again

    def _savable(self, entry: CachedPrompt) -> bool:
        """Whether a cache can go to disk: mlx-vlm's cache state has no file format (vision conversations are
        read again), and a cache is written while its model is loaded."""
        loaded = self.models.peek(entry.model)
        return self.files is not None and not entry.saved and loaded is not None and not loaded.vision

    def save_one(self) -> bool:
        """Write the most recently used cache that is not on disk yet; False when there is none."""
        for conversation_id in self.caches.unsaved():
            entry = self.caches.get(conversation_id)
            if self._savable(entry):
                self._write(conversation_id, entry)
                return True
        return False

    def _take_cache(self, conversation_id: str, loaded: LoadedModel) -> CachedPrompt | None:
        """A conversation's cache for `loaded`; one of another model (the conversation changed models) goes to
        disk and out of memory."""
        entry = self.caches.take(conversation_id)
        if entry is not None and entry.model != loaded.path:
            self._write(conversation_id, entry)
            return None
        return entry

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation's cache from memory and disk (it was deleted)."""
        self.caches.take(conversation_id)
        if self.files is not None:
            self.files.delete(conversation_id)

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
        try:
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
        finally:
            loaded.last_used = time.time()
            if request.idle_unload_s is not None:
                loaded.idle_unload_s = request.idle_unload_s

    def prompt_tokens(self, request: ChatRequest) -> int:
        """How many tokens the request's prompt takes with its model's chat template (loading the model; a
        vision model's images count as their markers, before mlx-vlm expands them)."""
        loaded = self.ensure_model(request.model_path)
        if loaded.vision:
            tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
            return len(tokenizer.encode(_vision_prompt(loaded, request.messages, request.thinking)))
        chat = [template_message(loaded.processor, m) for m in request.messages]
        return len(loaded.processor.apply_chat_template(chat, tools=list(request.tools) or None,
                                                        add_generation_prompt=True, enable_thinking=request.thinking))

    def _text_reply(self, loaded: LoadedModel, generation: Generation) -> None:
        """Stream a reply from an mlx-lm model, reusing the conversation's KV cache."""
        from mlx_lm import stream_generate
        from mlx_lm.models.cache import (
            can_trim_prompt_cache,
            make_prompt_cache,
            trim_prompt_cache,
        )

        request = generation.request
        tokenizer = loaded.processor

        def templated(messages: Sequence[ChatMessage]) -> list[int]:
            chat = [template_message(tokenizer, m) for m in messages]
            return list(tokenizer.apply_chat_template(chat, tools=list(request.tools) or None,
                                                      add_generation_prompt=True, enable_thinking=request.thinking))

        def encode(messages: Sequence[ChatMessage]) -> list[int]:
            if request.raw:
                return list(tokenizer.encode(messages[-1].content))
            if not request.continue_last:
                return templated(messages)
            *history, partial = messages  # the reply so far follows the generation prompt, as the model wrote it
            tokens = templated(history)
            text = continued_prompt(tokenizer.decode(tokens[-16:]), partial, tokenizer)
            return tokens + list(tokenizer.encode(text, add_special_tokens=False))

        entry = self._take_cache(request.conversation_id, loaded)
        from_disk = entry is None and self.files is not None
        if from_disk:
            entry = self.files.load(request.conversation_id, loaded.path, loaded.model)
        context = context_length(loaded.config, request.context_limit)
        fitted = fit_prompt(encode, request.messages, context, request.params.max_tokens,
                            hint=entry.dropped if entry else 0)
        tokens = fitted.tokens
        reused = 0
        if from_disk and entry is not None and common_prefix_length(entry.tokens, tokens) == 0:
            log.info("The saved prompt cache of conversation %s does not begin like its prompt; it is deleted",
                     request.conversation_id)
            self.files.delete(request.conversation_id)
            entry = None
        if entry is not None and can_trim_prompt_cache(entry.cache):
            # Keep at least one token to prefill: the model needs logits for the next token.
            reused = min(common_prefix_length(entry.tokens, tokens), len(tokens) - 1)
            trim_prompt_cache(entry.cache, len(entry.tokens) - reused)
            cache = entry.cache
        else:
            cache = make_prompt_cache(loaded.model)
        new_tokens = len(tokens) - reused
        if new_tokens > 1:
            generation.put(GenerationEvent(status=f"Reading the prompt ({new_tokens:,} new tokens)…"))
        try:
            relayed = _relay(stream_generate(
                loaded.model, tokenizer, tokens[reused:], max_tokens=fitted.max_tokens, prompt_cache=cache,
                prefill_step_size=prefill_step(loaded),
                prompt_progress_callback=PrefillProgress(generation, reused, len(tokens)),
                **sampling_kwargs(request.params, held_to_grammar(loaded, request, tokenizer,
                                                                  tokenizer.decode(tokens[-16:]))),
            ), generation, thinking_splitter(tokenizer, tokenizer.decode(tokens[-16:]), _partial(request)),
                continued_by=tokenizer if request.continue_last else None,
                tools=tool_splitter(tokenizer, request.tools))
        except PrefillStopped as stopped:
            log.info("Stopped reading the prompt of conversation %s after %d of %d new tokens",
                     request.conversation_id, stopped.processed, new_tokens)
            # The cache holds every chunk read so far: the next turn goes on from there.
            self.caches.put(request.conversation_id,
                            CachedPrompt(tokens[: reused + stopped.processed], cache, fitted.dropped,
                                         loaded.path))
            generation.put(GenerationEvent(stats=replace(
                _empty_stats("stopped"), prompt_tokens=len(tokens), cached_tokens=reused,
                context_length=context, dropped_messages=fitted.dropped)))
            return
        # The cache now holds the prompt and every token the generator handed out.
        if new_tokens >= FIRST_PREFILL_STEP and relayed.last is not None:
            loaded.prefill_tps = relayed.last.prompt_tps
        generation.put(_final_event(generation, relayed, len(tokens), reused, len(relayed.tokens), context,
                                    fitted.dropped))
        # After the reply's last event: keeping this cache may write an older one to disk.
        self.caches.put(request.conversation_id,
                        CachedPrompt(tokens + relayed.tokens, cache, fitted.dropped, loaded.path))

    def _vision_reply(self, loaded: LoadedModel, generation: Generation) -> None:
        """Stream a reply from an mlx-vlm model; mlx-vlm reuses the conversation's KV cache itself."""
        from mlx_vlm import PromptCacheState, VisionFeatureCache, stream_generate

        request = generation.request
        params = request.params
        tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)

        def templated(messages: Sequence[ChatMessage]) -> str:
            return _vision_prompt(loaded, messages, request.thinking)

        def template(messages: Sequence[ChatMessage]) -> str:
            if not request.continue_last:
                return templated(messages)
            *history, partial = messages
            prompt = templated(history)
            return prompt + continued_prompt(prompt, partial, tokenizer)

        entry = self._take_cache(request.conversation_id, loaded)
        context = context_length(loaded.config, request.context_limit)
        # Counts text tokens and one per image marker: mlx-vlm expands images only while it reads them.
        fitted = fit_prompt(lambda messages: list(tokenizer.encode(template(messages))), request.messages,
                            context, params.max_tokens, hint=entry.dropped if entry else 0)
        kept = fitted.messages
        images = [load_for_model(path) for m in kept for path in m.images]
        state = entry.cache if entry is not None else PromptCacheState()
        if loaded.vision_features is None:
            loaded.vision_features = VisionFeatureCache()
        generation.put(GenerationEvent(status="Reading the prompt…"))

        prompt = template(kept)
        chunks = stream_generate(
            loaded.model, loaded.processor, prompt, image=images or None, max_tokens=fitted.max_tokens,
            temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=params.min_p,
            repetition_penalty=params.repetition_penalty if params.repetition_penalty != 1.0 else None,
            prompt_cache_state=state, vision_cache=loaded.vision_features,
            logits_processors=held_to_grammar(loaded, request, tokenizer, prompt[-200:]) or None,
        )
        # mlx-vlm records the turn's tokens only at the end; it trims by the cache's real length,
        # so a turn stopped early leaves the state safe to reuse.
        relayed = _relay(chunks, generation, thinking_splitter(tokenizer, prompt[-200:], _partial(request)),
                         continued_by=tokenizer if request.continue_last else None)
        self.caches.put(request.conversation_id,
                        CachedPrompt(list(state.token_ids or []), state, fitted.dropped, loaded.path))
        last = relayed.last
        generation.put(_final_event(generation, relayed, last.prompt_tokens if last else 0,
                                    last.cached_tokens if last else 0, last.generation_tokens if last else 0,
                                    context, fitted.dropped))


def prefill_step(loaded: LoadedModel) -> int:
    """Tokens per prompt chunk: about `PREFILL_CHUNK_S` of reading at this model's measured speed."""
    if loaded.prefill_tps is None:
        return FIRST_PREFILL_STEP
    low, high = PREFILL_STEPS
    return int(min(max(loaded.prefill_tps * PREFILL_CHUNK_S, low), high))


def _vision_prompt(loaded: LoadedModel, messages: Sequence[ChatMessage], thinking: bool) -> str:
    """The prompt text of a vision model's chat template, one marker per image."""
    from mlx_vlm.prompt_utils import apply_chat_template

    return apply_chat_template(loaded.processor, loaded.config, [_vision_message(m) for m in messages],
                               num_images=sum(len(m.images) for m in messages), enable_thinking=thinking)


def _partial(request: ChatRequest) -> ChatMessage | None:
    """The reply being continued, if this request continues one."""
    return request.messages[-1] if request.continue_last and request.messages else None


def _empty_stats(finish_reason: str) -> GenerationStats:
    """Stats of a reply that never started."""
    return GenerationStats(0, 0, 0.0, 0, 0.0, 0.0, 0.0, finish_reason)
