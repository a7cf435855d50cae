"""The app's own OpenAI-compatible API, served from the engine the chat uses, on a port of its own."""
