"""The approvals tests' fixtures: one `Approvals` following the session's topics for the
module, a `World` (kit.py) and an emitter per test, and followers of a workflow's events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings
from wakeline.producers import Emitter
from wakeline.producers.approvals import Approvals

from .kit import Approver, Events, World, make_emitter


@pytest.fixture(scope="module")
def approvals(kafka: KafkaSettings) -> Iterator[Approvals]:
    a = Approvals(kafka, poll_interval_s=0.02)
    assert a.wait_ready(20), "the approvals and grants readers did not catch up"
    yield a
    a.close()


@pytest.fixture
def world(kafka: KafkaSettings, approvals: Approvals) -> World:
    return World(kafka, approvals, Approver("alice@example.com"), Approver("bob@example.com"),
                 Approver("mallory@example.com"))  # fmt: skip


@pytest.fixture
def emitter(world: World, tmp_path: Path) -> Iterator[Emitter]:
    em = make_emitter(world, tmp_path / "spool")
    yield em
    em.close(timeout=10)


@pytest.fixture
def follow(kafka: KafkaSettings) -> Iterator[Callable[[str], Events]]:
    opened: list[Events] = []

    def make(workflow_id: str) -> Events:
        ev = Events(kafka, workflow_id)
        opened.append(ev)
        return ev

    yield make
    for ev in opened:
        ev.close()
