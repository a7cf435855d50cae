"""The hosts of a distributed profile, checked before anything starts: each one reached (over ssh without a
password, or this machine for `127.0.0.1`), its Python, mlx and mlx-lm versions beside this machine's, its memory,
and whether the model is at the same path there."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from ..models.fit import gb
from .distributed_plan import LOCAL_HOST, SplitPlan

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30
ASK_TIMEOUT_S = 15.0
COPY_BUTTON = "Copy the model to the hosts that lack it"  # the Servers tab's button that does
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR")
# Run on each host with its Python: the versions, the memory MLX may use, whether the model is there, and (for
# rank 0's host, given an address and port) whether rank 0 can listen on that port.
PROBE = """
import json, os, socket, sys
from importlib.metadata import version
facts = {"python": sys.version.split()[0], "model": os.path.isfile(os.path.join(sys.argv[1], "config.json"))}
if len(sys.argv) > 3:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((sys.argv[2], int(sys.argv[3])))
        except OSError as exc:
            facts["port"] = exc.strerror or str(exc)
try:
    facts["mlx"], facts["mlx_lm"] = version("mlx"), version("mlx-lm")
    import mlx.core as mx
    facts["memory"] = int(mx.device_info().get("max_recommended_working_set_size", 0) or 0)
except Exception as exc:
    facts["missing"] = f"{type(exc).__name__}: {exc}"
