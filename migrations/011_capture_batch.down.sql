-- roomcast 011 down: capture_store as 010 left it (every transaction through capture_apply);
-- capture_store_set goes. Re-runnable (also after 010 down or 001 down removed them).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regnamespace('realtime') IS NULL THEN
        RETURN;
    END IF;
    DROP FUNCTION IF EXISTS realtime.capture_store_set(jsonb, bigint, bigint, pg_lsn);
    IF to_regprocedure('realtime.capture_store(text,jsonb)') IS NULL THEN
        RETURN;
    END IF;
    EXECUTE $def$
CREATE OR REPLACE FUNCTION realtime.capture_store(slot text, txns jsonb)
RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pos pg_lsn;
    t jsonb;
    lsn pg_lsn;
    n integer;
BEGIN
    INSERT INTO realtime.capture_position AS cp (slot) VALUES (capture_store.slot)
    ON CONFLICT ON CONSTRAINT capture_position_pkey DO NOTHING;
    -- The row lock serializes two stores for one slot (a holder that lost its lock still storing).
    SELECT cp.lsn INTO pos FROM realtime.capture_position cp WHERE cp.slot = capture_store.slot FOR UPDATE;
    FOR t IN SELECT jsonb_array_elements(txns) LOOP
        lsn := (t ->> 'lsn')::pg_lsn;
        CONTINUE WHEN lsn <= pos;
        IF jsonb_array_length(t -> 'c') > 0 THEN
            n := realtime.capture_apply(t -> 'c');
        END IF;
        pos := lsn;
    END LOOP;
    UPDATE realtime.capture_position cp SET lsn = pos, stored_at = now()
     WHERE cp.slot = capture_store.slot;
    RETURN pos;
END
$$;
    $def$;
END
$down$;

COMMIT;
