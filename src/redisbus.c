/* The Redis transport of the bus: a subscriber and a publisher hiredis context on the
 * server's loop, the link state machine (changed only by set_state(), which logs transitions),
 * heartbeat, jittered reconnects, degraded local delivery, `events` stats routing, and one
 * `ws:room:<room>` subscription per room with local members (batched SUBSCRIBE/UNSUBSCRIBE). */
#include "redisbus.h"
#include "log.h"
#include "room.h"
#include "util.h"

#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Both contexts form one link: it is up when the publisher answered and all subscriptions are
 * acknowledged, and either one failing takes the whole link down and reconnects both. */
enum redisbus_state { RB_IDLE = 0, RB_RESOLVING, RB_CONNECTING, RB_UP, RB_BACKOFF, RB_STOPPING };

/* hiredis 0.14 has no async connect timeout: this deadline covers resolve, TCP connect, AUTH
 * and the subscription acknowledgements. */
#define CONNECT_TIMEOUT_MS 3000
/* A heartbeat is a PUBLISH on our own channel: the publisher must answer it and the subscriber
 * must receive it, both within the deadline (a frozen Redis keeps TCP open and says nothing). */
#define HEARTBEAT_EVERY_MS   2000
#define HEARTBEAT_TIMEOUT_MS 3000
#define BACKOFF_MIN_MS       200
#define BACKOFF_MAX_MS       5000
/* Bytes we published and have not yet received back; beyond this Redis is not keeping up and
 * the link is dropped rather than buffering without bound. */
#define OWN_MAX_BYTES ((size_t)64 << 20)
/* Contexts waiting to be freed outside hiredis callbacks: at most two per lost link, and a
 * link is lost at most once per backoff, so this never fills. */
#define MAX_DEAD 8

#define ROOM_PREFIX     "ws:room:"
#define ROOM_PREFIX_LEN (sizeof(ROOM_PREFIX) - 1)
#define EVENTS_CHANNEL  "events"
/* Requests and answers between replicas (the server API, presence): see cluster.c. */
#define CTL_CHANNEL   "roomcast:ctl"
#define SUBSCRIPTIONS 3 /* events, our heartbeat channel, roomcast:ctl */
/* Room channels per SUBSCRIBE or UNSUBSCRIBE command (Centrifugo's batch): a burst of joins
 * to thousands of rooms costs a few commands, and no single command is huge. */
#define SUB_BATCH 512
/* After a batch went out, the next one waits this long: joins arrive spread over many loop
 * passes (a client's messages come in small reads), and a burst of 1 000 would otherwise cost
 * hundreds of commands. A join in a quiet moment still goes out on the next loop pass. */
#define SUB_INTERVAL_MS 20

/* One of our own publishes, kept until it comes back on the subscription: the echo is then
 * delivered with its original source and birth time, and if the link dies first this replica
 * delivers it locally, so its own members get it exactly once either way. */
struct own_msg {
	struct own_msg *next;
	uint64_t seq;
	uint64_t born_ns;
	enum metrics_source src;
	size_t len;
	char room[ROOM_NAME_MAX + 1];
	char payload[];
};

/* A message published to a room whose subscription is not yet confirmed: sent once it is.
 * Were it sent at once, its echo would come back or not depending on whether Redis ran our
 * SUBSCRIBE before it (two connections), and the local members would get it twice or never. */
struct held_msg {
	struct held_msg *next;
	uint64_t born_ns;
	enum metrics_source src;
	size_t len;
	char payload[];
};

/* Someone waiting for a room's subscription to be confirmed (a join's reply). */
struct waiter {
	struct waiter *next;
	void (*fn)(void *arg);
	void *arg;
};

/* What only a room in transition has: messages held and joins waiting for its confirmation. */
struct rsub_extra {
	struct held_msg *held, *held_tail;
	struct waiter *waiters;
};

/* One room's subscription: what the room registry wants (want: the room has local members)
 * against what we last asked Redis for (asked) and whether Redis has confirmed it (busy until
 * the confirmation). One command per room at a time: hiredis 0.14 forgets a channel's callback
 * when the UNSUBSCRIBE confirmation arrives, even with a SUBSCRIBE for it still in flight,
 * after which that channel's messages would be silently dropped. Kept while any of its
 * fields matters; see maybe_free. Every room with local members has one (an idle client's
 * user room too), so it is small: 24 bytes and the name, in an open-addressing table. */
struct rsub {
	struct rsub *next_dirty;
	uint32_t own; /* our tracked publishes on the channel not yet received back */
	uint8_t want : 1, asked : 1, busy : 1;
	uint8_t dirty : 1;    /* on g.dirty */
	struct rsub_extra *x; /* NULL while nothing is held or waiting */
	char room[];
};

static redisbus_deliver_fn g_deliver; /* the router, given at start */

static struct {
	uv_loop_t *loop;
	char addr[300]; /* REDIS_ADDR as given, for logs */
	char host[256];
	int port;
	char *password;
	enum redisbus_state state;
	redisAsyncContext *sub, *pub;
	int sub_acks;
	bool pub_ready;
	redisAsyncContext *dead[MAX_DEAD];
	int ndead;
	uv_getaddrinfo_t *resolving;
	uv_timer_t timer;     /* connect deadline, backoff, or heartbeat deadline */
	uv_timer_t heartbeat; /* heartbeat interval while up */
	uv_timer_t reaper;    /* frees retired contexts on the next loop iteration */
	uint32_t attempts;
	uint64_t rng;
	char hb_channel[ROOM_NAME_MAX + 64];
	char hb_nonce[20];
	char hb_payload[48];
	uint64_t hb_seq, hb_fence;
	bool hb_pending, hb_pub_ok, hb_sub_ok;
	uv_check_t hb_verdict; /* after the poll that follows a passed heartbeat deadline */
	struct own_msg *head, *tail;
	size_t own_bytes;
	uint64_t pub_seq, pub_acked;
	redisbus_ctl_fn ctl;
	void (*ctl_up)(void);
	struct rsub **slots; /* the rooms' table: linear probing, at most 3/4 full */
	uint32_t nslots, nrooms;
	struct rsub *dirty; /* rooms whose subscription may need a command */
	size_t held_bytes;
	uint32_t resub_left; /* rooms resubscribed by connect_both not yet confirmed */
	uint64_t flushed_at; /* loop time of the last batch sent; 0: none yet */
	uv_timer_t flush;    /* sends the batched (UN)SUBSCRIBEs of one loop pass */
} g;

