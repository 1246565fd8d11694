"""API: the Falcon WSGI app that serves engines as OpenAI and Ollama drop-ins, and its two hosts.

At this root, what every route shares: the app and its routes table (app.py), the per-server
context (context.py), settings, errors, the wire types and framing (JSON, SSE, NDJSON),
metrics, API keys, CORS, the OpenAPI document (openapi/) and the Responses API's store.
Below it, one folder per concern:

    openai/ ollama/ extras/   the dialects: bodies.py (typed wire structs), protocol.py, routes.py
    generation/               the dialect-neutral request path: fields, grammars, FIM, runs
    tools/                    tool calling: the plan (prompt + grammar), streamed readers
    models/                   what is served: registry, loader, keep_alive, pulls, delete/copy
    server/                   the gunicorn host          scaleout/  the Ray Serve host
    ui/                       the chat page and its static files

It may import runtime/ (the engines) and never export/ or onnxruntime; dialects never import
each other or a host, and nothing but a host imports one (tests/unit/test_layering.py).
The CLI that starts it is appliance/cli.py.
"""

from importlib import metadata

try:
    __version__ = metadata.version("appliance")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
