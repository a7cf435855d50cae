"""Real mlx-lm servers on 127.0.0.1, started, probed, crashed, stopped and adopted by the supervisor.

The answer through a server is checked on the demo model; the rest serve the tiny llama. What
is kept across app runs is kept in the real settings store.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import psutil
import pytest

from mlx_gradio.errors import ProfileInvalid
from mlx_gradio.serving.profiles import ServerProfile, check_profile, command, extra_args, new_profile, port_holder
from mlx_gradio.serving.supervisor import FAILED, READY, STOPPED, Servers
from mlx_gradio.store import Store


def wait_state(servers: Servers, profile_id: str, states: tuple[str, ...], timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = servers.get(profile_id)
        if status.state in states:
            return status
        time.sleep(0.1)
    raise AssertionError(f"still {servers.get(profile_id)} after {timeout} s; log:\n{servers.log_tail(profile_id)}")


def cross_origin_headers(base_url: str, origin: str) -> dict[str, str]:
    """The headers of a server's answer to a web page at `origin` asking for its models (as a browser would)."""
    import urllib.request

    request = urllib.request.Request(f"{base_url}/models", headers={"Origin": origin})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return {k.lower(): v for k, v in answer.headers.items()}


def test_a_text_server_answers_paris_streamed_through_openai_and_stops(servers, demo_model):
    from openai import OpenAI

    profile = check_profile(new_profile("demo", str(demo_model)))
    assert profile.kind == "text" and profile.port >= 8080
    status = servers.start(profile)
    assert status.state == "starting" and status.deadline > time.time()
    ready = wait_state(servers, profile.id, (READY, FAILED))
    assert ready.state == READY, servers.log_tail(profile.id)
    client = OpenAI(base_url=profile.url, api_key="not-needed")
    stream = client.chat.completions.create(model="default_model", stream=True, max_tokens=12, temperature=0,
                                            messages=[{"role": "user", "content": "What is the capital of France?"}])
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1 and "Paris" in "".join(pieces)
    usage = servers.usage(profile.id)
    assert usage.rss_bytes > 50_000_000  # the model's weights live in the server's processes
    # No other web page in the owner's browser may call it (mlx-lm's own default would allow any).
    assert "access-control-allow-origin" not in cross_origin_headers(profile.url, "http://evil.example")
    assert "$ " in servers.log_tail(profile.id) and "--host 127.0.0.1" in servers.log_tail(profile.id)
    pid = ready.pid
    stopped = servers.stop(profile.id)
    assert stopped.state == STOPPED and not psutil.pid_exists(pid)
    assert port_holder("127.0.0.1", profile.port) is None  # the port is free again


def test_a_killed_server_is_failed_within_two_seconds_with_its_log(servers, tiny_llama):
    profile = check_profile(new_profile("tiny", str(tiny_llama)))
    servers.start(profile)
    deadline = time.monotonic() + 120
    while len(servers.log_tail(profile.id).splitlines()) < 2:  # the server itself has written to its log
        assert time.monotonic() < deadline, servers.log_tail(profile.id)
        time.sleep(0.05)
    killed_at = time.monotonic()
    os.kill(servers.get(profile.id).pid, signal.SIGKILL)
    failed = wait_state(servers, profile.id, (FAILED,), timeout=10)
    assert time.monotonic() - killed_at < 2.0
    assert failed.exit_code == -signal.SIGKILL and "signal 9" in failed.message
    log = servers.log_tail(profile.id)  # the log of the dead server is kept for the tab to show
    assert log.startswith("$ ") and "mlx_lm" in log.splitlines()[0] and len(log.splitlines()) >= 2
    assert servers.records.all() == []


def test_a_bad_model_fails_with_the_servers_own_error(servers, tmp_path):
    import mlx.core as mx

    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    mx.save_safetensors(str(broken / "model.safetensors"), {"w": mx.zeros((2, 2))})
    profile = check_profile(new_profile("broken", str(broken)))
    servers.start(profile)
    # mlx-lm's server keeps running with a model it could not load: the probe's error answer tells.
    failed = wait_state(servers, profile.id, (FAILED,), timeout=120)
    assert "answers with an error" in failed.message
    assert "no-such-architecture" in servers.log_tail(profile.id)  # the server's own error, shown
    assert not psutil.pid_exists(failed.pid) and servers.records.all() == []


def test_a_port_in_use_is_refused_before_anything_starts(tiny_llama):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ProfileInvalid, match=f"Port {port} on 127.0.0.1 is not free: python"):
            check_profile(new_profile("tiny", str(tiny_llama), port=port))
    with pytest.raises(ProfileInvalid, match="out of range"):
        check_profile(new_profile("tiny", str(tiny_llama), port=80))


