/* Connection lifecycle, the outbound queue with its byte budget, writes from the writeable
 * callback, closes with codes, the per-connection token bucket, and the connection timer: one
 * uv_timer and a one-second wheel that run every connection's pings and deadlines. */
#include "conn.h"
#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

_Static_assert(FRAME_PRE >= LWS_PRE, "frame headroom must fit the lws header");

static const struct config *g_cfg;
static struct lws_context *g_ctx;
static struct conn *g_live;
static struct conn *g_dead;
static int64_t g_count;
static uint64_t g_seq;
static struct conn_hooks g_hooks;

/* conn_close's reasons are string literals, a few dozen in the source: a connection keeps a
 * byte indexing this table (filled as reasons first appear) instead of an 8-byte pointer. */
static const char *g_reasons[256] = {""};
static unsigned g_nreasons = 1;

static uint8_t reason_index(const char *reason)
{
	for (unsigned i = 0; i < g_nreasons; i++)
		if (g_reasons[i] == reason || !strcmp(g_reasons[i], reason))
			return (uint8_t)i;
	if (g_nreasons == 256)
		return 0; /* more distinct literals than the source has: the frame carries none */
	g_reasons[g_nreasons] = reason;
	return (uint8_t)g_nreasons++;
}

/*
 * The connection timer. lws 4.1.6 keeps every timer of a thread (lws_sul, lws_set_timeout, the
 * ping/hangup of a retry policy) in one list sorted by deadline and inserts by walking it, so a
 * per-connection timer costs O(connections) each time it is armed. roomcast therefore arms no
 * lws timer per connection: every live connection sits in this wheel under its next deadline,
 * and a one-second uv_timer visits only the connections due. Ticks count seconds from start.
 */
static uv_loop_t *g_loop;
static uv_timer_t g_tick;
static uint64_t g_tick_origin_ms;
/* The server's own stalls (a process starved of CPU, stopped, or a paused VM): a peer is not
 * judged silent for time in which its frames sat unread in the socket or its pings went
 * unsent. The loop looks at its clock at least once a second while it runs (g_tick), so a
 * longer gap between two looks is a stall; every connection's silence (and a pending auth
 * deadline) then counts from the tick the server resumed. That is applied to each connection
 * when its timer next looks at it (run_timers), so there is no walk over the connections, and
 * the ticks stay real time for every other deadline (token expiry, closes). */
static uint64_t g_seen_ms; /* the loop clock at the last look */
static uint32_t g_resumed; /* the tick at which the server last resumed from a stall (0: none) */
#define CONN_STALL_MS 2000
static struct wheel g_wheel;
static bool g_kill_pending; /* lws must run its timers to drop a socket (see drop_socket) */

/* a + b and a - b saturated at the long long range: exp is whatever the token said. */
static long long sat_add(long long a, long long b)
{
	long long r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? LLONG_MAX : LLONG_MIN;
	return r;
}

static long long sat_sub(long long a, long long b)
{
	long long r;
	if (__builtin_sub_overflow(a, b, &r))
		return b < 0 ? LLONG_MAX : LLONG_MIN;
	return r;
}

/* lws_write's close-frame type: lws 4.1.6 handles it but keeps the enum value private. */
#define CONN_LWS_WRITE_CLOSE ((enum lws_write_protocol)4)

/* How long a closed connection waits for the peer's close frame before the socket goes. */
#define CONN_CLOSE_ACK_S 3

/* Frames written per writeable callback before yielding to other connections. */
#define WRITES_PER_CALLBACK 32
/* Largest batch frame for ?batch=1 clients. */
#define BATCH_MAX_BYTES 65536
/* Queued frames handed to one sendmsg (well under IOV_MAX), and the bytes they may add up to:
 * more than the kernel takes at once past TCP_NOTSENT_LOWAT (16 KB unsent, see gate.c), so one
 * call fills the socket. */
#define WRITEV_FRAMES 64
#define WRITEV_BYTES  65536

const char *conn_id(const struct conn *c)
{
	static char bufs[4][24];
	static unsigned next;
	char *b = bufs[next++ % 4];

	snprintf(b, sizeof(bufs[0]), "conn-%llu", (unsigned long long)c->seq);
	return b;
}

