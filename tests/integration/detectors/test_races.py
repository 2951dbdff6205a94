"""The race detector against the real stack: two resource keyers and two detectors share the
partitions (processors/races.py), agents act on the example world's CRM through the SDK."""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from wakeline.infra.detection import DetectionRules
from wakeline.infra.settings import KafkaSettings
from wakeline.processors.races import race_runners
from wakeline.processors.stream import KafkaRunner
from wakeline.producers import Emitter
from wakeline.producers.workflow import WorkflowContext
from wakeline.schemas import decode_event
from wakeline.testkit.harness import read_topic, wait_until
from wakeline_world import World
from wakeline_world import tools as world_tools

pytestmark = pytest.mark.integration


@pytest.fixture
def world(fresh_dsn: str) -> World:
    return World(fresh_dsn).install()


@pytest.fixture
def emitter(fresh_kafka: KafkaSettings, tmp_path: Path) -> Iterator[Emitter]:
    em = Emitter(
        fresh_kafka, spool_dir=tmp_path / "spool", registry=world_tools.registry(),
        loop_guard=False,
    )  # fmt: skip
    assert em.gate is not None and em.gate.wait_ready(15)
    yield em
    em.close(timeout=10)


@pytest.fixture
def detectors(fresh_kafka: KafkaSettings) -> Iterator[list[KafkaRunner]]:
    """Two workers' worth: two keyers sharing `<prefix>events`, two detectors sharing
    `<prefix>resources`, each started once the one before holds partitions."""
    runners = race_runners(fresh_kafka, DetectionRules()) + race_runners(
        fresh_kafka, DetectionRules()
    )
    for r in runners:
        r.start()
    try:
        n = fresh_kafka.partitions
        for pair in (runners[0::2], runners[1::2]):  # the keyers, the detectors
            wait_until(
                lambda pair=pair: all(r._assigned for r in pair)
                and sorted(p for r in pair for p in r._assigned) == list(range(n)),
                60, f"two {pair[0].processor.name}s sharing the partitions",
            )  # fmt: skip
        yield runners
    finally:
        for r in runners:
            r.stop()
        for r in runners:
            assert r.failure is None, r.failure


def one_per_keyer(kafka: KafkaSettings, runners: list[KafkaRunner]) -> list[str]:
    """A workflow id on a partition of each keyer (librdkafka puts a key on CRC-32(key) mod
    partitions), so the two keyers each see one workflow's calls."""
    out = []
    for keyer in runners[0::2]:
        while True:
            wf = f"wf-{uuid.uuid4()}"
            if zlib.crc32(wf.encode()) % kafka.partitions in keyer._assigned:
                out.append(wf)
                break
    return out


def race_alerts(kafka: KafkaSettings, topic: str) -> list[dict[str, Any]]:
    out = []
    for m in read_topic(kafka, topic, idle=0.5):
        e = decode_event(m.value())
        if e["type"] == "Alert" and e["kind"] == "race":
            out.append(e)
    return out


def explain(kafka: KafkaSettings, runners: list[KafkaRunner]) -> str:
    lines = [f"{m.partition()}/{m.offset()} {m.key()!r} {m.value()!r}"
             for m in read_topic(kafka, kafka.topics.resources, idle=0.5)]  # fmt: skip
    for r in runners:
        p = r.processor
        lines.append(f"{p.name}: assigned {sorted(r._assigned)} done {r._done} "
                     f"live from {p.live_from} state {getattr(p, '_keys', '-')}")  # type: ignore[attr-defined]  # fmt: skip
    return "\n".join(lines)


def update(ctx: WorkflowContext, world: World, record: str, **options: Any) -> Any:
    """`crm.update` begun and run on the world: (the call, its response), the result not yet
    sent (`call.ok(response)` sends it)."""
    args = {"record_id": record, "fields": {"by": ctx.agent_id},
            "idempotency_key": f"{ctx.agent_id}/{uuid.uuid4()}"}  # fmt: skip
    call = ctx.begin("crm.update", args, **options)
    return call, world.crm.update(**call.args)


def test_concurrent_crm_updates_race_and_causally_ordered_ones_do_not(
    fresh_kafka: KafkaSettings, world: World, emitter: Emitter, detectors: list[KafkaRunner]
) -> None:
    wf_a, wf_b = one_per_keyer(fresh_kafka, detectors)
    a = emitter.workflow(wf_a, agent_id="crm-sync", principal="ops@example.com")
    b = emitter.workflow(wf_b, agent_id="support-bot", principal="ops@example.com")
    record = f"rec_{uuid.uuid4().hex[:8]}"
    # first the look-alike: b's update descends from a's finished one
    call, got = update(a, world, record)
    done = call.ok(got)
    call, got = update(b, world, record, parents=[done])
    call.ok(got)
    # then a race: both begin before either finishes, nothing links them
    call_a, got_a = update(a, world, record)
    call_b, got_b = update(b, world, record)
    call_a.ok(got_a)
    call_b.ok(got_b)
    assert emitter.flush(15) == 0

    def one_alert() -> list[dict[str, Any]]:
        return [e for e in race_alerts(fresh_kafka, fresh_kafka.topics.alerts)
                if e["resource"] == f"crm:{record}"]  # fmt: skip

    (alert,) = wait_until(one_alert, 60, "the race alert")
    assert alert["detector"] == "race_overlap"
    assert alert["related_event_ids"] == [call_a.intent_id, call_b.intent_id]
    assert "crm-sync" in alert["detail"] and "support-bot" in alert["detail"]
    assert f"crm:{record}" in alert["detail"]
    assert alert["workflow_id"] == wf_b
    # and ledgered: on the later workflow's partition of the events topic
    on_events = wait_until(
        lambda: [e for e in race_alerts(fresh_kafka, fresh_kafka.topics.events)
                 if e["event_id"] == alert["event_id"]],
        30, "the alert on the events topic",
    )  # fmt: skip
    assert on_events[0]["workflow_id"] == wf_b


