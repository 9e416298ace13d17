-- roomcast 008 down: only realtime.prune moves the recovery horizon again (as before 008).
-- Re-runnable (also after 001 down removed the schema).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regclass('realtime.events') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS events_deleted ON realtime.events;
        DROP TRIGGER IF EXISTS events_truncated ON realtime.events;
    END IF;
END
$down$;
DROP FUNCTION IF EXISTS realtime.events_deleted();

COMMIT;