void conn_setup(const struct config *cfg, struct lws_context *ctx)
{
	g_cfg = cfg;
	g_ctx = ctx;
	wheel_init(&g_wheel, 1);
}

void conn_set_hooks(const struct conn_hooks *hooks)
{
	g_hooks = *hooks;
}

/* The current tick: from the loop's cached clock while the timer runs (cheap enough for every
 * frame), else the wheel's own (unit tests drive it by hand). The first look after a stall, an
 * I/O callback's or the timer's, records the resume (see g_resumed). */
static uint32_t now_tick(void)
{
	uint64_t ms;
	uint32_t tick;

	if (!g_loop)
		return g_wheel.now;
	ms = uv_now(g_loop);
	tick = (uint32_t)((ms - g_tick_origin_ms) / 1000) + 1;
	if (ms - g_seen_ms > CONN_STALL_MS) {
		char took[24];
		snprintf(took, sizeof(took), "%llu", (unsigned long long)(ms - g_seen_ms));
		log_warn("event loop stalled; not counted as peer silence", "ms", took);
		g_resumed = tick;
	}
	g_seen_ms = ms;
	return tick;
}

struct conn *conn_new(struct lws *wsi, const char *ip, bool batch)
{
	struct conn *c = calloc(1, sizeof(*c) + g_hooks.owner_size);
	if (!c)
		return NULL;
	c->wsi = wsi;
	c->state = CONN_AWAIT_AUTH;
	c->seq = ++g_seq;
	c->ip = ip;
	c->batch = batch;
	frame_queue_init(&c->q);
	c->tokens = (float)g_cfg->rate_burst;
	c->tokens_at_ms = (uint32_t)(util_now_ns() / 1000000);
	/* "At least N seconds": a tick stamp may be up to a second older than the moment it
	 * records, so deadlines are one tick further than the number of seconds they allow. */
	c->rx_at = now_tick();
	c->deadline = c->rx_at + (uint32_t)g_cfg->auth_timeout_s + 1;
	wheel_put(&g_wheel, &c->timer, conn_next_due(c, g_cfg, c->rx_at, (long long)time(NULL)));
	c->next = g_live;
	if (g_live)
		g_live->prev = c;
	g_live = c;
	g_count++;
	metrics.connections = g_count;
	metrics.connections_total++;
	return c;
}

static void set_state(struct conn *c, enum conn_state s)
{
	static const char *names[] = {"await_auth", "open", "closing", "dead"};
	if (c->state == s)
		return;
	log_debug("connection state", "conn", conn_id(c), "from", names[c->state], "to", names[s]);
	c->state = (uint8_t)s;
}

