"""Will it fit? The estimate against the real KV caches of real models, and the verdicts it gives."""

from __future__ import annotations

import json
from pathlib import Path

from mlx_gradio.models.fit import OVERHEAD_BYTES, estimate, kv_bytes, model_shape
from mlx_gradio.models.folders import folder_size, weight_dtypes
from mlx_gradio.models.memory import MachineMemory, machine_memory

TOKENS = 512


def measured_kv(cache: list) -> int:
    """Bytes a prompt cache holds after a prefill."""
    return sum(layer.nbytes for layer in cache)


def prefill(model, cache: list, count: int, chunk: int = 64) -> None:
    """Run `count` tokens through `model` into `cache`, in chunks as the engine does."""
    import mlx.core as mx

    for start in range(0, count, chunk):
        model(mx.array([[(start + i) % 50 + 3 for i in range(min(chunk, count - start))]]), cache=cache)
        mx.eval([layer.state for layer in cache])


def shape_of(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    return model_shape(config, folder_size(folder), weight_dtypes(folder))


def test_the_estimate_matches_the_demo_models_real_kv_cache(demo_model: Path):
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    model, _ = load(str(demo_model))
    cache = make_prompt_cache(model)
    prefill(model, cache, 1)  # mlx-lm's cache takes room for 256 tokens at a time: one token fills a whole step
    real = measured_kv(cache)
    assert abs(kv_bytes(shape_of(demo_model), 256) - real) <= 0.1 * real


def test_the_estimate_matches_the_tiny_llamas_real_kv_cache(tmp_path: Path):
    from mlx_lm import load
    from mlx_lm.models.cache import make_prompt_cache

    from mlx_gradio.models.gguf import import_gguf
    from tests.test_gguf import write_tiny_gguf

    write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = import_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny-llama")
    model, _ = load(str(folder))
    cache = make_prompt_cache(model)
    prefill(model, cache, 300)
    real = measured_kv(cache)
    # mlx-lm grows a cache 256 tokens at a time: 300 tokens take room for 512.
    assert abs(kv_bytes(shape_of(folder), 512) - real) <= 0.1 * real


def test_the_estimate_matches_the_tiny_vision_models_real_kv_cache(tiny_vlm: Path):
    from mlx_vlm import load
    from mlx_vlm.models.cache import make_prompt_cache

    model, _ = load(str(tiny_vlm))
    cache = make_prompt_cache(model.language_model)
    prefill(model.language_model, cache, TOKENS)
    real = measured_kv(cache)
    assert abs(kv_bytes(shape_of(tiny_vlm), TOKENS) - real) <= 0.1 * real


def test_sliding_window_layers_are_counted_at_their_window_only():
    """A tiny Gemma 3 (random weights, mlx-lm's own classes): five sliding layers, one global."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import gemma3_text

    config = {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 6, "intermediate_size": 128,
              "num_attention_heads": 4, "head_dim": 16, "num_key_value_heads": 2, "vocab_size": 64,
              "sliding_window": 128, "sliding_window_pattern": 6, "max_position_embeddings": 4096}
    model = gemma3_text.Model(gemma3_text.ModelArgs.from_dict(config))
    mx.eval(model.parameters())
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    cache = model.make_cache()
    prefill(model, cache, 1020)
    for _ in range(4):  # single-token steps trim the sliding caches to their window, as decoding does
        model(mx.array([[5]]), cache=cache)
    mx.eval([layer.state for layer in cache])
    real = measured_kv(cache)
    shape = model_shape(config, weights, ["F32"])
    assert (shape.full_layers, shape.sliding_layers) == (1, 5)
    assert abs(kv_bytes(shape, 1024) - real) <= 0.1 * real
    assert kv_bytes(shape, 4096) < 3 * kv_bytes(shape, 1024)  # the sliding layers stop growing


def test_verdicts_and_the_largest_context_that_fits():
    shape = model_shape({"num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
                         "hidden_size": 896, "max_position_embeddings": 32768, "torch_dtype": "bfloat16"},
                        weight_bytes=280_000_000)
    per_token = 24 * 2 * 2 * 64 * 2  # layers × (K and V) × kv heads × head dim × bf16
    assert kv_bytes(shape, 32768) == per_token * 32768
    roomy = MachineMemory(total=16 * 10**9, available=12 * 10**9, limit=16 * 10**9, source="test")
    fit = estimate(shape, 32768, roomy)
    assert fit.verdict == "fits" and fit.largest_context == 32768
    assert fit.summary == "280 MB weights + 403 MB context at 32k (+ 300 MB runtime) = 983 MB of 16.0 GB"
    small = MachineMemory(total=900 * 10**6, available=900 * 10**6, limit=900 * 10**6, source="test")
    assert estimate(shape, 32768, small).verdict == "too large"
    fit = estimate(shape, 4096, small)
    assert fit.verdict == "fits"
    budget = 0.8 * 900 * 10**6 - 280_000_000 - OVERHEAD_BYTES
    assert fit.largest_context == int(budget // per_token)
    busy = MachineMemory(total=900 * 10**6, available=600 * 10**6, limit=900 * 10**6, source="test")
    assert estimate(shape, 4096, busy).verdict == "tight"  # fits the machine, not what is free right now


def test_this_machines_memory_is_read():
    memory = machine_memory()
    assert memory.limit > 10**9 and 0 < memory.available <= memory.total
