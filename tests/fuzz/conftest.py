"""The fuzz suite's budget: a bounded number of examples under `make test`, more for a soak.

Every fuzz property in this folder uses the same budget, read from the environment variable
FUZZ_EXAMPLES (default 200 per property):

    from .conftest import examples, fuzz_settings

    @fuzz_settings()              # hypothesis: examples() examples, no deadline
    @given(...)
    def test_something(...): ...

    for _ in range(examples()):   # a loop of your own (e.g. records sent to a live worker)
        ...

``fuzz_settings(scale=0.1)`` runs a tenth of the budget, for properties that cost more per
example. A soak: ``FUZZ_EXAMPLES=20000 .venv/bin/pytest tests/fuzz``.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

ENV = "FUZZ_EXAMPLES"
DEFAULT_EXAMPLES = 200


def examples(default: int = DEFAULT_EXAMPLES) -> int:
    """The number of examples per fuzz property: FUZZ_EXAMPLES, else `default`."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return default
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if count < 1:
        raise pytest.UsageError(f"{ENV}={raw!r}: want a positive whole number of examples")
    return count


def fuzz_settings(scale: float = 1.0, **overrides: object) -> settings:
    """Hypothesis settings for a fuzz property: the budget times `scale`, no deadline (the
    machine is shared: time is never asserted), and no health check that fails slow input."""
    options: dict[str, object] = {
        "max_examples": max(1, round(examples() * scale)),
        "deadline": None,
        "suppress_health_check": [
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    }
    options.update(overrides)
    return settings(**options)  # type: ignore[arg-type]


@pytest.fixture
def fuzz_examples() -> int:
    """examples(), as a fixture."""
    return examples()


def pytest_report_header() -> str:
    return f"fuzz: {examples()} examples per property ({ENV})"
