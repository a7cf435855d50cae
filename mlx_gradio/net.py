"""Addresses and ports on this machine: loopback or not, a free port, waiting for a local page to answer."""

from __future__ import annotations

import ipaddress
import logging
import socket
import subprocess
import time
import urllib.request

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError as exc:  # a host name other than localhost: it may resolve to anything
        log.debug("%s is not a loopback address: %s", host, exc)
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for_page(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120) -> None:
    """Poll `url` until it answers; fail early if `proc` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before its page answered")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer in {timeout_s} s")
