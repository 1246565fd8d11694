"""gunicorn configuration of the appliance: `gunicorn -c python:api.server.gunicorn_conf`.

Settings come from APPLIANCE_* environment variables (see api/settings.py); `appliance
serve` sets them. Workers are gthread workers: one process per worker, each with its own
engines loaded after the fork (never in the master), and `threads` request threads.

SIGTERM drains: gunicorn stops accepting connections and gives in-flight requests
`drain_timeout_s` to finish; our hook also marks the app as draining, so a request that
still arrives on a kept-alive connection gets a 503 rather than starting new work.

A worker that dies (killed, out of memory) is replaced by gunicorn's master. The replacement
loads its engines before it accepts connections, so while it loads the other workers keep
serving instead of it answering 503s; the first workers of a start accept at once and
answer /health with "loading" meanwhile.

The master refuses to start with API keys it cannot read, or open (no keys) beyond loopback.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile

from api.auth import ApiKeyError, exposure_problem, load_api_keys
from api.batches.store import FILES_DIR_ENDS_WITH_SERVER
from api.settings import ServerSettings

_settings = ServerSettings.from_env()
try:
    _problem = exposure_problem(_settings, load_api_keys(_settings))
except ApiKeyError as exc:
    _problem = str(exc)
if _problem:
    raise SystemExit(f"appliance: error: {_problem}")

wsgi_app = "api.server.wsgi:application"
bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.workers
worker_class = "gthread"
threads = _settings.threads
graceful_timeout = math.ceil(_settings.drain_timeout_s)  # gunicorn takes whole seconds
keepalive = math.ceil(_settings.keepalive_s)
# A gthread worker's main loop reports to the master even while requests run: this only
# catches a worker that hangs outright. Engine loading runs on a thread, so it never counts.
timeout = 60
preload_app = False
# gunicorn 27 opens a control socket at one fixed path per user; several servers on a box would
# fight over it, and nothing here uses it.
control_socket_disable = True
accesslog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms'
errorlog = "-"
loglevel = "info"

# Metrics of all workers are summed by prometheus_client's multiprocess mode, which must be
# switched on before any worker imports it.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="appliance-metrics-")
    _own_metrics_dir = True
else:
    _own_metrics_dir = False


# Stored responses (Responses API) live in one SQLite file all workers share; without one
# named, a private folder for this server's lifetime holds it.
if not _settings.response_store:
    _own_response_dir = tempfile.mkdtemp(prefix="appliance-responses-")
    os.environ["APPLIANCE_RESPONSE_STORE"] = os.path.join(_own_response_dir, "responses.sqlite")
else:
    _own_response_dir = ""


# Files and batches (Files and Batch APIs) live in one folder all workers share; without one
# named, a private folder for this server's lifetime holds them (its batches end with it).
if not _settings.files_dir:
    _own_files_dir = tempfile.mkdtemp(prefix="appliance-files-")
    os.environ["APPLIANCE_FILES_DIR"] = _own_files_dir
    os.environ[FILES_DIR_ENDS_WITH_SERVER] = "1"
else:
    _own_files_dir = ""


# Set in the master once a worker has exited: workers forked after that are replacements.
_replacing = False


def post_worker_init(worker) -> None:
    """Wrap the worker's SIGTERM handler: mark the app draining, then let gunicorn drain.

    A replacement worker first waits for its engines (telling the master it is alive).
    """
    from api.server import wsgi

    if _replacing:
        registry = wsgi.context.registry
        wsgi.context.log.info("replacement worker: loading the engines before accepting connections")
        while not registry.wait(timeout=1.0) and registry.state == "loading":
            worker.notify()

    graceful_exit = worker.handle_exit

    def drain(sig, frame) -> None:
        wsgi.context.draining = True
        graceful_exit(sig, frame)

    signal.signal(signal.SIGTERM, drain)


def child_exit(server, worker) -> None:
    global _replacing
    _replacing = True
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if _own_metrics_dir:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    if _own_response_dir:
        shutil.rmtree(_own_response_dir, ignore_errors=True)
    if _own_files_dir:
        shutil.rmtree(_own_files_dir, ignore_errors=True)
