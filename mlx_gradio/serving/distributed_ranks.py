"""The ranks of a distributed server, each watched on its own host: how each one is started (a small shell wrapper
that records its pid and marks its log lines), what each one is doing (pid, state, CPU, memory, log tail), how every
one is stopped on every host, and which one died first as `mlx.launch` reports it.

The wrapper runs on each host under `mlx.launch` (which sets `MLX_RANK`) and then becomes the rank itself (`exec`),
so the pid it writes to `RANK_DIR/<job>/rank<N>.pid` is the rank's, and every line the rank writes reaches the merged
log as "[rank N] …". It needs nothing but a POSIX shell and bash on the host.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .distributed_hosts import ASK_TIMEOUT_S, ask_all
from .distributed_plan import parse_hosts

log = logging.getLogger(__name__)

RANK_DIR = "/tmp/mlx-gradio-ranks"
# mlx.launch's own line for each rank that ended, the first to die first ("[WARN] Node with rank 1 exited with
# code -9"), the others as it stopped them.
RANK_EXIT = re.compile(r"Node with rank (\d+) exited with code (-?\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# A rank's own line when the rank it talks to over the ring died first.
PEER_LOST = re.compile(r"^\[rank (\d+)\].*connection to a peer was lost", re.MULTILINE)
RANK_LINE = re.compile(r"^\[rank (\d+)\] ?(.*)$")
STOP_WAIT_S = 8  # seconds a rank has between SIGTERM and SIGKILL on its host


@dataclass(frozen=True)
class RankFacts:
    """One rank as its host reports it."""

    rank: int
    host: str
    pid: int | None = None  # None: it has not written its pid yet (or its host did not answer)
    state: str = ""  # ps's STAT ("R", "S", "T" for stopped, "Z"), "gone", or why the host did not answer
    cpu_percent: float = 0.0
    rss_bytes: int = 0
    log_tail: str = ""

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP, a debugger): alive, and answering nothing."""
        return self.state.startswith("T")

    @property
    def gone(self) -> bool:
        return self.state == "gone"


def job_dir(job: str) -> str:
    return f"{RANK_DIR}/{job}"


def launch_command(backend: str, hostfile: Path, ring_port: int) -> list[str]:
    """MLX's own `mlx.launch` with this app's Python, up to its `--`: the ranks' command follows. It runs through
    `mlx_launch.py`, which keeps its loops from spinning while the job runs."""
    return [sys.executable, str(Path(__file__).with_name("mlx_launch.py")), "--backend", backend, "--hostfile",
            str(hostfile), "--starting-port", str(ring_port), "--"]


def rank_command(job: str, hub_cache: str, server: list[str]) -> list[str]:
    """`server` as each rank runs it: output line-buffered and marked with its rank, its pid recorded, signals
    passed on to it, and how it ended written as its last line ("[rank 1] ended: killed by signal 9")."""
    script = (f"d={shlex.quote(job_dir(job))}; mkdir -p \"$d\"; "
              f"export PYTHONUNBUFFERED=1 HF_HUB_CACHE={shlex.quote(hub_cache)}; mkdir -p \"$HF_HUB_CACHE\"; "
              "exec > >(while IFS= read -r line || [ -n \"$line\" ]; do "
              "printf '[rank %s] %s\\n' \"$MLX_RANK\" \"$line\"; done) 2>&1; "
              "child=; trap '[ -n \"$child\" ] && kill -TERM $child && kill -CONT $child' TERM HUP INT; "
              "\"$@\" & child=$!; echo $child > \"$d/rank$MLX_RANK.pid\"; "
              "wait $child; rc=$?; while kill -0 $child 2>/dev/null; do wait $child; rc=$?; done; "
              "if [ $rc -gt 128 ]; then echo \"ended: killed by signal $((rc - 128))\"; "
              "else echo \"ended: exit code $rc\"; fi; exit $rc")
    return ["/bin/bash", "-c", script, "mlx-rank", *server]


def _ranks_on(hosts: list[str]) -> dict[str, list[int]]:
    """Each distinct host and the ranks it runs."""
    found: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        found.setdefault(host, []).append(rank)
    return found


# Run on a rank's host with the venv's Python: each rank's pid (from its file), state and memory (from ps), and its
# CPU over half a second (from /proc where there is one; else ps's own figure, which on macOS is a recent one).
FACTS = """
import json, os, subprocess, sys, time
folder, ranks = sys.argv[1], sys.argv[2:]
pids = {}
for r in ranks:
    try:
        pids[r] = int(open(os.path.join(folder, f"rank{r}.pid")).read())
    except (OSError, ValueError):
        pass
def ticks(pid):
    try:
        return sum(int(x) for x in open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[11:13])
    except (OSError, ValueError, IndexError):
        return None
before = {r: ticks(p) for r, p in pids.items()}
time.sleep(0.5)
found = {}
for r, p in pids.items():
    ps = subprocess.run(["ps", "-o", "stat=,%cpu=,rss=", "-p", str(p)], capture_output=True, text=True).stdout.split()
    if len(ps) < 3:
        found[r] = {"pid": p, "state": "gone"}
        continue
    after = ticks(p)
    cpu = float(ps[1].replace(",", "."))
    if after is not None and before[r] is not None:
        cpu = (after - before[r]) / os.sysconf("SC_CLK_TCK") / 0.5 * 100
    found[r] = {"pid": p, "state": ps[0], "cpu": cpu, "rss": int(ps[2]) * 1024}
print(json.dumps(found))
"""


