"""The API's HTTP server: uvicorn on a thread of its own, on a socket bound before it starts (so a port in use
is a sentence, not an exit)."""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time

import uvicorn

from ..errors import ApiStartFailed
from ..net import is_loopback
from .routes import ApiService

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class ApiServer:
    """Starts and stops the API; at most one runs."""

    def __init__(self, service: ApiService) -> None:
        self.service = service
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.host = ""
        self.port = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def url(self) -> str:
        """Where clients reach it (`…/v1`), or "" when it is off."""
        if not self.running:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else host}:{self.port}/v1"

    def start(self, host: str, port: int, origins: list[str]) -> None:
        """Listen on `host:port` (stopping the one that ran); raises `ApiStartFailed` with the reason."""
        with self._lock:
            self._stop()
            if not is_loopback(host) and not self.service.keys.all():
                raise ApiStartFailed(f"An API on {host} can be used by anyone on the network: make an API key "
                                     "first (every request must then send one), or listen on 127.0.0.1.")
            sock = _bind(host, port)
            config = uvicorn.Config(self.service.build(origins), log_level="warning", access_log=False,
                                    lifespan="off", timeout_graceful_shutdown=2)
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mlx-gradio-api",
                                      daemon=True)
            thread.start()
            deadline = time.monotonic() + START_TIMEOUT_S
            while not server.started and thread.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not server.started:
                server.should_exit = True
                sock.close()
                raise ApiStartFailed(f"The API did not start on {host}:{port}; the log says why.")
            self._server, self._thread, self.host, self.port = server, thread, host, port
            log.info("The API listens on %s:%d%s", host, port, f" for pages of {', '.join(origins)}" if origins else "")

    def stop(self) -> None:
        """Stop listening (replies under way end with their clients' connections)."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("The API's server did not stop within %.0f s; it is left to end with the app",
                            STOP_TIMEOUT_S)
        log.info("The API on %s:%d stopped", self.host, self.port)
        self._server = self._thread = None


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or `ApiStartFailed` naming what is wrong."""
    if not isinstance(port, int) or not 1024 <= port <= 65535:
        raise ApiStartFailed(f"The API's port must be from 1024 to 65535, not {port!r}.")
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except (socket.gaierror, UnicodeError) as exc:
        raise ApiStartFailed(f"{host!r} is not an address of this machine: {exc}.") from exc
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = "another program listens there" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise ApiStartFailed(f"The API cannot listen on {host}:{port}: {reason}. Pick another port.") from exc
    sock.set_inheritable(True)
    return sock
