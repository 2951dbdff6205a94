"""`wakeline workflow checkpoints WF` and `wakeline workflow rollback WF --to CP --dry-run`
over an in-memory ledger store (the rollback itself runs on the real stack:
tests/integration/compensator/test_rollback.py)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.producers.snapshots import snapshot_event

from .eventkit import Events, store_of


def snapshot(ev: Events, name: str, saved: dict, **changed: str) -> dict:
    event = ev._event("WorkflowSnapshot")
    snapshot_event(event, name, saved, max_bytes=10_000)
    event.update(changed)
    return event


def run(store: object, *args: str) -> object:
    return CliRunner().invoke(cli, list(args), obj={"ledger_store": store})


def test_checkpoints_lists_name_event_time_digest_and_ledger_position() -> None:
    ev = Events()
    ev.call()
    snap = snapshot(ev, "after-lookup", {"step": 1})
    got = run(store_of(ev.events), "workflow", "checkpoints", "wf-1", "--json")
    assert got.exit_code == 0, got.output
    (row,) = json.loads(got.output)
    assert (row["name"], row["event_id"], row["time"]) == ("after-lookup", snap["event_id"],
                                                          snap["time"])  # fmt: skip
    assert row["state_digest"] == snap["state_digest"].hex()
    assert row["ledger"] == {"partition": 3, "leaf_index": 2, "offset": 2}
    text = run(store_of(ev.events), "workflow", "checkpoints", "wf-1")
    assert "after-lookup" in text.output and "[partition 3 leaf 2 offset 2]" in text.output


def test_the_dry_run_shows_only_the_calls_after_the_checkpoint() -> None:
    ev = Events()
    ev.call("crm.update", compensation="crm.restore")
    snapshot(ev, "after-lookup", {"step": 1})
    charge = ev.call()
    got = run(store_of(ev.events), "workflow", "rollback", "wf-1", "--to", "after-lookup",
              "--dry-run", "--json")  # fmt: skip
    assert got.exit_code == 0, got.output
    report = json.loads(got.output)
    assert [s["intent_id"] for s in report["steps"]] == [charge["event_id"]]
    assert report["scope"]["kind"] == "run" and "a rollback" in report["scope"]["describe"]
    text = run(store_of(ev.events), "workflow", "rollback", "wf-1", "--to", "after-lookup",
               "--dry-run")  # fmt: skip
    assert "rollback of wf-1 to checkpoint after-lookup" in text.output
    assert "dry run, nothing is executed; 1 call(s)" in text.output


def test_a_snapshot_whose_state_was_altered_or_that_does_not_exist_is_refused() -> None:
    ev = Events()
    snapshot(ev, "cp", {"amount": 10}, state='{"amount":10000}')
    for ref, says in (("cp", "does not match its ledgered digest"),
                      ("nope", "no ledgered checkpoint 'nope'")):  # fmt: skip
        got = run(store_of(ev.events), "workflow", "rollback", "wf-1", "--to", ref, "--dry-run")
        assert got.exit_code == 1 and says in " ".join(got.output.split()), got.output
