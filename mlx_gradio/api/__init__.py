"""The app's own OpenAI- and Anthropic-compatible API, served from the engine the chat uses, on a port of its own."""
