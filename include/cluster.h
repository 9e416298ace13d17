/* The server API across replicas: disconnect a user, subscribe or unsubscribe a user's
 * connections, and the cluster's rooms and replicas, each run on every replica (through the
 * Redis control channel when REDIS_ADDR is set) and answered once with the summed result. */
#ifndef ROOMCAST_CLUSTER_H
#define ROOMCAST_CLUSTER_H

#include "buf.h"
#include "config.h"

#include <uv.h>

enum cluster_op { CLUSTER_DISCONNECT, CLUSTER_SUBSCRIBE, CLUSTER_UNSUBSCRIBE, CLUSTER_ROOMS };

/* How long a request waits for the other replicas' answers at most. */
#define CLUSTER_WAIT_MS 500

/* status is 200 with the JSON answer, or 503; json is only valid during the call. */
typedef void (*cluster_done_fn)(void *arg, int status, const char *json);

int cluster_start(const struct config *cfg, uv_loop_t *loop, const char *version);
/* Answers every request still waiting with what it has, and closes the timers. */
void cluster_stop(void);
/* Runs op (user_id, room as the op needs them) on every replica and calls done once: at once
 * (possibly before returning) without Redis or while the link is down (this replica only),
 * else when every live replica answered or after CLUSTER_WAIT_MS. who names the caller for the
 * log. The answer is {"status":"success","affected":N} (connections affected), or for
 * CLUSTER_ROOMS {"rooms":{...},"nodes":{...}}. */
void cluster_request(enum cluster_op op, const char *user_id, const char *room, const char *who,
                     cluster_done_fn done, void *arg);

/* The server API's Prometheus families. */
void cluster_metrics(struct buf *b);

#endif
