"""Ollama's API under /api: bodies.py (its request and answer structs), protocol.py (bodies →
runtime requests, events → NDJSON lines, keep_alive), routes.py (the Falcon resources; generate
and chat share one path). It may import the api root, generation/, tools/ and models/; never
another dialect or a host."""
