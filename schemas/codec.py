"""The wire codec: Avro single-object encoding of Wakeline events (DESIGN §3, schemas/README.md).

A frame is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema's parsing
canonical form (little-endian, as the Avro spec and Java's ``SchemaNormalization`` give it) +
the Avro binary body. Events are plain dicts whose ``type`` names the record.

Timestamps (``time``, ``expires_at``) are ``long`` with logicalType ``timestamp-micros`` in
the .avsc files. The logical type changes neither the bytes nor the fingerprint (the parsing
canonical form drops it), so the codec parses the schemas with it stripped: events carry
plain ``int`` epoch microseconds both ways and fastavro does no datetime conversion per call.

Pure: fastavro and the standard library only; never Kafka, faust or click.
"""

from __future__ import annotations

import copy
import json
import os
import threading
import time as _time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from wakeline.errors import SchemaError

MAGIC = b"\xc3\x01"
FINGERPRINT_SIZE = 8
HEADER_SIZE = len(MAGIC) + FINGERPRINT_SIZE
NAMESPACE = "dev.wakeline.v1"
CE_SPECVERSION = b"1.0"
CONTENT_TYPE = b"application/avro"

EVENT_TYPES = (
    "ToolIntent",
    "ToolResult",
    "PolicyDecision",
    "ApprovalRequested",
    "ApprovalGranted",
    "ApprovalDenied",
    "Alert",
    "Quarantine",
    "Release",
    "CompensationStarted",
    "CompensationResult",
    "Escalation",
    "Checkpoint",
    "WorkflowCompleted",
)

#: the envelope every record starts with, in this order (DESIGN §3, docs/contracts.md)
ENVELOPE_FIELDS = (
    "event_id",
    "type",
    "time",
    "source",
    "workflow_id",
    "run_id",
    "step_id",
    "agent_id",
    "tenant",
    "boundary",
    "parent_event_ids",
    "correlation_id",
    "principal",
    "trace_id",
    "span_id",
)

Event = dict[str, Any]


class MalformedFrame(SchemaError):
    """The bytes are not a single-object-encoded Wakeline event."""


class UnknownFingerprint(SchemaError):
    """The frame names a writer schema this codec has not been told about."""

    def __init__(self, message: str, fingerprint: bytes) -> None:
        super().__init__(message)
        self.fingerprint = fingerprint


def ce_type(type_name: str) -> str:
    """The CloudEvents ``type`` of an event type, e.g. ``dev.wakeline.ToolIntent.v1``."""
    return f"dev.wakeline.{type_name}.v1"


def fingerprint_bytes(canonical_form: str) -> bytes:
    """CRC-64-AVRO of a parsing canonical form, as the 8 bytes a frame carries.

    fastavro returns the hex of the little-endian bytes (the Java implementation's order),
    which is exactly the byte order the single-object encoding wants.
    """
    return bytes.fromhex(_fastavro_fingerprint(canonical_form, "CRC-64-AVRO"))


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


@dataclass(frozen=True)
class SchemaInfo:
    """One writer schema as the registry knows it."""

    type_name: str  # the record's simple name = the event type
    full_name: str  # with namespace, e.g. dev.wakeline.v1.ToolIntent
    fingerprint: bytes  # 8 bytes, as in the frame
    canonical_form: str
    schema_json: str  # the full schema (docs, defaults, logical types), compact JSON
    parsed: dict[str, Any]  # fastavro-parsed, logical types stripped: ints in, ints out

    @classmethod
    def from_json(cls, schema: str | Mapping[str, Any]) -> SchemaInfo:
        try:
            raw = json.loads(schema) if isinstance(schema, str) else copy.deepcopy(dict(schema))
            if not isinstance(raw, dict) or raw.get("type") != "record":
                got = raw.get("type") if isinstance(raw, dict) else type(raw).__name__
                raise SchemaError(f"schema is {got!r}, want an Avro record")
            canonical = to_parsing_canonical_form(parse_schema(raw, named_schemas={}))
            parsed = parse_schema(_strip_logical_types(raw), named_schemas={})
        except SchemaError:
            raise
        except Exception as e:  # fastavro raises many kinds for a bad schema
            raise SchemaError(f"not a valid Avro schema: {e}") from e
        full_name = str(raw["name"])
        if "." not in full_name and raw.get("namespace"):
            full_name = f"{raw['namespace']}.{full_name}"
        return cls(
            type_name=full_name.rsplit(".", 1)[-1],
            full_name=full_name,
            fingerprint=fingerprint_bytes(canonical),
            canonical_form=canonical,
            schema_json=json.dumps(raw, separators=(",", ":"), sort_keys=False),
            parsed=parsed,
        )


