-- roomcast 011: logical capture stores a batch set-based. realtime.capture_store (010) ran
-- capture_apply's PL/pgSQL per change: per row a dynamic EXECUTE to read the row, a seller
-- lookup, emit_row and append with their own INSERT and NOTIFY (~90 us per event, measured with
-- pg_stat_statements: the store fell 20-70 s behind 8 pgbench writers). Now the transactions of
-- a batch that change only product and "order" rows (the REST service's stock and status
-- changes: no deleted order) are stored by one INSERT ... SELECT for all of them, the rooms
-- computed in the same statement, then one NOTIFY per event in id order from the inserted rows.
-- The events are those of 010 (same event, rooms, data, meta, same order: commit order, then
-- a transaction's product events before its order events as the deferred triggers fire at
-- commit); any other transaction (deliveries, watched tables, deleted orders or items) still
-- goes through capture_apply in its place. Re-runnable: psql -v ON_ERROR_STOP=1 -f 011_capture_batch.sql
BEGIN;
SET LOCAL client_min_messages = warning;

-- Stores the transactions of txns (as for capture_store) at positions lo .. hi - 1 (hi NULL: to
-- the end) whose commit position is above pos; each must change only public.product rows and
-- inserted or updated public."order" rows. Returns the number of events. Called only from
-- capture_store, which pins search_path (so no SET here) and holds the slot's position lock.
CREATE OR REPLACE FUNCTION realtime.capture_store_set(txns jsonb, lo bigint, hi bigint, pos pg_lsn)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    emitted bigint;
BEGIN
    IF hi IS NOT NULL AND hi <= lo THEN
        RETURN 0;
    END IF;
    WITH ch AS (
        SELECT x.i AS ti, y.ci, y.e ->> 't' AS tbl, y.e ->> 'op' AS op,
               CASE WHEN y.e ->> 't' = 'product' THEN 1 ELSE 2 END AS pass,
               y.e -> 'o' AS ov, CASE WHEN y.e ? 'n' THEN coalesce(y.e -> 'o', '{}') || (y.e -> 'n') END AS nv
          FROM jsonb_array_elements(txns) WITH ORDINALITY AS x(t, i)
         CROSS JOIN LATERAL jsonb_array_elements(x.t -> 'c') WITH ORDINALITY AS y(e, ci)
         WHERE x.i >= lo AND (hi IS NULL OR x.i < hi) AND (x.t ->> 'lsn')::pg_lsn > pos
    ), rw AS MATERIALIZED (
        -- Each row as to_jsonb of the table's row type gives it (capture_row); an unchanged
        -- TOASTed value is the old row's. MATERIALIZED: computed once per change (inlined, the
        -- planner repeats these expressions in every filter that names o or n).
        SELECT ti, ci, tbl, op, pass,
               CASE WHEN tbl = 'product' THEN 'public.product'::regclass ELSE 'public."order"'::regclass END AS rel,
               CASE WHEN ov IS NULL THEN NULL
                    WHEN tbl = 'product' THEN to_jsonb(jsonb_populate_record(NULL::public.product, ov))
                    ELSE to_jsonb(jsonb_populate_record(NULL::public."order", ov)) END AS o,
               CASE WHEN nv IS NULL THEN NULL
                    WHEN tbl = 'product' THEN to_jsonb(jsonb_populate_record(NULL::public.product, nv))
                    ELSE to_jsonb(jsonb_populate_record(NULL::public."order", nv)) END AS n
          FROM ch
    ), ev AS (
        SELECT rw.*, coalesce(n, o) AS r FROM rw WHERE NOT (op = 'UPDATE' AND o = n)
    ), cols AS MATERIALIZED (
        -- The tables' columns once per batch (emit_row reads them per event or from a cache).
        SELECT a.attrelid::regclass AS rel, array_agg(a.attname::text ORDER BY a.attnum) AS names
          FROM pg_catalog.pg_attribute a
         WHERE a.attrelid IN ('public.product'::regclass, 'public."order"'::regclass)
           AND a.attnum > 0 AND NOT a.attisdropped
         GROUP BY a.attrelid
    ), src AS (
        SELECT ev.ti, ev.pass, ev.ci,
               CASE WHEN tbl = 'product' THEN 'product' ELSE 'order' END
                   || CASE op WHEN 'INSERT' THEN '_created' WHEN 'UPDATE' THEN '_updated' ELSE '_deleted' END AS event,
               CASE WHEN tbl = 'product' THEN
                        ARRAY['product-' || (r ->> 'id_product')]
                        || CASE WHEN r ->> 'id_seller' IS NOT NULL THEN ARRAY['seller-' || (r ->> 'id_seller')] ELSE '{}'::text[] END
                        || CASE WHEN op = 'UPDATE' AND o ->> 'id_seller' IS DISTINCT FROM n ->> 'id_seller'
                                     AND o ->> 'id_seller' IS NOT NULL
                                THEN ARRAY['seller-' || (o ->> 'id_seller')] ELSE '{}'::text[] END
                        || ARRAY['admins']
                    ELSE
                        ARRAY['order-' || (r ->> 'id_order')]
                        || CASE WHEN r ->> 'id_client' IS NOT NULL THEN ARRAY['client-' || (r ->> 'id_client')] ELSE '{}'::text[] END
                        || CASE WHEN op = 'UPDATE' AND o ->> 'id_client' IS DISTINCT FROM n ->> 'id_client'
                                     AND o ->> 'id_client' IS NOT NULL
                                THEN ARRAY['client-' || (o ->> 'id_client')] ELSE '{}'::text[] END
                        -- The order's sellers as they are now, as capture_apply reads them.
                        || coalesce((SELECT array_agg('seller-' || d.s ORDER BY d.s)
                                       FROM (SELECT DISTINCT p.id_seller::bigint AS s
                                               FROM public.product_order po
                                               JOIN public.product p ON p.id_product = po.id_product
                                              WHERE po.id_order = (r ->> 'id_order')::bigint
                                                AND p.id_seller IS NOT NULL) d), '{}'::text[])
               END AS rooms,
               CASE WHEN op = 'DELETE' THEN o ELSE n END AS data,
               CASE WHEN op = 'UPDATE' THEN
                        jsonb_build_object('source', 'db', 'table', tbl, 'op', op,
                                           'changed', coalesce(d.changed, '{}'::text[]),
                                           'old', coalesce(d.old, '{}'::jsonb))
                    ELSE jsonb_build_object('source', 'db', 'table', tbl, 'op', op) END AS meta
          FROM ev
          -- emit_row's meta.changed (columns in table order) and meta.old.
          LEFT JOIN LATERAL (
              SELECT array_agg(u.c ORDER BY u.k) AS changed, jsonb_object_agg(u.c, ev.o -> u.c) AS old
                FROM cols JOIN LATERAL unnest(cols.names) WITH ORDINALITY AS u(c, k) ON true
               WHERE cols.rel = ev.rel AND (ev.o -> u.c) IS DISTINCT FROM (ev.n -> u.c)) d
            ON ev.op = 'UPDATE'
    ), ins AS (
        -- Ids are drawn in the sorted order: commit order, a transaction's product events first.
        INSERT INTO realtime.events (event, rooms, data, meta)
        SELECT s.event, s.rooms, s.data, s.meta FROM src s ORDER BY s.ti, s.pass, s.ci
        RETURNING *
    )
    -- One NOTIFY per event as append sends it, in insertion (= id) order: the scan of the
    -- inserted rows returns them in the order they were inserted.
    SELECT count(pg_catalog.pg_notify('realtime_events',
                 CASE WHEN octet_length(q.p) > 7900
                      THEN '{"id":' || q.id || ',"xid":"' || q.xid::text || '","large":true}'
                      ELSE q.p END))
      INTO emitted
      FROM (SELECT ins.id, ins.xid,
                   -- realtime.event_json (001), inline.
                   '{"id":' || ins.id
                   || ',"xid":"' || ins.xid::text
                   || '","ts":"' || to_char(ins.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
                   || '","event":' || to_json(ins.event)::text
                   || ',"rooms":' || to_json(ins.rooms)::text
                   || ',"data":' || ins.data::text
                   || ',"meta":' || ins.meta::text || '}' AS p
              FROM ins) q;
    RETURN emitted;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_store_set(jsonb, bigint, bigint, pg_lsn) FROM PUBLIC;

-- As in 010, but the runs of transactions capture_store_set takes are stored by it, set-based;
-- the others go through capture_apply in their place (commit order is kept). The transaction
-- commits synchronously, as append made each event's transaction do (see 004).
CREATE OR REPLACE FUNCTION realtime.capture_store(slot text, txns jsonb)
RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pos pg_lsn;
    top pg_lsn;
    simple_ok boolean;
    lo bigint := 1;
    k bigint;
    t jsonb;
    n bigint;
    s text;
BEGIN
    IF current_setting('synchronous_commit') = 'off' THEN
        s := set_config('synchronous_commit', 'on', true);
    END IF;
    INSERT INTO realtime.capture_position AS cp (slot) VALUES (capture_store.slot)
    ON CONFLICT ON CONSTRAINT capture_position_pkey DO NOTHING;
    -- The row lock serializes two stores for one slot (a holder that lost its lock still storing).
    SELECT cp.lsn INTO pos FROM realtime.capture_position cp WHERE cp.slot = capture_store.slot FOR UPDATE;
    simple_ok := to_regclass('public.product') IS NOT NULL AND to_regclass('public."order"') IS NOT NULL
                 AND to_regclass('public.product_order') IS NOT NULL;
    -- The transactions not stored yet that capture_store_set cannot take, in commit order.
    FOR k, t IN
        SELECT x.i, x.t FROM jsonb_array_elements(txns) WITH ORDINALITY AS x(t, i)
         WHERE (x.t ->> 'lsn')::pg_lsn > pos
           AND (NOT simple_ok OR EXISTS (
                   SELECT 1 FROM jsonb_array_elements(x.t -> 'c') c(e)
                    WHERE NOT (c.e ->> 's' = 'public'
                               AND (c.e ->> 't' = 'product'
                                    OR (c.e ->> 't' = 'order' AND c.e ->> 'op' IN ('INSERT', 'UPDATE'))))))
         ORDER BY x.i
    LOOP
        IF simple_ok THEN
            n := realtime.capture_store_set(txns, lo, k, pos);
        END IF;
        IF jsonb_array_length(t -> 'c') > 0 THEN
            n := realtime.capture_apply(t -> 'c');
        END IF;
        lo := k + 1;
    END LOOP;
    IF simple_ok THEN
        n := realtime.capture_store_set(txns, lo, NULL, pos);
    END IF;
    SELECT max((x.t ->> 'lsn')::pg_lsn) INTO top FROM jsonb_array_elements(txns) AS x(t);
    IF top > pos THEN
        pos := top;
    END IF;
    UPDATE realtime.capture_position cp SET lsn = pos, stored_at = now()
     WHERE cp.slot = capture_store.slot;
    RETURN pos;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_store(text, jsonb) FROM PUBLIC;

COMMIT;
