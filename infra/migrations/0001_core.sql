-- Core: the append-only guard every ledger table uses (docs/ledger-format.md).
-- A ledger table gets:  CREATE TRIGGER ... BEFORE UPDATE OR DELETE ... EXECUTE FUNCTION wakeline_refuse_change();
-- plus a statement-level BEFORE TRUNCATE trigger with the same function.
CREATE OR REPLACE FUNCTION wakeline_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'wakeline: % on append-only table % is refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
