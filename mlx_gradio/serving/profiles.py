"""Server profiles: what to run (model, kind, address, defaults), checked before anything starts.

A profile becomes the command line of the real upstream server: `python -m mlx_lm server` for
text models, `python -m mlx_vlm.server` for vision models, always with `--host`; a distributed
profile runs the venv's `mlx_lm.server` under MLX's own `mlx.launch` (without its idle spin), one rank per
host, rank 0 answering on the profile's host and port. mlx-vlm's API
key travels in its environment variable, never on the command line where `ps` shows it.
"""

from __future__ import annotations

import errno
import logging
import re
import shlex
import socket
import sys
import uuid
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from ..errors import ModelNotFound, ProfileInvalid
from ..models.folders import context_length, read_config
from ..net import is_loopback
from .distributed_hosts import HostFacts, check_hosts
from .distributed_plan import (
    LOCAL_HOST,
    PIPELINE,
    TENSOR,
    SplitPlan,
    jaccl_problem,
    parse_hosts,
    plan_split,
    ring_hostfile,
)
from .distributed_ranks import launch_command, rank_command

log = logging.getLogger(__name__)

TEXT, VISION, DISTRIBUTED = "text", "vision", "distributed"
JACCL = "jaccl"
BACKENDS = ("ring", JACCL)  # MLX's TCP ring, and RDMA over Thunderbolt 5
FIRST_PORT = 8080
RING_PORT = 32323  # mlx.launch's own first ring port
# The flags the profile's own fields set (and which field): the extra arguments may not name one, nor an
# abbreviation of one (argparse takes "--ho" for "--host"), and they come first on the command line, so the
# profile's value is the last one given and wins either way.
RESERVED_FLAGS = {"--model": "Model", "--host": "Host", "--port": "Port", "--api-key": "API key",
                  "--max-tokens": "Max tokens per reply", "--temp": "Temperature", "--top-p": "Top p",
                  "--prompt-cache-size": "Prompt caches kept", "--allowed-origins": "Web pages allowed"}
ANY_ORIGIN = "*"
API_KEY_ENV = "MLX_VLM_SERVER_API_KEY"


@dataclass(frozen=True)
class RankLaunch:
    """What a distributed server's ranks start with besides the profile: mlx.launch's hostfile (written before the
    start), the first of the ring's ports, and the Hugging Face cache folder on each host."""

    hostfile: Path
    ring_port: int
    hub_cache: Path


@dataclass(frozen=True)
class ServerProfile:
    """How to run one server."""

    id: str
    name: str
    model: str  # a model folder
    kind: str = TEXT  # TEXT runs mlx_lm.server, VISION runs mlx_vlm.server, DISTRIBUTED mlx_lm.server's ranks
    host: str = "127.0.0.1"
    port: int = FIRST_PORT
    max_tokens: int = 2048  # mlx-lm's own default of 512 cuts most answers short
    temperature: float = 0.0
    top_p: float = 1.0
    prompt_cache_size: int = 4
    api_key: str = field(default="", repr=False)  # mlx-vlm only: mlx-lm's server has no key
    extra_args: str = ""
    allowed_origins: str = ""  # web pages (origins, comma-separated) that may call mlx-lm's server; "*" for any
    start_with_app: bool = False
    keep_running: bool = False  # when the app quits
    restart_when_stuck: bool = False  # restart it when it runs but no longer answers
    network_ok: bool = False  # the owner confirmed an open mlx-lm server on a network address
    hosts: str = ""  # DISTRIBUTED: one host per rank (lines, commas, or a hostfile's JSON); rank 0 is the first
    split_mode: str = TENSOR  # DISTRIBUTED: TENSOR or PIPELINE
    backend: str = "ring"  # DISTRIBUTED: one of BACKENDS

    @property
    def url(self) -> str:
        """The OpenAI base URL other programs use."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> ServerProfile:
        """A profile from the store, ignoring fields a later version may have added."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in known})


def new_profile(name: str, model: str, port: int | None = None) -> ServerProfile:
    """A profile for `model` with its kind read from its config and the next free port from 8080."""
    return ServerProfile(uuid.uuid4().hex[:12], name, model, kind=model_kind(model), port=port or next_free_port())


def model_kind(model: str) -> str:
    """VISION for a model whose config has a `vision_config`, else TEXT (also for a folder not there yet:
    starting checks that it is)."""
    try:
        return VISION if "vision_config" in read_config(model) else TEXT
    except ModelNotFound as exc:
        log.debug("Taking %s for a text model: %s", model, exc)
        return TEXT


def next_free_port(start: int = FIRST_PORT, host: str = "127.0.0.1", taken: set[int] | None = None) -> int:
    """The first port from `start` that nothing listens on (and no profile in `taken` uses)."""
    for port in range(start, 65536):
        if port not in (taken or set()) and port_holder(host, port) is None:
            return port
    raise ProfileInvalid("No free port from 8080 up.")


