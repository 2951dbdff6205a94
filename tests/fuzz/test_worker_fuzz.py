"""Hostile records on the events topic against a running worker (real broker, real database).

Anyone who can produce to the events topic can send anything. Whatever arrives, afterwards:
the worker is alive; every record of the topic is ledgered exactly once, byte for byte; every
undecodable record has a DLQ record with its reason; every ledgered record has its audit
record or a DLQ record saying why not; every derived record fits the size limit; the body's
event id, not a header, is what lookups find.

`FUZZ_EXAMPLES` sets how many random records join the fixed hostile cases (60 under
`make test`; a soak sets thousands); `FUZZ_SEED` picks another stream of them.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from wakeline.infra.settings import KafkaSettings
from wakeline.processors.audit import decode_audit, record_size
from wakeline.processors.runner import postgres_store_factory
from wakeline.schemas import decode_event
from wakeline.testkit.harness import (
    check_against_topic,
    ledger_size,
    read_topic,
    start_worker,
    stop_worker,
    wait_for_ledger,
)
from wakeline.testkit.samples import frames, intent, result

from .conftest import examples

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_RECORD = 200_000  # the worker's derived-record limit in this test


def _mutate(rng: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.4 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op < 0.7:
            del b[rng.randrange(len(b)) :]
        else:
            b[rng.randrange(len(b) + 1) : 0] = rng.randbytes(rng.randint(1, 8))
    return bytes(b)


def hostile_records(n: int, seed: int) -> list[tuple[bytes | None, bytes | None, list]]:
    """Fixed cases that once broke the ledger or the audit trail, then `n` random ones."""
    rng = random.Random(seed)
    i = intent("wf-ok", 0)
    key, value, headers = frames(i)
    r_key, r_value, r_headers = frames(result(i))
    big = intent("wf-big", 1)
    big["args"] = '{"blob":"' + "x" * 300_000 + '"}'
    bk, bv, bh = frames(big)
    out: list[tuple[bytes | None, bytes | None, list]] = [
        (b"wf\x00nul", value, headers),  # NUL in the key
        (key, value, [("ce_id", b"ev\x00nul"), *headers[1:]]),  # NUL in ce_id
        (b"\xff\xfe\xfd", value, [("ce_id", b"\xc3\x28"), ("\xff", b"x")]),  # invalid UTF-8
        (key, None, []),  # tombstone
        (None, value, headers),  # no key
        (key, value, []),  # no headers
        (key, value, headers + headers),  # duplicate headers
        (key, value, [("ce_id", b"forged-id"), *headers[1:]]),  # header lies about the body
        (bk, bv, bh),  # large, under the producer's limit
        (key, b"\xc3\x01" + b"\x00" * 350_000, [("h", b"v" * 100_000)]),  # huge junk + header
        (b"k" * 50_000, b"\x00", []),  # huge key
        (key, b"", []),  # empty value
        (r_key, r_value, r_headers),  # a valid result after all of it
    ]
    # invalid Avro: negative enum index where ToolIntent's `reversibility` enum sits
    out.append((key, _mutate(rng, value), headers))
    valid = [value, r_value]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:
            v = rng.randbytes(rng.randint(0, 300))
        elif kind < 0.45:
            v = b"\xc3\x01" + rng.randbytes(rng.randint(0, 300))
        else:
            v = _mutate(rng, rng.choice(valid))
        k = rng.choice([key, None, rng.randbytes(rng.randint(0, 40)), b"\x00"])
        hs = rng.choice(
            [headers, [], [("ce_id", rng.randbytes(rng.randint(0, 20)))], headers[:2] * 3]
        )
        out.append((k, v, list(hs)))
    return out


def test_hostile_records_never_stop_the_ledger_or_lose_an_audit_record(
    fresh_kafka: KafkaSettings, fresh_dsn: str, tmp_path: Path
) -> None:
    kafka = fresh_kafka
    sent = hostile_records(examples(60), seed=int(os.environ.get("FUZZ_SEED", "8")))
    p = Producer(
        kafka.client_config(**{"enable.idempotence": True, "message.max.bytes": 2_000_000})
    )
    for k, v, h in sent:
        p.produce(kafka.topics.events, key=k, value=v, headers=h)
    assert p.flush(30) == 0
    log_path = tmp_path / "worker.log"
    proc = start_worker(
        kafka, fresh_dsn, "--segment-max-leaves", "50", "--segment-max-age-ms", "100",
        "--checkpoint-interval-s", "0", log_path=str(log_path),
        env={"WAKELINE_MAX_RECORD_BYTES": str(MAX_RECORD)},
    )  # fmt: skip
    store = postgres_store_factory(fresh_dsn)()
    try:
        wait_for_ledger(store, len(sent), timeout=120)
        # every ledgered record: an audit record, or a DLQ record saying why not
        want = {(e.partition, e.leaf_index) for p_ in store.partitions() for e in store.entries(p_)}
        deadline = time.monotonic() + 120
        while True:
            audit = read_topic(kafka, kafka.topics.audit, idle=1.0)
            dlq = read_topic(kafka, kafka.topics.dlq, idle=1.0)
            audited = {
                (rec["partition"], rec["leaf_index"])
                for rec in (decode_audit(m.value()) for m in audit)
            }
            if audited >= want or time.monotonic() > deadline:
                break
        assert proc.poll() is None, "the worker died: " + log_path.read_text()[-3000:]
    finally:
        code = stop_worker(proc)
    assert code == 0, log_path.read_text()[-3000:]
    log = log_path.read_text()
    assert "partition stalled" not in log

    assert check_against_topic(kafka, store) == len(sent) == ledger_size(store)
    dead = {
        (
            int(dict(m.headers())["wakeline_dlq_partition"]),
            int(dict(m.headers())["wakeline_dlq_offset"]),
        )
        for m in dlq
    }
    for m in dlq:
        assert dict(m.headers())["wakeline_dlq_reason"], "a DLQ record without its reason"
    by_offset = {(e.partition, e.offset): e for p_ in store.partitions() for e in store.entries(p_)}
    missing = [
        pos
        for pos, e in by_offset.items()
        if (e.partition, e.leaf_index) not in audited and pos not in dead
    ]
    assert not missing, f"ledgered records without audit or DLQ record: {missing[:5]}"
    for (part, off), e in by_offset.items():
        r = e.record()
        try:
            body = decode_event(r.value) if r.value is not None else None
        except Exception:
            body = None
        if body is None:
            assert (part, off) in dead, f"undecodable record at {part}/{off} not dead-lettered"
            assert e.event_id is None or r.value[:2] == b"\xc3\x01"
        else:
            assert e.event_id == body["event_id"]  # the body, never the ce_id header
    for m in [*audit, *dlq]:
        assert record_size(m.key(), m.value(), m.headers() or []) <= MAX_RECORD
    assert store.entry_by_event_id("forged-id") is None
