/* The transport of one WebSocket client: its outbound frame queue with a byte budget, rate
 * limiter, lifecycle, and the one timer that runs every connection's deadlines (pings, pong
 * timeout, closing, and the owner's auth and expiry deadlines). It knows nothing of identities
 * or rooms: the layer above keeps those in its owner object and gets hooks. Connections are
 * freed only from the reaper, never inside one of their own lws callbacks. */
#ifndef ROOMCAST_CONN_H
#define ROOMCAST_CONN_H

#include "buf.h"
#include "config.h"
#include "frame.h"
#include "wheel.h"

#include <libwebsockets.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

enum conn_state {
	CONN_AWAIT_AUTH = 0, /* upgraded without a token; must send an auth frame in time */
	CONN_OPEN,           /* authenticated */
	CONN_CLOSING,        /* close decided; flushing then closing */
	CONN_DEAD,           /* lws is done with it; waiting for the reaper */
};

/* Fields are ordered so the struct has no holes: it is held once per connection. */
struct conn {
	struct lws *wsi; /* NULL once lws destroyed the wsi */
	unsigned refs;   /* pending async operations that will come back to it */
	uint32_t strikes;
	uint64_t seq;   /* unique within this node: conn_id() is "conn-<seq>" */
	const char *ip; /* the gate's per-address slot key; NULL once the slot is released */
	uint16_t close_code;
	uint8_t close_reason; /* conn_close's reason, as an index into a table of the literals */
	/* Bits the owner may keep here (the owner area would otherwise grow by 8 bytes for them);
	 * this module never reads them. */
	uint8_t owner_bits;
	bool batch : 1; /* ?batch=1: several room messages per frame as an array */
	/* Frames go straight to the socket (plain TCP, handshake done, peer not closing); TLS
	 * connections write through lws. */
	bool direct : 1;
	bool write_failed : 1;  /* the socket refused a write for good: lws closes it */
	bool in_rx : 1;         /* inside lws's receive callback for this connection */
	bool close_sent : 1;    /* our close frame is written; waiting for the peer's */
	bool ping_due : 1;      /* a ping waits for the writeable callback */
	bool expiring_sent : 1; /* the owner was told of CONN_DUE_EXPIRING */
	uint8_t state;          /* an enum conn_state, one byte in what was a hole */
	/* Token bucket for client messages: tokens, refilled up to tokens_at_ms (milliseconds of
	 * util_now_ns, wrapping; only differences are used). */
	uint32_t tokens_at_ms;
	float tokens;
	/* The owner's expiry, wall-clock seconds (0: none): the deadline hook gets
	 * CONN_DUE_EXPIRING CONN_EXPIRY_WARN_S before it and CONN_DUE_EXPIRED after leeway. */
	long long exp;
	struct frame_queue q; /* one pointer: its ring and counters are allocated on first use */
	struct buf *rx;       /* a message being assembled from fragments; NULL when none */
	/* Deadlines, in ticks (seconds) of the connection timer; see conn_due. */
	struct wheel_node timer; /* filed under its next deadline while not dead */
	uint32_t rx_at;          /* last frame from the peer, pongs included */
	uint32_t ping_at;        /* last ping asked for */
	uint32_t deadline;       /* await_auth: auth timeout; closing: when the socket goes */
	/* Bytes of a binary message so far (counted, not kept; never past MAX_MESSAGE_SIZE plus
	 * one read). */
	uint32_t rx_skipped;
	/* > 0: run the drain hook once the queue is down to this many bytes (at most
	 * SEND_QUEUE_MAX_BYTES). */
	uint32_t drain_below;
	uint32_t last_limited_ms; /* the last rate_limited error sent (ms stamp, wrapping) */
	/* All live connections; once dead, next links the reaper's list (prev unused). */
	struct conn *prev, *next;
	/* The owner's object, conn_hooks.owner_size bytes allocated with the connection and
	 * zeroed (one allocation per client instead of two); 8-byte aligned. */
	uint64_t owner_area[];
};

/* "conn-<n>", unique within this node, formatted into one of a few static buffers: valid until
 * the fourth call after (use it at once, as log calls and envelopes do). */
const char *conn_id(const struct conn *c);

/* Module setup: the config outlives every connection; ctx is the lws context. */
void conn_setup(const struct config *cfg, struct lws_context *ctx);

/* The layer above (the session) hears of its connections through these hooks, so this module
 * never calls up into it. Any may be NULL. */
