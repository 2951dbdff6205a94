-- Schema registry (schemas/README.md): every Avro writer schema ever published, by the 8-byte
-- CRC-64-AVRO fingerprint that single-object-encoded frames carry (little-endian, as framed).
-- Any consumer, in any language, resolves a frame's fingerprint here (or on the compacted
-- <prefix>schemas topic). Rows are immutable: a fingerprint names one schema forever.
CREATE TABLE IF NOT EXISTS schemas (
    fingerprint    bytea       PRIMARY KEY CHECK (octet_length(fingerprint) = 8),
    type_name      text        NOT NULL,  -- the record's simple name, e.g. ToolIntent
    full_name      text        NOT NULL,  -- with namespace, e.g. dev.wakeline.v1.ToolIntent
    canonical_form text        NOT NULL,  -- Avro parsing canonical form; its CRC is the key
    schema_json    text        NOT NULL,  -- the full schema (docs, defaults, logical types)
    first_seen     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS schemas_by_type ON schemas (type_name, first_seen);

CREATE TRIGGER schemas_append_only
    BEFORE UPDATE OR DELETE ON schemas
    FOR EACH ROW EXECUTE FUNCTION wakeline_refuse_change();

CREATE TRIGGER schemas_no_truncate
    BEFORE TRUNCATE ON schemas
    FOR EACH STATEMENT EXECUTE FUNCTION wakeline_refuse_change();
