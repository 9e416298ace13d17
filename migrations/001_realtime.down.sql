-- roomcast 001 down: removes schema `realtime` and everything in it (outbox, functions, and the
-- triggers that use them, through CASCADE). The marketplace tables are left untouched.
BEGIN;
SET LOCAL client_min_messages = warning;
DROP SCHEMA IF EXISTS realtime CASCADE;
COMMIT;