def test_profiles_are_checked_before_anything_starts(tiny_llama, tiny_vlm):
    text = new_profile("tiny", str(tiny_llama))
    assert new_profile("vlm", str(tiny_vlm)).kind == "vision"
    with pytest.raises(ProfileInvalid, match="has no API key"):
        check_profile(ServerProfile(**{**text.record(), "api_key": "secret"}))
    with pytest.raises(ProfileInvalid, match="anyone on the network"):
        check_profile(ServerProfile(**{**text.record(), "host": "0.0.0.0"}))
    with pytest.raises(ProfileInvalid, match="set an API key"):
        check_profile(ServerProfile(**{**new_profile("vlm", str(tiny_vlm)).record(), "host": "0.0.0.0"}))
    with pytest.raises(ProfileInvalid, match="--port is set by the profile's Port field"):
        extra_args("--kv-bits 8 --port=9000")
    with pytest.raises(ProfileInvalid, match="cannot be read"):
        extra_args("--chat-template 'unclosed")
    with pytest.raises(Exception, match="no model folder"):
        check_profile(ServerProfile(**{**text.record(), "model": "/nowhere"}))
    vision = ServerProfile(**{**new_profile("vlm", str(tiny_vlm)).record(), "api_key": "k3y"})
    assert "k3y" not in " ".join(command(vision)) and "--host" in command(vision)  # the key goes by environment
    assert command(text)[1:4] == ["-m", "mlx_lm", "server"] and "--max-tokens" in command(text)


def test_an_app_run_that_died_leaves_a_server_the_next_run_adopts(tmp_path, tiny_llama):
    first_store = Store(tmp_path / "data")
    first = Servers(tmp_path / "logs", tmp_path / "hf", first_store.running_servers, ready_timeout=240)
    profile = check_profile(new_profile("tiny", str(tiny_llama)))
    first.start(profile)
    wait_state(first, profile.id, (READY,))
    pid = first.get(profile.id).pid
    # The app dies without stopping anything: its records stay on disk, the server keeps running.
    first._closed.set()
    store = Store(tmp_path / "data")  # the next run reads them from the settings file
    second = Servers(tmp_path / "logs", tmp_path / "hf", store.running_servers, ready_timeout=240)
    try:
        [adopted] = second.adopt({profile.id: profile})
        assert adopted.adopted and adopted.pid == pid
        assert wait_state(second, profile.id, (READY,)).state == READY
        store.running_servers.save({**store.running_servers.all()[0], "profile_id": "gone", "pid": 999_999_999})
        second.adopt({profile.id: profile, "gone": profile})
        assert [r["profile_id"] for r in Store(tmp_path / "data").running_servers.all()] == [profile.id]  # stale: gone
        second.stop(profile.id)
        assert not psutil.pid_exists(pid)
    finally:
        second.shutdown()
    assert Store(tmp_path / "data").running_servers.all() == []


def test_the_servers_tab_one_click_path_and_the_apps_exit_stops_its_servers(start_app):
    import gradio as gr

    from mlx_gradio.controller.access import Access

    app = start_app(access=Access(owners={"ann": "pw"}, guests={"gus": "pw"}))
    ann, gus = gr.Request(username="ann", session_hash="a"), gr.Request(username="gus", session_hash="g")
    part = app.controller.servers
    models, settings = app.controller.models, app.controller.settings
    for call in (lambda: part.draft(gus), lambda: part.profiles(gus), lambda: part.start("x", gus),
                 lambda: part.watch(gus), lambda: part.log_tail("x", gus), lambda: models.engine_status(gus),
                 lambda: models.load_selected(gus), lambda: models.unload(gus),
                 lambda: settings.save_idle_unload(5, gus), lambda: part.copy_model("x", gus),
                 lambda: part.copy_status("x", gus), lambda: part.stop_copy("x", gus)):
        with pytest.raises(gr.Error, match="Only the owner"):
            call()
    draft = part.draft(ann)  # the chat's model, a free port: Start is one click away
    assert draft.model == app.controller.models.selected(app.controller.access.caller(ann)) and draft.port >= 8080
    profile = part.save({**draft.record(), "name": "tiny server"}, ann)
    assert [p.name for p in part.profiles(ann)] == ["tiny server"]
    with pytest.raises(gr.Error, match="Only a distributed profile has other hosts"):
        part.copy_model(profile.id, ann)
    with pytest.raises(gr.Error, match="Pick the server's model"):
        part.save({**draft.record(), "model": "/etc"}, ann)
    part.start(profile.id, ann)
    status = wait_state(part.servers, profile.id, (READY, FAILED))
    assert status.state == READY, part.log_tail(profile.id, ann)
    [(watched, usage)] = part.watch(ann)
    assert watched.url == f"http://127.0.0.1:{profile.port}/v1" and usage.rss_bytes > 0
    with pytest.raises(gr.Error, match="running; stop it first"):
        part.delete(profile.id, ann)
    restarted = part.restart(profile.id, ann)  # a new process, ready again
    assert restarted.pid != status.pid and not psutil.pid_exists(status.pid)
    status = wait_state(part.servers, profile.id, (READY, FAILED))
    assert status.state == READY
    copy = part.duplicate(profile.id, ann)
    assert copy.port != profile.port and copy.model == profile.model and copy.name == "tiny server (copy)"
    family = [psutil.Process(status.pid), *psutil.Process(status.pid).children(recursive=True)]
    app.close()  # the app quits: its servers go with it
    gone, alive = psutil.wait_procs(family, timeout=15)
    assert not alive and port_holder("127.0.0.1", profile.port) is None


