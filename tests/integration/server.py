"""A real `appliance serve` (gunicorn) on a free loopback port, for integration tests.

The server runs as a child process and is always stopped: SIGTERM first (gunicorn drains),
SIGKILL if it is still there after the grace period.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`appliance serve --engines DIR` on 127.0.0.1:<free port>; `url` once healthy."""

    def __init__(self, engines: Path, log: Path, *args: str, startup_timeout: float = 180) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        command = [sys.executable, "-m", "appliance", "serve", "--engines", str(engines), "--port", str(self.port), *args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self._log = open(log, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.workers = int(args[args.index("--workers") + 1]) if "--workers" in args else 1
        self._wait_healthy(startup_timeout)

    def _wait_healthy(self, timeout: float) -> None:
        """Until every worker has answered /health with 200.

        The first workers accept connections while they load (and answer 503 "starting"), so one
        worker's 200 says nothing of the others: each probe is a new connection, which any worker
        may accept, and the server is up once `workers` distinct pids have answered healthy.
        """
        deadline = time.monotonic() + timeout
        healthy: set[int] = set()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.log()}")
            try:
                answer = httpx.get(f"{self.url}/health", timeout=2)
                if answer.status_code == 200:
                    healthy.add(answer.json().get("pid", 0))  # Ray's gathered /health has one per replica
                    if len(healthy) >= self.workers:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.25 if not healthy else 0.05)  # once one worker is up, probe often for the others
        self.stop()
        raise RuntimeError(f"the server was not healthy within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-5000:]

    def terminate(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 40) -> int:
        self.terminate()
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()
        return self.process.returncode


def wait_for(condition, timeout: float, what: str):
    """`condition()`'s first truthy value, polled every 50 ms; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")
