-- roomcast 010: logical capture (CAPTURE=logical). roomcast reads the row changes of the watched
-- tables from a logical replication slot (plugin pgoutput, publication realtime_capture) instead
-- of triggers, and stores the events itself with realtime.capture_store: the same events, rooms,
-- data and meta as the triggers of 005-007, in commit order. Nothing changes with the default
-- CAPTURE=triggers. Re-runnable: psql -v ON_ERROR_STOP=1 -f 010_logical_capture.sql
--
-- What the mode changes in the database (realtime.capture_sync): the watched tables (plus
-- product_order, whose deleted rows give a deleted order's sellers) are added to the
-- publication, get REPLICA IDENTITY FULL (the old row for meta.old and for deletes), and their
-- realtime triggers are disabled (ALTER TABLE ... DISABLE TRIGGER), so no trigger runs in the
-- writers' transactions. Back to 'triggers' enables them again.
BEGIN;
SET LOCAL client_min_messages = warning;

-- The capture mode of this database, set by realtime.capture_sync (roomcast with
-- CAPTURE=logical, or `roomcast migrate` with CAPTURE=logical).
CREATE TABLE IF NOT EXISTS realtime.capture_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    mode text NOT NULL DEFAULT 'triggers' CHECK (mode IN ('triggers', 'logical')),
    publication text NOT NULL DEFAULT 'realtime_capture',
    changed_at timestamptz
);
INSERT INTO realtime.capture_state (singleton) VALUES (true) ON CONFLICT DO NOTHING;
REVOKE ALL ON realtime.capture_state FROM PUBLIC;

-- Per slot: the commit position (end of the commit record) of the last transaction whose events
-- are stored, written in the storing transaction. A transaction the slot sends again after a
-- crash or reconnect (at or below it) is skipped: never stored twice. gaps counts the times the
-- slot was lost or dropped and capture restarted at the current position.
CREATE TABLE IF NOT EXISTS realtime.capture_position (
    slot text PRIMARY KEY,
    lsn pg_lsn NOT NULL DEFAULT '0/0',
    stored_at timestamptz,
    gaps integer NOT NULL DEFAULT 0,
    gap_at timestamptz
);
REVOKE ALL ON realtime.capture_position FROM PUBLIC;

-- The tables logical capture reads, existing ones only: the marketplace tables, product_order
-- (no events of its own) and every realtime.watch registration.
CREATE OR REPLACE FUNCTION realtime.capture_tables()
RETURNS SETOF regclass
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT r FROM (SELECT to_regclass('public."order"') AS r UNION ALL
                   SELECT to_regclass('public.product') UNION ALL
                   SELECT to_regclass('public.delivery') UNION ALL
                   SELECT to_regclass('public.product_order') UNION ALL
                   SELECT to_regclass(format('%I.%I', w.schema_name, w.table_name))
                     FROM realtime.watched w) t
     WHERE r IS NOT NULL
$$;
REVOKE ALL ON FUNCTION realtime.capture_tables() FROM PUBLIC;

