"""Model folders on this machine: the demo model, the Hugging Face cache and folders the user added."""

from __future__ import annotations

import json
import logging
import struct
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ModelNotFound

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors",)
DEFAULT_CONTEXT = 4096  # tokens, for a config that names no length


@dataclass(frozen=True)
class LocalModel:
    """A loadable model folder and what the picker shows about it."""

    name: str
    path: str
    source: str  # "demo", "hf-cache", "folder", or "server" / "endpoint" (replies from an OpenAI-compatible URL)
    vision: bool
    size_bytes: int
    key: str = ""  # what the picker and API calls name it by: never a path (see `with_keys`)

    @property
    def label(self) -> str:
        """The picker's text: name, kind and size."""
        kind = "vision" if self.vision else "text"
        if self.source in ("server", "endpoint"):
            return f"{self.name} · {kind} · {'server of this app' if self.source == 'server' else 'OpenAI endpoint'}"
        where = {"demo": "built-in demo", "hf-cache": "HF cache", "folder": "folder"}[self.source]
        size = f"{self.size_bytes / 1e9:.1f} GB" if self.size_bytes >= 1e9 else f"{self.size_bytes / 1e6:.0f} MB"
        return f"{self.name} · {kind} · {size} · {where}"


def model_name(path: str | Path) -> str:
    """What to call a model folder: "owner/name" for a Hugging Face cache snapshot (not its commit hash), else
    the folder's name."""
    folder = Path(path)
    repo = folder.parent.parent.name
    if folder.parent.name == "snapshots" and repo.startswith("models--") and "--" in repo.removeprefix("models--"):
        return repo_id_of(repo)
    return folder.name


def repo_id_of(cache_folder: str) -> str:
    """The repo id a Hugging Face cache folder name stands for ("models--owner--name" → "owner/name")."""
    return cache_folder.removeprefix("models--").replace("--", "/", 1)


def read_config(path: str | Path) -> dict:
    """The folder's `config.json`; raises `ModelNotFound` if there is none or it is unreadable."""
    try:
        is_folder = Path(path).is_dir()
    except OSError as exc:  # a name too long, a folder we may not read
        raise ModelNotFound(f"There is no model folder at {str(path)[:200]} ({exc.strerror or exc}).") from exc
    if not is_folder:
        raise ModelNotFound(f"There is no model folder at {path}.")
    config_path = Path(path) / "config.json"
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelNotFound(f"{path} has no config.json, so it is not a model folder.") from exc
    except (OSError, ValueError) as exc:
        raise ModelNotFound(f"{config_path} cannot be read: {exc}") from exc


def context_length(config: dict, limit: int = 0) -> int:
    """The model's context length from its config, lowered to `limit` when that is set."""
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    length = 0
    for key in ("max_position_embeddings", "max_sequence_length", "seq_length", "n_positions"):
        length = config.get(key) or text.get(key) or 0
        if length:
            break
    length = int(length) if length else DEFAULT_CONTEXT
    return min(length, limit) if limit and limit > 0 else length


def has_thinking_switch(path: str | Path) -> bool:
    """Whether a model's chat template takes `enable_thinking` (Qwen3 and its kind can answer without thinking)."""
    folder = Path(path)
    texts = []
    try:
        if (folder / "chat_template.jinja").exists():
            texts.append((folder / "chat_template.jinja").read_text(encoding="utf-8"))
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
        template = config.get("chat_template") if isinstance(config, dict) else None
        texts += [template] if isinstance(template, str) else [
            t.get("template", "") for t in template or [] if isinstance(t, dict)]
    except FileNotFoundError as exc:
        log.debug("%s has no chat template file: %s", path, exc)
    except (OSError, ValueError) as exc:
        log.debug("Cannot read the chat template of %s: %s", path, exc)
    return any("enable_thinking" in str(text) for text in texts)


SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def recommended_sampling(path: str | Path) -> dict[str, float]:
    """The sampling a model's authors recommend, from its `generation_config.json` ({} if none or unreadable)."""
    try:
        config = json.loads((Path(path) / "generation_config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.debug("%s has no generation_config.json", path)
        return {}
    except (OSError, ValueError) as exc:
        log.debug("Cannot read generation_config.json of %s: %s", path, exc)
        return {}
    if not isinstance(config, dict):
        return {}
    if config.get("do_sample") is False:
        return {"temperature": 0.0}
    return {key: config[key] for key in SAMPLING_KEYS
            if isinstance(config.get(key), (int, float)) and not isinstance(config.get(key), bool)}


def is_vision_model(path: str | Path) -> bool:
    """Whether the folder holds a vision-language model (its config has a `vision_config`)."""
    return "vision_config" in read_config(path)


def folder_size(path: Path) -> int:
    """Bytes of the weight files in a model folder (following the HF cache's symlinks)."""
    return sum(p.stat().st_size for p in path.iterdir() if p.name.endswith(WEIGHT_SUFFIXES) and p.exists())


def weight_dtypes(path: Path) -> set[str]:
    """The tensor types in a folder's safetensors files (read from their headers, not the weights)."""
    dtypes: set[str] = set()
    for weights in Path(path).glob("*.safetensors"):
        try:
            with open(weights, "rb") as f:
                length = struct.unpack("<Q", f.read(8))[0]
                header = json.loads(f.read(min(length, 100_000_000)))
        except (OSError, ValueError, struct.error) as exc:
            log.debug("Cannot read the header of %s: %s", weights, exc)
            continue
        dtypes |= {entry["dtype"] for name, entry in header.items() if name != "__metadata__" and "dtype" in entry}
    return dtypes


def describe_folder(path: str | Path, source: str, name: str | None = None) -> LocalModel:
    """A `LocalModel` for a folder; raises `ModelNotFound` if it is not a model folder."""
    folder = Path(path).expanduser().absolute()
    config = read_config(folder)
    size = folder_size(folder)
    if size == 0:
        raise ModelNotFound(f"{folder} has a config.json but no .safetensors weights.")
    return LocalModel(
        name=name or model_name(folder),
        path=str(folder),
        source=source,
        vision="vision_config" in config,
        size_bytes=size,
    )


def list_models(demo: LocalModel | None, folders: list[str], cached: list[LocalModel]) -> list[LocalModel]:
    """Every model the picker offers: the demo first, then added folders, then the HF cache's complete ones."""
    models = [demo] if demo else []
    for folder in folders:
        try:
            models.append(describe_folder(folder, "folder"))
        except ModelNotFound as exc:
            log.warning("A model folder from the settings is gone or broken: %s", exc)
    seen = {m.path for m in models}
    return with_keys(models + [m for m in cached if m.path not in seen])


def with_keys(models: list[LocalModel]) -> list[LocalModel]:
    """The models with their keys: the name (the repo id, or the folder's name), and "name (2)" for a second
    model of the same name, in list order."""
    counts: Counter[str] = Counter()
    keyed = []
    for model in models:
        counts[model.name] += 1
        n = counts[model.name]
        keyed.append(replace(model, key=model.name if n == 1 else f"{model.name} ({n})"))
    return keyed