static void start_connect(void);

static void set_state(enum redisbus_state s)
{
	static const char *names[] = {"idle", "resolving", "connecting",
	                              "up",   "backoff",   "stopping"};
	/* Transitions into and out of "up" matter to operators; the resolve/connect/backoff
	 * cycle of a long outage would otherwise log four lines per attempt. */
	enum log_level level =
	    (s == RB_UP || g.state == RB_UP || s == RB_STOPPING) ? LOG_INFO : LOG_DEBUG;
	if (g.state == s)
		return;
	log_write(level, "redis connection state", "addr", g.addr, "from", names[g.state], "to",
	          names[s], (const char *)0);
	g.state = s;
	metrics.redis_up = s == RB_UP;
}

/* xorshift64*: replicas must not share a sequence (rand() is never seeded here), or their
 * "jittered" reconnects would still come in lockstep. */
static uint64_t next_random(void)
{
	g.rng ^= g.rng >> 12;
	g.rng ^= g.rng << 25;
	g.rng ^= g.rng >> 27;
	return g.rng * 0x2545F4914F6CDD1DULL;
}

/* ---- our own publishes ---- */

static struct own_msg *pop_own(void)
{
	struct own_msg *m = g.head;
	if (!m)
		return NULL;
	g.head = m->next;
	if (!g.head)
		g.tail = NULL;
	g.own_bytes -= m->len;
	return m;
}

/* The link is gone: what has not come back yet is delivered here (deliver) or dropped. */
static void flush_own(bool deliver)
{
	struct own_msg *m;
	while ((m = pop_own())) {
		if (m->seq > g.pub_acked)
			metrics.redis_publish_failures++;
		if (deliver)
			g_deliver(m->room, m->payload, m->len, m->src, m->born_ns);
		free(m);
	}
}

/* ---- per-room subscriptions ---- */

static int publish(const char *room, const char *payload, size_t len, enum metrics_source src,
                   uint64_t born_ns, struct rsub *track);
static void on_flush(uv_timer_t *t);
static void on_sub(redisAsyncContext *ac, void *r, void *privdata);
static void lose(const char *what, const char *detail);
static void maybe_up(void);

/* Argument vectors of one (UN)SUBSCRIBE batch and its channel names; never used by two
 * batches at once. */
static const char *g_argv[SUB_BATCH + 1];
static size_t g_lens[SUB_BATCH + 1];
static char g_chans[SUB_BATCH][ROOM_PREFIX_LEN + ROOM_NAME_MAX + 1];

/* FNV-1a. */
static uint32_t name_hash(const char *s, size_t len)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < len; i++)
		h = (h ^ (unsigned char)s[i]) * 16777619u;
	return h;
}

/* The slot holding room, or the empty slot where it would go. Needs g.nslots > 0. */
static uint32_t slot_of(const char *room, size_t len)
{
	uint32_t mask = g.nslots - 1, i = name_hash(room, len) & mask;
	struct rsub *r;

	while ((r = g.slots[i]) && (strncmp(r->room, room, len) || r->room[len]))
		i = (i + 1) & mask;
	return i;
}

static struct rsub *rsub_find(const char *room, size_t len)
{
	return g.nslots ? g.slots[slot_of(room, len)] : NULL;
}

/* Adds r (not in the table); -1 when the table could not grow. */
static int rsub_add(struct rsub *r)
{
	if ((g.nrooms + 1) * 4 > g.nslots * 3) {
		uint32_t ncap = g.nslots ? g.nslots * 2 : 64, old = g.nslots;
		struct rsub **ns = calloc(ncap, sizeof(*ns)), **os = g.slots;
		if (!ns)
			return -1;
		g.slots = ns;
		g.nslots = ncap;
		for (uint32_t i = 0; i < old; i++)
			if (os[i])
				g.slots[slot_of(os[i]->room, strlen(os[i]->room))] = os[i];
		free(os);
	}
	g.slots[slot_of(r->room, strlen(r->room))] = r;
	g.nrooms++;
	return 0;
}

/* Removes r from the table, moving back the entries after it that probed past its slot. */
static void rsub_del(struct rsub *r)
{
	uint32_t mask = g.nslots - 1, i = slot_of(r->room, strlen(r->room)), j = i, k;

	g.slots[i] = NULL;
	g.nrooms--;
	for (;;) {
		j = (j + 1) & mask;
		if (!g.slots[j])
			return;
		k = name_hash(g.slots[j]->room, strlen(g.slots[j]->room)) & mask;
		/* Stays when its home k lies cyclically in (i, j]. */
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		g.slots[i] = g.slots[j];
		g.slots[j] = NULL;
		i = j;
	}
}

static const char *rsub_room(const struct rsub *r)
{
	return r->room;
}

/* Puts ws:room:<room> in batch position i of g_argv. */
static void batch_put(int i, const struct rsub *r)
{
	size_t len = strlen(r->room);

	memcpy(g_chans[i - 1], ROOM_PREFIX, ROOM_PREFIX_LEN);
	memcpy(g_chans[i - 1] + ROOM_PREFIX_LEN, r->room, len + 1);
	g_argv[i] = g_chans[i - 1];
	g_lens[i] = ROOM_PREFIX_LEN + len;
}

/* Redis confirmed the subscription and no UNSUBSCRIBE has been sent since: everything
 * published to the channel from now on comes back to us. */
static bool confirmed(const struct rsub *r)
{
	return r->asked && !r->busy;
}

/* Commands go out from a timer: joins and leaves of one loop pass at least (SUB_INTERVAL_MS
 * in a burst) are batched, a room that came and went in between costs nothing, and hiredis
 * is never re-entered from inside one of its own callbacks. */
static void mark_dirty(struct rsub *r)
{
	uint64_t now, delay = 0;

	if (!r->dirty) {
		r->dirty = true;
		r->next_dirty = g.dirty;
		g.dirty = r;
	}
	/* Without a link nothing can be sent: maybe_up flushes what piled up (and a long outage
	 * does not rescan a growing list every loop pass). */
	if (g.state != RB_UP || uv_is_active((uv_handle_t *)&g.flush))
		return;
	now = uv_now(g.loop);
	if (g.flushed_at && now - g.flushed_at < SUB_INTERVAL_MS)
		delay = SUB_INTERVAL_MS - (now - g.flushed_at);
	uv_timer_start(&g.flush, on_flush, delay, 0);
}