if not facts.get("memory"):
    facts["memory"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
print(json.dumps(facts))
"""


@dataclass(frozen=True)
class HostFacts:
    """What one host said, or why it could not be asked."""

    host: str
    problem: str = ""  # why the host could not be asked ("" when it answered)
    python: str = ""
    mlx: str = ""
    mlx_lm: str = ""
    memory_bytes: int = 0
    has_model: bool = False
    port_problem: str = ""  # rank 0's host only: why its HTTP port cannot be listened on ("" when it can)


def this_machine() -> HostFacts:
    """This process's own versions, the ones every rank must run."""
    return HostFacts("this machine", python=sys.version.split()[0], mlx=version("mlx"), mlx_lm=version("mlx-lm"))


def on_host(host: str, script: str) -> list[str]:
    """The command that runs a shell `script` on a host: here for a local host, else over ssh (the first `ssh` on
    PATH, as `mlx.launch` uses), never asking for a password."""
    return ["/bin/sh", "-c", script] if host == LOCAL_HOST else ["ssh", *SSH_OPTIONS, host, script]


def ask_all(scripts: dict[str, str], timeout: float = ASK_TIMEOUT_S) -> dict[str, tuple[str, str]]:
    """Each host's (output, problem) for its script, all hosts asked at once."""
    with ThreadPoolExecutor(max_workers=max(1, len(scripts))) as pool:
        return dict(zip(scripts, pool.map(lambda host: ask(host, scripts[host], timeout), scripts), strict=True))


def ask(host: str, script: str, timeout: float = ASK_TIMEOUT_S) -> tuple[str, str]:
    """(what the script printed on `host`, "" or why it could not be run there)."""
    try:
        done = subprocess.run(on_host(host, script), capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        log.warning("%s did not answer within %.0f s", host, timeout)
        return "", f"no answer within {timeout:.0f} s"
    except OSError as exc:
        log.warning("Could not ask %s: %s", host, exc)
        return "", str(exc)
    if done.returncode != 0 and not done.stdout:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        log.warning("Asking %s failed: %s", host, why)
        return "", why
    return done.stdout, ""


def probe_command(host: str, python: str, model_path: str, listen: tuple[str, int] | None = None) -> list[str]:
    """The command that asks a host for its facts, with the venv's Python there (and whether it can listen on
    `listen`, an address and port)."""
    where = [listen[0], str(listen[1])] if listen else []
    return on_host(host, shlex.join([python, "-c", PROBE, model_path, *where]))


def probe(host: str, python: str, model_path: str, listen: tuple[str, int] | None = None,
          timeout: float = PROBE_TIMEOUT_S) -> HostFacts:
    """Ask one host for its facts."""
    try:
        done = subprocess.run(probe_command(host, python, model_path, listen), capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        log.warning("Host %s did not answer within %.0f s", host, timeout)
        return HostFacts(host, problem=f"did not answer within {timeout:.0f} s")
    except OSError as exc:
        log.warning("Could not ask host %s: %s", host, exc)
        return HostFacts(host, problem=f"could not be asked: {exc}")
    last = done.stdout.strip().splitlines()[-1:] or [""]
    try:
        facts = json.loads(last[0])
    except json.JSONDecodeError:
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        reached = "cannot be reached over ssh without a password" if host != LOCAL_HOST else "failed"
        log.warning("Host %s: %s (%s)", host, reached, why)
        return HostFacts(host, problem=f"{reached}: {why}")
    if facts.get("missing"):
        return HostFacts(host, problem=f"{python} there has no mlx / mlx-lm ({facts['missing']})",
                         python=facts.get("python", ""))
    return HostFacts(host, python=facts["python"], mlx=facts["mlx"], mlx_lm=facts["mlx_lm"],
                     memory_bytes=int(facts["memory"]), has_model=bool(facts["model"]),
                     port_problem=facts.get("port", ""))


def ask_hosts(hosts: list[str], python: str, model_path: str | Path,
              http: tuple[str, int] | None = None) -> dict[str, HostFacts]:
    """Each distinct host's facts, all hosts asked at once; the first host is also asked about `http`."""
    distinct = list(dict.fromkeys(hosts))
    with ThreadPoolExecutor(max_workers=max(1, len(distinct))) as pool:
        found = pool.map(lambda host: probe(host, python, str(model_path), http if host == hosts[0] else None),
                         distinct)
        return dict(zip(distinct, found, strict=True))


def check_hosts(plan: SplitPlan, python: str, model_path: str | Path,
                http: tuple[str, int] | None = None) -> tuple[list[HostFacts], list[str]]:
    """Each distinct host's facts, and the sentences that say why the plan cannot run on them (empty: it can);
    `http` is rank 0's address and port when rank 0 runs on another host (which is asked whether it is free)."""
    mine = this_machine()
    facts = ask_hosts(list(plan.hosts), python, model_path, http)
    problems = []
    for host, found in facts.items():
        if found.problem:
            problems.append(f"{host} {found.problem}.")
            continue
        if differ := versions_differ(found, mine):
            problems.append(f"{host} runs {differ}: every rank must run the same versions.")
        if found.port_problem:
            problems.append(f"Rank 0 on {host} cannot listen on port {http[1]} ({found.port_problem}): pick "
                            "another port.")
        if not found.has_model:
            problems.append(f"{host} has no model at {model_path}: copy it there first (“{COPY_BUTTON}”).")
        shares = [s for s in plan.shares if s.host == host]
        needed = sum(s.needed for s in shares)
        if shares and found.memory_bytes and needed > found.memory_bytes:
            problems.append(f"{host} would hold {len(shares)} rank(s) needing {gb(needed)}, more than its "
                            f"{gb(found.memory_bytes)}.")
    return list(facts.values()), problems


def versions_differ(found: HostFacts, mine: HostFacts) -> str:
    """"mlx 0.0.1 (here 0.31.0), …" for each version a host runs that this machine does not ("" when none)."""
    return ", ".join(f"{what} {theirs} (here {ours})" for what, theirs, ours in (
        ("Python", found.python, mine.python), ("mlx", found.mlx, mine.mlx), ("mlx-lm", found.mlx_lm, mine.mlx_lm))
        if theirs != ours)


def versions_table(facts: list[HostFacts]) -> str:
    """The hosts' versions side by side with this machine's, as Markdown."""
    rows = ["| Host | Python | mlx | mlx-lm | Memory | Model |", "|---|---|---|---|---|---|"]
    for found in [this_machine(), *facts]:
        if found.problem:
            rows.append(f"| {found.host} | {found.problem} | | | | |")
            continue
        model = "—" if found.host == "this machine" else ("there" if found.has_model else "**missing**")
        memory = gb(found.memory_bytes) if found.memory_bytes else "—"
        rows.append(f"| {found.host} | {found.python} | {found.mlx} | {found.mlx_lm} | {memory} | {model} |")
    return "\n".join(rows)
