-- roomcast 003 down: removes the room policy realtime.can_join (default or a DBA's replacement)
-- and its helper. Re-runnable.
BEGIN;
SET LOCAL client_min_messages = warning;
DROP FUNCTION IF EXISTS realtime.can_join(jsonb, text);
DROP FUNCTION IF EXISTS realtime.order_member(bigint, text, text[], text[]);
COMMIT;
