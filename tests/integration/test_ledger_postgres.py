"""PostgresLedgerStore against a real PostgreSQL: the store contract and the append-only guard."""

from __future__ import annotations

import psycopg
import pytest

from tests.unit.ledger.store_contract import LedgerStoreContract, seal  # noqa: I001
from wakeline.ledger import BLAKE3
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.store_postgres import PostgresLedgerStore

pytestmark = pytest.mark.integration


class TestPostgresLedgerStore(LedgerStoreContract):
    @pytest.fixture(autouse=True)
    def _dsn(self, fresh_dsn: str) -> None:
        self.dsn = fresh_dsn

    def make_store(self) -> PostgresLedgerStore:
        return PostgresLedgerStore(self.dsn)


@pytest.mark.parametrize("table", ["ledger_segments", "ledger_entries", "ledger_checkpoints"])
def test_ledger_tables_refuse_update_delete_and_truncate(fresh_dsn: str, table: str) -> None:
    from wakeline.ledger.checkpoints import generate_signer
    from wakeline.ledger.service import sign_checkpoint

    with PostgresLedgerStore(fresh_dsn) as store:
        store.append_segment(*seal(store, PartitionChain(BLAKE3, 0), [0, 1]))
        sign_checkpoint(store, [generate_signer("t")], origin="t", force=True, now_ms=1)
    with psycopg.connect(fresh_dsn, autocommit=True) as conn:
        for sql in (
            f"UPDATE {table} SET stored_at = now()"
            if table != "ledger_entries"
            else f"UPDATE {table} SET leaf = ''::bytea",
            f"DELETE FROM {table}",
            f"TRUNCATE {table} CASCADE",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                conn.execute(sql)
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] > 0


# ------------------------------------------------------------------ --from-kafka


@pytest.fixture
def own_topics(kafka):
    """Topics of our own, so other tests' events and headers do not mix in."""
    import contextlib
    import uuid
    from dataclasses import replace

    from wakeline.infra import topics
    from wakeline.infra.settings import Topics

    settings = replace(kafka, topics=Topics(f"v{uuid.uuid4().hex[:10]}.wakeline."))
    topics.ensure_topics(settings)
    yield settings
    with contextlib.suppress(Exception):
        topics.delete_topics(settings)


def _ledger_from_kafka(settings, dsn: str, signer) -> None:
    """What the ledger builder does, minimally: events -> segments in PostgreSQL ->
    headers on the ledger topic (docs/ledger-format.md §6) -> a checkpoint."""
    from confluent_kafka import Producer

    from tests.unit.ledger.ledgerkit import workflow_events
    from wakeline.infra.kafka_source import _consumer, _read, _tp
    from wakeline.ledger.records import record_of_message as record_of
    from wakeline.ledger.service import sign_checkpoint
    from wakeline.ledger.store import make_entries
    from wakeline.schemas import cloudevents_headers, encode_event

    producer = Producer(settings.client_config())
    for ev in workflow_events(6):
        producer.produce(
            settings.topics.events,
            key=ev["workflow_id"].encode(),
            value=encode_event(ev),
            headers=cloudevents_headers(ev),
            partition=int(ev["workflow_id"].split("-")[1]) % 2,
        )
    assert producer.flush(30) == 0
    consumer = _consumer(settings)
    with PostgresLedgerStore(dsn) as store:
        for p in (0, 1):
            low, high = consumer.get_watermark_offsets(_tp(settings.topics.events, p), timeout=10)
            leaves = [
                record_of(m).leaf_bytes()
                for m in _read(consumer, settings.topics.events, p, low, high, 10)
            ]
            chain = PartitionChain(BLAKE3, p)
            for i in range(0, len(leaves), 4):
                header, hashes = chain.seal(leaves[i : i + 4])
                store.append_segment(
                    header, make_entries(header, leaves[i : i + 4], hashes), chain.tree.nodes
                )
                producer.produce(
                    settings.topics.ledger,
                    key=str(p).encode(),
                    value=header.to_bytes(),
                    partition=p,
                )
        sign_checkpoint(store, [signer], origin="wakeline.test/kafka", force=True, now_ms=1)
    consumer.close()
    assert producer.flush(30) == 0


def test_verify_from_kafka_replays_events_against_published_headers(own_topics, fresh_dsn) -> None:
    from confluent_kafka import Producer

    from wakeline.infra.kafka_source import verify_from_kafka
    from wakeline.ledger.checkpoints import generate_signer
    from wakeline.ledger.segments import SegmentHeader

    signer = generate_signer("wakeline.test/kafka")
    _ledger_from_kafka(own_topics, fresh_dsn, signer)
    vkey = signer.verifier.vkey()
    report = verify_from_kafka(own_topics, trusted_keys=[vkey], dsn=fresh_dsn)
    assert report.verdict == "sound", [f.describe() for f in report.findings]
    assert report.stats["leaves"] == 30 and report.stats["signed_leaves"] == 30

    # a different header for an existing segment number on the ledger topic is tampering
    with PostgresLedgerStore(fresh_dsn) as store:
        real = next(store.headers(1))
    forged = SegmentHeader.from_bytes(real.to_bytes()[:62] + b"\x00" * 32 + real.to_bytes()[94:])
    producer = Producer(own_topics.client_config())
    producer.produce(own_topics.topics.ledger, key=b"1", value=forged.to_bytes(), partition=1)
    assert producer.flush(30) == 0
    report = verify_from_kafka(own_topics, trusted_keys=[vkey], dsn=fresh_dsn)
    assert report.verdict == "tampered"
    assert report.first.partition == 1


