-- roomcast 010 down: back to triggers only. The realtime triggers disabled by logical capture
-- are enabled again, 007's attach_triggers and watch come back, the capture functions, tables
-- and the publication go. A replication slot is not dropped here (see docs/database.md,
-- "Removing a slot"). Re-runnable (also after 001 down removed the schema).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regnamespace('realtime') IS NULL THEN
        RETURN;
    END IF;
    IF to_regprocedure('realtime.capture_sync(text,text)') IS NOT NULL THEN
        PERFORM realtime.capture_sync('triggers');
    END IF;
    IF to_regprocedure('realtime.attach_triggers_007()') IS NOT NULL THEN
        DROP FUNCTION IF EXISTS realtime.attach_triggers();
        ALTER FUNCTION realtime.attach_triggers_007() RENAME TO attach_triggers;
    END IF;
    DROP FUNCTION IF EXISTS realtime.capture_gap(text, pg_lsn);
    DROP FUNCTION IF EXISTS realtime.capture_store(text, jsonb);
    DROP FUNCTION IF EXISTS realtime.capture_apply(jsonb);
    DROP FUNCTION IF EXISTS realtime.capture_watch_rooms(regclass, text, text[], jsonb[]);
    DROP FUNCTION IF EXISTS realtime.capture_row(regclass, jsonb);
    DROP FUNCTION IF EXISTS realtime.capture_sync(text, text);
    DROP FUNCTION IF EXISTS realtime.capture_tables();
    DROP TABLE IF EXISTS realtime.capture_position;
    DROP TABLE IF EXISTS realtime.capture_state;
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'realtime_capture') THEN
        DROP PUBLICATION realtime_capture;
    END IF;
END
$down$;

-- 007's realtime.watch, without the capture step (re-created only while the schema exists).
DO $down$
BEGIN
    IF to_regprocedure('realtime.watch(regclass,text,text[])') IS NOT NULL THEN
        EXECUTE $fn$
CREATE OR REPLACE FUNCTION realtime.watch(tbl regclass, name text, extra_rooms text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM realtime.watch_attach(tbl, name, extra_rooms);
    INSERT INTO realtime.watched AS w (schema_name, table_name, name, extra_rooms)
    SELECT n.nspname, c.relname, watch.name, coalesce(watch.extra_rooms, '{}')
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
    ON CONFLICT ON CONSTRAINT watched_pkey
    DO UPDATE SET name = EXCLUDED.name, extra_rooms = EXCLUDED.extra_rooms, registered_at = now();
END
$$
        $fn$;
        REVOKE ALL ON FUNCTION realtime.watch(regclass, text, text[]) FROM PUBLIC;
    END IF;
END
$down$;

COMMIT;
