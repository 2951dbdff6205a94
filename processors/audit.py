"""Audit records: what the audit topic carries, framed so any Avro library can read it.

The frame is the one events use (``C3 01`` + CRC-64-AVRO fingerprint + body), with the
schema in ``schemas/AuditRecord.avsc``; a compliance tool needs that file and nothing of
Wakeline. The nested ``event`` field holds the events-topic record's value bytes untouched,
decodable with the event ``.avsc`` files.
"""

from __future__ import annotations

from importlib import resources
from io import BytesIO
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from wakeline.errors import SchemaError
from wakeline.schemas import MAGIC, SchemaInfo, rfc3339_micros

AUDIT_CE_TYPE = "dev.wakeline.AuditRecord.v1"
AUDIT_SOURCE = "wakeline/ledger-builder"

AUDIT_SCHEMA = SchemaInfo.from_json(
    (resources.files("wakeline.schemas") / "AuditRecord.avsc").read_text()
)
_HEADER = MAGIC + AUDIT_SCHEMA.fingerprint
_PARSED = AUDIT_SCHEMA.parsed
try:  # the schemas package's straight-line encoder: ~3x fastavro's generic writer
    from wakeline.schemas.compiled import compile_decoder, compile_encoder

    _COMPILED = compile_encoder(_PARSED)
    _COMPILED_DECODER = compile_decoder(_PARSED)
except ImportError:  # pragma: no cover - fastavro alone is correct, only slower
    _COMPILED = _COMPILED_DECODER = None


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
    if frame[: len(_HEADER)] != _HEADER:
        raise SchemaError(
            f"audit frame starts with {bytes(frame[:10]).hex()}, want {_HEADER.hex()}"
        )
    if _COMPILED_DECODER is not None:
        try:
            return _COMPILED_DECODER(frame, len(_HEADER))
        except Exception:  # refused: fastavro reads it or says why not
            pass
    buf = BytesIO(frame)
    buf.seek(len(_HEADER))
    try:
        return schemaless_reader(buf, _PARSED, None)
    except Exception as e:  # garbage bodies raise many kinds
        raise SchemaError(f"audit body does not decode: {type(e).__name__}: {e}") from e


def audit_headers(record: dict[str, Any]) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers; the id is the ledger position, unique per leaf."""
    return [
        *AUDIT_FIXED_HEADERS,
        ("ce_id", f"{record['topic']}/{record['partition']}/{record['leaf_index']}".encode()),
        ("ce_time", rfc3339_micros(record["ledgered_at"]).encode()),
        ("ce_subject", (record.get("workflow_id") or "").encode()),
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
