"""Compiled codecs: one straight-line Python function per record schema, for the hot paths.

fastavro's generic writer spends ~0.5 µs on every nullable union (it validates each branch)
and ~12 µs on a ToolIntent; its reader ~10 µs. For the record shapes the event schemas use
(string, bytes, int, long, boolean, enum, ["null", X], array/map of string) we generate one
function per schema that writes and reads the same bytes in about a third (encode) and a
half (decode) of the time. Any other shape compiles to None and fastavro does the work.

fastavro stays the reference: whenever a compiled function refuses an input, the codec asks
fastavro, which either accepts it (the same result) or gives the verdict and the message.
Property tests hold the two to byte and value equality.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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

#: public name of the Avro long writer (zig-zag varint), for code that frames by hand
avro_long = _zigzag


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


# -- decoder --------------------------------------------------------------------------------


class _Malformed(Exception):
    """The compiled decoder cannot read these bytes; fastavro will give the verdict."""


def _read_long(ind: str, target: str) -> list[str]:
    """Lines reading one zig-zag varint at `pos` of `buf` into `target`."""
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
        f"{ind}        if shift > 63:",
        f"{ind}            raise _Malformed",
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
        *_read_long(ind + "        ", "_size"),
        f"{ind}    for _ in range(count):",
        *item,
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
        return _read_long(ind, target)
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
            *_read_long(ind, "i"),
            f"{ind}if i < 0:",
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
    on anything that is not exactly one body filling the rest of the frame.
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
