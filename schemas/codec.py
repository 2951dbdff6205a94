"""The wire codec: Avro single-object encoding of Wakeline events (schemas/README.md).

A frame is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of the writer schema's parsing
canonical form (little-endian, as the Avro spec and Java's ``SchemaNormalization`` give it) +
the Avro binary body. Events are plain dicts whose ``type`` names the record.

Timestamps (``time``, ``expires_at``) are ``long`` with logicalType ``timestamp-micros`` in
the .avsc files. The logical type changes neither the bytes nor the fingerprint (the parsing
canonical form drops it), so the codec parses the schemas with it stripped: events carry
plain ``int`` epoch microseconds both ways and fastavro does no datetime conversion per call.

Decoding is exactly as strict as the Avro specification: a body is accepted only if it is
valid Avro binary for its writer schema (schemas/compiled.py lists the rules; fastavro alone
accepts negative enum and union indexes, overlong varints, booleans other than 0/1 and lying
block sizes, see docs/decisions.md). Writer schemas that need resolution to the current
reader schema are first validated strictly, then resolved by fastavro.

Pure: fastavro and the standard library only; never Kafka, faust or click.
"""

from __future__ import annotations

import copy
import json
import re
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
from wakeline.schemas.compiled import (
    Decoder,
    InvalidAvro,
    compile_decoder,
    compile_encoder,
    strict_decoder,
)

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
    "WorkflowSnapshot",
    "Grant",
    "GrantRevoked",
)

#: the envelope every record starts with, in this order (docs/contracts.md)
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
# (writer parsed, reader parsed or None when identical, compiled decoder or None, strict decoder)
_Reader = tuple[dict[str, Any], "dict[str, Any] | None", "Decoder | None", Decoder]


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


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_names(node: Any) -> None:
    """Every name, namespace, field name and enum symbol must be what the Avro spec allows
    (`[A-Za-z_][A-Za-z0-9_]*`, dot-separated for full names): fastavro takes any string,
    and a schema read from a topic must not smuggle a NUL or worse into the registry."""
    if isinstance(node, list):
        for item in node:
            _check_names(item)
        return
    if not isinstance(node, dict):
        return
    for key in ("name", "namespace"):
        value = node.get(key)
        if value is None or (key == "namespace" and value == ""):
            continue
        parts = value.split(".") if isinstance(value, str) else [value]
        if not all(isinstance(p, str) and _NAME.fullmatch(p) for p in parts):
            raise SchemaError(f"schema {key} {value!r} is not a valid Avro name")
    for symbol in node.get("symbols", ()) if node.get("type") == "enum" else ():
        if not isinstance(symbol, str) or not _NAME.fullmatch(symbol):
            raise SchemaError(f"enum symbol {symbol!r} is not a valid Avro name")
    for key in ("type", "fields", "items", "values"):
        if key in node and not isinstance(node[key], str):
            _check_names(node[key])


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
            _check_names(raw)
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
        # fingerprint -> (writer parsed, reader parsed or None when identical, compiled
        # decoder of the writer schema when its shape compiles, strict decoder of the writer
        # schema: the verdict on every body the compiled one refuses)
        self._readers: dict[bytes, _Reader] = {}
        # type name -> (header bytes, parsed schema, compiled encoder or None): the hot path
        self._encoders = {
            name: (MAGIC + info.fingerprint, info.parsed, compile_encoder(info.parsed))
            for name, info in self._current.items()
        }
        # type name -> strict decoder: what fastavro writes is checked with it
        self._checks = {name: strict_decoder(info.parsed) for name, info in self._current.items()}
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
                compile_decoder(info.parsed),
                strict_decoder(info.parsed),
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
        frame = buf.getvalue()
        try:  # fastavro writes some values Avro cannot hold (an int of 2**40 in 6 bytes)
            self._checks[info.type_name](frame, HEADER_SIZE)
        except InvalidAvro as e:
            where = f"{info.type_name} {event.get('event_id', '<no event_id>')}"
            raise SchemaError(f"{where}: a value does not fit the schema: {e}") from None
        return frame

    def decode(self, frame: bytes | bytearray | memoryview) -> Event:
        """The event dict of a frame, resolved to the current schema of its type.

        Raises MalformedFrame (short, wrong magic, a body that is not valid Avro for its
        writer schema, trailing bytes: the message says what, where and at which byte) or
        UnknownFingerprint (writer schema unknown and not resolvable).
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
        reader = self._readers.get(fp)
        if reader is None:
            reader = self._resolve(fp)
        data = frame if type(frame) is bytes else bytes(frame)
        if reader[2] is not None:
            try:
                event = reader[2](data, HEADER_SIZE)
            except Exception:  # the strict decoder below gives the verdict and the message
                pass
            else:
                return event if reader[1] is None else self._resolve_valid(data, fp, reader)
        return self._decode_strictly(data, fp, reader)

    def _decode_strictly(self, frame: bytes, fp: bytes, reader: _Reader) -> Event:
        try:
            event = reader[3](frame, HEADER_SIZE)
        except InvalidAvro as e:
            name = self._writers[fp].type_name
            raise MalformedFrame(
                f"{name} frame of {len(frame)} bytes (schema {fp.hex()}) is not valid Avro: {e}"
            ) from None
        return event if reader[1] is None else self._resolve_valid(frame, fp, reader)

    def _resolve_valid(self, frame: bytes, fp: bytes, reader: _Reader) -> Event:
        """A body valid for its writer schema, resolved by fastavro to the current reader."""
        buf = BytesIO(frame)
        buf.seek(HEADER_SIZE)
        try:
            return schemaless_reader(buf, reader[0], reader[1])
        except Exception as e:  # e.g. a writer's union branch the reader has no match for
            raise MalformedFrame(
                f"frame with schema {fp.hex()} is valid Avro but does not resolve to the "
                f"current {self._writers[fp].type_name}: {type(e).__name__}: {e}"
            ) from e

    def _resolve(self, fp: bytes) -> _Reader:
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


#: (epoch second, its "YYYY-MM-DDTHH:MM:SS" text): events come many per second
_last_second: tuple[int, str] = (0, "1970-01-01T00:00:00")


def rfc3339_micros(epoch_us: int) -> str:
    """``2026-11-28T07:39:24.123456Z`` from epoch microseconds (UTC, always 6 digits)."""
    global _last_second
    seconds, micros = divmod(int(epoch_us), 1_000_000)
    cached, text = _last_second  # one tuple: threads never see a torn pair
    if cached != seconds:
        text = _time.strftime("%Y-%m-%dT%H:%M:%S", _time.gmtime(seconds))
        _last_second = (seconds, text)
    return f"{text}.{micros:06d}Z"


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
