"""The SDK against the real broker: ordering, keys, headers, strictness, gates, the spool."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from wakeline.infra.settings import KafkaSettings
from wakeline.producers import (
    Emitter,
    LoopGuard,
    ToolRegistry,
    TransportOptions,
    WorkflowQuarantined,
)
from wakeline.schemas import decode_event, encode_event, new_event_id

pytestmark = pytest.mark.integration


def read_topic(kafka: KafkaSettings, topic: str, timeout: float = 20.0) -> list:
    """Every record of `topic`, per partition in offset order (until EOF on all)."""
    consumer = Consumer(
        kafka.client_config(
            **{
                "group.id": f"test-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
    )
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    parts = sorted(meta.partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out, eof, deadline = [], set(), time.monotonic() + timeout
    while len(eof) < len(parts) and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.2):
            if msg.error() is None:
                out.append(msg)
            elif msg.error().code() == KafkaError._PARTITION_EOF:
                eof.add(msg.partition())
    consumer.close()
    return out


def events_of(kafka: KafkaSettings, workflow_id: str) -> list[dict]:
    msgs = [m for m in read_topic(kafka, kafka.topics.events) if m.key() == workflow_id.encode()]
    msgs.sort(key=lambda m: m.offset())
    return [decode_event(m.value()) for m in msgs]


@pytest.fixture
def registry() -> ToolRegistry:
    reg = ToolRegistry()
    reg.declare("kv.get", reversibility="read", impact="low")
    reg.declare("kv.put", reversibility="reversible", impact="medium", writes=("kv:{key}",))
    return reg


@pytest.fixture
def emitter(kafka: KafkaSettings, registry: ToolRegistry, tmp_path: Path):
    em = Emitter(kafka, spool_dir=tmp_path / "spool", registry=registry)
    assert em.gate is not None and em.gate.wait_ready(10)
    yield em
    em.close(timeout=10)


def new_wf() -> str:
    return f"wf-{uuid.uuid4()}"


def test_intents_and_results_land_keyed_in_order_with_headers(kafka, emitter):
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="agent-1", principal="alice")
    for i in range(20):
        tool = "kv.get" if i % 2 else "kv.put"
        ctx.call(tool, lambda key, i=i: i, {"key": f"k{i}"})
    ctx.complete_workflow("succeeded")
    assert emitter.flush(10) == 0

    msgs = [m for m in read_topic(kafka, kafka.topics.events) if m.key() == wf.encode()]
    assert len({m.partition() for m in msgs}) == 1  # one workflow, one partition
    msgs.sort(key=lambda m: m.offset())
    events = [decode_event(m.value()) for m in msgs]
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 20 + ["WorkflowCompleted"]
    for intent, result in zip(events[0:40:2], events[1:40:2], strict=True):
        assert result["intent_id"] == intent["event_id"]
        assert result["status"] == "ok"
    assert [e["args"] for e in events[0:40:2]] == [f'{{"key":"k{i}"}}' for i in range(20)]
    seal = events[-1]
    assert seal["event_count"] == 40
    assert seal["last_event_id"] == events[-2]["event_id"]
    for msg, event in zip(msgs, events, strict=True):
        headers = dict(msg.headers())
        assert headers["ce_id"] == event["event_id"].encode()
        assert headers["ce_subject"] == wf.encode()
        assert headers["ce_specversion"] == b"1.0"
        assert headers["content-type"] == b"application/avro"


def test_the_emitter_publishes_its_writer_schemas(kafka, emitter):
    from wakeline.schemas import fingerprint_of

    deadline = time.monotonic() + 20
    want = {fingerprint_of(t) for t in ("ToolIntent", "ToolResult", "WorkflowCompleted")}
    while True:
        keys = {m.key() for m in read_topic(kafka, kafka.topics.schemas)}
        if want <= keys or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert want <= keys


def test_strict_intent_is_on_the_broker_before_the_tool_runs(kafka, emitter):
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="agent-1", principal="alice")
    seen: list[list[str]] = []

    def put(key):
        # read the topic from inside the tool: the intent must already be there
        seen.append([e["type"] for e in events_of(kafka, wf)])
        return "done"

    ctx.call("kv.put", put, {"key": "a"})
    assert seen == [["ToolIntent"]]


def test_concurrent_async_strict_calls(kafka, emitter):
    workflows = [new_wf() for _ in range(16)]

    async def agent(wf: str) -> None:
        ctx = emitter.workflow(wf, agent_id=f"agent-{wf}", principal="svc")
        for i in range(25):
            await ctx.acall("kv.put", lambda key: key, {"key": f"{wf}-{i}"})

    async def main() -> None:
        await asyncio.gather(*(agent(wf) for wf in workflows))

    asyncio.run(main())
    assert emitter.flush(10) == 0
    by_key: dict[bytes, list[dict]] = {}
    for m in sorted(read_topic(kafka, kafka.topics.events), key=lambda m: m.offset()):
        by_key.setdefault(m.key(), []).append(decode_event(m.value()))
    for wf in workflows:
        events = by_key[wf.encode()]
        assert len(events) == 50
        assert [e["args"] for e in events[::2]] == [f'{{"key":"{wf}-{i}"}}' for i in range(25)]


def _quarantine_record(wf: str) -> bytes:
    return encode_event(
        dict(
            event_id=new_event_id(),
            type="Quarantine",
            time=time.time_ns() // 1000,
            source="test",
            workflow_id=wf,
            run_id="r",
            agent_id="compensator",
            principal="ops",
            scope="workflow",
            reason="runaway loop",
            by="loop-detector",
        )
    )


def test_quarantine_gate_refuses_within_a_second_and_release_lifts_it(kafka, emitter):
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="agent-1", principal="alice")
    ctx.call("kv.put", lambda key: 1, {"key": "before"})
    producer = Producer(kafka.client_config())
    producer.produce(kafka.topics.quarantines, _quarantine_record(wf), wf.encode())
    producer.flush(10)
    produced = time.monotonic()
    ran = 0
    while True:
        try:
            ctx.call("kv.put", lambda key: key, {"key": f"k{ran}"})
            ran += 1
        except WorkflowQuarantined as e:
            refused_after = time.monotonic() - produced
            intent_id = e.intent_id
            assert "runaway loop" in str(e)
            break
        assert time.monotonic() - produced < 5, "quarantine not seen within 5 s"
        time.sleep(0.01)
    assert refused_after < 1.0
    other = emitter.workflow(new_wf(), agent_id="agent-1", principal="alice")
    other.call("kv.put", lambda key: 1, {"key": "unaffected"})  # only that workflow

    producer.produce(kafka.topics.quarantines, None, wf.encode())  # tombstone = release
    producer.flush(10)
    deadline = time.monotonic() + 5
    while True:
        try:
            ctx.call("kv.put", lambda key: key, {"key": "after"})
            break
        except WorkflowQuarantined:
            assert time.monotonic() < deadline, "release not seen within 5 s"
            time.sleep(0.05)
    emitter.flush(10)
    events = events_of(kafka, wf)
    denied = [e for e in events if e["type"] == "ToolResult" and e["status"] == "denied"]
    assert denied and denied[0]["intent_id"] == intent_id
    refused_intent = next(e for e in events if e["event_id"] == intent_id)
    assert refused_intent["policy_decision"] == "deny"
    assert refused_intent["policy_reason"].startswith("quarantine")


def test_loop_guard_alert_reaches_events_and_alerts_topics(kafka, registry, tmp_path):
    em = Emitter(
        kafka,
        spool_dir=tmp_path / "spool",
        registry=registry,
        quarantine_gate=False,
        loop_guard=LoopGuard(max_repeats=3, window_s=60),
    )
    wf = new_wf()
    ctx = em.workflow(wf, agent_id="looper", principal="alice")
    refused = 0
    for _ in range(5):
        ctx.call("kv.get", lambda key: 1, {"key": "same"})  # reads are never refused
        try:
            ctx.call("kv.put", lambda key: 1, {"key": "same"})
        except Exception:  # noqa: BLE001
            refused += 1
    em.close(10)
    assert refused == 3
    alerts = [
        decode_event(m.value())
        for m in read_topic(kafka, kafka.topics.alerts)
        if m.key() == wf.encode()
    ]
    assert [(a["kind"], a["detector"]) for a in alerts] == [("runaway_loop", "repeat")]
    assert [e["type"] for e in events_of(kafka, wf)].count("Alert") == 1


def test_events_spool_while_the_broker_is_unreachable_and_arrive_exactly_once(
    kafka, registry, tmp_path
):
    """Point the SDK at a port nobody listens on: strict calls proceed once their intent is
    fsync'd into the spool. Then a new emitter on the same spool, pointed at the real
    broker, delivers every event exactly once and in order."""
    spool_dir = tmp_path / "spool"
    dead = replace(kafka, bootstrap="127.0.0.1:1")
    fast_fail = TransportOptions(strict_timeout_s=0.3, delivery_timeout_s=1.0)
    em = Emitter(
        dead, spool_dir=spool_dir, registry=registry, quarantine_gate=False, transport=fast_fail
    )
    workflows = [new_wf() for _ in range(3)]
    ran = []
    for i in range(30):
        wf = workflows[i % 3]
        ctx = em.workflow(wf, agent_id="a", principal="p", run_id="run-1")
        ctx.call("kv.put" if i % 2 else "kv.get", lambda key: ran.append(key), {"key": f"k{i}"})
    assert len(ran) == 30  # the agent was never blocked for long
    assert em.transport.spooling
    left = em.close(timeout=1)
    assert left > 0  # undelivered, but durable
    assert any(p.stat().st_size > 8 for p in spool_dir.glob("*.seg"))

    em2 = Emitter(kafka, spool_dir=spool_dir, registry=registry, quarantine_gate=False)
    assert em2.flush(30) == 0
    ctx = em2.workflow(workflows[0], agent_id="a", principal="p", run_id="run-2")
    ctx.call("kv.put", lambda key: None, {"key": "after"})
    em2.close(10)
    assert not any(p.stat().st_size > 8 for p in spool_dir.glob("*.seg"))

    for n, wf in enumerate(workflows):
        events = events_of(kafka, wf)
        ids = [e["event_id"] for e in events]
        assert len(ids) == len(set(ids)), "an event arrived twice"
        expected_keys = [f'{{"key":"k{i}"}}' for i in range(30) if i % 3 == n]
        spooled = [e for e in events if e["run_id"] == "run-1"]
        assert [e["args"] for e in spooled if e["type"] == "ToolIntent"] == expected_keys
        assert len(spooled) == 20  # 10 intents + 10 results, none lost
        if n == 0:
            assert events[-1]["run_id"] == "run-2"  # new events come after the spooled ones


def test_langchain_tools_are_audited_end_to_end(kafka, registry, emitter):
    from langchain_core.tools import tool

    from wakeline.producers.adapters.langchain import audit_tools

    @tool
    def lookup(key: str) -> str:
        """Read a value."""
        return f"value-of-{key}"

    @tool
    def store(key: str, value: str) -> str:
        """Write a value."""
        return "stored"

    registry.declare("lookup", reversibility="read", impact="low")
    registry.declare("store", reversibility="reversible", impact="medium", writes=("kv:{key}",))
    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="lc-agent", principal="alice")
    tools = {t.name: t for t in audit_tools([lookup, store], ctx)}
    assert tools["lookup"].invoke({"key": "a"}) == "value-of-a"
    assert asyncio.run(tools["store"].ainvoke({"key": "a", "value": "b"})) == "stored"
    assert emitter.flush(10) == 0
    events = events_of(kafka, wf)
    assert [(e["type"], e.get("tool")) for e in events] == [
        ("ToolIntent", "lookup"),
        ("ToolResult", None),
        ("ToolIntent", "store"),
        ("ToolResult", None),
    ]
    assert events[0]["durability"] == "relaxed"
    assert events[2]["durability"] == "strict"
    assert events[2]["resources_written"] == ["kv:a"]
    assert events[3]["intent_id"] == events[2]["event_id"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_broker(local_stack, tmp_path):
    """A broker of our own (same jars, other ports and state dir), so this test can kill and
    restart it without disturbing the shared stack."""
    from wakeline.devstack import stack
    from wakeline.infra import topics
    from wakeline.infra.settings import StackSettings, Topics

    shared_libs = local_stack.kafka_dir / "libs"
    if not (shared_libs / ".pom-sha256").exists():
        pytest.skip("the shared stack has no fetched Kafka jars to reuse")
    own = StackSettings(
        home=tmp_path / "broker",
        kafka_port=_free_port(),
        controller_port=_free_port(),
        kafka_heap="384m",
    )
    own.kafka_dir.mkdir(parents=True)
    (own.kafka_dir / "libs").symlink_to(shared_libs, target_is_directory=True)
    stack.start_kafka(own)
    kafka = KafkaSettings(bootstrap=own.bootstrap, topics=Topics("outage.wakeline."), partitions=3)
    topics.ensure_topics(kafka)
    # a fresh broker answers "coordinator load in progress" to the first idempotent
    # producers for a while: wait until one gets an acknowledgement (on the dlq topic)
    warm = Producer(
        kafka.client_config(**{"enable.idempotence": True, "acks": "all", "log_level": 0})
    )
    acked: list[bool] = []
    deadline = time.monotonic() + 60
    while not acked and time.monotonic() < deadline:
        warm.produce(kafka.topics.dlq, b"warm-up", on_delivery=lambda e, m: acked.append(e is None))
        warm.flush(10)
    del warm
    try:
        yield own, kafka
    finally:
        stack.kill_kafka(own)


@pytest.mark.slow
def test_broker_killed_mid_run_every_event_arrives_once_in_order(
    private_broker, registry, tmp_path
):
    """Calls keep going while the broker is SIGKILLed and restarted: strict calls proceed
    once their intent is in the spool, and afterwards every event is on the topic, in each
    workflow's order; duplicates (an unacknowledged send that did land) share an event id."""
    from wakeline.devstack import stack

    own, kafka = private_broker
    em = Emitter(
        kafka,
        spool_dir=tmp_path / "spool",
        registry=registry,
        quarantine_gate=False,
        publish_schemas=False,
        transport=TransportOptions(
            strict_timeout_s=2.0, delivery_timeout_s=3.0, drain_interval_s=0.2
        ),
    )
    workflows = [new_wf() for _ in range(3)]
    contexts = [
        em.workflow(wf, agent_id=f"agent-{n}", principal="p") for n, wf in enumerate(workflows)
    ]
    calls = {wf: 0 for wf in workflows}

    def run(n: int) -> None:
        for i in range(n):
            ctx = contexts[i % 3]
            k = calls[ctx.workflow_id]
            calls[ctx.workflow_id] += 1
            ctx.call("kv.put" if k % 2 else "kv.get", lambda key: key, {"key": f"{k}"})

    run(60)
    assert em.flush(30) == 0
    direct = em.transport.delivered - em.transport.drained
    assert direct > 0  # the first part went straight to the broker
    stack.kill_kafka(own)
    run(60)  # broker gone: intents time out into the spool, then spool directly
    assert em.transport.spooling
    stack.start_kafka(own)
    run(60)
    seals = {ctx.workflow_id: ctx.complete_workflow() for ctx in contexts}
    assert em.flush(90) == 0
    em.close(10)

    msgs = [m for m in read_topic(kafka, kafka.topics.events, timeout=60)]
    assert em.transport.spooled > 0
    for ctx in contexts:
        wf = ctx.workflow_id
        mine = sorted((m for m in msgs if m.key() == wf.encode()), key=lambda m: m.offset())
        first: dict[str, dict] = {}
        for m in mine:
            e = decode_event(m.value())
            first.setdefault(e["event_id"], e)
        events = list(first.values())  # deduplicated by event id, first occurrence kept
        assert events[-1]["event_id"] == seals[wf]
        assert events[-1]["event_count"] == len(events) - 1 == 2 * calls[wf]
        intents = [e for e in events if e["type"] == "ToolIntent"]
        assert [e["args"] for e in intents] == [f'{{"key":"{k}"}}' for k in range(calls[wf])]
        results = {e["intent_id"] for e in events if e["type"] == "ToolResult"}
        assert results == {e["event_id"] for e in intents}


