"""MLX's own `mlx.launch`, run without its idle spin: `python mlx_launch.py <mlx.launch's arguments>`.

`mlx.launch` forwards its stdin to every rank, and its loops wait with `select()`: each rank's thread waits on the
rank's stdin pipe being writable (it always is, so that thread never sleeps), and the main loop on its own stdin
(which, at /dev/null, is always readable). Idle, it burns most of a core for as long as the job runs (measured
here: 63 % of a core for two ranks with stdin a pipe, 75 % with /dev/null), which on a machine whose cores run the
ranks slows every token. Nothing is ever written to a server's ranks, so this runs `mlx.launch`'s own `main()` with
its stdin a pipe that never has input (nor ends, even after the app quits), and its `select()` not asked to wait
for the ranks' stdin. Everything else is MLX's launcher as it ships.

Run as a script (it imports only mlx), never imported by the app.
"""

from __future__ import annotations

import os
import select
import sys


def _select_reads(rlist: list, wlist: list, xlist: list, timeout: float | None = None) -> tuple[list, list, list]:
    """`select()` for reads only: the ranks' stdin is never written to, so waiting for it to be writable is a spin."""
    readable, _, errors = select.select(rlist, [], xlist, timeout)
    return readable, [], errors


def main() -> None:
    from mlx._distributed_utils import launch

    read_end, _keep_open = os.pipe()  # the write end stays open in this process: stdin never has input, nor ends
    os.dup2(read_end, sys.stdin.fileno())
    launch.select = _select_reads
    sys.argv[0] = "mlx.launch"
    launch.main()


if __name__ == "__main__":
    main()
