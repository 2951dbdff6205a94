"""A real Emitter with a transport that records frames instead of producing (no broker)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.producers import Emitter, LoopGuard, ToolRegistry
from wakeline.schemas import decode_event


class Recorder:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, bytes, list[tuple[str, bytes]], bool]] = []
        self.on_send = None

    def send(self, topic, key, value, headers, *, wait):  # noqa: ANN001
        self.records.append((topic, key, value, list(headers), wait))
        if self.on_send is not None:
            self.on_send(topic, value)

    async def send_async(self, topic, key, value, headers, *, wait):  # noqa: ANN001
        self.send(topic, key, value, headers, wait=wait)

    def flush(self, timeout: float = 30.0) -> int:
        return 0

    def close(self, timeout: float = 30.0) -> int:
        return 0

    def events(self, topic_suffix: str = "events") -> list[dict]:
        return [decode_event(v) for t, _, v, _, _ in self.records if t.endswith(topic_suffix)]


@pytest.fixture
def registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.declare("kv.get", reversibility="read", impact="low", reads=("kv:{key}",))
    reg.declare(
        "kv.put",
        reversibility="reversible",
        impact="medium",
        writes=("kv:{key}",),
        compensation="kv.restore",
    )
    reg.declare(
        "pay",
        reversibility="irreversible",
        impact="high",
        redact={"card.cvc"},
        digest_only={"card.number", "api_key"},
    )
    return reg


@pytest.fixture
def recorded(tmp_path: Path, registry: ToolRegistry) -> Iterator[tuple[Emitter, Recorder]]:
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("unit."))
    rec = Recorder()
    emitter = Emitter(
        kafka,
        spool_dir=tmp_path / "spool",
        registry=registry,
        quarantine_gate=False,
        publish_schemas=False,
        loop_guard=LoopGuard(max_repeats=3, window_s=60),
        transport=rec,  # a Transport: no broker, no producer
    )
    yield emitter, rec
    emitter.close(timeout=1)
