"""Will it fit? A model's memory at a context length, from its config and weight sizes, before downloading.

Memory = weights + KV cache + a fixed overhead. The KV cache grows by
`2 × kv_heads × head_dim × bytes` per token in every full-attention layer; a sliding-window layer
holds at most its window, and linear-attention or state-space layers keep a fixed, small state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .folders import context_length
from .memory import MachineMemory

OVERHEAD_BYTES = 300_000_000  # the runtime, activations of one prompt chunk, buffers
FITS_SHARE = 0.8  # "fits" leaves a fifth of the limit for everything else; "tight" uses the rest
DEFAULT_CONTEXT_CAP = 32_768  # what the fit is shown at when the user has not picked a length
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs to know about a model."""

    weight_bytes: int
    context_length: int
    full_layers: int
    sliding_layers: int
    sliding_window: int
    kv_heads: int
    head_dim: int
    kv_dtype_bytes: int

    @property
    def bytes_per_token(self) -> int:
        """KV bytes one token adds in one attention layer."""
        return 2 * self.kv_heads * self.head_dim * self.kv_dtype_bytes


@dataclass(frozen=True)
class Fit:
    """The estimate for one context length, against this machine."""

    verdict: str  # "fits", "tight" or "too large"
    weights: int
    kv_cache: int
    overhead: int
    context: int
    limit: int
    largest_context: int  # the longest context that still "fits" (0 if none does)

    @property
    def needed(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    @property
    def summary(self) -> str:
        """"4.2 GB weights + 1.1 GB context at 32k (+ 300 MB runtime) = 5.6 GB of 16.0 GB"."""
        return (f"{gb(self.weights)} weights + {gb(self.kv_cache)} context at {tokens(self.context)} "
                f"(+ {gb(self.overhead)} runtime) = {gb(self.needed)} of {gb(self.limit)}")


def gb(size: int) -> str:
    """Bytes as a short size."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def tokens(count: int) -> str:
    """A token count as "32k" or "512"."""
    return f"{count // 1024}k" if count >= 1024 and count % 1024 == 0 else f"{count:,}"


def text_config(config: dict) -> dict:
    """The language model's settings (vision models keep them in `text_config`)."""
    inner = config.get("text_config")
    return {**config, **inner} if isinstance(inner, dict) else config


def attention_layers(config: dict) -> tuple[int, int, int]:
    """(full-attention layers, sliding-window layers, window) as the config describes them."""
    layers = int(config.get("num_hidden_layers") or config.get("n_layer") or 0)
    window = int(config.get("sliding_window") or 0)
    kinds = config.get("layer_types")
    if isinstance(kinds, list) and kinds:
        full = sum(1 for kind in kinds if kind in ("full_attention", "attention", "global"))
        sliding = sum(1 for kind in kinds if kind in ("sliding_attention", "local", "chunked_attention"))
        return full, sliding if window else 0, window
    blocks = config.get("layers_block_type")
    if isinstance(blocks, list) and blocks:
        return sum(1 for kind in blocks if "attention" in str(kind)), 0, window
    pattern = config.get("hybrid_override_pattern")
    if isinstance(pattern, str) and pattern:
        return pattern.count("*"), 0, window
    every = int(config.get("sliding_window_pattern") or 0)
    if every > 1 and window:  # Gemma: every n-th layer is global, the others slide
        full = layers // every
        return full, layers - full, window
    return layers, 0, window


def model_shape(config: dict, weight_bytes: int, float_dtypes: Iterable[str] = ()) -> ModelShape:
    """A model's shape from its config, the size of its weights and the float types they hold.

    The KV cache takes the type of the model's floating-point weights (float32 if any are, else
    16-bit); without that, the config's `torch_dtype`, else 16-bit.
    """
    text = text_config(config)
    heads = int(text.get("num_attention_heads") or text.get("n_head") or 1)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or (int(text.get("hidden_size") or 0) // heads) or 64)
    floats = [DTYPE_BYTES[d] for d in float_dtypes if d in DTYPE_BYTES]
    dtype = max(floats) if floats else DTYPE_BYTES.get(str(text.get("torch_dtype") or text.get("dtype")), 2)
    full, sliding, window = attention_layers(text)
    return ModelShape(weight_bytes, context_length(config), full, sliding, window, kv_heads, head_dim, dtype)


def kv_bytes(shape: ModelShape, context: int) -> int:
    """Bytes of KV cache for `context` tokens."""
    sliding_tokens = min(context, shape.sliding_window) if shape.sliding_window else context
    return shape.bytes_per_token * (shape.full_layers * context + shape.sliding_layers * sliding_tokens)


def default_context(shape: ModelShape) -> int:
    """The context a fit is shown at first: the model's own, capped."""
    return min(shape.context_length, DEFAULT_CONTEXT_CAP)


def estimate(shape: ModelShape, context: int, memory: MachineMemory) -> Fit:
    """Whether the model fits this machine at `context` tokens, and the longest context that does."""
    context = max(1, min(int(context), shape.context_length))
    fixed = shape.weight_bytes + OVERHEAD_BYTES
    needed = fixed + kv_bytes(shape, context)
    return Fit(verdict(needed, memory), shape.weight_bytes, needed - fixed, OVERHEAD_BYTES, context, memory.limit,
               largest_context(shape, comfortable_bytes(memory)))


def largest_context(shape: ModelShape, budget: float) -> int:
    """The longest context (up to the model's own) whose estimate stays within `budget` bytes."""
    low, high = 0, shape.context_length
    while low < high:  # binary search: kv_bytes grows with the context
        mid = (low + high + 1) // 2
        if shape.weight_bytes + OVERHEAD_BYTES + kv_bytes(shape, mid) <= budget:
            low = mid
        else:
            high = mid - 1
    return low


def weights_verdict(weight_bytes: int | None, memory: MachineMemory) -> str:
    """A first verdict from the weights alone (search results carry no config): "—" when unknown."""
    if weight_bytes is None:
        return "—"
    return verdict(weight_bytes + OVERHEAD_BYTES, memory)


def verdict(needed: float, memory: MachineMemory) -> str:
    """ "fits" within the comfortable share, "tight" within the limit, else "too large"."""
    return "fits" if needed <= comfortable_bytes(memory) else "tight" if needed <= memory.limit else "too large"


def comfortable_bytes(memory: MachineMemory) -> float:
    """What a model may take and still "fit": part of the limit, and no more than is free right now."""
    comfortable = memory.limit * FITS_SHARE
    return min(comfortable, memory.available) if memory.available > 0 else comfortable
