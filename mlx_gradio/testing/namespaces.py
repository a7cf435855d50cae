"""Several machines on this one, for tests and benchmarks: Linux network namespaces, each with a veth on one bridge
and its own `sshd` (Debian's openssh-server), reached over real ssh with a key of their own.

The namespaces share this machine's files and processes (only the network is their own), so the venv and the model
are at the same paths on every "host", as `mlx.launch` expects; a host can be given private folders (an empty tmpfs
over a folder, seen by that host's sessions only), which is how a test makes one that lacks a model. The ssh
client reads a private config through an `ssh` script put first on PATH (OpenSSH reads `~/.ssh/config` from the
passwd home, which a test must not touch).
A host can be given environment variables for every ssh session (sshd's `SetEnv`), which is how a test makes one
that runs another mlx version. Making namespaces needs root; without it `NamespacesUnavailable` says why.
"""

from __future__ import annotations

import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SSHD = "/usr/sbin/sshd"
PREFIX = "mlxg"  # every bridge, veth and namespace this module makes starts with it
READY_TIMEOUT_S = 30.0


class NamespacesUnavailable(RuntimeError):
    """This machine cannot make network namespaces with sshd in them (not root, or a tool is missing)."""


@dataclass
class Host:
    """One simulated machine: its namespace, its address, its sshd."""

    namespace: str
    address: str
    device: str = ""  # its end of the veth
    sshd: subprocess.Popen | None = None

    def pids(self) -> set[int]:
        """Every process that runs in this host's namespace (its sshd and whatever ssh started there)."""
        done = subprocess.run(["ip", "netns", "pids", self.namespace], capture_output=True, text=True, check=False)
        return {int(p) for p in done.stdout.split()}


@dataclass
class Hosts:
    """The simulated machines of one test, their ssh client config, and the PATH that uses it."""

    root: Path
    bridge: str
    gateway: str  # this machine's address on the bridge
    hosts: list[Host] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return [h.address for h in self.hosts]

    @property
    def bin_dir(self) -> Path:
        """Put first on PATH: its `ssh` reads this test's config and key."""
        return self.root / "bin"

    def ssh(self, address: str, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run `command` on a host over real ssh, as the app's `mlx.launch` would."""
        return subprocess.run([str(self.bin_dir / "ssh"), "-o", "BatchMode=yes", address, command],
                              capture_output=True, text=True, timeout=timeout, check=False)

    def limit_rate(self, address: str, rate: str | None) -> None:
        """Make what a host sends leave at `rate` ("100mbit", tc's token bucket), or as fast as it can (None): a
        slow link, so that a transfer lasts long enough to be watched however fast this machine is."""
        host = next(h for h in self.hosts if h.address == address)
        if rate is None:
            _ip_tool(["tc", "-n", host.namespace, "qdisc", "del", "dev", host.device, "root"], check=False)
        else:
            _ip_tool(["tc", "-n", host.namespace, "qdisc", "replace", "dev", host.device, "root", "tbf", "rate",
                      rate, "burst", "64kb", "latency", "400ms"])

    def leftovers(self) -> dict[str, list[str]]:
        """What runs in each namespace besides its sshd: host -> command lines (empty: nothing is left)."""
        import psutil

        found = {}
        for host in self.hosts:
            mine = {host.sshd.pid} if host.sshd else set()
            lines = []
            for pid in host.pids() - mine:
                try:
                    process = psutil.Process(pid)
                    if process.status() == psutil.STATUS_ZOMBIE:
                        continue
                    lines.append(f"{pid}: {' '.join(process.cmdline())[:200]}")
                except psutil.NoSuchProcess:
                    continue
            if lines:
                found[host.address] = lines
        return found

    def close(self) -> None:
        """Stop every process in the namespaces, then remove them, their veths and the bridge."""
        for host in self.hosts:
            for pid in host.pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
            if host.sshd is not None:
                host.sshd.wait(timeout=10)
            _ip("netns", "delete", host.namespace, check=False)
        _ip("link", "delete", self.bridge, check=False)


def make_hosts(root: Path, count: int = 3, env: dict[int, dict[str, str]] | None = None,
               private: dict[int, list[Path]] | None = None) -> Hosts:
    """`count` machines as namespaces on a bridge of their own, each with an sshd that takes this test's key;
    `env[i]` sets environment variables in every ssh session of host i, and each folder of `private[i]` is an empty
    one of host i's own there. Raises `NamespacesUnavailable`."""
    _check_possible()
    tag = secrets.token_hex(2)
    subnet = f"10.{77 + int(tag[0], 16)}.{int(tag[1:], 16) % 250}"
    hosts = Hosts(Path(root), f"{PREFIX}b{tag}", f"{subnet}.1")
    hosts.root.mkdir(parents=True, exist_ok=True)
    try:
        _ip("link", "add", hosts.bridge, "type", "bridge")
        _ip("addr", "add", f"{hosts.gateway}/24", "dev", hosts.bridge)
        _ip("link", "set", hosts.bridge, "up")
        key = _keys(hosts.root)
        known = []
        for i in range(count):
            outside, inside = f"{PREFIX}{tag}v{i}", f"{PREFIX}{tag}p{i}"
            host = Host(f"{PREFIX}{tag}h{i}", f"{subnet}.{i + 2}", inside)
            hosts.hosts.append(host)
            _ip("netns", "add", host.namespace)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.namespace)
            _ip("link", "set", outside, "master", hosts.bridge, "up")
            _ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", inside)
            _ip("-n", host.namespace, "link", "set", inside, "up")
            _ip("-n", host.namespace, "link", "set", "lo", "up")
            known.append(_start_sshd(hosts.root, host, i, (env or {}).get(i, {}), (private or {}).get(i, [])))
        (hosts.root / "known_hosts").write_text("".join(known))
        _client_config(hosts, key)
        for host in hosts.hosts:
            _wait_for_ssh(hosts, host)
    except BaseException:
        hosts.close()
        raise
    return hosts


