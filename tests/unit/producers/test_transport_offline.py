"""The transport with no broker at all: events must end up durable in the spool, in order."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from wakeline.errors import ConfigError
from wakeline.infra.settings import PARTITIONER, KafkaSettings, Topics
from wakeline.producers import Emitter, Spool, ToolRegistry, TransportOptions
from wakeline.schemas import decode_event

NOBODY = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("offline."))


def test_without_a_broker_calls_proceed_and_every_event_is_spooled_in_order(tmp_path: Path):
    reg = ToolRegistry()
    reg.declare("w", reversibility="compensable", impact="low")
    reg.declare("r", reversibility="read", impact="low")
    em = Emitter(
        NOBODY,
        spool_dir=tmp_path,
        registry=reg,
        quarantine_gate=False,
        publish_schemas=False,
        transport=TransportOptions(strict_timeout_s=0.2, delivery_timeout_s=0.5),
    )
    ctx = em.workflow("wf-off", agent_id="a", principal="p")
    started = time.monotonic()
    ran = []
    for i in range(10):
        ctx.call("w" if i % 2 == 0 else "r", lambda i: ran.append(i), {"i": i})
    assert ran == list(range(10))
    assert time.monotonic() - started < 3  # only the first strict call waited
    ctx.complete_workflow()
    assert em.close(timeout=0.5) > 0

    spool = Spool(tmp_path)
    events = [decode_event(r.value) for r in spool.read()]
    spool.close()
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 10 + ["WorkflowCompleted"]
    assert [e["args"] for e in events[:20:2]] == [f'{{"i":{i}}}' for i in range(10)]
    assert events[-1]["event_count"] == 20
    assert len({e["event_id"] for e in events}) == 21


def test_a_restarted_emitter_keeps_spooled_events_ahead_of_new_ones(tmp_path: Path):
    reg = ToolRegistry()
    reg.declare("w", reversibility="compensable", impact="low")
    opts = TransportOptions(strict_timeout_s=0.2, delivery_timeout_s=0.5)
    em = Emitter(
        NOBODY,
        spool_dir=tmp_path,
        registry=reg,
        quarantine_gate=False,
        publish_schemas=False,
        transport=opts,
    )
    em.workflow("wf", agent_id="a", principal="p").call("w", lambda: None)
    em.close(timeout=0.2)
    em2 = Emitter(
        NOBODY,
        spool_dir=tmp_path,
        registry=reg,
        quarantine_gate=False,
        publish_schemas=False,
        transport=opts,
    )
    assert em2.transport.spooling  # starts spooling: older events wait in the spool
    em2.workflow("wf", agent_id="a", principal="p").call("w", lambda: None)
    em2.close(timeout=0.2)
    spool = Spool(tmp_path)
    records = spool.read()
    spool.close()
    assert len(records) == 4
    assert [r.seq for r in records] == sorted(r.seq for r in records)
    first, second = records[0], records[2]
    assert decode_event(first.value)["time"] < decode_event(second.value)["time"]


def test_a_spool_only_emitter_writes_every_event_to_the_spool_and_never_to_a_broker(
    tmp_path: Path,
):
    reg = ToolRegistry()
    reg.declare("w", reversibility="compensable", impact="low")
    em = Emitter(
        NOBODY,
        spool_dir=tmp_path,
        registry=reg,
        quarantine_gate=False,
        publish_schemas=False,
        spool_only=True,
    )
    ctx = em.workflow("wf-spool", agent_id="a", principal="p")
    for i in range(3):
        ctx.call("w", lambda i: i, {"i": i})
    ctx.complete_workflow()
    assert em.flush() == 7
    assert em.close() == 7
    spool = Spool(tmp_path)
    events = [decode_event(r.value) for r in spool.read()]
    spool.close()
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 3 + ["WorkflowCompleted"]
    again = Emitter(NOBODY, spool_dir=tmp_path, quarantine_gate=False, publish_schemas=False)
    assert again.transport.spooling  # a Kafka transport on the same spool sends them first
    again.close(timeout=0.2)


def test_the_sdk_pins_the_partitioner_every_wakeline_producer_uses(tmp_path: Path) -> None:
    """A workflow's events must share a partition whoever writes them: the SDK does not rely
    on librdkafka's default partitioner, and refuses one that places keys differently."""
    em = Emitter(NOBODY, spool_dir=tmp_path, quarantine_gate=False, publish_schemas=False)
    try:
        assert em.transport._conf["partitioner"] == PARTITIONER == "consistent_random"  # type: ignore[attr-defined]
    finally:
        em.close(timeout=0.1)
    murmur = TransportOptions(producer_config={"partitioner": "murmur2_random"})
    with pytest.raises(ConfigError, match="murmur2_random.*consistent_random"):
        Emitter(NOBODY, spool_dir=tmp_path / "m", publish_schemas=False, transport=murmur)
    extra = KafkaSettings(bootstrap="127.0.0.1:1", extra={"partitioner": "random"})
    with pytest.raises(ConfigError, match="'random'"):
        extra.producer_config()
