"""The SDK's approvals without a broker: `Approvals.offline()` fed records by hand, an emitter
writing only to its spool. What a waiting call does with each decision it receives, what a
grant covers, and the journal of waiting calls."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings
from wakeline.policy import approvals as ap
from wakeline.producers import Emitter, ToolRegistry
from wakeline.producers.approvals import Approvals
from wakeline.producers.errors import ApprovalDenied, WaitTimedOut
from wakeline.producers.gates import ApproverGroup, PolicyDecision
from wakeline.producers.spool import WaitJournal
from wakeline.schemas import decode_event, encode_event, new_event_id

ALICE, BOB = ap.generate_key(), ap.generate_key()
GROUP = ApproverGroup("finance", {"alice": ap.public_bytes(ALICE), "bob": ap.public_bytes(BOB)})


def make(tmp_path: Path, *, quorum: int = 1, timeout_s: float = 10.0) -> tuple[Emitter, Approvals]:
    approvals = Approvals.offline()
    registry = ToolRegistry()
    registry.declare("pay", reversibility="irreversible", impact="high", redact=("card",))
    em = Emitter(
        KafkaSettings(bootstrap=""),
        spool_dir=tmp_path / "spool",
        registry=registry,
        policy=lambda _r: PolicyDecision(
            "require_approval",
            "payments",
            "p",
            version="v1",
            approvers=GROUP,
            quorum=quorum,
            timeout_s=timeout_s,
        ),  # fmt: skip
        authorizer=approvals,
        spool_only=True,
        quarantine_gate=False,
        loop_guard=False,
        publish_schemas=False,
    )
    return em, approvals


def spooled(em: Emitter) -> list[dict]:
    return [decode_event(r.value) for r in sorted(em.spool.read(), key=lambda r: r.seq)]


def request_of(em: Emitter, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [e for e in spooled(em) if e["type"] == "ApprovalRequested"]
        if got and got[-1]["event_id"] in em._policy_gate.authorizer._waiting:  # type: ignore[union-attr]
            return got[-1]
        time.sleep(0.005)
    raise AssertionError("no request")


def decide(approvals: Approvals, request: dict, who: str, key, decision="approve", **kw) -> None:
    expires = 0 if decision == "deny" else kw.pop("expires", time.time_ns() // 1000 + 60_000_000)
    st = ap.Statement(decision, request["event_id"], kw.pop("binding", request["intent_digest"]),
                      who, expires)  # fmt: skip
    public = kw.pop("public", ap.public_bytes(key))
    event = ap.decision_event(request, st, st.sign(key), public, event_id=new_event_id(),
                              time_us=1, comment=kw.pop("comment", None))  # fmt: skip
    approvals.apply_decision(ap.approvals_key(request["event_id"], who), encode_event(event))


def run(fn):
    out: dict = {}

    def go() -> None:
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out


def test_the_request_binds_the_call_and_records_no_secret(tmp_path):
    em, approvals = make(tmp_path)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    t, out = run(lambda: ctx.call("pay", lambda **a: "paid", {"amount": 5, "card": "4111-1111"}))
    request = request_of(em)
    intent = next(e for e in spooled(em) if e["type"] == "ToolIntent")
    assert request["intent_digest"] == ap.binding_of_intent(intent, "v1")
    assert "4111" not in request["args"] and request["approvers"] == ["finance"]
    assert request["approver_keys"]["alice"] == ap.public_key_text(ALICE)
    decide(approvals, request, "alice", ALICE)
    t.join(5)
    assert out == {"value": "paid"}
    assert not list(em.waiting.directory.glob("*.json"))
    em.close(0)


def test_only_the_valid_decisions_count(tmp_path, caplog):
    em, approvals = make(tmp_path, quorum=2)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    t, out = run(lambda: ctx.call("pay", lambda **a: "paid", {"amount": 5}))
    request = request_of(em)
    mallory = ap.generate_key()
    decide(approvals, request, "mallory", mallory)  # not a member
    decide(approvals, request, "bob", mallory, public=ap.public_bytes(mallory))  # bob's name
    decide(approvals, request, "alice", ALICE, expires=1)  # expired
    decide(approvals, request, "alice", ALICE, binding=b"\x01" * 32)  # another call
    decide(approvals, request, "alice", ALICE)  # one of two
    assert t.is_alive()
    for why in ("not in the approver group", "not signed with the key", "expired",
                "bound to another call"):  # fmt: skip
        assert why in caplog.text
    decide(approvals, request, "bob", BOB)
    t.join(5)
    assert out == {"value": "paid"}
    em.close(0)


def test_one_denial_denies_even_after_an_approval_short_of_quorum(tmp_path):
    em, approvals = make(tmp_path, quorum=2)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    t, out = run(lambda: ctx.call("pay", lambda **a: "paid", {"amount": 5}))
    request = request_of(em)
    decide(approvals, request, "alice", ALICE)
    decide(approvals, request, "bob", BOB, "deny", comment="no")
    t.join(5)
    assert isinstance(out["error"], ApprovalDenied) and "denied by bob" in str(out["error"])
    results = [e for e in spooled(em) if e["type"] == "ToolResult"]
    assert [r["status"] for r in results] == ["denied"]
    em.close(0)


def test_a_timeout_denies_with_an_unsigned_sdk_denial(tmp_path):
    em, _ = make(tmp_path, timeout_s=0.2)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    with pytest.raises(WaitTimedOut):
        ctx.call("pay", lambda **a: "paid", {"amount": 5})
    types = [e["type"] for e in spooled(em)]
    assert types == ["ToolIntent", "ApprovalRequested", "ApprovalDenied", "ToolResult"]
    denial = spooled(em)[2]
    assert denial["timed_out"] and denial["approver"] == "wakeline-sdk"
    assert denial["signature"] is None
    em.close(0)


def test_an_approval_after_the_timeout_changes_nothing(tmp_path):
    em, approvals = make(tmp_path, timeout_s=0.2)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    with pytest.raises(WaitTimedOut):
        ctx.call("pay", lambda **a: "paid", {"amount": 5})
    request = next(e for e in spooled(em) if e["type"] == "ApprovalRequested")
    decide(approvals, request, "alice", ALICE)  # too late: no waiter, nothing runs
    assert approvals._waiting == {}
    em.close(0)


def grant(approvals, who, key, *, agent="bot", tool="pay", limits=(), expires_in_s=60.0,
          public=None):  # fmt: skip
    st = ap.GrantStatement(new_event_id(), who, agent, tool, tuple(limits),
                           time.time_ns() // 1000 + int(expires_in_s * 1e6))  # fmt: skip
    event = ap.grant_event(st, st.sign(key), public or ap.public_bytes(key), time_us=1)
    approvals.apply_grant(ap.grants_key(st.grant_id), encode_event(event))
    return st.grant_id


def revoke(approvals, gid, who, key):
    st = ap.RevocationStatement(gid, who)
    event = ap.revocation_event(st, st.sign(key), ap.public_bytes(key), event_id=new_event_id(),
                                time_us=1)  # fmt: skip
    approvals.apply_grant(ap.revocation_key(gid, who), encode_event(event))


def test_a_grant_covers_exactly_what_it_says(tmp_path):
    em, approvals = make(tmp_path, timeout_s=0.05)
    gid = grant(approvals, "alice", ALICE, agent="b*", limits=("amount <= 500",))
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    assert ctx.call("pay", lambda **a: "paid", {"amount": 5}) == "paid"
    assert "ApprovalRequested" not in [e["type"] for e in spooled(em)]
    with pytest.raises(WaitTimedOut):
        ctx.call("pay", lambda **a: "paid", {"amount": 501})  # the limit does not hold
    with pytest.raises(WaitTimedOut):
        ctx.call("pay", lambda **a: "paid", {})  # no amount: a limit on it cannot hold
    other = em.workflow("wf", agent_id="crawler", principal="carol")
    with pytest.raises(WaitTimedOut):
        other.call("pay", lambda **a: "paid", {"amount": 5})
    mallory = ap.generate_key()
    revoke(approvals, gid, "mallory", mallory)  # not a member: ignored
    assert ctx.call("pay", lambda **a: "paid", {"amount": 6}) == "paid"
    revoke(approvals, gid, "bob", BOB)
    with pytest.raises(WaitTimedOut):
        ctx.call("pay", lambda **a: "paid", {"amount": 7})
    em.close(0)


def test_a_replayed_grant_does_not_undo_its_revocation(tmp_path):
    em, approvals = make(tmp_path, timeout_s=0.05)
    gid = grant(approvals, "alice", ALICE)
    raw = approvals.grants.get(ap.grants_key(gid))
    revoke(approvals, gid, "alice", ALICE)
    approvals.apply_grant(ap.grants_key(gid), encode_event(raw))  # the signed grant, again
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    with pytest.raises(WaitTimedOut):
        ctx.call("pay", lambda **a: "paid", {"amount": 5})
    em.close(0)


def test_grant_statements_do_not_verify_as_each_other():
    st = ap.GrantStatement("g", "alice", "*", "*", (), 1)
    sig = st.sign(ALICE)
    assert st.verify(sig, ap.public_bytes(ALICE))
    assert not ap.GrantStatement("g", "alice", "*", "*", ("amount < 1",), 1).verify(
        sig, ap.public_bytes(ALICE)
    )
    assert not ap.RevocationStatement("g", "alice").verify(sig, ap.public_bytes(ALICE))
    assert not st.verify(sig, ap.public_bytes(BOB)) and not st.verify(None, None)


def test_the_journal_hands_out_a_dead_process_entries_once(tmp_path):
    journal = WaitJournal(tmp_path)
    journal.add("i-1", "wf", "r-1", "pay")
    assert journal.leftovers("wf", "r-1") == []  # this process's own: still waiting
    (tmp_path / "junk.json").write_text("{not json")
    (tmp_path / "i-9.json.tmp").write_text("{}")
    later = WaitJournal(tmp_path)  # the next process on this spool
    assert not (tmp_path / "i-9.json.tmp").exists()
    assert later.orphans == 1
    assert later.leftovers("wf", "r-2") == []
    (entry,) = later.leftovers("wf", "r-1")
    assert entry == {"intent_id": "i-1", "workflow_id": "wf", "run_id": "r-1", "tool": "pay"}
    assert later.leftovers("wf", "r-1") == []
    later.clear("i-1")
    assert not (tmp_path / "i-1.json").exists() and (tmp_path / "junk.json").exists()


def _signed_event(request: dict, who: str, key, decision: str = "approve") -> dict:
    expires = 0 if decision == "deny" else time.time_ns() // 1000 + 60_000_000
    st = ap.Statement(decision, request["event_id"], request["intent_digest"], who, expires)  # type: ignore[arg-type]
    return ap.decision_event(request, st, st.sign(key), ap.public_bytes(key),
                             event_id=new_event_id(), time_us=1)  # fmt: skip


@pytest.mark.parametrize("tamper", ["deny re-typed as approval", "expiry extended",
                                    "no public key", "garbage record", "tombstone"])  # fmt: skip
def test_a_tampered_decision_never_runs_the_call(tmp_path, caplog, tamper):
    em, approvals = make(tmp_path, timeout_s=10.0)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    t, out = run(lambda: ctx.call("pay", lambda **a: "paid", {"amount": 5}))
    request = request_of(em)
    key = ap.approvals_key(request["event_id"], "alice")
    if tamper == "deny re-typed as approval":
        denial = _signed_event(request, "alice", ALICE, "deny")
        kept = {k: v for k, v in denial.items() if k not in ("reason", "timed_out")}
        retyped = {**kept, "type": "ApprovalGranted", "expires_at": 2**62, "comment": None}
        value = encode_event(retyped)
    elif tamper == "expiry extended":
        granted = _signed_event(request, "alice", ALICE)
        value = encode_event({**granted, "expires_at": granted["expires_at"] + 1})
    elif tamper == "no public key":
        value = encode_event({**_signed_event(request, "alice", ALICE), "public_key": None})
    elif tamper == "garbage record":
        # a known writer schema (no lookup), a body cut short
        value = encode_event(_signed_event(request, "alice", ALICE))[:-7]
    else:
        value = None
    approvals.apply_decision(key, value)
    assert t.is_alive()
    # the call is still waiting; a valid denial ends it (the tampered record did not run it)
    decide(approvals, request, "bob", BOB, "deny")
    t.join(5)
    assert isinstance(out.get("error"), ApprovalDenied)
    if tamper in ("deny re-typed as approval", "expiry extended"):
        assert "the signature does not verify" in caplog.text
    if tamper == "no public key":
        assert "not signed with the key the policy lists" in caplog.text
    em.close(0)


def test_an_approval_waits_for_the_reader_to_be_live_a_denial_does_not(tmp_path):
    em, approvals = make(tmp_path)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")
    t, out = run(lambda: ctx.call("pay", lambda **a: "paid", {"amount": 5}))
    request = request_of(em)
    approvals.decisions.health = "catching_up"  # re-reading the topic after a restart
    decide(approvals, request, "alice", ALICE)
    assert t.is_alive()  # a denial could still be unread behind it
    approvals.decisions.health = "live"
    approvals._recount()  # what the reader's on_live does
    t.join(5)
    assert out == {"value": "paid"}
    t2, out2 = run(lambda: ctx.call("pay", lambda **a: "paid", {"amount": 6}))
    request = request_of(em)
    approvals.decisions.health = "catching_up"
    decide(approvals, request, "bob", BOB, "deny")
    t2.join(5)
    assert isinstance(out2.get("error"), ApprovalDenied)
    em.close(0)


def test_async_calls_wait_each_on_its_own_request(tmp_path):
    import asyncio

    em, approvals = make(tmp_path, timeout_s=0.3)
    ctx = em.workflow("wf", agent_id="bot", principal="carol")

    async def main():
        a = asyncio.ensure_future(ctx.acall("pay", lambda **k: "a", {"amount": 1}))
        b = asyncio.ensure_future(ctx.acall("pay", lambda **k: "b", {"amount": 2}))
        while len(approvals._waiting) < 2:
            await asyncio.sleep(0.005)
        requests = [e for e in spooled(em) if e["type"] == "ApprovalRequested"]
        assert len({r["event_id"] for r in requests}) == 2
        first = next(r for r in requests if '"amount":1' in r["args"])
        decide(approvals, first, "alice", ALICE)
        return await asyncio.gather(a, b, return_exceptions=True)

    got_a, got_b = asyncio.run(main())
    assert got_a == "a" and isinstance(got_b, WaitTimedOut)
    denials = [e for e in spooled(em) if e["type"] == "ApprovalDenied"]
    assert len(denials) == 1 and denials[0]["timed_out"]
    em.close(0)
