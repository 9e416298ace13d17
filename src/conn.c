/* Connection lifecycle, the outbound queue with its byte budget, writes from the writeable
 * callback, closes with codes, and the per-connection token bucket. */
#include "conn.h"
#include "authz.h"
#include "session.h"
#include "log.h"
#include "metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(FRAME_PRE >= LWS_PRE, "frame headroom must fit the lws header");

static const struct config *g_cfg;
static struct lws_context *g_ctx;
static struct conn *g_live;
static struct conn *g_dead;
static int64_t g_count;
static uint64_t g_seq;

/* lws_write's close-frame type: lws 4.1.6 handles it but keeps the enum value private. */
#define CONN_LWS_WRITE_CLOSE ((enum lws_write_protocol)4)

/* How long a closed connection waits for the peer's close frame before the socket goes. */
#define CONN_CLOSE_ACK_S 3

/* Frames written per writeable callback before yielding to other connections. */
#define WRITES_PER_CALLBACK 32
/* Largest batch frame for ?batch=1 clients. */
#define BATCH_MAX_BYTES 65536

void conn_setup(const struct config *cfg, struct lws_context *ctx)
{
	g_cfg = cfg;
	g_ctx = ctx;
}

struct conn *conn_new(struct lws *wsi, const char *ip, bool batch)
{
	struct conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->wsi = wsi;
	c->state = CONN_AWAIT_AUTH;
	snprintf(c->id, sizeof(c->id), "conn-%llu", (unsigned long long)++g_seq);
	snprintf(c->ip, sizeof(c->ip), "%s", ip ? ip : "");
	c->batch = batch;
	frame_queue_init(&c->q);
	buf_init(&c->rx);
	c->tokens = g_cfg->rate_burst;
	c->tokens_at_ns = util_now_ns();
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
	log_debug("connection state", "conn", c->id, "from", names[c->state], "to", names[s]);
	c->state = s;
}

void conn_detach(struct conn *c)
{
	if (c->state == CONN_DEAD)
		return;
	set_state(c, CONN_DEAD);
	c->wsi = NULL;
	room_leave_all(&c->member);
	sess_pending_clear(c);
	lws_sul_cancel(&c->sul_auth);
	lws_sul_cancel(&c->sul_expiry);
	frame_queue_clear(&c->q);
	buf_free(&c->rx);
	if (c->prev)
		c->prev->next = c->next;
	else
		g_live = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = c->next = NULL;
	g_count--;
	metrics.connections = g_count;
	c->next_dead = g_dead;
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
	auth_identity_clear(&c->ident);
	authz_cache_free(c);
	free(c);
}

void conn_reap(void)
{
	struct conn **pp = &g_dead;
	while (*pp) {
		struct conn *c = *pp;
		if (c->refs) {
			pp = &c->next_dead;
			continue;
		}
		*pp = c->next_dead;
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

void conn_close(struct conn *c, uint16_t code, const char *reason, bool flush)
{
	enum metrics_close why;

	if (!conn_alive(c))
		return;
	switch (code) {
	case 1000:
		why = CLOSE_NORMAL;
		break;
	case 1001:
		why = CLOSE_SHUTDOWN;
		break;
	case 1009:
		why = CLOSE_TOO_BIG;
		break;
	case 4001:
		why = CLOSE_TOKEN;
		break;
	case 4003:
		why = CLOSE_FORBIDDEN;
		break;
	case 4008:
		why = CLOSE_SLOW;
		break;
	case 4029:
		why = CLOSE_RATE;
		break;
	default:
		why = CLOSE_POLICY;
	}
	metrics.closes[why]++;
	set_state(c, CONN_CLOSING);
	c->close_code = code;
	snprintf(c->close_reason, sizeof(c->close_reason), "%s", reason);
	log_info("closing connection", "conn", c->id, "user",
	         c->ident.user_id[0] ? c->ident.user_id : NULL, "reason", reason);
	/* The connection stays in its rooms until lws detaches it, so a fan-out in progress never
	 * sees a room array change under it; conn_send refuses frames from now on. */
	if (!flush)
		frame_queue_clear(&c->q);
	/* A peer that stopped reading never gives us a writeable callback to send the close
	 * frame from; lws then kills the socket when this timeout expires. */
	if (c->wsi)
		lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, flush ? 5 : 2);
	request_write(c);
}

int conn_send(struct conn *c, struct frame *f)
{
	if (!conn_alive(c))
		return -1;
	if (c->q.bytes + f->len > (size_t)g_cfg->send_queue_max_bytes) {
		metrics.drops_slow++;
		conn_close(c, 4008, "slow consumer", false);
		return -1;
	}
	if (frame_queue_push(&c->q, f) < 0) {
		conn_close(c, 1011, "out of memory", false);
		return -1;
	}
	if (c->q.count == 1)
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

int conn_on_writeable(struct conn *c)
{
	int n = 0;

	if (!c->wsi)
		return -1;
	while (c->q.count && n < WRITES_PER_CALLBACK) {
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
		/* lws keeps what the kernel did not take; stop until that drains. */
		if (lws_send_pipe_choked(c->wsi))
			break;
	}
	if (c->q.count) {
		request_write(c);
		return 0;
	}
	if (c->state == CONN_CLOSING && !c->close_sent) {
		/* lws 4.1.6 drops a close reason set with lws_close_reason() when the writeable
		 * callback returns -1, so the close frame is written here. The socket then stays
		 * open, still read, until the peer answers with its close (lws completes that) or
		 * the timeout passes: closing at once would reset a peer with frames in flight, and
		 * the reset would destroy the close code before the peer read it. */
		unsigned char frame[LWS_PRE + 2 + sizeof(c->close_reason)];
		size_t rlen = strlen(c->close_reason);
		frame[LWS_PRE] = (unsigned char)(c->close_code >> 8);
		frame[LWS_PRE + 1] = (unsigned char)(c->close_code & 0xff);
		memcpy(frame + LWS_PRE + 2, c->close_reason, rlen);
		if (lws_write(c->wsi, frame + LWS_PRE, 2 + rlen, CONN_LWS_WRITE_CLOSE) < 0)
			return -1;
		c->close_sent = true;
		lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_ACK, CONN_CLOSE_ACK_S);
	}
	return 0;
}

bool conn_rate_take(struct conn *c)
{
	uint64_t now = util_now_ns();
	double elapsed = (double)(now - c->tokens_at_ns) / 1e9;

	c->tokens += elapsed * g_cfg->rate_per_s;
	if (c->tokens > g_cfg->rate_burst)
		c->tokens = g_cfg->rate_burst;
	c->tokens_at_ns = now;
	if (c->tokens >= 1.0) {
		c->tokens -= 1.0;
		c->strikes = 0;
		return true;
	}
	return false;
}
