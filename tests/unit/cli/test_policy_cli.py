"""`wakeline policy check|explain|test` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from wakeline.cli.main import cli
from wakeline.producers.registry import ToolRegistry

POLICY = """\
# First match wins: rules are read top to bottom.
[policy]
name = "billing"
default = "deny"

[[rule]]
name = "reads"
reversibility = "read"
outcome = "allow"

[[rule]]
name = "gbp-watch"
mode = "shadow"
tool = "stripe.*"
args = ['currency == "GBP"']
outcome = "deny"

[[rule]]
name = "small-charges"
tool = "stripe.charge"
args = ["amount <= 100"]
outcome = "allow"
"""

#: what `--registry tests.unit.cli.test_policy_cli:REGISTRY` loads
REGISTRY = ToolRegistry()
REGISTRY.declare("stripe.charge", reversibility="compensable", impact="high")


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "billing.toml").write_text(POLICY)
    return tmp_path


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_check_accepts_a_good_file(files: Path) -> None:
    code, out = run("policy", "check", str(files / "billing.toml"))
    assert code == 0 and "ok, policy billing, 3 rules" in out


def test_check_rejects_a_bad_file_with_its_line_and_column(files: Path) -> None:
    bad = files / "bad.toml"
    bad.write_text(POLICY.replace('args = ["amount <= 100"]', 'args = ["amount =< 100"]'))
    code, out = run("policy", "check", str(bad))
    assert code == 1
    assert f"{bad}:21:17: expected an operator after amount" in out
    syntax = files / "syntax.toml"
    syntax.write_text("[[rule]\nname = 'x'\n")
    code, out = run("policy", "check", str(syntax))
    assert code == 1 and out.startswith(f"{syntax}:1:")


def test_explain_names_the_deciding_rule_and_why_others_did_not(files: Path) -> None:
    code, out = run(
        "policy", "explain", str(files / "billing.toml"), "--tool", "stripe.charge",
        "--args", '{"amount": 50, "currency": "GBP"}',
        "--registry", "tests.unit.cli.test_policy_cli:REGISTRY",
    )  # fmt: skip
    assert code == 0, out
    assert "reads: no match (needs reversibility read)" in out
    assert "gbp-watch [shadow]: matches; would deny (recorded, not enforced)" in out
    assert "decision: allow by rule small-charges" in out
    assert "shadow: gbp-watch=deny" in out
    code, out = run(
        "policy", "explain", str(files / "billing.toml"), "--tool", "stripe.charge",
        "--args", '{"amount": 500}', "--reversibility", "compensable", "--impact", "high",
        "--json",
    )  # fmt: skip
    got = json.loads(out)
    assert (got["outcome"], got["rule"]) == ("deny", "default")
    assert got["rules"][2]["failed"] == "needs args amount <= 100"


def test_explain_rejects_bad_args(files: Path) -> None:
    code, out = run("policy", "explain", str(files / "billing.toml"), "--tool", "t",
                    "--args", "{nope")  # fmt: skip
    assert code == 2 and "--args is not JSON" in out


CASES = """\
[[case]]
name = "small charge"
tool = "stripe.charge"
reversibility = "compensable"
impact = "high"
args = { amount = 20, currency = "GBP" }
expect = "allow"
rule = "small-charges"
shadow = ["gbp-watch=deny"]

[[case]]
name = "an unregistered tool"
tool = "stripe.charge"
registered = false
args = { amount = 20 }
expect = "allow"

[[case]]
name = "reads"
tool = "crm.lookup"
reversibility = "read"
impact = "low"
expect = "allow"
rule = "reads"
"""


def test_test_runs_cases_and_fails_on_any_difference(files: Path) -> None:
    cases = files / "cases.toml"
    cases.write_text(CASES)
    code, out = run("policy", "test", str(files / "billing.toml"), str(cases))
    assert code == 0, out
    assert "PASS small charge (allow by rule small-charges)" in out
    assert "PASS an unregistered tool (allow by rule small-charges)" in out
    assert "3 passed, 0 failed" in out
    cases.write_text(CASES.replace('expect = "allow"\n\n[[case]]\nname = "reads"',
                                   'expect = "deny"\n\n[[case]]\nname = "reads"'))  # fmt: skip
    code, out = run("policy", "test", str(files / "billing.toml"), str(cases))
    assert code == 1
    assert "FAIL an unregistered tool: expected deny, got allow" in out
    assert "2 passed, 1 failed" in out


def test_test_of_one_case_and_a_bad_cases_file(files: Path) -> None:
    cases = files / "cases.toml"
    cases.write_text(CASES.split('[[case]]\nname = "an unregistered')[0])
    code, out = run("policy", "test", str(files / "billing.toml"), str(cases))
    assert code == 0 and "1 passed, 0 failed" in out
    cases.write_text('[[case]]\ntool = "x"\nexpect = "allow"\ncolour = 1\n')
    code, out = run("policy", "test", str(files / "billing.toml"), str(cases))
    assert code == 2 and "unknown key 'colour'" in out
