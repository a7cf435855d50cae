"""A tiny llama that answers with a tool call: for tests of tool calling, where a random model writes no call.

The tiny llama of `tiny_llama.py`, changed in three ways: its tokenizer has Qwen's `<tool_call>` and
`</tool_call>` markers (and the call's text as one token), its chat template offers tools and writes
earlier calls and their results back as Qwen 2.5's does (so mlx-lm picks its `json_tools` parser
for it, as for Qwen), and its weights are wired so that greedy decoding after the generation
prompt writes `<tool_call>{CALL}</tool_call>` and ends: every layer adds nothing to the token's
embedding (their output projections are zero), and the output head maps each token of that chain
to the next one. What is parsed is text the model wrote, through mlx-lm's own parser.
"""

from __future__ import annotations

import json
from pathlib import Path

from .tiny_llama import build_tiny_llama
from .tiny_vlm import write_json

CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
GAIN = 20.0

# Qwen 2.5's way with tools, in ChatML: the tools in the system turn, calls as <tool_call> JSON, results as
# <tool_response> in a user turn.
CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nYou may call one of these tools:\n{% for tool in tools %}"
    "{{ tool | tojson }}\n{% endfor %}Call one as <tool_call>{\"name\": …, \"arguments\": …}</tool_call>."
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant\n"
    "{% for tool_call in message.tool_calls %}{% if tool_call.function is defined %}"
    "{% set tool_call = tool_call.function %}{% endif %}"
    "<tool_call>{\"name\": \"{{ tool_call.name }}\", \"arguments\": {{ tool_call.arguments | tojson }}}</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}<|im_start|>user\n<tool_response>{{ message.content }}</tool_response>"
    "<|im_end|>\n"
    "{% else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_tool_llama(path: Path, seed: int = 0) -> Path:
    """Write the folder at `path`; returns `path`."""
    import mlx.core as mx
    from tokenizers import AddedToken, Tokenizer

    path = build_tiny_llama(Path(path), seed)
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    call_text = json.dumps(CALL)
    tokenizer.add_tokens([AddedToken(text, normalized=False) for text in ("<tool_call>", "</tool_call>", call_text)])
    tokenizer.save(str(path / "tokenizer.json"))
    config_file = path / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
    added = {str(tokenizer.token_to_id(text)): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                                                "single_word": False, "special": False}
             for text in ("<tool_call>", "</tool_call>", call_text)}
    write_json(config_file, {**tokenizer_config, "chat_template": CHAT_TEMPLATE,
                             "added_tokens_decoder": {**tokenizer_config["added_tokens_decoder"], **added}})
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    vocab = tokenizer.get_vocab_size(with_added_tokens=True)
    chain = [tokenizer.encode("<|im_start|>assistant\n").ids[-1], *(tokenizer.token_to_id(t) for t in
             ("<tool_call>", call_text, "</tool_call>")), config["eos_token_id"]]
    write_json(path / "config.json", {**config, "vocab_size": vocab})

    weights = mx.load(str(path / "model.safetensors"))
    embed = weights["model.embed_tokens.weight"]
    extra = mx.random.normal((vocab - embed.shape[0], embed.shape[1]), key=mx.random.key(seed + 1)) * 0.02
    embed = mx.concatenate([embed, extra.astype(embed.dtype)])
    weights["model.embed_tokens.weight"] = embed
    for name, value in list(weights.items()):
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            weights[name] = mx.zeros_like(value)  # each layer passes the embedding on unchanged
    head = mx.zeros((vocab, embed.shape[1]), dtype=embed.dtype)
    for current, following in zip(chain, chain[1:]):
        row = embed[current]
        head[following] = row / mx.linalg.norm(row) * GAIN
    weights["lm_head.weight"] = head
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    return path
