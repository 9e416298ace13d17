/* The PostgreSQL side of roomcast: a listener connection that only LISTENs, a
 * query connection for everything else, and the delivery logic that turns outbox events into
 * room messages exactly once and in commit order, across reconnects and out-of-order commits.
 * Also client replay (`join` with `since`), the SQL room policy, persistent notify, retention. */
#ifndef ROOMCAST_PGL_H
#define ROOMCAST_PGL_H

#include "buf.h"
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* An outbox event as delivered: id (outbox id and its JSON), event name, rooms, timestamp, data
 * and meta as raw JSON; pointers valid during the call only. */
struct pgl_event {
	long long id_num;
	const char *id_raw;
	const char *event;
	const char *const *rooms;
	size_t nrooms;
	const char *ts;
	const char *data_raw;
	const char *meta_raw;
	uint64_t born_ns;
};
/* Where delivered outbox events go (the router), given at start so pgl never calls up. */
typedef void (*pgl_deliver_fn)(const struct pgl_event *ev);
int pgl_start(const struct config *cfg, uv_loop_t *loop, pgl_deliver_fn deliver);
void pgl_stop(void);
bool pgl_enabled(void);
/* "up" when both connections are up, "down" otherwise, "disabled" without DATABASE_URL. */
const char *pgl_state(void);

struct frame;

/* An event a replay page carried that this process had not delivered live yet when the page
 * was read (its notification still on the way): its live copy is still to come, to the asker
 * too, and must not be sent again. xid is its transaction (UINT64_MAX when unknown). */
struct pgl_owed {
	long long id;
	uint64_t xid;
};

/* What a replay page says about the whole replay. */
struct pgl_replay_page {
	long long top;   /* the highest id the replay covers (later ids arrive live) */
	long long total; /* events to replay (first page only) */
	long long last;  /* the last id this page read (0: none) */
	bool more;       /* another page may follow: ask with after = last */
	/* The page's events not delivered live yet, in id order; valid during the callback. */
	const struct pgl_owed *owed;
	size_t nowed;
};
/* Whether outbox event id (of transaction xid) has been handed to the router by this process,
 * or never will be (below the watermark W and not waiting in the inbound queue: delivered, or
 * committed before this process first read the outbox). Once true it stays true. */
bool pgl_delivered(long long id, uint64_t xid);
/* The room position for a `joined` answered now (see docs/protocol.md): an outbox event id P
 * such that every event of any room not in a replay after P (since = P) was delivered before
 * now; false when none is known yet (no PostgreSQL, before the first read of the outbox). Also
 * remembered by the recent memory, which may then answer a rejoin from it. */
bool pgl_position(long long *id);
/* Whether every committed outbox event of a transaction at most xid has been delivered (the
 * watermark passed it and nothing waits in the inbound queue). */
bool pgl_caught_up(uint64_t xid);
/* One page of replayed events in id order: their outbox ids and room-message frames for the
 * room asked about (the callback takes over the frame references). ok is false when the outbox
 * could not be read; recovered is false when events after since (or after `after`, on later
 * pages) are no longer retained. */
typedef void (*pgl_replay_fn)(void *arg, const char *room, bool ok, bool recovered,
                              const long long *ids, struct frame **frames, size_t n,
                              const struct pgl_replay_page *page);
/* Reads a page of the events of room after since (see docs/protocol.md) and calls cb with arg
 * once (also at pgl_stop, ok false); the caller keeps arg valid until then. The first page has
 * after = 0 and top = 0 and reports top and total; later pages pass the page's last as after
 * and the first page's top. Returns 0 when started, -1 when PostgreSQL is not available (cb not
 * called). */
int pgl_replay(void *arg, const char *room, long long since, long long after, long long top,
               pgl_replay_fn cb);
/* Asks for the same page are answered by one query (or by its answer, kept until the next
 * delivered event, at most 1 s), and a first page the recent-events memory provably covers
 * without a replay query, after one shared read of the outbox horizon (see docs/operations.md,
 * "Reconnect storms"). cb may run before pgl_replay returns. */

struct buf;
/* Prints the replay metrics (roomcast_replay_queries_total, roomcast_replays_total{source},
 * roomcast_replay_horizon_reads_total, roomcast_recent_bytes, roomcast_recent_rooms) when
 * PostgreSQL is configured. */
void pgl_metrics(struct buf *b);

/* A history page: the room's stored events after since in id order (frames as room messages,
 * the callback takes over the references); ok false when the outbox could not be read, recovered
 * as for a replay, more when the page is full (ask again after its last id). */
typedef void (*pgl_history_fn)(void *arg, bool ok, bool recovered, struct frame **frames, size_t n,
                               bool more);
/* Reads up to limit events of room after since with the replay's query (so it may repeat a few
 * events committed out of id order just before since). cb is always called once started, also
 * at pgl_stop (ok false). Returns -1 when PostgreSQL is not configured (cb not called). */
int pgl_history(const char *room, long long since, int limit, pgl_history_fn cb, void *arg);

/* verdict: 1 allowed, 0 denied, -1 no answer (the query failed or timed out). */
typedef void (*pgl_verdict_fn)(void *arg, const char *room, int verdict);
/* Asks realtime.can_join(claims_json, room) with a 3 s deadline; a failure or timeout denies
 * (-1). Once started (0) cb is always called; the caller keeps arg valid until then. */
int pgl_can_join(const char *claims_json, const char *room, pgl_verdict_fn cb, void *arg);

/* The identity answer: seller / client ids as decimal text ("" when the database has none);
 * ok is false (err says why) when the lookup failed or timed out. */
typedef void (*pgl_identity_fn)(void *arg, bool ok, const char *seller_id, const char *client_id,
                                const char *err);
/* Asks realtime.identity(claims) with a 3 s deadline (claims_json NULL: {sub, role} only). cb
 * is always called once started; the caller keeps arg valid until then. Returns -1 when
 * PostgreSQL is not available. */
int pgl_identity(const char *claims_json, const char *user_id, const char *role, pgl_identity_fn cb,
                 void *arg);

typedef void (*pgl_published_fn)(void *arg, long long id, const char *err);
/* realtime.publish(event, ARRAY[room], data, meta) for POST /api/notify with persist. */
int pgl_publish(const char *event, const char *room, const char *data_json, pgl_published_fn cb,
                void *arg);

#endif
