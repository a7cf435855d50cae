"""Logging to the console and to a rotating file in the data dir."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(data_dir: Path, level: str = "INFO") -> Path:
    """Send log records to stderr and to `<data_dir>/logs/mlx-gradio.log`; return the file."""
    log_dir = Path(data_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "mlx-gradio.log"
    file_handler = logging.handlers.RotatingFileHandler(log_file, maxBytes=5_000_000, backupCount=3, encoding="utf-8")
    console = logging.StreamHandler()
    for handler in (file_handler, console):
        handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [console, file_handler]
    root.setLevel(level.upper())
    # Third-party chatter that buries the app's own lines at INFO.
    for noisy in ("httpx", "urllib3", "huggingface_hub", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return log_file
