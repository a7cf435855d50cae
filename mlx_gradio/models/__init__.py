"""The models on this machine: local folders, the demo model, GGUF import and sources, the HF cache, fit and memory."""
