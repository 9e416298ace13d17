-- roomcast 004 down: realtime.publish as 001 defined it (no synchronous_commit override), when
-- it still exists (re-runnable, also after 001 down removed the schema).
BEGIN;
SET LOCAL client_min_messages = warning;

DO $down$
BEGIN
    IF to_regprocedure('realtime.publish(text,text[],jsonb,jsonb)') IS NULL THEN
        RETURN;
    END IF;
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
END
$down$;

COMMIT;