def test_a_redacted_canary_reaches_no_broker_log_segment(kafka, emitter, registry, local_stack):
    """A tool fails quoting its redacted card number: the error is recorded, the number is in
    no record of any topic and in no file of the broker's data directory."""
    import secrets

    card = "4" + "".join(secrets.choice("0123456789") for _ in range(15))
    spaced = " ".join(card[i : i + 4] for i in range(0, 16, 4))
    marker = f"visible-{uuid.uuid4().hex}"
    registry.declare(
        "card.charge",
        reversibility="compensable",
        impact="high",
        redact={"card_number"},
        writes=("order:{order}",),
        summarise=lambda r: f"charged {r}",
    )

    def declined(card_number: int, order: str) -> None:
        raise ValueError(f"card {spaced} was declined for {order}") from KeyError(card_number)

    wf = new_wf()
    ctx = emitter.workflow(wf, agent_id="agent-1", principal="alice")
    with pytest.raises(ValueError):
        ctx.call("card.charge", declined, {"card_number": int(card), "order": marker})
    ctx.call("card.charge", lambda card_number, order: card, {"card_number": card, "order": "o2"})
    ctx.complete_workflow("failed")
    assert emitter.flush(10) == 0

    events = events_of(kafka, wf)
    assert [e["status"] for e in events if e["type"] == "ToolResult"] == ["error", "ok"]
    assert events[1]["error_message"] == f"card [REDACTED] was declined for {marker}"
    assert events[3]["result_summary"] == "charged [REDACTED]"
    data = local_stack.home / "kafka" / "data"
    prefix = kafka.topics.events.split("-")[0]
    segments = [p for p in data.glob(f"{prefix}*/*.log") if p.stat().st_size]
    assert segments, f"no log segment of {prefix} under {data}"
    blob = b"".join(p.read_bytes() for p in segments)
    assert marker.encode() in blob  # the grep can see what the broker stored
    # other tests delete their topics meanwhile: directories and files vanish under the walk
    for root, _, names in os.walk(data, onerror=lambda _e: None):
        path = Path(root)
        try:
            content = b"".join((path / n).read_bytes() for n in names)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            continue
        for secret in (card, spaced, "-".join(spaced.split())):
            assert secret.encode() not in content, f"{secret} in {path}"