def packaged_schemas() -> dict[str, SchemaInfo]:
    """The current schemas shipped as ``*.avsc`` next to this module, by type name."""
    folder = resources.files("wakeline.schemas")
    found: dict[str, SchemaInfo] = {}
    for type_name in EVENT_TYPES:
        info = SchemaInfo.from_json((folder / f"{type_name}.avsc").read_text())
        if info.type_name != type_name:
            raise SchemaError(f"{type_name}.avsc defines {info.type_name!r}, want {type_name!r}")
        found[type_name] = info
    return found


def packaged_avsc() -> list[SchemaInfo]:
    """Every ``*.avsc`` shipped in the package: the event types and any other record framed
    the same way (e.g. the audit topic's AuditRecord). What ``wakeline init`` publishes."""
    folder = resources.files("wakeline.schemas")
    names = sorted(e.name for e in folder.iterdir() if e.name.endswith(".avsc"))
    return [SchemaInfo.from_json((folder / name).read_text()) for name in names]


#: resolver hook: fingerprint -> schema JSON (or None) for writer schemas not yet known
Resolver = Callable[[bytes], "SchemaInfo | str | Mapping[str, Any] | None"]


class Codec:
    """Encodes with the current schemas; decodes any registered writer schema.

    Writer schemas are known by fingerprint. A frame written with another version of a type
    (older or newer) is resolved to this codec's current reader schema of that type by Avro's
    resolution rules (missing fields take their defaults, unknown fields are skipped, unknown
    enum symbols read as the enum's default). A writer schema whose type has no current
    schema here is decoded as written.
    """

    def __init__(
        self, current: Mapping[str, SchemaInfo], *, resolver: Resolver | None = None
    ) -> None:
        self._current = dict(current)
        self._writers: dict[bytes, SchemaInfo] = {}
        # fingerprint -> (writer parsed, reader parsed or None when identical)
        self._readers: dict[bytes, tuple[dict[str, Any], dict[str, Any] | None]] = {}
        # type name -> (header bytes, parsed schema, compiled encoder or None): the hot path
        self._encoders = {
            name: (MAGIC + info.fingerprint, info.parsed, compile_encoder(info.parsed))
            for name, info in self._current.items()
        }
        self._lock = threading.Lock()
        self.resolver = resolver
        for info in self._current.values():
            self.register(info)

    # -- registry --------------------------------------------------------------------------

    def register(self, schema: SchemaInfo | str | Mapping[str, Any]) -> bytes:
        """Teach the decoder a writer schema (any version); returns its fingerprint."""
        info = schema if isinstance(schema, SchemaInfo) else SchemaInfo.from_json(schema)
        reader = self._current.get(info.type_name)
        if reader is not None and reader.full_name != info.full_name:
            reader = None  # another record that shares the simple name: decode as written
        resolved = None if reader is None or reader.fingerprint == info.fingerprint else reader
        with self._lock:
            self._writers[info.fingerprint] = info
            self._readers[info.fingerprint] = (
                info.parsed,
                None if resolved is None else resolved.parsed,
            )
        return info.fingerprint

    def writer_schemas(self) -> dict[bytes, SchemaInfo]:
        """Every writer schema known, by fingerprint (current ones included)."""
        return dict(self._writers)

    def current(self) -> dict[str, SchemaInfo]:
        return dict(self._current)

    # -- encode / decode -------------------------------------------------------------------

    def encode(self, event: Event) -> bytes:
        """Single-object-encode an event dict: C3 01 + fingerprint + Avro body.

        Fields with defaults may be left out; a missing required field, an unknown field,
        an unknown type or a value of the wrong type raises SchemaError.
        """
        try:
            header, parsed, compiled = self._encoders[event["type"]]
        except (KeyError, TypeError):
            raise _bad_type(event) from None
        if compiled is not None:
            try:
                return compiled(event, header)
            except Exception:  # fastavro below gives the verdict and the message
                pass
        return self._encode_with_fastavro(event, header, parsed)

    def _encode_with_fastavro(self, event: Event, header: bytes, parsed: dict[str, Any]) -> bytes:
        info = self._current[event["type"]]
        for field in parsed["fields"]:
            kind = field["type"]
            value = event.get(field["name"])
            if isinstance(kind, dict) and kind.get("type") == "array" and isinstance(value, str):
                # fastavro would silently write a string as an array of its characters
                raise SchemaError(
                    f"{info.type_name} {event.get('event_id', '<no event_id>')}: "
                    f"{field['name']} is a str, want a list"
                )
        buf = BytesIO()
        buf.write(header)
        try:
            schemaless_writer(buf, parsed, event, strict_allow_default=True)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
            raise SchemaError(_explain(event, info, e)) from e
        return buf.getvalue()

    def decode(self, frame: bytes | bytearray | memoryview) -> Event:
        """The event dict of a frame, resolved to the current schema of its type.

        Raises MalformedFrame (short, wrong magic, body that does not decode, trailing
        bytes) or UnknownFingerprint (writer schema unknown and not resolvable).
        """
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise MalformedFrame(f"frame is {type(frame).__name__}, want bytes")
        if len(frame) < HEADER_SIZE:
            raise MalformedFrame(
                f"frame has {len(frame)} bytes, want at least {HEADER_SIZE} "
                "(2 magic + 8 fingerprint) and a body"
            )
        if frame[:2] != MAGIC:
            raise MalformedFrame(f"frame starts with {bytes(frame[:2]).hex()}, want c301")
        fp = bytes(frame[2:HEADER_SIZE])
        schemas = self._readers.get(fp)
        if schemas is None:
            schemas = self._resolve(fp)
        buf = BytesIO(frame)
        buf.seek(HEADER_SIZE)
        try:
            event = schemaless_reader(buf, schemas[0], schemas[1])
        except Exception as e:  # EOFError, UnicodeDecodeError, IndexError, ... on garbage
            raise MalformedFrame(
                f"body of {len(frame) - HEADER_SIZE} bytes does not decode with schema "
                f"{fp.hex()}: {type(e).__name__}: {e}"
            ) from e
        if buf.tell() != len(frame):
            raise MalformedFrame(
                f"frame has {len(frame) - buf.tell()} trailing bytes after the body, want 0"
            )
        return event

    def _resolve(self, fp: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
        found = self.resolver(fp) if self.resolver is not None else None
        if found is not None:
            info = found if isinstance(found, SchemaInfo) else SchemaInfo.from_json(found)
            if info.fingerprint != fp:
                raise UnknownFingerprint(
                    f"resolver returned schema {info.fingerprint.hex()} for {fp.hex()}", fp
                )
            self.register(info)
            return self._readers[fp]
        raise UnknownFingerprint(
            f"unknown schema fingerprint {fp.hex()}; this codec knows {len(self._writers)} "
            "(publish the writer's schemas, or register them with register_schema)",
            fp,
        )


def _bad_type(event: object) -> SchemaError:
    if not isinstance(event, Mapping):
        return SchemaError(f"event is {type(event).__name__}, want a dict")
    got = event.get("type")
    if got is None:
        return SchemaError("event has no 'type'; want one of " + ", ".join(EVENT_TYPES))
    return SchemaError(f"event type {got!r} is unknown; want one of " + ", ".join(EVENT_TYPES))


def _explain(event: Event, info: SchemaInfo, error: Exception) -> str:
    """A got/want message for an event that failed to encode (slow path only)."""
    where = f"{info.type_name} {event.get('event_id', '<no event_id>')}"
    fields = info.parsed["fields"]
    names = {f["name"] for f in fields}
    missing = [f["name"] for f in fields if f["name"] not in event and "default" not in f]
    if missing:
        return f"{where}: missing required field(s) {', '.join(missing)}"
    unknown = sorted(set(event) - names)
    if unknown:
        return f"{where}: unknown field(s) {', '.join(unknown)}; the schema has no such field"
    return f"{where}: a value does not match the schema: {error}"


# -- the compiled encoder: the SDK's hot path -----------------------------------------------
#
# fastavro's generic writer spends ~0.5 µs on every nullable union (it validates each branch)
# and ~12 µs on a ToolIntent. For the record shapes the envelope uses (string, bytes, int,
# long, boolean, enum, ["null", X], array/map of string) we generate one straight-line
# function per schema, which writes the same bytes in about a third of the time. fastavro
# stays the reference: whenever the compiled function refuses an event, the event is
# re-encoded by fastavro, which either accepts it (the same bytes) or explains the error.
# A property test holds the two to byte equality.

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


def compile_encoder(parsed: dict[str, Any]) -> Callable[[Event, bytes], bytes] | None:
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


# -- the process-wide default codec --------------------------------------------------------

_DEFAULT = Codec(packaged_schemas())

# Bound methods, not wrappers: one call less on the SDK's hot path.
encode_event: Callable[[Event], bytes] = _DEFAULT.encode
decode_event: Callable[[bytes], Event] = _DEFAULT.decode


def default_codec() -> Codec:
    """The codec behind encode_event/decode_event (to register schemas or set a resolver)."""
    return _DEFAULT


def register_schema(schema: SchemaInfo | str | Mapping[str, Any]) -> bytes:
    """Teach decode_event another writer schema (e.g. an older version); returns its fingerprint."""
    return _DEFAULT.register(schema)


def all_schemas() -> dict[str, dict[str, Any]]:
    """Type name -> fastavro-parsed current schema (timestamps as int). Do not mutate."""
    return {name: info.parsed for name, info in _DEFAULT.current().items()}


def schema_for(type_name: str) -> dict[str, Any]:
    """The fastavro-parsed current schema of one event type (timestamps as int)."""
    return schema_info(type_name).parsed


def schema_info(type_name: str) -> SchemaInfo:
    try:
        return _DEFAULT._current[type_name]
    except KeyError:
        raise SchemaError(
            f"event type {type_name!r} is unknown; want one of " + ", ".join(EVENT_TYPES)
        ) from None


def fingerprint_of(type_name: str) -> bytes:
    """The 8-byte fingerprint (as framed) of the current schema of one event type."""
    return schema_info(type_name).fingerprint


# -- CloudEvents binary-mode headers -------------------------------------------------------


def rfc3339_micros(epoch_us: int) -> str:
    """``2026-11-28T07:39:24.123456Z`` from epoch microseconds (UTC, always 6 digits)."""
    seconds, micros = divmod(int(epoch_us), 1_000_000)
    return _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(seconds)) + f".{micros:06d}Z"


