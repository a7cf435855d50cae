"""What this machine offers a model: the memory MLX may use."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MachineMemory:
    """Bytes a model may use here: `limit` is the most MLX should take, `available` what is free now."""

    total: int
    available: int
    limit: int
    source: str  # where `limit` comes from


def machine_memory() -> MachineMemory:
    """MLX's recommended working set on Apple Silicon; elsewhere psutil's total and available memory."""
    import psutil

    memory = psutil.virtual_memory()
    try:
        import mlx.core as mx

        working_set = int(mx.device_info().get("max_recommended_working_set_size", 0))
    except (ImportError, AttributeError, RuntimeError) as exc:
        log.debug("MLX device info unavailable: %s", exc)
        working_set = 0
    if working_set:
        return MachineMemory(memory.total, memory.available, working_set, "MLX's recommended working set")
    return MachineMemory(memory.total, memory.available, memory.total, "this machine's memory")