def test_a_vision_server_reads_an_image(servers, tiny_vlm, images):
    import base64

    from openai import OpenAI

    from mlx_gradio.serving.profiles import ServerProfile

    profile = check_profile(ServerProfile(**{**new_profile("vlm", str(tiny_vlm)).record(), "api_key": "s3cret"}))
    assert profile.kind == "vision"
    servers.start(profile)
    status = wait_state(servers, profile.id, (READY, FAILED))
    assert status.state == READY, servers.log_tail(profile.id)
    image = f"data:image/png;base64,{base64.b64encode(images['red'].read_bytes()).decode()}"
    text = {"type": "text", "text": "What color is this?"}
    message = {"role": "user", "content": [text, {"type": "image_url", "image_url": {"url": image}}]}
    with pytest.raises(Exception, match="401|Unauthorized|API key"):
        OpenAI(base_url=profile.url, api_key="wrong").chat.completions.create(
            model=profile.model, max_tokens=4, messages=[message])
    client = OpenAI(base_url=profile.url, api_key="s3cret")
    with_image = client.chat.completions.create(model=profile.model, max_tokens=4, messages=[message])
    text_only = client.chat.completions.create(model=profile.model, max_tokens=4,
                                               messages=[{"role": "user", "content": [text]}])
    # The image's tokens were read (random weights: the words themselves are noise).
    assert with_image.usage.prompt_tokens > text_only.usage.prompt_tokens + 4
    assert "s3cret" not in " ".join(psutil.Process(status.pid).cmdline())


def test_the_chat_answers_through_a_server_and_through_a_plain_openai_url(start_app, tiny_llama, images):
    import gradio as gr

    from mlx_gradio.chats import chat
    from mlx_gradio.ui import render
    from tests.test_app import GREEDY

    app = start_app()
    local = gr.Request(session_hash="chat-through")
    part, models, replies = app.controller.servers, app.controller.models, app.controller.replies
    profile = part.save({**part.draft(local).record(), "name": "tiny server"}, local)
    part.start(profile.id, local)
    assert wait_state(part.servers, profile.id, (READY, FAILED)).state == READY
    endpoint = part.add_endpoint("plain URL", profile.url, "", "default_model", False, local)
    with pytest.raises(gr.Error, match="http://"):
        part.add_endpoint("bad", "file:///etc/passwd", "", "m", False, local)
    on_disk = {e.path for e in app.controller.library.list(local)}
    assert str(tiny_llama) in on_disk and not {f"server:{profile.id}", f"endpoint:{endpoint['id']}"} & on_disk
    offered = {m.path: m for m in models.available()}
    assert f"server:{profile.id}" in offered and "server of this app" in offered[f"server:{profile.id}"].label
    for key in (f"server:{profile.id}", f"endpoint:{endpoint['id']}"):
        status = models.select(key, local)
        assert status.state == "ready" and profile.url in status.message  # nothing loads in the engine
        views = list(replies.send("", {"text": "What is the capital of France?"}, key, *GREEDY, request=local))
        conversation = views[-1].conversation
        reply = chat.current_version(conversation["messages"][-1])
        assert reply["content"].strip() and reply["stats"]["generation_tokens"] == GREEDY[-2], reply
        assert reply["stats"]["time_to_first_token"] > 0 and reply["stats"]["generation_tps"] > 0
        assert len(views) > 3  # it streamed
        assert render.stats_line(conversation).startswith(
            f'<span class="reply-stats">{models.name_of(key)} · ')  # the stats line names the server
    # Stop ends a reply through the server after the current chunk; what came stays.
    sending = replies.send("", {"text": "Write a long story about a dragon."}, f"server:{profile.id}",
                           *GREEDY[:-2], 8000, True, request=local)  # far more than it writes before Stop lands
    views = []
    for view in sending:
        views.append(view)
        message = view.conversation["messages"][-1] if view.conversation else {}
        if message.get("role") == "assistant" and len(chat.current_version(message)["content"]) > 20:
            replies.stop(view.conversation_id, local)
    stopped = chat.current_version(views[-1].conversation["messages"][-1])
    assert 20 < len(stopped["content"]) and stopped["stats"]["finish_reason"] == "stopped"
    assert stopped["stats"]["generation_tokens"] < 8000
    with pytest.raises(gr.Error, match="reads text only"):
        list(replies.send("", {"text": "What is this?", "files": [str(images["red"])]}, f"server:{profile.id}",
                          *GREEDY, request=local))
    part.stop(profile.id, local)
    with pytest.raises(gr.Error, match="not running"):
        list(replies.send("", {"text": "Hello?"}, f"server:{profile.id}", *GREEDY, request=local))
    with pytest.raises(gr.Error, match="plain URL .* cannot be reached"):
        list(replies.send("", {"text": "Hello?"}, f"endpoint:{endpoint['id']}", *GREEDY, request=local))
    app.store.settings.update_user("local", model=f"server:{profile.id}")
    assert models.status(local).state == "error"  # the status line says the server is gone
    assert app.controller.page_load(local).model == f"server:{profile.id}"  # and the page still loads


