"""Serving models to other programs: server profiles, supervised servers, replies from OpenAI-compatible endpoints."""