void conn_detach(struct conn *c)
{
	if (c->state == CONN_DEAD)
		return;
	set_state(c, CONN_DEAD);
	c->wsi = NULL;
	if (g_hooks.closed)
		g_hooks.closed(c);
	wheel_del(&g_wheel, &c->timer);
	frame_queue_clear(&c->q);
	conn_rx_clear(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		g_live = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	g_count--;
	metrics.connections = g_count;
	c->next = g_dead;
	g_dead = c;
}

void conn_release(struct conn *c)
{
	if (c->refs)
		c->refs--;
}

/* Frees a connection's memory; only ever reached from conn_reap. */
static void conn_free(struct conn *c)
{
	if (g_hooks.freed)
		g_hooks.freed(c);
	free(c);
}

void conn_reap(void)
{
	struct conn **pp = &g_dead;
	while (*pp) {
		struct conn *c = *pp;
		if (c->refs) {
			pp = &c->next;
			continue;
		}
		*pp = c->next;
		conn_free(c);
	}
}

struct conn *conn_first(void)
{
	return g_live;
}

int64_t conn_count(void)
{
	return g_count;
}

static void request_write(struct conn *c)
{
	if (c->wsi)
		lws_callback_on_writable(c->wsi);
}

void conn_established(struct conn *c)
{
	/* Plain TCP only: a TLS connection's bytes must go through lws's TLS session. */
	c->direct = c->wsi && !lws_is_ssl(c->wsi);
}

void conn_peer_closing(struct conn *c)
{
	c->direct = false;
}

void conn_close(struct conn *c, uint16_t code, const char *reason, bool flush)
{
	enum metrics_close why;

	if (!conn_alive(c))
		return;
	switch (code) {
	case 1000:
		why = METRICS_CLOSE_NORMAL;
		break;
	case 1001:
		why = METRICS_CLOSE_SHUTDOWN;
		break;
	case 1009:
		why = METRICS_CLOSE_TOO_BIG;
		break;
	case 4001:
		why = METRICS_CLOSE_TOKEN;
		break;
	case 4003:
		why = METRICS_CLOSE_FORBIDDEN;
		break;
	case 4008:
		why = METRICS_CLOSE_SLOW;
		break;
	case 4029:
		why = METRICS_CLOSE_RATE;
		break;
	default:
		why = METRICS_CLOSE_POLICY;
	}
	metrics.closes[why]++;
	set_state(c, CONN_CLOSING);
	c->close_code = code;
	c->close_reason = reason_index(reason);
	log_info("closing connection", "conn", conn_id(c), "reason", reason);
	/* The connection stays in its rooms until lws detaches it, so a fan-out in progress never
	 * sees a room array change under it; conn_send refuses frames from now on. */
	if (!flush)
		frame_queue_clear(&c->q);
	/* A peer that stopped reading never gives us a writeable callback to send the close
	 * frame from; the timer drops the socket when this deadline passes. */
	c->deadline = now_tick() + (flush ? 5 : 2) + 1;
	wheel_put(&g_wheel, &c->timer, c->deadline);
	request_write(c);
}

/* Counts a frame that went out: whole, or cut with its rest handed to lws. */
static void sent_one(struct frame *f)
{
	metrics.bytes_out += f->len;
	if (f->flags & FRAME_ROOM_MSG)
		metrics.deliveries++;
	else if (f->flags & FRAME_BATCH)
		metrics.deliveries += f->nmsgs;
	if (f->born_ns)
		metrics_observe_latency((double)(util_now_ns() - f->born_ns) / 1e9);
}

/* The socket refused a write for good (reset, broken pipe): nothing more can be said on it.
 * The connection is only marked: conn_send may run inside a fan-out, so lws closes it from the
 * writeable callback (or the timer drops it at the closing deadline). */
static void write_failed(struct conn *c, const char *call, int err)
{
	log_info("write failed", "conn", conn_id(c), "call", call, "reason", strerror(err));
	c->direct = false;
	c->write_failed = true;
	if (conn_alive(c)) {
		set_state(c, CONN_CLOSING);
		c->close_sent = true; /* no close frame can go out */
		c->deadline = now_tick() + 1;
		wheel_put(&g_wheel, &c->timer, c->deadline);
	}
	frame_queue_clear(&c->q);
	request_write(c);
}

/* A write cut a frame after some of its bytes: the rest goes to lws's own output buffer with
 * LWS_WRITE_RAW (no header of its own). lws 4.1.6 flushes that buffer before anything else
 * when the socket is writeable (lws_handle_POLLOUT_event: before a pong it owes, before our
 * writeable callback), and lws_write appends to it while it holds bytes, so no other frame can
 * cut into ours; lws asks for the writeable callback itself. lws copies rest. */
static int hand_rest(struct conn *c, const unsigned char *rest, size_t len)
{
	if (lws_write(c->wsi, (unsigned char *)rest, len, LWS_WRITE_RAW) < 0) {
		write_failed(c, "lws_write", EPIPE);
		return -1;
	}
	return 0;
}

/* Writes f straight to the socket of a direct connection with nothing queued: no lws call and
 * no poll change when the kernel takes it whole, the common case. Returns 0 when f went out
 * (whole, or cut with its rest handed to lws), 1 when the socket took nothing (queue f), -1
 * when the socket failed. */
static int send_now(struct conn *c, struct frame *f)
{
	size_t len;
	unsigned char *wire;
	ssize_t n;

	/* lws's own output (a cut frame's rest, a pong or close it could not finish) goes first. */
	if (lws_partial_buffered(c->wsi))
		return 1;
	wire = frame_wire(f, &len);
	n = send(lws_get_socket_fd(c->wsi), wire, len, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return 1;
		write_failed(c, "send", errno);
		return -1;
	}
	if ((size_t)n < len && hand_rest(c, wire + n, len - (size_t)n) < 0)
		return -1;
	sent_one(f);
	return 0;
}

int conn_send(struct conn *c, struct frame *f)
{
	if (!conn_alive(c))
		return -1;
	/* Not from inside c's receive callback: a ping read in the same pass as the message
	 * being answered left lws owing a pong it writes only when the socket is next writeable,
	 * and the pong must go out before the answer (they stay in order through the queue).
	 * Not for ?batch=1 clients either: they asked for messages to wait for the writeable
	 * callback, where those queued meanwhile leave as one array (fewer frames under load). */
	if (c->direct && !c->batch && !c->in_rx && !frame_queue_count(&c->q)) {
		int r = send_now(c, f);
		if (r <= 0)
			return r;
	}
	if ((size_t)frame_queue_bytes(&c->q) + f->len > (size_t)g_cfg->send_queue_max_bytes) {
		metrics.drops_slow++;
		conn_close(c, 4008, "slow consumer", false);
		return -1;
	}
	if (frame_queue_push(&c->q, f) < 0) {
		conn_close(c, 1011, "out of memory", false);
		return -1;
	}
	if (frame_queue_count(&c->q) == 1)
		request_write(c);
	return 0;
}

void conn_reply(struct conn *c, struct frame *f)
{
	if (!f)
		return;
	conn_send(c, f);
	frame_unref(f);
}

/* Joins consecutive room messages at the queue head into one JSON array frame. Returns NULL
 * when fewer than two are waiting (send the head as it is). */
static struct frame *take_batch(struct conn *c, uint32_t *taken)
{
	uint32_t n = 0;
	size_t total = 2;
	struct frame *f, *out;
	unsigned char *p;

	while ((f = frame_queue_peek(&c->q, n)) && (f->flags & FRAME_ROOM_MSG) &&
	       total + f->len + 1 <= BATCH_MAX_BYTES) {
		total += f->len + 1;
		n++;
	}
	if (n < 2)
		return NULL;
	out = frame_alloc(total - 1);
	if (!out)
		return NULL;
	p = frame_data(out);
	*p++ = '[';
	for (uint32_t i = 0; i < n; i++) {
		f = frame_queue_pop(&c->q);
		if (i)
			*p++ = ',';
		memcpy(p, frame_data(f), f->len);
		p += f->len;
		if (f->born_ns && !out->born_ns)
			out->born_ns = f->born_ns;
		frame_unref(f);
	}
	*p++ = ']';
	*taken = n;
	return out;
}

/* For a ?batch=1 client: consecutive room messages at the queue head become one array frame,
 * put back at the head. */
static void merge_head(struct conn *c)
{
	uint32_t taken = 1;
	struct frame *b = take_batch(c, &taken);

	if (!b)
		return;
	b->flags |= FRAME_BATCH;
	b->nmsgs = (uint16_t)taken;
	/* Cannot fail: at least two frames just left the ring. */
	if (frame_queue_push_front(&c->q, b) < 0)
		conn_close(c, 1011, "out of memory", false);
	frame_unref(b);
}

/* Writes queued frames of a direct connection, several per system call: one sendmsg of up to
 * WRITEV_FRAMES frames per writeable callback (the kernel takes only ~16 KB more anyway). Frames
 * that went out leave the queue; a cut one leaves it too, its rest handed to lws. Returns -1
 * when the socket failed. */
static int write_queued(struct conn *c)
{
	struct iovec iov[WRITEV_FRAMES];
	size_t lens[WRITEV_FRAMES], total = 0, cut;
	struct msghdr mh = {.msg_iov = iov};
	uint32_t k = 0, whole;
	ssize_t n;

	if (c->batch)
		merge_head(c);
	while (k < WRITEV_FRAMES && k < frame_queue_count(&c->q) && total < WRITEV_BYTES) {
		iov[k].iov_base = frame_wire(frame_queue_peek(&c->q, k), &lens[k]);
		iov[k].iov_len = lens[k];
		total += lens[k];
		k++;
	}
	if (!k)
		return 0;
	mh.msg_iovlen = k;
	n = sendmsg(lws_get_socket_fd(c->wsi), &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return 0; /* still queued: the caller asks for the next callback */
		write_failed(c, "sendmsg", errno);
		return -1;
	}
	whole = frame_sent_split(lens, k, (size_t)n, &cut);
	for (uint32_t i = 0; i < whole; i++) {
		struct frame *f = frame_queue_pop(&c->q);
		sent_one(f);
		frame_unref(f);
	}
	if (cut) {
		struct frame *f = frame_queue_pop(&c->q);
		int rc =
		    hand_rest(c, (unsigned char *)iov[whole].iov_base + cut, lens[whole] - cut);
		if (!rc)
			sent_one(f);
		frame_unref(f);
		return rc;
	}
	return 0;
}

int conn_on_writeable(struct conn *c)
{
	int n = 0;

	if (!c->wsi || c->write_failed)
		return -1;
	if (c->ping_due) {
		/* The payload is never checked, but it must not be empty: lws 4.1.6 does not pass
		 * an empty pong to LWS_CALLBACK_RECEIVE_PONG, and that callback is how the answer
		 * is noticed. */
		unsigned char ping[LWS_PRE + 2] = {0};
		c->ping_due = false;
		memcpy(ping + LWS_PRE, "rc", 2);
		if (conn_alive(c) && lws_write(c->wsi, ping + LWS_PRE, 2, LWS_WRITE_PING) < 0)
			return -1;
	}
	if (c->direct) {
		/* Nothing of ours may pass what lws still holds (a ping just written included). */
		if (!lws_partial_buffered(c->wsi) && write_queued(c) < 0)
			return -1;
	}
	while (!c->direct && frame_queue_count(&c->q) && n < WRITES_PER_CALLBACK) {
		uint32_t taken = 1;
		struct frame *f = c->batch ? take_batch(c, &taken) : NULL;
		if (!f)
			f = frame_queue_pop(&c->q);
		if (lws_write(c->wsi, frame_data(f), f->len, LWS_WRITE_TEXT) < (int)f->len) {
			frame_unref(f);
			return -1;
		}
		metrics.bytes_out += f->len;
		if (f->flags & FRAME_ROOM_MSG || taken > 1)
			metrics.deliveries += taken;
		if (f->born_ns)
			metrics_observe_latency((double)(util_now_ns() - f->born_ns) / 1e9);
		frame_unref(f);
		n++;
		/* lws keeps what the kernel did not take; stop until that drains. The socket's
		 * TCP_NOTSENT_LOWAT makes the kernel refuse bytes past 16 KB unsent, so this
		 * bounds what we hand it. lws_send_pipe_choked() would ask the same of a poll()
		 * syscall per frame, 16 % of a fan-out's CPU. */
		if (lws_partial_buffered(c->wsi))
			break;
	}
	if (c->drain_below && frame_queue_bytes(&c->q) <= c->drain_below && conn_alive(c)) {
		c->drain_below = 0;
		if (g_hooks.drained)
			g_hooks.drained(c);
	}
	if (frame_queue_count(&c->q)) {
		request_write(c);
		return 0;
	}
	if (c->state == CONN_CLOSING && !c->close_sent) {
		/* lws 4.1.6 drops a close reason set with lws_close_reason() when the writeable
		 * callback returns -1, so the close frame is written here. The socket then stays
		 * open, still read, until the peer answers with its close (lws completes that) or
		 * the timeout passes: closing at once would reset a peer with frames in flight, and
		 * the reset would destroy the close code before the peer read it. */
		unsigned char frame[LWS_PRE + 2 + 123];
		const char *reason = g_reasons[c->close_reason];
		size_t rlen = strnlen(reason, 123); /* a control frame holds 125 bytes */
		frame[LWS_PRE] = (unsigned char)(c->close_code >> 8);
		frame[LWS_PRE + 1] = (unsigned char)(c->close_code & 0xff);
		memcpy(frame + LWS_PRE + 2, reason, rlen);
		if (lws_write(c->wsi, frame + LWS_PRE, 2 + rlen, CONN_LWS_WRITE_CLOSE) < 0)
			return -1;
		c->close_sent = true;
		c->deadline = now_tick() + CONN_CLOSE_ACK_S + 1;
		wheel_put(&g_wheel, &c->timer, c->deadline);
	}
	return 0;
}

/* ---- the connection timer ---- */

static uint32_t max_u32(uint32_t a, uint32_t b)
{
	return a > b ? a : b;
}

unsigned conn_due(const struct conn *c, const struct config *cfg, uint32_t now, long long wall)
{
	unsigned due = 0;

	switch (c->state) {
	case CONN_DEAD:
		return 0;
	case CONN_CLOSING:
		return now >= c->deadline ? CONN_DUE_STUCK : 0;
	case CONN_AWAIT_AUTH:
		if (now >= c->deadline)
			due |= CONN_DUE_AUTH;
		break;
	case CONN_OPEN:
		if (!c->exp)
			break;
		if (!c->expiring_sent && wall >= sat_add(c->exp, -CONN_EXPIRY_WARN_S))
			due |= CONN_DUE_EXPIRING;
		/* TOKEN_EXPIRY_ACTION=keep: the Go service checked exp at the handshake only. */
		if (!cfg->token_expiry_keep && wall >= sat_add(c->exp, cfg->jwt_leeway_s))
			due |= CONN_DUE_EXPIRED;
		break;
	}
	/* Any frame proves the peer alive, a pong or a message alike. */
	if (now >= c->rx_at + (uint32_t)cfg->pong_timeout_s + 1)
		return CONN_DUE_SILENT;
	if (!(due & (CONN_DUE_AUTH | CONN_DUE_EXPIRED)) &&
	    now >= max_u32(c->rx_at, c->ping_at) + (uint32_t)cfg->ping_interval_s + 1)
		due |= CONN_DUE_PING;
	return due;
}

uint32_t conn_next_due(const struct conn *c, const struct config *cfg, uint32_t now, long long wall)
{
	uint32_t next;

	switch (c->state) {
	case CONN_DEAD:
		return 0;
	case CONN_CLOSING:
		next = c->deadline;
		break;
	default:
		next = c->rx_at + (uint32_t)cfg->pong_timeout_s + 1;
		if (max_u32(c->rx_at, c->ping_at) + (uint32_t)cfg->ping_interval_s + 1 < next)
			next = max_u32(c->rx_at, c->ping_at) + (uint32_t)cfg->ping_interval_s + 1;
		if (c->state == CONN_AWAIT_AUTH && c->deadline < next)
			next = c->deadline;
	}
	if (next <= now)
		next = now + 1;
	if (c->state == CONN_OPEN && c->exp && !(c->expiring_sent && cfg->token_expiry_keep)) {
		/* Token times are wall-clock seconds: look again when the wall clock gets there. */
		/* Saturating: exp is the token's, INT64_MAX included. */
		long long at = c->expiring_sent ? sat_add(c->exp, cfg->jwt_leeway_s)
		                                : sat_add(c->exp, -CONN_EXPIRY_WARN_S);
		long long in = sat_sub(at, wall);
		if (in < 1)
			in = 1;
		if (in < (long long)(next - now))
			next = now + (uint32_t)in;
	}
	return next;
}

/* Drops the socket of a peer that is silent or will not finish closing. lws closes a wsi with
 * nothing buffered at once (roomcast's LWS_CALLBACK_CLOSED detaches c, which the reaper frees
 * later). With bytes buffered for a peer that stopped reading, a synchronous kill would wait
 * for them; lws's own timeout path drops them, so that one goes through lws_set_timeout: one
 * insert at the head of lws's timer list, run when lws next services its timers. */
static void drop_socket(struct conn *c, const char *why)
{
	if (!c->wsi)
		return;
	log_info("dropping connection", "conn", conn_id(c), "reason", why);
	if (lws_partial_buffered(c->wsi)) {
		lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
		g_kill_pending = true;
		return;
	}
	lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC);
}

