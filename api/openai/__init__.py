"""OpenAI's API under /v1: bodies.py and response_bodies.py (the wire structs), protocol.py
(chat and completions: bodies → runtime requests, events → SSE chunks), responses.py (the
Responses API over the same chat path), routes.py (the Falcon resources). It may import the api
root, generation/, tools/ and models/; never another dialect or a host."""
