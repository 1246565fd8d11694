"""The Falcon app over fake engines, with a fixed clock and ids so transcripts are byte-exact."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import falcon.testing
import pytest

from api.app import create_app
from api.auth import load_api_keys
from api.context import ServerContext
from api.models.registry import ModelRegistry
from api.response_store import ResponseStore
from api.settings import ServerSettings
from tests.api.fakes import FakeGenerator, fake_models

FIXED_TIME = 1_750_000_000.25


def make_context(generator: FakeGenerator | None = None, registry: ModelRegistry | None = None, **settings: object) -> ServerContext:
    counter = itertools.count(1)
    server_settings = ServerSettings(**settings)
    return ServerContext(
        registry or ModelRegistry.of(fake_models(generator)),
        server_settings,
        auth=load_api_keys(server_settings),
        clock=lambda: FIXED_TIME,
        responses=ResponseStore(clock=lambda: FIXED_TIME),
        new_id=lambda prefix: f"{prefix}{next(counter):04d}",
    )


@pytest.fixture
def make_client() -> Callable[..., falcon.testing.TestClient]:
    def make(generator: FakeGenerator | None = None, **settings: object) -> falcon.testing.TestClient:
        client = falcon.testing.TestClient(create_app(make_context(generator, **settings)))
        client.generator = generator
        return client

    return make


@pytest.fixture
def client(make_client) -> falcon.testing.TestClient:
    return make_client(FakeGenerator())
