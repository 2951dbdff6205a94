"""`wakeline policy check|explain|test`: review a policy file like code (docs/policy.md).

- `check FILE`: exit 0 when the file compiles; else exit 1 with `FILE:LINE:COL: reason`.
- `explain FILE --tool T --args JSON [...]`: which rule decides the call and why each rule
  above it did not, and what shadow rules recorded.
- `test FILE CASES`: a TOML file of `[[case]]` tables (a call and the expected outcome,
  optionally the rule and shadow verdicts), like OPA's policy tests; PASS/FAIL per case,
  exit 1 on any failure.

The tool's spec comes from `--registry module:attr` (a `ToolRegistry`, or a function that
returns one), else from `--reversibility`/`--impact` (a registered tool), else the tool
counts as unregistered (irreversible, high impact), as in the SDK.
"""

from __future__ import annotations

import importlib
import json
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from wakeline.policy.engine import Policy, PolicyError
from wakeline.producers.canonical import canonicalise
from wakeline.producers.errors import SdkError
from wakeline.producers.gates import PolicyDecision, PolicyRequest
from wakeline.producers.registry import IMPACTS, REVERSIBILITIES, ToolRegistry, ToolSpec
from wakeline.producers.registry import default_spec as unregistered_spec

_CASE_KEYS = frozenset(
    (
        "name",
        "tool",
        "args",
        "agent",
        "principal",
        "tenant",
        "boundary",
        "reversibility",
        "impact",
        "registered",
        "expect",
        "rule",
        "shadow",
    )
)


def _fail(message: str, code: int = 1) -> None:
    click.echo(message, err=True)
    sys.exit(code)


def _load(file: str) -> Policy:
    try:
        return Policy.load(file)
    except PolicyError as e:
        where = f"{e.line}:{e.column or 1}:" if e.line is not None else ""
        _fail(f"{file}:{where} {e.reason}")
        raise  # unreachable: _fail exits


def _registry(ref: str | None) -> ToolRegistry | None:
    if ref is None:
        return None
    module, _, attr = ref.partition(":")
    if not module or not attr:
        _fail(f"--registry is module:attr, got {ref!r}", 2)
    try:
        obj: Any = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        _fail(f"--registry {ref}: {e}", 2)
    if callable(obj) and not isinstance(obj, ToolRegistry):
        obj = obj()
    if not isinstance(obj, ToolRegistry):
        _fail(f"--registry {ref} is a {type(obj).__name__}, not a ToolRegistry", 2)
    return obj


def _spec(
    tool: str,
    registry: ToolRegistry | None,
    reversibility: str | None,
    impact: str | None,
    registered: bool | None = None,
) -> ToolSpec:
    if registered is False:
        return unregistered_spec(tool)
    if reversibility is not None or impact is not None or registered:
        return ToolSpec(tool, reversibility or "irreversible", impact or "high")  # type: ignore[arg-type]
    if registry is not None:
        try:
            return registry.get(tool)
        except SdkError:  # a strict registry: the tool is not registered
            return unregistered_spec(tool)
    return unregistered_spec(tool)


def _request(spec: ToolSpec, args: Mapping[str, Any], who: Mapping[str, Any]) -> PolicyRequest:
    canonical = canonicalise(args, redact=spec.redact, digest_only=spec.digest_only)
    return PolicyRequest(
        spec,
        args,
        canonical.text,
        canonical.digest,
        str(who.get("workflow") or "wf-explain"),
        str(who.get("agent") or "agent"),
        str(who.get("principal") or "principal"),
        who.get("tenant"),
        who.get("boundary"),
    )


def _outcome(decision: PolicyDecision) -> str:
    if decision.outcome != "require_approval":
        return decision.outcome
    group = decision.approvers.name if decision.approvers else "?"
    return (
        f"require_approval (approvers {group}, quorum {decision.quorum}, "
        f"timeout {decision.timeout_s:g}s)"
    )


@click.group("policy")
def policy() -> None:
    """Check, explain and test policy files (docs/policy.md)."""


@policy.command("check")
@click.argument("file", type=click.Path(dir_okay=False))
def check(file: str) -> None:
    """Compile FILE; exit 1 with FILE:LINE:COL: reason when it has an error."""
    p = _load(file)
    click.echo(f"{file}: ok, policy {p.name}, {len(p.rules)} rules, version {p.version}")


_SPEC_OPTIONS = [
    click.option("--registry", help="module:attr of the ToolRegistry the agent uses."),
    click.option("--reversibility", type=click.Choice(REVERSIBILITIES),
                 help="The tool's reversibility (a registered tool; instead of --registry)."),
    click.option("--impact", type=click.Choice(IMPACTS),
                 help="The tool's impact (a registered tool; instead of --registry)."),
]  # fmt: skip


def _spec_options(fn: Any) -> Any:
    for option in reversed(_SPEC_OPTIONS):
        fn = option(fn)
    return fn