/* Frees r's extra part once nothing is held or waiting. */
static void drop_extra(struct rsub *r)
{
	if (r->x && !r->x->held && !r->x->waiters) {
		free(r->x);
		r->x = NULL;
	}
}

/* Frees r once nothing refers to it: no local members, no subscription asked for or being
 * confirmed, no tracked publish in flight, nothing held or waiting, not on the dirty list. */
static void maybe_free(struct rsub *r)
{
	drop_extra(r);
	if (r->want || r->asked || r->busy || r->dirty || r->own || r->x)
		return;
	rsub_del(r);
	free(r);
}

static void run_waiters(struct rsub *r)
{
	struct waiter *w, *next;

	if (!r->x)
		return;
	w = r->x->waiters;
	r->x->waiters = NULL;
	drop_extra(r);
	for (; w; w = next) {
		next = w->next;
		w->fn(w->arg);
		free(w);
	}
}

/* Sends the held messages, tracked when the room's local members wait for the echo,
 * untracked when none are left (other replicas still get them). Without a link they are
 * delivered here only, like any publish while Redis is away. */
static void release_held(struct rsub *r)
{
	struct held_msg *h;
	int rc;

	while (r->x && (h = r->x->held)) {
		/* h stays first until it is sent: a link lost inside publish() delivers it and
		 * the rest here, in order (reset_rooms), and leaves nothing held. */
		rc = g.state != RB_UP ? -1
		                      : publish(rsub_room(r), h->payload, h->len, h->src,
		                                h->born_ns, r->want && confirmed(r) ? r : NULL);
		if (!r->x || r->x->held != h)
			continue;
		r->x->held = h->next;
		if (!r->x->held)
			r->x->held_tail = NULL;
		drop_extra(r);
		g.held_bytes -= h->len;
		if (rc < 0) {
			metrics.redis_publish_failures++;
			g_deliver(rsub_room(r), h->payload, h->len, h->src, h->born_ns);
		}
		free(h);
	}
}

/* One of our tracked publishes came back (or was given up): the last one lets an
 * UNSUBSCRIBE that waited for it go out. */
static void own_done(const char *room)
{
	struct rsub *r = rsub_find(room, strlen(room));

	if (r && r->own && --r->own == 0 && !r->want)
		mark_dirty(r);
}

/* The link is gone: no subscription is left. Held messages are delivered here only (the
 * in-flight ones were, by flush_own, just before), waiters go on, and rooms without members
 * are freed by the next flush (not here: lose() runs inside loops that hold pointers). */
static void reset_rooms(void)
{
	struct rsub *r;
	struct held_msg *h;

	metrics.bus_channels = 0;
	for (uint32_t i = 0; i < g.nslots; i++) {
		if (!(r = g.slots[i]))
			continue;
		r->asked = r->busy = false;
		r->own = 0;
		while (r->x && (h = r->x->held)) {
			r->x->held = h->next;
			metrics.redis_publish_failures++;
			g_deliver(rsub_room(r), h->payload, h->len, h->src, h->born_ns);
			free(h);
		}
		if (r->x)
			r->x->held_tail = NULL;
		run_waiters(r); /* frees r->x */
		if (!r->want)
			mark_dirty(r);
	}
	g.held_bytes = 0;
}

/* Sends g_argv[0..n) on the subscriber; false when the link was lost doing it. */
static bool send_batch(int n)
{
	if (n < 2)
		return true;
	g.flushed_at = uv_now(g.loop);
	if (redisAsyncCommandArgv(g.sub, on_sub, NULL, n, g_argv, g_lens) != REDIS_OK) {
		lose("SUBSCRIBE failed", g.sub->errstr);
		return false;
	}
	return true;
}

static void on_flush(uv_timer_t *t)
{
	struct rsub *r, *keep = NULL;
	const char *cmd[2] = {"SUBSCRIBE", "UNSUBSCRIBE"};
	struct rsub *batch[2] = {NULL, NULL}; /* rooms of each batch, linked by next_dirty */

	while ((r = g.dirty)) {
		g.dirty = r->next_dirty;
		r->dirty = false;
		if (!r->want) {
			release_held(r);
			run_waiters(r);
		}
		/* One command per room in flight; its confirmation dirties the room again. An
		 * UNSUBSCRIBE waits for our tracked publishes to come back (own_done). */
		if (!r->busy && r->want != r->asked && (r->want || !r->own)) {
			if (g.state != RB_UP) {
				r->dirty = true;
				r->next_dirty = keep;
				keep = r;
				continue;
			}
			int k = r->want ? 0 : 1;
			r->asked = r->want;
			r->busy = true;
			r->next_dirty = batch[k];
			batch[k] = r;
			continue;
		}
		maybe_free(r);
	}
	g.dirty = keep;
	/* The rooms were marked before any command went out, so a lost link (which resets every
	 * room) cannot leave one half-sent. */
	for (int k = 0; k < 2; k++) {
		int argc = 1;
		g_argv[0] = cmd[k];
		g_lens[0] = strlen(cmd[k]);
		for (r = batch[k]; r && g.state == RB_UP; r = r->next_dirty) {
			batch_put(argc, r);
			if (++argc == SUB_BATCH + 1) {
				if (!send_batch(argc))
					return;
				argc = 1;
			}
		}
		if (g.state == RB_UP && !send_batch(argc))
			return;
	}
}

/* Every room with local members, after the fixed subscriptions of a new link. */
static bool resubscribe_all(void)
{
	struct rsub *r;
	int argc = 1;

	g_argv[0] = "SUBSCRIBE";
	g_lens[0] = 9;
	for (uint32_t i = 0; i < g.nslots; i++) {
		if (!(r = g.slots[i]) || !r->want)
			continue;
		r->asked = r->busy = true;
		g.resub_left++;
		batch_put(argc, r);
		if (++argc == SUB_BATCH + 1) {
			if (!send_batch(argc))
				return false;
			argc = 1;
		}
	}
	return send_batch(argc);
}

