"""The real server on the default engines, started once for every module that talks to it."""

from __future__ import annotations

from pathlib import Path

import ollama
import openai
import pytest

from tests.integration.server import Server


@pytest.fixture(scope="session")
def server(default_engines: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """`appliance serve` (gunicorn) on the int4 decoder and the encoder, as `make serve` runs them."""
    running = Server(default_engines["int4"].parent, tmp_path_factory.mktemp("server") / "server.log", "--threads", "4")
    yield running
    assert running.stop() == 0, running.log()


@pytest.fixture(scope="session")
def oai(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def olm(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the files tests saved for people to look at (`record_property("artifact", ...)`), e.g. the chat page's screenshots."""
    lines = [
        f"{report.nodeid}: {value}"
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "artifact"
    ]
    if lines:
        terminalreporter.write_sep("-", "test artifacts")
        for line in lines:
            terminalreporter.write_line(line)
