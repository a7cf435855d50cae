"""Fitting a conversation into a model's context: which oldest turns to leave out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ContextTooLong
from .jobs import ChatMessage

REPLY_SHARE = 4  # at most a quarter of the context is kept free for the reply
REFILL_SHARE = 0.75  # when turns must go, drop enough that the prompt fills only this much, so its start stays put


@dataclass(frozen=True)
class FittedPrompt:
    """The prompt tokens to run, the messages they hold, how many were left out, and room for the reply."""

    tokens: list[int]
    messages: tuple[ChatMessage, ...]
    dropped: int
    max_tokens: int


def fit_prompt(encode: Callable[[Sequence[ChatMessage]], list[int]], messages: Sequence[ChatMessage],
               context: int, max_tokens: int, hint: int = 0) -> FittedPrompt:
    """Leave out the oldest turns (never the system prompt) until the prompt and a reply fit `context`.

    `hint` is how many messages were left out for the previous reply: starting there keeps the
    prompt's beginning (and so the prompt cache) the same from turn to turn. Raises
    `ContextTooLong` when even the last user message alone does not fit.
    """
    system = list(messages[:1]) if messages and messages[0].role == "system" else []
    turns = list(messages[len(system):])
    reserve = min(max_tokens, context // REPLY_SHARE)
    budget = context - reserve
    starts = [i for i, m in enumerate(turns) if m.role == "user"] or [0]  # a kept history starts with a user turn

    def prompt(dropped: int) -> list[int]:
        return encode([*system, *turns[dropped:]])

    def fitted(tokens: list[int], dropped: int) -> FittedPrompt:
        room = max(1, min(max_tokens, context - len(tokens)))
        return FittedPrompt(tokens, (*system, *turns[dropped:]), dropped, room)

    first = next((d for d in starts if d >= hint), starts[-1])
    tokens = prompt(first)
    if len(tokens) <= budget:
        return fitted(tokens, first)
    last = starts[-1]
    alone = prompt(last) if last != first else tokens
    if len(alone) > budget:
        raise ContextTooLong(
            f"The message is too long for this model: with the system prompt it takes {len(alone):,} tokens, "
            f"and the context holds {context:,}, of which {reserve:,} are kept for the reply. "
            "Shorten the message or the system prompt, or lower “Max new tokens”."
        )
    candidates = [d for d in starts if first < d <= last]

    def smallest(limit: int) -> tuple[list[int], int] | None:
        """The prompt of the first start whose prompt has at most `limit` tokens (binary search)."""
        low, high, found = 0, len(candidates) - 1, None
        while low <= high:
            mid = (low + high) // 2
            mid_tokens = prompt(candidates[mid])
            if len(mid_tokens) <= limit:
                found, high = (mid_tokens, candidates[mid]), mid - 1
            else:
                low = mid + 1
        return found

    # Leave out enough that the prompt fills only part of the budget, so the next turns keep this start.
    return fitted(*(smallest(int(budget * REFILL_SHARE)) or smallest(budget) or (alone, last)))
