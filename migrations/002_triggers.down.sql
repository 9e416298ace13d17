-- roomcast 002 down: removes the publishing triggers (marketplace and realtime.watch ones, which
-- CASCADE drops with their functions) and the helpers of 002_triggers.sql. Re-runnable.
BEGIN;
SET LOCAL client_min_messages = warning;
SET LOCAL lock_timeout = '30s';
DROP FUNCTION IF EXISTS realtime.unwatch(regclass);
DROP FUNCTION IF EXISTS realtime.watch(regclass, text, text[]);
DROP FUNCTION IF EXISTS realtime.watch_trigger() CASCADE;
DROP FUNCTION IF EXISTS realtime.attach_marketplace();
DROP FUNCTION IF EXISTS realtime.detach_marketplace();
DROP FUNCTION IF EXISTS realtime.order_trigger() CASCADE;
DROP FUNCTION IF EXISTS realtime.order_stash_trigger() CASCADE;
DROP FUNCTION IF EXISTS realtime.product_trigger() CASCADE;
DROP FUNCTION IF EXISTS realtime.delivery_trigger() CASCADE;
DROP FUNCTION IF EXISTS realtime.delivery_stash_trigger() CASCADE;
DROP FUNCTION IF EXISTS realtime.delivery_order_rooms(bigint);
DROP FUNCTION IF EXISTS realtime.order_seller_rooms(bigint);
DROP FUNCTION IF EXISTS realtime.stashed_rooms(text, bigint);
DROP FUNCTION IF EXISTS realtime.stash_rooms(text, bigint, text[]);
DROP FUNCTION IF EXISTS realtime.emit_change(text, text, text, text[], json, json);
DROP FUNCTION IF EXISTS realtime.rooms_union(text[], text[]);
COMMIT;
