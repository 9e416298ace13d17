-- roomcast 002: row triggers that publish database changes through realtime.publish — the
-- marketplace tables ("order", product, delivery; attached only when they exist, and again on
-- demand by realtime.attach_marketplace()) and any other table via realtime.watch(). Re-runnable.
BEGIN;
SET LOCAL client_min_messages = warning;
-- Attaching a trigger locks the table; give up rather than queue every writer behind us.
SET LOCAL lock_timeout = '30s';

-- Appends the rooms of b that are not yet in a, keeping order: the first room of an event is
-- the one the server names in `room`/`to` for members of several.
CREATE OR REPLACE FUNCTION realtime.rooms_union(a text[], b text[])
RETURNS text[]
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text[] := coalesce(a, '{}');
    x text;
BEGIN
    FOREACH x IN ARRAY coalesce(b, '{}') LOOP
        IF x IS NOT NULL AND NOT x = ANY (r) THEN
            r := r || x;
        END IF;
    END LOOP;
    RETURN r;
END
$$;

-- Publishes one row change: <name>_created|_updated|_deleted with data = the row (NEW, or OLD
-- for deletes) and meta = {"source":"db","table":…,"op":…} plus, for UPDATE, "changed" (column
-- names in table order — rows come as json because json keeps column order) and "old" (their
-- previous values). An UPDATE that changes no column publishes nothing and returns NULL.
CREATE OR REPLACE FUNCTION realtime.emit_change(name text, op text, tbl text, rooms text[],
                                                old_row json, new_row json)
RETURNS bigint
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o jsonb := old_row::jsonb;
    n jsonb := new_row::jsonb;
    changed text[];
    old_values jsonb;
    meta jsonb := jsonb_build_object('source', 'db', 'table', tbl, 'op', op);
    suffix text;
BEGIN
    IF op = 'UPDATE' THEN
        SELECT coalesce(array_agg(e.key ORDER BY e.ord), '{}'),
               coalesce(jsonb_object_agg(e.key, o -> e.key), '{}')
          INTO changed, old_values
          FROM json_each(new_row) WITH ORDINALITY AS e(key, value, ord)
         WHERE (o -> e.key) IS DISTINCT FROM (n -> e.key);
        IF cardinality(changed) = 0 THEN
            RETURN NULL;
        END IF;
        meta := meta || jsonb_build_object('changed', to_jsonb(changed), 'old', old_values);
        suffix := '_updated';
    ELSIF op = 'INSERT' THEN
        suffix := '_created';
    ELSIF op = 'DELETE' THEN
        suffix := '_deleted';
    ELSE
        RAISE EXCEPTION 'realtime.emit_change: unsupported op %', op;
    END IF;
    RETURN realtime.publish(name || suffix, rooms, CASE WHEN op = 'DELETE' THEN o ELSE n END, meta);
END
$$;
REVOKE ALL ON FUNCTION realtime.emit_change(text, text, text, text[], json, json) FROM PUBLIC;

