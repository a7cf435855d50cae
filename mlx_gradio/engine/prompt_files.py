"""Conversations' KV caches on disk, so the first follow-up after a restart does not re-read the history.

One `<conversation id>.safetensors` per conversation, written with mlx-lm's `save_prompt_cache`
(temp file, then rename) with the model's path and the exact tokens the cache holds as
metadata. A file is used only for the model it was made with and only if its layers match
that model's; anything else (another model, a corrupt or truncated file) is deleted. The
files are bounded by a byte budget: the least recently written go first.

Runs on the engine thread only (the caches are MLX arrays).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from .prompt_cache import CachedPrompt

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
FORMAT = "1"
_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # conversation ids are uuid hex; never a path


class PromptFiles:
    """The prompt-cache files in one folder, within `budget_bytes` (0: none are kept)."""

    def __init__(self, folder: Path, budget_bytes: int) -> None:
        self.folder = Path(folder)
        self.budget_bytes = budget_bytes

    def _path(self, conversation_id: str) -> Path | None:
        return self.folder / f"{conversation_id}{SUFFIX}" if _SAFE_ID.fullmatch(conversation_id) else None

    def save(self, conversation_id: str, entry: CachedPrompt, model_path: str) -> bool:
        """Write a conversation's cache; False if it was not written (no budget, too big, disk full)."""
        from mlx_lm.models.cache import save_prompt_cache

        from .prompt_cache import cache_nbytes

        path = self._path(conversation_id)
        if path is None or not self.budget_bytes or cache_nbytes(entry.cache) > self.budget_bytes:
            return False
        temp = path.with_name(f".{path.stem}.tmp{SUFFIX}")
        metadata = {"format": FORMAT, "model": str(model_path), "tokens": json.dumps(entry.tokens),
                    "dropped": str(entry.dropped)}
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            save_prompt_cache(str(temp), entry.cache, metadata)
            os.replace(temp, path)
        except (OSError, RuntimeError, ValueError) as exc:  # MLX reports a failed write as RuntimeError
            log.warning("The prompt cache of conversation %s was not written to %s: %s", conversation_id, path, exc)
            temp.unlink(missing_ok=True)
            return False
        self._keep_within_budget(keep=path)
        return True

    def load(self, conversation_id: str, model_path: str, model: Any) -> CachedPrompt | None:
        """A conversation's cache for `model`, or None; a file that does not fit is deleted."""
        from mlx_lm.models.cache import load_prompt_cache, make_prompt_cache

        path = self._path(conversation_id)
        if path is None or not path.exists():
            return None
        try:
            cache, metadata = load_prompt_cache(str(path), return_metadata=True)
            tokens = [int(t) for t in json.loads(metadata["tokens"])]
            dropped = int(metadata.get("dropped", 0))
            fresh = make_prompt_cache(model)
        except Exception as exc:  # noqa: BLE001 - a broken file fails in MLX, JSON or the cache classes alike
            log.warning("The prompt cache file %s cannot be read (%s); it is deleted", path, exc)
            self.delete(conversation_id)
            return None
        why = _mismatch(metadata, model_path, cache, fresh, tokens)
        if why:
            log.info("The prompt cache file of conversation %s is not used (%s); it is deleted", conversation_id, why)
            self.delete(conversation_id)
            return None
        return CachedPrompt(tokens, cache, dropped, model=str(model_path), saved=True)

    def delete(self, conversation_id: str) -> None:
        """Remove a conversation's file, if any."""
        path = self._path(conversation_id)
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("The prompt cache file %s cannot be deleted: %s", path, exc)

    def set_budget(self, budget_bytes: int) -> None:
        """Change the budget, deleting the oldest files beyond it."""
        self.budget_bytes = budget_bytes
        self._keep_within_budget()

    def files(self) -> list[Path]:
        """The cache files, oldest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.glob(f"*{SUFFIX}"):
            try:
                found.append((path.stat().st_mtime, path))
            except OSError as exc:
                log.debug("Skipping prompt cache file %s: %s", path, exc)  # removed meanwhile
                continue
        return [path for _, path in sorted(found)]

    @property
    def nbytes(self) -> int:
        """Bytes the files take."""
        return sum(path.stat().st_size for path in self.files() if path.exists())

    def _keep_within_budget(self, keep: Path | None = None) -> None:
        """Delete the least recently written files until the rest fit the budget."""
        files = self.files()
        sizes = {path: path.stat().st_size for path in files if path.exists()}
        total = sum(sizes.values())
        for path in files:
            if total <= self.budget_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)
            total -= sizes.get(path, 0)
            log.debug("Deleted the prompt cache file %s to stay within the disk budget", path)


def _mismatch(metadata: dict, model_path: str, cache: list, fresh: list, tokens: list[int]) -> str:
    """Why a loaded cache cannot serve `model_path`, or "" if it can."""
    if metadata.get("format") != FORMAT:
        return f"format {metadata.get('format')!r}"
    if metadata.get("model") != str(model_path):
        return f"made with {metadata.get('model')}"
    if [type(c).__name__ for c in cache] != [type(c).__name__ for c in fresh]:
        return "its layers do not match the model"
    offsets = {getattr(c, "offset", len(tokens)) for c in cache}
    if offsets != {len(tokens)}:
        return "it holds a different number of tokens than recorded"
    return ""
