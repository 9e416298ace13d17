/* `roomcast serve --workers N`: a supervisor process that runs N copies of the server on one
 * port (SO_REUSEPORT), forwards SIGTERM/SIGINT to them and restarts one that crashes. */
#ifndef ROOMCAST_WORKERS_H
#define ROOMCAST_WORKERS_H

#include "config.h"

/* Runs one serving process; called in each child with cfg->node_id already "<node>-w<i>".
 * Returns the child's exit code. */
typedef int (*workers_serve_fn)(struct config *cfg);

/* Forks cfg->workers children that each call serve(cfg) and supervises them until SIGTERM or
 * SIGINT. Returns the supervisor's exit code: 0 when every child exited 0 within the deadline,
 * 1 when one had to be killed or failed, the child's code when a first start failed. */
int workers_run(struct config *cfg, workers_serve_fn serve);

#endif
