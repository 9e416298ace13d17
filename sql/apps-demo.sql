-- Two applications written for other WebSocket servers, for `APPS_DEMO=1 make run` (loaded
-- after roomcast's migrations by tools/devdb.sh apps-demo). Re-runnable.
--
-- A parking lot whose trigger notifies on its own channel, untouched:
--   psql "$DATABASE_URL" -c "UPDATE espacios SET estado = 'ocupado' WHERE id = 15"
-- reaches rooms `parking` and `parking-15` as event parking_update.
-- An appointments book whose statistics per business are a query:
--   rooms `estadisticas:negocio_123` / `estadisticas:negocio_456` get event `stats` every
--   time the numbers change (checked every 2 s while someone is in the room).
BEGIN;
SET LOCAL client_min_messages = warning;

CREATE TABLE IF NOT EXISTS espacios (
    id     int PRIMARY KEY,
    numero text NOT NULL,
    estado text NOT NULL DEFAULT 'libre'
);
INSERT INTO espacios (id, numero)
SELECT i, 'A-' || i FROM generate_series(1, 20) i
ON CONFLICT (id) DO NOTHING;

CREATE OR REPLACE FUNCTION notify_parking_change()
RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('parking_update',
        json_build_object(
            'espacio_id', NEW.id,
            'estado_anterior', OLD.estado,
            'estado_actual', NEW.estado,
            'timestamp', NOW()
        )::text
    );
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS parking_state_change ON espacios;
CREATE TRIGGER parking_state_change
    AFTER UPDATE ON espacios
    FOR EACH ROW
    EXECUTE FUNCTION notify_parking_change();

CREATE TABLE IF NOT EXISTS citas (
    id         serial PRIMARY KEY,
    negocio_id text NOT NULL,
    fecha      date NOT NULL DEFAULT current_date,
    estado     text NOT NULL DEFAULT 'pendiente'
);
INSERT INTO citas (negocio_id, estado)
SELECT n, e FROM (VALUES ('negocio_123', 'completada'), ('negocio_123', 'pendiente'),
                         ('negocio_456', 'cancelada')) v(n, e)
WHERE NOT EXISTS (SELECT 1 FROM citas);

-- The parking channel, twice: every change to room parking, and to the space's own room (the
-- second registration needs a channel of its own, so the trigger's payload is re-sent there).
SELECT realtime.listen('parking_update', 'parking');
CREATE OR REPLACE FUNCTION notify_parking_space()
RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('parking_space', json_build_object('espacio_id', NEW.id,
                                                         'estado_actual', NEW.estado)::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS parking_space_change ON espacios;
CREATE TRIGGER parking_space_change
    AFTER UPDATE ON espacios
    FOR EACH ROW
    EXECUTE FUNCTION notify_parking_space();
SELECT realtime.listen('parking_space', 'parking-{espacio_id}', 'parking_update');

SELECT realtime.live_room('estadisticas:{negocio_id}', $q$
    SELECT COUNT(*) AS "totalCitas",
           COUNT(*) FILTER (WHERE fecha = CURRENT_DATE) AS "citasHoy",
           COUNT(*) FILTER (WHERE estado = 'completada') AS "citasCompletadas",
           COUNT(*) FILTER (WHERE estado = 'cancelada') AS "citasCanceladas"
      FROM citas WHERE negocio_id = $1
$q$, '2 seconds');

COMMIT;
