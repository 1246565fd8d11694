"""API: the user-facing surface — the `appliance` CLI now, the Falcon WSGI app next."""
