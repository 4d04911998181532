"""The HTTP proxy: composes `pricing` and `policies` behind OpenAI- and Anthropic-compatible endpoints."""
