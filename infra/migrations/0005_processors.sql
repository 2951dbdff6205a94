-- Processors: which ledger segments the builder has published to the ledger topic (with
-- their audit and DLQ records). A row is written only after the broker acknowledged
-- everything for the segment; on resume the builder republishes stored segments that
-- have no row yet. Append-only like the ledger tables.
CREATE TABLE IF NOT EXISTS processor_publications (
    ledger_topic   text        NOT NULL,
    partition      integer     NOT NULL,
    segment_number bigint      NOT NULL,
    published_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (ledger_topic, partition, segment_number)
);

CREATE TRIGGER processor_publications_append_only
    BEFORE UPDATE OR DELETE ON processor_publications
    FOR EACH ROW EXECUTE FUNCTION wakeline_refuse_change();
