"""The policy engine: a TOML file of rules, compiled into a `PolicyHook` for the SDK's
`PolicyGate` (see docs/policy.md for the format, with examples).

    policy = Policy.load("policy.toml")          # or Policy.parse(text, name), Policy.default()
    emitter = Emitter.from_env(policy=policy)    # or WAKELINE_POLICY=policy.toml / default

Rules are read top to bottom and the first enforced rule that matches decides; when none
does, the policy's `default` does. A rule in `mode = "shadow"` is evaluated but never
decides: what it would have decided (as `rule=outcome`) goes into `decision.shadow` when it
matches above the rule that decided. Every decision records the rule (`default` when none
matched) and the policy's version: the BLAKE3 hex digest of the file's bytes.

Compiled, not interpreted: rules are indexed by tool pattern (exact names in a dict, `x.*`
prefix globs by prefix, other globs in a short list), and for each tool spec the candidate
rules (in file order, already filtered by the spec's reversibility, impact and registration)
are computed once and cached; a call then runs only the per-call conditions (who asks,
argument predicates) of its candidates. `trace` is the plain top-to-bottom scan, for
`wakeline policy explain` and to check the index against.

Every error in a file (TOML syntax, unknown key, bad predicate, unknown approver group, bad
key, bad timeout) is a `PolicyError` with the line, column and reason.
"""

from __future__ import annotations

import fnmatch
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import blake3

from wakeline.infra.settings import Variable, declare, text
from wakeline.policy.approvals import ApprovalError, parse_public_key
from wakeline.policy.predicates import Condition, PolicyError, compile_condition
from wakeline.producers.gates import OUTCOMES, ApproverGroup, PolicyDecision, PolicyRequest
from wakeline.producers.registry import IMPACTS, REVERSIBILITIES, ToolSpec

__all__ = ["Policy", "PolicyError", "Rule", "RuleTrace", "parse_duration"]

POLICY_VARIABLE = Variable(
    "WAKELINE_POLICY",
    text,
    None,
    "the SDK's policy file (a path), or `default` for the built-in policy; unset: allow all",
)
declare("policy", "the SDK's policy engine (wakeline.policy.engine)", POLICY_VARIABLE)

#: the name of the decision when no rule matched (no rule may take it)
DEFAULT_RULE = "default"