def ring_ports(count: int, taken: set[int], start: int = RING_PORT) -> int:
    """The first of `count` consecutive ports from `start` that nothing here listens on and no running ring of this
    app holds (`taken`): one per rank, as `mlx.launch --starting-port` numbers them."""
    for first in range(start, 65536 - count):
        block = range(first, first + count)
        if not taken.intersection(block) and all(port_holder("127.0.0.1", p) is None for p in block):
            return first
    raise ProfileInvalid(f"No {count} free ports in a row from {start} up for the ranks' ring.")


def port_holder(host: str, port: int) -> str | None:
    """None if `port` can be listened on; else who holds it, as well as psutil can tell."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # As the servers themselves do: connections just closed (TIME_WAIT) do not keep a port from them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            return None
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return "no network interface of this machine has that address"
            if exc.errno != errno.EADDRINUSE:
                return f"the system refuses it ({exc.strerror or exc})"
    return _listener(port) or "another program"


def _listener(port: int) -> str | None:
    import psutil

    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                process = psutil.Process(conn.pid)
                return f"{process.name()} (pid {conn.pid})"
    except (psutil.AccessDenied, psutil.NoSuchProcess) as exc:
        log.debug("Cannot tell who listens on %s: %s", port, exc)
    return None


def check_profile(profile: ServerProfile, in_use: set[int] = frozenset()) -> ServerProfile:
    """The profile with its fields checked; raises `ProfileInvalid` (or `ModelNotFound`) with what to fix."""
    if not profile.name.strip() or len(profile.name) > 80:
        raise ProfileInvalid("Give the server a name (up to 80 characters).")
    read_config(profile.model)  # raises ModelNotFound with the reason
    if profile.kind not in (TEXT, VISION, DISTRIBUTED):
        raise ProfileInvalid(f"The kind must be “{TEXT}”, “{VISION}” or “{DISTRIBUTED}”.")
    if not 1024 <= int(profile.port) <= 65535:
        raise ProfileInvalid(f"Port {profile.port} is out of range: pick one from 1024 to 65535.")
    if not (1 <= int(profile.max_tokens) <= 1_000_000 and 0 <= float(profile.temperature) <= 2
            and 0 < float(profile.top_p) <= 1 and 0 <= int(profile.prompt_cache_size) <= 1000):
        raise ProfileInvalid("Max tokens, temperature (0–2), top p (0–1] or the prompt cache size is out of range.")
    extra_args(profile.extra_args)
    origins(profile)
    if profile.api_key and profile.kind != VISION:
        raise ProfileInvalid("mlx-lm's server has no API key option: anyone who can reach the port can use it. "
                             "Leave the key empty, or run a vision model (mlx-vlm's server takes a key).")
    if profile.kind == DISTRIBUTED:
        try:
            profile = replace(profile, host=http_host(profile))
        except ValueError as exc:  # hosts that cannot be read, or rank 0's name resolves to no address
            raise ProfileInvalid(f"The hosts cannot be read: {exc}") from exc
    if not is_loopback(profile.host):
        if profile.kind == VISION and not profile.api_key:
            raise ProfileInvalid(f"{profile.host} is reachable from other machines: set an API key first.")
        if profile.kind != VISION and not profile.network_ok:
            raise ProfileInvalid(f"{profile.host} is reachable from other machines and mlx-lm's server has no API "
                                 "key: anyone on the network could use it. Confirm that this is what you want.")
    if int(profile.port) in in_use:
        raise ProfileInvalid(f"Port {profile.port} is used by another server of this app; pick another.")
    holder = port_holder(profile.host, int(profile.port)) if rank0_here(profile) else None  # else its host says
    if holder is not None:
        raise ProfileInvalid(f"Port {profile.port} on {profile.host} is not free: {holder}. Pick another port.")
    if profile.kind == DISTRIBUTED:
        check_split(profile)
    return replace(profile, name=profile.name.strip(), port=int(profile.port))


def split_report(profile: ServerProfile) -> tuple[SplitPlan, list[HostFacts], list[str]]:
    """A distributed profile's plan, its hosts' facts, and why it cannot run (empty: it can): the model must split
    that way, and every host answer with this machine's versions, hold the model and have the memory for its
    ranks (the hosts are asked only for a plan that can work). Unreadable hosts raise `ProfileInvalid`."""
    if profile.backend not in BACKENDS:
        raise ProfileInvalid(f"The backend must be one of {', '.join(BACKENDS)}.")
    if profile.split_mode not in (TENSOR, PIPELINE):
        raise ProfileInvalid(f"The split must be “{TENSOR}” or “{PIPELINE}”.")
    try:
        hosts = parse_hosts(profile.hosts)
    except ValueError as exc:
        raise ProfileInvalid(f"The hosts cannot be read: {exc}") from exc
    plan = plan_split(profile.model, hosts, profile.split_mode, context_length(read_config(profile.model)))
    problems = list(plan.problems)
    if LOCAL_HOST in hosts and set(hosts) != {LOCAL_HOST}:
        problems.append(f"{LOCAL_HOST} reaches only this machine, so the ranks on other hosts could not connect "
                        "to it: name this machine by an address they reach (and let ssh in), or run every rank "
                        "elsewhere.")
    try:
        entries = ring_hostfile(profile.hosts)
    except ValueError as exc:
        problems.append(str(exc))
    else:
        if profile.backend == JACCL and (problem := jaccl_problem(entries)):
            problems.append(problem)
    if problems:
        return plan, [], problems
    http = None if hosts[0] == LOCAL_HOST else (http_host(profile), int(profile.port))
    facts, problems = check_hosts(plan, sys.executable, profile.model, http)
    return plan, facts, problems


def http_host(profile: ServerProfile) -> str:
    """Where a distributed server answers: rank 0 serves HTTP, at the profile's host when rank 0 runs here, else at
    rank 0's own address."""
    hosts = parse_hosts(profile.hosts)
    if not hosts or hosts[0] == LOCAL_HOST:
        return profile.host
    return ring_hostfile(profile.hosts)[0]["ips"][0]


