"""The approval queue's processor: `<prefix>events` -> the queue in PostgreSQL (policy/queue.py).

It runs on the shared runner (processors/stream.py), group `<prefix>approval-queue`, hosted by
`wakeline worker` with the audit publisher. It keeps, for `wakeline approvals`:

- each ToolIntent whose policy decision is `require_approval` (the SDK sends it first, on the
  workflow's partition, then its ApprovalRequested);
- each ApprovalRequested, with the frame of its intent and whether the request's binding is
  that intent's (`binding_of_intent`): the CLI never signs a request that is not;
- every ApprovalGranted / ApprovalDenied as received, with whether it counts
  (`why_not`: its request, binding, the key the group lists, the signature, its expiry);
- the ToolResult of a waiting call, which closes its request.

Everything else is skipped on the writer schema's fingerprint (no decoding), as the loop
detector does. One PostgreSQL transaction per sink round; every write is keyed by an event id
and ignores rows already there, so the re-reading after a restart (from the group's committed
offset, committed only after the transaction) changes nothing. A record that decodes but
cannot be stored goes to the DLQ with the reason (its savepoint rolled back), so one bad
event never stalls the queue (the ledger holds it regardless); a database that is away fails
the round, which the runner redoes. Undecodable records are the audit publisher's to
dead-letter.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.ledger.records import LedgerRecord
from wakeline.policy import queue
from wakeline.schemas import default_codec

from .audit import clip
from .auditor import dlq_record
from .stream import (
    COMMITTED,
    Applied,
    Assigned,
    FrameTypes,
    KafkaRunner,
    Output,
    RunnerSettings,
)

log = logging.getLogger(__name__)

#: the event types the queue is made of
KEPT = frozenset({"ToolIntent", "ToolResult", "ApprovalRequested", "ApprovalGranted",
                  "ApprovalDenied"})  # fmt: skip


@dataclass
class _Batch:
    #: (record, event type, decoded event) of the kept events, in partition order
    items: list[tuple[LedgerRecord, str, dict[str, Any]]] = field(default_factory=list)
    commit: dict[int, int] = field(default_factory=dict)


class ApprovalQueueProcessor:
    """Events topic -> approval queue (runs on the Kafka runner, processors/stream.py)."""

    name = "approval-queue"
    fatal: tuple[type[BaseException], ...] = ()

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        topics: Topics | None = None,
        decode: Callable[[bytes], dict[str, Any]] | None = None,
        max_record_bytes: int = 900_000,
    ) -> None:
        self._connect = connect
        self.topics = topics or Topics()
        self.max_record_bytes = max_record_bytes
        self._conn: Any = None
        self.decode = decode or default_codec().decode
        self._types = FrameTypes(KEPT, self.decode)
        self.wait_for_sink: Callable[[], None] = lambda: None
        #: counters, for tests and logs
        self.requests = 0
        self.decisions = 0
        self.closed = 0
        self.undecodable = 0
        self.skipped = 0

    # -- runner protocol (consumer thread) ---------------------------------------------------
    def assign(self, partitions: list[int]) -> Assigned:
        return Assigned(dict.fromkeys(partitions, COMMITTED))

    def revoke(self, partitions: list[int]) -> None:
        pass

    def handle(self, records: list[LedgerRecord], now: float) -> list[Any]:
        batch = _Batch()
        types = self._types
        for r in records:
            batch.commit[r.partition] = r.offset + 1
            v = r.value
            kind = types(v)
            if not kind:
                continue
            try:
                e = self.decode(v)
            except Exception:  # noqa: BLE001 - the auditor dead-letters it
                self.undecodable += 1
                continue
            if kind == "ToolIntent" and e.get("policy_decision") != "require_approval":
                continue
            batch.items.append((r, kind, e))
        return [batch] if batch.commit else []

    def due(self, now: float) -> list[Any]:
        return []

    def drain(self, partitions: list[int]) -> list[Any]:
        return []

    # -- runner protocol (sink thread) -------------------------------------------------------
    def apply(self, works: list[Any]) -> list[Applied]:
        items = [i for w in works for i in w.items]
        dead: list[Output] = []
        if items:
            if self._conn is None:
                self._conn = self._connect()
            conn = self._conn
            with conn.transaction(), conn.cursor() as cur:
                results: list[tuple[str, str, str, int]] = []
                for r, kind, e in items:
                    if kind == "ToolResult":
                        results.append((e["intent_id"], e["event_id"], e["status"], e["time"]))
                        continue
                    try:
                        with conn.transaction():  # a savepoint: one bad event is skipped
                            self._store(cur, r, kind, e)
                    except (psycopg.OperationalError, psycopg.InterfaceError):
                        raise  # the database, not the event: the runner redoes the round
                    except Exception as exc:  # noqa: BLE001 - dead-lettered with the reason
                        dead.append(self._dead_letter(r, kind, exc))
                self.closed += queue.close(cur, results)
        out = [Applied(w, [], w.commit) for w in works]
        if dead and out:
            out[-1].outputs = dead
        return out

    def _dead_letter(self, r: LedgerRecord, kind: str, exc: Exception) -> Output:
        self.skipped += 1
        reason = f"the approval queue cannot store this {kind}: {type(exc).__name__}: {exc}"
        log.error("approval queue: event sent to the DLQ partition=%d offset=%d reason=%s",
                  r.partition, r.offset, clip(reason, 300))  # fmt: skip
        value, key, headers = dlq_record(r, reason, self.topics.events, None,
                                         self.max_record_bytes, component=self.name)  # fmt: skip
        return Output(self.topics.dlq, value, key, headers)

    def _store(self, cur: Any, r: LedgerRecord, kind: str, e: dict) -> None:
        if kind == "ToolIntent":
            queue.record_intent(cur, e, r.partition, r.offset, r.value)
        elif kind == "ApprovalRequested":
            key = r.key if r.key is not None else e["workflow_id"].encode()
            if queue.record_request(cur, e, r.partition, r.offset, r.value, key, self.decode):
                self.requests += 1
        elif queue.record_decision(cur, e, r.partition, r.offset) is not None:
            self.decisions += 1

    def delivered(self, applied: list[Applied], refused: list[tuple[Output, str]]) -> list[Output]:
        for _, why in refused:  # DLQ copies are bounded: only a misconfigured broker refuses
            log.error("approval queue: the broker refused a DLQ record reason=%s", why)
        return []

    def reset(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is being dropped
                conn.close()

    def close(self) -> None:
        self.reset()


def approval_runner(kafka: KafkaSettings, dsn: str, *, stall_after_s: float = 60.0) -> KafkaRunner:
    """The approval queue on the Kafka runner, group `<prefix>approval-queue`."""
    from wakeline.infra import db

    return KafkaRunner(
        ApprovalQueueProcessor(lambda: db.connect(dsn), topics=kafka.topics),
        kafka.topics.events,
        kafka.client_config,
        RunnerSettings(
            group_id=f"{kafka.topics.prefix}approval-queue",
            batch_size=5000,
            poll_timeout_s=0.05,
            stall_after_s=stall_after_s,
        ),  # fmt: skip
    )
