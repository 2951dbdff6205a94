"""Pairing checks over decoded events (docs/ledger-format.md §9, docs/contracts.md).

All pairing is scoped to one partition (events of one workflow share a partition: the record
key is the workflow id), in leaf order:

- every ToolResult answers a ToolIntent that is an earlier leaf of the same partition
  (`pairing.orphan_result`), and no intent has two results (`pairing.duplicate_result`);
- every ToolIntent has a result by the end of the input; an `aborted` result is the explicit
  abort (`pairing.unanswered_intent`);
- every WorkflowCompleted seal counts exactly the events of its (workflow_id, run_id) written
  by its own writer (the same `source`) that precede it in the partition, of every type,
  earlier seals included (`pairing.seal_count`), and names the last of them as
  `last_event_id`, null when it counts none (`pairing.seal_last_event`). Events others write
  into the run (a detector's alert, an operator's quarantine, an approver's decision) are
  not the agent's to count.

An event whose `event_id` repeats an earlier event of the same run in the same partition is a
redelivery: it is counted once, paired once, and reported as a warning.

The approval checks (`ApprovalChecker`, `approval.*`) ride on the same pass: every request
binds an earlier intent, every signed decision verifies with the key its request lists, and
every call that needed approval and ran had a quorum first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wakeline.errors import SchemaError

Decode = Callable[[bytes], dict]
_APPROVAL_KINDS = frozenset(
    {"ToolIntent", "ToolResult", "ApprovalRequested", "ApprovalGranted", "ApprovalDenied"}
)


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
    """One (partition, workflow, run): the event ids seen, and per writer (`source`) how
    many events it wrote and its last one: what that writer's seal must say."""

    __slots__ = ("by_source", "ids")

    def __init__(self) -> None:
        self.by_source: dict[str | None, list[Any]] = {}
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
        self.approvals = ApprovalChecker()

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
        source = ev.get("source")
        counted = run.by_source.get(source)
        if counted is None:
            counted = run.by_source[source] = [0, None]
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
            if want_count != counted[0]:
                issue = PairingIssue(
                    "tampered",
                    "pairing.seal_count",
                    f"seal {event_id} of workflow {key[1]} run {key[2]} counts {want_count} "
                    f"events, the ledger holds {counted[0]} of {source} before it",
                    here,
                    expected=str(want_count),
                    found=str(counted[0]),
                )
            elif want_last != counted[1]:
                issue = PairingIssue(
                    "tampered",
                    "pairing.seal_last_event",
                    f"seal {event_id} names last event {want_last}, the ledger has {counted[1]}",
                    here,
                    expected=str(want_last),
                    found=str(counted[1]),
                )
        counted[0] += 1
        counted[1] = event_id
        run.ids.add(event_id)
        if kind in _APPROVAL_KINDS:
            found = self.approvals.add(partition, ev, here)
            issue = issue or found
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


# -- approvals -------------------------------------------------------------------------------
#: results that say the tool ran: an approval was needed before it did
RAN = ("ok", "error")


class _Request:
    __slots__ = ("event", "decisions")

    def __init__(self, event: dict) -> None:
        self.event = event
        self.decisions: list = []  # policy.approvals.Signed, as recorded