def rank0_here(profile: ServerProfile) -> bool:
    """Whether the server's HTTP port is on this machine (every server but a distributed one with rank 0 away)."""
    return profile.kind != DISTRIBUTED or parse_hosts(profile.hosts)[:1] == [LOCAL_HOST]


def check_split(profile: ServerProfile) -> None:
    """Raises `ProfileInvalid` with every reason a distributed profile cannot run."""
    _, _, problems = split_report(profile)
    if problems:
        raise ProfileInvalid(" ".join(problems))


def extra_args(text: str) -> list[str]:
    """The extra arguments as a list; raises `ProfileInvalid` for unbalanced quotes or flags the profile sets."""
    try:
        args = shlex.split(text or "")
    except ValueError as exc:
        raise ProfileInvalid(f"The extra arguments cannot be read ({exc}).") from exc
    for arg in args:
        name = arg.split("=", 1)[0]
        if name in RESERVED_FLAGS:
            raise ProfileInvalid(f"{name} is set by the profile's {RESERVED_FLAGS[name]} field, not the extra "
                                 "arguments.")
        taken = [flag for flag in RESERVED_FLAGS if len(name) > 2 and name.startswith("--") and flag.startswith(name)]
        if taken:
            raise ProfileInvalid(f"{name} would be read as {' or '.join(taken)}, which the profile's "
                                 f"{' and '.join(RESERVED_FLAGS[f] for f in taken)} field sets: change it there.")
    if args and not args[0].startswith("-"):
        raise ProfileInvalid(f"Extra arguments start with a flag such as --kv-bits, not “{args[0]}”.")
    return args


def origins(profile: ServerProfile) -> list[str]:
    """The web origins that may call the server: the profile's list, or the server's own origin only (so no other
    page in the owner's browser can); raises `ProfileInvalid` for one that is not scheme://host[:port]."""
    listed = [o.strip().rstrip("/") for o in (profile.allowed_origins or "").split(",") if o.strip()]
    for origin in listed:
        if origin != ANY_ORIGIN and not re.fullmatch(r"https?://[^\s/,*]+", origin):
            raise ProfileInvalid(f"“{origin[:80]}” is not a web origin: write it like http://localhost:3000, "
                                 "or * for any page.")
    return listed or [profile.url.removesuffix("/v1")]


def command(profile: ServerProfile, ranks: RankLaunch | None = None) -> list[str]:
    """The server's command line (with this app's own Python): the extra arguments first, the profile's own flags
    last, so that theirs are the values the server uses. A distributed profile needs `ranks`."""
    extras = extra_args(profile.extra_args)
    common = ["--model", profile.model, "--host", profile.host, "--port", str(profile.port),
              "--max-tokens", str(profile.max_tokens)]
    if profile.kind == VISION:  # mlx-vlm's server allows every origin, and has no flag to change that
        return [sys.executable, "-m", "mlx_vlm.server", *extras, *common]
    text = [*extras, *common, "--temp", str(profile.temperature), "--top-p", str(profile.top_p),
            "--prompt-cache-size", str(profile.prompt_cache_size), "--allowed-origins", ",".join(origins(profile))]
    if profile.kind == DISTRIBUTED:
        if ranks is None:
            raise ValueError("A distributed server's command needs its hostfile and ring port.")
        # The venv's own scripts: mlx.launch runs the same path on every host (the host check saw this Python).
        scripts = Path(sys.executable).parent
        server = [str(scripts / "mlx_lm.server"), *text, *(["--pipeline"] if profile.split_mode == PIPELINE else [])]
        return [*launch_command(profile.backend, ranks.hostfile, ranks.ring_port),
                *rank_command(profile.id, str(ranks.hub_cache), server)]
    return [sys.executable, "-m", "mlx_lm", "server", *text]

