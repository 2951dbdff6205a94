"""Compiled codecs: one straight-line Python function per record schema, for the hot paths.

fastavro's generic writer spends ~0.5 µs on every nullable union (it validates each branch)
and ~12 µs on a ToolIntent; its reader ~10 µs. For the record shapes the event schemas use
(string, bytes, int, long, boolean, enum, ["null", X], array/map of string) we generate one
function per schema that writes and reads the same bytes in about a third (encode) and a
half (decode) of the time. Any other shape compiles to None.

Writing, fastavro stays the reference: whenever the compiled encoder refuses a value, the
codec asks fastavro, which writes the same bytes or gives the verdict and the message (and
its output is checked with the strict decoder before it is framed). Reading, fastavro is not
the reference, being laxer than the Avro specification: the compiled decoder and the generic
strict decoder at the end of this file apply the specification's rules (listed below) and
give the verdict; fastavro only resolves bodies already found valid. Property and fuzz tests
hold all of them to byte and value equality with fastavro where it is right.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

from wakeline.errors import SchemaError

Encoder = Callable[[dict[str, Any], bytes], bytes]
Decoder = Callable[[bytes, int], dict[str, Any]]

_MISSING = object()
_SMALL = [bytes([i]) for i in range(128)]


def _zigzag(n: int) -> bytes:
    """Avro long: zig-zag, then little-endian base-128 varint."""
    n = (n << 1) ^ (n >> 63)
    if n < 0x80:
        return _SMALL[n]
    out = []
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_LENGTH = [_zigzag(i) for i in range(64)]  # one-byte length prefixes

_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


def avro_long(n: int) -> bytes:
    """The Avro long (zig-zag varint) of n, for code that frames by hand; ValueError if n is
    not a 64-bit signed integer (its varint would be longer than any decoder reads)."""
    if _LONG_MIN <= n <= _LONG_MAX:
        return _zigzag(n)
    raise ValueError(f"{n} does not fit an Avro long (64-bit signed)")


class _Refused(Exception):
    """The compiled encoder cannot write this value; fastavro will decide."""


def _len_prefix(ind: str, var: str) -> list[str]:
    return [
        f"{ind}n = len({var})",
        f"{ind}ap(_LENGTH[n] if n < 64 else _zigzag(n))",
        f"{ind}ap({var})",
    ]


def _value_lines(kind: Any, ind: str, env: dict[str, Any], tag: str) -> list[str] | None:
    """Lines writing `v` of Avro type `kind`, or None when this type is not compiled."""
    name = kind if isinstance(kind, str) else kind.get("type")
    if name == "string":
        return [f"{ind}b = v.encode()", *_len_prefix(ind, "b")]
    if name == "bytes":
        return [f"{ind}if type(v) is not bytes: raise _Refused", *_len_prefix(ind, "v")]
    if name in ("long", "int"):
        lo, hi = (-(1 << 63), (1 << 63) - 1) if name == "long" else (-(1 << 31), (1 << 31) - 1)
        return [
            f"{ind}if type(v) is not int or not {lo} <= v <= {hi}: raise _Refused",
            f"{ind}ap(_zigzag(v))",
        ]
    if name == "boolean":
        return [
            f"{ind}if v is True: ap(b'\\x01')",
            f"{ind}elif v is False: ap(b'\\x00')",
            f"{ind}else: raise _Refused",
        ]
    if name == "enum":
        env[f"_E{tag}"] = {sym: _zigzag(i) for i, sym in enumerate(kind["symbols"])}
        return [f"{ind}ap(_E{tag}[v])"]
    if name == "array" and kind["items"] == "string":
        return [
            f"{ind}if v:",
            f"{ind}    if type(v) is str: raise _Refused",
            f"{ind}    ap(_zigzag(len(v)))",
            f"{ind}    for s in v:",
            f"{ind}        b = s.encode()",
            *_len_prefix(ind + "        ", "b"),
            f"{ind}ap(b'\\x00')",
        ]
    if name == "map" and kind["values"] == "string":
        return [
            f"{ind}if v:",
            f"{ind}    ap(_zigzag(len(v)))",
            f"{ind}    for k, s in v.items():",
            f"{ind}        b = k.encode()",
            *_len_prefix(ind + "        ", "b"),
            f"{ind}        b = s.encode()",
            *_len_prefix(ind + "        ", "b"),
            f"{ind}ap(b'\\x00')",
        ]
    return None


def compile_encoder(parsed: dict[str, Any]) -> Encoder | None:
    """A function (event, header) -> frame for a flat record schema, or None if unsupported.

    It raises _Refused (or any TypeError/AttributeError/...) for anything it does not write
    exactly as fastavro would; the caller then falls back to fastavro.
    """
    env: dict[str, Any] = {
        "_zigzag": _zigzag,
        "_LENGTH": _LENGTH,
        "_MISSING": _MISSING,
        "_Refused": _Refused,
    }
    lines = [
        "def encode(event, header):",
        "    parts = [header]",
        "    ap = parts.append",
        "    present = 0",
    ]
    for i, field in enumerate(parsed["fields"]):
        lines.append(f"    v = event.get({field['name']!r}, _MISSING)")
        if "default" in field:
            env[f"_D{i}"] = field["default"]
            lines += [f"    if v is _MISSING: v = _D{i}", "    else: present += 1"]
        else:
            lines += ["    if v is _MISSING: raise _Refused", "    present += 1"]
        kind = field["type"]
        if isinstance(kind, list):
            if len(kind) != 2 or kind[0] != "null":
                return None
            body = _value_lines(kind[1], "        ", env, str(i))
            if body is None:
                return None
            lines += ["    if v is None: ap(b'\\x00')", "    else:", "        ap(b'\\x02')", *body]
        else:
            body = _value_lines(kind, "    ", env, str(i))
            if body is None:
                return None
            lines += body
    lines += ["    if present != len(event): raise _Refused", "    return b''.join(parts)"]
    exec(compile("\n".join(lines), f"<wakeline encoder {parsed['name']}>", "exec"), env)
    return env["encode"]


# -- decoder: exactly as strict as the Avro specification -----------------------------------
#
# Both decoders below accept a body only if it is valid Avro binary for the writer schema, by
# the rules of the specification (https://avro.apache.org/docs/current/specification/):
#   int: a zig-zag varint of at most 5 bytes whose value fits 32 bits; long: at most 10 bytes,
#     fitting 64 bits (Java's decoder refuses longer varints; fastavro reads any length and
#     silently wraps);
#   boolean: one byte, 0 or 1;
#   string/bytes: a non-negative long length, then that many bytes, within the frame; a
#     string's bytes are strict UTF-8 (no overlong forms, no surrogates);
#   enum index and union branch index: 0 <= i < number of symbols/branches (fastavro, being
#     Python, reads a negative index from the end of the list);
#   array/map blocks: a count, its items, ..., a zero count; a negative count -n means n items
#     preceded by the block's size in bytes, which must be >= 0 and exact;
#   fixed: exactly its size; float/double: 4/8 bytes little-endian;
#   and the body fills the frame exactly (no trailing bytes).
# Varints need not be minimal (0x80 0x00 is a valid 0): the specification does not forbid it
# and Java reads it. A map may repeat a key; the last one wins, as in Java and fastavro.
#
# The compiled decoder is the fast path: one straight-line function per record schema. When it
# refuses a body, the generic strict decoder (strict_decoder) gives the verdict and the message
# (what, where, at which byte); it also reads, without fastavro, any shape that does not compile.


class InvalidAvro(SchemaError):
    """Bytes that are not valid Avro for the schema: what is wrong, at which byte, and where."""

    def __init__(self, what: str, at: int) -> None:
        super().__init__(what)
        self.what = what
        self.at = at  # offset in the frame of the value that is wrong
        self.path: list[str] = []  # field names and [index]es, outermost first

    def __str__(self) -> str:
        where = "".join(p if p.startswith("[") else "." + p for p in self.path).lstrip(".")
        return f"{where or 'value'} at byte {self.at}: {self.what}"


class _Malformed(Exception):
    """The compiled decoder refuses these bytes; the strict decoder says why."""


#: the largest shift a varint's last byte may have: 10 bytes for a long, 5 for an int
_MAX_SHIFT = {64: 63, 32: 28}


def _read_long(ind: str, target: str, bits: int = 64) -> list[str]:
    """Lines reading one zig-zag varint at `pos` of `buf` into `target` (int: bits=32)."""
    return [
        f"{ind}b = buf[pos]",
        f"{ind}pos += 1",
        f"{ind}if b < 0x80:",
        f"{ind}    n = b",
        f"{ind}else:",
        f"{ind}    n = b & 0x7F",
        f"{ind}    shift = 7",
        f"{ind}    while True:",
        f"{ind}        b = buf[pos]",
        f"{ind}        pos += 1",
        f"{ind}        n |= (b & 0x7F) << shift",
        f"{ind}        if b < 0x80:",
        f"{ind}            break",
        f"{ind}        shift += 7",
        f"{ind}        if shift > {_MAX_SHIFT[bits]}:",
        f"{ind}            raise _Malformed",
        f"{ind}    if n >> {bits}:",
        f"{ind}        raise _Malformed",
        f"{ind}{target} = (n >> 1) ^ -(n & 1)",
    ]


def _read_sized(ind: str, target: str, *, text: bool) -> list[str]:
    take = "buf[pos:pos + n].decode()" if text else "buf[pos:pos + n]"
    return [
        *_read_long(ind, "n"),
        f"{ind}if n < 0 or pos + n > end:",
        f"{ind}    raise _Malformed",
        f"{ind}{target} = {take}",
        f"{ind}pos += n",
    ]


def _read_blocks(ind: str, item: list[str]) -> list[str]:
    """Avro array/map blocks: count, items, ..., 0; a negative count is followed by a size."""
    return [
        *_read_long(ind, "count"),
        f"{ind}while count:",
        f"{ind}    if count < 0:",
        f"{ind}        count = -count",
        *_read_long(ind + "        ", "size"),
        f"{ind}        if size < 0:",
        f"{ind}            raise _Malformed",
        f"{ind}        block_end = pos + size",
        f"{ind}    else:",
        f"{ind}        block_end = -1",
        f"{ind}    if count > end - pos:",  # every item takes at least one byte
        f"{ind}        raise _Malformed",
        f"{ind}    for _ in range(count):",
        *item,
        f"{ind}    if block_end >= 0 and pos != block_end:",
        f"{ind}        raise _Malformed",
        *_read_long(ind + "    ", "count"),
    ]


def _read_lines(
    kind: Any, ind: str, env: dict[str, Any], tag: str, target: str
) -> list[str] | None:
    name = kind if isinstance(kind, str) else kind.get("type")
    deeper = ind + "        "
    if name == "string":
        return _read_sized(ind, target, text=True)
    if name == "bytes":
        return _read_sized(ind, target, text=False)
    if name in ("long", "int"):
        return _read_long(ind, target, 64 if name == "long" else 32)
    if name == "boolean":
        return [
            f"{ind}b = buf[pos]",
            f"{ind}pos += 1",
            f"{ind}if b > 1:",
            f"{ind}    raise _Malformed",
            f"{ind}{target} = b == 1",
        ]
    if name == "enum":
        env[f"_S{tag}"] = tuple(kind["symbols"])
        return [
            *_read_long(ind, "i", 32),
            f"{ind}if not 0 <= i < {len(kind['symbols'])}:",
            f"{ind}    raise _Malformed",
            f"{ind}{target} = _S{tag}[i]",
        ]
    if name == "array" and kind["items"] == "string":
        item = [*_read_sized(deeper, "s", text=True), f"{deeper}items.append(s)"]
        return [f"{ind}items = []", *_read_blocks(ind, item), f"{ind}{target} = items"]
    if name == "map" and kind["values"] == "string":
        item = [
            *_read_sized(deeper, "k", text=True),
            *_read_sized(deeper, "s", text=True),
            f"{deeper}items[k] = s",
        ]
        return [f"{ind}items = {{}}", *_read_blocks(ind, item), f"{ind}{target} = items"]
    return None


def compile_decoder(parsed: dict[str, Any]) -> Decoder | None:
    """A function (frame bytes, body offset) -> event dict, or None if unsupported.

    The frame must be `bytes`. It raises (IndexError, UnicodeDecodeError, _Malformed, ...)
    on anything that is not exactly one valid body filling the rest of the frame, and may
    refuse valid ones it does not read (a union index written in more than one byte):
    strict_decoder gives the verdict then.
    """
    env: dict[str, Any] = {"_Malformed": _Malformed}
    lines = ["def decode(buf, pos):", "    end = len(buf)"]
    names = []
    for i, field in enumerate(parsed["fields"]):
        kind = field["type"]
        target = f"f{i}"  # locals, one dict display at the end: faster than item stores
        names.append(f"{field['name']!r}: f{i}")
        if isinstance(kind, list):
            if len(kind) != 2 or kind[0] != "null":
                return None
            body = _read_lines(kind[1], "        ", env, str(i), target)
            if body is None:
                return None
            lines += [
                "    b = buf[pos]",
                "    pos += 1",
                "    if b == 0:",
                f"        {target} = None",
                "    elif b == 2:",
                *body,
                "    else:",
                "        raise _Malformed",
            ]
        else:
            body = _read_lines(kind, "    ", env, str(i), target)
            if body is None:
                return None
            lines += body
    lines += [
        "    if pos != end:",
        "        raise _Malformed",
        f"    return {{{', '.join(names)}}}",
    ]
    exec(compile("\n".join(lines), f"<wakeline decoder {parsed['name']}>", "exec"), env)
    return env["decode"]


# -- the generic strict decoder: any schema, every rule, a message for every refusal ---------

_Read = Callable[[bytes, int], tuple[Any, int]]
_PRIMITIVES = ("null", "boolean", "int", "long", "float", "double", "bytes", "string")
#: the most items of zero bytes each (null, empty record) one array or map may hold
MAX_EMPTY_ITEMS = 1 << 16
_FLOAT = struct.Struct("<f").unpack_from
_DOUBLE = struct.Struct("<d").unpack_from


def _varint(buf: bytes, pos: int, bits: int, what: str) -> tuple[int, int]:
    start, end, n, shift = pos, len(buf), 0, 0
    while True:
        if pos >= end:
            raise InvalidAvro(f"the frame ends inside the {what}", start)
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > _MAX_SHIFT[bits]:
            nbytes = _MAX_SHIFT[bits] // 7 + 1
            raise InvalidAvro(f"the {what} is a varint longer than {nbytes} bytes", start)
    if n >> bits:
        kind = "int" if bits == 32 else "long"
        raise InvalidAvro(f"the {what} overflows an Avro {kind} ({bits} bits)", start)
    return (n >> 1) ^ -(n & 1), pos


def _sized(buf: bytes, pos: int, what: str) -> tuple[int, int, int]:
    """(length, start of the data, end of the data) of a bytes/string value at pos."""
    n, data = _varint(buf, pos, 64, f"{what} length")
    if n < 0:
        raise InvalidAvro(f"{what} length is {n}, want >= 0", pos)
    if data + n > len(buf):
        raise InvalidAvro(f"{what} of {n} bytes overruns the frame ({len(buf) - data} left)", pos)
    return n, data, data + n


def _read_string(buf: bytes, pos: int) -> tuple[str, int]:
    _, data, end = _sized(buf, pos, "string")
    try:
        return buf[data:end].decode(), end
    except UnicodeDecodeError as e:
        raise InvalidAvro(
            f"string is not UTF-8: {e.reason} at byte {data + e.start}", pos
        ) from None


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    _, data, end = _sized(buf, pos, "bytes")
    return bytes(buf[data:end]), end


def _read_boolean(buf: bytes, pos: int) -> tuple[bool, int]:
    if pos >= len(buf):
        raise InvalidAvro("the frame ends before the boolean", pos)
    b = buf[pos]
    if b > 1:
        raise InvalidAvro(f"boolean byte is {b:#04x}, want 0x00 or 0x01", pos)
    return b == 1, pos + 1


def _fixed_width(size: int, unpack: Callable[..., tuple[Any, ...]] | None, what: str) -> _Read:
    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        if pos + size > len(buf):
            raise InvalidAvro(f"{what} of {size} bytes overruns the frame", pos)
        value = unpack(buf, pos)[0] if unpack is not None else bytes(buf[pos : pos + size])
        return value, pos + size

    return read


_PRIMITIVE_READERS: dict[str, _Read] = {
    "null": lambda buf, pos: (None, pos),
    "boolean": _read_boolean,
    "int": lambda buf, pos: _varint(buf, pos, 32, "int"),
    "long": lambda buf, pos: _varint(buf, pos, 64, "long"),
    "float": _fixed_width(4, _FLOAT, "float"),
    "double": _fixed_width(8, _DOUBLE, "double"),
    "bytes": _read_bytes,
    "string": _read_string,
}


def _min_size(kind: Any, named: dict[str, Any], seen: frozenset[str] = frozenset()) -> int:
    """The fewest bytes a value of this type takes (a lower bound, for block counts)."""
    if isinstance(kind, list):
        return 1
    name = kind if isinstance(kind, str) else kind["type"]
    if name in named and isinstance(kind, str):
        if name in seen:
            return 0
        seen, kind = seen | {name}, named[name]
        name = kind["type"]
    if name in ("null",):
        return 0
    if name in ("float",):
        return 4
    if name in ("double",):
        return 8
    if name == "fixed":
        return int(kind["size"])
    if name == "record":
        return sum(_min_size(f["type"], named, seen) for f in kind["fields"])
    return 1  # boolean, int, long, bytes, string, enum, array, map: one byte at least


def _collect_named(kind: Any, named: dict[str, Any]) -> None:
    if isinstance(kind, list):
        for branch in kind:
            _collect_named(branch, named)
    elif isinstance(kind, dict):
        if kind["type"] in ("record", "enum", "fixed", "error"):
            named[kind["name"]] = kind
        for field in kind.get("fields", ()):
            _collect_named(field["type"], named)
        for key in ("items", "values"):
            if key in kind:
                _collect_named(kind[key], named)


def _blocks(item: _Read | None, key_and_value: _Read | None, min_item: int, what: str) -> _Read:
    """An array (item) or map (key_and_value) reader: count, items, ..., a zero count."""

    def read(buf: bytes, pos: int) -> tuple[Any, int]:
        out: Any = [] if item is not None else {}
        total = 0
        while True:
            at = pos
            count, pos = _varint(buf, pos, 64, f"{what} block count")
            if count == 0:
                return out, pos
            block_end = -1
            if count < 0:
                count = -count
                size, pos = _varint(buf, pos, 64, f"{what} block size")
                if size < 0:
                    raise InvalidAvro(f"{what} block size is {size}, want >= 0", at)
                block_end = pos + size
            left = len(buf) - pos
            room = left // min_item if min_item else MAX_EMPTY_ITEMS - total
            if count > room:
                raise InvalidAvro(
                    f"{what} block of {count} items cannot fit in the {left} bytes left", at
                )
            for _ in range(count):
                try:
                    if item is not None:
                        value, pos = item(buf, pos)
                        out.append(value)
                    else:
                        assert key_and_value is not None
                        (key, value), pos = key_and_value(buf, pos)
                        out[key] = value
                except InvalidAvro as e:
                    e.path.insert(0, f"[{total}]")
                    raise
                total += 1
            if block_end >= 0 and pos != block_end:
                raise InvalidAvro(
                    f"{what} block size says {size} bytes, its {count} items take "
                    f"{pos - block_end + size}",
                    at,
                )

    return read


def _reader(kind: Any, named: dict[str, Any], built: dict[str, _Read]) -> _Read:
    if isinstance(kind, list):
        branches = [_reader(branch, named, built) for branch in kind]

        def read_union(buf: bytes, pos: int) -> tuple[Any, int]:
            i, after = _varint(buf, pos, 32, "union branch index")
            if not 0 <= i < len(branches):
                raise InvalidAvro(f"union branch index is {i}, want 0..{len(branches) - 1}", pos)
            return branches[i](buf, after)

        return read_union
    if isinstance(kind, str):
        if kind in _PRIMITIVE_READERS:
            return _PRIMITIVE_READERS[kind]
        if kind in built:
            return built[kind]
        if kind not in named:
            raise SchemaError(f"schema names type {kind!r}, which it does not define")
        return lambda buf, pos: built[kind](buf, pos)  # a recursive reference, still building
    name = kind["type"]
    if name in _PRIMITIVE_READERS:
        return _PRIMITIVE_READERS[name]
    if name == "enum":
        symbols = tuple(kind["symbols"])

        def read_enum(buf: bytes, pos: int) -> tuple[str, int]:
            i, after = _varint(buf, pos, 32, "enum index")
            if not 0 <= i < len(symbols):
                raise InvalidAvro(
                    f"enum index is {i}, want 0..{len(symbols) - 1} ({kind['name']})", pos
                )
            return symbols[i], after

        built[kind["name"]] = read_enum
        return read_enum
    if name == "fixed":
        read_fixed = _fixed_width(int(kind["size"]), None, f"fixed {kind['name']}")
        built[kind["name"]] = read_fixed
        return read_fixed
    if name == "array":
        items = kind["items"]
        return _blocks(_reader(items, named, built), None, _min_size(items, named), "array")
    if name == "map":
        value = _reader(kind["values"], named, built)

        def read_entry(buf: bytes, pos: int) -> tuple[tuple[str, Any], int]:
            key, pos = _read_string(buf, pos)
            try:
                found, pos = value(buf, pos)
            except InvalidAvro as e:
                e.path.insert(0, f"[{key!r}]")
                raise
            return (key, found), pos

        least = 1 + _min_size(kind["values"], named)
        return _blocks(None, read_entry, least, "map")
    if name in ("record", "error"):
        fields: list[tuple[str, _Read]] = []
        built[kind["name"]] = read_record = _record(fields)
        fields += [(f["name"], _reader(f["type"], named, built)) for f in kind["fields"]]
        return read_record
    raise SchemaError(f"schema has a type {name!r} the Avro specification does not define")


def _record(fields: list[tuple[str, _Read]]) -> _Read:
    def read_record(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
        out = {}
        for name, read in fields:
            try:
                out[name], pos = read(buf, pos)
            except InvalidAvro as e:
                e.path.insert(0, name)
                raise
        return out, pos

    return read_record


def strict_decoder(parsed: Any) -> Decoder:
    """A function (frame bytes, body offset) -> value for any fastavro-parsed schema.

    It accepts exactly the bodies that are valid Avro binary for the schema and fill the rest
    of the frame, reads them as fastavro does, and raises InvalidAvro for anything else.
    """
    named: dict[str, Any] = {}
    _collect_named(parsed, named)
    read = _reader(parsed, named, {})

    def decode(buf: bytes, pos: int) -> Any:
        start = pos
        try:
            value, pos = read(buf, pos)
        except RecursionError:
            raise InvalidAvro("values nest deeper than the decoder follows", start) from None
        if pos != len(buf):
            raise InvalidAvro(f"{len(buf) - pos} trailing bytes after the body, want 0", pos)
        return value

    return decode