@policy.command("explain")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--tool", required=True, help="The tool name.")
@click.option("--args", "args_json", default="{}", show_default=True, help="Arguments (JSON).")
@click.option("--agent", help="The agent id.")
@click.option("--principal", help="The principal the agent acts for.")
@click.option("--tenant", help="The tenant.")
@click.option("--boundary", help="The boundary.")
@_spec_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def explain(
    file: str,
    tool: str,
    args_json: str,
    agent: str | None,
    principal: str | None,
    tenant: str | None,
    boundary: str | None,
    registry: str | None,
    reversibility: str | None,
    impact: str | None,
    as_json: bool,
) -> None:
    """Which rule of FILE decides a call, and why the rules above it do not."""
    p = _load(file)
    try:
        args = json.loads(args_json)
    except json.JSONDecodeError as e:
        _fail(f"--args is not JSON: {e}", 2)
    if not isinstance(args, dict):
        _fail("--args is a JSON object", 2)
    spec = _spec(tool, _registry(registry), reversibility, impact)
    who = {"agent": agent, "principal": principal, "tenant": tenant, "boundary": boundary}
    try:
        request = _request(spec, args, who)
    except SdkError as e:
        _fail(f"--args: {e}", 2)
    decision, traces = p.trace(request)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "outcome": decision.outcome,
                    "rule": decision.rule,
                    "version": decision.version,
                    "shadow": list(decision.shadow),
                    "rules": [
                        {"rule": t.rule.name, "line": t.rule.line, "shadow": t.rule.shadow,
                         "matched": t.matched, "failed": t.failed}
                        for t in traces
                    ],
                },
                indent=2,
            )
        )  # fmt: skip
        return
    kind = "registered" if spec.registered else "not registered"
    click.echo(
        f"{tool} ({kind}; {spec.reversibility}, {spec.impact} impact) under policy {p.name} "
        f"version {p.version[:12]}:"
    )
    for t in traces:
        label = f"  line {t.rule.line:>3}  {t.rule.name}"
        if t.rule.shadow:
            label += " [shadow]"
        if not t.matched:
            click.echo(f"{label}: no match ({t.failed})")
        elif t.rule.shadow:
            click.echo(
                f"{label}: matches; would {t.rule.decision.outcome} (recorded, not enforced)"
            )
        else:
            click.echo(f"{label}: matches -> {_outcome(decision)}")
    decided = traces[-1].rule if traces and traces[-1].matched else None
    if decided is None or decided.shadow:
        click.echo(f"  no rule matched: the policy's default -> {decision.outcome}")
    elif len(traces) < len(p.rules):
        left = len(p.rules) - len(traces)
        rules = "rule" if left == 1 else "rules"
        click.echo(f"  ({left} {rules} below not consulted: first match wins)")
    click.echo(f"decision: {decision.outcome} by rule {decision.rule}")
    if decision.shadow:
        click.echo(f"shadow: {', '.join(decision.shadow)}")
    if decision.reason:
        click.echo(f"reason: {decision.reason}")


def _cases(path: str) -> list[dict[str, Any]]:
    try:
        doc = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        _fail(f"{path}: cannot read: {e.strerror or e}", 2)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        _fail(f"{path}: {e}", 2)
    cases = doc.get("case")
    if not isinstance(cases, list) or not cases or set(doc) - {"case"}:
        _fail(f"{path}: a cases file is [[case]] tables (and nothing else)", 2)
    for n, case in enumerate(cases, 1):
        name = case.get("name", f"case {n}")
        unknown = sorted(set(case) - _CASE_KEYS)
        if unknown:
            known = ", ".join(sorted(_CASE_KEYS))
            _fail(f"{path}: {name}: unknown key {unknown[0]!r} (known: {known})", 2)
        if not isinstance(case.get("tool"), str) or case.get("expect") not in (
            "allow", "deny", "require_approval"
        ):  # fmt: skip
            _fail(
                f"{path}: {name}: a case needs tool and expect (allow, deny, require_approval)", 2
            )
        if not isinstance(case.get("args", {}), dict):
            _fail(f"{path}: {name}: args is a table", 2)
        for key, allowed in (("reversibility", REVERSIBILITIES), ("impact", IMPACTS)):
            if key in case and case[key] not in allowed:
                _fail(f"{path}: {name}: {key} is one of {', '.join(allowed)}", 2)
        case.setdefault("name", name)
    return cases


@policy.command("test")
@click.argument("file", type=click.Path(dir_okay=False))
@click.argument("cases_file", metavar="CASES", type=click.Path(dir_okay=False))
@click.option("--registry", help="module:attr of the ToolRegistry (for cases without a spec).")
def test_cmd(file: str, cases_file: str, registry: str | None) -> None:
    """Run the expected decisions in CASES against FILE; exit 1 if any differs."""
    p = _load(file)
    reg = _registry(registry)
    failed = 0
    cases = _cases(cases_file)
    for case in cases:
        spec = _spec(
            case["tool"], reg, case.get("reversibility"), case.get("impact"), case.get("registered")
        )
        try:
            got = p(_request(spec, case.get("args", {}), case))
        except SdkError as e:
            _fail(f"{cases_file}: {case['name']}: {e}", 2)
        wrong = []
        if got.outcome != case["expect"]:
            wrong.append(f"expected {case['expect']}, got {got.outcome}")
        if "rule" in case and got.rule != case["rule"]:
            wrong.append(f"expected rule {case['rule']}, got {got.rule}")
        if "shadow" in case and list(got.shadow) != list(case["shadow"]):
            wrong.append(f"expected shadow {list(case['shadow'])}, got {list(got.shadow)}")
        if wrong:
            failed += 1
            click.echo(f"FAIL {case['name']}: {'; '.join(wrong)}")
        else:
            click.echo(f"PASS {case['name']} ({got.outcome} by rule {got.rule})")
    click.echo(f"{len(cases) - failed} passed, {failed} failed (policy version {p.version[:12]})")
    if failed:
        sys.exit(1)
