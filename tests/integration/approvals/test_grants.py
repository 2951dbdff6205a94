"""Standing grants against the real broker, made with `wakeline grants`: a grant covers a call
only while it is signed by a member with the group's key, matches agent and tool, its limits
hold, it has not expired and no member revoked it; otherwise the call asks for approval."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.policy import approvals as ap
from wakeline.producers.errors import WaitTimedOut
from wakeline.schemas import new_event_id

from .kit import new_wf

pytestmark = pytest.mark.integration


@pytest.fixture
def keys(world, tmp_path, monkeypatch):
    directory = tmp_path / "keys"
    for who in (world.alice, world.bob, world.mallory):
        ap.save_private_key(who.name, who.key, directory)
    monkeypatch.setenv("WAKELINE_TOPIC_PREFIX", world.kafka.topics.prefix)
    return directory


def wakeline(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def key_of(keys, principal: str) -> str:
    return str(ap.key_path(principal, keys))


def create(keys, grantor: str, agent: str, *limits: str, tool: str = "stripe.refund") -> str:
    extra = [a for limit in limits for a in ("--limit", limit)]
    key = key_of(keys, grantor)
    out = wakeline("grants", "create", "--as", grantor, "--key", key, "--agent", agent,
                   "--tool", tool, *extra, "--expires", "1h", "--json")  # fmt: skip
    return json.loads(out)["grant_id"]


def held(world, key: bytes, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while world.approvals.grants.get(key) is None:
        assert time.monotonic() < deadline, f"the SDK's grants reader never got {key!r}"
        time.sleep(0.01)


def refund(world, emitter, agent: str, amount: int, follow=None):
    wf = new_wf()
    events = follow(wf) if follow is not None else None
    ctx = emitter.workflow(wf, agent_id=agent, principal="carol@example.com")
    value = ctx.call("stripe.refund", lambda **a: f"re-{a['amount']}", {"amount": amount})
    return value, events


def test_a_grant_covers_matching_calls_within_its_limits(world, emitter, keys, follow):
    world.timeout_s = 2.0
    agent = f"billing-{uuid.uuid4().hex[:8]}"
    gid = create(keys, world.alice.name, "billing-*", "amount <= 500")
    held(world, ap.grants_key(gid))
    value, events = refund(world, emitter, agent, 120, follow)
    assert value == "re-120"
    events.until(lambda ev: any(e["type"] == "ToolResult" for e in ev))
    assert events.types() == ["ToolIntent", "ToolResult"]  # no request: the grant covered it
    assert events.events[0]["grant_id"] == gid and events.events[0]["approval_id"] is None
    # the limit does not hold: the call asks, and nobody answers
    with pytest.raises(WaitTimedOut):
        refund(world, emitter, agent, 900)
    # another tool, another agent: not covered
    with pytest.raises(WaitTimedOut):
        refund(world, emitter, "support-bot", 120)
    rows = json.loads(wakeline("grants", "list", "--json"))
    assert any(r["grant_id"] == gid and r["status"] == "active" for r in rows)


def test_a_revoked_grant_covers_nothing_and_only_a_member_revokes(world, emitter, keys):
    world.timeout_s = 2.0
    agent = f"billing-{uuid.uuid4().hex[:8]}"
    gid = create(keys, world.alice.name, agent)
    held(world, ap.grants_key(gid))
    assert refund(world, emitter, agent, 10)[0] == "re-10"
    wakeline("grants", "revoke", gid, "--as", world.mallory.name,
             "--key", key_of(keys, world.mallory.name))  # fmt: skip  # not in the group
    held(world, ap.revocation_key(gid, world.mallory.name))
    assert refund(world, emitter, agent, 11)[0] == "re-11"
    wakeline("grants", "revoke", gid, "--as", world.bob.name, "--reason", "quarter closed",
             "--key", key_of(keys, world.bob.name))  # fmt: skip
    held(world, ap.revocation_key(gid, world.bob.name))
    with pytest.raises(WaitTimedOut):
        refund(world, emitter, agent, 12)
    rows = json.loads(wakeline("grants", "list", "--all", "--json"))
    (row,) = [r for r in rows if r["grant_id"] == gid]
    assert row["status"] == "revoked" and world.bob.name in row["revoked_by"]


def publish_grant(world, grantor, agent, *, expires_in_s=3600.0, key=None, public_key=None,
                  limits=()):  # fmt: skip
    now = time.time_ns() // 1000
    st = ap.GrantStatement(new_event_id(), grantor.name, agent, "stripe.*", tuple(limits),
                           now + int(expires_in_s * 1e6))  # fmt: skip
    signer = key or grantor.key
    pub = public_key if public_key is not None else grantor.public
    ap.publish_grant(world.kafka, ap.grant_event(st, st.sign(signer), pub, time_us=now))
    held(world, ap.grants_key(st.grant_id))
    return st.grant_id


@pytest.mark.parametrize(
    "case", ["expired", "grantor not in the group", "member's name, another key",
             "signature forged", "quorum of two", "limit that does not compile"],
)  # fmt: skip
def test_a_grant_that_does_not_hold_covers_nothing(world, emitter, case, caplog):
    caplog.set_level("WARNING", "wakeline.producers.approvals")
    world.timeout_s = 1.5
    agent = f"billing-{uuid.uuid4().hex[:8]}"
    other = ap.generate_key()
    if case == "expired":
        publish_grant(world, world.alice, agent, expires_in_s=-1)
        why = "expired"
    elif case == "grantor not in the group":
        publish_grant(world, world.mallory, agent)
        why = "not in the approver group"
    elif case == "member's name, another key":
        publish_grant(world, world.alice, agent, key=other, public_key=ap.public_bytes(other))
        why = "not signed with the key the policy lists"
    elif case == "signature forged":
        publish_grant(world, world.alice, agent, key=other)
        why = "the signature does not verify"
    elif case == "quorum of two":
        world.quorum = 2
        publish_grant(world, world.alice, agent)
        why = "a grant is one grantor's"
    else:
        publish_grant(world, world.alice, agent, limits=("amount <<< 5",))
        why = "cannot be read"
    with pytest.raises(WaitTimedOut):
        refund(world, emitter, agent, 1)
    assert why in caplog.text
