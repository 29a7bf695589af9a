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


def pytest_addoption(parser):
    parser.addoption(
        "--stress-minutes",
        type=float,
        default=None,
        help="run the load of tests/test_stress.py for this many minutes (default: a CI run of about 13 s)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "stress: the multi-process stress test with a history checker (tests/test_stress.py)")


# A real PostgreSQL server (session) and a fresh database per test: tests/pg_server.py.
from pg_server import disk_config, pg_url, postgres_server  # noqa: E402,F401
