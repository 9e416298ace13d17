/* Logical capture (CAPTURE=logical): reads the watched tables' row changes from a logical
 * replication slot (pgoutput) on the loop and stores them as outbox events through
 * realtime.capture_store, whose NOTIFY every replica's listener delivers as before. */
#ifndef ROOMCAST_CAPTURE_H
#define ROOMCAST_CAPTURE_H

#include "buf.h"
#include "config.h"

#include <stdbool.h>
#include <stdio.h>
#include <uv.h>

/* Nothing with CAPTURE=triggers. With CAPTURE=logical, checks the server once (blocking, before
 * the loop runs): returns -1 after logging why when wal_level is not logical or the tables
 * cannot be prepared; a server not reachable yet is checked again on connect. Keeps cfg. */
int capture_start(const struct config *cfg, uv_loop_t *loop);
void capture_stop(void);
/* Blocking, for `roomcast migrate`: mode "logical" checks wal_level, prepares the tables
 * (realtime.capture_sync) and creates the slot if missing; "triggers" switches back (enables
 * the triggers again). Progress and errors go to out. Returns 0 or -1. */
int capture_prepare(const char *conninfo, const char *mode, const char *slot,
                    const char *publication, FILE *out);

/* True when /health must say degraded: the holder's slot is lost or missing, or capture is
 * not running while it should. */
bool capture_degraded(void);
/* Appends ,"capture":{…} to a JSON object being built (nothing with CAPTURE=triggers). */
void capture_health_json(struct buf *b);
/* Appends the roomcast_capture_* Prometheus families (nothing with CAPTURE=triggers). */
void capture_metrics(struct buf *b);

#endif
