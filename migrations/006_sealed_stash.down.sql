-- roomcast 006 down: the stash back in session settings (stash_rooms/stashed_rooms as 002
-- defined them), prune as 001 and emit_row as 005 defined them, where they still exist, and
-- without realtime.stash. Re-runnable (also after 001 down removed the schema).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regprocedure('realtime.stash_rooms(text,bigint,text[])') IS NOT NULL THEN
        EXECUTE $fn$
CREATE OR REPLACE FUNCTION realtime.stash_rooms(kind text, id bigint, rooms text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('realtime.stash_' || kind || '_' || id, array_to_string(rooms, ','), true);
END
$$
        $fn$;
        GRANT EXECUTE ON FUNCTION realtime.stash_rooms(text, bigint, text[]) TO PUBLIC;
    END IF;
    IF to_regprocedure('realtime.stashed_rooms(text,bigint)') IS NOT NULL THEN
        EXECUTE $fn$
CREATE OR REPLACE FUNCTION realtime.stashed_rooms(kind text, id bigint)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- A setting once defined in the session reads '' after its transaction ends.
    RETURN coalesce(string_to_array(nullif(current_setting('realtime.stash_' || kind || '_' || id,
                                                           true), ''), ','), '{}');
END
$$
        $fn$;
        GRANT EXECUTE ON FUNCTION realtime.stashed_rooms(text, bigint) TO PUBLIC;
    END IF;
    IF to_regprocedure('realtime.prune(interval)') IS NOT NULL THEN
        EXECUTE $fn$
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
    RETURN n;
END
$$
        $fn$;
        REVOKE ALL ON FUNCTION realtime.prune(interval) FROM PUBLIC;
    END IF;
    IF to_regprocedure('realtime.emit_row(text,text,text,oid,text[],jsonb,jsonb)') IS NOT NULL THEN
        EXECUTE $fn$
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
            IF (o -> c) IS DISTINCT FROM (n -> c) THEN
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
$$
        $fn$;
        REVOKE ALL ON FUNCTION realtime.emit_row(text, text, text, oid, text[], jsonb, jsonb) FROM PUBLIC;
    END IF;
END
$down$;

DROP TABLE IF EXISTS realtime.stash;

COMMIT;
