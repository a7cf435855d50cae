"""The Gradio interface: one module per tab, assembled in blocks.py. Wiring only, no logic."""
