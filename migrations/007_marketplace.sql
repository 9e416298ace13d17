-- roomcast 007: the triggers attach themselves to the REST service's tables whenever they appear
-- (it creates them with TypeORM `synchronize`, possibly after these migrations, and may drop and
-- create them again at boot), a registry of realtime.watch tables (also tables that do not exist
-- yet), realtime.trigger_status(), realtime.identity(claims) (token sub -> seller/client id) and
-- the n8n rooms `sellers`/`clients`/`admin` in can_join. Re-runnable:
-- psql -v ON_ERROR_STOP=1 -f 007_marketplace.sql
--
-- How the triggers reach tables created later:
--   * realtime.attach_triggers() attaches every missing roomcast trigger to the watched tables
--     that exist and returns how many tables it attached to; nothing to do costs one catalog
--     query per watched table. SECURITY DEFINER: it runs as the role that ran the migrations,
--     which must be able to create triggers on the REST service's tables (their owner, a
--     superuser, or a role holding TRIGGER on them).
--   * an event trigger (ddl_command_end on CREATE TABLE, CREATE TABLE AS, SELECT INTO and ALTER
--     TABLE) calls it inside the transaction that created or renamed the table, so a table
--     dropped and created again (TypeORM re-synchronizing) has its trigger before anyone can
--     write to it. Event triggers need a superuser: when the migrating role is not one, the
--     migration says so with a NOTICE and roomcast's periodic call of attach_triggers() (every
--     ~10 s) does the same work, with a window of up to that long in which changes to a new
--     table publish nothing.
--   * the event trigger never fails the DDL: an error while attaching (a lock timeout, missing
--     privilege, a watch template naming a column the new table lacks) is a WARNING, and the
--     next call tries again.
-- The "order" triggers read product_order and product at commit, and the delivery triggers read
-- "order": they are attached only once those tables exist too (until then "order"/delivery
-- count as missing in trigger_status), so a trigger never aborts the REST service's
-- transaction over a table it has not created yet.
BEGIN;
SET LOCAL client_min_messages = warning;
SET LOCAL lock_timeout = '30s';

-- realtime.watch registrations, kept so that the trigger is attached again when the table is
-- created (or re-created) later. Written only by realtime.watch/unwatch as the DBA: a row here
-- makes attach_triggers (running as the migrating role) publish that table's rows.
CREATE TABLE IF NOT EXISTS realtime.watched (
    schema_name text NOT NULL,
    table_name text NOT NULL,
    name text NOT NULL,
    extra_rooms text[] NOT NULL DEFAULT '{}',
    registered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT watched_pkey PRIMARY KEY (schema_name, table_name)
);
COMMENT ON TABLE realtime.watched IS
    'roomcast: tables registered with realtime.watch, attached by realtime.attach_triggers() (see 007_marketplace.sql)';
REVOKE ALL ON realtime.watched FROM PUBLIC;

-- Watches made before this migration: read back from their triggers' arguments (event name
-- prefix, primary key columns as JSON, room templates; none of them can hold a NUL or a
-- backslash, so the escape encoding splits cleanly).
INSERT INTO realtime.watched (schema_name, table_name, name, extra_rooms)
SELECT n.nspname, c.relname, a.args[1], coalesce(a.args[3:cardinality(a.args) - 1], '{}')
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN LATERAL (SELECT string_to_array(encode(t.tgargs, 'escape'), '\000') AS args) a
 WHERE t.tgname = 'realtime_watch' AND NOT t.tgisinternal AND t.tgnargs >= 2
ON CONFLICT ON CONSTRAINT watched_pkey DO NOTHING;

-- Has table rel every trigger named in names?
CREATE OR REPLACE FUNCTION realtime.has_triggers(rel regclass, names text[])
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT count(DISTINCT t.tgname) = cardinality(names)
      FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = rel AND t.tgname = ANY (names) AND NOT t.tgisinternal
$$;
REVOKE ALL ON FUNCTION realtime.has_triggers(regclass, text[]) FROM PUBLIC;

-- Attaches realtime.watch's trigger to tbl (002's realtime.watch, unchanged): validates name and
-- templates against the table, then replaces the trigger. Raises on a bad argument.
CREATE OR REPLACE FUNCTION realtime.watch_attach(tbl regclass, name text, extra_rooms text[])
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
REVOKE ALL ON FUNCTION realtime.watch_attach(regclass, text, text[]) FROM PUBLIC;

-- As in 002, and the table is recorded in realtime.watched so that the trigger comes back when
-- the table is dropped and created again.
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
END
$$;

