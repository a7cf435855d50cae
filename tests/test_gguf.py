"""The GGUF importer, on the real SmolLM2 file and on small files the tests write themselves."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_gradio.errors import UnsupportedGGUF
from mlx_gradio.models.gguf import check_convertible, import_gguf, read_tensor_types

# GPT-2's printable stand-ins for the 256 byte values, so the tiny vocabulary is byte-level.
BYTE_CHARS = [chr(b) for b in range(ord("!"), ord("~") + 1)] + [chr(b) for b in range(ord("¡"), ord("¬") + 1)] + [
    chr(b) for b in range(ord("®"), ord("ÿ") + 1)
]
BYTE_CHARS += [chr(256 + n) for n in range(256 - len(BYTE_CHARS))]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def llama_cpp_permute(w: mx.array, n_heads: int) -> mx.array:
    """The row order llama.cpp's converter gives q/k weights (the importer must undo it)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tiny_llama(seed: int = 0):
    """A random 2-layer mlx-lm llama and its args."""
    from mlx_lm.models.llama import Model, ModelArgs

    args = ModelArgs(model_type="llama", hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                     num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
                     vocab_size=len(SPECIALS) + 256 + 2, rope_theta=10000.0, tie_word_embeddings=False)
    mx.random.seed(seed)
    model = Model(args)
    mx.eval(model.parameters())
    return model, args


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0):
    """Write the tiny llama as an F32 GGUF the way llama.cpp lays it out; return the reference model."""
    model, args = tiny_llama(seed)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        if name.startswith("model.layers."):
            _, _, layer, *rest = name.split(".")
            module, leaf = ".".join(rest[:-1]), rest[-1]
            if module == "self_attn.q_proj":
                value = llama_cpp_permute(value, args.num_attention_heads)
            elif module == "self_attn.k_proj":
                value = llama_cpp_permute(value, args.num_key_value_heads)
            tensors[f"blk.{layer}.{names[module]}.{leaf}"] = value
        else:
            short = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                     "lm_head.weight": "output.weight"}[name]
            tensors[short] = value
    tokens = SPECIALS + BYTE_CHARS + ["Ġt", "he"]
    u32 = lambda v: mx.array(v, dtype=mx.uint32)  # noqa: E731 - GGUF wants typed scalars
    metadata = {
        "general.architecture": arch,
        f"{arch}.embedding_length": u32(args.hidden_size),
        f"{arch}.block_count": u32(args.num_hidden_layers),
        f"{arch}.feed_forward_length": u32(args.intermediate_size),
        f"{arch}.attention.head_count": u32(args.num_attention_heads),
        f"{arch}.attention.head_count_kv": u32(args.num_key_value_heads),
        f"{arch}.attention.layer_norm_rms_epsilon": mx.array(args.rms_norm_eps, dtype=mx.float32),
        f"{arch}.rope.freq_base": mx.array(args.rope_theta, dtype=mx.float32),
        f"{arch}.context_length": u32(512),
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.merges": ["Ġ t", "h e"],
        "tokenizer.ggml.token_type": mx.array([3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS)),
                                              dtype=mx.int32),
        "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2),
        "tokenizer.chat_template": TEMPLATE,
    }
    mx.save_gguf(str(path), tensors, metadata)
    return model


def header_only_gguf(path: Path, tensor_type: int) -> None:
    """A GGUF header with one tensor of the given ggml type (enough for the type check)."""
    def string(s: str) -> bytes:
        return struct.pack("<Q", len(s)) + s.encode()

    data = b"GGUF" + struct.pack("<IQQ", 3, 1, 1)
    data += string("general.architecture") + struct.pack("<I", 8) + string("llama")
    data += string("blk.0.attn_q.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 256, 8)
    data += struct.pack("<IQ", tensor_type, 0)
    path.write_bytes(data + b"\0" * 4096)


def test_real_file_becomes_a_quantized_mlx_lm_folder(demo_model: Path, demo_gguf: Path):
    from collections import Counter

    assert Counter(read_tensor_types(demo_gguf).values()) == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    config = json.loads((demo_model / "config.json").read_text())
    assert config["quantization"]["bits"] == 4
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8
    assert config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] == 3 and config["rope_traditional"] is False
    tokenizer_config = json.loads((demo_model / "tokenizer_config.json").read_text())
    assert tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in tokenizer_config["chat_template"]


