/* Checks that the PostgreSQL side works beyond "connected": the listener hears its own NOTIFY
 * (a transaction-mode pooler accepts LISTEN but never delivers), and the watched marketplace
 * tables have their triggers (realtime.attach_triggers / realtime.trigger_status). */
#ifndef ROOMCAST_PGWATCH_H
#define ROOMCAST_PGWATCH_H

#include "config.h"
#include "pgc.h"
#include "util.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <uv.h>

/* The channel the probe uses; the listener LISTENs on it besides the events channel. */
#define PGW_PROBE_CHANNEL "roomcast_probe"

/* Keeps the pointers (both connections outlive the watch: pgw_stop comes first). */
void pgw_start(const struct config *cfg, uv_loop_t *loop, struct pgc *listen, struct pgc *query);
void pgw_stop(void);
/* The listener connected: it LISTENs on the probe channel too. */
void pgw_listener_up(void);
void pgw_listener_down(void);
/* The query connection connected: the trigger check runs at once. */
void pgw_query_up(void);
/* True when n is a probe notification (consumed here). */
bool pgw_on_notify(const PGnotify *n);

/* True when /health must say degraded: the listener is deaf, or watched tables lack triggers
 * (or the migrations that check them are missing). */
bool pgw_degraded(void);
/* Appends ,"postgres_reason":…,"triggers":{…} to a JSON object being built (nothing without
 * DATABASE_URL). */
void pgw_health_json(struct buf *b);
/* Appends the watch's Prometheus families. */
void pgw_metrics(struct buf *b);

#endif
