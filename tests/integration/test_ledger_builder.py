"""The ledger builder against the real broker and database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from io import BytesIO
from pathlib import Path

import fastavro
import pytest
from confluent_kafka import Producer

from wakeline.infra.settings import KafkaSettings
from wakeline.ledger.checkpoints import generate_signer
from wakeline.ledger.segments import SegmentHeader
from wakeline.ledger.sources import verify_store
from wakeline.processors.checkpointing import sign_checkpoint
from wakeline.processors.runner import postgres_store_factory
from wakeline.testkit.harness import (
    check_against_topic,
    read_topic,
    start_worker,
    stop_worker,
    wait_for_ledger,
)
from wakeline.testkit.samples import frames, traffic

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def produce(kafka: KafkaSettings, events: list[dict], extra: list[tuple] = ()) -> None:
    p = Producer(kafka.client_config(**{"enable.idempotence": True, "linger.ms": 5}))
    for e in events:
        key, value, headers = frames(e)
        p.produce(kafka.topics.events, key=key, value=value, headers=headers)
    for key, value, headers in extra:
        p.produce(kafka.topics.events, key=key, value=value, headers=headers)
    assert p.flush(30) == 0


@pytest.fixture
def worker_log(tmp_path: Path) -> Path:
    return tmp_path / "worker.log"


def wait_for_audit(kafka: KafkaSettings, want: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    got: list = []
    while time.monotonic() < deadline:
        got = read_topic(kafka, kafka.topics.audit, idle=1.0)
        if len(got) >= want:
            return got
    raise AssertionError(f"{len(got)} audit records after {timeout}s, want {want}")


def test_worker_ledgers_publishes_and_audits_every_record(
    fresh_kafka, fresh_dsn, worker_log
) -> None:
    kafka = fresh_kafka
    events = list(traffic(1500, workflows=40))
    garbage = [(b"wf-bad", b"\xc3\x01 definitely not avro", [("ce_id", b"x")])]
    produce(kafka, events[:1000], garbage)
    proc = start_worker(
        kafka, fresh_dsn, "--segment-max-leaves", "300", "--segment-max-age-ms", "200",
        "--checkpoint-interval-s", "0", log_path=str(worker_log),
    )  # fmt: skip
    store = postgres_store_factory(fresh_dsn)()
    try:
        wait_for_ledger(store, 1001)
        produce(kafka, events[1000:])  # while it runs
        wait_for_ledger(store, 1501)
        audit = wait_for_audit(kafka, 1501)
    finally:
        assert stop_worker(proc) == 0, worker_log.read_text()[-3000:]
    assert check_against_topic(kafka, store) == 1501
    signer = generate_signer("test-ledger")
    assert sign_checkpoint(store, signer) is not None
    report = verify_store(store, trusted_keys=[signer.verifier.vkey()], decode=False)
    assert report.ok, report.findings

    headers = read_topic(kafka, kafka.topics.ledger)
    stored = {(p, h.segment_number): h.to_bytes() for p in range(3) for h in store.headers(p)}
    got = {}
    for m in headers:
        h = SegmentHeader.from_bytes(m.value())
        assert m.partition() == h.partition and m.key() == str(h.partition).encode()
        got[(h.partition, h.segment_number)] = m.value()
    assert got == stored

    dlq = read_topic(kafka, kafka.topics.dlq)
    assert [m.value() for m in dlq] == [garbage[0][1]]
    assert b"UnknownFingerprint" in dict(dlq[0].headers())["wakeline_dlq_reason"]

    positions = {}
    for m in audit:
        rec = decode_with_avsc_only(m.value())
        pos = (rec["partition"], rec["leaf_index"])
        (entry,) = store.entries(pos[0], pos[1], pos[1] + 1)
        assert entry.leaf_hash == rec["leaf_hash"] and entry.offset == rec["offset"]
        positions[pos] = rec
    assert len(positions) == 1501
    summaries = [r["summary"] for r in positions.values()]
    results = sum(e["type"] == "ToolResult" for e in events)
    assert (
        sum(": ok" in s and "called stripe.charge for customer" in s for s in summaries) == results
    )
    assert sum(s.startswith("undecodable record") for s in summaries) == 1
    intents = [r for r in positions.values() if r["event_type"] == "ToolIntent"]
    assert all(r["principal"] == "alice@example.com" and r["tool"] for r in intents)
    assert {r["event"]["event_id"] for r in intents} == {
        e["event_id"] for e in events if e["type"] == "ToolIntent"
    }


def test_two_workers_share_the_partitions_and_ledger_each_record_once(
    fresh_kafka, fresh_dsn, tmp_path
) -> None:
    kafka = fresh_kafka
    events = list(traffic(3000, workflows=60))
    args = ("--segment-max-leaves", "200", "--segment-max-age-ms", "100",
            "--checkpoint-interval-s", "0", "--no-audit")  # fmt: skip
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [start_worker(kafka, fresh_dsn, *args, log_path=str(log)) for log in logs]
    store = postgres_store_factory(fresh_dsn)()
    try:
        for start in range(0, 3000, 500):
            produce(kafka, events[start : start + 500])
            time.sleep(0.3)
        wait_for_ledger(store, 3000, timeout=90)
    finally:
        codes = [stop_worker(p) for p in procs]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    assert check_against_topic(kafka, store) == 3000


def test_tail_follows_one_workflow_in_plain_language(fresh_kafka, fresh_dsn, worker_log) -> None:
    from click.testing import CliRunner

    from wakeline.cli.tail import tail
    from wakeline.processors.tail import follow_audit

    kafka = fresh_kafka
    produce(kafka, list(traffic(200, workflows=10)))
    proc = start_worker(kafka, fresh_dsn, "--checkpoint-interval-s", "0",
                        log_path=str(worker_log))  # fmt: skip
    try:
        wait_for_audit(kafka, 200)
    finally:
        stop_worker(proc)
    mine = list(follow_audit(kafka, from_beginning=True, workflow="wf-00003", idle_timeout=3))
    assert len(mine) == 20 and {r["workflow_id"] for r in mine} == {"wf-00003"}
    env = {"WAKELINE_TOPIC_PREFIX": kafka.topics.prefix, "WAKELINE_BOOTSTRAP": kafka.bootstrap}
    out = CliRunner().invoke(
        tail, ["--from-beginning", "--agent", "refund-bot", "--idle-exit", "3", "-n", "5"],
        env=env,
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 5
    assert all("agent refund-bot" in line and "[alice@example.com]" in line for line in lines)
    as_json = CliRunner().invoke(
        tail, ["--from-beginning", "--workflow", "wf-00001", "--json", "--idle-exit", "3"],
        env=env,
    )  # fmt: skip
    recs = [json.loads(line) for line in as_json.output.splitlines()]
    assert len(recs) == 20 and all(r["workflow_id"] == "wf-00001" for r in recs)
    assert all(len(bytes.fromhex(r["leaf_hash"])) == 32 for r in recs)


def test_sigusr1_signs_a_checkpoint_over_every_partition(
    fresh_kafka, fresh_dsn, worker_log, tmp_path, monkeypatch
) -> None:
    import signal

    from wakeline.ledger.checkpoints import open_note, parse_body
    from wakeline.processors.checkpointing import load_signer

    key = tmp_path / "ledger.key"
    monkeypatch.setenv("WAKELINE_SIGNING_KEY", str(key))
    kafka = fresh_kafka
    produce(kafka, list(traffic(300, workflows=30)))
    proc = start_worker(kafka, fresh_dsn, "--checkpoint-interval-s", "3600", "--no-audit",
                        log_path=str(worker_log))  # fmt: skip
    store = postgres_store_factory(fresh_dsn)()
    try:
        wait_for_ledger(store, 300)
        deadline = time.monotonic() + 30
        while store.latest_checkpoint() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
    finally:
        stop_worker(proc)
    note = store.latest_checkpoint()
    assert note is not None, worker_log.read_text()[-2000:]
    body, _ = open_note(note, [load_signer(key).verifier])
    cp = parse_body(body)
    assert sum(h.tree_size for h in cp.heads) == 300
    assert {h.partition for h in cp.heads} == {0, 1, 2}


def decode_with_avsc_only(frame: bytes) -> dict:
    """What a compliance tool outside Wakeline does: the .avsc files and fastavro, nothing
    else. The nested event is decoded too, by its fingerprint."""
    by_fp = {}
    for path in SCHEMAS.glob("*.avsc"):
        schema = fastavro.parse_schema(json.loads(path.read_text()), named_schemas={})
        fp = fastavro.schema.fingerprint(
            fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO"
        )
        by_fp[bytes.fromhex(fp)] = schema

    def decode(raw: bytes) -> dict:
        assert raw[:2] == b"\xc3\x01"
        return fastavro.schemaless_reader(BytesIO(raw[10:]), by_fp[raw[2:10]], None)

    rec = decode(frame)
    if rec["event"] is not None and rec["decode_error"] is None:
        rec["event"] = decode(rec["event"])
    return rec


def test_checkpoints_are_signed_on_the_interval_as_the_ledger_grows(
    fresh_kafka, fresh_dsn, worker_log, tmp_path, monkeypatch
) -> None:
    from wakeline.ledger.checkpoints import open_note, parse_body
    from wakeline.processors.checkpointing import load_signer

    key = tmp_path / "ledger.key"
    monkeypatch.setenv("WAKELINE_SIGNING_KEY", str(key))
    kafka = fresh_kafka
    events = list(traffic(400, workflows=20))
    produce(kafka, events[:200])
    proc = start_worker(kafka, fresh_dsn, "--checkpoint-interval-s", "1", "--no-audit",
                        log_path=str(worker_log))  # fmt: skip
    store = postgres_store_factory(fresh_dsn)()
    try:
        wait_for_ledger(store, 200)
        time.sleep(2.5)
        produce(kafka, events[200:])
        wait_for_ledger(store, 400)
        time.sleep(2.5)
    finally:
        stop_worker(proc)
    verifier = load_signer(key).verifier
    cps = [parse_body(open_note(n, [verifier])[0]) for n in store.checkpoints()]
    sizes = [sum(h.tree_size for h in cp.heads) for cp in cps]
    assert [cp.seq for cp in cps] == list(range(len(cps)))
    assert 200 in sizes and sizes[-1] == 400
    assert len(sizes) == len(set(sizes)), "a checkpoint is signed only when the ledger moved"


# -- the default worker: the audit publisher in a child process ---------------------------


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _audit_child(pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in _children(pid):
            with contextlib.suppress(OSError):
                if b"--no-builder" in Path(f"/proc/{c}/cmdline").read_bytes():
                    return c
        time.sleep(0.05)
    raise AssertionError(f"worker {pid} started no audit publisher child in {timeout}s")


def test_kill_9_of_the_worker_takes_its_audit_child_along(fresh_kafka, fresh_dsn, worker_log):
    proc = start_worker(fresh_kafka, fresh_dsn, log_path=str(worker_log))
    try:
        child = _audit_child(proc.pid)
        time.sleep(1.0)  # well inside its start-up
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 1.0
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child), "audit publisher outlived its worker by more than 1 s"
    finally:
        stop_worker(proc)


def test_worker_exits_non_zero_when_its_audit_child_dies(fresh_kafka, fresh_dsn, worker_log):
    proc = start_worker(fresh_kafka, fresh_dsn, log_path=str(worker_log))
    try:
        child = _audit_child(proc.pid)
        time.sleep(2.0)
        os.kill(child, signal.SIGKILL)
        assert proc.wait(30) != 0
    finally:
        stop_worker(proc)


def test_sigterm_stops_the_worker_and_its_audit_child(fresh_kafka, fresh_dsn, worker_log):
    proc = start_worker(fresh_kafka, fresh_dsn, log_path=str(worker_log))
    child = _audit_child(proc.pid)
    time.sleep(2.0)
    assert stop_worker(proc) == 0, worker_log.read_text()[-3000:]
    assert not _alive(child)


def test_single_process_worker_starts_no_child(fresh_kafka, fresh_dsn, worker_log):
    proc = start_worker(fresh_kafka, fresh_dsn, "--single-process", log_path=str(worker_log))
    try:
        time.sleep(3.0)
        assert proc.poll() is None, worker_log.read_text()[-3000:]
        assert _children(proc.pid) == []
    finally:
        assert stop_worker(proc) == 0, worker_log.read_text()[-3000:]
