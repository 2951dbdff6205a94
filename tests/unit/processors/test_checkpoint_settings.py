"""Checkpoint signing from the store, settings, and the faust agent guard."""

from __future__ import annotations

import pytest

from wakeline.errors import ConfigError
from wakeline.ledger.checkpoints import generate_signer, open_note, parse_body
from wakeline.ledger.hashing import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.processors.builder import LedgerBuilder
from wakeline.processors.checkpointing import sign_checkpoint
from wakeline.processors.settings import BuilderSettings


def _ledger(store: MemoryLedgerStore, partition: int, count: int, start: int = 0) -> None:
    b = LedgerBuilder(store, BLAKE3, max_leaves=100, max_age_s=1)
    b.assign([partition])
    b.add(LedgerRecord(partition, o, o, b"k", b"v%d" % o) for o in range(start, start + count))
    b.seal([partition])


def test_checkpoint_commits_every_partition_head_and_chains() -> None:
    store = MemoryLedgerStore()
    signer = generate_signer("test-ledger")
    assert sign_checkpoint(store, signer) is None  # nothing ledgered yet
    _ledger(store, 0, 5)
    _ledger(store, 2, 3)
    first = sign_checkpoint(store, signer, now_ms=1)
    assert first is not None
    body, names = open_note(first, [signer.verifier])
    cp = parse_body(body)
    assert names == ["test-ledger"] and cp.seq == 0 and cp.prev is None
    assert [(h.partition, h.tree_size) for h in cp.heads] == [(0, 5), (2, 3)]
    assert cp.head(0).header_hash == store.last_segment(0)[0].hash()
    assert sign_checkpoint(store, signer) is None  # nothing moved
    _ledger(store, 0, 2, start=5)
    second = parse_body(open_note(sign_checkpoint(store, signer), [signer.verifier])[0])
    assert second.seq == 1 and second.prev == cp.hash()
    assert second.head(0).tree_size == 7
    assert len(list(store.checkpoints())) == 2


def test_forced_checkpoint_signs_even_without_progress() -> None:
    store = MemoryLedgerStore()
    signer = generate_signer("k")
    _ledger(store, 0, 1)
    sign_checkpoint(store, signer)
    assert sign_checkpoint(store, signer, force=True) is not None


def test_settings_from_env_and_validation() -> None:
    s = BuilderSettings.from_env(
        {
            "WAKELINE_SEGMENT_MAX_LEAVES": "500",
            "WAKELINE_SEGMENT_MAX_AGE_MS": "100",
            "WAKELINE_BUILDER_BATCH": "2000",
        }  # fmt: skip
    )
    assert (s.segment_max_leaves, s.segment_max_age_s, s.batch_size) == (500, 0.1, 2000)
    assert s.group_for("x.") == "x.ledger-builder"
    with pytest.raises(ConfigError, match="WAKELINE_SEGMENT_MAX_LEAVES"):
        BuilderSettings.from_env({"WAKELINE_SEGMENT_MAX_LEAVES": "lots"})
    with pytest.raises(ConfigError, match="segment_max_age_s"):
        BuilderSettings(segment_max_age_s=0)
    with pytest.raises(ConfigError, match="md5"):
        BuilderSettings.from_env({"WAKELINE_HASH_SUITE": "md5"})
    with pytest.raises(ConfigError, match="does nothing"):
        BuilderSettings(builder=False, audit=False)


def test_agents_are_pinned_to_concurrency_one() -> None:
    faust = pytest.importorskip("faust")
    from wakeline.processors.app import agent

    app = faust.App("unit-agent-guard", broker="kafka://127.0.0.1:1", web_enabled=False)
    topic = app.topic("t")
    with pytest.raises(ConfigError, match="issue #606"):
        agent(app, topic, concurrency=4)

    @agent(app, topic)
    async def counter(stream):  # type: ignore[no-untyped-def]
        async for _ in stream:
            pass

    assert counter.concurrency == 1
