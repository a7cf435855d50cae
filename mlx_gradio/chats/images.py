"""Check uploaded images and keep a copy in the data dir, so conversations outlive Gradio's temp files."""

from __future__ import annotations

import hashlib
import logging
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from ..errors import InvalidImage
from ..files import write_atomic

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # a 8000 x 5000 photo; larger ones are refused before decoding
ALLOWED_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


def ingest_image(upload: str | Path, images_dir: Path) -> Path:
    """Validate an uploaded image and copy it into `images_dir` under its content hash.

    Raises `InvalidImage` for a file that is not an image of an allowed format, that cannot be
    decoded, or whose pixel count is too large to decode safely (a decompression bomb).
    """
    source = Path(upload)
    name = source.name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                fmt = image.format
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise InvalidImage(
                        f"{name} is {width}×{height} pixels, more than the {MAX_PIXELS // 1_000_000} megapixels "
                        "that can be decoded safely. Resize it and attach it again."
                    )
                image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"{name} is not an image that can be read ({exc}).") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"{name} could not be decoded: {exc}.") from exc
    if fmt not in ALLOWED_FORMATS:
        raise InvalidImage(f"{name} is a {fmt} image; attach a PNG, JPEG, WebP, GIF or BMP image.")
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"{name} could not be read ({exc.strerror or exc}).") from exc
    target = images_dir / f"{hashlib.sha256(data).hexdigest()[:32]}{ALLOWED_FORMATS[fmt]}"
    if not target.exists():
        # The bytes just checked, through a temporary file of its own (two tabs may send the same image at
        # once); a full disk is a StoreWriteFailed with a sentence, the image store unchanged.
        write_atomic(target, data)
        log.debug("Stored image %s as %s", name, target)
    return target
