"""The examples of docs/policy.md compile, and decide what the text says they decide."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from wakeline.policy.approvals import generate_key, public_key_text
from wakeline.policy.engine import Policy
from wakeline.producers.gates import PolicyRequest
from wakeline.producers.registry import ToolSpec

DOC = Path(__file__).resolve().parents[3] / "docs" / "policy.md"
BLOCKS = re.findall(r"```toml\n(.*?)```", DOC.read_text(), re.DOTALL)
#: the doc abbreviates keys (`ed25519:0ZkM...=`): real ones in their place
PLACEHOLDER = re.compile(r"ed25519:[A-Za-z0-9+/]+\.\.\.=")


def compiled(block: str) -> Policy:
    return Policy.parse(PLACEHOLDER.sub(lambda _: public_key_text(generate_key()), block))


def test_every_policy_example_compiles() -> None:
    policies = [b for b in BLOCKS if "[[rule]]" in b]
    assert len(policies) >= 2
    for block in policies:
        compiled(block)


def test_the_cases_example_passes_against_the_main_example() -> None:
    policy = compiled(BLOCKS[0])
    (case,) = tomllib.loads(next(b for b in BLOCKS if "[[case]]" in b))["case"]
    spec = ToolSpec(case["tool"], case["reversibility"], case["impact"])
    got = policy(PolicyRequest(spec, case["args"], "{}", b"", "wf", case["agent"], "p", None, None))
    assert (got.outcome, got.rule, list(got.shadow)) == (
        case["expect"],
        case["rule"],
        case["shadow"],
    )
