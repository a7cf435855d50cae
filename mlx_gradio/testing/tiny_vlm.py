"""Build a tiny random-weight Qwen2-VL model folder that mlx-vlm can load.

The folder is created entirely offline: the tokenizer is a small byte-level
BPE trained in-process with the ``tokenizers`` library, and the weights come
from mlx-vlm's own ``qwen2_vl`` classes so parameter names always match the
installed mlx-vlm version.  Everything is seeded, so the same ``seed`` gives
the same files (and therefore the same greedy outputs).

Typical use in a pytest fixture::

    from mlx_gradio.testing.tiny_vlm import build_tiny_qwen2_vl

    @pytest.fixture(scope="session")
    def tiny_vlm_path(tmp_path_factory):
        return build_tiny_qwen2_vl(tmp_path_factory.mktemp("tiny_qwen2_vl"))
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import mlx.core as mx
    from tokenizers import Tokenizer

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Sizes.  Keep them tiny: the whole model is well under 1 MB of float32.
# --------------------------------------------------------------------------
TEXT_HIDDEN_SIZE = 64
TEXT_LAYERS = 2
TEXT_HEADS = 4
TEXT_KV_HEADS = 2
TEXT_INTERMEDIATE = 128
# Half of the text head size (64 / 4 / 2 = 8) split over (t, h, w).
MROPE_SECTION = [2, 3, 3]

VISION_DEPTH = 1
VISION_EMBED_DIM = 32
VISION_HEADS = 2  # head dim 16 (must be divisible by 4 for 2-D rotary)
VISION_MLP_RATIO = 2  # int: transformers' strict config refuses 2.0
PATCH_SIZE = 14
MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2

# Image resizing bounds (pixels).  One merged token covers 28x28 pixels, so
# an image is resized to between 4 and 16 image tokens.  A 96x64 image gives
# a 56x84 resize -> 4x6 patches -> 6 image tokens.
MIN_PIXELS = (PATCH_SIZE * MERGE_SIZE) ** 2 * 4
MAX_PIXELS = (PATCH_SIZE * MERGE_SIZE) ** 2 * 16

BPE_VOCAB_SIZE = 512
# Module names whose weights are norm scales (ones) / shifts (zeros).
_NORM_MODULES = frozenset({"norm", "norm1", "norm2", "ln_q"})
WEIGHT_DTYPE = "float32"
# Std of matrices is WEIGHT_GAIN / sqrt(fan_in).  A gain of 2 puts the random
# network in a sensitive regime, so different images reliably give different
# greedy tokens (gain 1 let the text prompt dominate for some seeds).
WEIGHT_GAIN = 2.0

SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL's chat template (same as the official checkpoints).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content "
    "or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# A little English text for the BPE trainer (deterministic, no downloads).
TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Describe the image in one sentence. What colour is the square? The square is red.
This photo shows a cat sitting on a mat next to a green plant and a blue cup.
Hello, how are you today? I am fine, thank you. What can I help you with?
Please write a short poem about the sea, the sky, the sun and the moon.
The weather is sunny and warm. It may rain tomorrow, so take an umbrella.
Machine learning models read text and images and answer questions about them.
Count the objects: one, two, three, four, five, six, seven, eight, nine, ten.
Colours: red, green, blue, yellow, orange, purple, black, white, grey, brown.
Numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000. Punctuation: . , ; : ! ? ' " ( ) [ ]
The assistant answers the user. The user asks the assistant a question.
Once upon a time there was a small robot who loved to paint pictures of trees.
""".strip()


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as pretty, key-sorted JSON (stable across runs)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_tokenizer_object() -> Tokenizer:
    """Train a small deterministic byte-level BPE and add the Qwen special tokens.

    Returns a ``tokenizers.Tokenizer``.  Special tokens get the ids right after
    the BPE vocabulary, like the real Qwen tokenizers.
    """
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    lines = [line for line in TRAINING_TEXT.splitlines() if line.strip()]
    tokenizer.train_from_iterator(lines * 4, trainer=trainer)
    tokenizer.add_special_tokens(
        [AddedToken(tok, special=True, normalized=False) for tok in SPECIAL_TOKENS]
    )
    return tokenizer


