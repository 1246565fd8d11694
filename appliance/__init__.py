"""The `appliance` command: `pull`, `export`, `verify` and `serve`, glue over export/, runtime/ and api/.

It lives outside `api/` because it is the one package that may import all three (`api/` itself
never imports `export/`); its parser imports none of the heavy libraries, so `--help` is quick.
"""
