"""Argument predicates: one condition over a dotted path of a call's arguments, compiled once
into a closure that is cheap to run and never raises.

    amount > 500                      amount <= 100
    currency in ["USD", "EUR"]        to ends_with "@example.com"
    name starts_with "tmp-"           tags contains "prod"       note contains "urgent"
    customer.tier == "gold"           mode != "dry-run"          meta.ticket exists

A condition is `PATH OP LITERAL` (or `PATH exists`). PATH is dotted keys (`card.country`);
a segment of digits indexes a list (`items.0.sku`). The literal is JSON (`500`, `"USD"`,
`["USD","EUR"]`, `true`, `null`). Operators:

- `>`, `>=`, `<`, `<=`: the literal is a number; holds when the value is a number (not a
  boolean) that compares so.
- `==`, `!=`: JSON equality: `1 == 1.0`, but `true` is not `1` and `"1"` is not `1`.
- `in`: the literal is an array; holds when the value equals one of its items.
- `starts_with`, `ends_with`: the literal is a string; holds when the value is a string
  that starts or ends with it.
- `contains`: holds when the value is a string containing the literal (a string), or an
  array with an item equal to the literal.
- `exists`: holds when the path is present (even with the value null).

A path the arguments do not have makes every condition false, `!=` included: a rule that
needs an argument does not match a call without it. Nothing raises at evaluation; a bad
expression raises `PolicyError` at compile time with the column (1-based) of the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from wakeline.errors import WakelineError

__all__ = ["OPERATORS", "Condition", "PolicyError", "compile_condition", "resolve_path"]

Condition = Callable[[Mapping[str, Any]], bool]

OPERATORS: tuple[str, ...] = (
    ">",
    ">=",
    "<",
    "<=",
    "==",
    "!=",
    "in",
    "starts_with",
    "ends_with",
    "contains",
    "exists",
)


class PolicyError(WakelineError, ValueError):
    """A policy (or one of its conditions) that cannot be used: the reason, and where.

    `line` and `column` are 1-based; either may be None when unknown. `str()` gives
    `LINE:COL: reason` (or just the reason)."""

    def __init__(self, reason: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line
        self.column = column

    def __str__(self) -> str:
        if self.line is None:
            return self.reason if self.column is None else f"column {self.column}: {self.reason}"
        return f"{self.line}:{self.column or 1}: {self.reason}"

    def at(self, line: int, column: int) -> PolicyError:
        """This error placed in a file: a condition's column is relative to its own text, so
        `column` is where that text starts (1-based) and the result points into the file."""
        col = column if self.column is None else column + self.column - 1
        return PolicyError(self.reason, line, col)


_MISSING: Any = object()

_PATH = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_-]*|[0-9]+)(?:\.([A-Za-z_][A-Za-z0-9_-]*|[0-9]+))*")
_OP = re.compile(r"\s*(>=|<=|==|!=|>|<|in\b|starts_with\b|ends_with\b|contains\b|exists\b)")


def resolve_path(args: Any, parts: tuple[str | int, ...]) -> Any:
    """The value at `parts` in `args`, or `_MISSING` (compare with `is`) when absent."""
    node = args
    for part in parts:
        if isinstance(node, Mapping):
            if isinstance(part, int):
                part = str(part)
            node = node.get(part, _MISSING)
            if node is _MISSING:
                return _MISSING
        elif isinstance(node, list | tuple) and isinstance(part, int):
            if part >= len(node):
                return _MISSING
            node = node[part]
        else:
            return _MISSING
    return node


def _key(value: Any) -> Any:
    """A hashable key under which JSON-equal scalars meet (1 and 1.0 do; True and 1 do
    not), or None for a value that is not a hashable scalar."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("num", value)
    if isinstance(value, str):
        return ("str", value)
    return None


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value, booleans only equal booleans, deep for containers."""
    ka, kb = _key(a), _key(b)
    if ka is not None or kb is not None:
        return ka == kb
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _getter(parts: tuple[str | int, ...]) -> Callable[[Mapping[str, Any]], Any]:
    if len(parts) == 1 and isinstance(parts[0], str):
        key = parts[0]

        def get_one(args: Mapping[str, Any]) -> Any:
            try:
                return args.get(key, _MISSING)
            except (AttributeError, TypeError):
                return _MISSING

        return get_one

    def get_path(args: Mapping[str, Any]) -> Any:
        return resolve_path(args, parts)

    return get_path


def compile_condition(text: str) -> Condition:
    """`text` (see the module doc) as a function of a call's arguments; `PolicyError` with
    the column if it is not a condition."""
    if not isinstance(text, str):
        raise PolicyError(f"a condition is a string like 'amount > 500', got {text!r}")
    m = _PATH.match(text)
    if m is None or not m.group(0).strip():
        col = len(text) - len(text.lstrip()) + 1
        raise PolicyError("expected an argument path (like amount or card.country)", None, col)
    path_text = m.group(0).strip()
    parts = tuple(int(p) if p.isdigit() else p for p in path_text.split("."))
    pos = m.end()
    o = _OP.match(text, pos)
    if o is None:
        col = pos + (len(text[pos:]) - len(text[pos:].lstrip())) + 1
        raise PolicyError(
            f"expected an operator after {path_text} (one of {', '.join(OPERATORS)})", None, col
        )
    op = o.group(1)
    rest = text[o.end() :]
    lit_col = o.end() + (len(rest) - len(rest.lstrip())) + 1
    get = _getter(parts)
    if op == "exists":
        if rest.strip():
            raise PolicyError("exists takes no value", None, lit_col)

        def exists(args: Mapping[str, Any]) -> bool:
            return get(args) is not _MISSING

        return exists
    if not rest.strip():
        raise PolicyError(f"{op} needs a JSON value after it", None, lit_col)
    try:
        literal = json.loads(rest)
    except json.JSONDecodeError as e:
        # the decoder counts from the start of `rest`
        raise PolicyError(f"not a JSON value: {e.msg}", None, o.end() + e.pos + 1) from None
    except ValueError as e:  # e.g. a number too large for the decoder
        raise PolicyError(f"not a JSON value: {e}", None, lit_col) from None
    return _build(op, get, literal, path_text, lit_col)


def _build(
    op: str, get: Callable[[Mapping[str, Any]], Any], literal: Any, path: str, col: int
) -> Condition:
    if op in (">", ">=", "<", "<="):
        if not _is_number(literal):
            raise PolicyError(f"{op} compares with a number, got {json.dumps(literal)}", None, col)
        n = literal
        if op == ">":

            def gt(args: Mapping[str, Any]) -> bool:
                v = get(args)
                return _is_number(v) and v > n

            return gt
        if op == ">=":

            def ge(args: Mapping[str, Any]) -> bool:
                v = get(args)
                return _is_number(v) and v >= n

            return ge
        if op == "<":

            def lt(args: Mapping[str, Any]) -> bool:
                v = get(args)
                return _is_number(v) and v < n

            return lt

        def le(args: Mapping[str, Any]) -> bool:
            v = get(args)
            return _is_number(v) and v <= n

        return le
    if op in ("==", "!="):
        want = literal
        key = _key(literal)
        equal = op == "=="
        if key is not None:

            def scalar_eq(args: Mapping[str, Any]) -> bool:
                v = get(args)
                if v is _MISSING:
                    return False
                return (_key(v) == key) is equal

            return scalar_eq

        def deep_eq(args: Mapping[str, Any]) -> bool:
            v = get(args)
            if v is _MISSING:
                return False
            return json_equal(v, want) is equal

        return deep_eq
    if op == "in":
        if not isinstance(literal, list):
            raise PolicyError(f"in needs a JSON array, got {json.dumps(literal)}", None, col)
        keys = frozenset(k for k in map(_key, literal) if k is not None)
        others = [x for x in literal if _key(x) is None]

        def member(args: Mapping[str, Any]) -> bool:
            v = get(args)
            if v is _MISSING:
                return False
            k = _key(v)
            if k is not None:
                return k in keys
            return any(json_equal(v, x) for x in others)

        return member
    if op in ("starts_with", "ends_with"):
        if not isinstance(literal, str):
            raise PolicyError(f"{op} needs a JSON string, got {json.dumps(literal)}", None, col)
        s = literal
        if op == "starts_with":

            def starts(args: Mapping[str, Any]) -> bool:
                v = get(args)
                return isinstance(v, str) and v.startswith(s)

            return starts

        def ends(args: Mapping[str, Any]) -> bool:
            v = get(args)
            return isinstance(v, str) and v.endswith(s)

        return ends
    # contains
    item = literal

    def contains(args: Mapping[str, Any]) -> bool:
        v = get(args)
        if isinstance(v, str):
            return isinstance(item, str) and item in v
        if isinstance(v, list | tuple):
            return any(json_equal(x, item) for x in v)
        return False

    return contains
