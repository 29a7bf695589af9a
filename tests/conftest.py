"""Shared fixtures: a cache directory per test, a movable clock, a loopback HTTP server."""

from __future__ import annotations

import pytest

from loopback import LoopbackServer


class FakeClock:
    """Epoch seconds that only move when a test says so."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def http_server():
    server = LoopbackServer().start()
    yield server
    server.stop()


# A real PostgreSQL server (session) and a fresh database per test: tests/pg_server.py.
from pg_server import pg_url, postgres_server  # noqa: E402,F401
