"""API: the user-facing surface — the `appliance` CLI and the Falcon WSGI app (OpenAI, Ollama, extras)."""

from importlib import metadata

try:
    __version__ = metadata.version("appliance")
except metadata.PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
