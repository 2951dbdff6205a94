"""Avro schemas (*.avsc) and the codec that frames them: the wire contract
(schemas/README.md).

See schemas/README.md for the frame layout other languages implement, and
docs/contracts.md for this API.
"""

from __future__ import annotations

from wakeline.schemas.codec import (
    CONTENT_TYPE,
    ENVELOPE_FIELDS,
    EVENT_TYPES,
    FINGERPRINT_SIZE,
    HEADER_SIZE,
    MAGIC,
    NAMESPACE,
    Codec,
    Event,
    MalformedFrame,
    SchemaInfo,
    UnknownFingerprint,
    all_schemas,
    ce_type,
    cloudevents_headers,
    decode_event,
    default_codec,
    encode_event,
    fingerprint_bytes,
    fingerprint_of,
    packaged_avsc,
    packaged_schemas,
    register_schema,
    rfc3339_micros,
    schema_for,
    schema_info,
)
from wakeline.schemas.event_ids import new_event_id, uuid7_unix_ms

__all__ = [
    "CONTENT_TYPE",
    "ENVELOPE_FIELDS",
    "EVENT_TYPES",
    "FINGERPRINT_SIZE",
    "HEADER_SIZE",
    "MAGIC",
    "NAMESPACE",
    "Codec",
    "Event",
    "MalformedFrame",
    "SchemaInfo",
    "UnknownFingerprint",
    "all_schemas",
    "ce_type",
    "cloudevents_headers",
    "decode_event",
    "default_codec",
    "encode_event",
    "fingerprint_bytes",
    "fingerprint_of",
    "new_event_id",
    "packaged_avsc",
    "packaged_schemas",
    "register_schema",
    "rfc3339_micros",
    "schema_for",
    "schema_info",
    "uuid7_unix_ms",
]
