"""The WSGI entry point gunicorn loads in each worker: `api.server.wsgi:application`.

Importing this module is cheap: settings come from APPLIANCE_* environment variables (the
`appliance serve` command sets them), the app is created at once, and the engines load on a
background thread, after the worker has forked. Until they are loaded and warm, `/health`
and every model route answer 503 with the reason. The worker's batch runner starts with it
(it takes batches once the engines are ready, and stops when the worker drains).
"""

from __future__ import annotations

from api.auth import describe
from api.server.assemble import assemble, configure_logging
from api.settings import ServerSettings

configure_logging()

settings = ServerSettings.from_env()
server = assemble(settings)
context = server.context
application = server.application
context.log.info("%s", describe(settings, context.auth))
server.load_in_background()
batches = server.run_batches()
