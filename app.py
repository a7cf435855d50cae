"""mlx-gradio: find, serve and chat with MLX models from one browser tab.

Run `python app.py --help` for the options.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlx_gradio.net import is_loopback

if TYPE_CHECKING:
    from mlx_gradio.controller import Controller

log = logging.getLogger("mlx_gradio.app")


def read_logins(pairs: list[str], files: list[Path], flag: str, parser: argparse.ArgumentParser) -> dict[str, str]:
    """USER:PASS logins from flags and from files (one a line, readable by the owner only)."""
    lines = [(pair, flag) for pair in pairs]
    for path in files:
        try:
            mode = path.stat().st_mode
            if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
                parser.error(f"{path} can be read by other users (mode {stat.S_IMODE(mode):o}); "
                             f"run `chmod 600 {path}` first")
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            parser.error(f"cannot read {path}: {exc.strerror or exc}")
        lines += [(line.strip(), f"{path}") for line in text.splitlines() if line.strip() and not line.startswith("#")]
    from mlx_gradio.store import LOCAL_USER, RESERVED_NAME

    logins: dict[str, str] = {}
    for line, source in lines:
        user, colon, password = line.partition(":")
        if not colon or not user or not password:
            parser.error(f"{source} expects USER:PASS: a user name, a colon and a password")
        if user == LOCAL_USER:
            parser.error(f"{source}: {RESERVED_NAME}")
        logins[user] = password
    return logins


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description="Chat with MLX models in your browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link (needs --auth)")
    parser.add_argument("--auth", action="append", default=[], metavar="USER:PASS",
                        help="an owner's login (repeat for more owners)")
    parser.add_argument("--auth-file", action="append", default=[], type=Path, metavar="PATH",
                        help="owners' logins, one USER:PASS a line (the file must be chmod 600)")
    parser.add_argument("--guest", action="append", default=[], metavar="USER:PASS",
                        help="a guest's login: chat only, with the owners' models (repeat for more)")
    parser.add_argument("--guest-file", action="append", default=[], type=Path, metavar="PATH",
                        help="guests' logins, one USER:PASS a line (the file must be chmod 600)")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("MLX_GRADIO_HOME", "~/.mlx-gradio")),
                        help="settings, conversations, logs and converted models "
                             "(default $MLX_GRADIO_HOME or ~/.mlx-gradio)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--model", help="model folder or Hugging Face repo id (in the local cache) to load at start")
    parser.add_argument("--api-port", type=int, metavar="PORT",
                        help="serve the app's OpenAI-compatible API on this port for this run (the host and keys "
                             "are the Servers tab's; it is switched on there to start with every run)")
    parser.add_argument("--no-browser", action="store_true", help="do not open the page in the default browser")
    args = parser.parse_args(argv)
    args.owners = read_logins(args.auth, args.auth_file, "--auth", parser)
    args.guests = read_logins(args.guest, args.guest_file, "--guest", parser)
    if set(args.owners) & set(args.guests):
        parser.error(f"{', '.join(sorted(set(args.owners) & set(args.guests)))} cannot be both owner and guest")
    if args.guests and not args.owners:
        parser.error("guests need an owner: add --auth USER:PASS or --auth-file PATH")
    if (args.share or not is_loopback(args.host)) and not args.owners:
        where = "a share link" if args.share else f"--host {args.host}"
        parser.error(f"{where} makes the app reachable from other machines, so it needs a login: "
                     "add --auth USER:PASS or --auth-file PATH")
    args.data_dir = args.data_dir.expanduser().resolve()
    try:
        args.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"cannot use {args.data_dir} as the data dir ({exc}); pick another with --data-dir")
    return args


def has_screen(env: Mapping[str, str] = os.environ, platform: str = sys.platform) -> bool:
    """Whether a browser opened here would show up on someone's screen (not over SSH, not a bare server)."""
    if env.get("SSH_CONNECTION") or env.get("SSH_TTY"):
        return False
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def opens_browser(args: argparse.Namespace, env: Mapping[str, str] = os.environ, platform: str = sys.platform) -> bool:
    """Open the page in the default browser: only for a local app on a machine with a screen."""
    return not (args.no_browser or args.share or not is_loopback(args.host)) and has_screen(env, platform)


def _interrupt(controller: Controller) -> Callable[[int, object], None]:
    """A handler that ends the replies in flight at once, then turns the signal into the KeyboardInterrupt
    that Gradio's main loop handles (closing the web server can take seconds; the replies do not wait)."""
    def handler(signum: int, _frame: object) -> None:
        controller.stop_replies()
        raise KeyboardInterrupt(f"signal {signum}")

    return handler


def main(argv: list[str] | None = None) -> None:
    """Start the app, then load the model in the background while the page is already up."""
    args = parse_args(argv)
    from mlx_gradio.logs import setup_logging

    log_file = setup_logging(args.data_dir, args.log_level)
    from mlx_gradio.app_factory import create_app
    from mlx_gradio.controller.access import Access
    from mlx_gradio.errors import AppError
    from mlx_gradio.ui.blocks import launch_options

    blocks, controller = create_app(args.data_dir, Access(args.owners, args.guests))
    log.info("Data in %s, log in %s; %d owner and %d guest logins", args.data_dir, log_file,
             len(args.owners), len(args.guests))
    blocks.queue(default_concurrency_limit=8)
    # `kill` (SIGTERM) shuts down as cleanly as Ctrl+C: replies stop, the server closes, servers stop, the model
    # unloads. Set before the page is up: a signal that comes while the app still starts is no harder exit.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _interrupt(controller))
    try:
        try:
            blocks.launch(server_name=args.host, server_port=args.port, share=args.share,
                          inbrowser=opens_browser(args), prevent_thread_lock=True, **launch_options(controller))
        except OSError as exc:
            log.error("Cannot listen on %s:%s (%s). Is another copy running? Pick a free port with --port.",
                      args.host, args.port, exc)
            raise SystemExit(2) from exc
        try:
            controller.startup(args.model, args.api_port)
        except AppError as exc:
            log.error("Cannot load --model %s: %s; loading the last used model instead", args.model, exc)
            controller.startup(api_port=args.api_port)
        blocks.block_thread()  # until Ctrl+C or SIGTERM; it closes the server itself
    except KeyboardInterrupt:
        log.info("Stopping while the app was still starting")
        blocks.close()
    finally:
        controller.shutdown()


if __name__ == "__main__":
    main()
