"""The ranks of a distributed server as `mlx.launch` reports them: which one died first, on which host, how."""

from __future__ import annotations

import re
import signal

from .distributed_plan import parse_hosts

# mlx.launch's own line for each rank that ended, the first to die first ("[WARN] Node with rank 1 exited with
# code -9"), the others as it stopped them.
RANK_EXIT = re.compile(r"Node with rank (\d+) exited with code (-?\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def dead_rank(log_text: str, hosts_text: str) -> str | None:
    """"rank 1 on 10.0.0.2 was killed by SIGKILL": the first rank `mlx.launch` saw end, None if it named none."""
    found = RANK_EXIT.search(ANSI.sub("", log_text))
    if found is None:
        return None
    rank, code = int(found.group(1)), int(found.group(2))
    hosts = parse_hosts(hosts_text)
    host = hosts[rank] if rank < len(hosts) else "an unknown host"
    if code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    return f"rank {rank} on {host} {how}"