def cloudevents_headers(event: Event) -> list[tuple[str, bytes]]:
    """CloudEvents 1.0 Kafka binary-mode headers for an event, in a fixed order."""
    try:
        return [
            ("ce_specversion", CE_SPECVERSION),
            ("ce_id", event["event_id"].encode()),
            ("ce_type", ce_type(event["type"]).encode()),
            ("ce_source", event["source"].encode()),
            ("ce_time", rfc3339_micros(event["time"]).encode()),
            ("ce_subject", event["workflow_id"].encode()),
            ("content-type", CONTENT_TYPE),
        ]
    except KeyError as e:
        raise SchemaError(f"event lacks {e.args[0]!r}, needed for the CloudEvents headers") from e
    except (AttributeError, TypeError, ValueError, OverflowError) as e:
        raise SchemaError(f"event envelope does not fit the CloudEvents headers: {e}") from e


# -- UUIDv7 (RFC 9562 §5.7), monotonic within the process ---------------------------------

_COUNTER_BITS = 42  # RFC 9562 §6.2 method 1: 12 bits rand_a + top 30 bits of rand_b
_COUNTER_MAX = (1 << _COUNTER_BITS) - 1
_uuid_lock = threading.Lock()
_uuid_state = [0, 0]  # last unix ms, last counter


