"""The MLX worker thread: the one thread that loads models and generates.

MLX streams belong to the thread that made them, and Gradio calls handlers from a pool of
threads, so every piece of MLX work is a job on this thread's queue. Handlers get a `Future`
(load, unload, any call) or a `Generation` whose events they read as the reply streams.
Replies wait as `Generation` objects of their own, so a later version can take several pending
ones at once and decode them together in a batch. Waiting replies take turns: an owner's first,
then one per client in turn, so one busy client cannot keep the others waiting.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from ..errors import AppError, GenerationFailed
from ..models.folders import model_name
from .jobs import ChatRequest, Generation, GenerationEvent
from .loaded_models import ModelInMemory
from .prompt_cache import DEFAULT_LIMIT
from .prompt_files import PromptFiles

log = logging.getLogger(__name__)

_SHUTDOWN = object()
_NEXT_REPLY = object()  # on the job queue for each waiting reply: run the one whose turn it is


@dataclass(frozen=True)
class EngineStatus:
    """What the engine holds and does right now, safe to read from any thread; `model_path` and its neighbours
    describe the model loaded or used last (`models` lists every loaded one)."""

    state: str = "empty"  # "empty", "loading", "ready" or "error"
    model_path: str | None = None
    model_name: str | None = None
    vision: bool = False
    message: str = ""
    generating: bool = False
    memory_bytes: int = 0  # MLX's active memory, after the last job
    peak_bytes: int = 0
    cached_conversations: int = 0  # conversations whose prompt cache is kept in memory
    cache_bytes: int = 0
    saved_conversations: int = 0  # conversations whose prompt cache is kept on disk
    saved_bytes: int = 0
    last_used: float = 0.0  # time.time() of the last reply or load
    models: tuple[ModelInMemory, ...] = ()  # every loaded model, the most recently used first
    memory_budget: int | None = None  # bytes the models and their caches may take (None: no bound)
    idle_unload_s: float = 0.0  # how long a model may go without a reply before it is unloaded (0: forever)

    def of(self, path: str) -> EngineStatus:
        """The status as it concerns the model at `path`: ready if it is loaded, loading or failed if that is
        what it is doing, else empty."""
        if self.model_path == path and self.state in ("loading", "error"):
            return self
        loaded = next((m for m in self.models if m.path == path), None)
        if loaded is None:
            return replace(self, state="empty", model_path=path, model_name=model_name(path), vision=False,
                           message="", generating=False)
        return replace(self, state="ready", model_path=path, model_name=loaded.name, vision=loaded.vision,
                       message="")


class Engine:
    """Owns the MLX worker thread, the loaded models and the per-conversation prompt caches."""

    def __init__(self, cache_limit: int = DEFAULT_LIMIT, cache_budget: int | None = None,
                 idle_unload_s: float = 0.0, prompt_files: PromptFiles | None = None,
                 memory_budget: int | None = None) -> None:
        self._idle_unload_s = idle_unload_s
        self._memory_budget = memory_budget
        self._pinned: set[str] = set()
        self._prompt_files = prompt_files
        self._jobs: queue.Queue = queue.Queue()
        self._status = EngineStatus(idle_unload_s=idle_unload_s)
        self._status_lock = threading.Lock()
        self._cache_limit = cache_limit
        self._cache_budget = cache_budget
        self._worker: Any = None  # the generation.Worker, created on the thread itself
        self._replies: set[Generation] = set()  # queued or running, so shutdown can stop them
        self._waiting: list[Generation] = []  # queued, in the order they came
        self._turns: dict[str, int] = {}  # client -> when (a count of replies begun) its last reply began
        self._begun = 0
        self._replies_lock = threading.Lock()
        self._shut_down = False
        self._thread_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
        self._thread.start()

    # --- any thread -------------------------------------------------------------------------

    def status(self) -> EngineStatus:
        """A snapshot of the engine's state."""
        with self._status_lock:
            return self._status

    def call(self, fn: Callable[..., Any], *args: Any) -> Future:
        """Run `fn(*args)` on the engine thread (for any MLX work) and return its future."""
        future: Future = Future()
        self._put((fn, args, future))
        return future

    def load(self, model_path: str) -> Future:
        """Load a model (the least recently used ones go first if the memory budget needs the room); the future
        gives the loaded model."""
        return self.call(lambda: self._worker.ensure_model(model_path))

    def unload(self, model_path: str | None = None) -> Future:
        """Drop one loaded model (None: every one) and its caches so the memory goes back."""
        return self.call(lambda: self._worker.unload(model_path))

    def set_memory_budget(self, budget_bytes: int | None) -> Future:
        """Bound the bytes loaded models and their prompt caches may take (None: no bound); the least recently
        used unpinned ones are unloaded to make room, and at once if they now take more."""
        self._memory_budget = budget_bytes
        return self.call(lambda: self._worker.set_memory_budget(budget_bytes))

    def set_pinned(self, model_paths: set[str]) -> Future:
        """Models kept loaded: never unloaded while idle or to make room (they load on their first use)."""
        self._pinned = {str(p) for p in model_paths}
        pinned = set(self._pinned)
        return self.call(lambda: self._worker.set_pinned(pinned))

    def set_cache_budget(self, budget_bytes: int | None) -> Future:
        """Bound the bytes the prompt caches may hold (the least recently used go first)."""
        self._cache_budget = budget_bytes
        return self.call(lambda: self._worker.caches.set_budget(budget_bytes))

    def set_idle_unload(self, seconds: float) -> None:
        """Unload each unpinned model after `seconds` without a reply (0: never); the next message loads it again."""
        self._idle_unload_s = max(0.0, float(seconds))
        self.set_status(idle_unload_s=self._idle_unload_s)
        self._put((lambda: None, (), Future()))  # wake the thread so the new timeout applies now

    def set_disk_cache_budget(self, budget_bytes: int) -> Future:
        """Bound the bytes of prompt caches kept on disk (0: none; the oldest files go first)."""
        files = self._prompt_files
        return self.call(lambda: files.set_budget(budget_bytes) if files is not None else None)

    def count_tokens(self, request: ChatRequest) -> Future:
        """The number of tokens of the request's prompt, as its model reads it (the model is loaded)."""
        return self.call(lambda: self._worker.prompt_tokens(request))

    def forget_conversation(self, conversation_id: str) -> Future:
        """Drop a conversation's prompt cache, in memory and on disk (it was deleted)."""
        return self.call(lambda: self._worker.forget(conversation_id))

    def generate(self, request: ChatRequest) -> Generation:
        """Queue a reply; read it with `Generation.events()`, end it early with `.stop()`."""
        generation = Generation(request)
        with self._replies_lock:
            self._replies.add(generation)
            ahead = self._ahead_of(request)
            self._waiting.append(generation)
        if ahead:
            replies = "reply" if ahead == 1 else "replies"
            generation.put(GenerationEvent(status=f"Waiting for the model: {ahead} {replies} ahead of this one…"))
        self._put(_NEXT_REPLY)
        return generation

    def _ahead_of(self, request: ChatRequest) -> int:
        """How many waiting replies come before a new one (a fair guess: turns may change as others come)."""
        if request.first:
            return sum(g.request.first for g in self._waiting) + self.status().generating
        return len(self._waiting) + self.status().generating

    def _take_turn(self) -> Generation:
        """The waiting reply to run now: an owner's first, else that of the client whose last reply began
        longest ago; the earliest of that client's."""
        with self._replies_lock:
            generation = min(self._waiting, key=lambda g: (not g.request.first,
                                                           self._turns.get(g.request.client, -1)))
            self._waiting.remove(generation)
            self._begun += 1
            self._turns[generation.request.client] = self._begun
            return generation

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the replies in flight, unload, and end the thread."""
        self._shut_down = True
        with self._replies_lock:
            for generation in self._replies:
                generation.stop()
        self._jobs.put(_SHUTDOWN)
        self._thread.join(timeout)

    def _put(self, job: Any) -> None:
        """Queue a job; if the engine thread has died (a bug: every failure is caught on it), say so and start
        a new one, which takes the queued jobs and loads the model again when a reply needs it."""
        self._jobs.put(job)
        with self._thread_lock:
            if self._thread.is_alive() or self._shut_down:
                return
            log.error("The engine thread ended unexpectedly; starting a new one (the model loads again)")
            self.set_status(state="error", model_path=None, model_name=None, generating=False,
                            message="The engine stopped after an internal error and was restarted; the next "
                                    "message loads the model again.")
            self._worker = None
            self._thread = threading.Thread(target=self._run, name="mlx-engine", daemon=True)
            self._thread.start()

    # --- the engine thread ------------------------------------------------------------------

    def set_status(self, **changes: Any) -> None:
        """Update the status snapshot (called by the worker)."""
        with self._status_lock:
            self._status = replace(self._status, **changes)

    def _run(self) -> None:
        """The thread's loop: one job at a time, forever."""
        job = self._jobs.get()
        if job is _SHUTDOWN:
            return
        # MLX is imported only once there is work, so it does not slow the page's start.
        from .generation import Worker

        self._worker = Worker(self.set_status, self._cache_limit, self._cache_budget, self._prompt_files,
                              self._memory_budget)
        self._worker.models.pinned = set(self._pinned)
        try:
            while job is not _SHUTDOWN:
                if job is _NEXT_REPLY:
                    self._run_generation(self._take_turn())
                else:
                    self._run_call(*job)
                self._housekeeping("read the memory in use", self._show_usage)
                job = self._next_job()
        except BaseException:
            log.error("The engine thread is ending on an unexpected error", exc_info=True)
            self._housekeeping("unload after that error", self._worker.close)  # MLX streams die with their thread
            raise
        self._housekeeping("unload at exit", self._worker.close)

    def _show_usage(self) -> None:
        self.set_status(**self._worker.usage())

    def _housekeeping(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run work of the engine's own between jobs; a failure is logged and survived (None), never the end
        of the only MLX thread."""
        try:
            return fn()
        except Exception:  # noqa: BLE001 - every reply, load and import waits on this thread
            log.exception("The engine could not %s; it goes on", what)
            return None

    def _next_job(self) -> Any:
        """The next job; meanwhile prompt caches go to disk one at a time, and with idle unloading
        on, each unpinned model is unloaded once it has had no reply for that long."""
        while self._jobs.empty() and self._housekeeping("write a prompt cache to disk", self._worker.save_one):
            self._housekeeping("read the memory in use", self._show_usage)
        while True:
            idle_at = self._worker.models.next_idle_at(self._idle_unload_s)
            timeout = None if idle_at is None else max(0.1, idle_at - time.time())
            try:
                return self._jobs.get(timeout=timeout)
            except queue.Empty:
                self._housekeeping("unload an idle model", self._unload_idle)

    def _unload_idle(self) -> None:
        names = self._worker.unload_idle(self._idle_unload_s)
        if names:
            self.set_status(**self._worker.usage(), message=f"{', '.join(names)} unloaded while idle; the next "
                                                            "message loads it again.")

    def _run_call(self, fn: Callable[..., Any], args: tuple, future: Future) -> None:
        """Run one call job and settle its future."""
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args))
        except AppError as exc:
            future.set_exception(exc)
        except Exception as exc:  # noqa: BLE001 - the thread must survive any job; the caller gets it
            log.exception("Engine job %s failed", getattr(fn, "__name__", fn))
            future.set_exception(exc)

    def _run_generation(self, generation: Generation) -> None:
        """Run one reply, handing every event (or the error) to its reader."""
        request = generation.request
        self.set_status(generating=True)
        try:
            self._worker.reply(generation)
        except AppError as exc:
            log.warning("Reply for conversation %s failed: %s", request.conversation_id, exc)
            generation.put(exc)
        except Exception as exc:  # noqa: BLE001 - report any MLX failure to the reader, keep the thread
            log.exception("Reply for conversation %s with %s failed", request.conversation_id, request.model_path)
            generation.put(GenerationFailed(f"The model failed while generating: {exc}"))
        except BaseException:  # the thread ends (see `_put`); the reader is told, not left waiting
            generation.put(GenerationFailed("The engine stopped after an internal error; send the message again."))
            raise
        finally:
            with self._replies_lock:
                self._replies.discard(generation)
            self.set_status(generating=False)

