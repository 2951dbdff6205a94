"""Canonical arguments: redact, digest, RFC 8785 JSON, BLAKE3.

The same call always gives the same bytes and so the same digest: key order, whitespace and
number spelling do not matter (RFC 8785, the `rfc8785` package). Fields a tool's spec marks
`redact` are replaced by `REDACTED`; fields marked `digest_only` by `"blake3:<hex>"` of their
own canonical JSON, so equal secrets can be matched without being revealed (note: a digest of a
low-entropy secret, a PIN say, can be brute-forced; redact those). The digest of a call is
BLAKE3-256 of the canonical JSON *after* redaction: the log can always recompute it.

Errors come before anything is written: `NotSerialisable` names the bad field
(`$.items[2].when`), `PayloadTooLarge` gives size and limit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import blake3
import rfc8785

from wakeline.producers.errors import NotSerialisable, PayloadTooLarge

REDACTED = "[REDACTED]"
DIGEST_PREFIX = "blake3:"
DIGEST_SIZE = 32
DEFAULT_MAX_PAYLOAD = 512 * 1024
_SAFE_INT = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Canonical:
    """Canonical JSON bytes of a value and their BLAKE3-256 digest."""

    json: bytes
    digest: bytes

    @property
    def text(self) -> str:
        return self.json.decode("utf-8")


def digest(data: bytes) -> bytes:
    """BLAKE3-256 of `data` (32 bytes)."""
    return blake3.blake3(data).digest()


_json_encode = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode
# The C encoder behind `_json_encode`, made once (`JSONEncoder.encode` builds one per call):
# same bytes, a microsecond less per call. Without circular-reference markers: it only ever
# sees values `_simple` passed, which are trees at most 33 levels deep.
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_make_encoder is not None:
    _c_encode = _c_make_encoder(
        None, None, json.encoder.encode_basestring, None, ":", ",", True, False, False
    )

    def _dumps(value: Any) -> str:
        return "".join(_c_encode(value, 0))

else:  # a Python build without the _json accelerator
    _dumps = _json_encode


def _simple(value: Any, depth: int = 0) -> bool:
    """True when stdlib JSON gives exactly RFC 8785's bytes for `value`.

    That holds for None, bools, strings, integers within ±(2**53-1), and lists and dicts of
    them whose keys are ASCII (so code-point and UTF-16 key order agree). Floats are left to
    `rfc8785` (ECMAScript number formatting differs from Python's repr).
    """
    t = type(value)
    if t is str or t is bool or value is None:
        return True
    if t is int:
        return -_SAFE_INT <= value <= _SAFE_INT
    if depth > 32:
        return False
    if t is dict:
        for k, v in value.items():
            if type(k) is not str or not k.isascii() or not _simple(v, depth + 1):
                return False
        return True
    if t is list or t is tuple:
        return all(_simple(v, depth + 1) for v in value)
    return False


def canonical_json(value: Any, *, what: str = "argument") -> bytes:
    """RFC 8785 bytes of `value`, or `NotSerialisable` naming the first bad field."""
    if _simple(value):
        try:
            return _dumps(value).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: let rfc8785 give the verdict
            pass
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, RecursionError, TypeError, ValueError) as e:
        path, reason = _find_bad(value, "$") or ("$", str(e))
        raise NotSerialisable(path, reason, what) from None


def canonicalise(
    args: Mapping[str, Any],
    *,
    redact: Iterable[str] = (),
    digest_only: Iterable[str] = (),
    max_bytes: int = DEFAULT_MAX_PAYLOAD,
    what: str = "arguments",
) -> Canonical:
    """Redact, digest and canonicalise tool arguments; refuse them if too large."""
    if not isinstance(args, Mapping):
        raise NotSerialisable(
            "$", f"{what} must be a mapping of names to values, got {type(args).__name__}"
        )
    redact = tuple(redact)
    digest_only = tuple(digest_only)
    if redact or digest_only:
        args = _scrub(args, redact, digest_only)
    data = canonical_json(args, what=what.rstrip("s"))
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"canonical {what}", len(data), max_bytes)
    return Canonical(data, digest(data))


def canonical_result(value: Any, *, max_bytes: int = DEFAULT_MAX_PAYLOAD) -> Canonical | None:
    """Best effort for a tool's *result* (the tool has already run: never raise).

    Returns None when the result does not serialise or exceeds the limit.
    """
    if value is None:
        return _NULL
    try:
        data = canonical_json(value, what="result")
    except Exception:  # noqa: BLE001 - any failure means "no canonical form"
        return None
    if len(data) > max_bytes:
        return None
    return Canonical(data, digest(data))


_NULL = Canonical(b"null", digest(b"null"))


def _scrub(args: Mapping[str, Any], redact: tuple[str, ...], digests: tuple[str, ...]) -> Any:
    out: Any = dict(args)
    for path in redact:
        out = _replace(out, path.split("."), lambda _v: REDACTED)
    for path in digests:
        out = _replace(out, path.split("."), _digest_field(path))
    return out


def loop_digest(canonical_args: str, volatile_fields: Sequence[str]) -> bytes:
    """The digest loop detection keys on: BLAKE3-256 of the canonical arguments (as logged:
    an intent's `args`) without the values at the dotted `volatile_fields` (request ids,
    timestamps), so calls that differ only there get the same digest. Lists apply a path to
    each item, as `redact` does. Without volatile fields it is the call's `args_digest`.
    The SDK's loop guard and the worker's detector both compute it from what the intent
    records (`args`, `volatile_fields`), so they agree on what counts as the same call."""
    if not volatile_fields:
        return digest(canonical_args.encode("utf-8"))
    out: Any = json.loads(canonical_args)
    for path in volatile_fields:
        out = _drop(out, path.split("."))
    return digest(canonical_json(out))


def _drop(node: Any, parts: list[str]) -> Any:
    """Copy-on-write removal of the value at a dotted path."""
    if isinstance(node, list | tuple):
        return [_drop(item, parts) for item in node]
    if not isinstance(node, Mapping) or parts[0] not in node:
        return node
    copy = dict(node)
    if len(parts) == 1:
        del copy[parts[0]]
    else:
        copy[parts[0]] = _drop(node[parts[0]], parts[1:])
    return copy


def _digest_field(path: str):  # type: ignore[no-untyped-def]
    def replace(value: Any) -> str:
        try:
            data = rfc8785.dumps(value)
        except Exception:  # noqa: BLE001
            # the reason never quotes the value: it is a secret (see docs/redaction.md)
            bad = _find_bad(value, "$." + path, show_values=False)
            where, reason = bad or ("$." + path, "not representable in canonical JSON")
            raise NotSerialisable(where, reason) from None
        return DIGEST_PREFIX + digest(data).hex()

    return replace


def _replace(node: Any, parts: list[str], fn) -> Any:  # type: ignore[no-untyped-def]
    """Copy-on-write replacement of the value at a dotted path; lists apply to each item."""
    if isinstance(node, list | tuple):
        return [_replace(item, parts, fn) for item in node]
    if not isinstance(node, Mapping):
        return node
    head, rest = parts[0], parts[1:]
    if head not in node:
        return node
    copy = dict(node)
    copy[head] = fn(node[head]) if not rest else _replace(node[head], rest, fn)
    return copy


def _find_bad(value: Any, path: str, *, show_values: bool = True) -> tuple[str, str] | None:
    """The first field of `value` that RFC 8785 cannot represent, with the reason (which
    quotes the value only if `show_values`)."""
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        v, p, depth = stack.pop()
        if depth > 200:
            return p, "nested too deeply (or contains itself)"
        if v is None or isinstance(v, bool | str):
            continue
        if isinstance(v, int):
            if abs(v) > _SAFE_INT:
                shown = f"integer {v}" if show_values else "an integer"
                return p, f"{shown} is outside the interoperable range ±(2**53-1)"
            continue
        if isinstance(v, float):
            if not math.isfinite(v):
                return p, f"{v} is not representable in JSON"
            continue
        if isinstance(v, Mapping):
            items = []
            for k, child in v.items():
                if not isinstance(k, str):
                    where = f"{p}[{k!r}]" if show_values else f"{p}[?]"
                    return where, f"object keys must be strings, got {type(k).__name__}"
                items.append((child, f"{p}.{k}" if k.isidentifier() else f"{p}[{k!r}]", depth + 1))
            stack.extend(reversed(items))
            continue
        if isinstance(v, list | tuple):
            stack.extend((c, f"{p}[{i}]", depth + 1) for i, c in reversed(list(enumerate(v))))
            continue
        return p, f"type {type(v).__name__} is not JSON (convert it to str, number, list or dict)"
    return None