def test_stop_ends_a_reply_whose_server_has_not_answered_yet(make_controller):
    """A server that takes the request and sends nothing (a long prompt read on a CPU, a stalled endpoint):
    Stop ends the reply at once and frees the conversation, instead of the 600 s read timeout."""
    import threading

    import gradio as gr

    from tests.test_app import GREEDY

    asked = threading.Event()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        held = []

        def take_requests() -> None:
            while True:
                try:
                    connection, _ = silent.accept()
                except OSError:  # the test is over and closed the socket
                    return
                held.append(connection)
                connection.recv(65536)
                asked.set()  # and never answer

        threading.Thread(target=take_requests, daemon=True).start()
        controller = make_controller()
        local = gr.Request(session_hash="stalled")
        endpoint = controller.servers.add_endpoint("Silent box", f"http://127.0.0.1:{port}/v1", "", "m", False, local)
        key = f"endpoint:{endpoint['id']}"

        def send_and_stop(conversation_id: str, text: str) -> list:
            """Send, wait until the server has the request, press Stop; the views once the reply has ended."""
            views, done = [], threading.Event()

            def send() -> None:
                views.extend(controller.replies.send(conversation_id, {"text": text}, key, *GREEDY, request=local))
                done.set()

            asked.clear()
            threading.Thread(target=send, daemon=True).start()
            assert asked.wait(30), "the request never reached the server"
            shown = next(v.conversation_id for v in views if v.conversation_id)
            assert controller.is_streaming(shown)
            controller.replies.stop(shown, local)
            assert done.wait(30), "Stop did not end the reply"
            assert not controller.is_streaming(shown)
            return views

        views = send_and_stop("", "Hello?")
        note = views[-1].conversation["messages"][-1]
        assert note["role"] == "user" and note["error"] == "stopped before the reply began."
        again = send_and_stop(views[-1].conversation_id, "Still there?")  # the conversation is free at once
        assert [m["content"] for m in again[-1].conversation["messages"]] == ["Hello?", "Still there?"]
        for connection in held:
            connection.close()


def test_an_image_reaches_a_vision_server_from_the_chat(start_app, tiny_vlm, images):
    import gradio as gr

    from tests.test_app import send

    app = start_app()
    local = gr.Request(session_hash="vision-through")
    part = app.controller.servers
    app.store.settings.update_app(model_folders=[str(tiny_vlm)])  # the owner added the folder
    draft = new_profile("tiny vlm", str(tiny_vlm))
    profile = part.save({**draft.record(), "api_key": "k3y", "max_tokens": 4}, local)
    part.start(profile.id, local)
    assert wait_state(part.servers, profile.id, (READY, FAILED)).state == READY, part.log_tail(profile.id, local)
    from mlx_gradio.chats import chat

    def prompt_tokens(files) -> int:
        assert send(app.client(), "What color is this?", f"server:{profile.id}", files=files)
        summaries, _ = app.store.conversations.list("local")
        stored = app.store.conversations.get(summaries[0].id)
        assert bool(stored["messages"][-2]["images"]) == bool(files)
        return chat.current_version(stored["messages"][-1])["stats"]["prompt_tokens"]

    # The image's tokens were read by the server (random weights: the words themselves are noise).
    assert prompt_tokens([images["red"]]) > prompt_tokens([]) + 4


