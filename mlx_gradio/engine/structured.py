"""Decoding held to a grammar: a logits processor for mlx-lm and mlx-vlm that lets through only the tokens an
llguidance matcher allows next, on any MLX device (mlx-vlm's own mask kernel is Metal-only)."""

from __future__ import annotations

import logging
from typing import Any

import llguidance
import llguidance.hf
import llguidance.numpy
import mlx.core as mx
import numpy as np
from mlx_lm.tokenizer_utils import TokenizerWrapper

from ..errors import GenerationFailed, StructuredOutputUnavailable

log = logging.getLogger(__name__)

TAIL_TOKENS = 16  # tokens decoded to spot the end of a thinking block (a marker may take several)


def grammar_tokenizer(tokenizer: Any, end_tokens: list[int], name: str) -> llguidance.LLTokenizer:
    """llguidance's view of a model's vocabulary (it walks every token: build once per loaded model)."""
    hf = tokenizer._tokenizer if isinstance(tokenizer, TokenizerWrapper) else tokenizer  # mlx-lm's wraps HF's
    try:
        return llguidance.hf.from_tokenizer(hf, eos_token=end_tokens or None)
    except Exception as exc:  # noqa: BLE001 - llguidance reads fast (tokenizer.json) tokenizers only
        log.warning("llguidance cannot read the tokenizer of %s", name, exc_info=True)
        raise StructuredOutputUnavailable(f"{name}'s tokenizer cannot be held to a JSON schema "
                                          f"({type(exc).__name__}: {exc}).") from exc


class GrammarProcessor:
    """Masks every token the grammar does not allow next; with `wait_for` (the end of a thinking block the
    prompt opened) the thinking stays free and the grammar holds from the first token after it.

    Called once per generated token with the tokens so far (mlx-lm and mlx-vlm alike): the first call comes
    before any token is generated, each later one after the token that `tokens` ends with.
    """

    def __init__(self, grammar: str, vocabulary: llguidance.LLTokenizer, tokenizer: Any,
                 wait_for: str = "") -> None:
        self._matcher = llguidance.LLMatcher(vocabulary, grammar)
        self._tokenizer = tokenizer
        self._wait_for = wait_for
        self._thought: list[int] = []
        self._started = False
        self._bits = np.zeros((1, (vocabulary.vocab_size + 31) // 32), dtype=np.int32)
        self._shifts = mx.arange(32, dtype=mx.uint32)

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self._started:
            self._take(int(tokens[-1].item()))
        self._started = True
        if self._wait_for:
            return logits
        llguidance.numpy.fill_next_token_bitmask(self._matcher, self._bits, 0)
        return mx.where(self._allowed(logits.shape[-1]), logits, -mx.inf)

    def _take(self, token: int) -> None:
        if self._wait_for:
            self._thought.append(token)
            if self._wait_for in self._tokenizer.decode(self._thought[-TAIL_TOKENS:]):
                self._wait_for = ""
            return
        if self._matcher.is_stopped():
            return  # the token that ends the reply, the only one a finished grammar allows
        self._matcher.consume_token(token)
        error = self._matcher.get_error()
        if error:
            raise GenerationFailed(f"The answer left its JSON schema: {error}")

    def _allowed(self, width: int) -> mx.array:
        """The packed bitmask as one flag per vocabulary entry, cut or padded (with "no") to `width`."""
        words = mx.array(self._bits.view(np.uint32)).reshape(-1, 1)
        flags = ((words >> self._shifts) & 1).reshape(-1).astype(mx.bool_)
        if flags.shape[0] >= width:
            return flags[:width]
        return mx.concatenate([flags, mx.zeros((width - flags.shape[0],), dtype=mx.bool_)])
