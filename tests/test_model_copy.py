"""A model copied to the hosts that lack it with mlx-lm's own `mlx_lm.share` under the app's `mlx.launch`: three
network namespaces over real ssh, the second and third with a private, empty folder (a tmpfs of their own) where the
first one has the model. Planned first (refused for something half-copied in the way, or a disk without room), then
copied with its progress, checked file by file, and stopped on demand leaving nothing: no staging folder, no
half-written model, no process on any host."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlx_gradio.serving.distributed_plan import ring_hostfile
from mlx_gradio.serving.model_copy import COPIED, COPY_STOPPED, CopyStatus, ModelCopies, plan_copy
from mlx_gradio.testing.namespaces import Hosts, make_hosts

from .test_distributed_hosts import wait_nothing_left

BIG_BYTES = 2**30  # a model file that takes over a minute to send at SLOW_LINK
SLOW_LINK = "100mbit"  # the sender's link while the test watches a copy: it lasts however fast the machine is


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    """Three hosts; on the second and third, `<root>/models` is an empty folder of their own."""
    root = tmp_path_factory.mktemp("copy-hosts")
    models = root / "models"
    made = make_hosts(root, 3, private={1: [models], 2: [models]})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{made.bin_dir}{os.pathsep}{os.environ['PATH']}")
        yield made
    made.close()


@pytest.fixture
def copies(tmp_path: Path) -> Iterator[ModelCopies]:
    made = ModelCopies(tmp_path / "logs", tmp_path / "hub")
    yield made
    made.shutdown()


def entries(hosts: Hosts, *indexes: int) -> list[dict]:
    return ring_hostfile("\n".join(hosts.addresses[i] for i in indexes))


def wait_ended(copies: ModelCopies, profile_id: str, timeout: float = 300) -> CopyStatus:
    deadline = time.monotonic() + timeout
    while (status := copies.status(profile_id)).running:
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    return status


def digests(hosts: Hosts, index: int, folder: Path) -> dict[str, str]:
    """Each file's sha256 under `folder` as host `index` sees it, read over ssh."""
    done = hosts.ssh(hosts.addresses[index], f"cd {folder} && sha256sum $(find . -type f | sort)")
    assert done.returncode == 0, done.stderr
    return {name: digest for digest, name in (line.split() for line in done.stdout.splitlines())}


def test_a_model_is_copied_to_the_hosts_that_lack_it_and_checked_file_by_file(hosts: Hosts, tiny_llama: Path,
                                                                             copies: ModelCopies):
    model = hosts.root / "models" / "tiny"
    shutil.copytree(tiny_llama, model)
    a0, a1, a2 = hosts.addresses
    staging = f"{hosts.root / 'models'}/.mlx-gradio-copy-tiny"

    hosts.ssh(a1, f"mkdir -p {model} && echo half > {model}/model.safetensors")  # an earlier copy that stopped
    hosts.ssh(a2, f"mount -o remount,size=64k {hosts.root / 'models'}")  # a disk without room for it
    refused = plan_copy([a0, a1, a2], str(model))
    assert refused.source == a0 and refused.targets == (a1, a2)
    assert any(p.startswith(f"{a1} has something at {model} already") for p in refused.problems), refused.problems
    assert any(p.startswith(f"{a2} has ") and f"free where {model} would go" in p for p in refused.problems), \
        refused.problems
    hosts.ssh(a1, f"rm -r {model}")
    hosts.ssh(a2, f"mount -o remount,size=1g {hosts.root / 'models'}")

    plan = plan_copy([a0, a1, a2], str(model))
    assert plan.ok, plan.problems
    assert plan.total_bytes == sum(f.stat().st_size for f in model.iterdir())
    status = copies.start("p1", plan, entries(hosts, 0, 1, 2), set())
    assert status.running
    done = wait_ended(copies, "p1")
    assert done.state == COPIED, done.message
    assert done.fraction == 1.0 and f"{len(list(model.iterdir()))} files match {a0}'s" in done.message
    here = digests(hosts, 0, model)
    assert digests(hosts, 1, model) == here and digests(hosts, 2, model) == here
    for address in hosts.addresses:
        assert hosts.ssh(address, f"test -e {staging}").returncode == 1  # the staging folder is gone everywhere
    assert plan_copy([a0, a1, a2], str(model)).problems == ("Every host has the model already.",)
    wait_nothing_left(hosts)