/* Redis confirmed one room channel's SUBSCRIBE or UNSUBSCRIBE. */
static void room_ack(const redisReply *chan, bool subscribed)
{
	struct rsub *r =
	    rsub_find(chan->str + ROOM_PREFIX_LEN, (size_t)chan->len - ROOM_PREFIX_LEN);

	if (!r || !r->busy || r->asked != subscribed) {
		log_debug("redis confirmation ignored", "reason", "no command in flight for it");
		return;
	}
	r->busy = false;
	if (subscribed && g.resub_left && g.state == RB_CONNECTING) {
		g.resub_left--;
		maybe_up();
	}
	if (subscribed)
		metrics.bus_channels++;
	else if (metrics.bus_channels > 0)
		metrics.bus_channels--;
	if (r->want != r->asked) {
		mark_dirty(r);
	} else if (r->want) {
		release_held(r);
		run_waiters(r);
	}
	maybe_free(r);
}

/* The room registry's life hook: a room got its first local member, or lost its last. */
static void on_room_life(const char *room, bool exists)
{
	size_t len = strlen(room);
	struct rsub *r;

	if (g.state == RB_IDLE || g.state == RB_STOPPING)
		return;
	r = rsub_find(room, len);
	if (!r) {
		if (!exists)
			return;
		r = calloc(1, sizeof(*r) + len + 1);
		if (r)
			memcpy(r->room, room, len + 1);
		if (!r || rsub_add(r) < 0) {
			free(r);
			log_error("redis subscription skipped", "room", room, "reason",
			          "out of memory");
			return;
		}
	}
	r->want = exists;
	mark_dirty(r);
}

/* ---- context lifetime ---- */

/* Frees retired contexts. Runs from a timer, never inside a hiredis callback, so hiredis
 * frees at once; its callbacks then see contexts that are no longer ours and ignore them. */
static void reap(uv_timer_t *t)
{
	while (g.ndead > 0)
		redisAsyncFree(g.dead[--g.ndead]);
}

static void retire(redisAsyncContext *ac)
{
	if (!ac)
		return;
	if (g.ndead == MAX_DEAD) {
		log_error("redis context leaked", "reason",
		          "too many contexts waiting to be freed");
		return;
	}
	g.dead[g.ndead++] = ac;
	uv_timer_start(&g.reaper, reap, 0, 0);
}

/* hiredis is freeing ac by itself (failed connect, lost connection): drop every reference.
 * Returns whether it was one of the link's current contexts. */
static bool forget(const redisAsyncContext *ac)
{
	bool live = false;

	if (ac == g.sub) {
		g.sub = NULL;
		live = true;
	}
	if (ac == g.pub) {
		g.pub = NULL;
		live = true;
	}
	for (int i = 0; i < g.ndead; i++) {
		if (g.dead[i] == ac) {
			g.dead[i] = g.dead[--g.ndead];
			break;
		}
	}
	return live;
}

static void on_backoff_done(uv_timer_t *t)
{
	start_connect();
}

/* The link failed or never came up: retire both contexts, deliver what was in flight
 * locally, and retry after a jittered delay. Safe inside hiredis callbacks: nothing is freed
 * here. detail may be NULL. */
static void lose(const char *what, const char *detail)
{
	bool was_up = g.state == RB_UP;
	uint64_t delay;
	char why[256];

	if (g.state == RB_IDLE || g.state == RB_BACKOFF || g.state == RB_STOPPING)
		return;
	/* detail may live inside a context (errstr, a reply) that is freed later. */
	if (detail && *detail)
		snprintf(why, sizeof(why), "%s: %s", what, detail);
	else
		snprintf(why, sizeof(why), "%s", what);
	for (char *nl = strpbrk(why, "\r\n"); nl; nl = strpbrk(nl, "\r\n"))
		*nl = ' ';
	log_warn("redis connection failed", "addr", g.addr, "reason", why);
	retire(g.sub);
	retire(g.pub);
	g.sub = g.pub = NULL;
	g.resolving = NULL; /* a resolve still running finds itself stale */
	uv_timer_stop(&g.timer);
	uv_timer_stop(&g.heartbeat);
	g.hb_pending = false;
	set_state(RB_BACKOFF);
	if (was_up)
		metrics.redis_reconnects++;
	flush_own(true);
	reset_rooms();
	delay = (uint64_t)BACKOFF_MIN_MS << (g.attempts < 6 ? g.attempts : 6);
	if (delay > BACKOFF_MAX_MS)
		delay = BACKOFF_MAX_MS;
	/* Full jitter in [delay/2, delay] so replicas do not reconnect in lockstep. */
	delay = delay / 2 + next_random() % (delay / 2 + 1);
	g.attempts++;
	uv_timer_start(&g.timer, on_backoff_done, delay, 0);
}

static void on_connect_deadline(uv_timer_t *t)
{
	if (g.state == RB_RESOLVING || g.state == RB_CONNECTING)
		lose("connect timed out", "no answer within 3 s");
}

/* ---- heartbeat ---- */

static void heartbeat_check_done(void)
{
	if (g.hb_pending && g.hb_pub_ok && g.hb_sub_ok) {
		g.hb_pending = false;
		uv_timer_stop(&g.timer);
	}
}

/* The verdict on a passed heartbeat deadline, given after the loop has read its sockets once
 * more: libuv runs timers before it polls, so when this process itself stalled (starved of CPU,
 * stopped) past the deadline, the answers may be sitting unread. */
static void on_heartbeat_verdict(uv_check_t *h)
{
	uv_check_stop(h);
	if (g.state != RB_UP || !g.hb_pending)
		return;
	lose("heartbeat timed out", !g.hb_pub_ok ? "no PUBLISH reply within 3 s"
	                                         : "subscriber did not receive it within 3 s");
}

static void on_heartbeat_deadline(uv_timer_t *t)
{
	if (g.state != RB_UP || !g.hb_pending)
		return;
	uv_check_start(&g.hb_verdict, on_heartbeat_verdict);
}

static void on_heartbeat_published(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;

	if (ac != g.pub || !reply || !g.hb_pending || (uintptr_t)privdata != g.hb_seq)
		return;
	if (reply->type == REDIS_REPLY_ERROR) {
		lose("PUBLISH failed", reply->str);
		return;
	}
	g.hb_pub_ok = true;
	heartbeat_check_done();
}

