"""`python app.py` as a person runs it, with a server that starts with the app: quitting stops it, a killed
app's server is adopted by the next start, and no process is left behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mlx_gradio.net import free_port, wait_for_page
from mlx_gradio.serving.profiles import ServerProfile, new_profile
from mlx_gradio.serving.supervisor import probe
from mlx_gradio.store import Store
from tests.conftest import seed_data_dir

ROOT = Path(__file__).resolve().parents[1]


def launch(data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--no-browser", "--data-dir", str(data_dir),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    wait_for_page(url, proc)
    return proc, url


def wait_ready(profile: ServerProfile, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while probe(profile, timeout=30)[0] is not None:
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.5)


def wait_for_log(data_dir: Path, text: str, count: int, timeout: float = 120) -> None:
    """Wait until the app's log holds `text` `count` times (each app run appends to it)."""
    log = data_dir / "logs" / "mlx-gradio.log"
    deadline = time.monotonic() + timeout
    while not log.exists() or log.read_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {count}× {text!r} in the log"
        time.sleep(0.2)


def server_processes(port: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "server" in " ".join(cmdline) and str(port) in cmdline:
            found.append(process)
    return found


def test_quitting_stops_the_servers_and_a_killed_apps_server_is_adopted(tmp_path, demo_model, tiny_llama):
    data_dir = seed_data_dir(tmp_path / "data", demo_model, tiny_llama)
    store = Store(data_dir)
    profile = ServerProfile(**{**new_profile("tiny", str(tiny_llama)).record(), "start_with_app": True})
    store.server_profiles.save(profile.record())
    store.close()

    # 1. The server starts with the app; SIGTERM to the app stops it too.
    app, _ = launch(data_dir)
    wait_ready(profile)
    [server] = server_processes(profile.port)
    family = [server, *server.children(recursive=True)]
    app.send_signal(signal.SIGTERM)
    assert app.wait(60) == 0
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, "the app left its server running"

    # 2. The app is killed: its server keeps running, and the next start adopts it instead of starting another.
    app, _ = launch(data_dir)
    wait_ready(profile)
    [server] = server_processes(profile.port)
    app.kill()
    app.wait(30)
    assert server.is_running()
    app, _ = launch(data_dir)
    wait_for_log(data_dir, "from an earlier run", 1)  # the new run has taken the server over
    wait_ready(profile)
    assert [p.pid for p in server_processes(profile.port)] == [server.pid]  # adopted, not started twice
    family = [server, *server.children(recursive=True)]
    app.send_signal(signal.SIGTERM)
    assert app.wait(60) == 0
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive and not server_processes(profile.port)
