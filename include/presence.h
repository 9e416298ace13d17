/* Presence: who is in a room, cluster-wide. Every replica keeps the whole cluster's table
 * (room -> user -> connections per replica), fed by its own joins and leaves and, with Redis,
 * by the other replicas' changes on `roomcast:ctl`; answers queries from it and sends
 * presence_join / presence_leave to the connections that asked for them. */
#ifndef ROOMCAST_PRESENCE_H
#define ROOMCAST_PRESENCE_H

#include "buf.h"
#include "config.h"

#include <stdbool.h>
#include <uv.h>

struct frame;
struct json_object;
struct room_member;

/* What presence needs of a room member (a session): its user id (NULL or "" when none) and a
 * way to queue a frame on it. Set once at start-up, before the first join. */
struct presence_members {
	const char *(*user)(const struct room_member *m);
	void (*send)(struct room_member *m, struct frame *f);
};
void presence_setup(const struct presence_members *members);

/* A user's last connection leaving a room is announced after this long, and not at all when
 * one comes back meanwhile. */
#define PRESENCE_FLAP_MS 1000
/* A replica not heard for this long is dropped from the table (its members leave). */
#define PRESENCE_NODE_TTL_MS 6000

int presence_start(const struct config *cfg, uv_loop_t *loop);
void presence_stop(void);
/* Appends the answer {"room":...,"count":N,"members":[{"user":...,"conns":N},...]} (with
 * "truncated":true when more than PRESENCE_MAX_MEMBERS users are in the room) to b. */
void presence_answer(const char *room, struct buf *b);
/* m (a member of room) gets presence_join / presence_leave for room until it leaves it. */
void presence_watch(struct room_member *m, const char *room);
/* From the control channel: a message of another replica (cluster.c passes every one). */
void presence_on_ctl(const char *type, struct json_object *msg);
/* The Redis link came up (again): publish our table and ask the others for theirs. */
void presence_link_up(void);

/* The presence Prometheus families. */
void presence_metrics(struct buf *b);

#endif