/* Our heartbeat came back on the subscription. It travelled the same PUBLISH-to-subscriber
 * path after every message we published before it, so those have all come back too; any
 * still waiting was lost, and is dropped so the queue cannot grow on a mismatch. */
static void heartbeat_echo(const char *payload, size_t len)
{
	struct own_msg *m;

	if (!g.hb_pending || len != strlen(g.hb_payload) || memcmp(payload, g.hb_payload, len))
		return;
	g.hb_sub_ok = true;
	while (g.head && g.head->seq <= g.hb_fence) {
		m = pop_own();
		metrics.redis_publish_failures++;
		log_warn("redis message lost", "room", m->room, "reason",
		         "not received back before a later heartbeat");
		own_done(m->room);
		free(m);
	}
	heartbeat_check_done();
}

static void on_heartbeat(uv_timer_t *t)
{
	const char *argv[3];
	size_t lens[3];

	if (g.state != RB_UP || g.hb_pending)
		return;
	g.hb_seq++;
	snprintf(g.hb_payload, sizeof(g.hb_payload), "%s:%llu", g.hb_nonce,
	         (unsigned long long)g.hb_seq);
	argv[0] = "PUBLISH";
	argv[1] = g.hb_channel;
	argv[2] = g.hb_payload;
	for (int i = 0; i < 3; i++)
		lens[i] = strlen(argv[i]);
	if (redisAsyncCommandArgv(g.pub, on_heartbeat_published, (void *)(uintptr_t)g.hb_seq, 3,
	                          argv, lens) != REDIS_OK) {
		lose("PUBLISH failed", g.pub->errstr);
		return;
	}
	g.hb_pending = true;
	g.hb_pub_ok = g.hb_sub_ok = false;
	g.hb_fence = g.pub_seq;
	uv_timer_start(&g.timer, on_heartbeat_deadline, HEARTBEAT_TIMEOUT_MS, 0);
}

/* ---- link setup ---- */

static void maybe_up(void)
{
	if (g.state != RB_CONNECTING || !g.pub_ready || g.sub_acks < SUBSCRIPTIONS || g.resub_left)
		return;
	uv_timer_stop(&g.timer);
	g.attempts = 0;
	g.hb_pending = false;
	set_state(RB_UP);
	uv_timer_start(&g.heartbeat, on_heartbeat, HEARTBEAT_EVERY_MS, HEARTBEAT_EVERY_MS);
	/* Rooms that came or went while connecting. */
	if (g.dirty)
		uv_timer_start(&g.flush, on_flush, 0, 0);
	if (g.ctl_up)
		g.ctl_up();
}

static void on_auth(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;

	if ((ac != g.sub && ac != g.pub) || !reply)
		return;
	/* Redis's error text names the problem (WRONGPASS, no password configured), never the
	 * password itself. */
	if (reply->type == REDIS_REPLY_ERROR)
		lose("AUTH failed", reply->str);
}

static void on_ping(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;

	if (ac != g.pub || !reply)
		return;
	if (reply->type == REDIS_REPLY_ERROR) {
		lose("PING failed", reply->str);
		return;
	}
	g.pub_ready = true;
	maybe_up();
}

/* Room messages go out as WebSocket text frames, and a browser fails the whole connection on
 * invalid UTF-8 in one: a foreign payload that is not UTF-8 is dropped rather than forwarded.
 * Rejects overlong forms, surrogates and code points above U+10FFFF, as RFC 3629 does. */
static bool utf8_valid(const unsigned char *s, size_t len)
{
	size_t i = 0;

	while (i < len) {
		unsigned char c = s[i];
		size_t n;
		uint32_t cp;

		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xC2 && c <= 0xDF) {
			n = 1;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 2;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 3;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (len - i <= n)
			return false;
		for (size_t k = 1; k <= n; k++) {
			if ((s[i + k] & 0xC0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3F);
		}
		if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
		    (cp >= 0xD800 && cp <= 0xDFFF))
			return false;
		i += n + 1;
	}
	return true;
}

/* Room messages: our own come back in the order we published them (one publisher
 * connection, one subscriber connection, one Redis), so only the head of the queue can
 * match; anything else came from another replica or producer and is forwarded as is. Only
 * publishes whose echo is certain are queued (the room's subscription was confirmed and its
 * UNSUBSCRIBE waits for them), so a missing echo never shifts the matching. */
static void on_room_message(const redisReply *chan, const redisReply *payload)
{
	char room[ROOM_NAME_MAX + 1];
	size_t rlen;
	struct own_msg *m = g.head;

	if (chan->len <= ROOM_PREFIX_LEN || memcmp(chan->str, ROOM_PREFIX, ROOM_PREFIX_LEN))
		return;
	rlen = (size_t)chan->len - ROOM_PREFIX_LEN;
	if (rlen > ROOM_NAME_MAX || !room_name_valid(chan->str + ROOM_PREFIX_LEN, rlen)) {
		log_debug("redis message dropped", "reason", "invalid room name");
		return;
	}
	memcpy(room, chan->str + ROOM_PREFIX_LEN, rlen);
	room[rlen] = '\0';
	if (m && m->len == (size_t)payload->len && !strcmp(m->room, room) &&
	    !memcmp(m->payload, payload->str, m->len)) {
		pop_own();
		own_done(room);
		g_deliver(room, payload->str, m->len, m->src, m->born_ns);
		free(m);
		return;
	}
	if (!utf8_valid((const unsigned char *)payload->str, (size_t)payload->len)) {
		log_warn("redis message dropped", "room", room, "reason", "payload is not UTF-8");
		return;
	}
	g_deliver(room, payload->str, (size_t)payload->len, METRICS_SRC_REDIS, util_now_ns());
}

static bool seller_id_of(struct json_object *o, char *out, size_t n)
{
	struct json_object *v;

	if (!o || !json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, "seller_id", &v))
		return false;
	if (json_object_is_type(v, json_type_int))
		snprintf(out, n, "%lld", (long long)json_object_get_int64(v));
	else if (json_object_is_type(v, json_type_string) && json_object_get_string_len(v))
		snprintf(out, n, "%s", json_object_get_string(v));
	else
		return false;
	return true;
}

