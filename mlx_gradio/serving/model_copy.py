"""A model copied to the hosts of a distributed profile that lack it, by mlx-lm's own `mlx_lm.share` under
`mlx.launch`: one rank on a host that has the model (rank 0, which sends) and one on each host that lacks it.

Planned, shown, then done. The hosts are asked first: reached, running this machine's versions, nothing at the
path yet (mlx_lm.share's last step renames its copy into place), and room on their disk. While the ranks copy, the
bytes landed on each receiving host are its progress. When they end, each receiving host's files are checked
against the sender's, by name and size: `mlx.launch` itself exits 0 whatever its ranks did. A receiving host writes
into a staging folder beside the destination (one file system, so that rename works), removed on every host when
the copy ends, however it ends. A model in a Hugging Face cache travels as its whole repository folder (blobs, refs
and snapshots): a snapshot holds only links into the blobs.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import CopyRefused, ServerStartFailed
from ..models.fit import gb
from .distributed_hosts import ask, ask_all, ask_hosts, this_machine, versions_differ
from .distributed_ranks import dead_rank, launch_command, rank_command, rank_tails, stop_ranks
from .profiles import ring_ports

log = logging.getLogger(__name__)

COPYING, COPIED, COPY_FAILED, COPY_STOPPED = "copying", "copied", "failed", "stopped"
COPY_RING_PORT = 33323  # copies' rings start here, clear of the servers' (from 32323, one port per rank)
LANDED_EVERY_S = 2.0  # the receiving hosts are asked for their bytes at most this often
STOP_TIMEOUT_S = 30.0
# Run with the venv's Python on a receiving host: whether something is at the destination already, and the room on
# the disk it would go to.
LOOK = """
import json, os, shutil, sys
root = above = sys.argv[1]
while not os.path.exists(above):
    above = os.path.dirname(above)
taken = os.path.isfile(root) or (os.path.isdir(root) and bool(os.listdir(root)))
print(json.dumps({"taken": taken, "free": shutil.disk_usage(above).free}))
"""
# Every file's size and every link's target under a folder, by relative path.
LISTING = """
import json, os, sys
root, found = sys.argv[1], {}
for folder, dirs, files in os.walk(root):
    for name in dirs + files:
        path = os.path.join(folder, name)
        if os.path.islink(path):
            found[os.path.relpath(path, root)] = "-> " + os.readlink(path)
        elif os.path.isfile(path):
            found[os.path.relpath(path, root)] = os.path.getsize(path)
print(json.dumps(found))
"""
# The bytes under the staging folder (files come and go while it is read).
LANDED = """
import os, sys
total = 0
for folder, _, files in os.walk(sys.argv[1]):
    for name in files:
        try:
            total += os.lstat(os.path.join(folder, name)).st_size
        except OSError:
            pass
print(total)
"""


@dataclass(frozen=True)
class CopyPlan:
    """What a copy would do, or why it cannot."""

    model: str
    root: str  # the folder sent: the model's own, or its Hugging Face cache repository folder
    source: str  # the host that sends ("" when no host has the model)
    targets: tuple[str, ...]
    total_bytes: int  # what each receiving host gets
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def staging(self) -> str:
        """The receiving hosts' staging folder, beside the destination."""
        return str(Path(self.root).parent / f".mlx-gradio-copy-{Path(self.root).name}")

    @property
    def hosts(self) -> list[str]:
        """The copy's ranks: the sender first."""
        return [self.source, *self.targets]


@dataclass(frozen=True)
class CopyStatus:
    """A copy as the Servers tab shows it."""

    profile_id: str
    state: str
    plan: CopyPlan
    landed: dict[str, int] = field(default_factory=dict)  # receiving host -> bytes there so far
    message: str = ""
    started_at: float = 0.0  # time.time()
    ended_at: float = 0.0

    @property
    def running(self) -> bool:
        return self.state == COPYING

    @property
    def fraction(self) -> float:
        """How much of the whole copy (every receiving host) has landed, 0 to 1."""
        if self.state == COPIED:
            return 1.0
        wanted = self.plan.total_bytes * len(self.plan.targets)
        return min(1.0, sum(self.landed.values()) / wanted) if wanted else 0.0


