/* Presence: who is in a room, cluster-wide. Every replica keeps the whole cluster's table
 * (room -> user -> connections per replica), fed by its own joins and leaves and, with Redis,
 * by the other replicas' changes on `roomcast:ctl`; answers queries from it and sends
 * presence_join / presence_leave to the connections that asked for them. */
#ifndef ROOMCAST_PRESENCE_H
#define ROOMCAST_PRESENCE_H

#include "config.h"
#include "util.h"

#include <stdbool.h>
#include <uv.h>

struct conn;
struct json_object;

/* A user's last connection leaving a room is announced after this long, and not at all when
 * one comes back meanwhile. */
#define PRES_FLAP_MS 1000
/* A replica not heard for this long is dropped from the table (its members leave). */
#define PRES_NODE_TTL_MS 6000

int pres_start(const struct config *cfg, uv_loop_t *loop);
void pres_stop(void);
/* Appends the answer {"room":...,"count":N,"members":[{"user":...,"conns":N},...]} (with
 * "truncated":true when more than PRESENCE_MAX_MEMBERS users are in the room) to b. */
void pres_answer(const char *room, struct buf *b);
/* c (a member of room) gets presence_join / presence_leave for room until it leaves it. */
void pres_watch(struct conn *c, const char *room);
/* From the control channel: a message of another replica (cluster.c passes every one). */
void pres_on_ctl(const char *type, struct json_object *msg);
/* The Redis link came up (again): publish our table and ask the others for theirs. */
void pres_link_up(void);

/* The presence Prometheus families. */
void pres_metrics(struct buf *b);

#endif
