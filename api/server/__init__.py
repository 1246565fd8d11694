"""The gunicorn host: assemble.py builds a server (context, registry, app) from its settings,
wsgi.py is the entry point each worker loads, gunicorn_conf.py the configuration the CLI hands
gunicorn. It may import anything in api/ but scaleout/; only the CLI and the Ray host (for
assemble) import it."""
