"""Real OpenAI-compatible servers (mlx-lm's and mlx-vlm's) run as subprocesses, and watched honestly.

A server is `starting` until the model has answered a one-token completion (mlx-lm's `/health`
answers before the model is loaded, so it proves nothing), then `ready`; `stopping` and
`stopped` when asked to end; `failed`, with the exit code and the last log lines, when it dies
or never becomes ready. One watcher thread checks every running server twice a second with a
`waitpid`, so a crash shows within a second and the watcher costs next to nothing. Each server
runs in a process group of its own, logs to its own file in the data dir, and is recorded (pid
and create time) so a later run of the app can adopt it or clean the record up.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ..errors import AppError, ServerNotRunning, ServerStartFailed
from .distributed_plan import parse_hosts, ring_hostfile
from .distributed_ranks import RankFacts, dead_rank, rank_facts, rank_tails, stop_ranks
from .profiles import API_KEY_ENV, DISTRIBUTED, VISION, RankLaunch, ServerProfile, command, ring_ports
from .remote import ask_one_token

log = logging.getLogger(__name__)

STARTING, READY, STOPPING, STOPPED, FAILED = "starting", "ready", "stopping", "stopped", "failed"
NOT_ANSWERING = "not answering"  # alive, but a one-token request got no answer in time (a wedged server)
RUNNING = (STARTING, READY, NOT_ANSWERING, STOPPING)
READY_TIMEOUT = 300.0  # seconds for the model to load and answer once
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
WATCH_INTERVAL = 0.5
PROBE_EVERY = 300.0  # seconds without a sign of life before a ready server is asked for one token
PROBE_TIMEOUT = 25.0  # seconds that one-token answer may take
LOG_ROTATE_BYTES = 5_000_000
RANKS_EVERY = 3.0  # seconds between two questions to a distributed server's hosts about its ranks


@dataclass(frozen=True)
class ServerStatus:
    """What the Servers tab shows about one server."""

    profile_id: str
    name: str
    kind: str
    model: str
    url: str
    state: str
    pid: int | None = None
    started_at: float = 0.0  # time.time()
    ready_at: float = 0.0
    deadline: float = 0.0  # time.time() by which it must be ready
    exit_code: int | None = None
    message: str = ""
    adopted: bool = False

    @property
    def running(self) -> bool:
        return self.state in RUNNING


@dataclass(frozen=True)
class Usage:
    """CPU and memory of a server's process and all its children."""

    cpu_percent: float
    rss_bytes: int


class ServerRecords(Protocol):
    """Where running servers are recorded between runs of the app (the store)."""

    def all(self) -> list[dict]: ...

    def save(self, record: dict) -> None: ...

    def remove(self, profile_id: str) -> None: ...


class Server:
    """One running server: its process, its state and its log."""

    def __init__(self, profile: ServerProfile, log_path: Path, status: ServerStatus) -> None:
        self.profile = profile
        self.log_path = log_path
        self.status = status
        self.popen: subprocess.Popen | None = None
        self.process = None  # psutil.Process, for usage and for adopted servers
        self.stop_requested = False
        self.busy = 0  # the app's own requests streaming through it: no probe meanwhile
        self.last_alive = 0.0  # time.time() of its last answer (the ready check, a probe, a chunk of a reply)
        self.probes = 0
        self.ring_ports = range(0)  # a distributed server's ring, one port per rank
        self.ranks: list[RankFacts] = []  # a distributed server's ranks, as their hosts last said
        self.ranks_asked = 0.0  # time.monotonic() of the last question (0: never, or one is under way)
        self.ranks_asking = False
        self.leftovers: list[str] = []  # hosts where its ranks could not be stopped
        self.note = ""  # kept in its message: why it was started again