/* Does what is due for c at tick now and files it for its next deadline. may_kill is false
 * inside c's own callbacks. */
static void run_timers(struct conn *c, uint32_t now, bool may_kill)
{
	long long wall = (long long)time(NULL);
	unsigned due;

	/* The server stalled since c was last heard from: c's silence counts from the resume, and
	 * a client still owing its auth gets a tick to have its frame read. */
	if (c->rx_at < g_resumed)
		c->rx_at = g_resumed;
	if (c->state == CONN_AWAIT_AUTH && c->deadline <= g_resumed + 1)
		c->deadline = g_resumed + 2;
	due = conn_due(c, g_cfg, now, wall);

	if (due & (CONN_DUE_SILENT | CONN_DUE_STUCK)) {
		if (!may_kill) {
			wheel_put(&g_wheel, &c->timer, now + 1);
			return;
		}
		if (due & CONN_DUE_SILENT) {
			/* No close frame for a peer that stopped answering: the socket just goes.
			 */
			metrics.closes[METRICS_CLOSE_TIMEOUT]++;
			set_state(c, CONN_CLOSING);
			c->close_sent = true;
			c->deadline = now + 1;
		}
		drop_socket(c, due & CONN_DUE_SILENT ? "no pong" : "close not completed");
		/* Looked at again next tick, in case the socket is still there. */
		if (c->state != CONN_DEAD)
			wheel_put(&g_wheel, &c->timer, now + 1);
		return;
	}
	if (due & CONN_DUE_EXPIRING)
		c->expiring_sent = true; /* warned once */
	if (due & (CONN_DUE_AUTH | CONN_DUE_EXPIRING | CONN_DUE_EXPIRED)) {
		if (g_hooks.deadline)
			g_hooks.deadline(
			    c, due & (CONN_DUE_AUTH | CONN_DUE_EXPIRING | CONN_DUE_EXPIRED));
		else if (due & (CONN_DUE_AUTH | CONN_DUE_EXPIRED))
			conn_close(c, 4001, "deadline passed", true); /* no owner to ask */
	}
	if (due & CONN_DUE_PING) {
		c->ping_due = true;
		c->ping_at = now;
		request_write(c);
	}
	wheel_put(&g_wheel, &c->timer, conn_next_due(c, g_cfg, now, wall));
}