def test_real_tokenizer_splits_digits_and_keeps_special_tokens(demo_model: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    ids = tokenizer.encode("<|im_start|>user\nIn 2024?<|im_end|>", add_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    assert pieces[0] == "<|im_start|>" and pieces[-1] == "<|im_end|>"
    assert ["2", "0", "2", "4"] == [p for p in pieces if p.isdigit()]
    assert tokenizer.decode(ids) == "<|im_start|>user\nIn 2024?<|im_end|>"


def test_small_gguf_matches_the_model_it_was_written_from(tmp_path: Path):
    from mlx_lm import load

    reference = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = import_gguf(tmp_path / "tiny.gguf", tmp_path / "tiny")
    assert not list(tmp_path.glob(".tiny.*"))  # the staging folder is gone
    model, tokenizer = load(str(folder))
    tokens = mx.array([[5, 40, 41, 77, 90, 3, 120, 7]])
    expected = reference(tokens)
    got = model(tokens)
    assert mx.allclose(got, expected, atol=1e-4).item(), "q/k rows or tensor names were mapped wrong"
    assert tokenizer.encode("<|im_end|>", add_special_tokens=False) == [2]
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith(
        "<|im_start|>user\nhi<|im_end|>"
    )


def test_not_a_gguf_file_is_refused(tmp_path: Path):
    path = tmp_path / "model.gguf"
    path.write_text("hello")
    with pytest.raises(UnsupportedGGUF, match="not a GGUF file"):
        import_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_types_mlx_cannot_read_are_refused_with_their_type(tmp_path: Path):
    path = tmp_path / "model.Q5_K_M.gguf"
    header_only_gguf(path, tensor_type=13)
    with pytest.raises(UnsupportedGGUF, match="Q5_K, which MLX cannot read.*Q4_K_M or Q8_0"):
        check_convertible(path)


def test_other_architectures_are_refused(tmp_path: Path):
    write_tiny_gguf(tmp_path / "qwen.gguf", arch="qwen2")
    with pytest.raises(UnsupportedGGUF, match="'qwen2' model; only llama"):
        import_gguf(tmp_path / "qwen.gguf", tmp_path / "out")


def test_truncated_file_is_refused(tmp_path: Path, demo_gguf: Path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(demo_gguf.read_bytes()[:4096])
    with pytest.raises(UnsupportedGGUF, match="truncated"):
        import_gguf(path, tmp_path / "out")


# --- k-quants and Llama 3 RoPE scaling, written with llama.cpp's own `gguf` package ----------------

K_LAYOUT = {  # ggml block layouts: where each 256-value block keeps its float16 scales (byte offsets)
    "Q4_K": (144, (0, 2)),  # d, dmin, 12 bytes of scales, 128 bytes of 4-bit values
    "Q6_K": (210, (208,)),  # 128 + 64 bytes of 6-bit values, 16 int8 scales, d
    "Q2_K": (84, (80, 82)),  # 16 bytes of scales, 64 bytes of 2-bit values, d, dmin
}


def k_blocks(rng, kind: str, rows: int, cols: int):
    """Random k-quant blocks with small finite float16 scales, as raw bytes of shape (rows, cols/256*block)."""
    import numpy as np

    size, scale_offsets = K_LAYOUT[kind]
    blocks = rng.integers(0, 256, size=(rows * cols // 256, size), dtype=np.uint8)
    for offset in scale_offsets:
        blocks[:, offset:offset + 2] = rng.uniform(0.001, 0.01, (len(blocks), 1)).astype(np.float16).view(np.uint8)
    return blocks.reshape(rows, cols // 256 * size)


def write_gguf(path: Path, tensors: dict, metadata: dict) -> None:
    """A GGUF file from raw tensors ({name: (array, ggml type name or None)}) and metadata, with `gguf`."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), metadata.pop("general.architecture"))
    for key, value in metadata.items():
        if isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            writer.add_array(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_uint32(key, int(value))
    for name, (array, kind) in tensors.items():
        if kind is None:
            writer.add_tensor(name, np.asarray(array, dtype=np.float32))
        else:
            writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_metadata(hidden: int, layers: int, ffn: int, heads: int, kv_heads: int, theta: float = 10000.0) -> dict:
    tokens = SPECIALS + BYTE_CHARS + ["Ġt", "he"]
    return {
        "general.architecture": "llama", "llama.embedding_length": hidden, "llama.block_count": layers,
        "llama.feed_forward_length": ffn, "llama.attention.head_count": heads,
        "llama.attention.head_count_kv": kv_heads, "llama.attention.layer_norm_rms_epsilon": 1e-5,
        "llama.rope.freq_base": theta, "llama.context_length": 512, "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": ["Ġ t", "h e"],
        "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.chat_template": TEMPLATE,
    }


def test_k_quants_are_read_as_llama_cpp_decodes_them_and_quantized_again_for_mlx(tmp_path: Path):
    import gguf
    import numpy as np
    from gguf.quants import dequantize
    from mlx_lm import load

    rng = np.random.default_rng(0)
    hidden, ffn, heads, kv_heads, vocab = 256, 512, 4, 2, len(SPECIALS) + 258
    kv = hidden // heads * kv_heads
    shapes = {"attn_q": (hidden, hidden, "Q4_K"), "attn_k": (kv, hidden, "Q4_K"), "attn_v": (kv, hidden, "Q6_K"),
              "attn_output": (hidden, hidden, "Q4_K"), "ffn_gate": (ffn, hidden, "Q2_K"),
              "ffn_up": (ffn, hidden, "Q4_K"), "ffn_down": (hidden, ffn, "Q6_K")}
    tensors = {"token_embd.weight": (k_blocks(rng, "Q6_K", vocab, hidden), "Q6_K"),
               "output.weight": (k_blocks(rng, "Q4_K", vocab, hidden), "Q4_K"),
               "output_norm.weight": (np.ones(hidden), None)}
    for layer in range(2):
        for short, (rows, cols, kind) in shapes.items():
            tensors[f"blk.{layer}.{short}.weight"] = (k_blocks(rng, kind, rows, cols), kind)
        for norm in ("attn_norm", "ffn_norm"):
            tensors[f"blk.{layer}.{norm}.weight"] = (rng.uniform(0.5, 1.5, hidden), None)
    path = tmp_path / "tiny.Q4_K_M.gguf"
    write_gguf(path, tensors, llama_metadata(hidden, 2, ffn, heads, kv_heads))

    # The reference is llama.cpp's own decoding (the `gguf` package's), not MLX's reader of the file.
    expected = {name: dequantize(raw, gguf.GGMLQuantizationType[kind]).astype(np.float32)
                for name, (raw, kind) in tensors.items() if kind}
    folder = import_gguf(path, tmp_path / "tiny")
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 4 and config["quantization"]["group_size"] == 32
    assert config["quantization"]["model.embed_tokens"]["bits"] == 8 and config["quantization"]["lm_head"]["bits"] == 8
    weights = mx.load(str(folder / "model.safetensors"))
    for gguf_name, mlx_name, bits in [("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj", 4),  # Q4_K
                                      ("blk.1.attn_output.weight", "model.layers.1.self_attn.o_proj", 4),  # Q4_K
                                      ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj", 4),  # Q2_K
                                      ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj", 4),  # Q6_K
                                      ("token_embd.weight", "model.embed_tokens", 8),  # Q6_K
                                      ("output.weight", "lm_head", 8)]:  # Q4_K
        got = mx.dequantize(weights[f"{mlx_name}.weight"], weights[f"{mlx_name}.scales"],
                            weights[f"{mlx_name}.biases"], group_size=32, bits=bits)
        reference = expected[gguf_name]
        error = np.linalg.norm(np.array(got.astype(mx.float32)) - reference) / np.linalg.norm(reference)
        assert error < (0.1 if bits == 4 else 0.01), (gguf_name, error)
    model, _ = load(str(folder))
    logits = model(mx.array([[5, 40, 41, 77]]))
    assert logits.shape == (1, 4, vocab) and mx.all(mx.isfinite(logits)).item()


def llama3_factors(theta: float, head_dim: int, factor: float, low: float, high: float, old: int = 8192):
    """llama.cpp's converter: the rope_freqs it writes for a Llama 3 `rope_scaling` (convert_hf_to_gguf.py)."""
    import math

    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * theta ** (i / head_dim)
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return factors


@pytest.mark.parametrize("factor,low,high", [(8.0, 1.0, 4.0), (32.0, 1.0, 4.0), (16.0, 2.0, 6.0)])
def test_llama3_rope_freqs_become_the_rope_scaling_they_came_from(tmp_path: Path, factor, low, high):
    import numpy as np
    from mlx_lm import load
    from mlx_lm.models.llama import Model, ModelArgs

    theta, hidden, heads = 500000.0, 128, 2
    head_dim = hidden // heads
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
               "original_max_position_embeddings": 8192}
    args = ModelArgs(model_type="llama", hidden_size=hidden, num_hidden_layers=1, intermediate_size=128,
                     num_attention_heads=heads, num_key_value_heads=heads, rms_norm_eps=1e-5,
                     vocab_size=len(SPECIALS) + 258, rope_theta=theta, rope_scaling=scaling,
                     tie_word_embeddings=True)
    mx.random.seed(1)
    reference = Model(args)
    mx.eval(reference.parameters())
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    tensors = {"rope_freqs.weight": (np.array(llama3_factors(theta, head_dim, factor, low, high)), None)}
    for name, value in tree_flatten(reference.parameters()):
        if name.startswith("model.layers."):
            _, _, layer, *rest = name.split(".")
            module = ".".join(rest[:-1])
            if module in ("self_attn.q_proj", "self_attn.k_proj"):
                value = llama_cpp_permute(value, heads)
            tensors[f"blk.{layer}.{names[module]}.{rest[-1]}"] = (np.array(value), None)
        else:
            short = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
            tensors[short[name]] = (np.array(value), None)
    path = tmp_path / "llama3.gguf"
    write_gguf(path, tensors, llama_metadata(hidden, 1, 128, heads, heads, theta))
    folder = import_gguf(path, tmp_path / "llama3")
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_scaling"] == {**scaling, "factor": factor}
    model, _ = load(str(folder))
    got, want = model.model.layers[0].self_attn.rope._freqs, reference.model.layers[0].self_attn.rope._freqs
    assert mx.allclose(got, want, rtol=1e-4).item()
    tokens = mx.array([[5, 40, 41, 77, 90, 3, 120, 7]])
    assert mx.allclose(model(tokens), reference(tokens), atol=1e-4).item()


def test_rope_freqs_that_are_not_llama3_scaling_are_refused(tmp_path: Path):
    from mlx_gradio.models.gguf import llama3_rope_scaling

    with pytest.raises(UnsupportedGGUF, match="rope_freqs"):
        llama3_rope_scaling(mx.array([1.0, 3.0, 1.0, 8.0, 2.0, 8.0]), 500000.0, 12)
    assert llama3_rope_scaling(mx.ones(8), 500000.0, 16) is None  # all ones: nothing to scale
