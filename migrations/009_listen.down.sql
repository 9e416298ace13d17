-- roomcast 009 down: roomcast no longer listens on application channels nor runs live room
-- queries. Re-runnable (also after 001 down removed the schema).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regnamespace('realtime') IS NOT NULL THEN
        DROP FUNCTION IF EXISTS realtime.listen(text, text, text);
        DROP FUNCTION IF EXISTS realtime.unlisten(text);
        DROP FUNCTION IF EXISTS realtime.live_room(text, text, interval, text);
        DROP FUNCTION IF EXISTS realtime.drop_live_room(text);
        DROP TABLE IF EXISTS realtime.listens;
        DROP TABLE IF EXISTS realtime.live_rooms;
        PERFORM pg_notify('roomcast_config', 'listens');
    END IF;
END
$down$;

COMMIT;
