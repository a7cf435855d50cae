"""What the engine is asked to do and what it streams back: plain dataclasses, no MLX imports."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one reply; `seed < 0` means random, `top_k == 0` means off.

    Greedy by default: small local models (the demo model above all) answer best that way.
    """

    temperature: float = 0.0
    top_p: float = 0.9
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int = -1
    max_tokens: int = 1024


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation as the model sees it; `images` are local file paths.

    `reasoning` is an earlier reply's thinking, given to templates that ask for it (`reasoning_content`).
    """

    role: str  # "system", "user", "assistant" or "tool" (a tool's result)
    content: str
    images: tuple[str, ...] = ()
    reasoning: str = ""
    tool_calls: tuple[dict, ...] = ()  # an assistant's calls: {"id", "name", "arguments"}
    tool_call_id: str = ""  # a tool result: the call it answers


@dataclass(frozen=True)
class ChatRequest:
    """Generate the next assistant reply of `conversation_id` with the model at `model_path`."""

    conversation_id: str
    model_path: str
    messages: tuple[ChatMessage, ...]
    params: SamplingParams = SamplingParams()
    context_limit: int = 0  # tokens; 0 means the model's own context length
    thinking: bool = True  # the template's `enable_thinking` (a template without one ignores it)
    continue_last: bool = False  # the last message is a reply that was cut short: write on from its end
    raw: bool = False  # one message, the whole prompt, read without the chat template (a plain completion)
    tools: tuple[dict, ...] = ()  # tools the model may call, as OpenAI describes them (`{"type": "function", …}`)
    grammar: str = ""  # an llguidance grammar the answer must follow (grammar.py: a JSON schema); "" for free text
    idle_unload_s: float | None = None  # unload the model after so long without a reply (an API client's `ttl`)
    client: str = ""  # who asks (a user): waiting replies take turns between clients
    first: bool = False  # served before the others waiting (an owner's reply)


@dataclass(frozen=True)
class GenerationStats:
    """Numbers about one finished reply, shown under it in the chat."""

    prompt_tokens: int
    cached_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    time_to_first_token: float
    peak_memory_gb: float
    finish_reason: str
    context_length: int = 0
    dropped_messages: int = 0  # oldest messages left out so the prompt fits the context

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens that were actually run through the model (not taken from the cache)."""
        return self.prompt_tokens - self.cached_tokens


@dataclass(frozen=True)
class GenerationEvent:
    """A piece of a streaming reply: new answer text, thinking text, a status line, or (last) the stats."""

    text: str = ""
    reasoning: str = ""
    status: str = ""
    tool_calls: tuple[dict, ...] = ()  # calls the model completed in this piece: {"id", "name", "arguments"}
    stats: GenerationStats | None = None

    @property
    def done(self) -> bool:
        """True for the final event of a reply."""
        return self.stats is not None


@dataclass(eq=False)  # a handle: equal only to itself, and hashable
class Generation:
    """A handle on one queued or running reply: read its events, or stop it between tokens."""

    request: ChatRequest
    submitted_at: float = field(default_factory=time.perf_counter)
    _events: queue.Queue = field(default_factory=queue.Queue, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    def stop(self) -> None:
        """Ask the engine to end this reply after the current token; what was generated stays."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        """Whether `stop()` was called."""
        return self._stop.is_set()

    def put(self, item: GenerationEvent | BaseException) -> None:
        """Called by the engine thread to hand over an event or the error that ended the reply."""
        self._events.put(item)

    def events(self) -> Iterator[GenerationEvent]:
        """Events until the final one; re-raises an error from the engine. Closing early stops it."""
        try:
            while True:
                item = self._events.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.done:
                    return
        finally:
            self.stop()