_RULE_KEYS = frozenset(
    (
        "name",
        "tool",
        "reversibility",
        "impact",
        "args",
        "agent",
        "principal",
        "tenant",
        "boundary",
        "registered",
        "outcome",
        "reason",
        "approvers",
        "quorum",
        "timeout",
        "mode",
    )
)
_POLICY_KEYS = frozenset(("name", "default"))
_GROUP_KEYS = frozenset(("members",))
_TOP_KEYS = frozenset(("policy", "approvers", "rule"))
_GLOB = re.compile(r"[*?\[]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TOML_POS = re.compile(r"\(at line (\d+), column (\d+)\)")


def parse_duration(value: Any) -> float:
    """Seconds from `"15m"`, `"90s"`, `"1h30m"`, `"500ms"`, `"2d"` or a number of seconds;
    ValueError when it is none of those or not more than 0."""
    if isinstance(value, bool):
        raise ValueError(f"a timeout is like '15m' or a number of seconds, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        raw = value.strip()
        parts = _DURATION.findall(raw)
        if not parts or "".join(n + u for n, u in parts) != raw:
            raise ValueError(f"a timeout is like '15m', '90s' or '1h30m', got {value!r}")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    else:
        raise ValueError(f"a timeout is like '15m' or a number of seconds, got {value!r}")
    if not 0 < seconds < 1e9:
        raise ValueError(f"a timeout must be more than 0 (and finite), got {value!r}")
    return seconds


# -- where things are in the text ---------------------------------------------------------
_KEY = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_HEADER = re.compile(rf"^\s*(\[\[?)\s*({_KEY}(?:\s*\.\s*{_KEY})*)\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE = re.compile(rf"^(\s*)({_KEY}(?:\s*\.\s*{_KEY})*)\s*=")


def _key_parts(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


@dataclass
class _Section:
    parts: tuple[str, ...]
    array: bool
    line: int
    column: int
    keys: dict[str, tuple[int, int]]


class _Positions:
    """Where each table and key of a TOML text is (1-based line and column), found with a
    line scanner: tomllib gives positions only for syntax errors."""

    def __init__(self, text_: str) -> None:
        self.lines = text_.splitlines()
        self.sections = [_Section((), False, 1, 1, {})]
        for n, line in enumerate(self.lines, 1):
            h = _HEADER.match(line)
            if h is not None:
                col = line.index("[") + 1
                self.sections.append(
                    _Section(_key_parts(h.group(2)), h.group(1) == "[[", n, col, {})
                )
                continue
            k = _KEY_LINE.match(line)
            if k is not None:
                keys = self.sections[-1].keys
                key = ".".join(_key_parts(k.group(2)))
                keys.setdefault(key, (n, len(k.group(1)) + 1))

    def rule(self, index: int) -> _Section | None:
        rules = [s for s in self.sections if s.parts == ("rule",) and s.array]
        return rules[index] if index < len(rules) else None

    def table(self, *parts: str) -> _Section | None:
        for s in self.sections:
            if s.parts == parts:
                return s
        return None

    def key(self, section: _Section | None, key: str) -> tuple[int, int]:
        if section is None:
            return (1, 1)
        return section.keys.get(key, (section.line, section.column))

    def find(self, needle: str, start: tuple[int, int]) -> tuple[int, int] | None:
        """The first place of `needle` at or after line `start[0]`."""
        for n in range(start[0], min(len(self.lines), start[0] + 200) + 1):
            col = self.lines[n - 1].find(needle)
            if col >= 0:
                return (n, col + 1)
        return None


def _error(reason: str, where: tuple[int, int]) -> PolicyError:
    return PolicyError(reason, where[0], where[1])


# -- matching -----------------------------------------------------------------------------
def _glob(pattern: str) -> Callable[[str | None], bool]:
    """A matcher of one glob (`*`, `?`, `[...]`, as fnmatch; `*` crosses dots): an exact
    name is a comparison, `prefix*` a startswith. None (no tenant, say) never matches."""
    if not _GLOB.search(pattern):
        return lambda v: v == pattern
    if pattern.endswith("*") and not _GLOB.search(pattern[:-1]):
        prefix = pattern[:-1]
        return lambda v: v is not None and v.startswith(prefix)
    rx = re.compile(fnmatch.translate(pattern))
    return lambda v: v is not None and rx.match(v) is not None


def _any_glob(patterns: Sequence[str]) -> Callable[[str | None], bool]:
    matchers = [_glob(p) for p in patterns]
    if len(matchers) == 1:
        return matchers[0]
    return lambda v: any(m(v) for m in matchers)


def _levels(value: Any, order: tuple[str, ...], what: str) -> frozenset[str]:
    """`"high"`, `">=high"` (also `>`, `<=`, `<`) or a list of those: the symbols meant."""
    items = value if isinstance(value, list) else [value]
    out: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"{what} is a string like {order[-1]!r} or '>={order[-1]}'")
        m = re.fullmatch(r"\s*(>=|<=|>|<)?\s*([a-z_]+)\s*", item)
        if m is None or m.group(2) not in order:
            raise ValueError(
                f"{what} {item!r} is not one of {', '.join(order)} (optionally after >=, >, <=, <)"
            )
        op, at = m.group(1), order.index(m.group(2))
        picked = {
            None: [at],
            ">=": range(at, len(order)),
            ">": range(at + 1, len(order)),
            "<=": range(at + 1),
            "<": range(at),
        }[op]
        if not picked:
            raise ValueError(f"{what} {item!r} matches nothing")
        out.update(order[i] for i in picked)
    return frozenset(out)


def _strings(value: Any, what: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(i, str) and i for i in items):
        raise ValueError(f"{what} is a non-empty string or a list of them")
    return items


Check = Callable[[PolicyRequest], bool]


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled `[[rule]]`: `tools` (globs, any of them), then conditions, each with
    the text it came from: on the spec (known for a tool before any call), on who asks
    (fixed for a workflow context) and on the arguments (per call)."""

    index: int
    name: str
    line: int
    shadow: bool
    tools: tuple[str, ...]
    spec_checks: tuple[tuple[str, Callable[[ToolSpec], bool]], ...]
    who_checks: tuple[tuple[str, Check], ...]
    arg_checks: tuple[tuple[str, Condition], ...]
    decision: PolicyDecision

    @property
    def arg_fns(self) -> tuple[Condition, ...]:
        return tuple(fn for _, fn in self.arg_checks)

    @property
    def verdict(self) -> str:
        return f"{self.name}={self.decision.outcome}"

    def matches_tool(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.tools)

    def why_not(self, request: PolicyRequest) -> str | None:
        """None when the rule matches the request, else the first condition that fails."""
        if not self.matches_tool(request.spec.name):
            return f"tool {request.spec.name} is not {' or '.join(self.tools)}"
        for label, spec_check in self.spec_checks:
            if not spec_check(request.spec):
                return f"needs {label}"
        for label, who_check in self.who_checks:
            if not who_check(request):
                return f"needs {label}"
        for label, arg_check in self.arg_checks:
            if not arg_check(request.args):
                return f"needs {label}"
        return None


@dataclass(frozen=True)
class RuleTrace:
    """What one rule made of a request (`wakeline policy explain`)."""

    rule: Rule
    failed: str | None  # None: it matched

    @property
    def matched(self) -> bool:
        return self.failed is None


class Policy:
    """A compiled policy file; callable as the SDK's `PolicyHook`."""

    def __init__(
        self,
        name: str,
        version: str,
        rules: Sequence[Rule],
        default: PolicyDecision,
        groups: Mapping[str, ApproverGroup],
    ) -> None:
        self.name = name
        self.version = version
        self.rules = tuple(rules)
        self.default_decision = default
        self.groups = dict(groups)
        self._exact: dict[str, list[int]] = {}
        self._prefix: dict[str, list[int]] = {}
        self._other: list[int] = []
        for rule in self.rules:
            for pattern in rule.tools:
                if not _GLOB.search(pattern):
                    self._exact.setdefault(pattern, []).append(rule.index)
                elif pattern.endswith("*") and not _GLOB.search(pattern[:-1]):
                    self._prefix.setdefault(pattern[:-1], []).append(rule.index)
                else:
                    self._other.append(rule.index)
        self._prefix_lengths = sorted({len(p) for p in self._prefix})
        #: (tool, agent, principal, tenant, boundary) -> (the spec object, its candidate
        #: rules in file order with their argument conditions)
        self._candidates: dict[tuple[Any, ...], tuple[ToolSpec, tuple[Any, ...]]] = {}
        #: (deciding rule, shadow verdicts) -> the decision with them
        self._shadowed: dict[tuple[str, tuple[str, ...]], PolicyDecision] = {}

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """The policy in a file; its name is the file's stem unless `[policy] name` says."""
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise PolicyError(f"cannot read {p}: {e.strerror or e}") from e
        return cls.parse(data, p.stem)

    @classmethod
    def default(cls) -> Policy:
        """The built-in policy (policy/default.toml)."""
        data = resources.files("wakeline.policy").joinpath("default.toml").read_bytes()
        return cls.parse(data, "builtin")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Policy | None:
        """WAKELINE_POLICY: a file, or `default`; None when it is not set."""
        value = POLICY_VARIABLE.read(os.environ if env is None else env)
        if value is None or not value.strip():
            return None
        if value.strip() == "default":
            return cls.default()
        try:
            return cls.load(value.strip())
        except PolicyError as e:  # name the variable: the program did not name the file
            raise PolicyError(f"{POLICY_VARIABLE.name}={value!r}: {e}") from None

    @classmethod
    def parse(cls, source: str | bytes, name: str = "policy") -> Policy:
        """Compile TOML text (its version is the BLAKE3 of these exact bytes)."""
        data = source.encode() if isinstance(source, str) else source
        version = blake3.blake3(data).hexdigest()
        try:
            text_ = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"the file is not UTF-8 ({e.reason})", 1, 1) from None
        try:
            doc = tomllib.loads(text_)
        except tomllib.TOMLDecodeError as e:
            m = _TOML_POS.search(str(e))
            reason = _TOML_POS.sub("", str(e)).strip()
            if m is None:
                raise PolicyError(reason, 1, 1) from None
            raise PolicyError(reason, int(m.group(1)), int(m.group(2))) from None
        return _Compiler(doc, _Positions(text_), name, version).policy()

    # -- deciding --------------------------------------------------------------------------
    def __call__(self, request: PolicyRequest) -> PolicyDecision:
        spec = request.spec
        r = request
        key = (spec.name, r.agent_id, r.principal, r.tenant, r.boundary)
        hit = self._candidates.get(key)
        # an unregistered tool gets a new (equal) default spec on every call: compare it
        if hit is None or (hit[0] is not spec and hit[0] != spec):
            hit = (spec, self._candidates_for(request))
            if len(self._candidates) >= 4096:  # tools or callers named per call: bounded
                self._candidates.clear()
            self._candidates[key] = hit
        shadow: list[str] | None = None
        args = request.args
        for rule, conditions in hit[1]:
            for condition in conditions:
                if not condition(args):
                    break
            else:
                if not rule.shadow:
                    decision = rule.decision
                    break
                if shadow is None:
                    shadow = []
                shadow.append(rule.verdict)
        else:
            decision = self.default_decision
        if shadow is None:
            return decision
        key = (decision.rule, tuple(shadow))
        shadowed = self._shadowed.get(key)
        if shadowed is None:  # `replace` costs more than the rest of a decision: reuse it
            shadowed = replace(decision, shadow=key[1])
            if len(self._shadowed) >= 1024:
                self._shadowed.clear()
            self._shadowed[key] = shadowed
        return shadowed

    def _candidates_for(
        self, request: PolicyRequest
    ) -> tuple[tuple[Rule, tuple[Condition, ...]], ...]:
        """The rules that can match calls of this spec by this caller, in file order, with
        their argument conditions (all that is left to check per call); cut after the first
        enforced rule without any (nothing below it is ever reached)."""
        spec = request.spec
        name = spec.name
        found = set(self._exact.get(name, ()))
        for n in self._prefix_lengths:
            if n > len(name):
                break
            found.update(self._prefix.get(name[:n], ()))
        found.update(i for i in self._other if self.rules[i].matches_tool(name))
        out = []
        for i in sorted(found):
            rule = self.rules[i]
            if all(check(spec) for _, check in rule.spec_checks) and all(
                check(request) for _, check in rule.who_checks
            ):
                out.append((rule, rule.arg_fns))
                if not rule.arg_checks and not rule.shadow:
                    break
        return tuple(out)

    def trace(self, request: PolicyRequest) -> tuple[PolicyDecision, list[RuleTrace]]:
        """Every rule, top to bottom, until one decides (no index): the decision `__call__`
        gives, and what each rule made of the request."""
        traces: list[RuleTrace] = []
        shadow: list[str] = []
        for rule in self.rules:
            failed = rule.why_not(request)
            traces.append(RuleTrace(rule, failed))
            if failed is None:
                if not rule.shadow:
                    decision = rule.decision
                    break
                shadow.append(rule.verdict)
        else:
            decision = self.default_decision
        return (replace(decision, shadow=tuple(shadow)) if shadow else decision), traces

    @property
    def asks_approvals(self) -> bool:
        """Whether some call can need an approval (an enforced rule or the default says
        require_approval): only then does the SDK need an approvals authorizer."""
        decisions = [r.decision for r in self.rules if not r.shadow] + [self.default_decision]
        return any(d.outcome == "require_approval" for d in decisions)

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, {len(self.rules)} rules, version {self.version[:12]})"


class _Compiler:
    """A parsed TOML document into a `Policy`, with the position of every error."""

    def __init__(self, doc: dict[str, Any], pos: _Positions, name: str, version: str) -> None:
        self.doc = doc
        self.pos = pos
        self.name = name
        self.version = version

    def policy(self) -> Policy:
        doc, pos = self.doc, self.pos
        for key in doc:
            if key not in _TOP_KEYS:
                table = pos.table(key)
                where = (table.line, table.column) if table else pos.key(pos.table(), key)
                raise _error(
                    f"unknown table or key {key!r} (a policy has [policy], [approvers.NAME] "
                    "and [[rule]] tables)",
                    where,
                )
        head = doc.get("policy", {})
        section = pos.table("policy")
        if not isinstance(head, dict):
            raise _error("policy is a table: [policy]", pos.key(pos.table(), "policy"))
        self._unknown(head, _POLICY_KEYS, section, "[policy]")
        name = head.get("name", self.name)
        if not isinstance(name, str) or not name:
            raise _error("[policy] name is a non-empty string", pos.key(section, "name"))
        self.name = name
        default = head.get("default", "allow")
        if default not in ("allow", "deny"):
            raise _error(
                f"[policy] default is allow or deny, got {default!r}", pos.key(section, "default")
            )
        groups = self.groups(doc.get("approvers", {}))
        rules_doc = doc.get("rule", [])
        if not isinstance(rules_doc, list):
            where = pos.table("rule") or pos.sections[0]
            raise _error("rules are [[rule]] tables (double brackets)", (where.line, where.column))
        rules: list[Rule] = []
        names: dict[str, int] = {}
        for i, table in enumerate(rules_doc):
            rule = self.rule(i, table, groups)
            if rule.name in names:
                raise _error(
                    f"rule name {rule.name!r} is taken by the rule at line {names[rule.name]}",
                    pos.key(pos.rule(i), "name"),
                )
            names[rule.name] = rule.line
            rules.append(rule)
        decision = PolicyDecision(
            default,
            "no rule matched; the policy's default",
            name,
            DEFAULT_RULE,
            self.version,
        )
        return Policy(name, self.version, rules, decision, groups)

    def _unknown(
        self, table: Mapping[str, Any], allowed: frozenset[str], where: _Section | None, what: str
    ) -> None:
        for key in table:
            if key not in allowed:
                raise _error(
                    f"unknown key {key!r} in {what} (known: {', '.join(sorted(allowed))})",
                    self.pos.key(where, key),
                )

    def groups(self, doc: Any) -> dict[str, ApproverGroup]:
        pos = self.pos
        top = pos.table("approvers")
        if not isinstance(doc, dict):
            raise _error("approvers is a table of groups: [approvers.NAME]", pos.key(None, ""))
        out: dict[str, ApproverGroup] = {}
        for group, body in doc.items():
            section = pos.table("approvers", group)
            where = (section.line, section.column) if section else pos.key(top, group)
            if not isinstance(body, dict):
                raise _error(f"approver group {group!r} is a table with members", where)
            self._unknown(body, _GROUP_KEYS, section or top, f"[approvers.{group}]")
            members_doc = body.get("members", {})
            if not isinstance(members_doc, dict):
                raise _error(
                    f'[approvers.{group}] members is a table: principal = "ed25519:<base64>"',
                    pos.key(section, "members"),
                )
            members_section = pos.table("approvers", group, "members")
            members: dict[str, bytes] = {}
            for principal, key in members_doc.items():
                if members_section is not None:
                    at = pos.key(members_section, principal)
                else:
                    start = pos.key(section or top, "members")
                    at = pos.find(principal, start) or start
                if not isinstance(key, str):
                    raise _error(f"the key of {principal} is a string 'ed25519:<base64>'", at)
                try:
                    members[principal] = parse_public_key(key)
                except ApprovalError as e:
                    raise _error(f"approver {principal} of group {group}: {e}", at) from None
            out[group] = ApproverGroup(group, members)
        return out

    def rule(self, i: int, table: Any, groups: Mapping[str, ApproverGroup]) -> Rule:
        pos = self.pos
        section = pos.rule(i)
        head = (section.line, section.column) if section else (1, 1)
        if not isinstance(table, dict):
            raise _error("a rule is a [[rule]] table", head)
        self._unknown(table, _RULE_KEYS, section, "[[rule]]")

        def at(key: str) -> tuple[int, int]:
            return pos.key(section, key)

        name = table.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _error('a rule needs a name (name = "..."): intents record it', head)
        if name == DEFAULT_RULE:
            raise _error(f"{DEFAULT_RULE!r} names the policy's default; pick another", at("name"))
        spec_checks: list[tuple[str, Callable[[ToolSpec], bool]]] = []
        who_checks: list[tuple[str, Check]] = []
        arg_checks: list[tuple[str, Condition]] = []
        try:
            tools = tuple(_strings(table.get("tool", "*"), "tool"))
        except ValueError as e:
            raise _error(str(e), at("tool")) from None
        for key, order in (("reversibility", REVERSIBILITIES), ("impact", IMPACTS)):
            if key not in table:
                continue
            try:
                levels = _levels(table[key], order, key)
            except ValueError as e:
                raise _error(str(e), at(key)) from None
            label = f"{key} {' or '.join(o for o in order if o in levels)}"
            get = (lambda s: s.reversibility) if key == "reversibility" else (lambda s: s.impact)
            spec_checks.append((label, lambda s, g=get, ok=levels: g(s) in ok))
        if "registered" in table:
            want = table["registered"]
            if not isinstance(want, bool):
                raise _error("registered is true or false", at("registered"))
            label = "a registered tool" if want else "a tool nobody registered"
            spec_checks.append((label, lambda s, w=want: s.registered is w))
        for key in ("agent", "principal", "tenant", "boundary"):
            if key not in table:
                continue
            try:
                patterns = _strings(table[key], key)
            except ValueError as e:
                raise _error(str(e), at(key)) from None
            match = _any_glob(patterns)
            field_get: Callable[[PolicyRequest], str | None] = _REQUEST_FIELDS[key]
            who_checks.append(
                (f"{key} {' or '.join(patterns)}", lambda r, m=match, g=field_get: m(g(r)))
            )
        if "args" in table:
            conditions = table["args"]
            if isinstance(conditions, str):
                conditions = [conditions]
            if not isinstance(conditions, list):
                raise _error('args is a list of conditions like "amount > 500"', at("args"))
            for cond in conditions:
                try:
                    fn = compile_condition(cond)
                except PolicyError as e:
                    start = at("args")
                    found = pos.find(cond, start) if isinstance(cond, str) else None
                    if found is None:  # written with escapes: point at the key
                        raise PolicyError(e.reason, *start) from None
                    raise e.at(*found) from None
                arg_checks.append((f"args {cond}", fn))
        decision = self.outcome(table, name, groups, at)
        mode = table.get("mode", "enforce")
        if mode not in ("enforce", "shadow"):
            raise _error(f"mode is enforce or shadow, got {mode!r}", at("mode"))
        return Rule(
            i,
            name,
            head[0],
            mode == "shadow",
            tools,
            tuple(spec_checks),
            tuple(who_checks),
            tuple(arg_checks),
            decision,
        )

    def outcome(
        self,
        table: Mapping[str, Any],
        name: str,
        groups: Mapping[str, ApproverGroup],
        at: Callable[[str], tuple[int, int]],
    ) -> PolicyDecision:
        outcome = table.get("outcome")
        if outcome not in OUTCOMES:
            where = at("outcome") if "outcome" in table else at("name")
            raise _error(
                f"rule {name}: outcome is one of {', '.join(OUTCOMES)}, got {outcome!r}", where
            )
        reason = table.get("reason", f"rule {name}")
        if not isinstance(reason, str):
            raise _error("reason is a string", at("reason"))
        approval_keys = [k for k in ("approvers", "quorum", "timeout") if k in table]
        if outcome != "require_approval":
            if approval_keys:
                raise _error(
                    f'{approval_keys[0]} belongs to outcome = "require_approval" only',
                    at(approval_keys[0]),
                )
            return PolicyDecision(outcome, reason, self.name, name, self.version)
        group_name = table.get("approvers")
        if not isinstance(group_name, str):
            raise _error(
                f'rule {name} requires approval: name an approver group (approvers = "...")',
                at("approvers") if "approvers" in table else at("outcome"),
            )
        group = groups.get(group_name)
        if group is None:
            known = ", ".join(sorted(groups)) or "none are defined"
            raise _error(
                f"approver group {group_name!r} is not defined ([approvers.{group_name}]; "
                f"known: {known})",
                at("approvers"),
            )
        quorum = table.get("quorum", 1)
        if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
            raise _error(
                f"quorum is a whole number of approvers, at least 1, got {quorum!r}", at("quorum")
            )
        if group.members and quorum > len(group.members):
            raise _error(
                f"quorum {quorum} is more than the {len(group.members)} members of {group_name}",
                at("quorum"),
            )
        try:
            timeout = parse_duration(table.get("timeout", 300))
        except ValueError as e:
            raise _error(str(e), at("timeout")) from None
        return PolicyDecision(
            "require_approval",
            reason,
            self.name,
            name,
            self.version,
            approvers=group,
            quorum=quorum,
            timeout_s=timeout,
        )


_REQUEST_FIELDS: dict[str, Callable[[PolicyRequest], str | None]] = {
    "agent": lambda r: r.agent_id,
    "principal": lambda r: r.principal,
    "tenant": lambda r: r.tenant,
    "boundary": lambda r: r.boundary,
}
