"""A stuck partition is loud: records on the events topic that the ledger stops short of are
`tail.stale` (incomplete, exit 11) once older than the threshold, a `tail.behind` warning
before that, from Kafka and from PostgreSQL alike (docs/ledger-format.md §9). Real broker,
real PostgreSQL; no worker runs, so the ledger stops where the test's builder stopped."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from tests.integration.test_ledger_postgres import _ledger_from_kafka, own_topics  # noqa: F401

pytestmark = pytest.mark.integration

TAIL = 7  # records produced after the ledger was built


@pytest.fixture
def stuck(own_topics, fresh_dsn):  # noqa: F811
    """30 ledgered events on partitions 0 and 1, then TAIL unledgered records on partition 0."""
    from confluent_kafka import Producer

    from wakeline.infra.kafka_source import _consumer, _tp
    from wakeline.ledger.checkpoints import generate_signer

    signer = generate_signer("wakeline.test/kafka")
    _ledger_from_kafka(own_topics, fresh_dsn, signer)
    consumer = _consumer(own_topics)
    _, first_unledgered = consumer.get_watermark_offsets(_tp(own_topics.topics.events, 0), 10)
    consumer.close()
    producer = Producer(own_topics.client_config())
    for i in range(TAIL):
        producer.produce(
            own_topics.topics.events, key=b"wf-late", value=b"late %d" % i, partition=0
        )
    assert producer.flush(30) == 0
    return own_topics, fresh_dsn, signer.verifier.vkey(), first_unledgered


def _tail(report, check: str):
    found = [f for f in report.findings if f.check == check]
    assert len(found) == 1, [f.describe() for f in report.findings]
    return found[0]


def test_from_kafka_a_stale_tail_is_incomplete_and_a_young_one_a_warning(stuck) -> None:
    from wakeline.infra.kafka_source import verify_from_kafka

    settings, dsn, vkey, first = stuck
    report = verify_from_kafka(settings, trusted_keys=[vkey], dsn=dsn, stale_after_s=0)
    assert (report.verdict, report.exit_code) == ("incomplete", 11)
    f = report.first
    assert (f.check, f.partition, f.offset) == ("tail.stale", 0, first)
    assert f"{TAIL} record(s)" in f.found
    assert report.stats["unledgered_tail"] == TAIL

    report = verify_from_kafka(settings, trusted_keys=[vkey], dsn=dsn, stale_after_s=3600)
    assert report.verdict == "sound", [f.describe() for f in report.findings]
    w = _tail(report, "tail.behind")
    assert (w.verdict, w.partition, w.offset) == ("warning", 0, first)


def test_from_postgres_the_cli_reads_the_broker_for_the_tail(stuck, monkeypatch) -> None:
    from wakeline.cli.ledger import ledger_verify_main

    settings, dsn, vkey, first = stuck
    monkeypatch.setenv("WAKELINE_TOPIC_PREFIX", settings.topics.prefix)
    run = CliRunner().invoke
    args = ["--dsn", dsn, "--trusted-key", vkey, "--json"]

    res = run(ledger_verify_main, [*args, "--stale-after", "0"])
    assert res.exit_code == 11, res.output
    doc = json.loads(res.output)
    assert doc["first"]["check"] == "tail.stale"
    assert (doc["first"]["partition"], doc["first"]["offset"]) == (0, first)

    monkeypatch.setenv("WAKELINE_VERIFY_STALE_AFTER_S", "3600")
    res = run(ledger_verify_main, args)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert [f["check"] for f in doc["findings"]] == ["tail.behind"]
    assert doc["stats"]["unledgered_tail"] == TAIL

    res = run(ledger_verify_main, [*args, "--stale-after", "-1"])
    assert res.exit_code == 2, res.output  # a bad threshold is bad configuration


def test_from_postgres_an_unreachable_broker_is_said_plainly(stuck, monkeypatch) -> None:
    from wakeline.cli.ledger import ledger_verify_main

    _, dsn, vkey, _ = stuck
    monkeypatch.setenv("WAKELINE_BOOTSTRAP", "127.0.0.1:9")  # nothing listens there
    res = CliRunner().invoke(
        ledger_verify_main, ["--dsn", dsn, "--trusted-key", vkey, "--json", "--stale-after", "0"]
    )
    assert res.exit_code == 0, res.output  # the ledger itself is sound ...
    doc = json.loads(res.output)
    assert [f["check"] for f in doc["findings"]] == ["tail.unchecked"]  # ... and it says so
    assert any("could not be checked" in w for w in doc["warnings"])
