/* The --workers feed process: the one process per host that holds the PostgreSQL connections
 * (one listener, a small query pool, one live-room connection) and serves every worker's pgc
 * over a local socket (framed by feedlink). */
#ifndef ROOMCAST_FEED_H
#define ROOMCAST_FEED_H

#include "config.h"

/* Runs the feed process until SIGTERM/SIGINT on its own loop, listening at addr. Returns the
 * process's exit code. */
int feed_run(const struct config *cfg, const char *addr);

#endif