/* Stats events of the REST service (docs/operations.md): routed by type, forwarded unchanged. */
static void on_stats_event(const char *payload, size_t len)
{
	struct json_tokener *tok = json_tokener_new();
	struct json_object *root = NULL, *type, *inner;
	char id[ROOM_NAME_MAX + 1], room[ROOM_NAME_MAX + 8];
	const char *t;

	if (tok && len <= INT_MAX) {
		/* Forwarded as a text frame: see utf8_valid. */
		json_tokener_set_flags(tok, JSON_TOKENER_VALIDATE_UTF8);
		root = json_tokener_parse_ex(tok, payload, (int)len);
	}
	if (!root || !json_object_is_type(root, json_type_object) ||
	    !json_object_object_get_ex(root, "type", &type) ||
	    !json_object_is_type(type, json_type_string)) {
		log_debug("redis event ignored", "reason", "not a JSON object with a type");
		goto out;
	}
	t = json_object_get_string(type);
	if (!strcmp(t, "ADMIN_STATS_UPDATED")) {
		g_deliver("admins", payload, len, METRICS_SRC_REDIS, util_now_ns());
	} else if (!strcmp(t, "SELLER_STATS_UPDATED")) {
		if (!seller_id_of(root, id, sizeof(id)) &&
		    !(json_object_object_get_ex(root, "data", &inner) &&
		      seller_id_of(inner, id, sizeof(id))) &&
		    !(json_object_object_get_ex(root, "payload", &inner) &&
		      seller_id_of(inner, id, sizeof(id)))) {
			log_warn("redis event ignored", "type", t, "reason", "no seller_id");
			goto out;
		}
		snprintf(room, sizeof(room), "seller-%s", id);
		if (!room_name_valid(room, strlen(room))) {
			log_warn("redis event ignored", "type", t, "reason", "invalid seller_id");
			goto out;
		}
		g_deliver(room, payload, len, METRICS_SRC_REDIS, util_now_ns());
	} else {
		log_debug("redis event ignored", "type", t, "reason", "unknown type");
	}
out:
	if (root)
		json_object_put(root);
	if (tok)
		json_tokener_free(tok);
}

static bool reply_is(const redisReply *r, const char *s)
{
	size_t n = strlen(s);
	return r->type == REDIS_REPLY_STRING && (size_t)r->len == n && !memcmp(r->str, s, n);
}

/* Every subscription shares this callback: acknowledgements (room channels' included, and
 * their UNSUBSCRIBE confirmations) and messages. */
static void on_sub(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;
	redisReply **e;

	if (ac != g.sub || !reply)
		return;
	if (reply->type == REDIS_REPLY_ERROR) {
		lose("SUBSCRIBE failed", reply->str);
		return;
	}
	if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3)
		return;
	e = reply->element;
	if (reply_is(e[0], "subscribe") || reply_is(e[0], "unsubscribe")) {
		if (e[1]->type == REDIS_REPLY_STRING && (size_t)e[1]->len > ROOM_PREFIX_LEN &&
		    !memcmp(e[1]->str, ROOM_PREFIX, ROOM_PREFIX_LEN)) {
			room_ack(e[1], reply_is(e[0], "subscribe"));
		} else if (reply_is(e[0], "subscribe")) {
			g.sub_acks++;
			maybe_up();
		}
	} else if (reply_is(e[0], "message") && e[1]->type == REDIS_REPLY_STRING &&
	           e[2]->type == REDIS_REPLY_STRING) {
		if ((size_t)e[1]->len > ROOM_PREFIX_LEN &&
		    !memcmp(e[1]->str, ROOM_PREFIX, ROOM_PREFIX_LEN)) {
			metrics.bus_received++;
			on_room_message(e[1], e[2]);
		} else if (reply_is(e[1], g.hb_channel))
			heartbeat_echo(e[2]->str, (size_t)e[2]->len);
		else if (reply_is(e[1], EVENTS_CHANNEL))
			on_stats_event(e[2]->str, (size_t)e[2]->len);
		else if (reply_is(e[1], CTL_CHANNEL) && g.ctl)
			g.ctl(e[2]->str, (size_t)e[2]->len);
	}
}

static void on_connected(const redisAsyncContext *ac, int status)
{
	if (status == REDIS_OK)
		return;
	/* hiredis frees ac after this returns. */
	if (forget(ac))
		lose("connect failed", ac->errstr);
}

static void on_disconnected(const redisAsyncContext *ac, int status)
{
	/* hiredis frees ac after this returns; when we freed it, it is no longer ours. */
	if (forget(ac))
		lose("connection lost", ac->err ? ac->errstr : "closed");
}

static redisAsyncContext *open_ctx(const char *ip)
{
	redisAsyncContext *ac = redisAsyncConnect(ip, g.port);

	if (!ac) {
		lose("redisAsyncConnect failed", "out of memory");
		return NULL;
	}
	if (ac->err) {
		char why[160];
		snprintf(why, sizeof(why), "%s", ac->errstr);
		redisAsyncFree(ac); /* not attached and not in a callback: freed at once */
		lose("connect failed", why);
		return NULL;
	}
	if (redisLibuvAttach(ac, g.loop) != REDIS_OK) {
		/* The adapter sets its cleanup hook before it can fail; without its data the
		 * hook would dereference NULL. */
		ac->ev.cleanup = NULL;
		redisAsyncFree(ac);
		lose("redisLibuvAttach failed", NULL);
		return NULL;
	}
	redisAsyncSetConnectCallback(ac, on_connected);
	redisAsyncSetDisconnectCallback(ac, on_disconnected);
	return ac;
}

/* Commands are queued before the TCP connect completes; hiredis writes them once it does.
 * AUTH goes first on both: on the subscriber it must precede SUBSCRIBE, after which hiredis
 * treats the context as subscribed. */
static void connect_both(const char *ip)
{
	const char *auth[2] = {"AUTH", g.password};
	const char *subscribe[4] = {"SUBSCRIBE", EVENTS_CHANNEL, g.hb_channel, CTL_CHANNEL};
	const char *ping[1] = {"PING"};
	bool ok = true;

	set_state(RB_CONNECTING);
	g.sub_acks = 0;
	g.resub_left = 0;
	g.pub_ready = false;
	if (!(g.sub = open_ctx(ip)))
		return;
	if (!(g.pub = open_ctx(ip)))
		return;
	if (g.password) {
		ok = ok && redisAsyncCommandArgv(g.sub, on_auth, NULL, 2, auth, NULL) == REDIS_OK;
		ok = ok && redisAsyncCommandArgv(g.pub, on_auth, NULL, 2, auth, NULL) == REDIS_OK;
	}
	ok = ok && redisAsyncCommandArgv(g.sub, on_sub, NULL, 4, subscribe, NULL) == REDIS_OK;
	ok = ok && redisAsyncCommandArgv(g.pub, on_ping, NULL, 1, ping, NULL) == REDIS_OK;
	if (!ok) {
		lose("redisAsyncCommand failed", "context refused the command");
		return;
	}
	/* The link is up once these are confirmed too, as it was with one pattern: after a
	 * reconnect "up" still means every local room receives what is published to it. */
	resubscribe_all();
}

