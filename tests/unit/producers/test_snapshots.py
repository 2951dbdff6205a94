"""Workflow checkpoints in the SDK: `ctx.checkpoint` writes a WorkflowSnapshot (redacted,
digested, bounded) and `Emitter.resume` gives its state back only from the ledger and only
if it matches the ledgered digest (producers/snapshots.py)."""

from __future__ import annotations

import json

import pytest

from wakeline.ledger import BLAKE3
from wakeline.ledger.records import LedgerRecord
from wakeline.ledger.segments import PartitionChain
from wakeline.ledger.store import make_entries
from wakeline.ledger.store_memory import MemoryLedgerStore
from wakeline.producers import Emitter, NotSerialisable, PayloadTooLarge, SdkError
from wakeline.producers.canonical import digest
from wakeline.producers.snapshots import SnapshotError
from wakeline.schemas import cloudevents_headers, encode_event

from .conftest import Recorder

STATE = {"customer": "cus_1", "step": 2, "auth": {"token": "s3cret"}, "notes": ["a", "b"]}


def ledger_of(events: list[dict]) -> MemoryLedgerStore:
    store = MemoryLedgerStore()
    chain = PartitionChain(BLAKE3, 0)
    leaves = [
        LedgerRecord(
            0, i, e["time"] // 1000, e["workflow_id"].encode(), encode_event(e),
            tuple(cloudevents_headers(e)),
        ).leaf_bytes()
        for i, e in enumerate(events)
    ]  # fmt: skip
    header, hashes = chain.seal(leaves)
    store.append_segment(header, make_entries(header, leaves, hashes), chain.tree.nodes)
    return store


def test_a_checkpoint_is_a_redacted_digested_snapshot_acknowledged_before_it_returns(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    ctx = emitter.workflow("wf-s", agent_id="a", principal="p")
    event_id = ctx.checkpoint("after-lookup", STATE, redact=["auth.token"])
    (snap,) = rec.events()
    assert snap["event_id"] == event_id and snap["type"] == "WorkflowSnapshot"
    assert snap["name"] == "after-lookup" and snap["run_id"] == ctx.run_id
    assert json.loads(snap["state"])["auth"] == {"token": "[REDACTED]"}
    assert "s3cret" not in snap["state"]
    assert snap["state_digest"] == digest(snap["state"].encode())
    assert snap["redacted_fields"] == ["auth.token"]
    assert rec.records[0][4] is True  # waited for the broker
    assert ctx.event_count == 1  # an event of the run: the seal counts it


def test_a_state_over_the_limit_or_not_json_is_refused_before_anything_is_written(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    emitter.max_payload_bytes = 1000
    ctx = emitter.workflow("wf-s", agent_id="a", principal="p")
    with pytest.raises(PayloadTooLarge, match=r"checkpoint 'big' of workflow wf-s: the canon"):
        ctx.checkpoint("big", {"blob": "x" * 2000})
    with pytest.raises(NotSerialisable, match=r"\$\.when"):
        ctx.checkpoint("odd", {"when": object()})
    with pytest.raises(SdkError, match="checkpoint name"):
        ctx.checkpoint("", {})
    assert rec.records == [] and ctx.event_count == 0


def test_resume_returns_the_ledgered_state_and_a_new_run_that_starts_from_it(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    ctx = emitter.workflow("wf-s", agent_id="a", principal="p", boundary="prod")
    ctx.checkpoint("after-lookup", {"step": 1})
    ctx.checkpoint("after-lookup", {"step": 2})  # the newest of a name is the one resumed
    first, second = rec.events()
    store = ledger_of([first, second])
    back = emitter.resume("wf-s", "after-lookup", ledger_store=store)
    assert back.state == {"step": 2} and back.snapshot_id == second["event_id"]
    assert back.context.run_id != ctx.run_id
    assert (back.context.agent_id, back.context.boundary) == ("a", "prod")
    resumed = rec.events()[-1]
    assert resumed["event_id"] == back.resumed_id and resumed["run_id"] == back.context.run_id
    assert resumed["parent_event_ids"] == [second["event_id"]]
    assert resumed["state_digest"] == second["state_digest"]
    state, go_on = emitter.resume("wf-s", first["event_id"], ledger_store=store)
    assert state == {"step": 1} and go_on.workflow_id == "wf-s"


def test_resume_refuses_a_state_that_does_not_match_its_digest(
    recorded: tuple[Emitter, Recorder],
) -> None:
    emitter, rec = recorded
    emitter.workflow("wf-s", agent_id="a", principal="p").checkpoint("cp", {"amount": 10})
    (snap,) = rec.events()
    forged = {**snap, "state": '{"amount":10000}'}  # the digest still says 10
    sent = len(rec.records)
    with pytest.raises(SnapshotError, match="does not match its ledgered digest"):
        emitter.resume("wf-s", "cp", ledger_store=ledger_of([forged]))
    with pytest.raises(SnapshotError, match="no ledgered checkpoint 'other'.*checkpoints: cp"):
        emitter.resume("wf-s", "other", ledger_store=ledger_of([snap]))
    assert len(rec.records) == sent  # nothing written
