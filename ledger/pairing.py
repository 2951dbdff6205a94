"""Pairing checks over decoded events (DESIGN §5, docs/contracts.md).

Every ToolIntent has a ToolResult (an `aborted` result is the explicit abort), every
ToolResult answers an earlier intent, and every WorkflowCompleted seal counts exactly the
events of its (workflow_id, run_id) that precede it in partition order, the last of which
is `last_event_id`. Events of one workflow share a partition, so partition order suffices.
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


class PairingChecker:
    def __init__(self, decode: Decode) -> None:
        self.decode = decode
        self.pending: dict[str, tuple[int, int, int]] = {}  # intent id -> partition, leaf, offset
        self.answered: set[str] = set()
        self.runs: dict[tuple[str, str], list] = {}  # (workflow, run) -> [count, last id]
        self.undecodable = 0
        self.first_undecodable: Position | None = None
        self.decoded = 0

    def add(
        self, partition: int, leaf_index: int, offset: int, value: bytes | None
    ) -> PairingIssue | None:
        """Account for one event; return an issue it reveals at once, if any."""
        if value is None:
            return self._undecodable(Position(partition, leaf_index, offset))
        try:
            ev = self.decode(value)
        except SchemaError:
            return self._undecodable(Position(partition, leaf_index, offset))
        self.decoded += 1
        kind = ev.get("type")
        event_id = ev.get("event_id")
        run = (ev.get("workflow_id"), ev.get("run_id"))
        issue = None
        if kind == "ToolIntent":
            if event_id is not None:
                self.pending[event_id] = (partition, leaf_index, offset)
        elif kind == "ToolResult":
            here = Position(partition, leaf_index, offset, event_id)
            intent_id = ev.get("intent_id")
            if intent_id in self.pending:
                del self.pending[intent_id]
                self.answered.add(intent_id)
            elif intent_id not in self.answered:
                issue = PairingIssue(
                    "tampered",
                    "pairing.orphan_result",
                    f"result {event_id} answers intent {intent_id}, which is not in the ledger "
                    "before it",
                    here,
                    expected=f"ToolIntent {intent_id}",
                    found="nothing",
                )
        elif kind == "WorkflowCompleted":
            here = Position(partition, leaf_index, offset, event_id)
            count, last = self.runs.get(run, (0, None))
            want_count, want_last = ev.get("event_count"), ev.get("last_event_id")
            if want_count != count:
                issue = PairingIssue(
                    "tampered",
                    "pairing.seal_count",
                    f"seal {event_id} of workflow {run[0]} run {run[1]} counts {want_count} "
                    f"events, the ledger holds {count} before it",
                    here,
                    expected=str(want_count),
                    found=str(count),
                )
            elif want_last != last:
                issue = PairingIssue(
                    "tampered",
                    "pairing.seal_last_event",
                    f"seal {event_id} names last event {want_last}, the ledger has {last}",
                    here,
                    expected=str(want_last),
                    found=str(last),
                )
        entry = self.runs.setdefault(run, [0, None])
        entry[0] += 1
        entry[1] = event_id
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
                f"intent {event_id} has no result and no explicit abort",
                Position(*where, event_id),
                expected="ToolResult",
                found="nothing",
            )
            for event_id, where in sorted(self.pending.items(), key=lambda kv: kv[1])
        ]
