"""Build a tiny random-weight Llama folder that mlx-lm loads like any other model.

A real mlx-lm model (its own `llama` classes, a ChatML template, the tiny VLM's trained BPE
tokenizer), many times faster than the demo model: for tests and benchmarks that check
mechanics (caches, Stop, Continue, versions), not words. Seeded: the same seed gives the same
files and the same greedy replies. It writes only whole words with a leading space (" the",
" red"), so its text reads back into the very tokens it wrote (a Continue goes on exactly where
a reply was cut), and never ends a reply early: a reply runs to its `max_tokens`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .tiny_vlm import seeded_weights, write_json, write_tokenizer

HIDDEN_SIZE = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2
INTERMEDIATE = 128
CONTEXT = 8192  # as the demo model; long enough for a prompt that takes many chunks to read on any machine
WORD_GAIN = 5.0  # the words' logits stand far above the rest (zero), so even sampling picks words

# ChatML, as SmolLM2 and Qwen write it, with no default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llama(path: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama model folder at `path` (config, tokenizer, float32 safetensors); returns `path`."""
    import mlx.core as mx
    from mlx_lm.models.llama import Model, ModelArgs

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    token_ids = write_tokenizer(path)
    _decode_as_written(path / "tokenizer.json")
    tokenizer_config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    write_json(path / "tokenizer_config.json", {**tokenizer_config, "chat_template": CHAT_TEMPLATE})
    for vision_only in ("chat_template.json", "chat_template.jinja"):  # the template lives in one place only
        (path / vision_only).unlink()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": LAYERS,
        "intermediate_size": INTERMEDIATE,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "vocab_size": token_ids["__vocab_size__"],
        "rope_theta": 10000.0,
        "max_position_embeddings": CONTEXT,
        "tie_word_embeddings": False,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": token_ids["<|im_end|>"],
        "torch_dtype": "float32",
    }
    write_json(path / "config.json", config)
    write_json(path / "generation_config.json", {"bos_token_id": config["bos_token_id"],
                                                  "eos_token_id": config["eos_token_id"]})
    mx.random.seed(seed)
    model = Model(ModelArgs.from_dict(config))
    weights = seeded_weights(model, seed, "lm_head.weight")
    words = mx.zeros((config["vocab_size"], 1))
    words[mx.array(whole_words(path))] = WORD_GAIN
    weights["lm_head.weight"] = weights["lm_head.weight"] * words
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path


def _decode_as_written(tokenizer_json: Path) -> None:
    """Wrap the byte-level decoder in a sequence, so mlx-lm streams with its plain detokenizer, which keeps
    the space before the first word: the reply's text then templates back into the very tokens written."""
    from tokenizers import Tokenizer, decoders

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.decoder = decoders.Sequence([decoders.ByteLevel()])
    tokenizer.save(str(tokenizer_json))


def whole_words(path: Path) -> list[int]:
    """Ids of the tokens that are one whole lower-case word with its leading space, and encode back to themselves."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    found = []
    for token_id in range(tokenizer.get_vocab_size(with_added_tokens=False)):
        text = tokenizer.decode([token_id])
        if re.fullmatch(r" [a-z]{2,}", text) and tokenizer.encode(text).ids == [token_id]:
            found.append(token_id)
    return found
