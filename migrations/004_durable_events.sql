-- roomcast 004: every transaction that publishes an event commits synchronously (its commit
-- record is flushed before the NOTIFY goes out), also on clusters that run
-- synchronous_commit = off. Re-runnable: psql -v ON_ERROR_STOP=1 -f 004_durable_events.sql
--
-- Why: with synchronous_commit = off a crash loses the transactions whose commit record was
-- not flushed yet, although listeners may already have received their NOTIFY (notifications
-- go out after the commit is recorded in memory, not after it reaches disk). Recovery then
-- hands out their outbox ids (the identity sequence) and transaction ids again, so roomcast
-- would take new events for duplicates of ones it delivered. With the setting forced for the
-- publishing transaction, PostgreSQL flushes the commit record (RecordTransactionCommit ->
-- XLogFlush) before the transaction ends and before it signals listeners (AtCommit_Notify),
-- and a listener only reads queue entries of transactions it sees as committed: whatever
-- roomcast delivered is durable. Cost: one WAL flush per event-producing commit on such
-- clusters; on the default (on) or any stronger setting nothing changes, because only `off`
-- is raised (to `on`); `local`, `remote_write` and `remote_apply` already flush locally and
-- are kept as they are.
BEGIN;
SET LOCAL client_min_messages = warning;

-- As in 001, plus the set_config at the top. Every other way events are emitted (the text-room
-- overload, emit_change, the marketplace and watch triggers) goes through this function.
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
$$;
REVOKE ALL ON FUNCTION realtime.publish(text, text[], jsonb, jsonb) FROM PUBLIC;

COMMIT;