-- Switches the database to mode 'logical' or 'triggers' (see the top of this file) and brings
-- the tables in line with it; returns the number of tables changed. publication NULL keeps the
-- recorded one. Raises when a table cannot be changed (not its owner): roomcast then refuses to
-- start with the message.
CREATE OR REPLACE FUNCTION realtime.capture_sync(mode text, publication text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '5s'
AS $$
DECLARE
    st realtime.capture_state%ROWTYPE;
    rel regclass;
    t record;
    changed integer := 0;
BEGIN
    IF mode NOT IN ('triggers', 'logical') THEN
        RAISE EXCEPTION 'realtime.capture_sync: mode must be triggers or logical, not %', mode;
    END IF;
    SELECT * INTO st FROM realtime.capture_state FOR UPDATE;
    IF publication IS NOT NULL AND publication <> st.publication THEN
        st.publication := publication;
    END IF;
    IF mode = 'triggers' THEN
        IF st.mode = 'logical' THEN
            FOR t IN SELECT tg.tgrelid::regclass AS rel, tg.tgname FROM pg_trigger tg
                      WHERE tg.tgrelid IN (SELECT realtime.capture_tables())
                        AND tg.tgname IN ('realtime_order', 'realtime_order_stash', 'realtime_product',
                                          'realtime_delivery', 'realtime_delivery_stash', 'realtime_watch')
                        AND tg.tgenabled = 'D' LOOP
                EXECUTE format('ALTER TABLE %s ENABLE TRIGGER %I', t.rel, t.tgname);
                changed := changed + 1;
            END LOOP;
        END IF;
        UPDATE realtime.capture_state
           SET mode = 'triggers', publication = st.publication,
               changed_at = CASE WHEN st.mode <> 'triggers' THEN now() ELSE changed_at END;
        RETURN changed;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_publication p WHERE p.pubname = st.publication) THEN
        EXECUTE format('CREATE PUBLICATION %I', st.publication);
    END IF;
    FOR rel IN SELECT realtime.capture_tables() LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid
                        WHERE p.pubname = st.publication AND pr.prrelid = rel) THEN
            EXECUTE format('ALTER PUBLICATION %I ADD TABLE %s', st.publication, rel);
            changed := changed + 1;
        END IF;
        IF (SELECT relreplident FROM pg_class WHERE oid = rel) <> 'f' THEN
            EXECUTE format('ALTER TABLE %s REPLICA IDENTITY FULL', rel);
            changed := changed + 1;
        END IF;
    END LOOP;
    FOR t IN SELECT tg.tgrelid::regclass AS rel, tg.tgname FROM pg_trigger tg
              WHERE tg.tgrelid IN (SELECT realtime.capture_tables())
                AND tg.tgname IN ('realtime_order', 'realtime_order_stash', 'realtime_product',
                                  'realtime_delivery', 'realtime_delivery_stash', 'realtime_watch')
                AND tg.tgenabled <> 'D' LOOP
        EXECUTE format('ALTER TABLE %s DISABLE TRIGGER %I', t.rel, t.tgname);
        changed := changed + 1;
    END LOOP;
    UPDATE realtime.capture_state
       SET mode = 'logical', publication = st.publication,
           changed_at = CASE WHEN st.mode <> 'logical' THEN now() ELSE changed_at END;
    RETURN changed;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_sync(text, text) FROM PUBLIC;

