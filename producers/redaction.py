"""Scrub text derived from a call's arguments of the values its spec redacts.

`canonicalise` removes `redact` and `digest_only` fields from the logged arguments; this
module covers the *other* texts a call writes that its arguments can leak into: the error
message of a failed tool, a policy's reason, a result summary, external ids, resource keys.

A `Scrubber` is built from the raw arguments and a spec: it collects every scalar at a
redacted or digest-only path (dotted, lists apply to each item, a mapping or list at the path
contributes all its scalars) and replaces each occurrence in a text by `[REDACTED]`. What is
caught, and what is not, is in `docs/redaction.md`:

- the value as given (`str()` of strings, ints, floats; `repr()`/JSON escapes of strings);
- the same characters with any run of spaces, dashes, dots, commas, underscores or slashes
  between them, so `4111111111111111`, `4111 1111 1111 1111` and `4111-1111-1111-1111` all
  match whichever of them was given; letters match case-insensitively;
- only values with at least `MIN_SECRET_LENGTH` characters once separators are removed: a
  redacted `"1"` must not blank every `1` of a message.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from wakeline.producers.canonical import REDACTED

if TYPE_CHECKING:
    from wakeline.producers.registry import ToolSpec

#: values shorter than this (separators removed) are not searched for in texts
MIN_SECRET_LENGTH = 4
#: longer values are matched only exactly as given (the flexible pattern grows with length)
MAX_FLEXIBLE_LENGTH = 256
#: characters a rendering may put between the characters of a value
_SEPARATORS = r"[\s\-.,_/]*"
_SEPARATOR_CHARS = re.compile(r"[\s\-.,_/]+")
#: longer texts are cut to this many characters before they are scrubbed
_SCAN_LIMIT = 1 << 20
#: a spec's own scrubber: (the exception, the message so far) -> the message to record
ErrorScrubber = Callable[[BaseException, str], str]


def secret_values(args: Mapping[str, Any], paths: Iterable[str]) -> list[str]:
    """The texts of every scalar at the dotted `paths` of `args` (each rendering once)."""
    found: list[str] = []
    for path in paths:
        for value in _at(args, path.split(".")):
            for leaf in _leaves(value):
                found.extend(_renderings(leaf))
    return list(dict.fromkeys(found))


def _at(node: Any, parts: list[str]) -> Iterator[Any]:
    if isinstance(node, list | tuple):
        for item in node:
            yield from _at(item, parts)
        return
    if not isinstance(node, Mapping) or parts[0] not in node:
        return
    value = node[parts[0]]
    if len(parts) == 1:
        yield value
    else:
        yield from _at(value, parts[1:])


#: containers visited per redacted value: a value that contains itself is walked once
_MAX_NODES = 100_000


def _leaves(value: Any) -> Iterator[Any]:
    """Every scalar inside `value`, each container visited once (cycles and shared
    sub-values cost nothing twice), at most `_MAX_NODES` containers."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if isinstance(v, Mapping | list | tuple | set | frozenset):
            if id(v) in seen or len(seen) >= _MAX_NODES:
                continue
            seen.add(id(v))
            if isinstance(v, Mapping):
                for k, child in v.items():
                    stack.append(k)
                    stack.append(child)
            else:
                stack.extend(v)
        elif v is not None and not isinstance(v, bool):
            yield v


def _renderings(value: Any) -> list[str]:
    if isinstance(value, str):
        out = [value, repr(value)[1:-1], json.dumps(value)[1:-1]]
    elif isinstance(value, int):
        out = [str(value)]
    elif isinstance(value, float):
        out = [str(value), repr(value)] if value == value else []
    else:  # any other object a redacted field may hold (it never reaches the arguments)
        try:
            out = [str(value)]
        except Exception:  # noqa: BLE001 - nothing printable, so nothing to search for
            out = []
    return out


class Scrubber:
    """Replaces a call's secret values in any text. False when there is nothing to hide.

    The pattern is compiled on first use: most calls never fail nor summarise."""

    __slots__ = ("_compiled", "_pattern", "values")

    def __init__(self, values: Iterable[str]) -> None:
        self.values = list(values)
        self._compiled = False
        self._pattern: re.Pattern[str] | None = None

    @classmethod
    def for_call(cls, spec: ToolSpec, args: Mapping[str, Any]) -> Scrubber:
        if not spec.redacted_fields:
            return NOTHING
        return cls(secret_values(args, spec.redacted_fields))

    def _compile(self) -> re.Pattern[str] | None:
        if not self._compiled:
            alternatives = []
            for value in sorted(set(self.values), key=len, reverse=True):
                compact = _SEPARATOR_CHARS.sub("", value)
                if len(compact) < MIN_SECRET_LENGTH:
                    continue
                if len(compact) > MAX_FLEXIBLE_LENGTH:  # a key file, a document: as given
                    alternatives.append(re.escape(value))
                else:
                    alternatives.append(_SEPARATORS.join(re.escape(c) for c in compact))
            if alternatives:
                self._pattern = re.compile("|".join(alternatives), re.IGNORECASE)
            self._compiled = True
        return self._pattern

    def __bool__(self) -> bool:
        return self._compile() is not None

    def __call__(self, text: str) -> str:
        pattern = self._compile()
        return text if pattern is None else pattern.sub(REDACTED, text)

    def contains(self, text: str) -> bool:
        pattern = self._compile()
        return pattern is not None and pattern.search(text) is not None


NOTHING = Scrubber(())


def error_message(error: BaseException, spec: ToolSpec, scrub: Scrubber, limit: int) -> str:
    """What a failed call records of its exception: `str(error)`, through the spec's own
    scrubber if it has one, then with every secret value of the call removed.

    A spec scrubber that raises withholds the message entirely (fail closed)."""
    try:
        text = str(error)[:_SCAN_LIMIT]
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the result
        text = f"<{type(error).__name__} with an unprintable message>"
    if spec.scrub_error is not None:
        try:
            text = str(spec.scrub_error(error, text))[:_SCAN_LIMIT]
        except Exception as e:  # noqa: BLE001
            why = type(e).__name__
            return f"[message withheld: the error scrubber of {spec.name} failed: {why}]"
    return scrub(text)[:limit]


def scrub_text(text: str, scrub: Scrubber, limit: int) -> str:
    """`text` without the call's secret values, cut to `limit` characters *after* scrubbing
    (a cut first could leave the start of a secret that no longer matches)."""
    return scrub(text[:_SCAN_LIMIT])[:limit]


def template_fields(template: str) -> list[list[str]]:
    """The argument paths a `str.format` template reads: `card:{card[number]}` reads
    `["card", "number"]` (attribute access `{card.number}` counts the same)."""
    out: list[list[str]] = []
    for _literal, name, spec, _conv in string.Formatter().parse(template):
        if name is not None:
            root = re.match(r"[^.\[]*", name)
            assert root is not None
            parts = [root.group(0)]
            parts += [a or b for a, b in re.findall(r"\.([^.\[]+)|\[([^\]]*)\]", name)]
            out.append(parts)
        if spec and "{" in spec:
            out.extend(template_fields(spec))
    return out


def secret_in_template(template: str, paths: Iterable[str]) -> str | None:
    """The redacted path a template would write into a resource key, if any."""
    for fields in template_fields(template):
        for path in paths:
            parts = path.split(".")
            n = min(len(parts), len(fields))
            if parts[:n] == fields[:n]:
                return path
    return None
