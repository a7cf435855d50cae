"""The GGUF importer, on the real SmolLM2 file and on small files the tests write themselves."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import mlx.core as mx
import pytest
from mlx.utils import tree_flatten

from mlx_gradio.errors import UnsupportedGGUF
from mlx_gradio.gguf import check_convertible, import_gguf, read_tensor_types

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


def test_k_quant_tensors_are_refused_with_their_type(tmp_path: Path):
    path = tmp_path / "model.Q4_K_M.gguf"
    header_only_gguf(path, tensor_type=12)
    with pytest.raises(UnsupportedGGUF, match="Q4_K.*Only Q4_0, Q4_1, Q8_0, F16 and F32"):
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
