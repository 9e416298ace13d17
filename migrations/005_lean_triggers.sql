-- roomcast 005: the same events, rooms, payloads and guarantees as 001-004 at well under half
-- the cost to the writers. Re-runnable: psql -v ON_ERROR_STOP=1 -f 005_lean_triggers.sql
--
-- Measured with callgrind on a single backend (bench/pgbench_orders.sql: a product UPDATE and
-- an order UPDATE per transaction, two events): 415 000 instructions per transaction without
-- the triggers, 2 330 000 with 001-004, 1 430 000 with this file. What the instructions went to
-- and what changed:
--   * room validation in publish: `r !~ '^[A-Za-z0-9_.:-]{1,128}$'`; the bounded repetition
--     costs PostgreSQL's regex engine ~75 000 instructions per room (22 % of everything). Same
--     rule, checked as length + one negated character class (~3 000). Trigger rooms are built
--     from integer keys and skip it.
--   * a chain of plpgsql functions per event, each SECURITY DEFINER or SET search_path (a GUC
--     save/restore per call), called with PERFORM (a full executor start each); rooms_union
--     loops. Now: the trigger (the one SECURITY DEFINER), realtime.emit_row, realtime.append,
--     called as expressions.
--   * rows as json text parsed back to jsonb twice (row_to_json, ::jsonb, json_each) and an
--     aggregate query per UPDATE for meta.changed/meta.old. Now to_jsonb once per row version
--     and a loop over the table's columns, whose list (in table order) is cached per session.
--   * the order's seller rooms: one aggregate instead of DISTINCT + sort + aggregate.
-- What remains is PostgreSQL's own work per event: the outbox INSERT (executor start, heap and
-- four index entries), to_jsonb of the old and new row, the payload text and the seller lookup.
-- The outbox and its indexes are unchanged (measured: a BRIN index on created_at costs more
-- per insert than the btree; GIN with fastupdate off costs more than with it on).
BEGIN;
SET LOCAL client_min_messages = warning;

-- Appends one event: the outbox row and its NOTIFY, in the caller's transaction. Everything
-- that emits an event ends here. Internal (no EXECUTE for PUBLIC): called by publish and the
-- triggers, which are SECURITY DEFINER with a pinned search_path, so this one needs neither.
CREATE OR REPLACE FUNCTION realtime.append(event text, rooms text[], data jsonb, meta jsonb)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    ev realtime.events%ROWTYPE;
    payload text;
BEGIN
    -- 004: a publishing transaction commits synchronously (see 004_durable_events.sql).
    -- Transaction-local; an assignment rather than PERFORM, which would start an executor.
    IF current_setting('synchronous_commit') = 'off' THEN
        payload := set_config('synchronous_commit', 'on', true);
    END IF;
    INSERT INTO realtime.events (event, rooms, data, meta)
    VALUES (append.event, append.rooms, append.data, append.meta)
    RETURNING * INTO ev;
    payload := realtime.event_json(ev);
    -- NOTIFY refuses payloads of 8000 bytes or more; the server reads large events from the row.
    IF octet_length(payload) > 7900 THEN
        payload := '{"id":' || ev.id || ',"xid":"' || ev.xid::text || '","large":true}';
    END IF;
    IF pg_notify('realtime_events', payload) IS NULL THEN
        RETURN NULL; -- never: pg_notify returns void; the IF only evaluates it as an expression
    END IF;
    RETURN ev.id;
END
$$;
REVOKE ALL ON FUNCTION realtime.append(text, text[], jsonb, jsonb) FROM PUBLIC;