@pytest.mark.parametrize(("extra", "reason"), [
    ("--ho 0.0.0.0", "--ho would be read as --host, which the profile's Host field sets"),
    ("--kv-bits 8 --h=0.0.0.0", "--h would be read as --host"),
    ("--mod /elsewhere", "--mod would be read as --model"),
    ("--po 80", "--po would be read as --port"),
    ("--allowed-origins *", "--allowed-origins is set by the profile's Web pages allowed field"),
    ("--allow *", "--allow would be read as --allowed-origins"),
    ("--te 2", "--te would be read as --temp"),
    ("--api 1", "--api would be read as --api-key"),
])
def test_extra_arguments_cannot_override_what_the_profile_sets(tiny_llama, extra, reason):
    """argparse takes any unambiguous prefix of a flag, and the last value given wins."""
    profile = ServerProfile(**{**new_profile("tiny", str(tiny_llama)).record(), "extra_args": extra})
    with pytest.raises(ProfileInvalid, match=reason.replace("*", r"\*")):
        check_profile(profile)


def test_the_profiles_own_flags_come_last_and_web_pages_are_allowed_only_when_listed(tiny_llama):
    profile = ServerProfile(**{**new_profile("tiny", str(tiny_llama), port=8123).record(),
                               "extra_args": "--kv-bits 8 --min-p 0.1"})
    line = command(check_profile(profile))
    assert line.index("--kv-bits") < line.index("--host") and line.index("--min-p") < line.index("--port")
    assert line[line.index("--allowed-origins") + 1] == "http://127.0.0.1:8123"  # its own origin: no other page
    listed = ServerProfile(**{**profile.record(), "allowed_origins": "http://localhost:3000, https://app.example/"})
    line = command(check_profile(listed))
    assert line[line.index("--allowed-origins") + 1] == "http://localhost:3000,https://app.example"
    assert command(ServerProfile(**{**profile.record(), "allowed_origins": "*"}))[-1] == "*"  # the owner asked
    with pytest.raises(ProfileInvalid, match="is not a web origin"):
        check_profile(ServerProfile(**{**profile.record(), "allowed_origins": "evil.example/path"}))


def test_a_server_that_runs_but_no_longer_answers_is_shown_so_and_restarted_if_asked(tmp_path, tiny_llama):
    """SIGSTOP makes a real server that is alive and silent (as mlx-lm's can wedge after a prefill)."""
    from mlx_gradio.serving.supervisor import NOT_ANSWERING

    watched = Servers(tmp_path / "logs", tmp_path / "hf", Store(tmp_path / "data").running_servers,
                      ready_timeout=240, probe_every=1.0, probe_timeout=3.0)
    try:
        profile = check_profile(new_profile("tiny", str(tiny_llama)))
        watched.start(profile)
        ready = wait_state(watched, profile.id, (READY, FAILED))
        assert ready.state == READY
        server = watched._servers[profile.id]
        # The app's own request streaming through it counts as a sign of life: no probe meanwhile.
        with watched.using(profile.id) as answered:
            before = server.probes
            for _ in range(30):
                answered()
                time.sleep(0.1)
            assert server.probes == before
        os.kill(ready.pid, signal.SIGSTOP)
        stuck = wait_state(watched, profile.id, (NOT_ANSWERING, FAILED), timeout=60)
        assert stuck.state == NOT_ANSWERING and "no answer within 3 s" in stuck.message
        assert stuck.pid == ready.pid and psutil.Process(ready.pid).status() == psutil.STATUS_STOPPED
        os.kill(ready.pid, signal.SIGCONT)
        again = wait_state(watched, profile.id, (READY, FAILED), timeout=60)
        assert again.state == READY and again.pid == ready.pid  # the same process, answering again
        watched.stop(profile.id)
        # With "restart it when it stops answering": a new process takes its place.
        restarting = ServerProfile(**{**profile.record(), "restart_when_stuck": True})
        first = watched.start(restarting)
        assert wait_state(watched, profile.id, (READY, FAILED)).state == READY
        os.kill(first.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = watched.get(profile.id)
            if status.pid != first.pid and status.state in (READY, FAILED):
                break
            time.sleep(0.2)
        assert status.pid != first.pid and status.state == READY, status
        assert not psutil.pid_exists(first.pid) or psutil.Process(first.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        watched.shutdown()