class ApprovalChecker:
    """The approval checks (docs/ledger-format.md §9), per partition in leaf order, over the
    decoded events pairing counts (redeliveries are skipped before they get here):

    - a request has an event id no earlier request of its partition has
      (`approval.duplicate_request`), names an earlier require_approval intent of its
      partition (`approval.orphan`) and binds exactly that call (`approval.unbound`);
    - a signed decision answers an earlier request of its partition (`approval.orphan`),
      over that request's binding (`approval.unbound`), its signature verifies with the key
      it carries (`approval.bad_signature`), and that key is the one the request lists for
      the approver (`approval.wrong_key`);
    - an intent whose decision was require_approval, with no standing grant, whose result
      says it ran (ok or error) has before its result a request naming it and binding it, and
      a quorum of distinct approvers of that request's group whose approvals verify and had
      not expired when the call started (the result's time minus its duration), with no valid
      denial (`approval.quorum_missing`).

    The SDK's own timeout denial (timed_out, unsigned) is a denial nobody signed: it is
    neither checked nor counted."""

    def __init__(self) -> None:
        from wakeline.policy import approvals as core  # lazily: ledger-verify's core is pure

        self.core = core
        #: (partition, intent id) -> the decoded require_approval intent, until its result
        self.intents: dict[tuple[int, str], dict] = {}
        #: (partition, request id) -> the request and the decisions recorded for it
        self.requests: dict[tuple[int, str], _Request] = {}
        #: (partition, intent id) -> ids of the requests that name it
        self.asked: dict[tuple[int, str], list[str]] = {}
        #: signed decisions checked, and calls that ran on a quorum (the report's stats)
        self.decisions = 0
        self.approved_calls = 0

    def add(self, p: int, ev: dict, here: Position) -> PairingIssue | None:
        kind = ev.get("type")
        if kind == "ToolIntent":
            if ev.get("policy_decision") == "require_approval":
                self.intents[(p, ev.get("event_id"))] = ev  # type: ignore[index]
            return None
        if kind == "ApprovalRequested":
            return self._request(p, ev, here)
        if kind in ("ApprovalGranted", "ApprovalDenied"):
            return self._decision(p, ev, here)
        if kind == "ToolResult":
            intent = self.intents.pop((p, ev.get("intent_id")), None)  # type: ignore[arg-type]
            if intent is not None and ev.get("status") in RAN and not intent.get("grant_id"):
                return self._quorum(p, intent, ev, here)
        return None

    def _request(self, p: int, ev: dict, here: Position) -> PairingIssue | None:
        rid = ev.get("event_id")
        if (p, rid) in self.requests:  # another run's event with this id: the first one holds
            return PairingIssue(
                "tampered", "approval.duplicate_request",
                f"approval request {rid} repeats the event id of an earlier request of this "
                "partition (of another workflow or run): it could replace that request's group",
                here, expected="a new event id", found=str(rid),
            )  # fmt: skip
        self.requests[(p, rid)] = _Request(ev)  # type: ignore[index]
        intent = self.intents.get((p, ev.get("intent_id")))  # type: ignore[arg-type]
        if intent is None:
            return PairingIssue(
                "tampered", "approval.orphan",
                f"approval request {rid} names intent {ev.get('intent_id')}, which is not an "
                "earlier ToolIntent of this partition that requires approval",
                here, expected=f"ToolIntent {ev.get('intent_id')} (require_approval)",
                found="nothing",
            )  # fmt: skip
        self.asked.setdefault((p, intent["event_id"]), []).append(rid)  # type: ignore[arg-type]
        want = self._binding(intent, ev)
        if want != ev.get("intent_digest"):
            return PairingIssue(
                "tampered", "approval.unbound",
                f"approval request {rid} does not bind its intent {intent['event_id']}: "
                "the binding of that call is another",
                here, expected=_hex(want), found=_hex(ev.get("intent_digest")),
            )  # fmt: skip
        return None

    def _decision(self, p: int, ev: dict, here: Position) -> PairingIssue | None:
        if ev.get("timed_out") and not ev.get("signature"):
            return None
        eid, rid, who = ev.get("event_id"), ev.get("request_id"), ev.get("approver")
        req = self.requests.get((p, rid))  # type: ignore[arg-type]
        if req is None:
            return PairingIssue(
                "tampered", "approval.orphan",
                f"{ev.get('type')} {eid} answers request {rid}, which is not an earlier "
                "ApprovalRequested of this partition",
                here, expected=f"ApprovalRequested {rid}", found="nothing",
            )  # fmt: skip
        st = self.core.statement_of_event(ev)
        want = req.event.get("intent_digest")
        if st is None or st.binding != want:
            return PairingIssue(
                "tampered", "approval.unbound",
                f"{ev.get('type')} {eid} by {who} is over another binding than its request {rid}",
                here, expected=_hex(want), found=_hex(ev.get("intent_digest")),
            )  # fmt: skip
        signed = self.core.Signed(st, ev.get("signature"), ev.get("public_key"))
        req.decisions.append(signed)
        self.decisions += 1
        if not st.verify(signed.signature, signed.public_key):
            return PairingIssue(
                "tampered", "approval.bad_signature",
                f"{ev.get('type')} {eid} by {who}: the signature does not verify with the "
                "public key it carries",
                here, expected="an Ed25519 signature of the statement",
                found=_hex(ev.get("signature")) or "none",
            )  # fmt: skip
        listed = self.core.members_of(req.event.get("approver_keys") or {}).get(who)  # type: ignore[arg-type]
        if listed is None or bytes(listed) != bytes(signed.public_key or b""):
            return PairingIssue(
                "tampered", "approval.wrong_key",
                f"{ev.get('type')} {eid} by {who} is signed with a key its request {rid} does "
                "not list for them",
                here, expected=self.core.public_key_text(listed) if listed else "a member",
                found=self.core.public_key_text(bytes(signed.public_key or b"")),
            )  # fmt: skip
        return None

    def _quorum(self, p: int, intent: dict, result: dict, here: Position) -> PairingIssue | None:
        iid = intent["event_id"]
        started = int(result.get("time") or 0) - int(result.get("duration_us") or 0)
        named = intent.get("approval_id")
        best = None
        for rid in self.asked.pop((p, iid), []):
            req = self.requests[(p, rid)]
            if named is not None and rid != named:
                continue
            binding = self._binding(intent, req.event)
            if binding != req.event.get("intent_digest"):
                continue
            t = self.core.tally(
                req.decisions, request_id=rid, binding=binding,
                members=self.core.members_of(req.event.get("approver_keys") or {}),
                quorum=int(req.event.get("quorum") or 1), now_us=started,
            )  # fmt: skip
            if t.approved:
                self.approved_calls += 1
                return None
            if best is None or len(t.approved_by) > len(best[1].approved_by):
                best = (rid, t)
        if best is None:
            found = "no request that binds it"
        else:
            rid, t = best
            found = (
                f"denied by {t.denied_by}" if t.denied
                else f"{len(t.approved_by)} of {t.quorum} valid approvals (request {rid})"
            )  # fmt: skip
        return PairingIssue(
            "tampered", "approval.quorum_missing",
            f"intent {iid} required approval and ran (result {result.get('event_id')}: "
            f"{result.get('status')}) without a quorum of valid approvals before it: {found}",
            here, expected="a quorum of valid, unexpired approvals", found=found,
        )  # fmt: skip

    def _binding(self, intent: dict, request: dict) -> bytes | None:
        """The binding of `intent` for the request's policy version; None when the intent
        records another version (a ToolIntent's `policy_version`, when it has one)."""
        version = request.get("policy_version")
        if intent.get("policy_version") not in (None, version):
            return None
        try:
            return self.core.binding_of_intent(intent, version)
        except (KeyError, TypeError, ValueError):
            return None


def _hex(b: object) -> str | None:
    return bytes(b).hex() if isinstance(b, bytes | bytearray) else None