def _check_possible() -> None:
    if os.geteuid() != 0:
        raise NamespacesUnavailable("Making network namespaces needs root (CI runs as root): run the tests as root.")
    missing = [tool for tool in ("ip", "ssh", "ssh-keygen") if shutil.which(tool) is None]
    if not Path(SSHD).exists():
        missing.append(SSHD)
    if missing:
        raise NamespacesUnavailable(f"Missing {', '.join(missing)}: install Debian's iproute2, openssh-client and "
                                    "openssh-server (the CI script does).")
    done = subprocess.run(["ip", "netns", "add", f"{PREFIX}probe{os.getpid()}"], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise NamespacesUnavailable(f"This machine refuses a network namespace: {done.stderr.strip()}")
    _ip("netns", "delete", f"{PREFIX}probe{os.getpid()}")


def _ip(*args: str, check: bool = True) -> None:
    _ip_tool(["ip", *args], check)


def _ip_tool(command: list[str], check: bool = True) -> None:
    """Run iproute2's `ip` or `tc`; a failure raises `NamespacesUnavailable` (or, without `check`, is logged)."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if check:
            raise NamespacesUnavailable(f"`{' '.join(command)}` failed: {done.stderr.strip()}")
        log.debug("%s: %s", " ".join(command), done.stderr.strip())


def _keys(root: Path) -> Path:
    """The client key every host authorizes."""
    key = root / "client_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    shutil.copyfile(key.with_suffix(".pub"), root / "authorized_keys")
    return key


def _start_sshd(root: Path, host: Host, index: int, env: dict[str, str], private: list[Path]) -> str:
    """Host `index`'s sshd in its namespace, in the foreground (so closing finds it), with a tmpfs over each
    `private` folder in the mount namespace `ip netns exec` gives it (its sessions' only); its known_hosts line."""
    host_key = root / f"host_key_{index}"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    config = root / f"sshd_config_{index}"
    lines = [f"ListenAddress {host.address}", "Port 22", f"HostKey {host_key}",
             f"AuthorizedKeysFile {root / 'authorized_keys'}", "PermitRootLogin prohibit-password",
             "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
             f"PidFile {root / f'sshd_{index}.pid'}", "MaxStartups 100", "MaxSessions 100"]
    if env:
        lines.append("SetEnv " + " ".join(f"{k}={v}" for k, v in env.items()))
    config.write_text("\n".join(lines) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder
    mounts = ""
    for folder in private:
        Path(folder).mkdir(parents=True, exist_ok=True)
        mounts += f"mount -t tmpfs {PREFIX}-private {shlex.quote(str(folder))} && "
    sshd = shlex.join([SSHD, "-D", "-e", "-f", str(config)])
    with open(root / f"sshd_{index}.log", "ab") as errors:
        host.sshd = subprocess.Popen(["ip", "netns", "exec", host.namespace, "/bin/sh", "-c", f"{mounts}exec {sshd}"],
                                     stdout=subprocess.DEVNULL, stderr=errors)
    public = host_key.with_suffix(".pub").read_text().split()
    return f"{host.address} {public[0]} {public[1]}\n"


def _client_config(hosts: Hosts, key: Path) -> None:
    config = hosts.root / "ssh_config"
    config.write_text(f"Host {' '.join(hosts.addresses)}\n  User root\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
                      f"  UserKnownHostsFile {hosts.root / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
    hosts.bin_dir.mkdir(exist_ok=True)
    wrapper = hosts.bin_dir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {config} "$@"\n')
    wrapper.chmod(0o755)


def _wait_for_ssh(hosts: Hosts, host: Host) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        done = hosts.ssh(host.address, "true", timeout=10)
        if done.returncode == 0:
            return
        if host.sshd.poll() is not None or time.monotonic() > deadline:
            raise NamespacesUnavailable(f"sshd in {host.namespace} ({host.address}) does not answer: "
                                        f"{done.stderr.strip() or 'it exited'}")
        time.sleep(0.2)