-- The same by name, for a table that may not exist yet ('coupons' or 'public.coupons'; an
-- unqualified name is in schema public). A string literal argument picks this overload. When
-- the table exists this is realtime.watch(regclass, ...); when it does not, the registration is
-- recorded (name and templates checked as far as possible without the table) and
-- realtime.attach_triggers() attaches it once the table is created.
CREATE OR REPLACE FUNCTION realtime.watch(tbl text, name text, extra_rooms text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[];
    rel regclass;
    t text;
BEGIN
    parts := parse_ident(tbl);
    IF cardinality(parts) = 1 THEN
        parts := ARRAY['public', parts[1]];
    ELSIF cardinality(parts) <> 2 THEN
        RAISE EXCEPTION 'realtime.watch: % is not a [schema.]table name', quote_literal(tbl)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF parts[1] = 'realtime' THEN
        RAISE EXCEPTION 'realtime.watch: cannot watch % in schema realtime', tbl
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    rel := to_regclass(format('%I.%I', parts[1], parts[2]));
    IF rel IS NOT NULL THEN
        PERFORM realtime.watch(rel, name, extra_rooms);
        RETURN;
    END IF;
    IF name IS NULL OR name !~ '^[A-Za-z0-9_.:-]{1,100}$' THEN
        RAISE EXCEPTION 'realtime.watch: name % must match ^[A-Za-z0-9_.:-]{1,100}$',
            coalesce(quote_literal(name), 'NULL') USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH t IN ARRAY coalesce(extra_rooms, '{}') LOOP
        IF t IS NULL OR regexp_replace(t, '\{[^{}]+\}', 'x', 'g') !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
            RAISE EXCEPTION 'realtime.watch: invalid room template %', coalesce(quote_literal(t), 'NULL')
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END LOOP;
    INSERT INTO realtime.watched AS w (schema_name, table_name, name, extra_rooms)
    VALUES (parts[1], parts[2], watch.name, coalesce(watch.extra_rooms, '{}'))
    ON CONFLICT ON CONSTRAINT watched_pkey
    DO UPDATE SET name = EXCLUDED.name, extra_rooms = EXCLUDED.extra_rooms, registered_at = now();
    RAISE NOTICE 'realtime.watch: %.% does not exist yet; its trigger is attached when it is created',
        parts[1], parts[2];
END
$$;

-- Stops publishing tbl's changes and forgets the registration.
CREATE OR REPLACE FUNCTION realtime.unwatch(tbl regclass)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS realtime_watch ON %s', tbl);
    DELETE FROM realtime.watched w
     USING pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl AND w.schema_name = n.nspname AND w.table_name = c.relname;
END
$$;

CREATE OR REPLACE FUNCTION realtime.unwatch(tbl text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    parts text[] := parse_ident(tbl);
    rel regclass;
BEGIN
    IF cardinality(parts) = 1 THEN
        parts := ARRAY['public', parts[1]];
    END IF;
    rel := to_regclass(format('%I.%I', parts[1], parts[2]));
    IF rel IS NOT NULL THEN
        EXECUTE format('DROP TRIGGER IF EXISTS realtime_watch ON %s', rel);
    END IF;
    DELETE FROM realtime.watched WHERE schema_name = parts[1] AND table_name = parts[2];
END
$$;

-- Only the DBA (the migrating role, and roles it grants) registers tables: a registration makes
-- attach_triggers publish that table's rows.
REVOKE ALL ON FUNCTION realtime.watch(regclass, text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.watch(text, text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.unwatch(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.unwatch(text) FROM PUBLIC;

-- One row per table roomcast is meant to watch: the three marketplace tables, then every
-- realtime.watch registration. state: 'ok', 'table_missing' (for "order" also while
-- product_order or product is missing, for delivery while "order" is), 'trigger_missing'.
-- table_name is schema-qualified and quoted as needed (public."order").
CREATE OR REPLACE FUNCTION realtime.trigger_status()
RETURNS TABLE (table_name text, state text)
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    rel regclass;
    w record;
BEGIN
    rel := to_regclass('public."order"');
    table_name := 'public."order"';
    state := CASE WHEN rel IS NULL OR to_regclass('public.product_order') IS NULL
                       OR to_regclass('public.product') IS NULL THEN 'table_missing'
                  WHEN realtime.has_triggers(rel, '{realtime_order,realtime_order_stash}') THEN 'ok'
                  ELSE 'trigger_missing' END;
    RETURN NEXT;

    rel := to_regclass('public.product');
    table_name := 'public.product';
    state := CASE WHEN rel IS NULL THEN 'table_missing'
                  WHEN realtime.has_triggers(rel, '{realtime_product}') THEN 'ok'
                  ELSE 'trigger_missing' END;
    RETURN NEXT;

    rel := to_regclass('public.delivery');
    table_name := 'public.delivery';
    state := CASE WHEN rel IS NULL OR to_regclass('public."order"') IS NULL THEN 'table_missing'
                  WHEN realtime.has_triggers(rel, '{realtime_delivery,realtime_delivery_stash}') THEN 'ok'
                  ELSE 'trigger_missing' END;
    RETURN NEXT;

    FOR w IN SELECT wd.schema_name, wd.table_name AS tname FROM realtime.watched wd
              ORDER BY wd.schema_name, wd.table_name LOOP
        table_name := format('%I.%I', w.schema_name, w.tname);
        rel := to_regclass(table_name);
        state := CASE WHEN rel IS NULL THEN 'table_missing'
                      WHEN realtime.has_triggers(rel, '{realtime_watch}') THEN 'ok'
                      ELSE 'trigger_missing' END;
        RETURN NEXT;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION realtime.trigger_status() FROM PUBLIC;

-- Attaches every missing roomcast trigger to the watched tables that exist (see the top of this
-- file); returns how many tables it attached triggers to. A table it cannot attach to (lock
-- timeout, privilege, a watch template naming a column the table lacks) is a WARNING and is
-- tried again on the next call. Safe to call concurrently: the attach of one table holds that
-- table's lock and checks again under it.
CREATE OR REPLACE FUNCTION realtime.attach_triggers()
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET client_min_messages = warning
SET search_path = pg_catalog, pg_temp
-- Short: roomcast calls this from its query connection, and inside the REST service's DDL the
-- table is usually its own new one.
SET lock_timeout = '2s'
AS $$
DECLARE
    s record;
    w record;
    rel regclass;
    attached integer := 0;
BEGIN
    FOR s IN SELECT * FROM realtime.trigger_status() WHERE trigger_status.state = 'trigger_missing' LOOP
        rel := to_regclass(s.table_name);
        BEGIN
            EXECUTE format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', rel);
            IF s.table_name = 'public."order"' THEN
                IF NOT realtime.has_triggers(rel, '{realtime_order}') THEN
                    CREATE CONSTRAINT TRIGGER realtime_order
                        AFTER INSERT OR UPDATE OR DELETE ON public."order"
                        DEFERRABLE INITIALLY DEFERRED
                        FOR EACH ROW EXECUTE FUNCTION realtime.order_trigger();
                END IF;
                IF NOT realtime.has_triggers(rel, '{realtime_order_stash}') THEN
                    CREATE TRIGGER realtime_order_stash
                        BEFORE DELETE ON public."order"
                        FOR EACH ROW EXECUTE FUNCTION realtime.order_stash_trigger();
                END IF;
            ELSIF s.table_name = 'public.product' THEN
                IF NOT realtime.has_triggers(rel, '{realtime_product}') THEN
                    CREATE TRIGGER realtime_product
                        AFTER INSERT OR UPDATE OR DELETE ON public.product
                        FOR EACH ROW EXECUTE FUNCTION realtime.product_trigger();
                END IF;
            ELSIF s.table_name = 'public.delivery' THEN
                IF NOT realtime.has_triggers(rel, '{realtime_delivery}') THEN
                    CREATE CONSTRAINT TRIGGER realtime_delivery
                        AFTER INSERT OR UPDATE OR DELETE ON public.delivery
                        DEFERRABLE INITIALLY DEFERRED
                        FOR EACH ROW EXECUTE FUNCTION realtime.delivery_trigger();
                END IF;
                IF NOT realtime.has_triggers(rel, '{realtime_delivery_stash}') THEN
                    CREATE TRIGGER realtime_delivery_stash
                        BEFORE DELETE ON public.delivery
                        FOR EACH ROW EXECUTE FUNCTION realtime.delivery_stash_trigger();
                END IF;
            ELSE
                SELECT wd.name, wd.extra_rooms INTO w
                  FROM realtime.watched wd
                  JOIN pg_class c ON c.relname = wd.table_name
                  JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = wd.schema_name
                 WHERE c.oid = rel;
                IF FOUND AND NOT realtime.has_triggers(rel, '{realtime_watch}') THEN
                    PERFORM realtime.watch_attach(rel, w.name, w.extra_rooms);
                END IF;
            END IF;
            attached := attached + 1;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'realtime.attach_triggers: % not attached: %', s.table_name, SQLERRM
                USING HINT = 'the next call of realtime.attach_triggers() tries again';
        END;
    END LOOP;
    RETURN attached;
END
$$;
REVOKE ALL ON FUNCTION realtime.attach_triggers() FROM PUBLIC;

-- The event trigger's function: attach_triggers() after DDL that can create or rename a table,
-- never failing that DDL. SECURITY DEFINER: the DDL runs as the REST service's role, which has
-- no privilege in schema realtime.
CREATE OR REPLACE FUNCTION realtime.ddl_attach_triggers()
RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n integer;
BEGIN
    n := realtime.attach_triggers();
EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'realtime.attach_triggers after %: %', tg_tag, SQLERRM;
END
$$;
REVOKE ALL ON FUNCTION realtime.ddl_attach_triggers() FROM PUBLIC;

-- The event trigger itself, when the migrating role may create one.
DO $$
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        DROP EVENT TRIGGER IF EXISTS realtime_attach_triggers;
        CREATE EVENT TRIGGER realtime_attach_triggers ON ddl_command_end
            WHEN TAG IN ('CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE')
            EXECUTE FUNCTION realtime.ddl_attach_triggers();
    ELSE
        -- Shown although this file keeps client_min_messages at warning.
        PERFORM set_config('client_min_messages', 'notice', true);
        RAISE NOTICE USING MESSAGE =
            'roomcast 007: ' || current_user || ' is not a superuser, so no event trigger: '
            'roomcast attaches the triggers to tables created later by calling '
            'realtime.attach_triggers() every ~10 s (or run it yourself after creating them)';
        PERFORM set_config('client_min_messages', 'warning', true);
    END IF;
END
$$;

-- Token claims -> the marketplace ids of its user: {"seller_id": <id or null>, "client_id":
-- <id or null>} from seller.user_id / client.user_id = the claims' sub (the auth service's
-- user uuid). roomcast calls it once per connection whose token carries no seller/client id and
-- passes the ids it returns to realtime.can_join within the claims. Never raises for a sub that
-- is not a uuid (nulls) or while the tables do not exist. A DBA may replace it (CREATE OR
-- REPLACE FUNCTION realtime.identity(claims jsonb) RETURNS jsonb ...); this migration creates it
-- only when it does not exist, so re-running it keeps a replacement.
DO $do$
BEGIN
    IF to_regprocedure('realtime.identity(jsonb)') IS NULL THEN
        EXECUTE $fn$
CREATE FUNCTION realtime.identity(claims jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    v_sub text;
    v_seller bigint;
    v_client bigint;
BEGIN
    IF jsonb_typeof(claims) = 'object' AND jsonb_typeof(claims -> 'sub') = 'string' THEN
        v_sub := lower(claims ->> 'sub');
    END IF;
    -- uuid's text form, as user_id::text prints it; anything else matches no row.
    IF v_sub ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        IF to_regclass('public.seller') IS NOT NULL THEN
            SELECT min(s.id_seller) INTO v_seller FROM public.seller s WHERE s.user_id::text = v_sub;
        END IF;
        IF to_regclass('public.client') IS NOT NULL THEN
            SELECT min(c.id_client) INTO v_client FROM public.client c WHERE c.user_id::text = v_sub;
        END IF;
    END IF;
    RETURN jsonb_build_object('seller_id', v_seller, 'client_id', v_client);
END
$$
        $fn$;
        -- It reveals who is who: callable by its owner (roomcast's role) and roles a DBA grants.
        REVOKE ALL ON FUNCTION realtime.identity(jsonb) FROM PUBLIC;
    END IF;
END
$do$;

-- can_join as in 003, plus the rooms the n8n workflows post to: `sellers` for role seller,
-- `clients` for role client (`admin` for role admin, who may join any room anyway). Replaced
-- only while it is 003's default (or this one): a DBA's own policy is kept, with a NOTICE.
DO $do$
DECLARE
    body text := $body$
DECLARE
    v_role text := lower(coalesce(claims ->> 'role', ''));
    v_sub text := coalesce(nullif(claims ->> 'sub', ''), nullif(claims ->> 'user_id', ''),
                           nullif(claims ->> 'id', ''));
    v_client_ids text[];
    v_seller_ids text[];
    v_kind text;
    v_id_text text;
    v_id bigint;
    v_pattern text;
BEGIN
    IF claims IS NULL OR jsonb_typeof(claims) <> 'object' OR room IS NULL
       OR room !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
        RETURN false;
    END IF;
    IF v_role = 'admin' THEN
        RETURN true;
    END IF;
    IF room = 'admins' OR room = 'admin' THEN
        RETURN false;
    END IF;
    -- The n8n workflows' broadcast rooms (007).
    IF room = 'sellers' THEN
        RETURN v_role = 'seller';
    END IF;
    IF room = 'clients' THEN
        RETURN v_role = 'client';
    END IF;
    IF jsonb_typeof(claims -> 'rooms') = 'array' THEN
        FOR v_pattern IN SELECT jsonb_array_elements_text(claims -> 'rooms') LOOP
            -- * is the only wildcard: escape LIKE's own metacharacters first.
            IF room LIKE replace(replace(replace(replace(v_pattern, '\', '\\'), '%', '\%'),
                                         '_', '\_'), '*', '%') THEN
                RETURN true;
            END IF;
        END LOOP;
    END IF;

    v_kind := substring(room FROM '^([a-z]+)-[0-9]{1,18}$');
    IF v_kind IS NULL THEN
        RETURN false;
    END IF;
    v_id_text := substring(room FROM '-([0-9]{1,18})$');
    v_id := v_id_text::bigint;
    v_client_ids := array_remove(ARRAY[claims ->> 'client_id', claims ->> 'id_client'], NULL);
    v_seller_ids := array_remove(ARRAY[claims ->> 'seller_id', claims ->> 'id_seller',
                                       CASE WHEN v_role = 'seller' THEN claims ->> 'reference_id' END],
                                 NULL);

    CASE v_kind
    WHEN 'user' THEN
        RETURN v_sub IS NOT NULL AND v_sub = v_id_text;
    WHEN 'product' THEN
        RETURN true;
    WHEN 'client' THEN
        IF v_id_text = ANY (v_client_ids) THEN
            RETURN true;
        END IF;
        IF v_sub IS NULL OR to_regclass('public.client') IS NULL THEN
            RETURN false;
        END IF;
        RETURN EXISTS (SELECT 1 FROM public.client c
                        WHERE c.id_client = v_id AND c.user_id::text = v_sub);
    WHEN 'seller' THEN
        IF v_id_text = ANY (v_seller_ids) THEN
            RETURN true;
        END IF;
        IF v_sub IS NULL OR to_regclass('public.seller') IS NULL THEN
            RETURN false;
        END IF;
        RETURN EXISTS (SELECT 1 FROM public.seller s
                        WHERE s.id_seller = v_id AND s.user_id::text = v_sub);
    WHEN 'order', 'delivery' THEN
        IF to_regclass('public."order"') IS NULL OR to_regclass('public.client') IS NULL
           OR to_regclass('public.product_order') IS NULL OR to_regclass('public.product') IS NULL
           OR to_regclass('public.seller') IS NULL THEN
            RETURN false;
        END IF;
        IF v_kind = 'order' THEN
            RETURN realtime.order_member(v_id, v_sub, v_client_ids, v_seller_ids);
        END IF;
        RETURN EXISTS (SELECT 1 FROM public."order" o
                        WHERE o.id_delivery = v_id
                          AND realtime.order_member(o.id_order, v_sub, v_client_ids, v_seller_ids));
    ELSE
        RETURN false;
    END CASE;
END
$body$;
    cur text;
BEGIN
    SELECT prosrc INTO cur FROM pg_proc WHERE oid = to_regprocedure('realtime.can_join(jsonb,text)');
    IF cur IS NULL OR md5(cur) = '02ce7c8f3610ccddf612a0e8a7869170' OR cur = body THEN
        EXECUTE 'CREATE OR REPLACE FUNCTION realtime.can_join(claims jsonb, room text) '
                'RETURNS boolean LANGUAGE plpgsql STABLE SECURITY DEFINER '
                'SET search_path = pg_catalog, pg_temp AS ' || quote_literal(body);
        REVOKE ALL ON FUNCTION realtime.can_join(jsonb, text) FROM PUBLIC;
    ELSE
        RAISE NOTICE 'roomcast 007: realtime.can_join was replaced by a DBA and is kept; it should '
                     'let role seller join `sellers`, client `clients` and admin `admin` (see README)';
    END IF;
END
$do$;

-- Tables created before this migration (or between 002 and now) get their triggers now.
DO $$ BEGIN PERFORM realtime.attach_triggers(); END $$;

COMMIT;