void conn_timers_update(struct conn *c)
{
	if (c->state != CONN_DEAD)
		run_timers(c, max_u32(now_tick(), g_wheel.now), false);
}

int conn_rx_put(struct conn *c, const void *data, size_t len)
{
	if (!c->rx) {
		c->rx = malloc(sizeof(*c->rx));
		if (!c->rx)
			return -1;
		buf_init(c->rx);
	}
	buf_put(c->rx, data, len);
	return c->rx->failed ? -1 : 0;
}

void conn_rx_clear(struct conn *c)
{
	if (c->rx) {
		buf_free(c->rx);
		free(c->rx);
		c->rx = NULL;
	}
}

void conn_touch(struct conn *c)
{
	/* Not refiled: the wheel visits c at its old deadline, finds nothing due, and files it
	 * again. That costs one visit per PING_INTERVAL_S instead of work on every frame. */
	c->rx_at = now_tick();
}

static void on_due(struct wheel_node *n, void *arg)
{
	struct conn *c = (struct conn *)((char *)n - offsetof(struct conn, timer));
	run_timers(c, g_wheel.now, true);
}

void conn_timers_run(uint32_t to)
{
	g_kill_pending = false;
	wheel_advance(&g_wheel, to, on_due, NULL);
	/* lws runs its timers after servicing a descriptor; waking it makes it drop the sockets
	 * handed to it above now rather than on its next unrelated event. */
	if (g_kill_pending && g_ctx)
		lws_cancel_service(g_ctx);
}