-- The one SQL door, as in 001/004: the same checks and errors, then append.
CREATE OR REPLACE FUNCTION realtime.publish(event text, rooms text[], data jsonb,
                                            meta jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text;
BEGIN
    IF publish.event IS NULL OR publish.event = '' THEN
        RAISE EXCEPTION 'realtime.publish: event must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF publish.rooms IS NULL OR cardinality(publish.rooms) = 0 THEN
        RAISE EXCEPTION 'realtime.publish: at least one room is required (event %)', publish.event
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH r IN ARRAY publish.rooms LOOP
        -- ^[A-Za-z0-9_.:-]{1,128}$, without the bounded repetition (see the top of this file).
        IF r IS NULL OR length(r) NOT BETWEEN 1 AND 128 OR r ~ '[^A-Za-z0-9_.:-]' THEN
            RAISE EXCEPTION 'realtime.publish: invalid room name %', coalesce(quote_literal(r), 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'rooms match ^[A-Za-z0-9_.:-]{1,128}$';
        END IF;
    END LOOP;
    RETURN realtime.append(publish.event, publish.rooms, coalesce(publish.data, '{}'),
                           coalesce(publish.meta, '{}'));
END
$$;
REVOKE ALL ON FUNCTION realtime.publish(text, text[], jsonb, jsonb) FROM PUBLIC;

-- Publishes one row change of table relid (named tbl): <name>_created|_updated|_deleted with
-- data = the row (n, or o for deletes; to_jsonb of NEW/OLD) and meta = {"source":"db",
-- "table":…,"op":…} plus, for UPDATE, "changed" (column names in table order) and "old"
-- (their previous values). An UPDATE that changes no column publishes nothing and returns
-- NULL. The column list is cached in the session setting realtime.columns_<relid> and read
-- again from pg_attribute when the row has a column the cache does not know (ALTER TABLE);
-- a dropped column is simply absent from both row versions.
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
$$;
REVOKE ALL ON FUNCTION realtime.emit_row(text, text, text, oid, text[], jsonb, jsonb) FROM PUBLIC;

-- The triggers keep their names, timing and rooms (002); only their bodies change, so the
-- triggers attached by 002 (and by realtime.attach_marketplace, realtime.watch) use them as
-- they are. Room order is kept: the first room is the one the server names in `room`/`to`.

-- "order": order-<id_order>, client-<id_client> (old and new if it moved), the rooms stashed
-- before a DELETE, seller-<id> of its items by seller id. Fires at commit (deferred).
CREATE OR REPLACE FUNCTION realtime.order_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    rooms text[];
    sellers bigint[];
    s bigint;
    o jsonb;
    n jsonb;
    emitted bigint; -- assigned, not PERFORMed: an expression needs no executor
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
        o := to_jsonb(OLD);
    ELSE
        r := NEW;
        n := to_jsonb(NEW);
        IF TG_OP = 'UPDATE' THEN
            o := to_jsonb(OLD);
            IF o = n THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    rooms := ARRAY['order-' || r.id_order];
    IF r.id_client IS NOT NULL THEN
        rooms := rooms || ('client-' || r.id_client);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.id_client IS DISTINCT FROM NEW.id_client AND OLD.id_client IS NOT NULL THEN
        rooms := rooms || ('client-' || OLD.id_client);
    END IF;
    IF TG_OP = 'DELETE' THEN
        rooms := realtime.rooms_union(rooms, realtime.stashed_rooms('order', r.id_order));
    END IF;
    SELECT array_agg(DISTINCT p.id_seller::bigint ORDER BY p.id_seller::bigint) INTO sellers
      FROM public.product_order po
      JOIN public.product p ON p.id_product = po.id_product
     WHERE po.id_order = r.id_order AND p.id_seller IS NOT NULL;
    IF sellers IS NOT NULL THEN
        FOREACH s IN ARRAY sellers LOOP
            IF NOT ('seller-' || s) = ANY (rooms) THEN
                rooms := rooms || ('seller-' || s);
            END IF;
        END LOOP;
    END IF;
    emitted := realtime.emit_row('order', TG_OP, TG_TABLE_NAME, TG_RELID, rooms, o, n);
    RETURN NULL;
END
$$;

-- product: product-<id_product>, seller-<id_seller> (old and new if it moved), admins.
CREATE OR REPLACE FUNCTION realtime.product_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    rooms text[];
    o jsonb;
    n jsonb;
    emitted bigint; -- assigned, not PERFORMed: an expression needs no executor
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
        o := to_jsonb(OLD);
    ELSE
        r := NEW;
        n := to_jsonb(NEW);
        IF TG_OP = 'UPDATE' THEN
            o := to_jsonb(OLD);
            IF o = n THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    rooms := ARRAY['product-' || r.id_product];
    IF r.id_seller IS NOT NULL THEN
        rooms := rooms || ('seller-' || r.id_seller);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.id_seller IS DISTINCT FROM NEW.id_seller AND OLD.id_seller IS NOT NULL THEN
        rooms := rooms || ('seller-' || OLD.id_seller);
    END IF;
    rooms := rooms || 'admins'::text;
    emitted := realtime.emit_row('product', TG_OP, TG_TABLE_NAME, TG_RELID, rooms, o, n);
    RETURN NULL;
END
$$;

-- delivery: delivery-<id_delivery>, the rooms stashed before a DELETE, order-<id>/client-<id>
-- of the orders referencing it. Fires at commit (deferred).
CREATE OR REPLACE FUNCTION realtime.delivery_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    rooms text[];
    o jsonb;
    n jsonb;
    emitted bigint; -- assigned, not PERFORMed: an expression needs no executor
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
        o := to_jsonb(OLD);
    ELSE
        r := NEW;
        n := to_jsonb(NEW);
        IF TG_OP = 'UPDATE' THEN
            o := to_jsonb(OLD);
            IF o = n THEN
                RETURN NULL;
            END IF;
        END IF;
    END IF;
    rooms := ARRAY['delivery-' || r.id_delivery];
    IF TG_OP = 'DELETE' THEN
        rooms := realtime.rooms_union(rooms, realtime.stashed_rooms('delivery', r.id_delivery));
    END IF;
    rooms := realtime.rooms_union(rooms, realtime.delivery_order_rooms(r.id_delivery));
    emitted := realtime.emit_row('delivery', TG_OP, TG_TABLE_NAME, TG_RELID, rooms, o, n);
    RETURN NULL;
END
$$;

-- realtime.watch's trigger, as in 002 (arguments: event name prefix, the primary key columns as
-- a JSON array, then room templates), with the cheaper room check and emit_row.
CREATE OR REPLACE FUNCTION realtime.watch_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := TG_ARGV[0];
    pk_cols jsonb := TG_ARGV[1]::jsonb;
    o jsonb;
    n jsonb;
    emitted bigint;
    versions jsonb[];
    j jsonb;
    candidates text[] := '{}';
    rooms text[] := '{}';
    pk text;
    v text;
    room text;
    m text[];
    ok boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        o := to_jsonb(OLD);
        versions := ARRAY[o];
    ELSIF TG_OP = 'UPDATE' THEN
        o := to_jsonb(OLD);
        n := to_jsonb(NEW);
        IF o = n THEN
            RETURN NULL;
        END IF;
        versions := ARRAY[n, o];
    ELSE
        n := to_jsonb(NEW);
        versions := ARRAY[n];
    END IF;
    FOREACH j IN ARRAY versions LOOP
        pk := NULL; -- the key columns' values joined with ':' (NULLs skipped, as string_agg did)
        FOR i IN 0 .. jsonb_array_length(pk_cols) - 1 LOOP
            v := j ->> (pk_cols ->> i);
            IF v IS NOT NULL THEN
                pk := CASE WHEN pk IS NULL THEN v ELSE pk || ':' || v END;
            END IF;
        END LOOP;
        IF pk IS NOT NULL THEN
            candidates := candidates || (name || '-' || pk);
        END IF;
        FOR i IN 2 .. TG_NARGS - 1 LOOP
            room := TG_ARGV[i];
            ok := true;
            FOR m IN SELECT regexp_matches(TG_ARGV[i], '\{([^{}]+)\}', 'g') LOOP
                IF j ->> m[1] IS NULL THEN
                    ok := false;
                    EXIT;
                END IF;
                room := replace(room, '{' || m[1] || '}', j ->> m[1]);
            END LOOP;
            IF ok THEN
                candidates := candidates || room;
            END IF;
        END LOOP;
    END LOOP;
    FOREACH room IN ARRAY candidates LOOP
        -- ^[A-Za-z0-9_.:-]{1,128}$, as in publish.
        IF length(room) NOT BETWEEN 1 AND 128 OR room ~ '[^A-Za-z0-9_.:-]' THEN
            RAISE WARNING 'realtime.watch(%): room % is not a valid room name, skipped',
                TG_TABLE_NAME, quote_literal(room);
        ELSIF NOT room = ANY (rooms) THEN
            rooms := rooms || room;
        END IF;
    END LOOP;
    IF cardinality(rooms) > 0 THEN
        emitted := realtime.emit_row(name, TG_OP, TG_TABLE_NAME, TG_RELID, rooms, o, n);
    END IF;
    RETURN NULL;
END
$$;

COMMIT;
