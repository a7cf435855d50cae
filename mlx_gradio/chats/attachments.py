"""Text files attached to a message (plain text, Markdown, code, CSV, JSON): checked, kept, and given to
the model as a delimited block with the file's name.

Images have their own path (images.py); anything that is not text is refused.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from ..errors import InvalidAttachment
from ..files import write_atomic

log = logging.getLogger(__name__)

MAX_TEXT_BYTES = 1_000_000  # per file; a bigger text would fill most models' context anyway
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".avif"}
TEXT_SUFFIXES = {
    ".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".json", ".jsonl", ".yaml", ".yml", ".toml", ".ini",
    ".cfg", ".conf", ".xml", ".html", ".htm", ".css", ".log", ".tex", ".py", ".js", ".ts", ".tsx", ".jsx",
    ".java", ".kt", ".swift", ".c", ".h", ".cc", ".cpp", ".hpp", ".m", ".mm", ".rs", ".go", ".rb", ".php",
    ".pl", ".lua", ".r", ".jl", ".scala", ".sh", ".bash", ".zsh", ".fish", ".ps1", ".bat", ".sql", ".graphql",
    ".proto", ".ipynb", ".vue", ".svelte", ".dart", ".zig", ".hs", ".ml", ".ex", ".exs", ".erl", ".clj",
    ".el", ".vim", ".srt", ".vtt",
}
_SAFE_NAME = re.compile(r"[^\w.\- ]+")


def is_image(path: str | Path) -> bool:
    """Whether an upload should be read as an image (by its name)."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def ingest_text(upload: str | Path, files_dir: Path, name: str | None = None) -> dict:
    """Check an uploaded text file and keep a copy in `files_dir`; returns `{"name", "path"}`.

    Raises `InvalidAttachment` for a binary file, one that is not UTF-8 text, or one over the size limit.
    """
    source = Path(upload)
    name = _SAFE_NAME.sub("_", name or source.name)[:120].strip(". ") or "file.txt"  # never "..", never hidden
    try:
        size = source.stat().st_size
        if size > MAX_TEXT_BYTES:
            raise InvalidAttachment(f"{name} is {size / 1e6:.1f} MB; a text file can be at most "
                                    f"{MAX_TEXT_BYTES / 1e6:.0f} MB. Attach a shorter extract.")
        data = source.read_bytes()
    except OSError as exc:
        raise InvalidAttachment(f"{name} could not be read ({exc.strerror or exc}).") from exc
    text = decode_text(data, name)
    digest = hashlib.sha256(data).hexdigest()[:32]
    target = files_dir / digest / name
    if not target.exists():
        write_atomic(target, data)  # the bytes just checked; a full disk is a StoreWriteFailed, not a traceback
        log.debug("Stored text file %s (%d characters) as %s", name, len(text), target)
    return {"name": name, "path": str(target)}


def decode_text(data: bytes, name: str) -> str:
    """The text of a file, or `InvalidAttachment` if it is binary."""
    if b"\x00" in data[:65536]:
        raise InvalidAttachment(f"{name} is a binary file, not text. Attach text, Markdown, code, CSV or JSON "
                                "files, or images.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidAttachment(f"{name} is not UTF-8 text (byte {exc.start} cannot be read). Save it as UTF-8, "
                                "or attach text, Markdown, code, CSV or JSON files, or images.") from exc


def read_attachment(path: str | Path) -> str:
    """A kept file's text for the prompt; a file gone missing says so instead of failing the reply."""
    try:
        return Path(path).read_bytes().decode("utf-8-sig", "replace")
    except OSError as exc:
        log.warning("Attached file %s cannot be read: %s", path, exc)
        return f"(the file could not be read: {exc.strerror or exc})"


def with_files(text: str, files: list[dict]) -> str:
    """A user message as the model reads it: each attached file as a delimited block, then the message."""
    blocks = [f'<file name="{f["name"]}">\n{read_attachment(f["path"]).rstrip()}\n</file>' for f in files]
    return "\n\n".join([*blocks, text] if text else blocks)