struct conn_hooks {
	void (*closed)(struct conn *c); /* the socket is gone; c stays readable until freed */
	/* Owner deadlines due (CONN_DUE_AUTH, _EXPIRING, _EXPIRED bits): the owner closes or warns.
	 * Runs inside conn_timers_update too, so it must not free c. */
	void (*deadline)(struct conn *c, unsigned due);
	/* c's queue fell to c->drain_below bytes (which the owner sets, and which is cleared
	 * before the call), from the writeable callback: a replay queues its next events there.
	 * The hook may queue frames. */
	void (*drained)(struct conn *c);
	void (*freed)(struct conn *c); /* just before c's memory is freed: free the owner */
	size_t owner_size;             /* bytes of c->owner_area */
};
/* Copies hooks; set once at start-up, before the first connection. */
void conn_set_hooks(const struct conn_hooks *hooks);
/* Starts the connection timer, one uv_timer firing every second on loop; stop it before the
 * loop has to end. The timer does not keep the loop alive. */
void conn_timers_start(uv_loop_t *loop);
void conn_timers_stop(void);
/* Runs every deadline up to tick to (ticks are seconds from start, the first is 1). The timer
 * calls it; unit tests drive it directly, without a loop. */
void conn_timers_run(uint32_t to);

/* Creates a connection for wsi with refs = 0, linked into the live list; the lws session keeps
 * the pointer and must call conn_detach when the wsi goes away. ip is kept, not copied: the
 * gate's slot key, released by the caller before conn_detach. */
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

/* Sends f: written to the socket at once when nothing is queued and the kernel takes it (a
 * direct connection), else a reference is queued and lws asked for a writeable callback. Over
 * SEND_QUEUE_MAX_BYTES queued the connection is closed with 4008 and -1 is returned; -1 too
 * when the socket failed (the connection then closes). */
int conn_send(struct conn *c, struct frame *f);
/* Queues a reply frame the caller owned (consumes its reference). */
void conn_reply(struct conn *c, struct frame *f);
/* Decides to close: with flush, queued frames go out first (1000/1001); without, they are
 * dropped (4008 and violations). reason must be a string literal (it is kept, not copied). */
void conn_close(struct conn *c, uint16_t code, const char *reason, bool flush);
/* The writeable callback's work; returns -1 when lws should close the connection now. */
int conn_on_writeable(struct conn *c);
/* lws finished the handshake (LWS_CALLBACK_ESTABLISHED): from now on frames may go straight to
 * a plain TCP socket. */
void conn_established(struct conn *c);
/* The peer sent its close frame: lws answers it, so nothing more is written past lws. */
void conn_peer_closing(struct conn *c);

/* Appends to the message c is assembling from fragments, allocating its buffer on first use;
 * -1 on allocation failure. conn_rx_clear frees it (idle connections keep no buffer). */
int conn_rx_put(struct conn *c, const void *data, size_t len);
void conn_rx_clear(struct conn *c);
static inline size_t conn_rx_len(const struct conn *c)
{
	return c->rx ? c->rx->len : 0;
}

/* The peer sent a frame (data or pong): its silence clock restarts. */
void conn_touch(struct conn *c);
/* Re-reads c's deadlines after its state or token changed: what is due already is done now
 * (token_expiring; closes) and c is filed for its next one. Safe inside c's own callbacks:
 * dropping a socket is left to the timer. */
void conn_timers_update(struct conn *c);

/* What conn_due finds due at a tick. */
enum conn_due_bits {
	CONN_DUE_PING = 1u << 0,     /* silent for PING_INTERVAL_S (and not pinged since) */
	CONN_DUE_AUTH = 1u << 1,     /* still awaiting auth after AUTH_TIMEOUT_S (owner closes) */
	CONN_DUE_EXPIRING = 1u << 2, /* EXPIRY_WARN_S before exp (owner warns) */
	CONN_DUE_EXPIRED = 1u << 3,  /* exp + JWT_LEEWAY_S passed (never with keep; owner closes) */
	CONN_DUE_SILENT = 1u << 4,   /* silent for PONG_TIMEOUT_S: drop the socket */
	CONN_DUE_STUCK = 1u << 5,    /* closing for too long: drop the socket */
};
/* Seconds before exp at which token_expiring is sent. */
#define CONN_EXPIRY_WARN_S 30
/* Pure: the conn_due_bits due for c at tick now, wall being time(NULL). */
unsigned conn_due(const struct conn *c, const struct config *cfg, uint32_t now, long long wall);
/* Pure: the first tick after now at which something may be due for c (0: never, c is dead).
 * A deadline may move later meanwhile (traffic): the timer then looks again and refiles. */
uint32_t conn_next_due(const struct conn *c, const struct config *cfg, uint32_t now,
                       long long wall);

/* Token bucket: true when a message may be processed now. */
bool conn_rate_take(struct conn *c);

/* Live connections, for shutdown and admin views. */
struct conn *conn_first(void);
int64_t conn_count(void);
/* Frees every reaped connection; called from the loop between callbacks. */
void conn_reap(void);

#endif
