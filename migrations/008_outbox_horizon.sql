-- roomcast 008: every way rows leave realtime.events moves the recovery horizon, not only
-- realtime.prune. Re-runnable: psql -v ON_ERROR_STOP=1 -f 008_outbox_horizon.sql
--
-- Why: a client resuming with `since` is told recovered:true when since >=
-- realtime.outbox_state.pruned_through. Only prune() raised pruned_through, so rows removed
-- any other way (a DBA's DELETE, a TRUNCATE) left it where it was, and a client resuming across
-- them was told it had missed nothing while it had. Now a statement-level AFTER DELETE trigger
-- reads the deleted rows from its transition table and raises pruned_through to the highest
-- deleted id, and a BEFORE TRUNCATE trigger raises it to the highest id in the table. Both run
-- in the deleting transaction (rolled back with it) as the function's owner (SECURITY
-- DEFINER), whoever deletes. prune() keeps its own update; the trigger's is the same value.
--
-- Not covered, because PostgreSQL fires no trigger for them: rows removed with triggers
-- disabled (session_replication_role = replica, ALTER TABLE ... DISABLE TRIGGER), and, should
-- the table ever be partitioned, DETACH or DROP of a partition. Whoever does that raises the
-- horizon by hand:
--   UPDATE realtime.outbox_state SET pruned_through = greatest(pruned_through, <max id gone>);
BEGIN;
SET LOCAL client_min_messages = warning;

CREATE OR REPLACE FUNCTION realtime.events_deleted()
RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    top bigint;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        SELECT max(id) INTO top FROM realtime.events;
    ELSE
        SELECT max(id) INTO top FROM gone;
    END IF;
    IF top IS NOT NULL THEN
        UPDATE realtime.outbox_state
           SET pruned_through = greatest(pruned_through, top), pruned_at = now()
         WHERE pruned_through < top;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION realtime.events_deleted() FROM PUBLIC;

DROP TRIGGER IF EXISTS events_deleted ON realtime.events;
CREATE TRIGGER events_deleted
    AFTER DELETE ON realtime.events
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION realtime.events_deleted();

DROP TRIGGER IF EXISTS events_truncated ON realtime.events;
CREATE TRIGGER events_truncated
    BEFORE TRUNCATE ON realtime.events
    FOR EACH STATEMENT EXECUTE FUNCTION realtime.events_deleted();

COMMIT;