/* getaddrinfo runs on libuv's thread pool: a DNS name (a compose service) must not block
 * the loop. Successive attempts rotate through the addresses, so a name that resolves to
 * an address Redis does not listen on (::1 for localhost) cannot wedge the link. */
static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	char ip[64] = "";
	bool current = req == g.resolving && g.state == RB_RESOLVING;
	struct addrinfo *ai;
	uint32_t n = 0;

	free(req);
	if (current)
		g.resolving = NULL;
	if (current && status == 0) {
		for (ai = res; ai; ai = ai->ai_next)
			n++;
		ai = res;
		for (uint32_t i = n ? g.attempts % n : 0; ai && i > 0; i--)
			ai = ai->ai_next;
		if (ai && ai->ai_family == AF_INET6)
			uv_ip6_name((const struct sockaddr_in6 *)ai->ai_addr, ip, sizeof(ip));
		else if (ai && ai->ai_family == AF_INET)
			uv_ip4_name((const struct sockaddr_in *)ai->ai_addr, ip, sizeof(ip));
	}
	uv_freeaddrinfo(res);
	if (!current)
		return;
	if (status < 0)
		lose("getaddrinfo failed", uv_strerror(status));
	else if (!*ip)
		lose("getaddrinfo failed", "no IPv4 or IPv6 address");
	else
		connect_both(ip);
}