-- The order and delivery triggers fire at commit (deferred) so that the rows they read — the
-- order's items, the orders of a delivery — exist. By then a DELETE has already cascaded to
-- product_order (or nulled the orders' id_delivery), so a BEFORE DELETE trigger stashes those
-- rooms in a transaction-local setting which the commit-time trigger reads back.
CREATE OR REPLACE FUNCTION realtime.stash_rooms(kind text, id bigint, rooms text[])
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM set_config('realtime.stash_' || kind || '_' || id, array_to_string(rooms, ','), true);
END
$$;

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
$$;

-- plpgsql (not sql) wherever marketplace tables are named: sql bodies are checked at CREATE
-- time, and this migration must install on a database without those tables.

-- seller-<id> for every distinct seller with an item in the order, ordered by seller id.
CREATE OR REPLACE FUNCTION realtime.order_seller_rooms(order_id bigint)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (SELECT coalesce(array_agg('seller-' || s.id ORDER BY s.id), '{}')
              FROM (SELECT DISTINCT p.id_seller AS id
                      FROM public.product_order po
                      JOIN public.product p ON p.id_product = po.id_product
                     WHERE po.id_order = order_id AND p.id_seller IS NOT NULL) s);
END
$$;

-- order-<id> and client-<id> of every order that references the delivery.
CREATE OR REPLACE FUNCTION realtime.delivery_order_rooms(delivery_id bigint)
RETURNS text[]
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text[] := '{}';
    o record;
BEGIN
    FOR o IN SELECT id_order, id_client FROM public."order"
              WHERE id_delivery = delivery_id ORDER BY id_order LOOP
        r := realtime.rooms_union(r, ARRAY['order-' || o.id_order, 'client-' || o.id_client]);
    END LOOP;
    RETURN r;
END
$$;

-- "order": order-<id_order>, client-<id_client> (old and new if it moved), seller-<id> of its
-- items. Deferred constraint trigger: fires at commit, when the items exist.
CREATE OR REPLACE FUNCTION realtime.order_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    rooms text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    rooms := ARRAY['order-' || r.id_order];
    IF r.id_client IS NOT NULL THEN
        rooms := rooms || ('client-' || r.id_client);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.id_client IS DISTINCT FROM NEW.id_client AND OLD.id_client IS NOT NULL THEN
        rooms := realtime.rooms_union(rooms, ARRAY['client-' || OLD.id_client]);
    END IF;
    IF TG_OP = 'DELETE' THEN
        rooms := realtime.rooms_union(rooms, realtime.stashed_rooms('order', r.id_order));
    END IF;
    rooms := realtime.rooms_union(rooms, realtime.order_seller_rooms(r.id_order));
    PERFORM realtime.emit_change('order', TG_OP, TG_TABLE_NAME, rooms,
                                 row_to_json(OLD), row_to_json(NEW));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION realtime.order_stash_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM realtime.stash_rooms('order', OLD.id_order, realtime.order_seller_rooms(OLD.id_order));
    RETURN OLD;
END
$$;

-- product: product-<id_product>, seller-<id_seller> (old and new if it moved), admins.
-- Reads no other row, so an ordinary AFTER trigger.
CREATE OR REPLACE FUNCTION realtime.product_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    rooms text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    rooms := ARRAY['product-' || r.id_product];
    IF r.id_seller IS NOT NULL THEN
        rooms := rooms || ('seller-' || r.id_seller);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.id_seller IS DISTINCT FROM NEW.id_seller AND OLD.id_seller IS NOT NULL THEN
        rooms := realtime.rooms_union(rooms, ARRAY['seller-' || OLD.id_seller]);
    END IF;
    rooms := rooms || 'admins'::text;
    PERFORM realtime.emit_change('product', TG_OP, TG_TABLE_NAME, rooms,
                                 row_to_json(OLD), row_to_json(NEW));
    RETURN NULL;
END
$$;

-- delivery: delivery-<id_delivery> and order-<id>/client-<id> of the orders referencing it.
-- Deferred like "order", so a delivery created and assigned in one transaction reaches them.
CREATE OR REPLACE FUNCTION realtime.delivery_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r record;
    rooms text[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        r := OLD;
    ELSE
        r := NEW;
    END IF;
    rooms := ARRAY['delivery-' || r.id_delivery];
    IF TG_OP = 'DELETE' THEN
        rooms := realtime.rooms_union(rooms, realtime.stashed_rooms('delivery', r.id_delivery));
    END IF;
    rooms := realtime.rooms_union(rooms, realtime.delivery_order_rooms(r.id_delivery));
    PERFORM realtime.emit_change('delivery', TG_OP, TG_TABLE_NAME, rooms,
                                 row_to_json(OLD), row_to_json(NEW));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION realtime.delivery_stash_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM realtime.stash_rooms('delivery', OLD.id_delivery,
                                 realtime.delivery_order_rooms(OLD.id_delivery));
    RETURN OLD;
END
$$;

-- (Re)attaches the marketplace triggers to the public tables that exist; returns the tables it
-- attached to. The migration calls it; a DBA who creates the tables later calls it again.
CREATE OR REPLACE FUNCTION realtime.attach_marketplace()
RETURNS text[]
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    done text[] := '{}';
BEGIN
    PERFORM realtime.detach_marketplace();
    IF to_regclass('public."order"') IS NOT NULL AND to_regclass('public.product_order') IS NOT NULL
       AND to_regclass('public.product') IS NOT NULL THEN
        CREATE CONSTRAINT TRIGGER realtime_order
            AFTER INSERT OR UPDATE OR DELETE ON public."order"
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION realtime.order_trigger();
        CREATE TRIGGER realtime_order_stash
            BEFORE DELETE ON public."order"
            FOR EACH ROW EXECUTE FUNCTION realtime.order_stash_trigger();
        done := done || 'order'::text;
    END IF;
    IF to_regclass('public.product') IS NOT NULL THEN
        CREATE TRIGGER realtime_product
            AFTER INSERT OR UPDATE OR DELETE ON public.product
            FOR EACH ROW EXECUTE FUNCTION realtime.product_trigger();
        done := done || 'product'::text;
    END IF;
    IF to_regclass('public.delivery') IS NOT NULL AND to_regclass('public."order"') IS NOT NULL THEN
        CREATE CONSTRAINT TRIGGER realtime_delivery
            AFTER INSERT OR UPDATE OR DELETE ON public.delivery
            DEFERRABLE INITIALLY DEFERRED
            FOR EACH ROW EXECUTE FUNCTION realtime.delivery_trigger();
        CREATE TRIGGER realtime_delivery_stash
            BEFORE DELETE ON public.delivery
            FOR EACH ROW EXECUTE FUNCTION realtime.delivery_stash_trigger();
        done := done || 'delivery'::text;
    END IF;
    RETURN done;
END
$$;

-- Removes the marketplace triggers: stops publishing marketplace changes until the next attach.
CREATE OR REPLACE FUNCTION realtime.detach_marketplace()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF to_regclass('public."order"') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS realtime_order ON public."order";
        DROP TRIGGER IF EXISTS realtime_order_stash ON public."order";
    END IF;
    IF to_regclass('public.product') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS realtime_product ON public.product;
    END IF;
    IF to_regclass('public.delivery') IS NOT NULL THEN
        DROP TRIGGER IF EXISTS realtime_delivery ON public.delivery;
        DROP TRIGGER IF EXISTS realtime_delivery_stash ON public.delivery;
    END IF;
END
$$;

-- Generic trigger installed by realtime.watch(). Arguments: event name prefix, the primary key
-- columns as a JSON array, then room templates. Rooms: <name>-<pk> (composite keys joined with
-- ':'), then each template with {col} replaced by the row's value (old and new row on UPDATE).
-- A template whose column is NULL is skipped; a room that comes out invalid is skipped with a
-- WARNING rather than failing the application's transaction.
CREATE OR REPLACE FUNCTION realtime.watch_trigger()
RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    name text := TG_ARGV[0];
    pk_cols text[] := ARRAY(SELECT json_array_elements_text(TG_ARGV[1]::json));
    versions jsonb[];
    j jsonb;
    candidates text[] := '{}';
    rooms text[] := '{}';
    pk text;
    room text;
    m text[];
    ok boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        versions := ARRAY[to_jsonb(OLD)];
    ELSIF TG_OP = 'UPDATE' THEN
        versions := ARRAY[to_jsonb(NEW), to_jsonb(OLD)];
    ELSE
        versions := ARRAY[to_jsonb(NEW)];
    END IF;
    FOREACH j IN ARRAY versions LOOP
        SELECT string_agg(j ->> c.col, ':' ORDER BY c.ord) INTO pk
          FROM unnest(pk_cols) WITH ORDINALITY AS c(col, ord);
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
        IF room !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
            RAISE WARNING 'realtime.watch(%): room % is not a valid room name, skipped',
                TG_TABLE_NAME, quote_literal(room);
        ELSE
            rooms := realtime.rooms_union(rooms, ARRAY[room]);
        END IF;
    END LOOP;
    IF cardinality(rooms) > 0 THEN
        PERFORM realtime.emit_change(name, TG_OP, TG_TABLE_NAME, rooms,
                                     row_to_json(OLD), row_to_json(NEW));
    END IF;
    RETURN NULL;
END
$$;

-- Publishes <name>_created|_updated|_deleted for every row change of tbl, to <name>-<primary
-- key> plus extra_rooms templates such as 'client-{id_client}'. Calling it again replaces the
-- previous watch; re-run it after changing the table's primary key.
CREATE OR REPLACE FUNCTION realtime.watch(tbl regclass, name text, extra_rooms text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pk_cols text[];
    t text;
    m text[];
    args text := '';
BEGIN
    IF name IS NULL OR name !~ '^[A-Za-z0-9_.:-]{1,100}$' THEN
        RAISE EXCEPTION 'realtime.watch: name % must match ^[A-Za-z0-9_.:-]{1,100}$',
            coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT relnamespace FROM pg_class WHERE oid = tbl) = 'realtime'::regnamespace THEN
        -- Publishing inserts into realtime.events: watching it would recurse forever.
        RAISE EXCEPTION 'realtime.watch: cannot watch % in schema realtime', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk_cols
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = tbl AND i.indisprimary;
    IF pk_cols IS NULL THEN
        RAISE EXCEPTION 'realtime.watch: % has no primary key', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH t IN ARRAY coalesce(extra_rooms, '{}') LOOP
        IF t IS NULL OR regexp_replace(t, '\{[^{}]+\}', 'x', 'g') !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
            RAISE EXCEPTION 'realtime.watch: invalid room template %', coalesce(quote_literal(t), 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR m IN SELECT regexp_matches(t, '\{([^{}]+)\}', 'g') LOOP
            IF NOT EXISTS (SELECT 1 FROM pg_attribute
                            WHERE attrelid = tbl AND attname = m[1] AND attnum > 0 AND NOT attisdropped) THEN
                RAISE EXCEPTION 'realtime.watch: template % names unknown column % of %', t, m[1], tbl
                    USING ERRCODE = 'undefined_column';
            END IF;
        END LOOP;
        args := args || ', ' || quote_literal(t);
    END LOOP;
    EXECUTE format('DROP TRIGGER IF EXISTS realtime_watch ON %s', tbl);
    EXECUTE format('CREATE TRIGGER realtime_watch AFTER INSERT OR UPDATE OR DELETE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION realtime.watch_trigger(%L, %L%s)',
                   tbl, name, to_json(pk_cols)::text, args);
END
$$;

CREATE OR REPLACE FUNCTION realtime.unwatch(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS realtime_watch ON %s', tbl);
END
$$;

DO $$ BEGIN PERFORM realtime.attach_marketplace(); END $$;

COMMIT;
