-- Lookup keys of ledger entries are bytes, never text: any byte sequence a producer puts in a
-- record (a NUL, invalid UTF-8) must be storable, or one record would stop the ledger.
--   event_id    the UTF-8 bytes of the event id read from the record's Avro body (its first
--               field), NULL when the body has none; never taken from the ce_id header
--   workflow_id the record's Kafka key, byte for byte (events are keyed by workflow id)
-- Keys longer than 1024 bytes are not indexed (NULL): the leaf still holds them exactly.
-- ALTER TABLE rewrites the rows without firing the append-only row triggers.
DO $$
BEGIN
    IF (SELECT data_type FROM information_schema.columns
        WHERE table_name = 'ledger_entries' AND column_name = 'event_id'
          AND table_schema = current_schema()) = 'text' THEN
        ALTER TABLE ledger_entries
            ALTER COLUMN event_id TYPE bytea USING convert_to(event_id, 'UTF8'),
            ALTER COLUMN workflow_id TYPE bytea USING convert_to(workflow_id, 'UTF8');
        ALTER TABLE ledger_entries
            ADD CONSTRAINT ledger_entries_event_id_size CHECK (length(event_id) <= 1024),
            ADD CONSTRAINT ledger_entries_workflow_id_size CHECK (length(workflow_id) <= 1024);
    END IF;
END
$$;
