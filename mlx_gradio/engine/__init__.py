"""The MLX thread: jobs in, events out; generation, context fitting, the reasoning split, prompt caches in memory and on disk."""
