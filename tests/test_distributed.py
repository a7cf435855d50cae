"""The demo model served by three real `mlx.launch` ranks on this machine (hosts 127.0.0.1, which mlx.launch starts
without ssh), supervised like one server: refused before start when it cannot split, ready when rank 0 answers,
the same greedy words as one process, a killed rank named, Stop leaves no rank behind."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mlx_gradio.errors import ProfileInvalid
from mlx_gradio.serving.profiles import DISTRIBUTED, check_profile, new_profile
from mlx_gradio.serving.supervisor import FAILED, READY, STOPPED

from .test_servers import wait_state

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
THREE = "127.0.0.1\n127.0.0.1\n127.0.0.1"


def ranks_of(pid: int) -> list[psutil.Process]:
    """The `mlx_lm.server` ranks `mlx.launch` (at `pid`) started (not the shell that wraps each)."""
    return [p for p in psutil.Process(pid).children(recursive=True)
            if p.name() != "bash" and "mlx_lm.server" in " ".join(p.cmdline())]


def one_process_answer(model: Path) -> str:
    """The greedy answer of mlx-lm in this process, as one process serves it."""
    from mlx_lm import generate, load

    loaded, tokenizer = load(str(model))
    prompt = tokenizer.apply_chat_template(PARIS, add_generation_prompt=True)
    return generate(loaded, tokenizer, prompt, max_tokens=12)


def test_two_ranks_of_the_demo_model_are_refused_before_anything_starts(demo_model: Path):
    profile = replace(new_profile("split", str(demo_model)), kind=DISTRIBUTED, hosts="127.0.0.1\n127.0.0.1")
    with pytest.raises(ProfileInvalid, match=r"9 attention heads and 3 key-value heads.*\(3 would\)"):
        check_profile(profile)
    with pytest.raises(ProfileInvalid, match="has no pipeline support"):
        check_profile(replace(profile, hosts=THREE, split_mode="pipeline"))
    with pytest.raises(ProfileInvalid, match="no-such-host.invalid does not resolve"):
        check_profile(replace(profile, hosts="no-such-host.invalid\n10.0.0.2\n10.0.0.3", network_ok=True))
    with pytest.raises(ProfileInvalid, match="127.0.0.1 reaches only this machine"):
        check_profile(replace(profile, hosts="127.0.0.1\n10.0.0.2\n10.0.0.3"))


def test_three_local_ranks_answer_as_one_process_does_and_stop_leaves_none(servers, demo_model: Path):
    from openai import OpenAI

    profile = check_profile(replace(new_profile("split", str(demo_model)), kind=DISTRIBUTED, hosts=THREE))
    status = servers.start(profile)
    launched = psutil.Process(status.pid).cmdline()
    assert launched[2:4] == ["--backend", "ring"] and "--hostfile" in launched and "--starting-port" in launched
    ready = wait_state(servers, profile.id, (READY, FAILED), timeout=300)
    assert ready.state == READY, servers.log_tail(profile.id)
    ranks = ranks_of(status.pid)
    assert len(ranks) == 3
    launcher = psutil.Process(status.pid)
    spent = sum(launcher.cpu_times()[:2])
    time.sleep(2)  # idle: as MLX ships it, mlx.launch spins in select() and spends most of these 2 s of CPU
    spent = sum(launcher.cpu_times()[:2]) - spent
    assert spent < 0.4, f"the launcher spent {spent:.2f} s of CPU in 2 s with nothing to do"
    answer = OpenAI(base_url=profile.url, api_key="not-needed").chat.completions.create(
        model="default_model", messages=PARIS, max_tokens=12, temperature=0)
    assert "Paris" in answer.choices[0].message.content
    assert answer.choices[0].message.content == one_process_answer(demo_model)  # tensor parallel, same tokens
    servers.stop(profile.id)
    assert servers.get(profile.id).state == STOPPED
    assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not psutil.pid_exists(status.pid) or psutil.Process(status.pid).status() == psutil.STATUS_ZOMBIE


def test_a_killed_rank_fails_the_server_naming_it_and_the_others_go(servers, demo_model: Path):
    profile = check_profile(replace(new_profile("split", str(demo_model)), kind=DISTRIBUTED, hosts=THREE))
    status = servers.start(profile)
    assert wait_state(servers, profile.id, (READY, FAILED), timeout=300).state == READY, servers.log_tail(profile.id)
    ranks = sorted(ranks_of(status.pid), key=lambda p: p.create_time())
    victim = next(p for p in ranks if p.environ().get("MLX_RANK") == "1")
    os.kill(victim.pid, signal.SIGKILL)
    failed = wait_state(servers, profile.id, (FAILED,), timeout=60)
    assert failed.message.startswith("Rank 1 on 127.0.0.1 was killed by SIGKILL"), failed.message
    deadline = time.monotonic() + 30
    while [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]:
        assert time.monotonic() < deadline, "a rank outlived the one that died"
        time.sleep(0.1)


def test_a_stopped_rank_is_named_not_answering_and_the_job_started_again(tmp_path: Path, demo_model: Path):
    """SIGSTOP makes a rank alive and silent, as a wedged peer is: rank 0 waits on it forever."""
    from mlx_gradio.serving.supervisor import Servers
    from mlx_gradio.store import Store

    watched = Servers(tmp_path / "logs", tmp_path / "hf", Store(tmp_path / "data").running_servers,
                      ready_timeout=300, probe_every=2.0, probe_timeout=20.0)
    try:
        profile = check_profile(replace(new_profile("split", str(demo_model)), kind=DISTRIBUTED, hosts=THREE,
                                        restart_when_stuck=True))
        first = watched.start(profile)
        assert wait_state(watched, profile.id, (READY, FAILED), timeout=300).state == READY
        ranks = ranks_of(first.pid)
        victim = next(p for p in ranks if p.environ().get("MLX_RANK") == "2")
        os.kill(victim.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 300
        while (status := watched.get(profile.id)).pid == first.pid or status.state not in (READY, FAILED):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status.state == READY, status
        assert status.message.startswith("Started again: Rank 2 on 127.0.0.1 not answering (its process is "
                                         "stopped)"), status.message
        assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]  # the old job
        assert len(ranks_of(status.pid)) == 3
    finally:
        watched.shutdown()


def test_from_the_servers_tab_three_hosts_are_planned_started_chatted_with_and_stopped(start_app, browser_page):
    from .test_api import PARIS, api_on, client_for
    from .test_browser import ARTIFACTS, ask_through_the_server, short_replies

    app = start_app(demo=True)
    short_replies(app)
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Servers").click()
    page.wait_for_function("document.querySelector('#server-name input')?.value.includes('SmolLM2')", timeout=60_000)
    page.locator("#server-kind").get_by_label("distributed").check()
    hosts = page.locator("#server-hosts textarea")
    hosts.fill("127.0.0.1\n127.0.0.1")
    page.locator("#server-plan-check").click()
    page.wait_for_function("document.querySelector('#server-plan')?.innerText.includes('Cannot split')",
                           timeout=60_000)
    assert "9 attention heads" in page.locator("#server-plan").inner_text()
    hosts.fill(THREE)
    page.locator("#server-plan-check").click()
    page.wait_for_function("document.querySelector('#server-plan')?.innerText.includes('splits and fits')",
                           timeout=60_000)
    shown = page.locator("#server-plan").inner_text()
    assert "rank 2 on 127.0.0.1" in shown and "this machine" in shown and "mlx-lm" in shown
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "distributed.png"), full_page=True)
    page.locator("#server-start").click()
    page.wait_for_function("document.querySelector('#servers-live')?.innerText.includes('● ready')", timeout=300_000)
    [status] = app.controller.servers.servers.list()
    ranks = ranks_of(status.pid)
    assert len(ranks) == 3
    # Each rank's own row: its host, its pid (the one running there), its state, CPU, memory and last lines.
    page.wait_for_function("document.querySelectorAll('#servers-live .server-ranks tbody tr').length === 3 && "
                           "[...document.querySelectorAll('#servers-live .server-ranks tbody tr')]"
                           ".every(r => r.cells[2].innerText.trim())", timeout=60_000)
    rows = page.locator("#servers-live .server-ranks tbody tr")
    assert {int(rows.nth(i).locator("td").nth(2).inner_text()) for i in range(3)} == {p.pid for p in ranks}
    assert rows.nth(1).locator("td").nth(1).inner_text() == "127.0.0.1"
    page.screenshot(path=str(ARTIFACTS / "distributed-ranks.png"), full_page=True)
    ask_through_the_server(page, "Paris", timeout_s=300)
    # Other programs reach it through the app's own API, as a model of the app.
    client = client_for(api_on(app.controller))
    key = f"server:{status.profile_id}"
    assert key in {m.id for m in client.models.list().data}
    reply = client.chat.completions.create(model=key, messages=PARIS, temperature=0, max_tokens=8)
    assert "Paris" in reply.choices[0].message.content
    page.get_by_role("tab", name="Servers").click()
    page.locator("#server-stop").click()
    page.wait_for_function("document.querySelector('#servers-live')?.innerText.includes('stopped')", timeout=60_000)
    assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not page.locator(".toast-body.error").count()
    # Copying the model: every host here is this machine, which has it, so nothing is copied, and the toast says so.
    page.locator("#server-copy").click()
    page.wait_for_function("[...document.querySelectorAll('.toast-body.error')]"
                           ".some(t => t.innerText.includes('Every host has the model already.'))", timeout=60_000)
