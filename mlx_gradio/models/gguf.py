"""Import a llama-architecture GGUF file as an ordinary mlx-lm model folder.

MLX reads GGUF files itself: it returns Q4_0, Q4_1 and Q8_0 tensors as MLX quantized triplets
(weight, scales, biases, group size 32). The k-quants it can open (Q2_K, Q4_K, Q6_K) are decoded
with llama.cpp's own `gguf` package instead (MLX's reader gets every second sub-block of Q4_K
wrong), then quantized again to MLX 4-bit (8-bit for the embeddings and the output layer).
Importing is then renaming, undoing llama.cpp's RoPE row order for q/k, turning Llama 3's
`rope_freqs` back into the `rope_scaling` it came from, and writing `config.json`,
`model.safetensors` and the tokenizer files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import mlx.core as mx

from ..errors import UnsupportedGGUF

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GROUP_SIZE = 32
# ggml tensor type ids (ggml.h): the ones MLX can read, and the rest (named in the error).
SUPPORTED_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0", 10: "Q2_K", 12: "Q4_K", 14: "Q6_K",
                   30: "BF16"}
OTHER_TYPES = {
    6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 11: "Q3_K", 13: "Q5_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS",
    18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 29: "IQ1_M", 34: "TQ1_0",
    35: "TQ2_0",
}
K_QUANTS = {"Q2_K", "Q4_K", "Q6_K"}  # dequantized by MLX, quantized again to MLX's format
WIDE_LAYERS = ("token_embd.weight", "output.weight")  # kept at 8 bits: they suffer most from 4
LLAMA3_ORIGINAL_CONTEXT = 8192
TRUNCATED = "The GGUF file ends in the middle of its header (is it truncated?)."
MIN_ENTRY_BYTES = 12  # the smallest metadata value or tensor entry: an empty name and a type
MAX_ARRAY_DEPTH = 4
# GGUF metadata value types -> struct format of a scalar; 8 is a string, 9 an array.
SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING_TYPE, ARRAY_TYPE = 8, 9

LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
ROPE_FREQS = "rope_freqs.weight"  # Llama 3's RoPE scaling, precomputed by llama.cpp's converter


def read_tensor_types(path: Path) -> dict[str, str]:
    """Name -> ggml type name of every tensor in a GGUF file, read from its header only."""
    return read_header(path)[1]


def read_header(path: Path) -> tuple[str, dict[str, str]]:
    """The architecture and the name -> ggml type of every tensor, read from the header only; raises
    `UnsupportedGGUF` for a file that is not GGUF, or is cut short or corrupt (a half-finished download)."""
    architecture = ""
    with open(path, "rb") as f:
        end = os.fstat(f.fileno()).st_size
        if f.read(4) != GGUF_MAGIC:
            raise UnsupportedGGUF(f"{path.name} is not a GGUF file (it does not start with 'GGUF').")
        version, n_tensors, n_values = _unpack(f, "I"), _unpack(f, "Q"), _unpack(f, "Q")
        if version < 2:
            raise UnsupportedGGUF(f"{path.name} is GGUF version {version}; only versions 2 and 3 can be read.")
        if (n_values + n_tensors) * MIN_ENTRY_BYTES > end:
            raise UnsupportedGGUF(f"{path.name} names more header entries than the file can hold (is it "
                                  "truncated or corrupt?).")
        for _ in range(n_values):
            key = _read_string(f, end)
            value_type = _unpack(f, "I")
            if key == "general.architecture" and value_type == STRING_TYPE:
                architecture = _read_string(f, end)
            else:
                _skip_value(f, value_type, end)
        types = {}
        for _ in range(n_tensors):
            name = _read_string(f, end)
            n_dims = _unpack(f, "I")
            f.seek(8 * n_dims, 1)
            type_id = _unpack(f, "I")
            f.seek(8, 1)
            types[name] = SUPPORTED_TYPES.get(type_id) or OTHER_TYPES.get(type_id, f"type {type_id}")
    return architecture, types


def _unpack(f: BinaryIO, fmt: str) -> int:
    """One little-endian scalar from the file."""
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise UnsupportedGGUF(TRUNCATED)
    return struct.unpack("<" + fmt, data)[0]


def _read_string(f: BinaryIO, end: int) -> str:
    """A GGUF string: a 64-bit length, then UTF-8 bytes (a length past the end of the file is refused)."""
    length = _unpack(f, "Q")
    if length > end - f.tell():
        raise UnsupportedGGUF(TRUNCATED)
    return f.read(length).decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, value_type: int, end: int, depth: int = 0) -> None:
    """Move past one metadata value of the given type."""
    if value_type == STRING_TYPE:
        length = _unpack(f, "Q")
        if length > end - f.tell():
            raise UnsupportedGGUF(TRUNCATED)
        f.seek(length, 1)
    elif value_type == ARRAY_TYPE:
        if depth >= MAX_ARRAY_DEPTH:
            raise UnsupportedGGUF("The GGUF header nests arrays deeper than any model does (is it corrupt?).")
        item_type, count = _unpack(f, "I"), _unpack(f, "Q")
        if item_type in SCALAR_FORMATS:
            f.seek(count * struct.calcsize(SCALAR_FORMATS[item_type]), 1)
        else:
            for _ in range(count):
                _skip_value(f, item_type, end, depth + 1)
    elif value_type in SCALAR_FORMATS:
        f.seek(struct.calcsize(SCALAR_FORMATS[value_type]), 1)
    else:
        raise UnsupportedGGUF(f"The GGUF header holds a value of unknown type {value_type}.")


def check_convertible(path: Path) -> dict[str, str]:
    """Raise `UnsupportedGGUF` naming the tensors the importer cannot convert; return all types."""
    types = read_tensor_types(path)
    unsupported = Counter(t for t in types.values() if t not in SUPPORTED_TYPES.values())
    if unsupported:
        found = ", ".join(f"{n} tensors of type {t}" for t, n in unsupported.most_common())
        raise UnsupportedGGUF(
            f"{path.name} has {found}, which MLX cannot read. Q4_K, Q6_K, Q2_K, Q4_0, Q4_1, Q8_0, F16, BF16 and "
            "F32 tensors can be imported: pick a file with one of those in its name (for example Q4_K_M or Q8_0)."
        )
    return types


def check_importable(path: Path) -> None:
    """Raise `UnsupportedGGUF` unless the header says the importer can convert the file (llama, known types)."""
    architecture, _ = read_header(path)
    if architecture != "llama":
        raise UnsupportedGGUF(f"{path.name} is a {architecture or 'unnamed'!r} model; only llama-architecture "
                              "GGUF files can be imported.")
    check_convertible(path)


def import_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert `gguf_path` into an mlx-lm model folder at `out_dir` and return it.

    The folder is written beside `out_dir` first and renamed into place, so a crash never
    leaves a half-written model that looks complete.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UnsupportedGGUF(f"There is no file at {gguf_path}.")
    types = check_convertible(gguf_path)
    try:
        tensors, metadata = mx.load(str(gguf_path), format="gguf", return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise UnsupportedGGUF(f"MLX could not read {gguf_path.name}: {exc}") from exc
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise UnsupportedGGUF(
            f"{gguf_path.name} is a {arch!r} model; only llama-architecture GGUF files can be imported."
        )
    config = _llama_config(metadata, tensors)
    tensors.update(_k_quant_readers(gguf_path, types))
    if ROPE_FREQS in tensors:
        scaling = llama3_rope_scaling(tensors.pop(ROPE_FREQS), config["rope_theta"], config["head_dim"])
        if scaling:
            config["rope_scaling"] = scaling
    weights = _convert_weights(tensors, types, config)
    config.update(_quantization_config(weights))
    tokenizer, tokenizer_config = _tokenizer_files(metadata, config)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        mx.save_safetensors(str(staging / "model.safetensors"), weights, metadata={"format": "mlx"})
        (staging / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
        shutil.rmtree(out_dir, ignore_errors=True)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("Imported %s into %s (%d tensors)", gguf_path, out_dir, len(weights))
    return out_dir


def _scalar(metadata: dict, key: str, default=None):
    """A metadata value as a Python number (MLX returns numbers as 0-d arrays)."""
    value = metadata.get(key, default)
    return value.item() if isinstance(value, mx.array) else value


def _llama_config(metadata: dict, tensors: dict) -> dict:
    """An mlx-lm `config.json` for the llama model described by the GGUF metadata."""
    try:
        hidden = _scalar(metadata, "llama.embedding_length")
        n_heads = _scalar(metadata, "llama.attention.head_count")
        config = {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": hidden,
            "num_hidden_layers": _scalar(metadata, "llama.block_count"),
            "intermediate_size": _scalar(metadata, "llama.feed_forward_length"),
            "num_attention_heads": n_heads,
            "num_key_value_heads": _scalar(metadata, "llama.attention.head_count_kv", n_heads),
            "head_dim": _scalar(metadata, "llama.attention.key_length", hidden // n_heads),
            "rms_norm_eps": _scalar(metadata, "llama.attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": _scalar(metadata, "llama.rope.freq_base", 10000.0),
            "rope_traditional": False,
            "max_position_embeddings": _scalar(metadata, "llama.context_length", 4096),
            "vocab_size": len(metadata["tokenizer.ggml.tokens"]),
            "tie_word_embeddings": "output.weight" not in tensors,
            "bos_token_id": _scalar(metadata, "tokenizer.ggml.bos_token_id"),
            "eos_token_id": _scalar(metadata, "tokenizer.ggml.eos_token_id"),
        }
    except (KeyError, TypeError) as exc:
        raise UnsupportedGGUF(f"The GGUF metadata lacks a llama setting the importer needs ({exc}).") from exc
    if _scalar(metadata, "llama.rope.scaling.type") == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": _scalar(metadata, "llama.rope.scaling.factor")}
    return config


def _k_quant_readers(path: Path, types: dict[str, str]) -> dict[str, Callable[[], mx.array]]:
    """For each k-quant tensor, a function that decodes it as llama.cpp does (one tensor at a time)."""
    if not any(t in K_QUANTS for t in types.values()):
        return {}
    from gguf import GGUFReader
    from gguf.quants import dequantize

    def decoder(tensor) -> Callable[[], mx.array]:
        return lambda: mx.array(dequantize(tensor.data, tensor.tensor_type))

    return {t.name: decoder(t) for t in GGUFReader(path).tensors if types.get(t.name) in K_QUANTS}


def _convert_weights(tensors: dict, types: dict[str, str], config: dict) -> dict[str, mx.array]:
    """Rename GGUF tensors to mlx-lm names, un-permute q/k rows, quantize k-quants again, settle dtypes."""
    # MLX's CPU quantized matmul is far slower with float16 scales; GPUs prefer float16.
    float_dtype = mx.float32 if mx.default_device() == mx.cpu else mx.float16
    weights = {}
    for name, value in tensors.items():
        if callable(value):
            value = value()
        new_name = _mlx_name(name)
        base = name.rsplit(".", 1)[0]
        if base.endswith(("attn_q", "attn_k")):
            heads = config["num_attention_heads"] if base.endswith("attn_q") else config["num_key_value_heads"]
            value = _unpermute_rope_rows(value, heads)
        if types.get(name) in K_QUANTS:
            bits = 8 if name in WIDE_LAYERS else 4
            packed, scales, biases = mx.quantize(value.astype(float_dtype), group_size=GROUP_SIZE, bits=bits)
            stem = new_name.removesuffix(".weight")
            weights.update({new_name: packed, f"{stem}.scales": scales, f"{stem}.biases": biases})
            mx.eval(packed, scales, biases)  # one tensor at a time, so the float copies do not pile up
            continue
        if value.dtype != mx.uint32:
            value = value.astype(float_dtype)
        weights[new_name] = value
    return weights


def llama3_rope_scaling(rope_freqs: mx.array, base: float, head_dim: int) -> dict | None:
    """The Llama 3 `rope_scaling` that llama.cpp's per-dimension `rope_freqs` factors were computed from.

    The factors are 1 for short wavelengths, `factor` for long ones and a smooth blend between;
    the blend is linear in 1/wavelength, so its two coefficients give the low and high frequency
    factors (relative to 8192 tokens: the result is the same for any original length).
    """
    factors = [float(x) for x in rope_freqs.astype(mx.float32).tolist()]
    wavelens = [2 * math.pi * base ** (2 * i / head_dim) for i in range(len(factors))]
    factor = max(factors)
    if factor <= 1.0 + 1e-6:
        return None  # all ones: no scaling at all
    guess = {"rope_type": "llama3", "factor": round(factor, 4), "low_freq_factor": 1.0, "high_freq_factor": 4.0,
             "original_max_position_embeddings": LLAMA3_ORIGINAL_CONTEXT}
    medium = [(1 / w, (1 / r - 1 / factor) / (1 - 1 / factor))
              for r, w in zip(factors, wavelens, strict=True) if 1 + 1e-4 < r < factor - 1e-4]
    if not _matches_llama3(factors, wavelens, guess) and len(medium) >= 2:
        n = len(medium)
        mean_x, mean_y = sum(x for x, _ in medium) / n, sum(y for _, y in medium) / n
        slope = sum((x - mean_x) * (y - mean_y) for x, y in medium) / sum((x - mean_x) ** 2 for x, _ in medium)
        width = LLAMA3_ORIGINAL_CONTEXT / slope  # high_freq_factor - low_freq_factor
        low = -(mean_y - slope * mean_x) * width
        guess.update(low_freq_factor=round(low, 4), high_freq_factor=round(low + width, 4))
    if not _matches_llama3(factors, wavelens, guess):
        raise UnsupportedGGUF("The file's rope_freqs do not follow Llama 3's RoPE scaling, so the importer "
                              "cannot tell how positions are scaled.")
    return guess


def _matches_llama3(factors: list[float], wavelens: list[float], scaling: dict) -> bool:
    """Whether `scaling` reproduces llama.cpp's factors (its converter's formula, to float16 precision)."""
    old = scaling["original_max_position_embeddings"]
    low, high, factor = scaling["low_freq_factor"], scaling["high_freq_factor"], scaling["factor"]
    if high <= low or low <= 0:
        return False
    for r, wavelen in zip(factors, wavelens, strict=True):
        if wavelen < old / high:
            expected = 1.0
        elif wavelen > old / low:
            expected = factor
        else:
            smooth = (old / wavelen - low) / (high - low)
            expected = 1 / ((1 - smooth) / factor + smooth)
        if abs(r - expected) > 2e-3 * expected:
            return False
    return True


def _mlx_name(name: str) -> str:
    """`blk.3.attn_q.scales` -> `model.layers.3.self_attn.q_proj.scales`."""
    parts = name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in LAYER_NAMES:
        return f"model.layers.{parts[1]}.{LAYER_NAMES[parts[2]]}.{parts[3]}"
    if len(parts) == 2 and parts[0] in TOP_NAMES:
        return f"{TOP_NAMES[parts[0]]}.{parts[1]}"
    raise UnsupportedGGUF(f"The GGUF holds a tensor the llama importer does not know: {name}.")


def _unpermute_rope_rows(x: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's interleaving of q/k output rows (rows only, so weights, scales and biases alike)."""
    rows = x.shape[0]
    return x.reshape(n_heads, rows // n_heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)


def _quantization_config(weights: dict[str, mx.array]) -> dict:
    """mlx-lm's `quantization` entry: the common bit width, with per-layer overrides."""
    bits = {
        name[: -len(".scales")]: weights[name[: -len(".scales")] + ".weight"].shape[-1] // scales.shape[-1]
        for name, scales in weights.items()
        if name.endswith(".scales")
    }
    if not bits:
        return {}
    common = Counter(bits.values()).most_common(1)[0][0]
    quantization: dict = {"group_size": GROUP_SIZE, "bits": common}
    quantization.update({layer: {"group_size": GROUP_SIZE, "bits": b} for layer, b in bits.items() if b != common})
    return {"quantization": quantization}


def _tokenizer_files(metadata: dict, config: dict):
    """A `tokenizers.Tokenizer` and a `tokenizer_config.json` dict built from the GGUF vocabulary."""
    from tokenizers import pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    tokenizer_dict = {}
    for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items():
        value = metadata.get(f"tokenizer.{key}")
        if value is not None:
            tokenizer_dict[name] = value.tolist() if isinstance(value, mx.array) else value
    try:
        tokenizer, _ = convert_gguf_tokenizer("llama", tokenizer_dict)
    except (ValueError, KeyError) as exc:
        raise UnsupportedGGUF(f"The GGUF tokenizer cannot be rebuilt: {exc}") from exc
    if tokenizer_dict.get("pre_tokenizer_type") == "smollm":
        # transformers has no entry for SmolLM's pre-tokenizer: digits split one by one, then bytes.
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    tokens = tokenizer_dict["tokens"]

    def token(key: str) -> str | None:
        index = _scalar(metadata, f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and index < len(tokens) else None

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": bool(_scalar(metadata, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_scalar(metadata, "tokenizer.ggml.add_eos_token", False)),
        "model_max_length": config["max_position_embeddings"],
        "clean_up_tokenization_spaces": False,
    }
    template = metadata.get("tokenizer.chat_template")
    if template:
        tokenizer_config["chat_template"] = template
    return tokenizer, tokenizer_config
