"""Pairing checks over decoded events (docs/ledger-format.md §9, docs/contracts.md).

All pairing is scoped to one partition (events of one workflow share a partition: the record
key is the workflow id), in leaf order:

- every ToolResult answers a ToolIntent that is an earlier leaf of the same partition
  (`pairing.orphan_result`), and no intent has two results (`pairing.duplicate_result`);
- every ToolIntent has a result by the end of the input; an `aborted` result is the explicit
  abort (`pairing.unanswered_intent`);
- every WorkflowCompleted seal counts exactly the events of its (workflow_id, run_id) that
  precede it in the partition, of every type, earlier seals included (`pairing.seal_count`),
  and names the last of them as `last_event_id`, null when it counts none
  (`pairing.seal_last_event`).

An event whose `event_id` repeats an earlier event of the same run in the same partition is a
redelivery: it is counted once, paired once, and reported as a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from wakeline.errors import SchemaError

Decode = Callable[[bytes], dict]


def default_decode() -> Decode | None:
    """`wakeline.schemas.decode_event`, imported lazily; None when it is not available."""
    try:
        from wakeline.schemas import decode_event
    except ImportError:
        return None
    return decode_event


@dataclass(frozen=True, slots=True)
class Position:
    partition: int
    leaf_index: int
    offset: int
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class PairingIssue:
    verdict: str
    check: str
    message: str
    where: Position
    expected: str | None = None
    found: str | None = None


class _Run:
    __slots__ = ("count", "last", "ids")

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None
        self.ids: set[str | None] = set()


class PairingChecker:
    def __init__(self, decode: Decode) -> None:
        self.decode = decode
        #: (partition, intent id) -> (partition, leaf index, offset) of the intent
        self.pending: dict[tuple[int, str], tuple[int, int, int]] = {}
        #: (partition, intent id) -> event id of the result that answered it
        self.answered: dict[tuple[int, str], str | None] = {}
        self.runs: dict[tuple[int, object, object], _Run] = {}
        self.undecodable = 0
        self.first_undecodable: Position | None = None
        self.redelivered = 0
        self.first_redelivered: Position | None = None
        self.decoded = 0
        #: the event the last `add` decoded (None when it did not decode)
        self.last_event: dict | None = None

    def add(
        self, partition: int, leaf_index: int, offset: int, value: bytes | None
    ) -> PairingIssue | None:
        """Account for one event; return an issue it reveals at once, if any."""
        self.last_event = None
        if value is None:
            return self._undecodable(Position(partition, leaf_index, offset))
        try:
            ev = self.decode(value)
        except SchemaError:
            return self._undecodable(Position(partition, leaf_index, offset))
        self.decoded += 1
        self.last_event = ev
        kind = ev.get("type")
        event_id = ev.get("event_id")
        key = (partition, ev.get("workflow_id"), ev.get("run_id"))
        run = self.runs.get(key)
        if run is None:
            run = self.runs[key] = _Run()
        here = Position(partition, leaf_index, offset, event_id)
        if event_id in run.ids:
            self.redelivered += 1
            if self.first_redelivered is None:
                self.first_redelivered = here
            return None
        issue = None
        if kind == "ToolIntent":
            if event_id is not None:
                self.pending[(partition, event_id)] = (partition, leaf_index, offset)
        elif kind == "ToolResult":
            intent = (partition, ev.get("intent_id"))
            if intent in self.pending:
                del self.pending[intent]
                self.answered[intent] = event_id
            elif intent in self.answered:
                issue = PairingIssue(
                    "tampered",
                    "pairing.duplicate_result",
                    f"result {event_id} answers intent {intent[1]}, which result "
                    f"{self.answered[intent]} already answered",
                    here,
                    expected="one ToolResult per ToolIntent",
                    found=f"a second result after {self.answered[intent]}",
                )
            else:
                issue = PairingIssue(
                    "tampered",
                    "pairing.orphan_result",
                    f"result {event_id} answers intent {intent[1]}, which is not in the ledger "
                    "before it in this partition",
                    here,
                    expected=f"ToolIntent {intent[1]}",
                    found="nothing",
                )
        elif kind == "WorkflowCompleted":
            want_count, want_last = ev.get("event_count"), ev.get("last_event_id")
            if want_count != run.count:
                issue = PairingIssue(
                    "tampered",
                    "pairing.seal_count",
                    f"seal {event_id} of workflow {key[1]} run {key[2]} counts {want_count} "
                    f"events, the ledger holds {run.count} before it",
                    here,
                    expected=str(want_count),
                    found=str(run.count),
                )
            elif want_last != run.last:
                issue = PairingIssue(
                    "tampered",
                    "pairing.seal_last_event",
                    f"seal {event_id} names last event {want_last}, the ledger has {run.last}",
                    here,
                    expected=str(want_last),
                    found=str(run.last),
                )
        run.count += 1
        run.last = event_id
        run.ids.add(event_id)
        return issue

    def _undecodable(self, where: Position) -> None:
        # still a leaf, and not tampering: the ledger commits to whatever was produced
        self.undecodable += 1
        if self.first_undecodable is None:
            self.first_undecodable = where
        return None

    def finish(self) -> list[PairingIssue]:
        return [
            PairingIssue(
                "incomplete",
                "pairing.unanswered_intent",
                f"intent {key[1]} has no result and no explicit abort",
                Position(*where, key[1]),
                expected="ToolResult",
                found="nothing",
            )
            for key, where in sorted(self.pending.items(), key=lambda kv: kv[1])
        ]
