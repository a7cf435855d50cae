"""The demo model served across three machines over real ssh: network namespaces made here, each with its own
sshd (Debian's openssh-server), the app's real `mlx.launch` reaching them through an ssh config of this test's. The
namespaces share this machine's files, so the venv and the model are at the same paths on each, as on machines set
up alike. A fourth host runs another mlx (its sshd puts a package record of mlx 0.0.1 first on its Python's path),
and the plan refuses it. Without root or sshd these tests fail, saying what is missing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from mlx_gradio.errors import ProfileInvalid
from mlx_gradio.serving.profiles import DISTRIBUTED, check_profile, new_profile, split_report
from mlx_gradio.serving.supervisor import FAILED, READY, STOPPED
from mlx_gradio.testing.namespaces import Hosts, make_hosts

from .test_distributed import PARIS, one_process_answer
from .test_servers import wait_state


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """Four hosts; the last one's Python finds mlx 0.0.1 first. The app's `ssh` reads this test's config."""
    root = tmp_path_factory.mktemp("hosts")
    odd = root / "old-mlx"
    (odd / "mlx-0.0.1.dist-info").mkdir(parents=True)
    (odd / "mlx-0.0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: mlx\nVersion: 0.0.1\n")
    made = make_hosts(root, 4, env={3: {"PYTHONPATH": str(odd)}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{made.bin_dir}{os.pathsep}{os.environ['PATH']}")
        yield made
    made.close()


def profile_over(hosts: Hosts, demo_model: Path, *indexes: int):
    addresses = [hosts.addresses[i] for i in indexes]
    return replace(new_profile("across", str(demo_model)), kind=DISTRIBUTED, hosts="\n".join(addresses),
                   network_ok=True)


def rank_process(hosts: Hosts, index: int, rank: int) -> psutil.Process:
    """The `mlx_lm.server` of `rank` in host `index`'s namespace (not the shell that wraps it)."""
    for pid in hosts.hosts[index].pids():
        try:
            process = psutil.Process(pid)
            if process.name() != "bash" and process.environ().get("MLX_RANK") == str(rank):
                return process
        except psutil.Error:
            continue
    raise AssertionError(f"no rank {rank} in {hosts.hosts[index].namespace}")


def wait_nothing_left(hosts: Hosts, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while left := hosts.leftovers():
        assert time.monotonic() < deadline, f"still running: {left}"
        time.sleep(0.2)


def no_local_ssh() -> list[str]:
    return [" ".join(p.cmdline()) for p in psutil.process_iter() if p.name() == "ssh"
            and p.status() != psutil.STATUS_ZOMBIE]


def test_a_host_with_another_mlx_is_refused_by_the_plan(hosts: Hosts, demo_model: Path):
    profile = profile_over(hosts, demo_model, 0, 1, 3)
    with pytest.raises(ProfileInvalid, match=rf"{hosts.addresses[3]} runs mlx 0\.0\.1 \(here 0\.\d+"):
        check_profile(profile)
    _, facts, problems = split_report(profile)
    assert [f.mlx for f in facts] != [facts[0].mlx] * 3 and len(problems) == 1
    assert all(f.has_model and not f.problem for f in facts)  # every host was reached over ssh and has the model


def test_three_hosts_over_ssh_answer_and_stop_leaves_nothing_on_any(hosts: Hosts, servers, demo_model: Path):
    from openai import OpenAI

    profile = check_profile(profile_over(hosts, demo_model, 0, 1, 2))
    assert profile.host == hosts.addresses[0] and profile.url.startswith(f"http://{hosts.addresses[0]}:")
    servers.start(profile)
    ready = wait_state(servers, profile.id, (READY, FAILED), timeout=300)
    assert ready.state == READY, servers.log_tail(profile.id)
    assert all(rank_process(hosts, i, i) for i in range(3))  # each rank in its own namespace
    answer = OpenAI(base_url=profile.url, api_key="not-needed").chat.completions.create(
        model="default_model", messages=PARIS, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == one_process_answer(demo_model)
    deadline = time.monotonic() + 30
    while not (ranks := servers.ranks(profile.id)) or not all(r.pid for r in ranks):
        assert time.monotonic() < deadline, ranks
        time.sleep(0.5)
    assert [(r.rank, r.host) for r in ranks] == list(enumerate(hosts.addresses[:3]))
    assert all(r.rss_bytes > 50_000_000 and r.state[:1] in "RS" for r in ranks)
    assert "Prompt processing" in ranks[0].log_tail and all(r.log_tail for r in ranks)  # each rank's own lines
    servers.stop(profile.id)
    assert servers.get(profile.id).state == STOPPED
    wait_nothing_left(hosts, timeout=15)
    assert not no_local_ssh()


def test_a_rank_killed_on_its_host_is_named_and_every_other_goes(hosts: Hosts, servers, demo_model: Path):
    profile = check_profile(profile_over(hosts, demo_model, 0, 1, 2))
    servers.start(profile)
    ready = wait_state(servers, profile.id, (READY, FAILED), timeout=300)
    assert ready.state == READY, servers.log_tail(profile.id)
    victim = rank_process(hosts, 1, 1)
    os.kill(victim.pid, signal.SIGKILL)
    failed = wait_state(servers, profile.id, (FAILED,), timeout=30)
    assert failed.message.startswith(f"Rank 1 on {hosts.addresses[1]} was killed by SIGKILL"), failed.message
    wait_nothing_left(hosts)
    assert not no_local_ssh()
