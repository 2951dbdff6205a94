"""An Avro binary reader written from the Avro specification alone, as the tests' referee.

It shares no code with wakeline.schemas and does not use fastavro: it reads the schema's JSON
(the .avsc text) and a body, and returns the value or raises Invalid. The rules it applies,
from the specification's "Binary Encoding" section:

- int and long are zig-zag varints; an int is a 32-bit and a long a 64-bit signed integer, so
  an int takes at most 5 bytes and a long at most 10, and the value must fit.
- a boolean is one byte: 0 (false) or 1 (true).
- bytes and string are a long length, then that many bytes; a string's are UTF-8.
- float and double are 4 and 8 bytes, little-endian IEEE 754.
- an enum is an int index into its symbols; a union is an int index into its branches, then
  the value of that branch.
- arrays and maps are blocks: a long count, then that many items (a map's are a string key
  and a value); a count of 0 ends them; a negative count -n means n items, preceded by a long
  byte size of the block.
- a fixed is exactly its size in bytes; a record is its fields in order.
"""

from __future__ import annotations

import json
import struct
from typing import Any


class Invalid(Exception):
    """Not valid Avro binary for the schema."""


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0
        self.starts: list[int] = []  # where each value began

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise Invalid(f"need {n} bytes at {self.at}, {len(self.data) - self.at} left")
        out = self.data[self.at : self.at + n]
        self.at += n
        return out

    def varint(self, bits: int) -> int:
        max_bytes = (bits + 6) // 7  # 5 for an int, 10 for a long
        unsigned = 0
        for i in range(max_bytes):
            byte = self.take(1)[0]
            unsigned += (byte & 0x7F) * (128**i)
            if byte < 128:
                if unsigned >= 2**bits:
                    raise Invalid(f"varint does not fit {bits} bits")
                # zig-zag: 0, -1, 1, -2, 2, ...
                return unsigned // 2 if unsigned % 2 == 0 else -(unsigned + 1) // 2
        raise Invalid(f"varint longer than {max_bytes} bytes")


class SpecReader:
    """Reads bodies of one schema (its JSON text or object)."""

    def __init__(self, schema: str | dict[str, Any]) -> None:
        self.schema = json.loads(schema) if isinstance(schema, str) else schema
        self.named: dict[str, Any] = {}
        self._learn(self.schema, "")

    def _learn(self, node: Any, namespace: str) -> None:
        if isinstance(node, list):
            for branch in node:
                self._learn(branch, namespace)
        elif isinstance(node, dict):
            if node["type"] in ("record", "enum", "fixed"):
                name = node["name"]
                namespace = node.get("namespace", namespace) if "." not in name else ""
                full = f"{namespace}.{name}" if namespace and "." not in name else name
                self.named[full] = node
                self.named.setdefault(full.rsplit(".", 1)[-1], node)
            for field in node.get("fields", []):
                self._learn(field["type"], namespace)
            for key in ("items", "values"):
                if key in node:
                    self._learn(node[key], namespace)

    def read(self, body: bytes) -> Any:
        """The value of a body that is exactly one value of the schema, or Invalid."""
        return self.read_with_starts(body)[0]

    def read_with_starts(self, body: bytes) -> tuple[Any, list[int]]:
        """The value, and the offset in the body where each value (field, item, ...) starts."""
        cursor = _Cursor(body)
        value = self._value(self.schema, cursor)
        if cursor.at != len(body):
            raise Invalid(f"{len(body) - cursor.at} bytes after the value")
        return value, cursor.starts

    def _value(self, schema: Any, c: _Cursor) -> Any:  # noqa: C901 - one branch per type
        c.starts.append(c.at)
        if isinstance(schema, list):
            index = c.varint(32)
            if index < 0 or index >= len(schema):
                raise Invalid(f"union index {index} of {len(schema)} branches")
            return self._value(schema[index], c)
        kind = schema if isinstance(schema, str) else schema["type"]
        if isinstance(schema, str) and kind in self.named:
            return self._value(self.named[kind], c)
        if kind == "null":
            return None
        if kind == "boolean":
            byte = c.take(1)[0]
            if byte not in (0, 1):
                raise Invalid(f"boolean byte {byte}")
            return byte == 1
        if kind == "int":
            return c.varint(32)
        if kind == "long":
            return c.varint(64)
        if kind == "float":
            return struct.unpack("<f", c.take(4))[0]
        if kind == "double":
            return struct.unpack("<d", c.take(8))[0]
        if kind in ("bytes", "string"):
            raw = c.take(c.varint(64))
            if kind == "bytes":
                return raw
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise Invalid(f"string is not UTF-8: {e}") from None
        if kind == "fixed":
            return c.take(schema["size"])
        if kind == "enum":
            index = c.varint(32)
            if index < 0 or index >= len(schema["symbols"]):
                raise Invalid(f"enum index {index} of {len(schema['symbols'])} symbols")
            return schema["symbols"][index]
        if kind == "record":
            return {f["name"]: self._value(f["type"], c) for f in schema["fields"]}
        if kind in ("array", "map"):
            out: Any = [] if kind == "array" else {}
            while True:
                count = c.varint(64)
                if count == 0:
                    return out
                size = None
                if count < 0:
                    count = -count
                    size = c.varint(64)
                    if size < 0:
                        raise Invalid(f"block byte size {size}")
                start = c.at
                if count > len(c.data) - c.at:  # every item of these schemas takes a byte
                    raise Invalid(f"block of {count} items in {len(c.data) - c.at} bytes")
                for _ in range(count):
                    if kind == "array":
                        out.append(self._value(schema["items"], c))
                    else:
                        key = self._value("string", c)
                        out[key] = self._value(schema["values"], c)
                if size is not None and c.at - start != size:
                    raise Invalid(f"block byte size {size}, items took {c.at - start}")
        raise Invalid(f"unknown type {kind!r}")
