"""Test doubles that tests and benchmarks build: a local Hub and tiny random-weight models (never imported by the app)."""
