"""What the API served: one record per request, logged and kept (the latest ones) for the tab."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

KEPT = 100  # the latest requests the tab can show


@dataclass
class RequestRecord:
    """One request: who asked for what, and how it went (no prompt text)."""

    client: str  # the key's name, or "this machine" without keys
    endpoint: str
    model: str = ""
    status: int = 200
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    first_token_s: float | None = None
    tokens_per_s: float | None = None
    seconds: float = 0.0
    note: str = ""  # why it was refused, or what was changed (a max_tokens capped)
    at: float = field(default_factory=time.time)


class RequestLog:
    """The latest records, newest last; every record also goes to the log."""

    def __init__(self) -> None:
        self._records: deque[RequestRecord] = deque(maxlen=KEPT)
        self._lock = threading.Lock()

    def add(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)
        first = f"{record.first_token_s:.2f} s" if record.first_token_s is not None else "-"
        speed = f"{record.tokens_per_s:.1f} tok/s" if record.tokens_per_s is not None else "-"
        log.log(logging.WARNING if record.status >= 500 else logging.INFO,
                "API %s %s from %s: %d · model %s · tokens in %d (cached %d), out %d · first token %s · %s · "
                "%.2f s%s", record.endpoint, "answered" if record.status < 400 else "refused", record.client,
                record.status, record.model or "-", record.prompt_tokens, record.cached_tokens,
                record.completion_tokens, first, speed, record.seconds, f" · {record.note}" if record.note else "")

    def latest(self, count: int = 20) -> list[RequestRecord]:
        """The newest `count` records, newest first."""
        with self._lock:
            return list(self._records)[-count:][::-1]