def write_tokenizer(path: Path) -> dict[str, int]:
    """Write ``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json`` and ``chat_template.json`` / ``.jinja``.

    Returns a mapping of special token -> id plus ``"__vocab_size__"``.
    """
    tokenizer = build_tokenizer_object()
    tokenizer.save(str(path / "tokenizer.json"))
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    ids["__vocab_size__"] = tokenizer.get_vocab_size(with_added_tokens=True)

    added_tokens_decoder = {
        str(ids[tok]): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for tok in SPECIAL_TOKENS
    }
    tokenizer_config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": SPECIAL_TOKENS[1:],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json(path / "tokenizer_config.json", tokenizer_config)
    write_json(
        path / "special_tokens_map.json",
        {
            "additional_special_tokens": SPECIAL_TOKENS[1:],
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
    )
    write_json(path / "chat_template.json", {"chat_template": CHAT_TEMPLATE})
    (path / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")
    return ids


def write_processor_files(path: Path) -> None:
    """Write ``preprocessor_config.json``, ``video_preprocessor_config.json`` and
    ``processor_config.json`` with small pixel bounds."""
    image_cfg: dict[str, Any] = {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": MAX_PIXELS,
        "merge_size": MERGE_SIZE,
        "min_pixels": MIN_PIXELS,
        "patch_size": PATCH_SIZE,
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": MAX_PIXELS, "shortest_edge": MIN_PIXELS},
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
    }
    write_json(path / "preprocessor_config.json", image_cfg)
    video_cfg = dict(image_cfg)
    video_cfg.pop("image_processor_type")
    video_cfg["video_processor_type"] = "Qwen2VLVideoProcessor"
    write_json(path / "video_preprocessor_config.json", video_cfg)
    # The chat template lives in chat_template.json / .jinja and
    # tokenizer_config.json; transformers warns if it is also put here.
    write_json(path / "processor_config.json", {"processor_class": "Qwen2VLProcessor"})


def make_config(token_ids: dict[str, int]) -> dict[str, Any]:
    """Return the ``config.json`` dict (text settings at the top level)."""
    vocab_size = token_ids["__vocab_size__"]
    eos_id = token_ids["<|im_end|>"]
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "model_type": "qwen2_vl",
        "torch_dtype": WEIGHT_DTYPE,
        # text model (top level, as in the original Qwen2-VL checkpoints)
        "vocab_size": vocab_size,
        "hidden_size": TEXT_HIDDEN_SIZE,
        "intermediate_size": TEXT_INTERMEDIATE,
        "num_hidden_layers": TEXT_LAYERS,
        "num_attention_heads": TEXT_HEADS,
        "num_key_value_heads": TEXT_KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "max_window_layers": TEXT_LAYERS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": list(MROPE_SECTION)},
        "sliding_window": 4096,
        "use_sliding_window": False,
        "use_cache": True,
        "tie_word_embeddings": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "bos_token_id": token_ids["<|endoftext|>"],
        "eos_token_id": eos_id,
        "pad_token_id": token_ids["<|endoftext|>"],
        # multimodal token ids
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "vision_config": {
            "model_type": "qwen2_vl",
            "depth": VISION_DEPTH,
            "embed_dim": VISION_EMBED_DIM,
            "hidden_size": TEXT_HIDDEN_SIZE,
            "hidden_act": "quick_gelu",
            "mlp_ratio": VISION_MLP_RATIO,
            "num_heads": VISION_HEADS,
            "in_channels": 3,
            "patch_size": PATCH_SIZE,
            "spatial_patch_size": PATCH_SIZE,
            "spatial_merge_size": MERGE_SIZE,
            "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        },
    }


def make_random_weights(config: dict[str, Any], seed: int) -> dict[str, mx.array]:
    """Instantiate mlx-vlm's Qwen2-VL model from ``config`` and return seeded
    random weights as ``{name: mx.array}`` in mlx-vlm's own naming."""
    import copy

    import mlx.core as mx
    from mlx_vlm.utils import get_model_and_args, update_module_configs

    cfg = copy.deepcopy(config)
    model_module, _ = get_model_and_args(cfg)
    cfg.setdefault("text_config", {})
    model_config = model_module.ModelConfig.from_dict(cfg)
    model_config = update_module_configs(
        model_config, model_module, cfg, ["text", "vision"]
    )
    mx.random.seed(seed)
    model = model_module.Model(model_config)
    return seeded_weights(model, seed, "language_model.lm_head.weight")


def seeded_weights(model: Any, seed: int, head: str) -> dict[str, mx.array]:
    """Seeded random values for every parameter of ``model`` (norms at one),
    with the output rows of the special tokens (the last ids) zeroed."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    dtype = getattr(mx, WEIGHT_DTYPE)
    params = dict(tree_flatten(model.parameters()))
    key = mx.random.key(seed)
    weights: dict[str, mx.array] = {}
    for name in sorted(params):
        value = params[name]
        key, sub = mx.random.split(key)
        module_name = name.rsplit(".", 1)[0].rsplit(".", 1)[-1]
        is_norm = module_name in _NORM_MODULES or module_name.endswith("layernorm")
        if is_norm and name.endswith(".weight"):
            new = mx.ones(value.shape)
        elif is_norm and name.endswith(".bias"):
            new = mx.zeros(value.shape)
        elif value.ndim == 1:
            new = 0.02 * mx.random.normal(value.shape, key=sub)
        elif name.endswith("embed_tokens.weight"):
            new = mx.random.normal(value.shape, key=sub)
        else:
            fan_in = math.prod(value.shape[1:])
            std = WEIGHT_GAIN / math.sqrt(fan_in)
            new = std * mx.random.normal(value.shape, key=sub)
        weights[name] = new.astype(dtype)

    # Zero the output rows of the special tokens (the last ids): their logit is
    # then exactly 0 while hundreds of random logits are not, so greedy decoding
    # never emits <|im_end|>, <|image_pad|>, ... Replies always run to
    # max_tokens and never contain special tokens that would break a later turn.
    n_regular = weights[head].shape[0] - len(SPECIAL_TOKENS)
    weights[head] = mx.concatenate(
        [weights[head][:n_regular], mx.zeros((len(SPECIAL_TOKENS), weights[head].shape[1]), dtype)]
    )
    mx.eval(weights)
    return weights


def build_tiny_qwen2_vl(path: Path, seed: int = 0) -> Path:
    """Write a complete tiny random Qwen2-VL model folder at ``path``.

    Files: ``config.json``, ``generation_config.json``, ``model.safetensors``
    (float32), ``tokenizer.json``, ``tokenizer_config.json``,
    ``special_tokens_map.json``, ``chat_template.json``, ``chat_template.jinja``,
    ``preprocessor_config.json``, ``video_preprocessor_config.json`` and
    ``processor_config.json``.  Returns ``path``.
    """
    import mlx.core as mx

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    token_ids = write_tokenizer(path)
    write_processor_files(path)
    config = make_config(token_ids)
    write_json(path / "config.json", config)
    write_json(
        path / "generation_config.json",
        {
            "bos_token_id": config["bos_token_id"],
            "eos_token_id": config["eos_token_id"],
            "pad_token_id": config["pad_token_id"],
        },
    )
    weights = make_random_weights(config, seed)
    mx.save_safetensors(
        str(path / "model.safetensors"), weights, metadata={"format": "mlx"}
    )
    logger.debug("Built tiny Qwen2-VL (%d tensors) at %s", len(weights), path)
    return path