def rank_facts(job: str, hosts_text: str, log_text: str, python: str) -> list[RankFacts]:
    """Every rank's pid, state, CPU and memory (asked of all hosts at once, with `python` there) and its own lines
    of the merged log."""
    hosts = parse_hosts(hosts_text)
    tails = rank_tails(log_text, len(hosts))
    on = _ranks_on(hosts)
    answers = ask_all({host: shlex.join([python, "-c", FACTS, job_dir(job), *map(str, ranks)])
                        for host, ranks in on.items()})
    facts = []
    for host, ranks in on.items():
        answer, problem = answers[host]
        try:
            found = json.loads(answer.strip().splitlines()[-1]) if answer.strip() else {}
        except json.JSONDecodeError as exc:
            log.warning("%s answered the rank question with something else: %s (%r)", host, exc, answer[-200:])
            found, problem = {}, "an answer that is not JSON"
        for rank in ranks:
            seen = found.get(str(rank))
            if seen is None:
                facts.append(RankFacts(rank, host, None, problem, log_tail=tails[rank]))
                continue
            facts.append(RankFacts(rank, host, int(seen["pid"]), seen["state"], float(seen.get("cpu", 0.0)),
                                   int(seen.get("rss", 0)), tails[rank]))
    return sorted(facts, key=lambda f: f.rank)


def rank_tails(log_text: str, ranks: int, lines: int = 8) -> list[str]:
    """Each rank's last lines in the merged log (the lines its wrapper marked)."""
    own: list[list[str]] = [[] for _ in range(ranks)]
    for line in ANSI.sub("", log_text).replace("\r", "").splitlines():
        found = RANK_LINE.match(line)
        if found and int(found.group(1)) < ranks:
            own[int(found.group(1))].append(found.group(2))
    return ["\n".join(kept[-lines:]) for kept in own]


def stop_ranks(job: str, hosts_text: str) -> list[str]:
    """Stop every rank of the job still running on any host (SIGTERM, SIGKILL after `STOP_WAIT_S`; all hosts at
    once) and clear its pid files; returns a sentence for each host that did not answer."""
    scripts = {host: (f"d={shlex.quote(job_dir(job))}; pids=''; for r in {' '.join(map(str, ranks))}; do "
                      "f=\"$d/rank$r.pid\"; [ -f \"$f\" ] || continue; p=$(cat \"$f\"); rm -f \"$f\"; "
                      "if ps -ww -o args= -p \"$p\" 2>/dev/null | grep -q mlx_lm; then "
                      "kill -TERM \"$p\"; kill -CONT \"$p\"; pids=\"$pids $p\"; fi; done; "
                      f"for i in $(seq {STOP_WAIT_S * 5}); do left=''; for p in $pids; do "
                      "s=$(ps -o stat= -p \"$p\" 2>/dev/null); [ -n \"$s\" ] && [ \"${s#Z}\" = \"$s\" ] && "
                      "left=\"$left $p\"; done; [ -z \"$left\" ] && break; sleep 0.2; done; "
                      "for p in $left; do kill -KILL \"$p\"; done; rmdir \"$d\" 2>/dev/null; echo \"left:$left\"")
               for host, ranks in _ranks_on(parse_hosts(hosts_text)).items()}
    problems = []
    for host, (answer, problem) in ask_all(scripts, timeout=STOP_WAIT_S + ASK_TIMEOUT_S).items():
        if problem:
            problems.append(f"{host} did not answer ({problem}): its ranks may still run.")
        elif answer.rsplit("left:", 1)[-1].split():
            log.warning("Ranks on %s needed SIGKILL: pids %s", host, answer.rsplit("left:", 1)[-1].strip())
    return problems


def dead_rank(log_text: str, hosts_text: str) -> str | None:
    """"rank 1 on 10.0.0.2 was killed by SIGKILL": the first rank `mlx.launch` saw end that did not end because a
    peer had gone (a rank whose peer died aborts within milliseconds, and `mlx.launch` may see that one first), None
    if it named none. Each rank's wrapper exits as a shell does, 128 + the signal for one killed (through ssh too)."""
    text = ANSI.sub("", log_text)
    ended = [(int(m.group(1)), int(m.group(2))) for m in RANK_EXIT.finditer(text)]
    if not ended:
        return None
    followers = {int(m.group(1)) for m in PEER_LOST.finditer(text)}
    rank, code = next(((r, c) for r, c in ended if r not in followers), ended[0])
    hosts = parse_hosts(hosts_text)
    host = hosts[rank] if rank < len(hosts) else "an unknown host"
    signal_number = -code if code < 0 else code - 128 if code > 128 else 0
    if signal_number:
        try:
            how = f"was killed by {signal.Signals(signal_number).name}"
        except ValueError:
            how = f"was killed by signal {signal_number}"
    else:
        how = f"exited with code {code}"
    return f"rank {rank} on {host} {how}"
