-- roomcast 005 down: the functions as 002 (triggers) and 004 (publish) defined them, where they
-- still exist, and without append/emit_row. Re-runnable (also after 001 down removed the schema).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regprocedure('realtime.publish(text,text[],jsonb,jsonb)') IS NOT NULL THEN
        EXECUTE $fn$
CREATE OR REPLACE FUNCTION realtime.publish(event text, rooms text[], data jsonb,
                                            meta jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    r text;
    ev realtime.events%ROWTYPE;
    payload text;
BEGIN
    -- Transaction-local (is_local = true): it lasts until the caller's transaction ends, is
    -- undone with a rolled-back savepoint together with the row, and survives this function's
    -- own SET clause, which restores only search_path.
    IF current_setting('synchronous_commit') = 'off' THEN
        PERFORM set_config('synchronous_commit', 'on', true);
    END IF;
    IF publish.event IS NULL OR publish.event = '' THEN
        RAISE EXCEPTION 'realtime.publish: event must not be empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF publish.rooms IS NULL OR cardinality(publish.rooms) = 0 THEN
        RAISE EXCEPTION 'realtime.publish: at least one room is required (event %)', publish.event
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH r IN ARRAY publish.rooms LOOP
        IF r IS NULL OR r !~ '^[A-Za-z0-9_.:-]{1,128}$' THEN
            RAISE EXCEPTION 'realtime.publish: invalid room name %', coalesce(quote_literal(r), 'NULL')
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'rooms match ^[A-Za-z0-9_.:-]{1,128}$';
        END IF;
    END LOOP;

    INSERT INTO realtime.events (event, rooms, data, meta)
    VALUES (publish.event, publish.rooms, coalesce(publish.data, '{}'), coalesce(publish.meta, '{}'))
    RETURNING * INTO ev;

    payload := realtime.event_json(ev);
    -- NOTIFY refuses payloads of 8000 bytes or more; the server reads large events from the row.
    IF octet_length(payload) > 7900 THEN
        payload := '{"id":' || ev.id || ',"xid":"' || ev.xid::text || '","large":true}';
    END IF;
    PERFORM pg_notify('realtime_events', payload);
    RETURN ev.id;
END
$$
        $fn$;
        REVOKE ALL ON FUNCTION realtime.publish(text, text[], jsonb, jsonb) FROM PUBLIC;
    END IF;
    IF to_regprocedure('realtime.order_trigger()') IS NOT NULL THEN
        EXECUTE $fn$
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
$$
        $fn$;
    END IF;
    IF to_regprocedure('realtime.product_trigger()') IS NOT NULL THEN
        EXECUTE $fn$
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
$$
        $fn$;
    END IF;
    IF to_regprocedure('realtime.delivery_trigger()') IS NOT NULL THEN
        EXECUTE $fn$
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
$$
        $fn$;
    END IF;
    IF to_regprocedure('realtime.watch_trigger()') IS NOT NULL THEN
        EXECUTE $fn$
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
$$
        $fn$;
    END IF;
END
$down$;

DROP FUNCTION IF EXISTS realtime.emit_row(text, text, text, oid, text[], jsonb, jsonb);
DROP FUNCTION IF EXISTS realtime.append(text, text[], jsonb, jsonb);

COMMIT;
