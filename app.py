"""mlx-gradio: find, serve and chat with MLX models from one browser tab.

Run `python app.py --help` for the options.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("mlx_gradio.app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="Chat with MLX models in your browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="require this login (repeat for more users)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("MLX_GRADIO_HOME", "~/.mlx-gradio")),
                        help="settings, conversations, logs and converted models "
                             "(default $MLX_GRADIO_HOME or ~/.mlx-gradio)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--model", help="model folder or Hugging Face repo id (in the local cache) to load at start")
    args = parser.parse_args(argv)
    for pair in args.auth:
        if ":" not in pair or not pair.split(":", 1)[0]:
            parser.error(f"--auth expects USER:PASS, got {pair!r}")
    args.data_dir = args.data_dir.expanduser().resolve()
    try:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"cannot use {args.data_dir} as the data dir ({exc}); pick another with --data-dir")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    """Turn a termination signal into the KeyboardInterrupt that Gradio's main loop handles."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> None:
    """Start the app, then load the model in the background while the page is already up."""
    args = parse_args(argv)
    from mlx_gradio.logs import setup_logging

    log_file = setup_logging(args.data_dir, args.log_level)
    from mlx_gradio.app_factory import create_app
    from mlx_gradio.errors import AppError
    from mlx_gradio.ui.blocks import launch_options

    blocks, controller = create_app(args.data_dir)
    log.info("Data in %s, log in %s", args.data_dir, log_file)
    auth = [tuple(pair.split(":", 1)) for pair in args.auth] or None
    blocks.queue(default_concurrency_limit=8)
    try:
        blocks.launch(server_name=args.host, server_port=args.port, share=args.share, auth=auth,
                      prevent_thread_lock=True, **launch_options(controller))
    except OSError as exc:
        log.error("Cannot listen on %s:%s (%s). Is another copy running? Pick a free port with --port.",
                  args.host, args.port, exc)
        controller.engine.shutdown()
        raise SystemExit(2) from exc
    # `kill` (SIGTERM) shuts down as cleanly as Ctrl+C: the server closes and the model unloads.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        controller.startup(args.model)
    except AppError as exc:
        log.error("Cannot load --model %s: %s; loading the last used model instead", args.model, exc)
        controller.startup()
    try:
        blocks.block_thread()
    finally:
        controller.engine.shutdown()


if __name__ == "__main__":
    main()
