-- Ledger tables (docs/ledger-format.md). Append-only: the triggers below refuse
-- UPDATE, DELETE and TRUNCATE with wakeline_refuse_change() from 0001_core.sql.

CREATE TABLE ledger_segments (
    partition        integer     NOT NULL CHECK (partition >= 0),
    segment_number   bigint      NOT NULL CHECK (segment_number >= 0),
    first_leaf_index bigint      NOT NULL,
    leaf_count       bigint      NOT NULL CHECK (leaf_count >= 1),
    first_offset     bigint      NOT NULL,
    last_offset      bigint      NOT NULL,
    tree_size        bigint      NOT NULL,
    header           bytea       NOT NULL CHECK (length(header) = 166),
    header_hash      bytea       NOT NULL,
    -- the tree's frontier after this segment (concatenated 32-byte node hashes), so a
    -- builder resumes from PostgreSQL without rehashing the partition
    frontier         bytea       NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (partition, segment_number),
    UNIQUE (partition, tree_size)
);

CREATE TABLE ledger_entries (
    partition      integer NOT NULL,
    leaf_index     bigint  NOT NULL,
    kafka_offset   bigint  NOT NULL,
    segment_number bigint  NOT NULL,
    leaf_hash      bytea   NOT NULL,
    leaf           bytea   NOT NULL,
    event_id       text,
    workflow_id    text,
    PRIMARY KEY (partition, leaf_index),
    UNIQUE (partition, kafka_offset),
    FOREIGN KEY (partition, segment_number) REFERENCES ledger_segments (partition, segment_number)
);
CREATE INDEX ledger_entries_event_id ON ledger_entries (event_id);
CREATE INDEX ledger_entries_workflow_id ON ledger_entries (workflow_id, partition, leaf_index);

CREATE TABLE ledger_checkpoints (
    seq             bigint      PRIMARY KEY CHECK (seq >= 0),
    checkpoint_hash bytea       NOT NULL UNIQUE,
    note            bytea       NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TRIGGER ledger_segments_append_only BEFORE UPDATE OR DELETE ON ledger_segments
    FOR EACH ROW EXECUTE FUNCTION wakeline_refuse_change();
CREATE TRIGGER ledger_segments_no_truncate BEFORE TRUNCATE ON ledger_segments
    FOR EACH STATEMENT EXECUTE FUNCTION wakeline_refuse_change();
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION wakeline_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION wakeline_refuse_change();
CREATE TRIGGER ledger_checkpoints_append_only BEFORE UPDATE OR DELETE ON ledger_checkpoints
    FOR EACH ROW EXECUTE FUNCTION wakeline_refuse_change();
CREATE TRIGGER ledger_checkpoints_no_truncate BEFORE TRUNCATE ON ledger_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION wakeline_refuse_change();