def test_a_lost_update_is_caught(
    fresh_kafka: KafkaSettings, world: World, emitter: Emitter, detectors: list[KafkaRunner]
) -> None:
    wf_a, wf_b = one_per_keyer(fresh_kafka, detectors)
    a = emitter.workflow(wf_a, agent_id="crm-sync", principal="ops@example.com")
    b = emitter.workflow(wf_b, agent_id="support-bot", principal="ops@example.com")
    record = f"rec_{uuid.uuid4().hex[:8]}"
    world.crm.update(record, {"tier": "silver"}, "setup")
    a.call("crm.get", world.tool("crm.get"), {"record_id": record})
    call, got = update(b, world, record)
    call.ok(got)
    call, got = update(a, world, record)
    call.ok(got)
    assert emitter.flush(15) == 0
    try:
        (alert,) = wait_until(
            lambda: [e for e in race_alerts(fresh_kafka, fresh_kafka.topics.alerts)
                     if e["resource"] == f"crm:{record}"],
            60, "the lost update alert",
        )  # fmt: skip
    except TimeoutError as e:  # say what the detectors were given and what they hold
        raise AssertionError(explain(fresh_kafka, detectors)) from e
    assert alert["detector"] == "lost_update" and alert["workflow_id"] == wf_a
    assert alert["related_event_ids"][1] == call.intent_id
    assert "without reading it again" in alert["detail"]


def test_a_worker_leaving_mid_race_hands_its_partitions_over_with_their_state(
    fresh_kafka: KafkaSettings, world: World, emitter: Emitter, detectors: list[KafkaRunner]
) -> None:
    """Both intents are keyed and committed, then the second worker (its keyer and its
    detector) stops: the first takes its partitions, re-reads the window to know the open
    calls, and the results that follow still make exactly one alert."""
    wf_a, wf_b = one_per_keyer(fresh_kafka, detectors)
    a = emitter.workflow(wf_a, agent_id="crm-sync", principal="ops@example.com")
    b = emitter.workflow(wf_b, agent_id="support-bot", principal="ops@example.com")
    record = f"rec_{uuid.uuid4().hex[:8]}"
    call_a, got_a = update(a, world, record)
    call_b, got_b = update(b, world, record)
    assert emitter.flush(15) == 0
    keyers, finders = detectors[0::2], detectors[1::2]
    resources = fresh_kafka.topics.resources

    def keyed() -> bool:  # both intents on the resources topic, their offsets committed
        return len(read_topic(fresh_kafka, resources, idle=0.5)) >= 2 and all(
            r._done for r in keyers
        )

    try:
        wait_until(keyed, 60, "both intents keyed")
    except TimeoutError as e:
        raise AssertionError(f"{e}\n{explain(fresh_kafka, detectors)}") from e
    for r in (keyers[1], finders[1]):
        r.stop()
    n = fresh_kafka.partitions
    wait_until(lambda: len(keyers[0]._assigned) == n and len(finders[0]._assigned) == n,
               60, "the first worker holding every partition")  # fmt: skip
    call_a.ok(got_a)
    call_b.ok(got_b)
    assert emitter.flush(15) == 0
    (alert,) = wait_until(
        lambda: [e for e in race_alerts(fresh_kafka, fresh_kafka.topics.alerts)
                 if e["resource"] == f"crm:{record}"],
        60, "the race alert after the hand-over",
    )  # fmt: skip
    assert alert["related_event_ids"] == [call_a.intent_id, call_b.intent_id]


def test_a_keyer_taking_over_a_lagging_group_rereads_the_window_before_its_position(
    fresh_kafka: KafkaSettings,
) -> None:
    """The window is re-read back from the group's committed position, not from now: a
    keyer that takes over a backlog older than the window still knows the intents whose
    results come next."""
    from confluent_kafka import Producer

    from wakeline.testkit.samples import frames, intent, result

    rules = DetectionRules.parse("[rules.race_overlap]\nwindow_s = 1\n"
                                 "[rules.race_version]\nwindow_s = 1\n"
                                 "[rules.lost_update]\nwindow_s = 1\n")  # fmt: skip
    producer = Producer(fresh_kafka.client_config())
    intents = [intent(f"wf-{i}", i) for i in range(6)]
    results = [result(i) for i in intents]  # their calls took no time; they are sent late

    def send(events: list[dict[str, Any]]) -> None:
        for e in events:
            key, value, headers = frames(e)
            producer.produce(fresh_kafka.topics.events, value, key, headers=headers)
        assert producer.flush(15) == 0

    send(intents)
    first = race_runners(fresh_kafka, rules)[0]
    first.start()
    try:
        wait_until(lambda: sum(first._done.values()) >= len(intents), 60, "the intents keyed")
    finally:
        first.stop()
    assert first.failure is None
    # more than a window later, the results: a new keyer must re-read the intents
    time.sleep(1.5)  # the window passes (wall clock: what the re-read is measured against)
    send(results)
    second = race_runners(fresh_kafka, rules)[0]
    second.start()
    try:
        wait_until(lambda: sum(second._done.values()) >= 2 * len(intents), 60, "results keyed")
    finally:
        second.stop()
    keyer = second.processor
    assert keyer.results_unmatched == 0  # type: ignore[attr-defined]
    kinds = [json.loads(m.value())["kind"]
             for m in read_topic(fresh_kafka, fresh_kafka.topics.resources, 0.5)]  # fmt: skip
    assert sorted(kinds) == ["result"] * len(intents) + ["write"] * len(intents)