class Servers:
    """Start, watch, stop and adopt servers; safe to call from any thread."""

    def __init__(self, log_dir: Path, cache_dir: Path, records: ServerRecords,
                 ready_timeout: float = READY_TIMEOUT, probe_every: float = PROBE_EVERY,
                 probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.log_dir = Path(log_dir)
        self.cache_dir = Path(cache_dir)
        self.records = records
        self.ready_timeout = ready_timeout
        self.probe_every = probe_every
        self.probe_timeout = probe_timeout
        self._lock = threading.Lock()
        self._servers: dict[str, Server] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="server-watch", daemon=True)
        self._watcher.start()
        self._health = threading.Thread(target=self._check_health, name="server-health", daemon=True)
        self._health.start()

    # --- asking -----------------------------------------------------------------------------

    def list(self) -> list[ServerStatus]:
        with self._lock:
            return [s.status for s in self._servers.values()]

    def get(self, profile_id: str) -> ServerStatus | None:
        with self._lock:
            server = self._servers.get(profile_id)
            return server.status if server else None

    def ports_in_use(self, besides: str = "") -> set[int]:
        """Ports of this app's running servers (but the one of `besides`)."""
        with self._lock:
            running = [s for pid, s in self._servers.items() if s.status.running and pid != besides]
        return {s.profile.port for s in running} | {port for s in running for port in s.ring_ports}

    @contextmanager
    def using(self, profile_id: str) -> Iterator[Callable[[], None]]:
        """While the app's own request streams through a server: no probe; the callable it yields marks an
        answer (a chunk came), which is as good a sign of life as a probe."""
        with self._lock:
            server = self._servers.get(profile_id)
        if server is None:
            yield lambda: None
            return
        server.busy += 1

        def answered() -> None:
            server.last_alive = time.time()

        try:
            yield answered
        finally:
            server.busy -= 1

    def usage(self, profile_id: str) -> Usage | None:
        """CPU % (since the last call) and resident memory, summed over the process and its children."""
        import psutil

        with self._lock:
            server = self._servers.get(profile_id)
        if server is None or server.process is None or not server.status.running:
            return None
        try:
            processes = [server.process, *server.process.children(recursive=True)]
        except psutil.Error as exc:  # it ended between the check and now
            log.debug("No usage for %s: %s", server.profile.name, exc)
            return None
        cpu = rss = 0
        for process in processes:
            try:
                cpu += process.cpu_percent(interval=None)
                rss += process.memory_info().rss
            except psutil.Error as exc:  # a child that ended meanwhile
                log.debug("No usage for pid %s: %s", process.pid, exc)
                continue
        return Usage(cpu, rss)

    def log_tail(self, profile_id: str, lines: int = 40, max_bytes: int = 64_000) -> str:
        """The last lines of a server's log (read from the end of the file, not the whole of it)."""
        path = self.log_dir / f"{profile_id}.log"
        try:
            with open(path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
                text = f.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            log.debug("%s has no log yet", path)
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # --- starting ---------------------------------------------------------------------------

    def start(self, profile: ServerProfile, note: str = "") -> ServerStatus:
        """Run the profile's server and start waiting for it to be ready (the profile is checked already); `note`
        stays in its message (why it was restarted)."""
        import psutil

        with self._lock:
            current = self._servers.get(profile.id)
            if current is not None and current.status.running:
                raise ServerNotRunning(f"{profile.name} is already running; stop it first.")
        env = {**os.environ, "HF_HUB_CACHE": str(self.cache_dir), "PYTHONUNBUFFERED": "1"}
        env.pop(API_KEY_ENV, None)
        if profile.kind == VISION and profile.api_key:
            env[API_KEY_ENV] = profile.api_key  # not on the command line, where `ps` would show it
        ring = range(0)
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.cache_dir.mkdir(parents=True, exist_ok=True)  # mlx-lm's /v1/models fails without it
            launch = None
            if profile.kind == DISTRIBUTED:
                launch = self._rank_launch(profile)
                ring = range(launch.ring_port, launch.ring_port + len(parse_hosts(profile.hosts)))
            args = command(profile, launch)
            log_path = self._rotated_log(profile.id)
            with open(log_path, "ab") as out:
                out.write(f"$ {' '.join(args)}\n".encode())
                out.flush()
                popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)
        except OSError as exc:  # a full disk, a folder we may not write, too many processes or open files
            log.error("Could not start %s: %s", profile.name, exc)
            raise ServerStartFailed(f"{profile.name} could not be started: {exc.strerror or exc}"
                                    f"{f' ({exc.filename})' if exc.filename else ''}.") from exc
        now = time.time()
        server = Server(profile, log_path, ServerStatus(
            profile.id, profile.name, profile.kind, profile.model, profile.url, STARTING, popen.pid,
            started_at=now, deadline=now + self.ready_timeout, message=" ".join(["Loading the model…", note]).strip()))
        server.note = note
        server.popen = popen
        server.ring_ports = ring
        server.process = psutil.Process(popen.pid)  # not reaped yet, so there even if it died at once
        server.process.cpu_percent(interval=None)  # the first reading is a baseline
        with self._lock:
            self._servers[profile.id] = server
        self._record(server)
        log.info("Started %s (pid %d): %s", profile.name, popen.pid, " ".join(args))
        self._wake.set()
        threading.Thread(target=self._wait_ready, args=(server,), name=f"server-ready-{profile.id}",
                         daemon=True).start()
        return server.status

    def _rank_launch(self, profile: ServerProfile) -> RankLaunch:
        """mlx.launch's hostfile for the profile (written next to its log) and a ring of ports no other running
        distributed server of this app holds."""
        hostfile = self.log_dir / f"{profile.id}.hostfile.json"
        try:
            hostfile.write_text(json.dumps(ring_hostfile(profile.hosts)))
        except ValueError as exc:  # a host name that stopped resolving since the check
            raise ServerStartFailed(f"{profile.name} could not be started: {exc}") from exc
        first = ring_ports(len(parse_hosts(profile.hosts)), self.ports_in_use(besides=profile.id))
        return RankLaunch(hostfile, first, self.cache_dir)

    def _rotated_log(self, profile_id: str) -> Path:
        path = self.log_dir / f"{profile_id}.log"
        if path.exists() and path.stat().st_size > LOG_ROTATE_BYTES:
            path.replace(path.with_suffix(".log.1"))
        return path

    def _wait_ready(self, server: Server) -> None:
        """Ask for one token until the model answers, the process dies or the time is up."""
        while not self._closed.is_set():
            status = server.status
            if status.state != STARTING:
                return
            if time.time() > status.deadline:
                self._give_up(server, f"It did not answer within {self.ready_timeout:.0f} s; stopped it.")
                return
            error, final = probe(server.profile, timeout=max(1.0, status.deadline - time.time()))
            if error is None:
                server.last_alive = time.time()
                self._set(server, READY, server.note, ready_at=server.last_alive)
                log.info("%s is ready at %s", server.profile.name, server.profile.url)
                return
            if final:  # it runs but cannot answer (mlx-lm keeps serving errors after its model failed to load)
                log.warning("%s cannot answer (%s); last log lines:\n%s", server.profile.name, error,
                            self.log_tail(server.profile.id, lines=12))
                self._give_up(server, f"The server answers with an error: {error}. Stopped it; see its log.")
                return
            log.debug("%s not ready yet: %s", server.profile.name, error)
            self._closed.wait(1.0)

    def _give_up(self, server: Server, reason: str) -> None:
        """Stop a server that will not become ready; it is shown failed once its processes are gone."""
        server.stop_requested = True
        self._set(server, STOPPING, "Stopping it: it cannot answer…")
        self._terminate(server)
        self.records.remove(server.profile.id)
        self._set(server, FAILED, reason, exit_code=self._exit_code(server))

    # --- stopping ---------------------------------------------------------------------------

    def stop(self, profile_id: str, timeout: float = STOP_TIMEOUT) -> ServerStatus:
        """SIGTERM to the server's process group, SIGKILL after `timeout`; returns once it is gone."""
        with self._lock:
            server = self._servers.get(profile_id)
        if server is None or not server.status.running:
            raise ServerNotRunning("That server is not running.")
        server.stop_requested = True
        self._set(server, STOPPING, "Stopping…")
        self._terminate(server, timeout)
        self._set(server, STOPPED, " ".join(server.leftovers), exit_code=self._exit_code(server))
        server.ranks = []
        self.records.remove(profile_id)
        log.info("Stopped %s", server.profile.name)
        return server.status

    def shutdown(self) -> None:
        """Stop every server this app runs, but those whose profile says to keep them running."""
        with self._lock:
            servers = list(self._servers.values())
        for server in servers:
            if server.status.running and not server.profile.keep_running:
                try:
                    self.stop(server.profile.id)
                except ServerNotRunning as exc:
                    log.debug("At exit: %s", exc)
                    continue
            elif server.status.running:
                log.info("Leaving %s running (pid %s), as its profile says", server.profile.name, server.status.pid)
        self._closed.set()
        self._wake.set()

    def _terminate(self, server: Server, timeout: float = STOP_TIMEOUT) -> None:
        import psutil

        pid = server.status.pid
        if pid is None:
            return
        try:
            family = [server.process, *server.process.children(recursive=True)]
        except psutil.Error as exc:  # gone already; the signals below find nothing either
            log.debug("Stopping %s: %s", server.profile.name, exc)
            family = []
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError) as exc:
            log.debug("SIGTERM to group %s: %s", pid, exc)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        if alive:
            log.warning("%s did not stop within %.0f s; killing it", server.profile.name, timeout)
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError) as exc:
                log.debug("SIGKILL to group %s: %s", pid, exc)
            for process in alive:
                try:
                    process.kill()
                except psutil.Error as exc:
                    log.debug("SIGKILL to %s: %s", process.pid, exc)
                    continue
            psutil.wait_procs(alive, timeout=5)
        if server.popen is not None:
            try:
                server.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.error("%s (pid %s) is still there after SIGKILL", server.profile.name, pid)
        if server.profile.kind == DISTRIBUTED:
            self._stop_ranks(server)

    def _stop_ranks(self, server: Server) -> None:
        """Stop whatever rank of a distributed server is still running on any host (mlx.launch stops them when it
        can; a host it lost or a cleanup of its own that failed leaves them)."""
        for problem in stop_ranks(server.profile.id, server.profile.hosts):
            log.error("Stopping %s: %s", server.profile.name, problem)
            server.leftovers.append(problem)

    # --- adopting ---------------------------------------------------------------------------

    def adopt(self, profiles: dict[str, ServerProfile]) -> list[ServerStatus]:
        """Take over servers an earlier run of the app left running; forget records of the ones gone."""
        import psutil

        adopted = []
        for record in self.records.all():
            if self.get(record.get("profile_id", "")) is not None:
                continue  # already watched by this run
            profile = profiles.get(record.get("profile_id", ""))
            try:
                process = psutil.Process(int(record["pid"]))
                same = abs(process.create_time() - float(record["create_time"])) < 1.0 and process.is_running()
            except (psutil.Error, KeyError, TypeError, ValueError) as exc:
                log.debug("The recorded server %s is not there: %s", record.get("profile_id"), exc)
                same = False
            if not same or profile is None:
                log.info("Forgetting the record of a server that is gone: %s", record)
                self.records.remove(record.get("profile_id", ""))
                continue
            profile = replace(profile, host=record["host"], port=int(record["port"]), model=record["model"],
                              kind=record["kind"])
            now = time.time()
            server = Server(profile, self.log_dir / f"{profile.id}.log", ServerStatus(
                profile.id, profile.name, profile.kind, profile.model, profile.url, STARTING, process.pid,
                started_at=float(record["create_time"]), deadline=now + self.ready_timeout,
                message="Found running from an earlier start of the app; checking that it answers…", adopted=True))
            server.process = process
            process.cpu_percent(interval=None)
            with self._lock:
                self._servers[profile.id] = server
            threading.Thread(target=self._wait_ready, args=(server,), daemon=True).start()
            adopted.append(server.status)
            log.info("Adopted %s (pid %d) from an earlier run", profile.name, process.pid)
        self._wake.set()
        return adopted

    # --- watching ---------------------------------------------------------------------------

    def _check_health(self) -> None:
        """Ask a ready server for one token when it has shown no sign of life for `probe_every` seconds (never
        while the app's own request streams through it); one that does not answer in `probe_timeout` is shown
        not answering, asked again until it answers, and restarted if its profile says so."""
        tick = min(5.0, self.probe_every / 2)
        while not self._closed.wait(tick):
            with self._lock:
                running = [s for s in self._servers.values() if s.status.running]
            for server in running:
                self._rotate_running_log(server)
            watched = [s for s in running if s.status.state in (READY, NOT_ANSWERING)]
            for server in watched:
                quiet = time.time() - server.last_alive
                due = server.status.state == NOT_ANSWERING or quiet >= self.probe_every
                if due and not server.busy and not server.stop_requested and not self._closed.is_set():
                    try:
                        self._probe(server)
                    except Exception:  # noqa: BLE001 - this thread watches every server: it must go on
                        log.exception("Checking that %s answers failed", server.profile.name)

    def _rotate_running_log(self, server: Server) -> None:
        """Keep a running server's log within bounds: past `LOG_ROTATE_BYTES` it is copied to `.log.1` and cut
        to nothing (the server appends to it, so it writes on at the new end)."""
        try:
            if server.log_path.stat().st_size <= LOG_ROTATE_BYTES:
                return
            shutil.copyfile(server.log_path, server.log_path.with_suffix(".log.1"))
            os.truncate(server.log_path, 0)
            log.info("Rotated the log of %s (%s)", server.profile.name, server.log_path)
        except OSError as exc:  # a full disk, or the log went away: the server runs on either way
            log.warning("Cannot rotate the log of %s: %s", server.profile.name, exc)

    def _probe(self, server: Server) -> None:
        server.probes += 1
        error, _ = probe(server.profile, timeout=self.probe_timeout)
        if server.stop_requested or server.status.state not in (READY, NOT_ANSWERING):
            return
        if error is None:
            server.last_alive = time.time()
            if server.status.state == NOT_ANSWERING:
                log.info("%s answers again", server.profile.name)
                self._set(server, READY, "It answers again.")
            return
        if server.profile.kind == DISTRIBUTED:
            self._stalled_ranks(server, error)
            return
        if server.status.state == READY:
            log.warning("%s is running but does not answer (%s); last log lines:\n%s", server.profile.name, error,
                        self.log_tail(server.profile.id, lines=12))
            self._set(server, NOT_ANSWERING, f"Its process runs, but a one-token request got no answer within "
                                             f"{self.probe_timeout:.0f} s ({error}).")
        if server.profile.restart_when_stuck:
            log.warning("Restarting %s, as its profile says for a server that does not answer", server.profile.name)
            try:
                self.stop(server.profile.id)
                self.start(server.profile)
            except AppError as exc:  # it ended meanwhile (stopped by hand), or it cannot be started again
                log.error("Could not restart %s: %s", server.profile.name, exc)

    def _stalled_ranks(self, server: Server, error: str) -> None:
        """A distributed server that does not answer: name the rank that stalls (one stopped by a signal, else one
        gone, else rank 0, which took the request), stop the job (a ring with a stalled rank does not recover) and
        start it again if the profile says so."""
        facts = self._ask_ranks(server)
        stuck = (next((f for f in facts if f.stopped), None) or next((f for f in facts if f.gone), None)
                 or next((f for f in facts if f.rank == 0), None))
        why = " (its process is stopped)" if stuck and stuck.stopped else " (its process is gone)" if (
            stuck and stuck.gone) else ""
        who = f"Rank {stuck.rank} on {stuck.host}" if stuck else "The server"
        message = (f"{who} not answering{why}: a one-token request got no answer within {self.probe_timeout:.0f} s "
                   f"({error}). Stopped every rank: a ring with a stalled rank does not recover.")
        log.warning("%s: %s; ranks: %s", server.profile.name, message, facts)
        self._set(server, NOT_ANSWERING, message)
        server.stop_requested = True
        self._terminate(server)
        self.records.remove(server.profile.id)
        self._ranks_ended(server)
        self._set(server, FAILED, " ".join([message, *server.leftovers]), exit_code=self._exit_code(server))
        if server.profile.restart_when_stuck:
            log.warning("Restarting %s, as its profile says for a server that does not answer", server.profile.name)
            try:
                self.start(server.profile, note=f"Started again: {message}")
            except AppError as exc:  # it cannot be started again (a host gone, the ports taken)
                log.error("Could not restart %s: %s", server.profile.name, exc)

    # --- ranks ------------------------------------------------------------------------------

    def ranks(self, profile_id: str) -> list[RankFacts]:
        """A distributed server's ranks as their hosts last said (asked again in the background when that is more
        than `RANKS_EVERY` seconds old, so a caller never waits on ssh); [] for any other server."""
        with self._lock:
            server = self._servers.get(profile_id)
        if server is None or server.profile.kind != DISTRIBUTED:
            return []
        due = time.monotonic() - server.ranks_asked > RANKS_EVERY
        if server.status.running and due and not server.ranks_asking:
            server.ranks_asking = True
            threading.Thread(target=self._ask_ranks, args=(server,), name=f"server-ranks-{profile_id}",
                             daemon=True).start()
        return server.ranks

    def _ask_ranks(self, server: Server) -> list[RankFacts]:
        try:
            facts = rank_facts(server.profile.id, server.profile.hosts, self.log_tail(server.profile.id, lines=400),
                               sys.executable)
        finally:
            server.ranks_asking = False
            server.ranks_asked = time.monotonic()
        if server.status.running:
            server.ranks = facts
        return facts

    def _watch(self) -> None:
        """Notice servers that exit on their own (a crash, a kill, a bad model) within half a second."""
        while not self._closed.is_set():
            with self._lock:
                running = [s for s in self._servers.values() if s.status.state in (STARTING, READY, NOT_ANSWERING)]
            if not running:
                self._wake.wait()
                self._wake.clear()
                continue
            for server in running:
                if not server.stop_requested and not self._alive(server):
                    self._died(server)
            self._closed.wait(WATCH_INTERVAL)

    def _alive(self, server: Server) -> bool:
        import psutil

        if server.popen is not None:
            return server.popen.poll() is None
        try:
            return server.process.is_running() and server.process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error as exc:
            log.debug("%s is not running: %s", server.profile.name, exc)
            return False

    def _died(self, server: Server) -> None:
        code = self._exit_code(server)
        how = f"exit code {code}" if code is not None and code >= 0 else (
            f"killed by signal {-code}" if code is not None else "exit code unknown (started by an earlier run)")
        tail = self.log_tail(server.profile.id, lines=12)
        message = f"The server stopped on its own ({how})."
        if server.profile.kind == DISTRIBUTED:
            # mlx.launch's own exit says little (a traceback of its cleanup): the rank that died first is the news.
            rank = dead_rank(self.log_tail(server.profile.id, lines=400), server.profile.hosts)
            message = f"{rank[0].upper()}{rank[1:]}; mlx.launch stopped the other ranks." if rank else message
            self._stop_ranks(server)
            message = " ".join([message, *server.leftovers])
            self._ranks_ended(server)
        self._set(server, FAILED, message, exit_code=code)
        self.records.remove(server.profile.id)
        log.warning("%s failed (%s); last log lines:\n%s", server.profile.name, how, tail)

    def _ranks_ended(self, server: Server) -> None:
        """A distributed server's ranks once it failed: each one gone, with its last lines of the log."""
        hosts = parse_hosts(server.profile.hosts)
        pids = {f.rank: f.pid for f in server.ranks}
        tails = rank_tails(self.log_tail(server.profile.id, lines=400), len(hosts))
        server.ranks = [RankFacts(r, h, pids.get(r), "gone", log_tail=tail)
                        for r, (h, tail) in enumerate(zip(hosts, tails, strict=True))]

    @staticmethod
    def _exit_code(server: Server) -> int | None:
        return server.popen.poll() if server.popen is not None else None

    # --- state ------------------------------------------------------------------------------

    def _set(self, server: Server, state: str, message: str, **changes) -> None:
        with self._lock:
            if server.status.state in (STOPPED, FAILED) and state not in (STOPPED,):
                return  # an end state stays (a late "ready" must not revive a dead server)
            server.status = replace(server.status, state=state, message=message, **changes)

    def _record(self, server: Server) -> None:
        try:
            self.records.save({"profile_id": server.profile.id, "pid": server.status.pid,
                               "create_time": server.process.create_time(), "host": server.profile.host,
                               "port": server.profile.port, "model": server.profile.model,
                               "kind": server.profile.kind})
        except (AppError, OSError) as exc:  # the server runs anyway; only a later adoption would miss it
            log.error("Could not record server %s: %s", server.profile.name, exc)


def probe(profile: ServerProfile, timeout: float = 30.0) -> tuple[str | None, bool]:
    """(None, _) if the server answers a one-token chat completion; else (what went wrong, whether waiting
    longer cannot help: an error answer rather than no answer yet)."""
    return ask_one_token(profile.url, profile.api_key, "default_model" if profile.kind != VISION else profile.model,
                         timeout)
