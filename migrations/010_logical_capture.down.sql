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
    IF to_regprocedure('realtime.watch_007(regclass,text,text[])') IS NOT NULL THEN
        DROP FUNCTION IF EXISTS realtime.watch(regclass, text, text[]);
        ALTER FUNCTION realtime.watch_007(regclass, text, text[]) RENAME TO watch;
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

COMMIT;