def copy_root(model: str | Path) -> Path:
    """The folder to send: a Hugging Face cache snapshot's whole repository folder, else the model folder."""
    model = Path(model)
    return model.parent.parent if model.parent.name == "snapshots" else model


def plan_copy(hosts: list[str], model: str, python: str = sys.executable) -> CopyPlan:
    """Which host sends the model to which, and why it cannot (the hosts are asked, all at once)."""
    root = str(copy_root(model))
    facts = ask_hosts(hosts, python, model)
    mine = this_machine()
    problems = []
    for host, found in facts.items():
        if found.problem:
            problems.append(f"{host} {found.problem}.")
        elif differ := versions_differ(found, mine):
            problems.append(f"{host} runs {differ}: mlx_lm.share runs this machine's versions on every host.")
    source = next((h for h, f in facts.items() if f.has_model and not f.problem), "")
    targets = tuple(h for h, f in facts.items() if not f.has_model and not f.problem)
    if not source:
        problems.append(f"No host has the model at {model} yet: put it on one of them (or make this machine one "
                        "of the hosts), then copy it from there.")
    elif not targets and not problems:
        problems.append("Every host has the model already.")
    total = 0
    if source and targets:
        sizes, problem = _listing(source, root, python)
        total = sum(size for size in sizes.values() if isinstance(size, int))
        if problem:
            problems.append(f"{source} could not list {root}: {problem}.")
        for host, (answer, problem) in ask_all({h: shlex.join([python, "-c", LOOK, root]) for h in targets}).items():
            try:
                look = json.loads(answer.strip().splitlines()[-1])
            except (json.JSONDecodeError, IndexError):
                problems.append(f"{host} could not say what is at {root}: {problem or answer.strip()[-200:]}.")
                continue
            if look["taken"]:
                problems.append(f"{host} has something at {root} already, but not the model (an unfinished "
                                "copy?): remove it there, then copy again.")
            elif look["free"] < total:
                problems.append(f"{host} has {gb(look['free'])} free where {root} would go, and the model needs "
                                f"{gb(total)}.")
    return CopyPlan(model, root, source, targets, total, tuple(problems))


def _listing(host: str, root: str, python: str) -> tuple[dict[str, int | str], str]:
    """(every file's size and link's target under `root` on `host`, "" or why it could not be read)."""
    answer, problem = ask(host, shlex.join([python, "-c", LISTING, root]))
    try:
        return json.loads(answer.strip().splitlines()[-1]), problem
    except (json.JSONDecodeError, IndexError):
        return {}, problem or "an answer that is not a listing"


class _Copy:
    """One copy in flight: its ranks' launcher and what is known of it."""

    def __init__(self, status: CopyStatus, popen: subprocess.Popen, log_path: Path, ring: range) -> None:
        self.status = status
        self.popen = popen
        self.log_path = log_path
        self.ring = ring
        self.stopping = False
        self.asked_at = 0.0
        self.ended = threading.Event()

    @property
    def job(self) -> str:
        return f"copy-{self.status.profile_id}"

    @property
    def hosts_text(self) -> str:
        return "\n".join(self.status.plan.hosts)