-- attach_triggers (007) keeps its behaviour; in mode 'logical' the triggers it attached are
-- disabled and their tables published in the same transaction, so a table the REST service
-- creates again never runs a trigger. The 007 function is kept as realtime.attach_triggers_007
-- (its body names no parameter by the function's name, so the rename keeps it working).
DO $$
BEGIN
    IF to_regprocedure('realtime.attach_triggers_007()') IS NULL THEN
        ALTER FUNCTION realtime.attach_triggers() RENAME TO attach_triggers_007;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION realtime.attach_triggers()
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    attached integer := realtime.attach_triggers_007();
BEGIN
    IF (SELECT mode FROM realtime.capture_state) = 'logical' THEN
        BEGIN
            PERFORM realtime.capture_sync('logical');
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'realtime.attach_triggers: capture not brought in line: %', SQLERRM
                USING HINT = 'the next call of realtime.attach_triggers() tries again';
        END;
    END IF;
    RETURN attached;
END
$$;
REVOKE ALL ON FUNCTION realtime.attach_triggers() FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.attach_triggers_007() FROM PUBLIC;

-- realtime.watch (007's body, which names its parameters by the function's name, so it is
-- repeated here rather than renamed) plus, in mode 'logical', the table into the publication and
-- its new trigger disabled.
CREATE OR REPLACE FUNCTION realtime.watch(tbl regclass, name text, extra_rooms text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM realtime.watch_attach(tbl, name, extra_rooms);
    INSERT INTO realtime.watched AS w (schema_name, table_name, name, extra_rooms)
    SELECT n.nspname, c.relname, watch.name, coalesce(watch.extra_rooms, '{}')
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
    ON CONFLICT ON CONSTRAINT watched_pkey
    DO UPDATE SET name = EXCLUDED.name, extra_rooms = EXCLUDED.extra_rooms, registered_at = now();
    IF (SELECT mode FROM realtime.capture_state) = 'logical' THEN
        PERFORM realtime.capture_sync('logical');
    END IF;
END
$$;
REVOKE ALL ON FUNCTION realtime.watch(regclass, text, text[]) FROM PUBLIC;

-- A decoded row (column name -> value as pgoutput's text, json columns as JSON) as to_jsonb of
-- the table's row type would give it: each value goes through its type's input function.
-- No SET search_path on this one: it is called only from capture_store, which pins it (a SET
-- costs a GUC save and restore per call: ~30 % of the store, see 005).
CREATE OR REPLACE FUNCTION realtime.capture_row(rel regclass, vals jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    r jsonb;
BEGIN
    IF vals IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE format('SELECT to_jsonb(jsonb_populate_record(NULL::%s, $1))', rel) INTO r USING vals;
    RETURN r;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_row(regclass, jsonb) FROM PUBLIC;

-- The rooms realtime.watch_trigger (005) gives a row of a watched table: <name>-<key> and the
-- templates, for each row version (new, then old). Called only from capture_apply (no SET).
CREATE OR REPLACE FUNCTION realtime.capture_watch_rooms(rel regclass, name text, extra_rooms text[],
                                                        versions jsonb[])
RETURNS text[]
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    pk_cols text[];
    j jsonb;
    candidates text[] := '{}';
    rooms text[] := '{}';
    pk text;
    v text;
    c text;
    room text;
    tpl text;
    m text[];
    ok boolean;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk_cols
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = rel AND i.indisprimary;
    FOREACH j IN ARRAY versions LOOP
        pk := NULL;
        FOREACH c IN ARRAY coalesce(pk_cols, '{}') LOOP
            v := j ->> c;
            IF v IS NOT NULL THEN
                pk := CASE WHEN pk IS NULL THEN v ELSE pk || ':' || v END;
            END IF;
        END LOOP;
        IF pk IS NOT NULL THEN
            candidates := candidates || (name || '-' || pk);
        END IF;
        FOREACH tpl IN ARRAY coalesce(extra_rooms, '{}') LOOP
            room := tpl;
            ok := true;
            FOR m IN SELECT regexp_matches(tpl, '\{([^{}]+)\}', 'g') LOOP
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
        IF length(room) NOT BETWEEN 1 AND 128 OR room ~ '[^A-Za-z0-9_.:-]' THEN
            RAISE WARNING 'realtime.watch(%): room % is not a valid room name, skipped',
                rel, quote_literal(room);
        ELSIF NOT room = ANY (rooms) THEN
            rooms := rooms || room;
        END IF;
    END LOOP;
    RETURN rooms;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_watch_rooms(regclass, text, text[], jsonb[]) FROM PUBLIC;

-- The events of one committed transaction, as its triggers would have published them: changes
-- is the decoded transaction in WAL order, [{"s":schema,"t":table,"op":"INSERT"|"UPDATE"|
-- "DELETE","n":{new row},"o":{old row}}] (values as text). The immediate triggers' events
-- (product, realtime.watch) come first in change order, then the commit-time ones ("order",
-- delivery), as the deferred triggers fire at commit. Rooms that the triggers read from other
-- tables (an order's sellers, a delivery's orders) are read now, plus what the transaction
-- itself removed (the deleted items of a deleted order: what realtime.stash keeps for the
-- triggers). Returns the number of events.
-- No SET search_path on this one: it is called only from capture_store, which pins it (a SET
-- costs a GUC save and restore per call: ~30 % of the store, see 005).
CREATE OR REPLACE FUNCTION realtime.capture_apply(changes jsonb)
RETURNS integer
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    ch jsonb;
    pass integer;
    rel regclass;
    tbl text;
    kind text;
    op text;
    o jsonb;
    n jsonb;
    r jsonb;
    rooms text[];
    sellers bigint[];
    s bigint;
    w record;
    gone_items jsonb := '[]';
    gone_orders jsonb := '[]';
    emitted integer := 0;
BEGIN
    -- What the transaction removed: items of orders, orders' old deliveries.
    FOR ch IN SELECT jsonb_array_elements(changes) LOOP
        IF ch ->> 's' = 'public' AND ch ->> 't' = 'product_order' AND ch ? 'o' THEN
            gone_items := gone_items || jsonb_build_array(ch -> 'o');
        ELSIF ch ->> 's' = 'public' AND ch ->> 't' = 'order' AND ch ? 'o'
              AND ch -> 'o' ->> 'id_delivery' IS NOT NULL THEN
            gone_orders := gone_orders || jsonb_build_array(ch -> 'o');
        END IF;
    END LOOP;
    FOR pass IN 1 .. 2 LOOP
        FOR ch IN SELECT jsonb_array_elements(changes) LOOP
            tbl := ch ->> 't';
            kind := CASE WHEN ch ->> 's' = 'public' AND tbl IN ('order', 'delivery') THEN 'deferred'
                         WHEN ch ->> 's' = 'public' AND tbl = 'product' THEN 'immediate'
                         WHEN ch ->> 's' = 'public' AND tbl = 'product_order' THEN 'none'
                         ELSE 'watch' END;
            CONTINUE WHEN kind = 'none' OR (pass = 1) <> (kind <> 'deferred');
            rel := to_regclass(format('%I.%I', ch ->> 's', tbl));
            CONTINUE WHEN rel IS NULL; -- dropped since: its events cannot be built
            op := ch ->> 'op';
            o := CASE WHEN ch ? 'o' THEN realtime.capture_row(rel, ch -> 'o') END;
            -- An unchanged TOASTed value is not sent again: it is the old row's.
            n := CASE WHEN ch ? 'n' THEN realtime.capture_row(rel, coalesce(ch -> 'o', '{}') || (ch -> 'n')) END;
            CONTINUE WHEN op = 'UPDATE' AND o = n;
            r := coalesce(n, o);
            IF kind = 'immediate' THEN
                rooms := ARRAY['product-' || (r ->> 'id_product')];
                IF r ->> 'id_seller' IS NOT NULL THEN
                    rooms := rooms || ('seller-' || (r ->> 'id_seller'));
                END IF;
                IF op = 'UPDATE' AND o ->> 'id_seller' IS DISTINCT FROM n ->> 'id_seller'
                   AND o ->> 'id_seller' IS NOT NULL THEN
                    rooms := rooms || ('seller-' || (o ->> 'id_seller'));
                END IF;
                rooms := rooms || 'admins'::text;
                PERFORM realtime.emit_row('product', op, tbl, rel, rooms, o, n);
            ELSIF kind = 'deferred' AND tbl = 'order' THEN
                rooms := ARRAY['order-' || (r ->> 'id_order')];
                IF r ->> 'id_client' IS NOT NULL THEN
                    rooms := rooms || ('client-' || (r ->> 'id_client'));
                END IF;
                IF op = 'UPDATE' AND o ->> 'id_client' IS DISTINCT FROM n ->> 'id_client'
                   AND o ->> 'id_client' IS NOT NULL THEN
                    rooms := rooms || ('client-' || (o ->> 'id_client'));
                END IF;
                IF op = 'DELETE' THEN
                    rooms := realtime.rooms_union(rooms, (
                        SELECT coalesce(array_agg('seller-' || x.id ORDER BY x.id), '{}')
                          FROM (SELECT DISTINCT p.id_seller AS id
                                  FROM jsonb_array_elements(gone_items) gi
                                  JOIN public.product p ON p.id_product = (gi ->> 'id_product')::bigint
                                 WHERE gi ->> 'id_order' = r ->> 'id_order' AND p.id_seller IS NOT NULL) x));
                END IF;
                SELECT array_agg(DISTINCT p.id_seller::bigint ORDER BY p.id_seller::bigint) INTO sellers
                  FROM public.product_order po
                  JOIN public.product p ON p.id_product = po.id_product
                 WHERE po.id_order = (r ->> 'id_order')::bigint AND p.id_seller IS NOT NULL;
                FOREACH s IN ARRAY coalesce(sellers, '{}') LOOP
                    IF NOT ('seller-' || s) = ANY (rooms) THEN
                        rooms := rooms || ('seller-' || s);
                    END IF;
                END LOOP;
                PERFORM realtime.emit_row('order', op, tbl, rel, rooms, o, n);
            ELSIF kind = 'deferred' THEN
                rooms := ARRAY['delivery-' || (r ->> 'id_delivery')];
                IF op = 'DELETE' THEN
                    rooms := realtime.rooms_union(rooms, (
                        SELECT coalesce(array_agg(x.room ORDER BY x.id, x.k), '{}')
                          FROM (SELECT (go ->> 'id_order')::bigint AS id, k, room
                                  FROM jsonb_array_elements(gone_orders) go
                                  CROSS JOIN LATERAL (VALUES (1, 'order-' || (go ->> 'id_order')),
                                                             (2, 'client-' || (go ->> 'id_client'))) v(k, room)
                                 WHERE go ->> 'id_delivery' = r ->> 'id_delivery' AND room IS NOT NULL) x));
                END IF;
                rooms := realtime.rooms_union(rooms, realtime.delivery_order_rooms((r ->> 'id_delivery')::bigint));
                PERFORM realtime.emit_row('delivery', op, tbl, rel, rooms, o, n);
            ELSE
                SELECT wd.name, wd.extra_rooms INTO w FROM realtime.watched wd
                 WHERE wd.schema_name = ch ->> 's' AND wd.table_name = tbl;
                CONTINUE WHEN NOT FOUND;
                rooms := realtime.capture_watch_rooms(rel, w.name, w.extra_rooms,
                                                      CASE WHEN op = 'UPDATE' THEN ARRAY[n, o]
                                                           ELSE ARRAY[r] END);
                CONTINUE WHEN cardinality(rooms) = 0;
                PERFORM realtime.emit_row(w.name, op, tbl, rel, rooms, o, n);
            END IF;
            emitted := emitted + 1;
        END LOOP;
    END LOOP;
    RETURN emitted;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_apply(jsonb) FROM PUBLIC;

-- Stores a batch of decoded transactions for slot in one transaction: txns is
-- [{"lsn":"<commit end position>","c":[changes as for capture_apply]}, ...] in commit order.
-- Transactions at or below the stored position were stored before (the slot sent them again
-- after a crash or reconnect) and are skipped. Returns the position now stored; roomcast
-- confirms it to the slot only after this committed.
CREATE OR REPLACE FUNCTION realtime.capture_store(slot text, txns jsonb)
RETURNS pg_lsn
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pos pg_lsn;
    t jsonb;
    lsn pg_lsn;
    n integer;
BEGIN
    INSERT INTO realtime.capture_position AS cp (slot) VALUES (capture_store.slot)
    ON CONFLICT ON CONSTRAINT capture_position_pkey DO NOTHING;
    -- The row lock serializes two stores for one slot (a holder that lost its lock still storing).
    SELECT cp.lsn INTO pos FROM realtime.capture_position cp WHERE cp.slot = capture_store.slot FOR UPDATE;
    FOR t IN SELECT jsonb_array_elements(txns) LOOP
        lsn := (t ->> 'lsn')::pg_lsn;
        CONTINUE WHEN lsn <= pos;
        IF jsonb_array_length(t -> 'c') > 0 THEN
            n := realtime.capture_apply(t -> 'c');
        END IF;
        pos := lsn;
    END LOOP;
    UPDATE realtime.capture_position cp SET lsn = pos, stored_at = now()
     WHERE cp.slot = capture_store.slot;
    RETURN pos;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_store(text, jsonb) FROM PUBLIC;

-- The slot was lost (fell behind max_slot_wal_keep_size) or dropped: changes between the stored
-- position and the new slot's start are gone. Moves the outbox horizon past every id handed out
-- so far (a client resuming from before the gap is told recovered:false) and restarts the
-- position at new_start. Returns the new horizon.
CREATE OR REPLACE FUNCTION realtime.capture_gap(slot text, new_start pg_lsn)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    horizon bigint := nextval(pg_get_serial_sequence('realtime.events', 'id'));
BEGIN
    UPDATE realtime.outbox_state SET pruned_through = greatest(pruned_through, horizon), pruned_at = now();
    INSERT INTO realtime.capture_position AS cp (slot, lsn, stored_at, gaps, gap_at)
    VALUES (capture_gap.slot, new_start, now(), 1, now())
    ON CONFLICT ON CONSTRAINT capture_position_pkey DO UPDATE SET lsn = EXCLUDED.lsn, stored_at = now(), gaps = cp.gaps + 1,
                                     gap_at = now();
    RETURN horizon;
END
$$;
REVOKE ALL ON FUNCTION realtime.capture_gap(text, pg_lsn) FROM PUBLIC;

-- The publication, empty until capture_sync('logical') fills it; creating it costs nothing
-- without a slot reading it. A role that may not create publications gets a NOTICE instead.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = 'realtime_capture') THEN
        CREATE PUBLICATION realtime_capture;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    PERFORM set_config('client_min_messages', 'notice', true);
    RAISE NOTICE 'roomcast 010: publication realtime_capture not created (%); CAPTURE=logical '
                 'needs it', SQLERRM;
    PERFORM set_config('client_min_messages', 'warning', true);
END
$$;

COMMIT;
