"""The example outside world on a fresh database per test (the `fresh_dsn` fixture)."""

from __future__ import annotations

import pytest

try:
    from wakeline_world import World
except ImportError as e:  # pragma: no cover - a venv made before examples/world existed
    raise ImportError(
        "wakeline_world is not installed: run `make venv` (or "
        "`.venv/bin/pip install -e examples/world`)"
    ) from e


@pytest.fixture
def world(fresh_dsn: str) -> World:
    return World(fresh_dsn).install()