def test_a_copy_shows_its_progress_and_stop_leaves_nothing_on_any_host(hosts: Hosts, tiny_llama: Path,
                                                                      copies: ModelCopies):
    model = hosts.root / "models" / "big"
    shutil.copytree(tiny_llama, model)
    with open(model / "padding.bin", "wb") as f:
        f.truncate(BIG_BYTES)  # sparse here; mlx_lm.share sends every byte of it
    a0, a1, _ = hosts.addresses
    listing = f"ls -A {hosts.root / 'models'}"
    before = hosts.ssh(a1, listing).stdout
    plan = plan_copy([a0, a1], str(model))
    assert plan.ok, plan.problems
    hosts.limit_rate(a0, SLOW_LINK)
    try:
        copies.start("p2", plan, entries(hosts, 0, 1), set())
        deadline = time.monotonic() + 300
        while (status := copies.status("p2")).landed.get(a1, 0) == 0:  # the bytes landed on a1, asked over ssh
            assert status.running and time.monotonic() < deadline, status
            time.sleep(0.2)
        assert 0 < status.fraction < 1
        stopped = copies.stop("p2")
    finally:
        hosts.limit_rate(a0, None)
    assert stopped.state == COPY_STOPPED, stopped.message
    assert hosts.ssh(a1, f"test -e {model}").returncode == 1  # nothing half-written where the model goes
    assert hosts.ssh(a1, listing).stdout == before  # nor in staging
    assert not (hosts.root / "models" / ".mlx-gradio-copy-big").exists()
    wait_nothing_left(hosts)
    assert (model / "padding.bin").stat().st_size == BIG_BYTES  # the sender's model is as it was


def test_from_the_servers_tab_the_plan_offers_the_copy_and_after_it_the_model_splits_and_fits(
        hosts: Hosts, tiny_llama: Path, start_app, browser_page):
    from mlx_gradio.store import Store

    model = hosts.root / "models" / "tiny-ui"
    shutil.copytree(tiny_llama, model)
    a0, a1, _ = hosts.addresses
    data = hosts.root / "data"
    store = Store(data)  # the owner's model is the one on the first host only
    store.settings.update_app(model=str(model), model_folders=[str(model)])
    store.close()
    app = start_app(data)
    page = browser_page
    page.goto(app.url)
    page.get_by_role("tab", name="Servers").click()
    page.wait_for_function("document.querySelector('#server-name input')?.value.includes('tiny-ui')", timeout=60_000)
    page.locator("#server-kind").get_by_label("distributed").check()
    page.locator("#server-hosts textarea").fill(f"{a0}\n{a1}")
    page.locator("#server-plan-check").click()
    page.wait_for_function("document.querySelector('#server-plan')?.innerText.includes('Cannot start')",
                           timeout=60_000)
    assert f"{a1} has no model at {model}: copy it there first" in page.locator("#server-plan").inner_text()
    page.locator("#server-copy").click()
    page.wait_for_function("document.querySelector('#server-copy-note')?.innerText.includes('Copied.')",
                           timeout=300_000)
    assert f"files match {a0}'s" in page.locator("#server-copy-note").inner_text()
    page.wait_for_function("document.querySelector('#server-plan')?.innerText.includes('splits and fits')",
                           timeout=60_000)  # the plan, asked again after the copy
    assert digests(hosts, 1, model) == digests(hosts, 0, model)
    assert not page.locator(".toast-body.error").count()
    wait_nothing_left(hosts)
