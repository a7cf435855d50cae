"""The Hugging Face cache on this machine: which models it holds, how complete, and deleting them safely.

Listing uses `scan_cache_dir`; deleting is planned first (`delete_revisions(...)` and its
`expected_freed_size`), shown, then executed. Nothing outside the cache folder is ever removed:
repo ids are validated and every path is checked to be inside the cache before it is touched.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..errors import ModelNotFound
from .folders import LocalModel, describe_folder, read_config, repo_id_of

log = logging.getLogger(__name__)

REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}")


def valid_repo_id(repo_id: object) -> bool:
    """Whether `repo_id` is "owner/name" and nothing else (no path, no `..`)."""
    return isinstance(repo_id, str) and REPO_ID.fullmatch(repo_id) is not None and ".." not in repo_id


@dataclass(frozen=True)
class CachedModel:
    """One model repository in the cache, as the Local models list shows it."""

    repo_id: str
    path: str  # the newest snapshot folder ("" when there is none yet)
    size_on_disk: int
    last_used: datetime | None
    complete: bool
    vision: bool


@dataclass(frozen=True)
class DeletePlan:
    """What deleting a repository would free, before anything is deleted."""

    repo_id: str
    freed_bytes: int
    folder: Path


def repo_folder(cache_dir: Path, repo_id: str) -> Path:
    """The cache's folder for a model repository; raises `ModelNotFound` for an id that is not owner/name."""
    if not valid_repo_id(repo_id):
        raise ModelNotFound(f"“{repo_id}” is not a model id (owner/name).")
    folder = (Path(cache_dir) / f"models--{repo_id.replace('/', '--')}").absolute()
    if folder.parent != Path(cache_dir).absolute():
        raise ModelNotFound(f"“{repo_id}” is not a model id (owner/name).")
    return folder


# (what, cache dir) -> (the cache's signature then, the answer): a scan visits every file of every repository.
_kept: dict[tuple[str, Path], tuple[tuple, list]] = {}
_kept_lock = threading.Lock()


def _until_changed(what: str, cache_dir: Path, compute: Callable[[Path], list]) -> list:
    """`compute(cache_dir)`, worked out again only when the cache's signature changed since the last time."""
    key, now = (what, Path(cache_dir)), signature(cache_dir)
    with _kept_lock:
        kept = _kept.get(key)
    if kept is not None and kept[0] == now:
        return list(kept[1])
    found = compute(Path(cache_dir))
    with _kept_lock:
        _kept[key] = (now, found)
    return list(found)


def signature(cache_dir: Path) -> tuple:
    """What changes whenever a model is added to the cache, completed, changed or removed: the times of each
    repository's folders (its blobs, its snapshots and each snapshot), read with a few stats per repository
    instead of walking every file as a scan does."""
    stamps = []
    for repo in sorted(Path(cache_dir).glob("models--*")):
        for folder in (repo, repo / "blobs", repo / "snapshots", repo / "refs",
                       *sorted((repo / "snapshots").glob("*"))):
            try:
                stamps.append((str(folder), folder.stat().st_mtime_ns))
            except OSError as exc:  # not there (yet), or gone meanwhile: that is part of the signature too
                stamps.append((str(folder), type(exc).__name__))
    return tuple(stamps)


def scan(cache_dir: Path) -> list[CachedModel]:
    """Every model repository in the cache, complete or not, by name; scanned again only when it changed."""
    return _until_changed("scan", cache_dir, _scan)


def _scan(cache_dir: Path) -> list[CachedModel]:
    """Every model repository in the cache, read with huggingface_hub's `scan_cache_dir`."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        log.debug("There is no Hugging Face cache at %s yet", cache_dir)
        return []
    models = {}
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        newest = max(repo.revisions, key=lambda r: r.last_modified, default=None)
        path = str(newest.snapshot_path) if newest else ""
        models[repo.repo_id] = CachedModel(
            repo.repo_id, path, repo.size_on_disk, _time(repo.last_accessed),
            complete=bool(path) and is_complete(Path(path)), vision=bool(path) and _is_vision(Path(path)))
    # A download stopped before its first file finished has blobs but no snapshot: scan_cache_dir skips it.
    for folder in Path(cache_dir).glob("models--*--*"):
        repo_id = repo_id_of(folder.name)
        if repo_id not in models and valid_repo_id(repo_id):
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
            models[repo_id] = CachedModel(repo_id, "", size, None, complete=False, vision=False)
    return sorted(models.values(), key=lambda m: m.repo_id.lower())


def loadable_models(cache_dir: Path) -> list[LocalModel]:
    """The cache's models with a complete snapshot, as the picker offers them (read again only when the cache
    changed)."""
    return _until_changed("loadable", cache_dir, lambda folder: [
        describe_folder(m.path, "hf-cache", name=m.repo_id) for m in scan(folder) if m.complete])


def is_complete(snapshot: Path) -> bool:
    """Whether a snapshot can be loaded: a config, weights, and every shard its index names."""
    try:
        describe_folder(snapshot, "hf-cache")
    except ModelNotFound as exc:
        log.debug("Snapshot %s is not complete: %s", snapshot, exc)
        return False
    index = snapshot / "model.safetensors.index.json"
    if not index.exists():
        return True
    try:
        shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    except (OSError, ValueError, KeyError, AttributeError) as exc:
        log.debug("Unreadable index in %s: %s", snapshot, exc)
        return False
    return all((snapshot / shard).is_file() for shard in shards)


def plan_delete(cache_dir: Path, repo_id: str) -> DeletePlan:
    """How much deleting `repo_id` frees; raises `ModelNotFound` if the cache does not hold it."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    folder = repo_folder(cache_dir, repo_id)
    if not folder.is_dir():
        raise ModelNotFound(f"{repo_id} is not in the Hugging Face cache ({cache_dir}).")
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound as exc:
        raise ModelNotFound(f"There is no Hugging Face cache at {cache_dir}.") from exc
    repo = next((r for r in info.repos if r.repo_id == repo_id and r.repo_type == "model"), None)
    if repo is None or not repo.revisions:  # only partial files: the whole folder goes
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
        return DeletePlan(repo_id, size, folder)
    strategy = info.delete_revisions(*(r.commit_hash for r in repo.revisions))
    partial = sum(p.stat().st_size for p in (folder / "blobs").glob("*.incomplete"))
    return DeletePlan(repo_id, strategy.expected_freed_size + partial, folder)


def delete(cache_dir: Path, plan: DeletePlan) -> None:
    """Remove the repository's folder from the cache (checked again to be inside it)."""
    folder = repo_folder(cache_dir, plan.repo_id)
    if folder != plan.folder or folder.is_symlink() or not folder.is_dir():
        raise ModelNotFound(f"{plan.repo_id} is no longer in the Hugging Face cache.")
    shutil.rmtree(folder)
    log.info("Deleted %s from %s (%d bytes)", plan.repo_id, cache_dir, plan.freed_bytes)


def _is_vision(snapshot: Path) -> bool:
    try:
        return "vision_config" in read_config(snapshot)
    except ModelNotFound as exc:
        log.debug("Taking %s for a text model: %s", snapshot, exc)
        return False


def _time(timestamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(timestamp) if timestamp else None
