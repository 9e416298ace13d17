-- roomcast 006: the rooms a DELETE of an order or a delivery reaches can no longer be chosen by
-- the session that deletes it. Re-runnable: psql -v ON_ERROR_STOP=1 -f 006_sealed_stash.sql
--
-- The order and delivery triggers publish at commit (deferred), when a DELETE has already
-- cascaded to product_order (or nulled the orders' id_delivery). So a BEFORE DELETE trigger
-- (realtime.stash_rooms) records the rooms those rows gave, and the commit-time trigger
-- (realtime.stashed_rooms) adds them. 002 kept them in a transaction-local setting,
-- realtime.stash_<kind>_<id>, which every session may write: the application's role, which
-- may write "order" but not publish, could DELETE an order, set_config that setting to rooms
-- of its choice (another seller's, user-<id>; since 005 any string, trigger rooms skipping the
-- room check) and COMMIT, and the real order_deleted event, with the order's data, went
-- there. Now the rooms pass through realtime.stash, a table with no privileges for anyone but
-- its owner (the role that runs the migrations and owns the trigger functions): the SECURITY
-- DEFINER triggers are its only writers and readers. The setting is neither written nor read
-- any more; the events are the same as before.
--
-- Why a table, and this one:
--   * keyed by the transaction (pg_current_xact_id(), the top-level one also inside savepoints)
--     and kind + id, so concurrent transactions never meet in it; a rolled-back savepoint or
--     transaction takes its rows with it, as it took the setting;
--   * UNLOGGED: a row lives for one transaction, so no WAL, and a crash (which ends every
--     transaction) may empty it; publications FOR ALL TABLES skip it;
--   * the commit-time trigger deletes the row it reads, so the table holds only rows of open
--     transactions. A row outlives its transaction only when its DELETE never reached the
--     commit-time trigger (another BEFORE trigger skipped the row, or the commit-time trigger
--     was disabled); realtime.prune, which roomcast calls every minute, removes those;
--   * read without an MVCC index scan (see stashed_rooms), so SERIALIZABLE transactions that
--     delete orders concurrently do not fail each other over it;
--   * not a temporary table: the session could create pg_temp.<same name> first and so own the
--     table the trigger writes to (the trigger would have to check the owner on every use), a
--     transaction that touched a temporary table cannot PREPARE (two-phase commit), and every
--     session would add and remove catalog rows.
-- Only the DELETE path changes: an INSERT or UPDATE never reads or writes the table. It got
-- cheaper: each id deleted left its setting in the session until the session ended, and each
-- new setting cost more than the last (measured in one session deleting 12 000 orders, one
-- per transaction: the last 3 000 ran at 171/s with 005, at 2 900/s with this file).
--
-- The other session setting the triggers read, 005's column cache realtime.columns_<table oid>,
-- decides only the order in which an UPDATE's changed columns are listed in meta.changed: the
-- rooms, data, meta.old and the set of changed columns come from the row versions themselves
-- (a forged list that misses a column of the row is ignored and read again from the catalog).
-- A forged list could however repeat a column; emit_row now lists each column once. So a
-- session can at most reorder meta.changed of its own events, which is left as it is: checking
-- the list against the catalog on every UPDATE is the cost 005 removed.
BEGIN;
SET LOCAL client_min_messages = warning;

CREATE UNLOGGED TABLE IF NOT EXISTS realtime.stash (
    xid xid8 NOT NULL,
    kind text NOT NULL,
    id bigint NOT NULL,
    rooms text[] NOT NULL,
    -- BEFORE DELETE triggers not yet matched by a commit-time one (> 1 only when the same row,
    -- inserted again with the same id, is deleted again in one transaction)
    pending integer NOT NULL,
    CONSTRAINT stash_pkey PRIMARY KEY (xid, kind, id)
);
COMMENT ON TABLE realtime.stash IS
    'roomcast: rooms of deleted orders/deliveries, from their BEFORE DELETE trigger to the commit-time one (see 006_sealed_stash.sql)';
REVOKE ALL ON realtime.stash FROM PUBLIC;

-- Called by the BEFORE DELETE triggers (SECURITY DEFINER, so as the owner). Another DELETE of
-- the same id in the same transaction replaces the rooms, as the setting was replaced.
CREATE OR REPLACE FUNCTION realtime.stash_rooms(kind text, id bigint, rooms text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO realtime.stash AS s (xid, kind, id, rooms, pending)
    VALUES (pg_current_xact_id(), stash_rooms.kind, stash_rooms.id,
            coalesce(stash_rooms.rooms, '{}'), 1)
    ON CONFLICT ON CONSTRAINT stash_pkey DO UPDATE SET rooms = EXCLUDED.rooms, pending = s.pending + 1;
END
$$;
REVOKE ALL ON FUNCTION realtime.stash_rooms(text, bigint, text[]) FROM PUBLIC;

-- Called by the commit-time triggers for a DELETE: the stashed rooms ('{}' when none); the row
-- goes with the last DELETE that stashed it. VOLATILE now (it writes). It finds the row with an
-- upsert, not with SELECT/DELETE ... WHERE: an upsert's key lookup reads no MVCC snapshot, so
-- under SERIALIZABLE it takes no predicate lock (with a DELETE ... WHERE, concurrent
-- SERIALIZABLE transactions deleting orders failed each other now and then with
-- serialization errors over the shared index page); the DELETE by ctid reads only this
-- transaction's own row, which takes none either.
CREATE OR REPLACE FUNCTION realtime.stashed_rooms(kind text, id bigint)
RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text[];
    left_over integer;
    found_at tid;
BEGIN
    INSERT INTO realtime.stash AS s (xid, kind, id, rooms, pending)
    VALUES (pg_current_xact_id(), stashed_rooms.kind, stashed_rooms.id, '{}', 0)
    ON CONFLICT ON CONSTRAINT stash_pkey DO UPDATE SET pending = s.pending - 1
    RETURNING s.rooms, s.pending, s.ctid INTO r, left_over, found_at;
    IF left_over <= 0 THEN
        DELETE FROM realtime.stash WHERE ctid = found_at;
    END IF;
    RETURN r;
END
$$;
REVOKE ALL ON FUNCTION realtime.stashed_rooms(text, bigint) FROM PUBLIC;

-- As in 001, plus: rows of realtime.stash whose transaction has ended (see the top of this file).
CREATE OR REPLACE FUNCTION realtime.prune(older_than interval)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    top bigint;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'realtime.prune: older_than must be a non-negative interval'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH gone AS (
        DELETE FROM realtime.events WHERE created_at < now() - older_than RETURNING id
    )
    SELECT count(*), max(id) INTO n, top FROM gone;
    IF top IS NOT NULL THEN
        UPDATE realtime.outbox_state
           SET pruned_through = greatest(pruned_through, top), pruned_at = now();
    END IF;
    -- Stash rows of transactions that ended without their commit-time trigger (see the top of
    -- this file). Every transaction below the snapshot's xmin has ended; the caller's own rows,
    -- should it have deleted an order before calling, are kept.
    DELETE FROM realtime.stash WHERE xid < pg_snapshot_xmin(pg_current_snapshot());
    RETURN n;
END
$$;
REVOKE ALL ON FUNCTION realtime.prune(interval) FROM PUBLIC;

-- As in 005, except that a column is listed in meta.changed once even if the session's column
-- cache (a setting the session can write) names it twice.
CREATE OR REPLACE FUNCTION realtime.emit_row(name text, op text, tbl text, relid oid,
                                             rooms text[], o jsonb, n jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    cols text[];
    c text;
    changed text[] := '{}';
    old_values jsonb := '{}';
BEGIN
    IF op = 'UPDATE' THEN
        IF o = n THEN
            RETURN NULL;
        END IF;
        -- A setting first defined in a transaction that rolled back reads '' afterwards.
        cols := nullif(current_setting('realtime.columns_' || relid, true), '')::text[];
        IF cols IS NULL OR n - cols <> '{}'::jsonb THEN
            cols := ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                           WHERE a.attrelid = relid AND a.attnum > 0 AND NOT a.attisdropped
                           ORDER BY a.attnum);
            c := set_config('realtime.columns_' || relid, cols::text, false);
        END IF;
        FOREACH c IN ARRAY cols LOOP
            IF (o -> c) IS DISTINCT FROM (n -> c) AND NOT old_values ? c THEN
                changed := changed || c;
                old_values := old_values || jsonb_build_object(c, o -> c);
            END IF;
        END LOOP;
        RETURN realtime.append(name || '_updated', rooms, n,
                               jsonb_build_object('source', 'db', 'table', tbl, 'op', op,
                                                  'changed', changed, 'old', old_values));
    ELSIF op = 'INSERT' THEN
        RETURN realtime.append(name || '_created', rooms, n,
                               jsonb_build_object('source', 'db', 'table', tbl, 'op', op));
    ELSIF op = 'DELETE' THEN
        RETURN realtime.append(name || '_deleted', rooms, o,
                               jsonb_build_object('source', 'db', 'table', tbl, 'op', op));
    END IF;
    RAISE EXCEPTION 'realtime.emit_row: unsupported op %', op;
END
$$;
REVOKE ALL ON FUNCTION realtime.emit_row(text, text, text, oid, text[], jsonb, jsonb) FROM PUBLIC;

COMMIT;
