"""The `appliance` command: `pull`, `export`, `verify` and `serve`, glue over export/, runtime/ and api/.

It lives outside `api/` because it is the one module that spans all three packages; `api/`
itself never imports `export/`.
"""
