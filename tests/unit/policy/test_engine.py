"""The policy engine: first match wins, shadow rules never change a decision, the index
decides as the plain top-to-bottom scan does, every error has its line and column, and the
built-in policy does what docs/policy.md says."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wakeline.policy.approvals import generate_key, public_key_text
from wakeline.policy.engine import Policy, PolicyError, parse_duration
from wakeline.producers.gates import PolicyRequest
from wakeline.producers.registry import IMPACTS, REVERSIBILITIES, ToolSpec, default_spec

KEY_A = public_key_text(generate_key())
KEY_B = public_key_text(generate_key())


def request(
    tool: str | ToolSpec = "stripe.charge",
    args: dict | None = None,
    *,
    reversibility: str = "compensable",
    impact: str = "high",
    agent: str = "billing-bot",
    principal: str = "alice@example.com",
    tenant: str | None = "acme",
    boundary: str | None = "prod-eu",
) -> PolicyRequest:
    spec = tool if isinstance(tool, ToolSpec) else ToolSpec(tool, reversibility, impact)  # type: ignore[arg-type]
    args = args or {}
    return PolicyRequest(
        spec, args, json.dumps(args), b"", "wf-1", agent, principal, tenant, boundary
    )


BILLING = textwrap.dedent(
    f"""\
    # First match wins: rules are read top to bottom.
    [policy]
    name = "billing"
    default = "deny"

    [approvers.finance]
    members = {{ "alice@example.com" = "{KEY_A}", "bob@example.com" = "{KEY_B}" }}

    [[rule]]
    name = "reads"
    reversibility = "read"
    outcome = "allow"

    [[rule]]
    name = "would-block-gbp"
    mode = "shadow"
    tool = "stripe.*"
    args = ['currency == "GBP"']
    outcome = "deny"

    [[rule]]
    name = "big-charges"
    tool = ["stripe.charge", "stripe.payout"]
    impact = ">=high"
    args = ["amount > 500", 'currency in ["USD","EUR","GBP"]']
    outcome = "require_approval"
    approvers = "finance"
    quorum = 2
    timeout = "15m"

    [[rule]]
    name = "charges"
    tool = "stripe.*"
    agent = "billing-*"
    outcome = "allow"

    [[rule]]
    name = "mail-inside"
    tool = "email.send"
    args = ['to ends_with "@example.com"']
    outcome = "allow"
    """
)


def test_first_match_wins_and_decisions_record_rule_and_version() -> None:
    policy = Policy.parse(BILLING, "x")
    version = blake3.blake3(BILLING.encode()).hexdigest()
    assert policy.name == "billing" and policy.version == version
    big = policy(request(args={"amount": 900, "currency": "USD"}))
    assert (big.outcome, big.rule, big.version) == ("require_approval", "big-charges", version)
    assert big.quorum == 2 and big.timeout_s == 900
    assert big.approvers is not None and set(big.approvers.members) == {
        "alice@example.com",
        "bob@example.com",
    }
    small = policy(request(args={"amount": 20, "currency": "USD"}))
    assert (small.outcome, small.rule) == ("allow", "charges")
    read = policy(request("stripe.charge", reversibility="read", impact="low"))
    assert read.rule == "reads"  # above big-charges, so it wins
    other = policy(request(args={"amount": 20}, agent="support-bot"))
    assert (other.outcome, other.rule) == ("deny", "default")
    mail = policy(request("email.send", {"to": "bob@example.com"}))
    assert mail.rule == "mail-inside"
    assert policy(request("email.send", {"to": "eve@evil.test"})).rule == "default"


def test_shadow_rule_is_recorded_not_enforced() -> None:
    policy = Policy.parse(BILLING)
    got = policy(request(args={"amount": 20, "currency": "GBP"}))
    assert (got.outcome, got.rule, got.shadow) == ("allow", "charges", ("would-block-gbp=deny",))
    assert policy(request(args={"amount": 20, "currency": "USD"})).shadow == ()


def test_tenant_boundary_principal_globs() -> None:
    policy = Policy.parse(
        textwrap.dedent(
            """\
            [[rule]]
            name = "prod"
            tenant = "acme"
            boundary = ["prod-*", "dr-?"]
            principal = "*@example.com"
            outcome = "deny"
            """
        )
    )
    assert policy(request()).rule == "prod"
    assert policy(request(boundary="dr-1")).rule == "prod"
    assert policy(request(boundary="staging")).rule == "default"
    assert policy(request(tenant=None)).rule == "default"  # no tenant matches no pattern
    assert policy(request(principal="mallory@example.com.evil")).rule == "default"


def test_unregistered_and_levels() -> None:
    policy = Policy.parse(
        textwrap.dedent(
            """\
            [[rule]]
            name = "unknown"
            registered = false
            outcome = "deny"
            [[rule]]
            name = "low-rev"
            reversibility = ">=compensable"
            impact = ["critical", "<=low"]
            outcome = "deny"
            """
        )
    )
    assert policy(request(default_spec("new.tool"))).rule == "unknown"
    assert policy(request(reversibility="irreversible", impact="critical")).rule == "low-rev"
    assert policy(request(reversibility="compensable", impact="low")).rule == "low-rev"
    assert policy(request(reversibility="compensable", impact="high")).rule == "default"
    assert policy(request(reversibility="reversible", impact="critical")).rule == "default"


def test_builtin_default_policy() -> None:
    policy = Policy.default()
    assert policy(request(default_spec("anything"))).outcome == "deny"
    assert policy(request(reversibility="read", impact="critical")).outcome == "allow"
    irreversible = policy(request(reversibility="irreversible", impact="high"))
    assert irreversible.outcome == "require_approval"
    assert irreversible.timeout_s == 900
    assert policy(request(reversibility="compensable", impact="critical")).outcome == (
        "require_approval"
    )
    assert policy(request(reversibility="compensable", impact="high")).outcome == "allow"
    assert policy(request(reversibility="irreversible", impact="medium")).outcome == "allow"
    assert "first rule that matches" in (
        Path(__file__).resolve().parents[3] / "policy" / "default.toml"
    ).read_text().replace("FIRST", "first")


def test_from_env(tmp_path: Path) -> None:
    assert Policy.from_env({}) is None
    assert Policy.from_env({"WAKELINE_POLICY": "default"}).name == "builtin"  # type: ignore[union-attr]
    f = tmp_path / "mine.toml"
    f.write_text('[[rule]]\nname = "all"\noutcome = "deny"\n')
    policy = Policy.from_env({"WAKELINE_POLICY": str(f)})
    assert policy is not None and policy.name == "mine"
    with pytest.raises(PolicyError, match="WAKELINE_POLICY=.*cannot read"):
        Policy.from_env({"WAKELINE_POLICY": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(
    ("text", "line", "column", "words"),
    [
        ("[[rule]]\nname = 'a'\noutcome = \n", 3, 11, "Invalid value"),
        ("[[rule]]\nname = 'a'\noutcome = 'allow'\ncolour = 'red'\n", 4, 1, "unknown key 'colour'"),
        ("[[rule]]\nname = 'a'\n  outcome = 'maybe'\n", 3, 3, "outcome is one of"),
        ("[[rule]]\noutcome = 'allow'\n", 1, 1, "needs a name"),
        (
            "[[rule]]\nname = 'a'\noutcome = 'allow'\nargs = ['amount > 5', 'amount ~ 5']\n",
            4,
            31,  # the ~
            "expected an operator",
        ),
        (
            "[[rule]]\nname = 'a'\noutcome = 'require_approval'\napprovers = 'ops'\n",
            4,
            1,
            "approver group 'ops' is not defined",
        ),
        (
            "[approvers.ops]\nmembers = { alice = 'ed25519:AAAA' }\n",
            2,
            13,
            "approver alice of group ops",
        ),
        (
            "[approvers.ops.members]\nalice = 'ed25519:AAAA'\n",
            2,
            1,
            "approver alice of group ops",
        ),
        (
            f"[approvers.ops]\nmembers = {{ a = '{KEY_A}' }}\n[[rule]]\nname = 'x'\n"
            "outcome = 'require_approval'\napprovers = 'ops'\ntimeout = 'soon'\n",
            7,
            1,
            "a timeout is like",
        ),
        (
            f"[approvers.ops]\nmembers = {{ a = '{KEY_A}' }}\n[[rule]]\nname = 'x'\n"
            "outcome = 'require_approval'\napprovers = 'ops'\nquorum = 2\n",
            7,
            1,
            "more than the 1 members",
        ),
        ("[[rule]]\nname = 'a'\noutcome = 'allow'\nquorum = 2\n", 4, 1, "belongs to outcome"),
        ("[[rule]]\nname = 'a'\nimpact = '>=huge'\noutcome = 'deny'\n", 3, 1, "impact '>=huge'"),
        ("[[rule]]\nname = 'a'\noutcome = 'deny'\nmode = 'dry'\n", 4, 1, "mode is enforce"),
        ("[[rule]]\nname = 'a'\nimpact = '>critical'\noutcome = 'deny'\n", 3, 1, "matches nothing"),
        (
            "[[rule]]\nname = 'a'\noutcome = 'deny'\n\n[[rule]]\nname = 'a'\noutcome = 'deny'\n",
            6,
            1,
            "taken by the rule at line 1",
        ),
        ("[policy]\ndefault = 'maybe'\n", 2, 1, "default is allow or deny"),
        ("[rules]\nx = 1\n", 1, 1, "unknown table or key 'rules'"),
        ("[rule]\nname = 'a'\n", 1, 1, "[[rule]] tables"),
    ],
)
def test_errors_have_line_and_column(text: str, line: int, column: int, words: str) -> None:
    with pytest.raises(PolicyError) as e:
        Policy.parse(text)
    assert (e.value.line, e.value.column) == (line, column), str(e.value)
    assert words in e.value.reason, e.value.reason


def test_durations() -> None:
    assert parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration(42) == 42
    for bad in ("15", "m", "1x", "", 0, -1, True, "1h 30m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- the index decides as the linear scan does ---------------------------------------------
TOOLS = ["stripe.charge", "stripe.refund", "email.send", "db.read", "db.write", "x"]
PATTERNS = ["stripe.charge", "stripe.*", "*", "db.*", "*.send", "e?ail.*", "x", "[de]*", "nope"]


@st.composite
def rule_sets(draw: st.DrawFn) -> str:
    default = draw(st.sampled_from(["allow", "deny"]))
    out = [f'[policy]\ndefault = "{default}"\n']
    for i in range(draw(st.integers(0, 12))):
        lines = [f'[[rule]]\nname = "r{i}"']
        if draw(st.booleans()):
            tools = draw(st.lists(st.sampled_from(PATTERNS), min_size=1, max_size=3))
            lines.append(f"tool = {json.dumps(tools)}")
        if draw(st.booleans()):
            op = draw(st.sampled_from(["", ">=", "<="]))
            lines.append(f'impact = "{op}{draw(st.sampled_from(IMPACTS))}"')
        if draw(st.booleans()):
            lines.append(f'reversibility = "{draw(st.sampled_from(REVERSIBILITIES))}"')
        if draw(st.booleans()):
            lines.append(f"registered = {draw(st.sampled_from(['true', 'false']))}")
        if draw(st.booleans()):
            lines.append(f'agent = "{draw(st.sampled_from(["bot-*", "bot-1", "*"]))}"')
        if draw(st.booleans()):
            cond = draw(st.sampled_from(["amount > 5", "amount <= 5", 'cur in ["USD"]']))
            lines.append(f"args = {json.dumps([cond])}")
        if draw(st.booleans()):
            lines.append('mode = "shadow"')
        lines.append(f'outcome = "{draw(st.sampled_from(["allow", "deny"]))}"')
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


calls = st.builds(
    lambda tool, rev, imp, registered, agent, amount, cur: request(
        ToolSpec(tool, rev, imp, registered=registered),
        {k: v for k, v in (("amount", amount), ("cur", cur)) if v is not None},
        agent=agent,
    ),
    st.sampled_from(TOOLS),
    st.sampled_from(REVERSIBILITIES),
    st.sampled_from(IMPACTS),
    st.booleans(),
    st.sampled_from(["bot-1", "bot-2", "other"]),
    st.none() | st.integers(0, 10),
    st.none() | st.sampled_from(["USD", "EUR"]),
)


@settings(max_examples=150, deadline=None)
@given(text=rule_sets(), requests=st.lists(calls, min_size=1, max_size=8))
def test_index_decides_as_the_linear_scan(text: str, requests: list[PolicyRequest]) -> None:
    policy = Policy.parse(text)
    for req in requests:
        indexed = policy(req)
        linear, _ = policy.trace(req)
        assert (indexed.outcome, indexed.rule, indexed.shadow) == (
            linear.outcome,
            linear.rule,
            linear.shadow,
        )


@settings(max_examples=100, deadline=None)
@given(text=rule_sets(), requests=st.lists(calls, min_size=1, max_size=8))
def test_shadow_rules_never_change_a_decision(text: str, requests: list[PolicyRequest]) -> None:
    """The same file with every shadow rule removed decides every call the same way."""
    policy = Policy.parse(text)
    enforced = Policy.parse(
        "\n".join(block for block in text.split("\n\n") if 'mode = "shadow"' not in block)
    )
    for req in requests:
        a, b = policy(req), enforced(req)
        assert (a.outcome, a.rule) == (b.outcome, b.rule)
        assert all(v.split("=")[0] not in {r.name for r in enforced.rules} for v in a.shadow)


def test_the_candidate_cache_follows_a_changed_spec() -> None:
    """A tool registered again with another spec is decided by its new spec; an equal spec
    (an unregistered tool gets a new one per call) reuses the cached candidates."""
    policy = Policy.parse('[[rule]]\nname = "reads"\nreversibility = "read"\noutcome = "deny"\n')
    assert policy(request("kv.get", reversibility="read", impact="low")).rule == "reads"
    assert policy(request("kv.get", reversibility="reversible", impact="low")).rule == "default"
    for _ in range(3):
        assert policy(request(default_spec("new.tool"))).rule == "default"
    assert len(policy._candidates) == 2