static void start_connect(void)
{
	struct addrinfo hints;
	char port[8];
	uv_getaddrinfo_t *req;
	int rc;

	if (g.state == RB_STOPPING)
		return;
	set_state(RB_RESOLVING);
	uv_timer_start(&g.timer, on_connect_deadline, CONNECT_TIMEOUT_MS, 0);
	req = malloc(sizeof(*req));
	if (!req) {
		lose("getaddrinfo failed", "out of memory");
		return;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", g.port);
	g.resolving = req;
	rc = uv_getaddrinfo(g.loop, req, on_resolved, g.host, port, &hints);
	if (rc < 0) {
		g.resolving = NULL;
		free(req);
		lose("getaddrinfo failed", uv_strerror(rc));
	}
}

/* ---- publishing ---- */

static void on_published(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;

	if (ac != g.pub || !reply)
		return;
	/* An error here is a configuration problem (NOAUTH, an ACL without PUBLISH) that every
	 * later message would hit too: drop the link, which delivers this one locally. */
	if (reply->type == REDIS_REPLY_ERROR) {
		lose("PUBLISH failed", reply->str);
		return;
	}
	/* Replies come in publish order. */
	g.pub_acked = (uintptr_t)privdata;
}

/* Queues a PUBLISH; with track (the room's subscription confirmed, local members waiting)
 * the message is also remembered until it comes back. */
static int publish(const char *room, const char *payload, size_t len, enum metrics_source src,
                   uint64_t born_ns, struct rsub *track)
{
	char channel[ROOM_PREFIX_LEN + ROOM_NAME_MAX + 1];
	size_t rlen = strlen(room);
	const char *argv[3] = {"PUBLISH", channel, payload};
	size_t lens[3] = {7, ROOM_PREFIX_LEN + rlen, len};
	struct own_msg *m;
	uint64_t seq;

	if (rlen > ROOM_NAME_MAX)
		return -1;
	if (g.own_bytes + g.held_bytes + len > OWN_MAX_BYTES) {
		lose("PUBLISH failed", "64 MiB published and not yet received back");
		return -1;
	}
	memcpy(channel, ROOM_PREFIX, ROOM_PREFIX_LEN);
	memcpy(channel + ROOM_PREFIX_LEN, room, rlen + 1);
	seq = ++g.pub_seq;
	if (redisAsyncCommandArgv(g.pub, on_published, (void *)(uintptr_t)seq, 3, argv, lens) !=
	    REDIS_OK) {
		lose("PUBLISH failed", g.pub->errstr);
		return -1;
	}
	/* Without memory to remember it the message is still published and delivered when it
	 * comes back (as a foreign one); only the local fallback on link loss is missing. */
	if (!track || !(m = malloc(sizeof(*m) + len)))
		return 0;
	track->own++;
	m->next = NULL;
	m->seq = seq;
	m->born_ns = born_ns;
	m->src = src;
	m->len = len;
	memcpy(m->room, room, rlen + 1);
	memcpy(m->payload, payload, len);
	if (g.tail)
		g.tail->next = m;
	else
		g.head = m;
	g.tail = m;
	g.own_bytes += len;
	return 0;
}

static struct rsub_extra *ensure_extra(struct rsub *r)
{
	if (!r->x)
		r->x = calloc(1, sizeof(*r->x));
	return r->x;
}

/* Keeps a message for a room whose subscription is not confirmed yet; see struct held_msg.
 * On failure nothing is kept (an empty extra part is freed with the room or its next use). */
static int hold(struct rsub *r, const char *payload, size_t len, enum metrics_source src,
                uint64_t born_ns)
{
	struct held_msg *h;

	if (g.own_bytes + g.held_bytes + len > OWN_MAX_BYTES) {
		lose("PUBLISH failed", "64 MiB published and not yet received back");
		return -1;
	}
	if (!ensure_extra(r) || !(h = malloc(sizeof(*h) + len)))
		return -1;
	h->next = NULL;
	h->born_ns = born_ns;
	h->src = src;
	h->len = len;
	memcpy(h->payload, payload, len);
	if (r->x->held_tail)
		r->x->held_tail->next = h;
	else
		r->x->held = h;
	r->x->held_tail = h;
	g.held_bytes += len;
	return 0;
}

void redisbus_publish(const char *room, const char *payload, size_t len, enum metrics_source src)
{
	uint64_t born_ns = util_now_ns();
	struct rsub *r;

	if (g.state == RB_UP) {
		/* Without local members nothing waits for the echo: published untracked. */
		r = rsub_find(room, strlen(room));
		if (r && r->want && !confirmed(r)) {
			if (hold(r, payload, len, src, born_ns) == 0)
				return;
		} else if (publish(room, payload, len, src, born_ns, r && r->want ? r : NULL) ==
		           0) {
			return;
		}
	}
	/* Degraded mode: this replica's members still get it, other replicas' do not. */
	metrics.redis_publish_failures++;
	g_deliver(room, payload, len, src, born_ns);
}

bool redisbus_is_up(void)
{
	return g.state == RB_UP;
}

int redisbus_when_subscribed(const char *room, void (*fn)(void *arg), void *arg)
{
	struct rsub *r;
	struct waiter *w;

	if (g.state != RB_UP)
		return 0;
	r = rsub_find(room, strlen(room));
	if (!r || !r->want || confirmed(r) || !ensure_extra(r) || !(w = malloc(sizeof(*w))))
		return 0;
	w->fn = fn;
	w->arg = arg;
	w->next = r->x->waiters;
	r->x->waiters = w;
	return 1;
}

void redisbus_set_ctl(redisbus_ctl_fn on_message, void (*on_up)(void))
{
	g.ctl = on_message;
	g.ctl_up = on_up;
}

static void on_ctl_published(redisAsyncContext *ac, void *r, void *privdata)
{
	redisReply *reply = r;

	if (ac == g.pub && reply && reply->type == REDIS_REPLY_ERROR)
		lose("PUBLISH failed", reply->str);
}

int redisbus_ctl_publish(const char *payload, size_t len)
{
	const char *argv[3] = {"PUBLISH", CTL_CHANNEL, payload};
	size_t lens[3] = {7, sizeof(CTL_CHANNEL) - 1, len};

	if (g.state != RB_UP)
		return -1;
	if (redisAsyncCommandArgv(g.pub, on_ctl_published, NULL, 3, argv, lens) != REDIS_OK) {
		lose("PUBLISH failed", g.pub->errstr);
		return -1;
	}
	return 0;
}

/* ---- start and stop ---- */

/* host:port, [v6]:port, or host alone (port 6379). */
static int parse_addr(const char *addr)
{
	const char *host = addr, *port = NULL, *colon;
	size_t hlen;
	char *end;
	long p = 6379;

	if (addr[0] == '[') {
		const char *close_br = strchr(addr, ']');
		if (!close_br || (close_br[1] && close_br[1] != ':'))
			return -1;
		host = addr + 1;
		hlen = (size_t)(close_br - host);
		port = close_br[1] ? close_br + 2 : NULL;
	} else {
		colon = strchr(addr, ':');
		if (colon && strchr(colon + 1, ':'))
			return -1; /* a URL or a bare IPv6 address */
		hlen = colon ? (size_t)(colon - addr) : strlen(addr);
		port = colon ? colon + 1 : NULL;
	}
	if (!hlen || hlen >= sizeof(g.host))
		return -1;
	if (port) {
		p = strtol(port, &end, 10);
		if (!*port || *end || p < 1 || p > 65535)
			return -1;
	}
	memcpy(g.host, host, hlen);
	g.host[hlen] = '\0';
	g.port = (int)p;
	return 0;
}

int redisbus_start(const struct config *cfg, uv_loop_t *loop, redisbus_deliver_fn deliver)
{
	g_deliver = deliver;
	if (parse_addr(cfg->redis_addr) < 0) {
		fprintf(stderr, "roomcast: invalid REDIS_ADDR=%s: expected host:port\n",
		        cfg->redis_addr);
		return -1;
	}
	g.loop = loop;
	snprintf(g.addr, sizeof(g.addr), "%s", cfg->redis_addr);
	g.password =
	    cfg->redis_password && *cfg->redis_password ? strdup(cfg->redis_password) : NULL;
	g.rng = (uv_hrtime() ^ ((uint64_t)getpid() << 32)) | 1;
	/* Our heartbeat channel is ours alone; the nonce tells this process's heartbeats from
	 * those of a replica that was given the same NODE_ID by mistake. */
	snprintf(g.hb_channel, sizeof(g.hb_channel), "roomcast:hb:%s", cfg->node_id);
	snprintf(g.hb_nonce, sizeof(g.hb_nonce), "%016llx", (unsigned long long)next_random());
	uv_timer_init(loop, &g.timer);
	uv_timer_init(loop, &g.heartbeat);
	uv_timer_init(loop, &g.reaper);
	uv_timer_init(loop, &g.flush);
	uv_check_init(loop, &g.hb_verdict);
	room_set_life_hook(on_room_life);
	start_connect();
	return 0;
}

/* At stop: waiters go on (their joins are answered), held messages are dropped like the
 * in-flight ones. */
static void free_rooms(void)
{
	struct rsub *r;
	struct held_msg *h;

	for (uint32_t i = 0; i < g.nslots; i++) {
		if (!(r = g.slots[i]))
			continue;
		while (r->x && (h = r->x->held)) {
			r->x->held = h->next;
			free(h);
		}
		run_waiters(r); /* frees r->x */
		free(r);
	}
	free(g.slots);
	g.slots = NULL;
	g.nslots = g.nrooms = 0;
	g.dirty = NULL;
	g.held_bytes = 0;
	metrics.bus_channels = 0;
}

void redisbus_stop(void)
{
	if (g.state == RB_IDLE || g.state == RB_STOPPING)
		return;
	set_state(RB_STOPPING);
	if (g.resolving) {
		/* Its callback still runs (cancelled or done) and frees it as stale. */
		uv_cancel((uv_req_t *)g.resolving);
		g.resolving = NULL;
	}
	retire(g.sub);
	retire(g.pub);
	g.sub = g.pub = NULL;
	reap(NULL);
	flush_own(false);
	free_rooms();
	uv_close((uv_handle_t *)&g.flush, NULL);
	uv_close((uv_handle_t *)&g.hb_verdict, NULL);
	uv_close((uv_handle_t *)&g.timer, NULL);
	uv_close((uv_handle_t *)&g.heartbeat, NULL);
	uv_close((uv_handle_t *)&g.reaper, NULL);
	free(g.password);
	g.password = NULL;
}
