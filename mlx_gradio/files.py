"""Files on disk that must never be half written: JSON encoding, atomic replace, moving bad files aside."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from .errors import StoreWriteFailed

log = logging.getLogger(__name__)


def encode_json(data: Any) -> bytes:
    """UTF-8 JSON with the C encoder; text that UTF-8 cannot hold (lone surrogates) is escaped, not lost."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # `\udxxx` escapes keep a lone surrogate exactly and read back as the same string.
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def write_atomic(path: Path, payload: bytes) -> None:
    """Write `payload` to a temporary file, fsync it and rename it over `path`.

    Killing the process at any point leaves either the old file or the new one. Raises
    `StoreWriteFailed` (disk full, permissions, ...) with the old file untouched.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise StoreWriteFailed(f"{path} could not be written ({exc.strerror or exc}).") from exc
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable where the platform allows syncing a directory."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as exc:
        log.debug("Cannot open %s to fsync it: %s", folder, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("Cannot fsync directory %s: %s", folder, exc)
    finally:
        os.close(fd)


def read_json(path: Path) -> Any:
    """Parse a JSON file; raises ValueError (bad JSON or encoding) or OSError."""
    return json.loads(path.read_bytes())


def move_aside(path: Path, reason: str) -> Path:
    """Rename an unreadable file to `<name>.corrupt-<time>` so nothing is lost, and log it."""
    aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
    os.replace(path, aside)
    log.warning("%s could not be read (%s); moved it to %s", path, reason, aside)
    return aside
