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
from mlx_gradio.serving.profiles import DISTRIBUTED, check_profile, command, new_profile
from mlx_gradio.serving.supervisor import FAILED, READY, STOPPED

from .test_servers import wait_state

PARIS = [{"role": "user", "content": "What is the capital of France?"}]
THREE = "127.0.0.1\n127.0.0.1\n127.0.0.1"


def ranks_of(pid: int) -> list[psutil.Process]:
    """The `mlx_lm.server` ranks `mlx.launch` (at `pid`) started."""
    return [p for p in psutil.Process(pid).children(recursive=True) if "mlx_lm.server" in " ".join(p.cmdline())]


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


def test_three_local_ranks_answer_as_one_process_does_and_stop_leaves_none(servers, demo_model: Path):
    from openai import OpenAI

    profile = check_profile(replace(new_profile("split", str(demo_model)), kind=DISTRIBUTED, hosts=THREE))
    assert command(profile)[1:5] == ["--backend", "ring", "--hosts", "127.0.0.1,127.0.0.1,127.0.0.1"]
    status = servers.start(profile)
    ready = wait_state(servers, profile.id, (READY, FAILED), timeout=300)
    assert ready.state == READY, servers.log_tail(profile.id)
    ranks = ranks_of(status.pid)
    assert len(ranks) == 3
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


def test_from_the_servers_tab_three_hosts_are_planned_started_chatted_with_and_stopped(start_app, browser_page):
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
    ask_through_the_server(page, "Paris", timeout_s=300)
    page.get_by_role("tab", name="Servers").click()
    page.locator("#server-stop").click()
    page.wait_for_function("document.querySelector('#servers-live')?.innerText.includes('stopped')", timeout=60_000)
    assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not page.locator(".toast-body.error").count()
