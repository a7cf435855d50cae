"""Import a llama-architecture GGUF file as an ordinary mlx-lm model folder.

MLX reads GGUF files itself and returns Q4_0, Q4_1 and Q8_0 tensors as MLX quantized triplets
(weight, scales, biases, group size 32), so importing is renaming, undoing llama.cpp's RoPE row
order for q/k, and writing `config.json`, `model.safetensors` and the tokenizer files.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import tempfile
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import mlx.core as mx

from .errors import UnsupportedGGUF

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
GROUP_SIZE = 32
# ggml tensor type ids (ggml.h); the importer converts the first five.
SUPPORTED_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 8: "Q8_0"}
OTHER_TYPES = {
    6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
    15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
    22: "IQ2_S", 23: "IQ4_XS", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0",
}
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
# Tensors llama.cpp stores for its own kernels that an mlx-lm llama does not use.
IGNORED_TENSORS = {"rope_freqs.weight"}


def read_tensor_types(path: Path) -> dict[str, str]:
    """Name -> ggml type name of every tensor in a GGUF file, read from its header only."""
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UnsupportedGGUF(f"{path.name} is not a GGUF file (it does not start with 'GGUF').")
        version, n_tensors, n_values = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            raise UnsupportedGGUF(f"{path.name} is GGUF version {version}; only versions 2 and 3 can be read.")
        for _ in range(n_values):
            _read_string(f)
            _skip_value(f, _unpack(f, "I"))
        types = {}
        for _ in range(n_tensors):
            name = _read_string(f)
            n_dims = _unpack(f, "I")
            f.seek(8 * n_dims, 1)
            type_id = _unpack(f, "I")
            f.seek(8, 1)
            types[name] = SUPPORTED_TYPES.get(type_id) or OTHER_TYPES.get(type_id, f"type {type_id}")
    return types


def _unpack(f: BinaryIO, fmt: str) -> int:
    """One little-endian scalar from the file."""
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise UnsupportedGGUF("The GGUF file ends in the middle of its header (is it truncated?).")
    return struct.unpack("<" + fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    """A GGUF string: a 64-bit length, then UTF-8 bytes."""
    return f.read(_unpack(f, "Q")).decode("utf-8", errors="replace")


def _skip_value(f: BinaryIO, value_type: int) -> None:
    """Move past one metadata value of the given type."""
    if value_type == STRING_TYPE:
        f.seek(_unpack(f, "Q"), 1)
    elif value_type == ARRAY_TYPE:
        item_type, count = _unpack(f, "I"), _unpack(f, "Q")
        if item_type in SCALAR_FORMATS:
            f.seek(count * struct.calcsize(SCALAR_FORMATS[item_type]), 1)
        else:
            for _ in range(count):
                _skip_value(f, item_type)
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
            f"{path.name} has {found}. Only Q4_0, Q4_1, Q8_0, F16 and F32 tensors can be imported: "
            "pick a file with one of those in its name (for example Q4_0 or Q8_0)."
        )
    return types


def import_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert `gguf_path` into an mlx-lm model folder at `out_dir` and return it.

    The folder is written beside `out_dir` first and renamed into place, so a crash never
    leaves a half-written model that looks complete.
    """
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UnsupportedGGUF(f"There is no file at {gguf_path}.")
    check_convertible(gguf_path)
    try:
        tensors, metadata = mx.load(str(gguf_path), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise UnsupportedGGUF(f"MLX could not read {gguf_path.name}: {exc}") from exc
    arch = metadata.get("general.architecture")
    if arch != "llama":
        raise UnsupportedGGUF(
            f"{gguf_path.name} is a {arch!r} model; only llama-architecture GGUF files can be imported."
        )
    config = _llama_config(metadata, tensors)
    weights = _convert_weights(tensors, config)
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


def _convert_weights(tensors: dict, config: dict) -> dict[str, mx.array]:
    """Rename GGUF tensors to mlx-lm names, un-permute q/k rows, and settle dtypes."""
    # MLX's CPU quantized matmul is far slower with float16 scales; GPUs prefer float16.
    float_dtype = mx.float32 if mx.default_device() == mx.cpu else mx.float16
    weights = {}
    for name, value in tensors.items():
        if name in IGNORED_TENSORS:
            log.warning("Skipping %s: mlx-lm's llama computes RoPE frequencies itself", name)
            continue
        new_name = _mlx_name(name)
        base = name.rsplit(".", 1)[0]
        if base.endswith(("attn_q", "attn_k")):
            heads = config["num_attention_heads"] if base.endswith("attn_q") else config["num_key_value_heads"]
            value = _unpermute_rope_rows(value, heads)
        if value.dtype != mx.uint32:
            value = value.astype(float_dtype)
        weights[new_name] = value
    return weights


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
