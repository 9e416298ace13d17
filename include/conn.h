/* A WebSocket client connection: its identity, rooms, outbound frame queue with a byte budget,
 * rate limiter, timers and lifecycle. Connections are freed only from the reaper, never inside
 * one of their own lws callbacks. */
#ifndef ROOMCAST_CONN_H
#define ROOMCAST_CONN_H

#include "auth.h"
#include "config.h"
#include "frame.h"
#include "room.h"
#include "util.h"

#include <libwebsockets.h>
#include <stdbool.h>
#include <stdint.h>

enum conn_state {
	CONN_AWAIT_AUTH = 0, /* upgraded without a token; must send an auth frame in time */
	CONN_OPEN,           /* authenticated */
	CONN_CLOSING,        /* close decided; flushing then closing */
	CONN_DEAD,           /* lws is done with it; waiting for the reaper */
};

struct conn {
	struct room_member member; /* must stay first: fan-out casts members back to conns */
	struct lws *wsi;           /* NULL once lws destroyed the wsi */
	enum conn_state state;
	unsigned refs; /* pending async operations that will come back to it */
	char id[48];   /* "conn-<n>" unique within this node */
	char ip[48];
	bool batch; /* ?batch=1: several room messages per frame as an array */
	struct auth_identity ident;
	struct frame_queue q;
	uint16_t close_code;
	bool close_sent; /* our close frame is written; waiting for the peer's */
	char close_reason[64];
	/* Token bucket for client messages. */
	double tokens;
	uint64_t tokens_at_ns;
	uint32_t strikes;
	uint64_t last_limited_ns;
	struct buf rx;                   /* a message being assembled from fragments */
	size_t rx_skipped;               /* bytes of a binary message so far (counted, not kept) */
	lws_sorted_usec_list_t sul_auth; /* AUTH_TIMEOUT_S for unauthenticated connections */
	lws_sorted_usec_list_t sul_expiry; /* token_expiring, then 4001 */
	bool expiring_sent;
	struct conn *prev, *next; /* all live connections */
	struct conn *next_dead;
	void *authz_cache; /* owned by the authz module */
	void *pending;     /* owned by the session module: joins waiting for replay */
};

/* Module setup: the config outlives every connection; ctx is the lws context for timers. */
void conn_setup(const struct config *cfg, struct lws_context *ctx);

/* Creates a connection for wsi with refs = 0, linked into the live list; the lws session keeps
 * the pointer and must call conn_detach when the wsi goes away. */
struct conn *conn_new(struct lws *wsi, const char *ip, bool batch);
/* lws is destroying the wsi: leave all rooms, cancel timers, hand to the reaper. Idempotent. */
void conn_detach(struct conn *c);
static inline void conn_hold(struct conn *c)
{
	c->refs++;
}
/* Drops an async reference; a dead connection with no references is then reaped. */
void conn_release(struct conn *c);
static inline bool conn_alive(const struct conn *c)
{
	return c->state == CONN_AWAIT_AUTH || c->state == CONN_OPEN;
}

/* Queues a reference to f. Over SEND_QUEUE_MAX_BYTES the connection is closed with 4008 and
 * -1 is returned. Never writes: it asks lws for a writeable callback. */
int conn_send(struct conn *c, struct frame *f);
/* Queues a reply frame the caller owned (consumes its reference). */
void conn_reply(struct conn *c, struct frame *f);
/* Decides to close: with flush, queued frames go out first (1000/1001); without, they are
 * dropped (4008 and violations). */
void conn_close(struct conn *c, uint16_t code, const char *reason, bool flush);
/* The writeable callback's work; returns -1 when lws should close the connection now. */
int conn_on_writeable(struct conn *c);

/* Token bucket: true when a message may be processed now. */
bool conn_rate_take(struct conn *c);

/* Live connections, for shutdown and admin views. */
struct conn *conn_first(void);
int64_t conn_count(void);
/* Frees every reaped connection; called from the loop between callbacks. */
void conn_reap(void);

#endif
