"""Test doubles that tests and benchmarks build: a local Hub, tiny random-weight models (never imported by the app)."""
