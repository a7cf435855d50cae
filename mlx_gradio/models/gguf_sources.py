"""GGUF files other apps already downloaded: LM Studio's model folders and Ollama's manifests and blobs.

Only headers are read (architecture and tensor types), so listing is quick even for large files;
each file says whether the importer can convert it, and if not, why.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnsupportedGGUF
from .gguf import check_importable

log = logging.getLogger(__name__)

MAX_DEPTH = 4  # publisher/repo/file.gguf, with room for one more folder
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"


@dataclass(frozen=True)
class FoundGGUF:
    """A GGUF file on this machine and whether it can be imported."""

    name: str
    app: str  # "LM Studio" or "Ollama"
    path: str
    size_bytes: int
    problem: str  # "" when the importer can convert it


def lmstudio_dirs(home: Path) -> list[Path]:
    """Where LM Studio keeps models (the current and the older location)."""
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def ollama_dir(home: Path) -> Path:
    """Where Ollama keeps models (`OLLAMA_MODELS` moves it)."""
    return Path(os.environ.get("OLLAMA_MODELS") or home / ".ollama" / "models")


def find_gguf_files(home: Path | None = None) -> list[FoundGGUF]:
    """Every GGUF file LM Studio and Ollama hold for this user, importable ones first."""
    home = Path(home or Path.home())
    found = [describe(name, "LM Studio", path) for name, path in _lmstudio_files(home)]
    found += [describe(name, "Ollama", path) for name, path in _ollama_files(ollama_dir(home))]
    return sorted(found, key=lambda f: (bool(f.problem), f.app, f.name.lower()))


def describe(name: str, app: str, path: Path) -> FoundGGUF:
    """A found file with its size and, if the importer cannot take it, the reason."""
    try:
        check_importable(path)
        problem = ""
    except UnsupportedGGUF as exc:
        log.debug("%s cannot be imported: %s", path, exc)
        problem = str(exc)
    except OSError as exc:
        log.debug("%s cannot be read: %s", path, exc)
        problem = f"It cannot be read ({exc.strerror or exc})."
    return FoundGGUF(name, app, str(path), path.stat().st_size if path.exists() else 0, problem)


def _lmstudio_files(home: Path) -> Iterator[tuple[str, Path]]:
    for root in lmstudio_dirs(home):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.gguf")):
            relative = path.relative_to(root)
            if len(relative.parts) <= MAX_DEPTH and path.is_file() and not path.name.startswith("mmproj"):
                yield relative.as_posix(), path


def _ollama_files(root: Path) -> Iterator[tuple[str, Path]]:
    """Each manifest's model layer: `library/llama3.2:1b` -> `blobs/sha256-<digest>`."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        try:
            layers = json.loads(manifest.read_text(encoding="utf-8")).get("layers", [])
        except (OSError, ValueError, AttributeError) as exc:
            log.debug("Skipping unreadable Ollama manifest %s: %s", manifest, exc)
            continue
        digest = next((layer.get("digest", "") for layer in layers if isinstance(layer, dict)
                       and layer.get("mediaType") == OLLAMA_MODEL_LAYER), "")
        blob = root / "blobs" / digest.replace(":", "-")
        if not digest.startswith("sha256:") or "/" in digest or not blob.is_file():
            continue
        parts = manifest.relative_to(manifests).parts  # registry / namespace / model / tag
        name = f"{'/'.join(parts[1:-1])}:{parts[-1]}" if len(parts) >= 3 else manifest.name
        yield name.removeprefix("library/"), blob
