"""The policy engine in the SDK: `Emitter(policy=...)` or WAKELINE_POLICY turns it on (the
default stays allow-all), and what it decides is in the intent, before the tool runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from wakeline.infra.settings import KafkaSettings, Topics
from wakeline.policy.engine import Policy
from wakeline.producers import Emitter, PolicyDenied, ToolRegistry
from wakeline.producers.gates import allow_all

from .conftest import Recorder

POLICY = """\
# First match wins, top to bottom.
[[rule]]
name = "no-big-puts"
tool = "kv.*"
args = ["value > 100"]
outcome = "deny"
reason = "too big"

[[rule]]
name = "shadow-all-puts"
mode = "shadow"
tool = "kv.put"
outcome = "deny"

[[rule]]
name = "puts"
tool = "kv.put"
outcome = "allow"
"""


def emitter_of(tmp_path: Path, registry: ToolRegistry, **kw) -> tuple[Emitter, Recorder]:  # noqa: ANN003
    rec = Recorder()
    kafka = KafkaSettings(bootstrap="127.0.0.1:1", topics=Topics("unit."))
    em = Emitter(
        kafka,
        spool_dir=tmp_path / "spool",
        registry=registry,
        quarantine_gate=False,
        publish_schemas=False,
        transport=rec,
        **kw,
    )
    return em, rec


def test_a_denied_call_never_runs_and_its_intent_names_rule_and_version(
    tmp_path: Path, registry: ToolRegistry
) -> None:
    policy = Policy.parse(POLICY, "kv")
    em, rec = emitter_of(tmp_path, registry, policy=policy)
    ran = []
    ctx = em.workflow("wf-1", agent_id="a", principal="p")
    with pytest.raises(PolicyDenied, match="too big"):
        ctx.call("kv.put", lambda **kw: ran.append(kw), {"key": "k", "value": 500})
    ctx.call("kv.put", lambda **kw: ran.append(kw), {"key": "k", "value": 5})
    em.close(timeout=1)
    assert ran == [{"key": "k", "value": 5}]
    events = rec.events()
    assert [e["type"] for e in events] == ["ToolIntent", "ToolResult"] * 2
    denied, allowed = events[0], events[2]
    assert events[1]["status"] == "denied" and events[3]["status"] == "ok"
    assert denied["policy_decision"] == "deny"
    assert (denied["policy_rule"], denied["policy_version"]) == ("no-big-puts", policy.version)
    assert denied["policy_reason"] == "kv: too big"
    assert (allowed["policy_rule"], allowed["policy_shadow"]) == ("puts", ["shadow-all-puts=deny"])


def test_wakeline_policy_turns_the_engine_on(
    tmp_path: Path, registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WAKELINE_POLICY", raising=False)
    em, _ = emitter_of(tmp_path / "a", registry)
    assert em.policy is allow_all
    em.close(timeout=1)
    monkeypatch.setenv("WAKELINE_POLICY", "default")
    em, rec = emitter_of(tmp_path / "b", registry)
    assert isinstance(em.policy, Policy) and em.policy.name == "builtin"
    ctx = em.workflow("wf-2", agent_id="a", principal="p")
    with pytest.raises(PolicyDenied, match="not registered"):
        ctx.call("never.registered", lambda: None)
    assert ctx.call("kv.get", lambda key: 1, {"key": "x"}) == 1
    em.close(timeout=1)
    rules = [e["policy_rule"] for e in rec.events() if e["type"] == "ToolIntent"]
    assert rules == ["unregistered-tools", "reads"]


def test_a_policy_from_the_environment_brings_approvals_only_when_it_can_ask_for_them(
    tmp_path: Path, registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Policy.default().asks_approvals  # irreversible high impact waits for admins
    plain = tmp_path / "plain.toml"
    plain.write_text(POLICY)  # deny and allow only (its shadow rule decides nothing)
    assert not Policy.load(plain).asks_approvals
    monkeypatch.setenv("WAKELINE_POLICY", "default")
    em, _ = emitter_of(tmp_path / "a", registry)
    assert em._own_authorizer is not None  # the emitter made it, and closes it
    em.close(timeout=1)
    monkeypatch.setenv("WAKELINE_POLICY", str(plain))
    em, _ = emitter_of(tmp_path / "b", registry)
    assert em._own_authorizer is None
    em.close(timeout=1)
    given = object()
    monkeypatch.setenv("WAKELINE_POLICY", "default")
    em, _ = emitter_of(tmp_path / "c", registry, authorizer=given)
    assert em._own_authorizer is None and em._policy_gate.authorizer is given
    em.close(timeout=1)