# ------------------------------------------------------------------ the CLI on PostgreSQL


def test_cli_checkpoint_verify_export_and_proof_against_postgres(
    fresh_dsn, fresh_kafka, tmp_path
) -> None:
    """(The verifier also reads the events topic's unledgered tail: topics of this test's
    own, empty, not the default ones a run of the demo may have filled.)"""
    import json

    from click.testing import CliRunner

    from tests.unit.ledger.ledgerkit import build_ledger, workflow_events
    from wakeline.cli.ledger import ledger, ledger_verify_main
    from wakeline.ledger import MerkleTree
    from wakeline.ledger.checkpoints import ensure_signer

    key = tmp_path / "keys" / "ledger.key"
    signer = ensure_signer(key, "wakeline-ledger")
    events = workflow_events(3)
    led = build_ledger(events, signer=signer)
    with PostgresLedgerStore(fresh_dsn) as store:  # copy the ledger into PostgreSQL
        for p in led.store.partitions():
            tree = MerkleTree(BLAKE3)
            for h in led.store.headers(p):
                first = h.first_leaf_index
                entries = list(led.store.entries(p, first, first + h.leaf_count))
                tree.extend([e.leaf_hash for e in entries])
                assert store.append_segment(h, entries, tree.nodes)
    run = CliRunner().invoke
    res = run(ledger, ["checkpoint", "--dsn", fresh_dsn, "--key", str(key), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["signed"] is True
    vkey = signer.verifier.vkey()
    env = {"WAKELINE_TOPIC_PREFIX": fresh_kafka.topics.prefix}
    res = run(ledger_verify_main, ["--dsn", fresh_dsn, "--trusted-key", vkey, "--json"], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["stats"]["leaves"] == 15

    bundle = tmp_path / "ledger.bundle"
    res = run(ledger, ["export", "--dsn", fresh_dsn, "-o", str(bundle), "--public-key", vkey])
    assert res.exit_code == 0, res.output
    res = run(ledger_verify_main, ["--bundle", str(bundle), "--trusted-key", vkey])
    assert res.exit_code == 0, res.output

    res = run(ledger, ["proof", events[4]["event_id"], "--dsn", fresh_dsn])
    assert res.exit_code == 0, res.output
    proof = tmp_path / "proof.json"
    proof.write_text(res.output)
    res = run(ledger, ["proof", "--check", str(proof), "--trusted-key", vkey])
    assert res.exit_code == 0, res.output

    first_note = tmp_path / "first.note"
    first_note.write_text(
        json.loads(
            run(
                ledger, ["checkpoint", "--dsn", fresh_dsn, "--key", str(key), "--force", "--json"]
            ).output
        )["note"]
    )
    res = run(ledger, ["checkpoint", "--dsn", fresh_dsn, "--key", str(key), "--force"])
    assert res.exit_code == 0, res.output
    res = run(ledger, ["proof", "--consistency", str(first_note), "--dsn", fresh_dsn])
    assert res.exit_code == 0, res.output
    proof.write_text(res.output)
    res = run(ledger, ["proof", "--check", str(proof), "--trusted-key", vkey])
    assert res.exit_code == 0, res.output

    res = run(ledger_verify_main, ["--dsn", "postgresql://nobody@/nowhere?host=/nonexistent"])
    assert res.exit_code == 12


def test_a_segment_whose_lookup_keys_postgresql_refuses_is_stored_without_them(
    fresh_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a record holds, its segment is stored: keys the database refuses (here one
    past the indexed size: the store's own cap is lifted so PostgreSQL's CHECK refuses it)
    are dropped, the leaves keep every byte, and the log says so at error level."""
    from dataclasses import replace

    from wakeline.ledger import store_postgres
    from wakeline.ledger.store import Entry

    monkeypatch.setattr(store_postgres, "MAX_LOOKUP_KEY", 1 << 20)
    with PostgresLedgerStore(fresh_dsn) as store:
        header, entries, frontier = seal(store, PartitionChain(BLAKE3, 0), [0, 1])
        entries = [replace(entries[0], key=b"k" * 5000)] + list(entries[1:])
        assert isinstance(entries[0], Entry)
        with caplog.at_level("ERROR", logger="wakeline.ledger.store_postgres"):
            assert store.append_segment(header, entries, frontier)
        stored = list(store.entries(0))
        assert [e.leaf for e in stored] == [e.leaf for e in entries]
        assert all(e.key is None and e.event_id is None for e in stored)
        assert "stored without lookup keys" in caplog.text
