-- roomcast 009: any PostgreSQL application's own NOTIFY channels and live SQL rooms.
-- Re-runnable: psql -v ON_ERROR_STOP=1 -f 009_listen.sql
--
-- realtime.listen(channel, room_template, event) makes every roomcast replica LISTEN on an
-- application's existing channel: each notification becomes an ephemeral event for the room
-- the template names once filled from the payload's fields ('parking-{espacio_id}').
-- realtime.live_room(pattern, query, every, event) makes roomcast run a query for each room
-- matching the pattern while that room has members, and push its first row when it changes.
-- Both tables are read by roomcast at connect and again whenever the functions below change
-- them: they NOTIFY roomcast_config, so changes are taken live, without a restart. Writing the
-- tables directly works too, followed by SELECT pg_notify('roomcast_config', '').
BEGIN;
SET LOCAL client_min_messages = warning;

CREATE TABLE IF NOT EXISTS realtime.listens (
    channel       text PRIMARY KEY
                  CHECK (length(channel) BETWEEN 1 AND 63
                         AND channel NOT IN ('realtime_events', 'roomcast_probe',
                                             'roomcast_config')),
    room_template text NOT NULL CHECK (length(room_template) BETWEEN 1 AND 256),
    event         text CHECK (event IS NULL OR length(event) BETWEEN 1 AND 128),
    created_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS realtime.live_rooms (
    pattern    text PRIMARY KEY CHECK (length(pattern) BETWEEN 1 AND 256),
    query      text NOT NULL CHECK (length(query) > 0),
    every      interval NOT NULL CHECK (every >= interval '1 second'),
    event      text NOT NULL DEFAULT 'stats' CHECK (length(event) BETWEEN 1 AND 128),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION realtime.listen(channel text, room_template text,
                                           event text DEFAULT NULL)
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO realtime.listens (channel, room_template, event)
    VALUES (listen.channel, listen.room_template, listen.event)
    ON CONFLICT ON CONSTRAINT listens_pkey DO UPDATE
       SET room_template = excluded.room_template, event = excluded.event;
    SELECT pg_notify('roomcast_config', 'listens');
$$;

CREATE OR REPLACE FUNCTION realtime.unlisten(channel text)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_notify('roomcast_config', 'listens');
    WITH d AS (DELETE FROM realtime.listens l WHERE l.channel = unlisten.channel RETURNING 1)
    SELECT count(*) > 0 FROM d;
$$;

CREATE OR REPLACE FUNCTION realtime.live_room(pattern text, query text, every interval,
                                              event text DEFAULT 'stats')
RETURNS void
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO realtime.live_rooms (pattern, query, every, event)
    VALUES (live_room.pattern, live_room.query, live_room.every,
            coalesce(live_room.event, 'stats'))
    ON CONFLICT ON CONSTRAINT live_rooms_pkey DO UPDATE
       SET query = excluded.query, every = excluded.every, event = excluded.event;
    SELECT pg_notify('roomcast_config', 'live_rooms');
$$;

CREATE OR REPLACE FUNCTION realtime.drop_live_room(pattern text)
RETURNS boolean
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_notify('roomcast_config', 'live_rooms');
    WITH d AS (DELETE FROM realtime.live_rooms l WHERE l.pattern = drop_live_room.pattern
               RETURNING 1)
    SELECT count(*) > 0 FROM d;
$$;

-- Only the owner (the DBA who ran the migrations) registers channels and queries by default:
-- a live room's query runs with roomcast's own rights.
REVOKE ALL ON FUNCTION realtime.listen(text, text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.unlisten(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.live_room(text, text, interval, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION realtime.drop_live_room(text) FROM PUBLIC;

COMMIT;
