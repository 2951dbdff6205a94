"""Detection rules: what counts as a runaway loop or a race, and what is done about it.

One TOML file, read by the SDK's local loop guard and by the worker's detectors alike, so
both follow the same rules with the same thresholds (`WAKELINE_DETECTION_RULES` names it;
unset, the defaults below apply). Every key is optional:

    [rules.repeat]                  # the same (agent, tool, argument digest)
    count = 5                       # the count-th such call within window_s is a loop
    window_s = 10
    per = "workflow"                # or "agent": counted across the agent's workflows

    [rules.repeat_read]             # the same, for read-only tools: only ever an alert
    count = 50

    [tools."payments.charge".repeat]    # per tool; [agents."billing-bot".repeat] per agent
    count = 3

    [actions]                       # what an incident of a rule does
    repeat = "quarantine-workflow"  # alert | quarantine-workflow | quarantine-run
                                    # | quarantine-agent (every workflow of the agent)

`DetectionRules.rule(name, tool=..., agent=...)` gives a rule's settings for one call: the
defaults, overridden by the file's `[rules.NAME]`, then by its tool's, then by its agent's
section. A file with an error (bad TOML, an unknown rule or key, a value of the wrong type
or out of range) is a `ConfigError` naming the file, the place and what is wrong; nothing
falls back silently.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from wakeline.errors import ConfigError
from wakeline.infra.settings import Variable, declare, path

ACTIONS = ("alert", "quarantine-workflow", "quarantine-run", "quarantine-agent")
PER = ("workflow", "agent")


@dataclass(frozen=True)
class Rule:
    """One rule's settings. Which fields a rule reads is in RULES' docs."""

    enabled: bool = True
    #: the count-th occurrence within the window is an incident
    count: int = 5
    window_s: float = 10.0
    #: what repeats are counted over: one workflow, or all of the agent's workflows
    per: str = "workflow"
    #: ping_pong: how many times the cycle must repeat
    cycles: int = 4
    #: rate: ceilings of calls per window, per workflow, per agent, per tool (0: none)
    per_workflow: int = 0
    per_agent: int = 0
    per_tool: int = 0
    #: repeat: failed calls retried with the same arguments, not counted up to this many
    retry_budget: int = 3

    def check(self, where: str) -> None:
        if self.count < 2:
            raise ConfigError(f"{where}: count = {self.count}, want >= 2 (1 flags every call)")
        if self.window_s <= 0:
            raise ConfigError(f"{where}: window_s = {self.window_s}, want > 0")
        if self.per not in PER:
            raise ConfigError(f"{where}: per = {self.per!r}, want one of {', '.join(PER)}")
        if self.cycles < 2:
            raise ConfigError(f"{where}: cycles = {self.cycles}, want >= 2")
        for name in ("per_workflow", "per_agent", "per_tool", "retry_budget"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{where}: {name} = {getattr(self, name)}, want >= 0")


#: every rule, its defaults, and what an incident does by default
RULES: Mapping[str, tuple[Rule, str, str]] = MappingProxyType(
    {
        "repeat": (
            Rule(count=5, window_s=10.0),
            "quarantine-workflow",
            "the same agent calls the same tool with the same arguments `count` times within "
            "`window_s` (per workflow, or per agent); failed calls retried within "
            "`retry_budget` do not count",
        ),
        "repeat_read": (
            Rule(count=50, window_s=10.0),
            "alert",
            "the same, for a read-only tool: agents re-read state all the time, so only a high "
            "count alerts, and reads are never refused",
        ),
        "no_progress": (
            Rule(count=6, window_s=30.0),
            "quarantine-run",
            "the same tool returns the same result `count` times within `window_s`, whatever "
            "the arguments (polling a job that never finishes, paging past the end)",
        ),
        "ping_pong": (
            Rule(cycles=4, window_s=60.0),
            "quarantine-workflow",
            "a cycle of two or three tools or agents (A -> B -> A -> B) repeats `cycles` "
            "times within `window_s`",
        ),
        "rate": (
            Rule(window_s=10.0, per_workflow=200, per_agent=1000, per_tool=20_000),
            "alert",
            "more calls within `window_s` than `per_workflow`, `per_agent` or `per_tool`",
        ),
        "race_overlap": (
            Rule(window_s=60.0),
            "alert",
            "two writes to one resource whose intent-to-result intervals overlap, with no "
            "causal link between them",
        ),
        "race_version": (
            Rule(window_s=60.0),
            "alert",
            "two writes to one resource claiming the same expected version",
        ),
        "lost_update": (
            Rule(window_s=60.0),
            "alert",
            "A reads a resource, B writes it, then A writes it without reading it again",
        ),
    }
)

_RULE_FIELDS = {f.name: f.type for f in fields(Rule)}

RULES_FILE = Variable(
    "WAKELINE_DETECTION_RULES",
    path,
    None,
    "TOML file of loop and race detection rules, thresholds and actions (unset: the defaults; "
    "`docs/detection.md`)",
)
declare("detection", "loop and race detection rules (SDK loop guard and worker detectors)",
        RULES_FILE)  # fmt: skip


@dataclass(frozen=True)
class DetectionRules:
    """The rules in force: defaults, file overrides, per-tool and per-agent overrides."""

    rules: Mapping[str, Rule] = field(
        default_factory=lambda: MappingProxyType({n: r for n, (r, _, _) in RULES.items()})
    )
    actions: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({n: a for n, (_, a, _) in RULES.items()})
    )
    tools: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    agents: Mapping[str, Mapping[str, Mapping[str, Any]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    source: str = "defaults"

    def rule(self, name: str, *, tool: str | None = None, agent: str | None = None) -> Rule:
        """`name`'s settings for a call of `tool` by `agent` (agent's override wins)."""
        base = self.rules[name]
        for scope in (self.tools.get(tool or ""), self.agents.get(agent or "")):
            if scope and name in scope:
                base = replace(base, **scope[name])
        return base

    def action(self, name: str) -> str:
        return self.actions[name]

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DetectionRules:
        env = os.environ if env is None else env
        where = RULES_FILE.read(env)
        return cls() if where is None else cls.load(where)

    @classmethod
    def load(cls, file: str | Path) -> DetectionRules:
        file = Path(file)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"detection rules {file}: cannot read it: {e}") from e
        except UnicodeDecodeError as e:
            raise ConfigError(f"detection rules {file}: not UTF-8 text: {e}") from e
        return cls.parse(text, str(file))

    @classmethod
    def parse(cls, text: str, source: str = "<text>") -> DetectionRules:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"detection rules {source}: not valid TOML: {e}") from e
        unknown = set(doc) - {"rules", "actions", "tools", "agents"}
        if unknown:
            raise ConfigError(
                f"detection rules {source}: unknown section(s) {', '.join(sorted(unknown))}; "
                "want rules, actions, tools, agents"
            )
        rules = {n: r for n, (r, _, _) in RULES.items()}
        for name, values in _table(doc, "rules", source).items():
            where = f"detection rules {source}: [rules.{name}]"
            _rule_name(name, where)
            rules[name] = _rule(rules[name], values, where)
        actions = {n: a for n, (_, a, _) in RULES.items()}
        for name, action in _table(doc, "actions", source).items():
            where = f"detection rules {source}: [actions] {name}"
            _rule_name(name, where)
            if action not in ACTIONS:
                raise ConfigError(f"{where} = {action!r}, want one of {', '.join(ACTIONS)}")
            actions[name] = action
        scopes: dict[str, dict[str, dict[str, dict[str, Any]]]] = {"tools": {}, "agents": {}}
        for kind in ("tools", "agents"):
            for who, per_rule in _table(doc, kind, source).items():
                if not isinstance(per_rule, dict):
                    raise ConfigError(f"detection rules {source}: [{kind}.{who!r}] is not a table")
                checked: dict[str, dict[str, Any]] = {}
                for name, values in per_rule.items():
                    where = f"detection rules {source}: [{kind}.{who!r}.{name}]"
                    _rule_name(name, where)
                    _rule(rules[name], values, where)  # checks the values
                    checked[name] = dict(values)
                scopes[kind][who] = MappingProxyType(checked)
        return cls(
            MappingProxyType(rules),
            MappingProxyType(actions),
            MappingProxyType(scopes["tools"]),
            MappingProxyType(scopes["agents"]),
            source,
        )


def _table(doc: Mapping[str, Any], key: str, source: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"detection rules {source}: {key} must be a table, got {value!r}")
    return value


def _rule_name(name: str, where: str) -> str:
    if name not in RULES:
        raise ConfigError(f"{where}: no rule named {name!r}; rules: {', '.join(RULES)}")
    return name


def _rule(base: Rule, values: Any, where: str) -> Rule:
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a table of settings, got {values!r}")
    unknown = set(values) - set(_RULE_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"want {', '.join(_RULE_FIELDS)}"
        )
    for key, value in values.items():
        want = {"bool": bool, "int": int, "float": (int, float), "str": str}[_RULE_FIELDS[key]]
        if isinstance(value, bool) and want is not bool:
            raise ConfigError(f"{where}: {key} = {value!r}, want a number")
        if not isinstance(value, want):
            raise ConfigError(f"{where}: {key} = {value!r}, want a {_RULE_FIELDS[key]}")
    rule = replace(base, **values)
    rule.check(where)
    return rule