class ModelCopies:
    """The model copies of this app's profiles, one at a time per profile; safe to call from any thread."""

    def __init__(self, log_dir: Path, hub_cache: Path, python: str = sys.executable) -> None:
        self.log_dir = Path(log_dir)
        self.hub_cache = Path(hub_cache)
        self.python = python
        self._lock = threading.Lock()
        self._starting = threading.Lock()  # one start at a time, so two clicks cannot both pass the check
        self._copies: dict[str, _Copy] = {}

    def start(self, profile_id: str, plan: CopyPlan, entries: list[dict], taken_ports: set[int]) -> CopyStatus:
        """Start copying as planned; `entries` are the hostfile's entries of the plan's hosts, sender first (their
        ring addresses), `taken_ports` the ports this app's servers hold."""
        with self._starting:
            return self._start(profile_id, plan, entries, taken_ports)

    def _start(self, profile_id: str, plan: CopyPlan, entries: list[dict], taken_ports: set[int]) -> CopyStatus:
        if not plan.ok:
            raise CopyRefused(" ".join(plan.problems))
        with self._lock:
            if any(c.status.running and (p == profile_id or c.status.plan.root == plan.root)
                   for p, c in self._copies.items()):
                raise CopyRefused(f"{plan.root} is being copied already; wait for that copy, or stop it.")
        prepared = ask_all({host: f"mkdir -p {shlex.quote(plan.staging)}" for host in plan.hosts})
        failed = [f"{host} ({problem})" for host, (_, problem) in prepared.items() if problem]
        if failed:
            self._clean(plan)
            raise CopyRefused(f"The staging folder {plan.staging} could not be made on {', '.join(failed)}.")
        first = ring_ports(len(plan.hosts), taken_ports | self.ports_in_use(), start=COPY_RING_PORT)
        share = [self.python, "-m", "mlx_lm", "share", "--path", plan.root, "--tmpdir", plan.staging]
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            hostfile = self.log_dir / f"{profile_id}.copy-hostfile.json"
            hostfile.write_text(json.dumps(entries))
            args = [*launch_command("ring", hostfile, first),
                    *rank_command(f"copy-{profile_id}", str(self.hub_cache), share)]
            log_path = self.log_dir / f"{profile_id}.copy.log"
            with open(log_path, "wb") as out:
                out.write(f"$ {' '.join(args)}\n".encode())
                out.flush()
                popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        except OSError as exc:  # a full disk, a folder we may not write, the system's limits
            log.error("Could not start copying %s: %s", plan.root, exc)
            self._clean(plan)
            raise ServerStartFailed(f"The copy could not be started: {exc.strerror or exc}.") from exc
        copy = _Copy(CopyStatus(profile_id, COPYING, plan, {host: 0 for host in plan.targets},
                                f"Copying {plan.root} from {plan.source}…", time.time()),
                     popen, log_path, range(first, first + len(plan.hosts)))
        with self._lock:
            self._copies[profile_id] = copy
        log.info("Copying %s (%s) from %s to %s: %s", plan.root, gb(plan.total_bytes), plan.source,
                 ", ".join(plan.targets), " ".join(args))
        threading.Thread(target=self._finish, args=(copy,), name=f"model-copy-{profile_id}", daemon=True).start()
        return copy.status

    def status(self, profile_id: str) -> CopyStatus | None:
        """The profile's copy now (its receiving hosts asked for their bytes, at most every `LANDED_EVERY_S`)."""
        with self._lock:
            copy = self._copies.get(profile_id)
            if copy is None:
                return None
            due = copy.status.running and time.monotonic() - copy.asked_at >= LANDED_EVERY_S
            if due:
                copy.asked_at = time.monotonic()
        if due:
            self._ask_landed(copy)
        return copy.status

    def stop(self, profile_id: str) -> CopyStatus | None:
        """Stop the profile's copy on every host; nothing it wrote is kept."""
        with self._lock:
            copy = self._copies.get(profile_id)
            if copy is None or not copy.status.running:
                return copy.status if copy else None
            copy.stopping = True
        self._stop(copy)
        copy.ended.wait(timeout=STOP_TIMEOUT_S)
        return copy.status

    def ports_in_use(self) -> set[int]:
        """The ring ports of the copies running."""
        with self._lock:
            return {port for copy in self._copies.values() if copy.status.running for port in copy.ring}

    def shutdown(self) -> None:
        """Stop every copy still running (a copy does not outlive the app)."""
        with self._lock:
            running = [p for p, c in self._copies.items() if c.status.running]
        for profile_id in running:
            self.stop(profile_id)

    def _ask_landed(self, copy: _Copy) -> None:
        plan = copy.status.plan
        answers = ask_all({host: shlex.join([self.python, "-c", LANDED, plan.staging]) for host in plan.targets})
        landed = dict(copy.status.landed)
        for host, (answer, problem) in answers.items():
            try:
                landed[host] = max(landed.get(host, 0), int(answer.strip().splitlines()[-1]))
            except (ValueError, IndexError):
                log.debug("%s did not say how much of %s has landed: %s", host, plan.root, problem or answer[-200:])
        with self._lock:
            if copy.status.running:
                copy.status = replace(copy.status, landed=landed)

    def _stop(self, copy: _Copy) -> None:
        """Every rank on every host, then the launcher."""
        for problem in stop_ranks(copy.job, copy.hosts_text):
            log.error("Stopping the copy of %s: %s", copy.status.plan.root, problem)
        try:
            os.killpg(copy.popen.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError) as exc:
            log.debug("SIGTERM to the copy's launcher %s: %s", copy.popen.pid, exc)

    def _finish(self, copy: _Copy) -> None:
        """When the launcher ends: check what landed, clean every host, say how it went."""
        copy.popen.wait()
        plan = copy.status.plan
        if copy.stopping:
            state, message = COPY_STOPPED, f"Stopped on every host; what had landed in {plan.staging} was removed."
        else:
            state, message = self._verdict(copy)
        if state != COPIED:
            self._stop(copy)  # a rank the launcher lost
        self._clean(plan)
        level = logging.INFO if state == COPIED else logging.WARNING
        log.log(level, "Copy of %s from %s to %s: %s", plan.root, plan.source, ", ".join(plan.targets), message)
        with self._lock:
            copy.status = replace(copy.status, state=state, message=message, ended_at=time.time())
        copy.ended.set()

    def _verdict(self, copy: _Copy) -> tuple[str, str]:
        """(state, message) of a copy whose launcher ended by itself: every receiving host's files must be the
        sender's, by name and size."""
        plan = copy.status.plan
        text = copy.log_path.read_text(errors="replace")
        rank = dead_rank(text, copy.hosts_text)
        if rank is not None:
            number = int(rank.split()[1])
            tail = rank_tails(text, len(plan.hosts))[number].strip().splitlines()
            why = next((line for line in reversed(tail) if line and not line.startswith("ended:")), "")
            return COPY_FAILED, f"{rank[0].upper()}{rank[1:]}" + (f": {why}" if why else ".")
        sent, problem = _listing(plan.source, plan.root, self.python)
        if problem or not sent:
            return COPY_FAILED, f"{plan.source} could not list what it sent ({problem or 'nothing there'})."
        wrong = []
        for host in plan.targets:
            landed, problem = _listing(host, plan.root, self.python)
            differ = [name for name in sent if landed.get(name) != sent[name]] + [n for n in landed if n not in sent]
            if problem or differ:
                wrong.append(f"{host} ({problem or f'{len(differ)} of {len(sent)} entries differ, {differ[0]} first'})")
        if wrong:
            return COPY_FAILED, f"The copy on {', '.join(wrong)} is not the sender's."
        took = time.time() - copy.status.started_at
        return COPIED, (f"Copied {gb(plan.total_bytes)} to {', '.join(plan.targets)} in {took:.0f} s; each host's "
                        f"{len(sent)} files match {plan.source}'s.")

    def _clean(self, plan: CopyPlan) -> None:
        """Remove the staging folder on every host (this app's own, named for the model); never the destination."""
        answers = ask_all({host: f"rm -rf {shlex.quote(plan.staging)}" for host in plan.hosts})
        for host, (_, problem) in answers.items():
            if problem:
                log.warning("Could not remove the staging folder %s on %s: %s", plan.staging, host, problem)
