/* Checks that the PostgreSQL side works beyond "connected": the listener hears its own NOTIFY
 * (a transaction-mode pooler accepts LISTEN but never delivers), and the watched marketplace
 * tables have their triggers (realtime.attach_triggers / realtime.trigger_status). */
#ifndef ROOMCAST_PGWATCH_H
#define ROOMCAST_PGWATCH_H

#include "buf.h"
#include "config.h"
#include "pgc.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <uv.h>

/* The channel the probe uses; the listener LISTENs on it besides the events channel. */
#define PGWATCH_PROBE_CHANNEL "roomcast_probe"

/* Keeps the pointers (both connections outlive the watch: pgwatch_stop comes first). */
void pgwatch_start(const struct config *cfg, uv_loop_t *loop, struct pgc *listen,
                   struct pgc *query);
void pgwatch_stop(void);
/* The listener connected: it LISTENs on the probe channel too. */
void pgwatch_listener_up(void);
void pgwatch_listener_down(void);
/* The query connection connected: the trigger check runs at once. */
void pgwatch_query_up(void);
/* True when n is a probe notification (consumed here). */
bool pgwatch_on_notify(const PGnotify *n);

/* True when /health must say degraded: the listener is deaf, or watched tables lack triggers
 * (or the migrations that check them are missing). */
bool pgwatch_degraded(void);
/* Appends ,"postgres_reason":…,"triggers":{…} to a JSON object being built (nothing without
 * DATABASE_URL). */
void pgwatch_health_json(struct buf *b);
/* Appends the watch's Prometheus families. */
void pgwatch_metrics(struct buf *b);

#endif