static void on_tick(uv_timer_t *t)
{
	conn_timers_run(now_tick());
}

void conn_timers_start(uv_loop_t *loop)
{
	g_loop = loop;
	g_tick_origin_ms = uv_now(loop);
	g_seen_ms = g_tick_origin_ms;
	g_resumed = 0;
	wheel_init(&g_wheel, 1);
	uv_timer_init(loop, &g_tick);
	uv_timer_start(&g_tick, on_tick, 1000, 1000);
	uv_unref((uv_handle_t *)&g_tick);
}

void conn_timers_stop(void)
{
	if (!g_loop)
		return;
	uv_timer_stop(&g_tick);
	uv_close((uv_handle_t *)&g_tick, NULL);
	g_loop = NULL;
}

bool conn_rate_take(struct conn *c)
{
	uint32_t now = (uint32_t)(util_now_ns() / 1000000);
	/* Stamps truncated to milliseconds lose nothing over time: the differences add up. */
	double t = c->tokens + (double)(uint32_t)(now - c->tokens_at_ms) / 1e3 * g_cfg->rate_per_s;

	if (t > g_cfg->rate_burst)
		t = g_cfg->rate_burst;
	c->tokens = (float)t;
	c->tokens_at_ms = now;
	if (c->tokens >= 1.0f) {
		c->tokens -= 1.0f;
		c->strikes = 0;
		return true;
	}
	return false;
}
