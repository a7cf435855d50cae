"""`python app.py` as a newcomer runs it: flags, logs, login, background model load, clean exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import parse_args
from mlx_gradio.net import free_port, wait_for_page

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_and_data_dir_from_the_environment(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("MLX_GRADIO_HOME", str(tmp_path / "home"))
    args = parse_args([])
    assert (args.host, args.port, args.share, args.owners, args.guests, args.model) == (
        "127.0.0.1", 7860, False, {}, {}, None)
    assert args.data_dir == tmp_path / "home"
    args = parse_args(["--data-dir", str(tmp_path / "d"), "--auth", "ann:secret", "--auth", "bob:pw"])
    assert args.data_dir == tmp_path / "d" and args.owners == {"ann": "secret", "bob": "pw"}


def test_bad_auth_flag_is_refused_with_a_message(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--auth", "no-colon"])
    assert "--auth expects USER:PASS" in capsys.readouterr().err


def test_app_starts_logs_asks_for_login_and_exits_cleanly(tmp_path: Path, tiny_vlm: Path):
    from gradio_client import Client
    from gradio_client.exceptions import AuthenticationError

    port = free_port()
    data_dir = tmp_path / "data"
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--no-browser", "--port", str(port), "--data-dir", str(data_dir),
         "--auth", "ann:secret", "--model", str(tiny_vlm), "--log-level", "DEBUG"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for_page(url, proc)
        with pytest.raises(AuthenticationError, match="Please login"):
            Client(url, verbose=False)  # no login, no app
        client = Client(url, auth=("ann", "secret"), verbose=False)
        model = client.predict(api_name="/page_load")[0]
        assert model["value"] == tiny_vlm.name
        deadline = time.monotonic() + 60
        while "loaded" not in client.predict(api_name="/page_load")[1] and time.monotonic() < deadline:
            time.sleep(0.5)
        log = (data_dir / "logs" / "mlx-gradio.log").read_text()
        assert "Loaded" in log and str(tiny_vlm) in log
    finally:
        proc.send_signal(signal.SIGTERM)  # like `kill`: the app closes the server and unloads the model
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert "Unloading" in stderr and "terminate called" not in stderr and "Traceback" not in stderr


def test_port_in_use_is_a_clear_error(tmp_path: Path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([sys.executable, "app.py", "--no-browser", "--port", str(port),
                               "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_unusable_data_dir_is_a_clear_error(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit):
        parse_args(["--data-dir", str(blocker / "data")])
    assert "cannot use" in capsys.readouterr().err


def test_unknown_model_flag_falls_back_to_the_saved_model(tmp_path: Path, tiny_vlm: Path):
    from gradio_client import Client

    from mlx_gradio.store import Store

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    store = Store(data_dir)
    store.settings.update_app(model=str(tiny_vlm), model_folders=[str(tiny_vlm)])
    store.close()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--no-browser", "--port", str(port), "--data-dir", str(data_dir),
                             "--model", "no/such-model"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", proc)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        deadline = time.monotonic() + 60
        while "loaded" not in client.predict(api_name="/page_load")[1] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "loaded (vision)" in client.predict(api_name="/page_load")[1]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert "Cannot load --model no/such-model" in stderr


def test_serving_beyond_this_machine_without_a_login_is_refused(tmp_path: Path, capsys):
    for argv in (["--share"], ["--host", "0.0.0.0"], ["--host", "192.168.1.5"]):
        with pytest.raises(SystemExit) as exited:
            parse_args([*argv, "--data-dir", str(tmp_path)])
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert "needs a login" in err and "--auth USER:PASS" in err and "--auth-file PATH" in err
    for host in ("localhost", "::1", "127.0.0.2"):
        assert parse_args(["--host", host, "--data-dir", str(tmp_path)]).owners == {}
    assert parse_args(["--share", "--auth", "ann:pw", "--data-dir", str(tmp_path)]).owners == {"ann": "pw"}
    done = subprocess.run([sys.executable, "app.py", "--host", "0.0.0.0", "--data-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--auth" in done.stderr and "Traceback" not in done.stderr


def test_login_files_must_be_private_and_give_owners_and_guests(tmp_path: Path, capsys):
    owners, guests = tmp_path / "owners", tmp_path / "guests"
    owners.write_text("ann:secret one\n# a comment\n\nbob:pass:with:colons\n")
    guests.write_text("gus:guest-pw\n")
    owners.chmod(0o644)
    guests.chmod(0o600)
    with pytest.raises(SystemExit):
        parse_args(["--auth-file", str(owners), "--data-dir", str(tmp_path)])
    assert "chmod 600" in capsys.readouterr().err
    owners.chmod(0o600)
    args = parse_args(["--auth-file", str(owners), "--guest-file", str(guests), "--guest", "gia:pw",
                       "--data-dir", str(tmp_path)])
    assert args.owners == {"ann": "secret one", "bob": "pass:with:colons"}
    assert args.guests == {"gus": "guest-pw", "gia": "pw"}


def test_guests_need_an_owner_and_a_name_is_one_role(tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--guest", "gus:pw", "--data-dir", str(tmp_path)])
    assert "guests need an owner" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--auth", "ann:pw", "--guest", "ann:other", "--data-dir", str(tmp_path)])
    assert "cannot be both owner and guest" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--auth", "ann:", "--data-dir", str(tmp_path)])
    assert "expects USER:PASS" in capsys.readouterr().err
    for flag in ("--guest", "--auth"):  # the name of the one user without logins, who owns what was made then
        with pytest.raises(SystemExit):
            parse_args(["--auth", "ann:pw", flag, "local:pw", "--data-dir", str(tmp_path)])
        assert "“local” is reserved" in capsys.readouterr().err


def test_sigterm_while_a_long_prompt_is_read_stops_the_app_promptly(tmp_path: Path, demo_model: Path,
                                                                    tiny_llama: Path):
    from gradio_client import Client

    from tests.conftest import seed_data_dir

    data_dir = seed_data_dir(tmp_path / "data", demo_model, tiny_llama)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "app.py", "--no-browser", "--port", str(port),
                             "--data-dir", str(data_dir)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", proc)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        client.predict(api_name="/page_load")
        # A fresh engine reads a new model's first prompt in chunks of 32 tokens: about 100 of them here.
        notes = " ".join(f"Note {i}: the bakery opens at {i % 12 + 1}." for i in range(200))
        job = client.submit({"text": notes, "files": []}, "", "", 0.0, 1.0, 0, 0.0, 1.0, -1, 16, True, api_name="/send")
        deadline = time.monotonic() + 120
        while not any(o[0] and o[0][-1]["content"][0]["text"].startswith("*Reading the prompt:") for o in job.outputs()):
            assert time.monotonic() < deadline and not job.done(), "no progress of the prompt read was shown"
            time.sleep(0.05)
        stopping = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        took = time.monotonic() - stopping
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "Traceback" not in stderr and "terminate called" not in stderr
    assert "Stopped reading the prompt" in (data_dir / "logs" / "mlx-gradio.log").read_text()  # cut mid-read
    assert took < 30, f"the app took {took:.0f} s to stop during a prompt read"


def test_the_page_opens_in_the_browser_only_where_someone_can_see_it(tmp_path: Path, demo_model: Path):
    from app import opens_browser
    from tests.conftest import seed_data_dir

    args = parse_args(["--data-dir", str(tmp_path / "d")])
    assert opens_browser(args, {"DISPLAY": ":0"}, "linux") and opens_browser(args, {}, "darwin")
    assert not opens_browser(args, {}, "linux")  # a headless server
    assert not opens_browser(args, {"DISPLAY": ":0", "SSH_CONNECTION": "10.0.0.2 5 10.0.0.1 22"}, "linux")
    for flags in (["--no-browser"], ["--share", "--auth", "a:b"], ["--host", "0.0.0.0", "--auth", "a:b"]):
        assert not opens_browser(parse_args([*flags, "--data-dir", str(tmp_path / "d")]), {}, "darwin")

    # The real app with a stand-in browser ($BROWSER, which Python's webbrowser runs) on a "screen".
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" >> {opened}\n')
    browser.chmod(0o755)
    env = {**os.environ, "DISPLAY": ":0", "BROWSER": f"{browser} %s"}
    env.pop("SSH_CONNECTION", None)
    env.pop("SSH_TTY", None)
    data_dir = seed_data_dir(tmp_path / "data", demo_model)
    for flags, expected in (([], True), (["--no-browser"], False)):
        port = free_port()
        proc = subprocess.Popen([sys.executable, "app.py", *flags, "--port", str(port), "--data-dir", str(data_dir)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_page(f"http://127.0.0.1:{port}/", proc)
            deadline = time.monotonic() + 30
            while expected and not opened.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            seen = opened.read_text() if opened.exists() else ""
            assert (f"127.0.0.1:{port}" in seen) == expected, seen
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
