"""Tool registry: declare a tool once; every call of it is described by its spec.

A `ToolSpec` says how dangerous a tool is (reversibility x impact), which resources a call
reads and writes (as a function of its arguments), which compensating action undoes it,
which argument fields must never reach the log (`redact`) or reach it only as a digest
(`digest_only`), and how durably its intent is recorded before it runs.

MCP tool annotations map to the two axes with `from_mcp_annotations` (the table is in its
docstring). Unknown tools get the most conservative spec: irreversible, high impact, strict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from wakeline.producers.canonical import canonical_json
from wakeline.producers.errors import SdkError, UnknownTool
from wakeline.producers.redaction import secret_in_template

Reversibility = Literal["read", "reversible", "compensable", "irreversible"]
Impact = Literal["low", "medium", "high", "critical"]
Durability = Literal["strict", "relaxed"]

REVERSIBILITIES: tuple[str, ...] = get_args(Reversibility)
IMPACTS: tuple[str, ...] = get_args(Impact)
DURABILITIES: tuple[str, ...] = get_args(Durability)

#: resource keys: a function of the (unredacted) arguments, or `str.format` templates over them
ResourceKeys = Callable[[Mapping[str, Any]], Iterable[str]] | Sequence[str]


@dataclass(frozen=True)
class ToolSpec:
    """Everything the SDK needs to know about one tool."""

    name: str
    reversibility: Reversibility = "irreversible"
    impact: Impact = "high"
    reads: ResourceKeys = ()
    writes: ResourceKeys = ()
    compensation: str | None = None
    #: dotted paths (`card.number`) removed from the logged arguments
    redact: frozenset[str] = frozenset()
    #: dotted paths replaced by their BLAKE3 digest in the logged arguments
    digest_only: frozenset[str] = frozenset()
    #: None = the default for the reversibility: `relaxed` for read, `strict` otherwise
    durability: Durability | None = None
    idempotent: bool = False
    #: result -> short summary for the log (None: the result is logged only as a digest)
    summarise: Callable[[Any], str] | None = None
    #: result -> ids the outside world assigned (charge id, ...) that compensation needs
    external_ids: Callable[[Any], Mapping[str, str]] | None = None
    #: (exception, message) -> the message to record, before the SDK removes every redacted
    #: and digest-only value of the call from it (see `docs/redaction.md`)
    scrub_error: Callable[[BaseException, str], str] | None = None
    description: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)
    #: how long (seconds) after a call its compensating action can still undo it (an email can
    #: be recalled only while it sits in the outbox); None = no limit. Recorded in every intent
    #: (`undo_window_us`); past it, the compensator escalates instead of compensating.
    undo_window_s: float | None = None
    #: what a human should do when a call cannot be undone automatically, as a `str.format`
    #: template over the logged arguments and the result's external ids (`"send a correction
    #: to {to}"`); it may not name a redacted or digest-only field. The compensator's incident
    #: report uses it, or generic advice when it is None or a field it names is missing.
    advice: str | None = None
    #: dotted argument paths (`request_id`, `meta.sent_at`) that differ between otherwise
    #: identical calls: the loop guard and the loop detector compare arguments without them.
    #: Recorded in every intent (`volatile_fields`); `args_digest` still covers them.
    volatile_fields: frozenset[str] = frozenset()
    #: the dotted argument path holding the version of the written resource the call expects
    #: to replace (optimistic concurrency: an ETag, a row version). Its value, as text, is
    #: recorded in every intent (`expected_version`) for the race detector; it may not be a
    #: redacted or digest-only field (the intent records it in clear).
    version_arg: str | None = None
    #: False only for the spec `default_spec` assumes for a tool nobody registered: a policy
    #: rule can match on it (`registered = false`; the built-in policy denies such tools)
    registered: bool = True
    #: redact + digest_only, sorted (derived; recorded in every intent)
    redacted_fields: list[str] = field(init=False, compare=False, repr=False)
    #: volatile_fields, sorted (derived; recorded in every intent)
    volatile_list: list[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise SdkError("a tool needs a non-empty name")
        if self.reversibility not in REVERSIBILITIES:
            raise SdkError(
                f"tool {self.name}: reversibility {self.reversibility!r} is not one of "
                f"{', '.join(REVERSIBILITIES)}"
            )
        if self.impact not in IMPACTS:
            raise SdkError(
                f"tool {self.name}: impact {self.impact!r} is not one of {', '.join(IMPACTS)}"
            )
        if self.durability is not None and self.durability not in DURABILITIES:
            raise SdkError(
                f"tool {self.name}: durability {self.durability!r} is not one of "
                f"{', '.join(DURABILITIES)}"
            )
        window = self.undo_window_s
        if window is not None and (
            isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window < 4e12
        ):
            raise SdkError(
                f"tool {self.name}: undo_window_s must be a positive number of seconds or None, "
                f"got {window!r}"
            )
        object.__setattr__(self, "redact", frozenset(self.redact))
        object.__setattr__(self, "digest_only", frozenset(self.digest_only))
        object.__setattr__(self, "redacted_fields", sorted(self.redact | self.digest_only))
        both = self.redact & self.digest_only
        if both:
            raise SdkError(f"tool {self.name}: {sorted(both)[0]} is both redacted and digested")
        self._check_paths()
        self._check_advice()
        for which in ("reads", "writes"):
            keys = getattr(self, which)
            if isinstance(keys, str):
                raise SdkError(f"tool {self.name}: {which} must be a list of templates, not a str")
            if callable(keys) or not self.redacted_fields:
                continue
            for template in keys:
                path = secret_in_template(template, self.redacted_fields)
                if path is not None:
                    raise SdkError(
                        f"tool {self.name}: resource template {template!r} ({which}) uses "
                        f"{path}, which is redacted or digest-only; resource keys are written "
                        "in clear, so name the resource by a field that is not secret"
                    )

    def _check_paths(self) -> None:
        volatile = self.volatile_fields
        if isinstance(volatile, str):  # a str is an iterable of one-letter paths
            raise SdkError(f"tool {self.name}: volatile_fields must be a set of paths, not a str")
        volatile = frozenset(volatile)
        for path in volatile:
            if not isinstance(path, str) or not path or "" in path.split("."):
                raise SdkError(f"tool {self.name}: volatile field {path!r} is not a dotted path")
        object.__setattr__(self, "volatile_fields", volatile)
        object.__setattr__(self, "volatile_list", sorted(volatile))
        arg = self.version_arg
        if arg is None:
            return
        if not isinstance(arg, str) or not arg or "" in arg.split("."):
            raise SdkError(f"tool {self.name}: version_arg {arg!r} is not a dotted path")
        for secret in self.redacted_fields:
            if arg == secret or arg.startswith(secret + ".") or secret.startswith(arg + "."):
                raise SdkError(
                    f"tool {self.name}: version_arg {arg} is (or holds) the redacted or "
                    f"digest-only field {secret}; the expected version is recorded in clear"
                )

    def expected_version(self, args: Mapping[str, Any]) -> str | None:
        """The value of `version_arg` in `args` as text (a str as is, anything else as
        canonical JSON), or None when the tool has no version argument or the call lacks it."""
        if self.version_arg is None:
            return None
        node: Any = args
        for part in self.version_arg.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if node is None:
            return None
        if isinstance(node, str):
            return node
        return canonical_json(node, what=f"version argument {self.version_arg}").decode()

    def _check_advice(self) -> None:
        advice = self.advice
        if advice is None:
            return
        if not isinstance(advice, str) or not advice.strip():
            raise SdkError(f"tool {self.name}: advice must be a non-empty str or None")
        try:
            path = secret_in_template(advice, self.redacted_fields)
        except ValueError as e:
            raise SdkError(f"tool {self.name}: advice {advice!r} is not a template: {e}") from e
        if path is not None:
            raise SdkError(
                f"tool {self.name}: advice {advice!r} uses {path}, which is redacted or "
                "digest-only; an incident report never shows such a value"
            )

    @property
    def mutates(self) -> bool:
        return self.reversibility != "read"

    @property
    def undo_window_us(self) -> int | None:
        """The undo window as the intent records it (microseconds), None for no limit."""
        if self.undo_window_s is None:
            return None
        return max(1, round(self.undo_window_s * 1_000_000))

    @property
    def effective_durability(self) -> Durability:
        if self.durability is not None:
            return self.durability
        return "relaxed" if self.reversibility == "read" else "strict"

    def resources_read(self, args: Mapping[str, Any]) -> list[str]:
        return _resource_keys(self.name, "reads", self.reads, args)

    def resources_written(self, args: Mapping[str, Any]) -> list[str]:
        return _resource_keys(self.name, "writes", self.writes, args)


def _resource_keys(tool: str, which: str, keys: ResourceKeys, args: Mapping[str, Any]) -> list[str]:
    if not keys:
        return []
    try:
        if callable(keys):
            return [str(k) for k in keys(args)]
        return [template.format(**args) for template in keys]
    except Exception as e:  # noqa: BLE001 - any failure of a template or key function
        # a missing field is named; other errors could quote an argument's value
        why = f"missing {e}" if isinstance(e, KeyError) else type(e).__name__
        raise SdkError(f"tool {tool}: cannot compute resource keys ({which}): {why}") from e


def default_spec(name: str) -> ToolSpec:
    """The spec of a tool nobody registered: assume the worst (MCP's defaults agree)."""
    return ToolSpec(name=name, reversibility="irreversible", impact="high", registered=False)


def _hint(annotations: Any, key: str, default: bool) -> bool:
    if annotations is None:
        return default
    if isinstance(annotations, Mapping):
        value = annotations.get(key)
    else:
        value = getattr(annotations, key, None)
    return default if value is None else bool(value)


def from_mcp_annotations(
    name: str,
    annotations: Mapping[str, Any] | Any | None,
    *,
    compensation: str | None = None,
    **overrides: Any,
) -> ToolSpec:
    """A `ToolSpec` from MCP `ToolAnnotations` (a dict with camelCase keys or an object).

    Absent hints take MCP's defaults: readOnlyHint=false, destructiveHint=true,
    idempotentHint=false, openWorldHint=true. So a tool that says nothing is treated as
    destructive and open-world: irreversible, high impact, strict.

    | readOnlyHint | destructiveHint | openWorldHint | reversibility | impact |
    | ------------ | --------------- | ------------- | ------------- | ------ |
    | true         | (ignored)       | false         | read          | low    |
    | true         | (ignored)       | true          | read          | low    |
    | false        | false           | false         | compensable   | low    |
    | false        | false           | true          | compensable   | medium |
    | false        | true            | false         | irreversible  | medium |
    | false        | true            | true          | irreversible  | high   |

    Why: MCP says destructiveHint is meaningful only when readOnlyHint is false; a
    non-destructive tool only *adds* (MCP: "additive updates"), which a compensating action can
    remove, hence `compensable`; a destructive one may delete or overwrite, which we cannot
    assume undoable, hence `irreversible` unless `compensation` names a compensating action,
    in which case it becomes `compensable`. An open world (external systems, other people)
    raises the impact one step. MCP hints cannot express `reversible` (an exact undo) or
    `critical`; pass `reversibility=` / `impact=` overrides for those. idempotentHint does not
    change either axis (it is about retries, not undo); it is kept as `ToolSpec.idempotent`.
    Annotations are hints from the tool's server, not guarantees: overrides win.
    """
    read_only = _hint(annotations, "readOnlyHint", False)
    destructive = _hint(annotations, "destructiveHint", True)
    idempotent = _hint(annotations, "idempotentHint", False)
    open_world = _hint(annotations, "openWorldHint", True)
    reversibility: Reversibility
    impact: Impact
    if read_only:
        reversibility, impact = "read", "low"
    elif not destructive:
        reversibility = "compensable"
        impact = "medium" if open_world else "low"
    else:
        reversibility = "compensable" if compensation else "irreversible"
        impact = "high" if open_world else "medium"
    fields: dict[str, Any] = {
        "name": name,
        "reversibility": reversibility,
        "impact": impact,
        "compensation": compensation,
        "idempotent": idempotent,
    }
    fields.update(overrides)
    return ToolSpec(**fields)


class ToolRegistry:
    """Name -> `ToolSpec`. Thread-safe. `strict=True` refuses unregistered tools."""

    def __init__(self, specs: Iterable[ToolSpec] = (), *, strict: bool = False) -> None:
        self._specs: dict[str, ToolSpec] = {}
        self._lock = threading.Lock()
        self.strict = strict
        for spec in specs:
            self.register(spec)

    def register(self, spec: ToolSpec, *, replace: bool = False) -> ToolSpec:
        with self._lock:
            if not replace and spec.name in self._specs and self._specs[spec.name] != spec:
                raise SdkError(f"tool {spec.name} is already registered with another spec")
            self._specs[spec.name] = spec
        return spec

    def declare(self, name: str, **fields: Any) -> ToolSpec:
        """Shorthand: `registry.declare("stripe.charge", reversibility="compensable", ...)`."""
        return self.register(ToolSpec(name=name, **fields))

    def get(self, name: str) -> ToolSpec:
        spec = self._specs.get(name)
        if spec is not None:
            return spec
        if self.strict:
            raise UnknownTool(f"tool {name} is not registered (the registry is strict)")
        return default_spec(name)

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._specs.values()))

    def __len__(self) -> int:
        return len(self._specs)
