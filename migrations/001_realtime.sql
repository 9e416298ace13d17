-- roomcast 001: schema `realtime`, the outbox `realtime.events`, its one SQL door
-- `realtime.publish` (insert + NOTIFY realtime_events in the caller's transaction), the payload
-- format `realtime.event_json` and retention (`realtime.prune`, `realtime.outbox_state`).
-- One transaction; re-runnable: psql -v ON_ERROR_STOP=1 -f 001_realtime.sql
BEGIN;
SET LOCAL client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS realtime;
COMMENT ON SCHEMA realtime IS 'roomcast: outbox, triggers and room policy (see roomcast README)';

-- `roomcast migrate` also creates this table before applying anything, so that it can record 001.
CREATE TABLE IF NOT EXISTS realtime.schema_migrations (
    version text PRIMARY KEY,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- The outbox. Ids are assigned at insert but become visible at commit, so ids alone cannot be a
-- replay cursor: `xid` is the inserting transaction and `snap_xmin` the oldest transaction still
-- running when the row was inserted (every transaction unfinished at that moment has an
-- xid >= snap_xmin), which lets the server bound a cursor that loses nothing.
CREATE TABLE IF NOT EXISTS realtime.events (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    snap_xmin xid8 NOT NULL DEFAULT pg_snapshot_xmin(pg_current_snapshot()),
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    event text NOT NULL,
    rooms text[] NOT NULL,
    data jsonb NOT NULL DEFAULT '{}',
    meta jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_xid_idx ON realtime.events (xid);
-- Replay: WHERE rooms @> ARRAY[$room] AND (id > $since OR xid >= $floor) ORDER BY id
CREATE INDEX IF NOT EXISTS events_rooms_idx ON realtime.events USING gin (rooms);
-- Pruning: WHERE created_at < now() - retention
CREATE INDEX IF NOT EXISTS events_created_at_idx ON realtime.events (created_at);

-- One row: the highest id prune() ever deleted. A client resuming with since < pruned_through
-- may have missed pruned rows, so the server answers recovered:false.
CREATE TABLE IF NOT EXISTS realtime.outbox_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0,
    pruned_at timestamptz
);
INSERT INTO realtime.outbox_state (singleton) VALUES (true) ON CONFLICT DO NOTHING;

-- An outbox row as the JSON text NOTIFY carries: {"id":…,"xid":"…","ts":"…","event":…,
-- "rooms":[…],"data":…,"meta":…}, ts in UTC with milliseconds. The server reads large events and
-- replays with it too, so live and replayed events are byte-identical. The envelope is built by
-- hand because json(b)_build_object would add spaces and reorder keys; data and meta are jsonb's
-- own text.
CREATE OR REPLACE FUNCTION realtime.event_json(e realtime.events)
RETURNS text
LANGUAGE sql STABLE
AS $$
    SELECT '{"id":' || e.id
        || ',"xid":"' || e.xid::text
        || '","ts":"' || to_char(e.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
        || '","event":' || to_json(e.event)::text
        || ',"rooms":' || to_json(e.rooms)::text
        || ',"data":' || e.data::text
        || ',"meta":' || e.meta::text || '}'
$$;

-- The one SQL door. Rolled back means never delivered: the row and the NOTIFY share the
-- caller's transaction. SECURITY DEFINER so triggers and granted roles need no privilege on
-- the outbox table itself.
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
$$;

CREATE OR REPLACE FUNCTION realtime.publish(event text, room text, data jsonb,
                                            meta jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT realtime.publish(event, ARRAY[room], data, meta) $$;

-- Only the owner (and roles a DBA grants) may publish; triggers call it as its owner.
REVOKE ALL ON FUNCTION realtime.publish(text, text[], jsonb, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.publish(text, text, jsonb, jsonb) FROM PUBLIC;

-- Retention: roomcast calls this with OUTBOX_RETENTION. Returns the number of rows deleted.
-- SECURITY DEFINER like publish, so roomcast's role needs EXECUTE here, not DELETE on the table.
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
$$;
REVOKE ALL ON FUNCTION realtime.prune(interval) FROM PUBLIC;

COMMIT;
