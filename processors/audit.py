"""Audit records: what the audit topic carries, framed so any Avro library can read it.

The frame is the one events use (``C3 01`` + CRC-64-AVRO fingerprint + body), with the
schema in ``schemas/AuditRecord.avsc``; a compliance tool needs that file and nothing of
Wakeline. The nested ``event`` field holds the events-topic record's value bytes untouched,
decodable with the event ``.avsc`` files.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from io import BytesIO
from typing import Any

import blake3
from fastavro import schemaless_writer

from wakeline.errors import SchemaError
from wakeline.schemas import MAGIC, SchemaInfo, rfc3339_micros
from wakeline.schemas.compiled import compile_decoder, compile_encoder, strict_decoder

from .settings import BuilderSettings

AUDIT_CE_TYPE = "dev.wakeline.AuditRecord.v1"
AUDIT_SOURCE = "wakeline/ledger-builder"

AUDIT_SCHEMA = SchemaInfo.from_json(
    (resources.files("wakeline.schemas") / "AuditRecord.avsc").read_text()
)
_HEADER = MAGIC + AUDIT_SCHEMA.fingerprint
_PARSED = AUDIT_SCHEMA.parsed
# the schemas package's straight-line encoder (~3x fastavro's generic writer) and decoders:
# the compiled one for the hot path, the strict one for the verdict on anything it refuses
_COMPILED = compile_encoder(_PARSED)
_COMPILED_DECODER = compile_decoder(_PARSED)
_STRICT_DECODER = strict_decoder(_PARSED)


def encode_audit(record: dict[str, Any]) -> bytes:
    if _COMPILED is not None:
        try:
            return _COMPILED(record, _HEADER)
        except Exception:  # refused: fastavro writes it or says why not
            pass
    buf = BytesIO()
    buf.write(_HEADER)
    try:
        schemaless_writer(buf, _PARSED, record, strict_allow_default=True)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as e:
        raise SchemaError(f"audit record does not match AuditRecord.avsc: {e}") from e
    return buf.getvalue()


def decode_audit(frame: bytes) -> dict[str, Any]:
    """The AuditRecord of an audit-topic frame; SchemaError unless it is exactly valid Avro."""
    if frame[: len(_HEADER)] != _HEADER:
        raise SchemaError(
            f"audit frame starts with {bytes(frame[:10]).hex()}, want {_HEADER.hex()}"
        )
    if _COMPILED_DECODER is not None:
        try:
            return _COMPILED_DECODER(frame, len(_HEADER))
        except Exception:  # refused: the strict reader gives the verdict and the reason
            pass
    try:
        return _STRICT_DECODER(bytes(frame), len(_HEADER))
    except Exception as e:  # InvalidAvro, with the field and the byte
        raise SchemaError(f"audit body does not decode: {e}") from e


#: what a derived record (audit, DLQ) may weigh by default (`BuilderSettings.max_record_bytes`)
DEFAULT_MAX_RECORD_BYTES: int = BuilderSettings.max_record_bytes
#: longest text kept in one field of a record that had to be shrunk
MAX_FIELD_CHARS = 1024
_TEXT_FIELDS = (
    "summary", "event_id", "event_type", "workflow_id", "run_id", "agent_id", "principal",
    "tenant", "tool", "status", "decode_error", "authorized_by",
)  # fmt: skip


def record_size(key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, Any]]) -> int:
    """Bytes a record puts against the broker's size limit (payload, not batch framing)."""
    n = len(key or b"") + len(value or b"") + 64
    for name, v in headers:
        n += len(name) + len(v or b"") + 8
    return n


def clip(text: str | None, limit: int = MAX_FIELD_CHARS) -> str | None:
    """`text` cut to `limit` characters, saying how much was cut."""
    if text is None or len(text) <= limit:
        return text
    return f"{text[: limit - 40]}… [{len(text) - limit + 40} characters cut]"


def clip_bytes(raw: bytes | None, limit: int = MAX_FIELD_CHARS) -> bytes | None:
    """Bytes up to `limit` kept as they are; longer ones replaced by their BLAKE3 hex."""
    if raw is None or len(raw) <= limit:
        return raw
    return b"blake3:" + blake3.blake3(raw).hexdigest().encode()


def fit_audit_record(
    record: dict[str, Any], key: bytes | None, max_bytes: int
) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    """(value, key, headers) of an audit record that fits `max_bytes`.

    Too large, the record loses the copy of the event bytes first (`event` null,
    `event_digest` their BLAKE3; the ledger leaf keeps them), then long texts are cut and a
    long key is replaced by its digest; each step is named in `warnings`. Raises
    SchemaError if even that does not fit (the caller dead-letters the record instead).
    """
    value = encode_audit(record)
    headers = audit_headers(record)
    if record_size(key, value, headers) <= max_bytes:
        return value, key, headers
    record = dict(record, warnings=list(record.get("warnings") or ()))
    event = record.get("event")
    if event is not None:
        record["event"] = None
        record["event_digest"] = blake3.blake3(event).digest()
        record["warnings"].append(
            f"event bytes left out: {len(event)} bytes would pass the {max_bytes}-byte record "
            "limit; event_digest is their BLAKE3, the ledger leaf holds them"
        )
    for name in _TEXT_FIELDS:
        cut = clip(record.get(name))
        if cut is not record.get(name):
            record[name] = cut
            record["warnings"].append(f"{name} cut to {MAX_FIELD_CHARS} characters")
    record["warnings"] = [clip(w) for w in record["warnings"][:20]]
    new_key = clip_bytes(key)
    if new_key is not key:
        record["warnings"].append(f"key of {len(key or b'')} bytes replaced by its BLAKE3")
    value = encode_audit(record)
    headers = audit_headers(record)
    size = record_size(new_key, value, headers)
    if size > max_bytes:
        raise SchemaError(f"audit record is {size} bytes even shrunk, over the {max_bytes} limit")
    return value, new_key, headers


def audit_headers(record: dict[str, Any]) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers; the id is the ledger position, unique per leaf."""
    return [
        *AUDIT_FIXED_HEADERS,
        ("ce_id", f"{record['topic']}/{record['partition']}/{record['leaf_index']}".encode()),
        ("ce_time", rfc3339_micros(record["ledgered_at"]).encode()),
        ("ce_subject", (clip(record.get("workflow_id")) or "").encode()),
    ]


AUDIT_FIXED_HEADERS = (
    ("ce_specversion", b"1.0"),
    ("ce_type", AUDIT_CE_TYPE.encode()),
    ("ce_source", AUDIT_SOURCE.encode()),
    ("content-type", b"application/avro"),
)


def key_text(key: bytes | None) -> str | None:
    if key is None:
        return None
    try:
        return key.decode()
    except UnicodeDecodeError:
        return None
