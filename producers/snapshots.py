"""Workflow checkpoints: a run's state saved at a named point, as a `WorkflowSnapshot` event.

`snapshot_event` builds the event (`WorkflowContext.checkpoint` sends it): the state is
canonicalised as tool arguments are (producers/canonical.py: RFC 8785 JSON, `redact` paths
replaced by `[REDACTED]`, `digest_only` paths by `blake3:<hex>`), refused with
`PayloadTooLarge` past the limit, and carries its BLAKE3-256 digest, so the ledger proves which
state was saved. `ledgered_snapshots` reads a workflow's snapshots back from the PostgreSQL
ledger, `find_snapshot` picks one by name or event id, and `checked_state` gives its state only
if it still matches the digest it was ledgered with. Used by `Emitter.resume`, `wakeline
workflow checkpoints` and `wakeline workflow rollback`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from wakeline.producers.canonical import canonicalise, digest
from wakeline.producers.errors import PayloadTooLarge, SdkError

MAX_NAME_CHARS = 200


class SnapshotError(SdkError):
    """No such checkpoint, or one whose saved state does not match its ledgered digest."""


@dataclass(frozen=True)
class Snapshot:
    """One WorkflowSnapshot as read back, with its ledger position (None: not ledgered)."""

    event: Mapping[str, Any]
    ledger: Mapping[str, int] | None = None

    @property
    def event_id(self) -> str:
        return self.event["event_id"]

    @property
    def name(self) -> str:
        return self.event["name"]

    @property
    def run_id(self) -> str:
        return self.event["run_id"]

    def to_json(self) -> dict[str, Any]:
        e = self.event
        return {
            "name": e["name"],
            "event_id": e["event_id"],
            "time": e["time"],
            "run_id": e["run_id"],
            "agent_id": e["agent_id"],
            "state_digest": bytes(e["state_digest"]).hex(),
            "state_bytes": len(e["state"].encode("utf-8")),
            "redacted_fields": list(e.get("redacted_fields") or ()),
            "ledger": None if self.ledger is None else dict(self.ledger),
        }


def snapshot_event(
    envelope: dict[str, Any],
    name: str,
    state: Mapping[str, Any],
    *,
    redact: Iterable[str] = (),
    digest_only: Iterable[str] = (),
    max_bytes: int,
) -> dict[str, Any]:
    """Fill a `WorkflowSnapshot` envelope with the checkpoint; raises before anything is
    written: `SdkError` for a bad name, `NotSerialisable`, `PayloadTooLarge`."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise SdkError(
            f"a checkpoint name is a non-empty text of at most {MAX_NAME_CHARS} characters, "
            f"got {name!r}"
        )
    redact, digest_only = tuple(redact), tuple(digest_only)
    try:
        canonical = canonicalise(
            state, redact=redact, digest_only=digest_only, max_bytes=max_bytes, what="state"
        )
    except PayloadTooLarge as e:
        raise PayloadTooLarge(
            f"checkpoint {name!r} of workflow {envelope['workflow_id']}: the canonical state",
            e.size,
            e.limit,
        ) from None
    envelope.update(
        name=name,
        state=canonical.text,
        state_digest=canonical.digest,
        redacted_fields=[*redact, *digest_only],
    )
    return envelope


def checked_state(event: Mapping[str, Any]) -> dict[str, Any]:
    """The saved state of a decoded WorkflowSnapshot, if BLAKE3 of its `state` is its
    `state_digest`; else `SnapshotError` (the state was altered after it was saved)."""
    raw = event["state"].encode("utf-8")
    if digest(raw) != bytes(event["state_digest"]):
        raise SnapshotError(
            f"checkpoint {event['name']!r} (event {event['event_id']}) of workflow "
            f"{event['workflow_id']}: its state does not match its ledgered digest "
            f"(BLAKE3 {digest(raw).hex()}, recorded {bytes(event['state_digest']).hex()}): it "
            "was altered after it was saved; refused"
        )
    state = json.loads(raw)
    if not isinstance(state, dict):
        raise SnapshotError(f"checkpoint {event['name']!r}: its state is not a JSON object")
    return state


def ledgered_snapshots(store: Any, workflow_id: str, decode: Any) -> list[Snapshot]:
    """Every WorkflowSnapshot of the workflow in a ledger store, in ledger order. Each entry's
    leaf bytes must hash to the leaf hash the ledger stores (the hash its Merkle tree and
    signed checkpoints commit to); one that does not is refused with `SnapshotError`."""
    from wakeline.ledger.hashing import SUITES

    found = []
    for entry in store.entries_for_workflow(workflow_id):
        value = entry.record().value
        if value is None:
            continue
        try:
            event = decode(value)
        except Exception:  # noqa: BLE001 - not a snapshot we can read; `workflow show` says why
            continue
        if event.get("type") != "WorkflowSnapshot":
            continue
        if not any(s.leaf_hash(entry.leaf) == bytes(entry.leaf_hash) for s in SUITES.values()):
            raise SnapshotError(
                f"ledger entry of checkpoint {event['event_id']} (partition {entry.partition} "
                f"leaf {entry.leaf_index}) does not match its leaf hash: the ledger was altered"
            )
        where = {"partition": entry.partition, "leaf_index": entry.leaf_index}
        found.append(Snapshot(event, {**where, "offset": entry.offset}))
    return found


def find_snapshot(snapshots: Sequence[Snapshot], ref: str, workflow_id: str) -> Snapshot:
    """The snapshot `ref` names: its event id, else the newest with that name."""
    for s in snapshots:
        if s.event_id == ref:
            return s
    named = [s for s in snapshots if s.name == ref]
    if named:
        return named[-1]
    have = ", ".join(sorted({s.name for s in snapshots})) or "none"
    raise SnapshotError(
        f"workflow {workflow_id} has no ledgered checkpoint {ref!r} (checkpoints: {have}); "
        "a checkpoint just saved may not be ledgered yet"
    )


@contextmanager
def open_ledger(
    dsn: str | None = None, injected: Any = None
) -> Iterator[tuple[Any, Callable[[bytes], dict[str, Any]], str | None]]:
    """(ledger store, decoder, DSN): `injected` (a store of one's own, tests) with the
    packaged schemas and `dsn` as given, else the PostgreSQL ledger at `dsn` (default
    `WAKELINE_DSN` or the local stack) with the schemas PostgreSQL holds. Imports psycopg
    only then: an agent that never reads the ledger needs Kafka only."""
    if injected is not None:
        from wakeline.schemas import decode_event

        yield injected, decode_event, dsn
        return
    from wakeline.infra.schema_registry import PostgresSchemaResolver
    from wakeline.infra.settings import DatabaseSettings
    from wakeline.ledger.store_postgres import PostgresLedgerStore
    from wakeline.schemas import Codec, packaged_schemas

    url = dsn or DatabaseSettings.from_env().dsn
    decode = Codec(packaged_schemas(), resolver=PostgresSchemaResolver(url)).decode
    with PostgresLedgerStore(url) as pg:
        yield pg, decode, url