def _reset_uuid_state() -> None:
    _uuid_state[0] = 0
    _uuid_state[1] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_uuid_state)


def new_event_id() -> str:
    """A UUIDv7: 48-bit unix ms, version 7, a 42-bit counter, variant 10, 32 random bits.

    Ids from one process strictly increase (as strings too): within one millisecond the
    counter increments; when the clock stands still or steps back the last timestamp is
    reused; if the counter would overflow the timestamp advances by one ms (RFC 9562 §6.2).
    """
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 41 for a seed, 32 for the tail
    now_ms = _time.time_ns() // 1_000_000
    with _uuid_lock:
        last_ms, counter = _uuid_state
        if now_ms > last_ms:
            counter = rand >> 39  # fresh 41-bit seed: leaves >= 2**41 increments of headroom
        else:
            now_ms = last_ms
            counter += 1
            if counter > _COUNTER_MAX:
                now_ms += 1
                counter = rand >> 39
        _uuid_state[0] = now_ms
        _uuid_state[1] = counter
    value = (
        (now_ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (counter >> 30) << 64
        | 0b10 << 62
        | (counter & 0x3FFF_FFFF) << 32
        | (rand & 0xFFFF_FFFF)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_unix_ms(event_id: str) -> int:
    """The millisecond timestamp of a UUIDv7 string."""
    return int(event_id.replace("-", "")[:12], 16)
