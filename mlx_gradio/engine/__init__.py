"""The MLX thread: jobs in, events out; generation, context fitting, reasoning split, prompt caches (memory, disk)."""
