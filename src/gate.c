/* The listening socket, first-request-head reading with deadline and size limit, early refusals
 * with exact HTTP answers, per-address and total accounting of every connection from accept to
 * close, the absolute deadlines of each phase, POST /api/notify answered on kept-alive
 * connections (the notify fast path), and the hand-off of accepted sockets to lws.
 * lws never sees a token or an h2c upgrade. */
#include "gate.h"
#include "buf.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uthash.h>

enum pend_state { PEND_READING, PEND_LINGER, PEND_HANDOFF, PEND_CLOSED, PEND_LINGER_DONE };

/* A socket the gate is still reading (or draining after a refusal). */
struct pending {
	uv_poll_t poll;
	uv_timer_t timer;
	uv_timer_t repoll;
	int fd;
	enum pend_state state;
	int closing_handles;
	char ip[48];
	size_t len;
	char *out; /* rewritten head handed to lws */
	size_t out_len;
	struct gate_ticket *t; /* NULL once refused (lingering) or handed off */
	/* Kept alive after a notify the gate answered itself (see serve_notify); wait: the
	 * answer of a persisted notify that PostgreSQL has not confirmed yet. */
	bool served;
	struct gate_wait *wait;
	struct http_cred_memo memo; /* the notify credential this connection passed */
	struct pending *prev, *next;
};

/* Links a pending socket to a notify answer that comes later; orphaned when the socket goes
 * first, and the late answer is then discarded. */
struct gate_wait {
	struct pending *p;
	bool orphan;
};

/* Connections from one address, by budget. */
struct ip_entry {
	char ip[48];
	long http, ws;
	UT_hash_handle hh;
};

static const struct config *g_cfg;
static const struct auth *g_auth;
static struct lws_vhost *g_vhost;
static uv_loop_t *g_loop;
static uv_poll_t g_listen_poll;
static int g_listen_fd = -1;
static int g_spare_fd = -1;
static struct pending *g_pending;
static long g_npending, g_nlinger;
static struct ip_entry *g_ips;
static long g_nips;
/* Connections in each budget, and the tickets in lws with a deadline (oldest first). */
static long g_nhttp, g_nws;
static struct gate_ticket *g_dl_head, *g_dl_tail;
static uv_timer_t g_sweep;
static bool g_sweeping;
/* The ticket being handed to lws (see gate_ticket_claim). */
static struct gate_ticket *g_handoff;
/* One buffer for every head: heads are peeked, parsed, rewritten and consumed within a single
 * readable callback, so no socket needs a buffer of its own while it waits. */
static char *g_head;

#define LINGER_MS 1000
/* How often deadlines of connections in lws are checked: a deadline is kept to within this. */
#define SWEEP_MS 200
/* Unsent bytes the kernel may hold per client socket (see start_pending). */
#define GATE_NOTSENT_LOWAT 16384

static void pend_close(struct pending *p);

/* Refused sockets drained at once; beyond it a refusal is sent and the socket closed. */
static long linger_max(void)
{
	long n = g_cfg->max_http_connections / 8;
	return n < 4 ? 4 : n;
}

static struct ip_entry *ip_find(const char *ip)
{
	struct ip_entry *e;
	HASH_FIND_STR(g_ips, ip, e);
	return e;
}

static void publish_counts(void)
{
	metrics.open_http = g_nhttp;
	metrics.open_ws = g_nws;
	metrics.open_addresses = g_nips;
}

static void dl_unlink(struct gate_ticket *t)
{
	if (!t->deadline_ms)
		return;
	if (t->dprev)
		t->dprev->dnext = t->dnext;
	else
		g_dl_head = t->dnext;
	if (t->dnext)
		t->dnext->dprev = t->dprev;
	else
		g_dl_tail = t->dprev;
	t->dprev = t->dnext = NULL;
	t->deadline_ms = 0;
}

static long http_cap_per_ip(void)
{
	return g_cfg->max_http_connections_per_ip;
}

struct gate_ticket *gate_ticket_open(const char *ip, struct gate_refusal *ref)
{
	struct ip_entry *e = ip_find(ip);
	struct gate_ticket *t;

	if (e && e->http >= http_cap_per_ip()) {
		*ref = (struct gate_refusal){429, "Too Many Requests",
		                             "too many connections from this address",
		                             METRICS_REFUSE_PER_IP};
		return NULL;
	}
	if (g_nhttp >= g_cfg->max_http_connections) {
		*ref = (struct gate_refusal){503, "Service Unavailable", "too many connections",
		                             METRICS_REFUSE_CAPACITY};
		return NULL;
	}
	t = calloc(1, sizeof(*t));
	if (t && !e && (e = calloc(1, sizeof(*e)))) {
		snprintf(e->ip, sizeof(e->ip), "%s", ip);
		HASH_ADD_STR(g_ips, ip, e);
		g_nips++;
	}
	if (!t || !e) {
		free(t);
		*ref = (struct gate_refusal){503, "Service Unavailable", "out of memory",
		                             METRICS_REFUSE_CAPACITY};
		return NULL;
	}
	e->http++;
	g_nhttp++;
	t->ipe = e;
	t->ip = e->ip;
	t->opened_ms = uv_now(g_loop);
	publish_counts();
	return t;
}

/* Gives back one slot of e in the WebSocket or the HTTP budget; frees e when it holds none. */
static void slot_release(struct ip_entry *e, bool ws)
{
	if (ws) {
		e->ws--;
		g_nws--;
	} else {
		e->http--;
		g_nhttp--;
	}
	if (e->ws <= 0 && e->http <= 0) {
		HASH_DEL(g_ips, e);
		free(e);
		g_nips--;
	}
	publish_counts();
}

void gate_ticket_close(struct gate_ticket *t)
{
	if (!t)
		return;
	dl_unlink(t);
	slot_release(t->ipe, t->ws);
	auth_identity_clear(&t->ident);
	free(t);
}

void gate_ticket_upgraded(struct gate_ticket *t)
{
	dl_unlink(t);
	auth_identity_clear(&t->ident);
	free(t);
}

void gate_ws_release(const char *ip)
{
	/* ip is the entry's own copy (t->ip = e->ip). */
	slot_release((struct ip_entry *)(void *)(ip - offsetof(struct ip_entry, ip)), true);
}

struct gate_ticket *gate_ticket_claim(void)
{
	struct gate_ticket *t = g_handoff;
	g_handoff = NULL;
	return t;
}

void gate_ticket_bind(struct gate_ticket *t, struct lws *wsi)
{
	t->wsi = wsi;
}

void gate_ticket_phase(struct gate_ticket *t, enum gate_phase phase, long ms)
{
	dl_unlink(t);
	t->phase = phase;
	if (ms <= 0)
		return;
	/* Deadlines of one length are set in time order, so appending keeps the list nearly
	 * sorted; the sweep still looks at every entry (see sweep). */
	t->deadline_ms = uv_now(g_loop) + (uint64_t)ms;
	t->dprev = g_dl_tail;
	t->dnext = NULL;
	if (g_dl_tail)
		g_dl_tail->dnext = t;
	else
		g_dl_head = t;
	g_dl_tail = t;
}

/* Closes every connection in lws past its deadline. lws restarts its own timeouts on every
 * byte (a body chunk, a header fragment), so these are the ones that bound a slow peer. The
 * kill is asynchronous (the ticket goes with the wsi in LWS_CALLBACK_WSI_DESTROY); waking lws
 * makes it happen now. The list mixes deadline lengths, so it is walked whole: it only holds
 * connections that are not WebSockets, at most MAX_HTTP_CONNECTIONS plus upgrades in flight. */
static void sweep(uv_timer_t *h)
{
	uint64_t now = uv_now(g_loop);
	struct lws_context *ctx = NULL;
	struct gate_ticket *t = g_dl_head, *next;

	for (; t; t = next) {
		next = t->dnext;
		if (t->deadline_ms > now || !t->wsi)
			continue;
		metrics.deadline_closes[t->phase]++;
		log_debug("connection deadline passed", "ip", t->ip);
		dl_unlink(t);
		lws_set_timeout(t->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
		ctx = lws_get_context(t->wsi);
	}
	if (ctx)
		lws_cancel_service(ctx);
}

/* ---- pending sockets ---- */

static void on_handle_closed(uv_handle_t *h)
{
	struct pending *p = h->data;

	if (--p->closing_handles)
		return;
	if (p->state == PEND_HANDOFF) {
		/* lws takes over the socket from here; the rewritten head is read first. lws
		 * reports the new connection (LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED, where
		 * the ticket is claimed and bound to the wsi) before adopt returns, and may run
		 * its whole handshake inside the call. */
		struct lws *wsi;
		g_handoff = p->t;
		p->t = NULL;
		wsi = lws_adopt_socket_vhost_readbuf(g_vhost, p->fd, p->out, p->out_len);
		if (g_handoff) {
			/* Not claimed: lws failed before it had a connection (and closed fd). */
			gate_ticket_close(g_handoff);
			g_handoff = NULL;
		}
		if (!wsi)
			log_warn("lws_adopt_socket_vhost_readbuf failed", "ip", p->ip);
	} else {
		close(p->fd);
	}
	if (p->state == PEND_LINGER_DONE)
		g_nlinger--;
	gate_ticket_close(p->t);
	http_cred_memo_free(&p->memo);
	free(p->out);
	free(p);
}

static void pend_close(struct pending *p)
{
	if (p->state == PEND_CLOSED || p->closing_handles)
		return;
	if (p->wait) {
		p->wait->orphan = true;
		p->wait = NULL;
	}
	if (p->state == PEND_LINGER)
		p->state = PEND_LINGER_DONE; /* on_handle_closed gives back its linger slot */
	else if (p->state != PEND_HANDOFF)
		p->state = PEND_CLOSED;
	if (p->state != PEND_HANDOFF) {
		/* Its budget slot is free at once (an eviction makes room for the newcomer). */
		gate_ticket_close(p->t);
		p->t = NULL;
	}
	if (p->prev)
		p->prev->next = p->next;
	else
		g_pending = p->next;
	if (p->next)
		p->next->prev = p->prev;
	g_npending--;
	p->closing_handles = 3;
	uv_poll_stop(&p->poll);
	uv_timer_stop(&p->timer);
	uv_timer_stop(&p->repoll);
	uv_close((uv_handle_t *)&p->poll, on_handle_closed);
	uv_close((uv_handle_t *)&p->timer, on_handle_closed);
	uv_close((uv_handle_t *)&p->repoll, on_handle_closed);
}

static void on_linger_read(uv_poll_t *h, int status, int events);
static void on_deadline(uv_timer_t *t);
static int consume_head(struct pending *p, size_t head_len);

/* Answers with a complete HTTP/1.1 response and closes gracefully: the write side is shut and
 * whatever the client still sends is drained briefly, so the answer is not lost to a reset. */
static void refuse(struct pending *p, int status, const char *reason, const char *body,
                   enum metrics_refuse why)
{
	char resp[512];
	/* The HTTP API answers errors as JSON; the WebSocket handshake as text. */
	bool json = body[0] == '{';
	int n = snprintf(resp, sizeof(resp),
	                 "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
	                 "Content-Length: %zu\r\nConnection: close\r\n"
	                 "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n%s",
	                 status, reason, json ? "application/json" : "text/plain; charset=utf-8",
	                 strlen(body), body);

	metrics.refused[why]++;
	metrics.http_requests[status / 100]++;
	/* A refused connection no longer counts; lingering ones are bounded apart (a flood of
	 * refused sockets is then closed at once instead of holding descriptors). */
	gate_ticket_close(p->t);
	p->t = NULL;
	if (send(p->fd, resp, (size_t)n, MSG_NOSIGNAL) < 0 || g_nlinger >= linger_max()) {
		pend_close(p);
		return;
	}
	shutdown(p->fd, SHUT_WR);
	g_nlinger++;
	p->state = PEND_LINGER;
	uv_poll_start(&p->poll, UV_READABLE, on_linger_read);
	uv_timer_start(&p->timer, on_deadline, LINGER_MS, 0);
}

static void on_linger_read(uv_poll_t *h, int status, int events)
{
	struct pending *p = h->data;
	char sink[4096];
	ssize_t n = recv(p->fd, sink, sizeof(sink), 0);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		pend_close(p);
}

static void on_deadline(uv_timer_t *t)
{
	struct pending *p = t->data;
	if (p->state == PEND_READING && p->served) {
		/* Kept alive by the gate: the idle deadline, or the answer's (GATE_HTTP). */
		metrics.deadline_closes[p->t ? p->t->phase : GATE_IDLE]++;
		log_debug("connection deadline passed", "ip", p->ip);
	} else if (p->state == PEND_READING) {
		metrics.refused[METRICS_REFUSE_HEADER_TIMEOUT]++;
		metrics.deadline_closes[GATE_HEAD]++;
		log_debug("request head timeout", "ip", p->ip);
	}
	pend_close(p);
}

/* ---- request head parsing ---- */

struct head {
	const char *method, *target, *version;
	size_t method_len, target_len, version_len;
	const char *upgrade, *connection, *key, *ws_version, *protocol, *origin, *authorization,
	    *host, *content_type, *expect;
	size_t upgrade_len, connection_len, key_len, ws_version_len, protocol_len, origin_len,
	    authorization_len, host_len, content_type_len, expect_len;
	size_t head_len;     /* through the blank line */
	long content_length; /* -1 when absent */
	bool chunked;
};

static bool contains_token(const char *list, size_t len, const char *tok);

static bool name_is(const char *name, size_t len, const char *want)
{
	return strlen(want) == len && !strncasecmp(name, want, len);
}

static void trim(const char **s, size_t *len)
{
	while (*len && (**s == ' ' || **s == '\t')) {
		(*s)++;
		(*len)--;
	}
	while (*len && ((*s)[*len - 1] == ' ' || (*s)[*len - 1] == '\t'))
		(*len)--;
}

/* Parses the head in buf[0..len). Returns 1 when complete, 0 when more is needed, -1 when
 * malformed. Only the headers the gate needs are recorded; the rest are passed through. */
static int parse_head(const char *buf, size_t len, struct head *h)
{
	const char *end = NULL, *line, *eol;

	for (size_t i = 3; i < len; i++)
		if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' &&
		    buf[i - 3] == '\r') {
			end = buf + i + 1;
			break;
		}
	if (!end)
		return 0;
	memset(h, 0, sizeof(*h));
	h->content_length = -1;
	h->head_len = (size_t)(end - buf);
	eol = memchr(buf, '\r', h->head_len);
	{
		const char *sp1 = memchr(buf, ' ', (size_t)(eol - buf));
		const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
		if (!sp1 || !sp2)
			return -1;
		h->method = buf;
		h->method_len = (size_t)(sp1 - buf);
		h->target = sp1 + 1;
		h->target_len = (size_t)(sp2 - sp1 - 1);
		h->version = sp2 + 1;
		h->version_len = (size_t)(eol - sp2 - 1);
		if (h->version_len != 8 || strncmp(h->version, "HTTP/1.", 7) || !h->target_len ||
		    h->target[0] != '/')
			return -1;
	}
	for (line = eol + 2; line < end - 2; line = eol + 2) {
		const char *colon, *v;
		size_t nlen, vlen;
		eol = memchr(line, '\r', (size_t)(end - line));
		if (!eol || eol[1] != '\n')
			return -1;
		colon = memchr(line, ':', (size_t)(eol - line));
		if (!colon || colon == line)
			return -1;
		nlen = (size_t)(colon - line);
		v = colon + 1;
		vlen = (size_t)(eol - v);
		trim(&v, &vlen);
#define KEEP(hdr, field)                                                                           \
	if (name_is(line, nlen, hdr)) {                                                            \
		h->field = v;                                                                      \
		h->field##_len = vlen;                                                             \
		continue;                                                                          \
	}
		KEEP("Upgrade", upgrade)
		KEEP("Connection", connection)
		KEEP("Sec-WebSocket-Key", key)
		KEEP("Sec-WebSocket-Version", ws_version)
		KEEP("Sec-WebSocket-Protocol", protocol)
		KEEP("Origin", origin)
		KEEP("Authorization", authorization)
		KEEP("Host", host)
		KEEP("Content-Type", content_type)
		KEEP("Expect", expect)
#undef KEEP
		if (name_is(line, nlen, "Content-Length"))
			h->content_length = strtol(v, NULL, 10);
		else if (name_is(line, nlen, "Transfer-Encoding"))
			h->chunked = contains_token(v, vlen, "chunked");
	}
	return 1;
}

static bool contains_token(const char *list, size_t len, const char *tok)
{
	size_t tl = strlen(tok);
	size_t i = 0;
	while (i < len) {
		size_t j = i, s, e;
		while (j < len && list[j] != ',')
			j++;
		s = i;
		e = j;
		while (s < e && (list[s] == ' ' || list[s] == '\t'))
			s++;
		while (e > s && (list[e - 1] == ' ' || list[e - 1] == '\t'))
			e--;
		if (e - s == tl && !strncasecmp(list + s, tok, tl))
			return true;
		i = j + 1;
	}
	return false;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Finds query parameter name in target and percent-decodes it into out (malloc'd). */
static char *query_param(const char *target, size_t len, const char *name)
{
	const char *q = memchr(target, '?', len);
	size_t nl = strlen(name);

	if (!q)
		return NULL;
	q++;
	while (q < target + len) {
		const char *amp = memchr(q, '&', (size_t)(target + len - q));
		const char *pe = amp ? amp : target + len;
		if ((size_t)(pe - q) > nl && !strncmp(q, name, nl) && q[nl] == '=') {
			const char *v = q + nl + 1;
			char *out = malloc((size_t)(pe - v) + 1), *o = out;
			if (!out)
				return NULL;
			for (; v < pe; v++) {
				if (*v == '%' && pe - v >= 3 && hexval(v[1]) >= 0 &&
				    hexval(v[2]) >= 0) {
					*o++ = (char)(hexval(v[1]) * 16 + hexval(v[2]));
					v += 2;
				} else {
					*o++ = *v == '+' ? ' ' : *v;
				}
			}
			*o = '\0';
			return out;
		}
		q = pe + 1;
	}
	return NULL;
}

/* The token a WebSocket client presented, in this order: Authorization bearer, ?token=, the
 * subprotocol offer "roomcast, <t>". malloc'd, or NULL when none. */
static char *find_token(const struct gate_upgrade *h)
{
	char *t;
	if (h->authorization_len > 7 && !strncasecmp(h->authorization, "Bearer ", 7)) {
		const char *v = h->authorization + 7;
		size_t n = h->authorization_len - 7;
		trim(&v, &n);
		return n ? strndup(v, n) : NULL;
	}
	if ((t = query_param(h->target, h->target_len, "token")))
		return t;
	if (h->protocol_len && contains_token(h->protocol, h->protocol_len, "roomcast")) {
		/* The offer is a comma list; the token is the entry that is not "roomcast". */
		const char *p = h->protocol, *e = h->protocol + h->protocol_len;
		while (p < e) {
			const char *c = memchr(p, ',', (size_t)(e - p));
			const char *s = p, *f = c ? c : e;
			size_t n;
			while (s < f && (*s == ' ' || *s == '\t'))
				s++;
			n = (size_t)(f - s);
			while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
				n--;
			if (n && !(n == 8 && !strncasecmp(s, "roomcast", 8)))
				return strndup(s, n);
			p = f + 1;
		}
	}
	return NULL;
}

/* Exact match against WS_ORIGINS; a handshake without Origin is not from a browser and is
 * allowed (docs/protocol.md). */
static bool origin_allowed(const struct gate_upgrade *h)
{
	const char *list = g_cfg->ws_origins;
	char o[256];

	if (!list || !*list || !h->origin)
		return true;
	if (h->origin_len >= sizeof(o))
		return false;
	memcpy(o, h->origin, h->origin_len);
	o[h->origin_len] = '\0';
	return contains_token(list, strlen(list), o);
}

static bool path_is(const struct gate_upgrade *h, const char *path)
{
	size_t n = strlen(path);
	return h->target_len >= n && !strncmp(h->target, path, n) &&
	       (h->target_len == n || h->target[n] == '?');
}

/* Rewrites the head for lws: WebSocket upgrades keep only what the handshake needs (no token
 * anywhere); plain requests drop Upgrade and HTTP2-Settings so h2c is never offered. */
static int rewrite(struct pending *p, const struct head *h, bool ws)
{
	struct buf b;
	const char *extra = g_head + h->head_len;
	size_t extra_len = p->len - h->head_len;

	buf_init(&b);
	if (ws) {
		bool offered =
		    h->protocol_len && contains_token(h->protocol, h->protocol_len, "roomcast");
		buf_puts(&b, "GET /ws HTTP/1.1\r\nHost: ");
		buf_put(&b, h->host ? h->host : "localhost", h->host ? h->host_len : 9);
		buf_puts(&b,
		         "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
		buf_put(&b, h->key, h->key_len);
		buf_puts(&b, "\r\nSec-WebSocket-Version: ");
		buf_put(&b, h->ws_version ? h->ws_version : "13",
		        h->ws_version ? h->ws_version_len : 2);
		buf_puts(&b, "\r\n");
		if (offered)
			buf_puts(&b, "Sec-WebSocket-Protocol: roomcast\r\n");
		buf_puts(&b, "\r\n");
	} else {
		const char *line = g_head, *eol;
		const char *end = g_head + h->head_len;
		while (line < end) {
			eol = memchr(line, '\n', (size_t)(end - line));
			size_t n = (size_t)(eol - line) + 1;
			const char *colon = memchr(line, ':', n);
			size_t nlen = colon ? (size_t)(colon - line) : 0;
			if (!(colon && (name_is(line, nlen, "Upgrade") ||
			                name_is(line, nlen, "HTTP2-Settings"))))
				buf_put(&b, line, n);
			line = eol + 1;
		}
	}
	buf_put(&b, extra, extra_len);
	if (b.failed) {
		buf_free(&b);
		return -1;
	}
	p->out = b.data;
	p->out_len = b.len;
	return 0;
}

static void hand_off(struct pending *p)
{
	p->state = PEND_HANDOFF;
	pend_close(p);
}

int gate_admit(struct gate_ticket *t, const struct gate_upgrade *u, struct gate_refusal *ref)
{
	struct ip_entry *ie = t->ipe;
	char *token, *batch;

#define REFUSE(st, rs, bd, wy)                                                                     \
	do {                                                                                       \
		ref->status = st;                                                                  \
		ref->reason = rs;                                                                  \
		ref->body = bd;                                                                    \
		ref->why = wy;                                                                     \
		return -1;                                                                         \
	} while (0)
	if (t->ws)
		REFUSE(400, "Bad Request", "bad request",
		       METRICS_REFUSE_BAD_REQUEST); /* admitted twice */
	if (!path_is(u, "/ws"))
		REFUSE(404, "Not Found", "not found", METRICS_REFUSE_NOT_FOUND);
	if (!u->has_key)
		REFUSE(400, "Bad Request", "bad request", METRICS_REFUSE_BAD_REQUEST);
	if (!origin_allowed(u))
		REFUSE(403, "Forbidden", "origin not allowed", METRICS_REFUSE_ORIGIN);
	if (g_nws >= g_cfg->max_connections)
		REFUSE(503, "Service Unavailable", "too many connections", METRICS_REFUSE_CAPACITY);
	if (ie->ws >= g_cfg->max_connections_per_ip)
		REFUSE(429, "Too Many Requests", "too many connections from this address",
		       METRICS_REFUSE_PER_IP);
	token = find_token(u);
	if (token) {
		enum auth_reason why =
		    auth_verify(g_auth, token, strlen(token), time(NULL), &t->ident);
		free(token);
		if (why != AUTH_OK) {
			metrics.auth_failures[why]++;
			log_info("handshake refused", "ip", u->ip, "reason", auth_reason_name(why));
			auth_identity_clear(&t->ident);
			REFUSE(401, "Unauthorized", "unauthorized", METRICS_REFUSE_UNAUTHORIZED);
		}
		t->authenticated = true;
	}
#undef REFUSE
	batch = query_param(u->target, u->target_len, "batch");
	t->batch = batch && (!strcmp(batch, "1") || !strcmp(batch, "true"));
	free(batch);
	batch = query_param(u->target, u->target_len, "format");
	t->format = !batch                       ? 0
	            : !strcmp(batch, "typed")    ? GATE_FORMAT_TYPED
	            : !strcmp(batch, "envelope") ? GATE_FORMAT_ENVELOPE
	                                         : 0;
	free(batch);
	/* From the HTTP budget to the WebSocket one. */
	ie->http--;
	g_nhttp--;
	ie->ws++;
	g_nws++;
	t->ws = true;
	publish_counts();
	return 0;
}

static void accept_ws(struct pending *p, const struct head *h)
{
	struct gate_upgrade u = {
	    .target = h->target,
	    .target_len = h->target_len,
	    .origin = h->origin,
	    .origin_len = h->origin_len,
	    .authorization = h->authorization,
	    .authorization_len = h->authorization_len,
	    .protocol = h->protocol,
	    .protocol_len = h->protocol_len,
	    .has_key = h->key && h->key_len,
	    .ip = p->ip,
	};
	struct gate_refusal ref;
	long left;

	if (gate_admit(p->t, &u, &ref) < 0) {
		refuse(p, ref.status, ref.reason, ref.body, ref.why);
		return;
	}
	if (rewrite(p, h, true) < 0 || consume_head(p, p->len) < 0) {
		pend_close(p);
		return;
	}
	/* The handshake in lws keeps the head's deadline, counted from accept. */
	left = g_cfg->header_timeout_s * 1000 - (long)(uv_now(g_loop) - p->t->opened_ms);
	gate_ticket_phase(p->t, GATE_UPGRADE, left > 1 ? left : 1);
	hand_off(p);
}

/* A notify's credential is checked on its head, before a body byte is read: refused here
 * (401/403) the client reads the answer and the gate drains what it still sends. Returns true
 * when p was refused. */
static bool refuse_notify(struct pending *p, const struct head *h)
{
	char method[8], path[16], ctype[128], authz[4096];
	struct http_request req;
	struct http_response resp;
	bool refused;

	if (h->target_len < 11 || strncmp(h->target, "/api/notify", 11) ||
	    (h->target_len > 11 && h->target[11] != '?') || h->method_len >= sizeof(method))
		return false;
	memcpy(method, h->method, h->method_len);
	method[h->method_len] = '\0';
	snprintf(path, sizeof(path), "/api/notify");
	memset(&req, 0, sizeof(req));
	req.method = method;
	req.path = path;
	req.query = "";
	if (h->content_type && h->content_type_len < sizeof(ctype)) {
		memcpy(ctype, h->content_type, h->content_type_len);
		ctype[h->content_type_len] = '\0';
		req.content_type = ctype;
	}
	if (h->authorization && h->authorization_len < sizeof(authz)) {
		memcpy(authz, h->authorization, h->authorization_len);
		authz[h->authorization_len] = '\0';
		req.authorization = authz;
	}
	req.content_length = h->content_length;
	req.peer = p->ip;
	memset(&resp, 0, sizeof(resp));
	buf_init(&resp.body);
	http_wants_body(&req, &resp);
	refused = resp.status == 401 || resp.status == 403;
	if (refused)
		refuse(p, resp.status, resp.status == 401 ? "Unauthorized" : "Forbidden",
		       resp.body.data ? resp.body.data : "{\"error\":\"unauthorized\"}",
		       METRICS_REFUSE_UNAUTHORIZED);
	http_response_free(&resp);
	return refused;
}

/* Plain HTTP goes to lws with the body deadline running: the head is complete. */
static void hand_off_http(struct pending *p)
{
	gate_ticket_phase(p->t, GATE_HTTP, g_cfg->http_body_timeout_s * 1000);
	hand_off(p);
}

static void on_readable(uv_poll_t *handle, int status, int events);

static void on_repoll(uv_timer_t *t)
{
	struct pending *p = t->data;
	if (p->state == PEND_READING)
		uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_readable);
}

/* Removes the head (and only the head) from the socket so lws reads what follows itself. */
static int consume_head(struct pending *p, size_t head_len)
{
	size_t got = 0;
	while (got < head_len) {
		ssize_t n = recv(p->fd, g_head, head_len - got, 0);
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

/* ---- POST /api/notify answered by the gate ---- */

/* Writes a notify answer and keeps the connection for its next head (idle deadline). A
 * client that lets answers pile up unread until send() would block is closed. */
static void send_answer(struct pending *p, const struct http_response *resp)
{
	struct buf b;
	bool ok;

	buf_init(&b);
	http_response_bytes(resp, false, &b);
	metrics.http_requests[resp->status / 100]++;
	ok = !b.failed && send(p->fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)b.len;
	buf_free(&b);
	if (!ok) {
		pend_close(p);
		return;
	}
	gate_ticket_phase(p->t, GATE_IDLE, 0);
	uv_timer_start(&p->timer, on_deadline, (uint64_t)g_cfg->http_idle_timeout_s * 1000, 0);
}

/* A persisted notify's answer, once PostgreSQL has it: reading resumes after it is sent, so
 * pipelined requests are answered in order. */
static void on_notify_answer(void *ctx, int status, const char *json)
{
	struct gate_wait *w = ctx;
	struct pending *p = w->p;
	struct http_response resp = {.status = status, .content_type = "application/json"};

	if (!w->orphan) {
		p->wait = NULL;
		buf_init(&resp.body);
		buf_puts(&resp.body, json);
		send_answer(p, &resp);
		http_response_free(&resp);
		if (p->state == PEND_READING && !p->closing_handles)
			uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_readable);
	}
	free(w);
}

/*
 * Answers POST /api/notify itself when the whole request is in g_head (n bytes peeked) and lws
 * would keep the connection alive after it: HTTP/1.1, no Connection: close, no Expect, no
 * upgrade, a Content-Length, a credential, type and size that http_wants_body accepts. lws
 * 4.1.6 asks for a writable callback after every kept-alive exchange (a POLLOUT round trip:
 * four to six epoll_ctl calls through libuv's uv_poll per request), which cost more than the
 * notify itself; here a notify costs one peek, one read and one send. Anything else returns
 * false with nothing consumed, and goes to lws as before. Returns true when p was answered
 * (or is waiting for PostgreSQL, or was closed).
 */
static bool serve_notify(struct pending *p, const struct head *h)
{
	char ctype[128], authz[4096];
	struct http_request req;
	struct http_response resp;
	size_t total;

	if (h->method_len != 4 || memcmp(h->method, "POST", 4) || h->target_len != 11 ||
	    memcmp(h->target, "/api/notify", 11) || memcmp(h->version, "HTTP/1.1", 8) ||
	    h->upgrade || h->chunked || h->expect || h->content_length < 0 ||
	    (h->connection && !name_is(h->connection, h->connection_len, "keep-alive")) ||
	    (size_t)h->content_length > p->len - h->head_len)
		return false;
	total = h->head_len + (size_t)h->content_length;
	memset(&req, 0, sizeof(req));
	req.method = "POST";
	req.path = "/api/notify";
	req.query = "";
	if (h->content_type && h->content_type_len < sizeof(ctype)) {
		memcpy(ctype, h->content_type, h->content_type_len);
		ctype[h->content_type_len] = '\0';
		req.content_type = ctype;
	}
	if (h->authorization && h->authorization_len < sizeof(authz)) {
		memcpy(authz, h->authorization, h->authorization_len);
		authz[h->authorization_len] = '\0';
		req.authorization = authz;
	}
	req.content_length = h->content_length;
	req.peer = p->ip;
	req.memo = &p->memo;
	req.body = g_head + h->head_len;
	req.body_len = (size_t)h->content_length;
	memset(&resp, 0, sizeof(resp));
	buf_init(&resp.body);
	if (!http_wants_body(&req, &resp)) {
		/* Refused on the head: lws answers it (and closes) as before. */
		http_response_free(&resp);
		return false;
	}
	p->wait = calloc(1, sizeof(*p->wait));
	if (!p->wait) {
		http_response_free(&resp);
		return false;
	}
	p->wait->p = p;
	req.complete = on_notify_answer;
	req.ctx = p->wait;
	http_handle_body(&req, &resp);
	/* The request leaves the socket only now (req pointed into g_head until here), read into
	 * g_head over the same bytes: MSG_TRUNC with no buffer would save the copy, but valgrind
	 * reports the NULL buffer as an error. */
	if (recv(p->fd, g_head, total, 0) != (ssize_t)total) {
		http_response_free(&resp);
		pend_close(p); /* orphans a pending answer */
		return true;
	}
	p->served = true;
	if (!resp.status && !p->wait) {
		/* Answered through on_notify_answer before http_handle_body returned. */
		http_response_free(&resp);
		return true;
	}
	if (!resp.status) {
		/* Persisted: the answer comes through on_notify_answer; the answer's deadline
		 * (HTTP_BODY_TIMEOUT_S) runs meanwhile and reading pauses. */
		gate_ticket_phase(p->t, GATE_HTTP, 0);
		uv_timer_start(&p->timer, on_deadline, (uint64_t)g_cfg->http_body_timeout_s * 1000,
		               0);
		uv_poll_stop(&p->poll);
		http_response_free(&resp);
		return true;
	}
	free(p->wait);
	p->wait = NULL;
	send_answer(p, &resp);
	http_response_free(&resp);
	return true;
}

/* The next head on a connection the gate kept alive: another notify is answered here,
 * anything else goes to lws untouched, exactly as it would have on a connection lws kept. */
static void serve_next(struct pending *p, int rc, const struct head *h)
{
	if (rc == 1 && serve_notify(p, h))
		return;
	hand_off_http(p);
}

/*
 * The head is read with MSG_PEEK: plain HTTP requests are then handed to lws untouched, body
 * and all, straight from the socket (lws 4.1.6 replays an adopted read buffer into the body
 * callback, so only bodiless heads are ever given to it that way). Between peeks of an
 * incomplete head, polling pauses briefly so a slow client cannot make the level-triggered
 * poll spin.
 */
static void on_readable(uv_poll_t *handle, int status, int events)
{
	struct pending *p = handle->data;
	size_t cap = (size_t)g_cfg->max_header_bytes;
	struct head h;
	ssize_t n;
	int rc;

	if (status < 0) {
		pend_close(p);
		return;
	}
	n = recv(p->fd, g_head, cap, MSG_PEEK);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		pend_close(p);
		return;
	}
	if (n < 0)
		return;
	p->len = (size_t)n;
	g_head[p->len] = '\0'; /* the buffer has one byte more than cap */
	rc = parse_head(g_head, p->len, &h);
	if (p->served && (rc != 0 || p->len == cap)) {
		serve_next(p, rc, &h);
		return;
	}
	if (rc == 0 && (events & UV_DISCONNECT)) {
		/* The peer closed with its head unfinished: peeking would show the same bytes
		 * until the head deadline, so the hang-up is taken from the poll itself. */
		pend_close(p);
		return;
	}
	if (rc == 0) {
		if (p->len == cap) {
			refuse(p, 431, "Request Header Fields Too Large", "request head too large",
			       METRICS_REFUSE_BAD_REQUEST);
			return;
		}
		uv_poll_stop(&p->poll);
		uv_timer_start(&p->repoll, on_repoll, 20, 0);
		return;
	}
	if (rc < 0) {
		refuse(p, 400, "Bad Request", "bad request", METRICS_REFUSE_BAD_REQUEST);
		return;
	}
	if (h.upgrade && contains_token(h.upgrade, h.upgrade_len, "websocket")) {
		/* Frames the client sent right behind its head stay in the socket for lws. */
		p->len = h.head_len;
		accept_ws(p, &h);
		return;
	}
	if (h.chunked) {
		/* lws 4.1.6 does not decode chunked request bodies; every client of ours can send
		 * a Content-Length, so ask for one (RFC 9110 §15.5.12). */
		refuse(p, 411, "Length Required", "{\"error\":\"length required\"}",
		       METRICS_REFUSE_BAD_REQUEST);
		return;
	}
	if (h.content_length > g_cfg->notify_max_bytes) {
		/* Refused here rather than by lws: the gate drains what the client still sends,
		 * so the client reads the 413 instead of a reset. */
		refuse(p, 413, "Content Too Large", "{\"error\":\"body too large\"}",
		       METRICS_REFUSE_BAD_REQUEST);
		return;
	}
	if (refuse_notify(p, &h) || serve_notify(p, &h))
		return;
	if (!h.upgrade) {
		hand_off_http(p);
		return;
	}
	/* Upgrade: h2c (or anything else): strip it so lws serves plain HTTP/1.1. */
	if (h.content_length > 0 || h.chunked) {
		refuse(p, 400, "Bad Request", "upgrade with a body is not supported",
		       METRICS_REFUSE_BAD_REQUEST);
		return;
	}
	p->len = h.head_len;
	if (rewrite(p, &h, false) < 0 || consume_head(p, h.head_len) < 0) {
		pend_close(p);
		return;
	}
	hand_off_http(p);
}

/* ---- listening ---- */

/* The HTTP budget is full: closes the oldest head still being read (the likeliest slowloris),
 * so slow sockets spread over many addresses cannot lock new clients out (one address cannot
 * fill the budget: MAX_HTTP_CONNECTIONS_PER_IP). New sockets are added at the head of the list,
 * so the oldest is at the tail. */
static bool evict_oldest_head(void)
{
	struct pending *p = g_pending;

	while (p && p->next)
		p = p->next;
	for (; p; p = p->prev)
		if (p->state == PEND_READING && p->t && !p->served) {
			metrics.refused[METRICS_REFUSE_HEADER_TIMEOUT]++;
			pend_close(p);
			return true;
		}
	return false;
}

/* Over a budget with no linger slot left: one send of the refusal and a close. */
static void refuse_now(int fd, const struct gate_refusal *ref)
{
	char resp[320];
	int n = snprintf(resp, sizeof(resp),
	                 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
	                 "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
	                 ref->status, ref->reason, strlen(ref->body), ref->body);
	metrics.refused[ref->why]++;
	metrics.http_requests[ref->status / 100]++;
	if (send(fd, resp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		(void)0; /* a peer that is already gone needs no answer */
	close(fd);
}

static void start_pending(int fd, const struct sockaddr_storage *ss)
{
	struct pending *p;
	struct gate_ticket *t;
	struct gate_refusal ref;
	char ip[48] = "";
	int one = 1, lowat = GATE_NOTSENT_LOWAT;

	if (ss->ss_family == AF_INET)
		inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, ip, sizeof(ip));
	else if (ss->ss_family == AF_INET6)
		inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ss)->sin6_addr, ip, sizeof(ip));
	/* Counted from here to its close: refused at once when its address or the server is
	 * over the HTTP budget (the WebSocket budget is checked when it asks to upgrade). */
	t = gate_ticket_open(ip, &ref);
	if (!t && ref.status == 503 && evict_oldest_head())
		t = gate_ticket_open(ip, &ref);
	if (!t && g_nlinger >= linger_max()) {
		refuse_now(fd, &ref);
		return;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		gate_ticket_close(t);
		close(fd);
		return;
	}
	p->fd = fd;
	p->t = t;
	snprintf(p->ip, sizeof(p->ip), "%s", ip);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* Keep at most this much unsent in the kernel: beyond it the socket reports itself not
	 * writable, so a client that stops reading backs up into our byte-bounded queue (and is
	 * closed with 4008) instead of into megabytes of kernel buffer. */
	setsockopt(fd, IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
	if (uv_poll_init(g_loop, &p->poll, fd) < 0) {
		gate_ticket_close(t);
		close(fd);
		free(p);
		return;
	}
	uv_timer_init(g_loop, &p->timer);
	uv_timer_init(g_loop, &p->repoll);
	p->poll.data = p->timer.data = p->repoll.data = p;
	p->next = g_pending;
	if (g_pending)
		g_pending->prev = p;
	g_pending = p;
	g_npending++;
	if (!t) {
		refuse(p, ref.status, ref.reason, ref.body, ref.why);
		return;
	}
	uv_poll_start(&p->poll, UV_READABLE | UV_DISCONNECT, on_readable);
	uv_timer_start(&p->timer, on_deadline, (uint64_t)g_cfg->header_timeout_s * 1000, 0);
}

/* At the descriptor limit every refused client would log a line: at most one a second, with
 * the number refused since the last one. */
static void log_emfile(void)
{
	static uint64_t last_ns, quiet;
	uint64_t now = util_now_ns();
	char n[24];

	quiet++;
	if (last_ns && now - last_ns < 1000000000ull)
		return;
	snprintf(n, sizeof(n), "%llu", (unsigned long long)quiet);
	log_warn("accept failed", "reason", "too many open files", "refused", n);
	last_ns = now;
	quiet = 0;
}

static void on_accept(uv_poll_t *handle, int status, int events)
{
	/* Bounded so one busy listener cannot starve the rest of the loop. */
	for (int i = 0; i < 128; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = sizeof(ss);
		int fd =
		    accept4(g_listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE) {
				/* Out of descriptors: the level-triggered listener would spin. Use
				 * the spare descriptor to accept and close at once, so the client
				 * gets a prompt close instead of hanging in the backlog. */
				metrics.refused[METRICS_REFUSE_CAPACITY]++;
				if (g_spare_fd >= 0) {
					close(g_spare_fd);
					fd = accept(g_listen_fd, NULL, NULL);
					if (fd >= 0)
						close(fd);
					g_spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
				}
				log_emfile();
			}
			return;
		}
		start_pending(fd, &ss);
	}
}

int gate_setup(const struct config *cfg, const struct auth *auth, uv_loop_t *loop)
{
	g_cfg = cfg;
	g_auth = auth;
	g_loop = loop;
	free(g_head);
	g_head = malloc((size_t)cfg->max_header_bytes + 1);
	if (!g_head)
		return -1;
	uv_timer_init(loop, &g_sweep);
	uv_timer_start(&g_sweep, sweep, SWEEP_MS, SWEEP_MS);
	/* The sweep alone does not keep the loop running (it ends once lws is gone). */
	uv_unref((uv_handle_t *)&g_sweep);
	g_sweeping = true;
	return 0;
}

int gate_start(struct lws_vhost *vhost)
{
	const struct config *cfg = g_cfg;
	uv_loop_t *loop = g_loop;
	struct sockaddr_storage ss;
	socklen_t sl;
	int one = 1;

	g_vhost = vhost;
	memset(&ss, 0, sizeof(ss));
	if (strchr(cfg->host, ':')) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
		a->sin6_family = AF_INET6;
		a->sin6_port = htons((uint16_t)cfg->port);
		if (inet_pton(AF_INET6, cfg->host, &a->sin6_addr) != 1)
			goto bad_host;
		sl = sizeof(*a);
	} else {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		a->sin_family = AF_INET;
		a->sin_port = htons((uint16_t)cfg->port);
		if (inet_pton(AF_INET, cfg->host, &a->sin_addr) != 1)
			goto bad_host;
		sl = sizeof(*a);
	}
	g_listen_fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (g_listen_fd < 0) {
		log_error("socket failed", "reason", strerror(errno));
		return -1;
	}
	setsockopt(g_listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* Workers share the port: the kernel spreads new connections over them. */
	setsockopt(g_listen_fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
	if (bind(g_listen_fd, (struct sockaddr *)&ss, sl) < 0 || listen(g_listen_fd, 4096) < 0) {
		log_error("bind failed", "reason", strerror(errno), "host", cfg->host);
		close(g_listen_fd);
		g_listen_fd = -1;
		return -1;
	}
	g_spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	uv_poll_init(loop, &g_listen_poll, g_listen_fd);
	uv_poll_start(&g_listen_poll, UV_READABLE, on_accept);
	return 0;
bad_host:
	log_error("gate_start failed", "reason", "HOST is not an IP address", "host", cfg->host);
	return -1;
}

static void on_listen_closed(uv_handle_t *h)
{
	close(g_listen_fd);
	g_listen_fd = -1;
}

void gate_stop(void)
{
	if (g_listen_fd >= 0 && !uv_is_closing((uv_handle_t *)&g_listen_poll)) {
		uv_poll_stop(&g_listen_poll);
		uv_close((uv_handle_t *)&g_listen_poll, on_listen_closed);
	}
	while (g_pending)
		pend_close(g_pending);
	if (g_sweeping) {
		g_sweeping = false;
		uv_timer_stop(&g_sweep);
		uv_close((uv_handle_t *)&g_sweep, NULL);
	}
	if (g_spare_fd >= 0) {
		close(g_spare_fd);
		g_spare_fd = -1;
	}
}

/* ---- TLS: lws accepts and reads the head; the same admission runs from its callbacks ---- */

/* Answers a refused TLS upgrade with a complete HTTP response. lws has already switched the
 * connection to its WebSocket role here, where HTTP_HEADERS writes go out unframed. */
static int refuse_in_lws(struct lws *wsi, const struct gate_refusal *ref)
{
	unsigned char buf[LWS_PRE + 512];
	int n = snprintf((char *)buf + LWS_PRE, sizeof(buf) - LWS_PRE,
	                 "HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
	                 "Content-Length: %zu\r\nConnection: close\r\n"
	                 "X-Content-Type-Options: nosniff\r\nCache-Control: no-store\r\n\r\n%s",
	                 ref->status, ref->reason, strlen(ref->body), ref->body);

	metrics.refused[ref->why]++;
	metrics.http_requests[ref->status / 100]++;
	lws_write(wsi, buf + LWS_PRE, (size_t)n, LWS_WRITE_HTTP_HEADERS);
	return 1;
}

/* Copies header t into a buffer for the admission checks; NULL when absent or too long. */
static const char *tls_hdr(struct lws *wsi, enum lws_token_indexes t, char *dst, size_t cap,
                           size_t *len)
{
	int n = lws_hdr_total_length(wsi, t);
	*len = 0;
	if (n <= 0 || (size_t)n >= cap || lws_hdr_copy(wsi, dst, (int)cap, t) < 0)
		return NULL;
	*len = (size_t)n;
	return dst;
}

int gate_admit_lws(struct lws *wsi, struct gate_ticket *t)
{
	char target[2048], args[1536], origin[256], authz[4096], proto[4096], key[64], ip[48];
	struct gate_upgrade u;
	struct gate_refusal ref;
	size_t plen, alen;

	memset(&u, 0, sizeof(u));
	if (!tls_hdr(wsi, WSI_TOKEN_GET_URI, target, sizeof(target) / 2, &plen))
		return 1;
	if (tls_hdr(wsi, WSI_TOKEN_HTTP_URI_ARGS, args, sizeof(args), &alen))
		snprintf(target + plen, sizeof(target) - plen, "?%s", args);
	u.target = target;
	u.target_len = strlen(target);
	u.origin = tls_hdr(wsi, WSI_TOKEN_ORIGIN, origin, sizeof(origin), &u.origin_len);
	u.authorization =
	    tls_hdr(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, authz, sizeof(authz), &u.authorization_len);
	u.protocol = tls_hdr(wsi, WSI_TOKEN_PROTOCOL, proto, sizeof(proto), &u.protocol_len);
	u.has_key = tls_hdr(wsi, WSI_TOKEN_KEY, key, sizeof(key), &alen) != NULL;
	snprintf(ip, sizeof(ip), "%s", t->ip);
	u.ip = ip;
	if (gate_admit(t, &u, &ref) < 0)
		return refuse_in_lws(wsi, &ref);
	return 0;
}

struct gate_ticket *gate_open_lws(struct lws *wsi)
{
	char ip[64];
	struct gate_refusal ref;
	struct gate_ticket *t;

	lws_get_peer_simple(wsi, ip, sizeof(ip));
	/* The TLS listener is dual-stack: count IPv4 clients by their IPv4 address. */
	t = gate_ticket_open(strncmp(ip, "::ffff:", 7) ? ip : ip + 7, &ref);
	if (!t) {
		/* No answer is possible before the TLS handshake: the socket is closed. */
		metrics.refused[ref.why]++;
		return NULL;
	}
	gate_ticket_phase(t, GATE_HEAD, g_cfg->header_timeout_s * 1000);
	return t;
}

/* One HTTP exchange on a wsi (keep-alive reuses the wsi for the next one). */
struct http_wait;

struct gate_exchange {
	char method[8];
	char path[128];
	char query[512];
	char authorization[4096];
	char content_type[128];
	long content_length;
	const char *peer;       /* the connection's address (its gate ticket's copy) */
	bool refused;           /* answered before reading the body */
	struct http_wait *wait; /* an answer is being computed elsewhere (PostgreSQL) */
	struct buf body;
	struct http_response resp;
};

/* ---- the lws HTTP plumbing: requests lws parsed (after the hand-off, keep-alive, TLS) ---- */

static void copy_hdr(struct lws *wsi, enum lws_token_indexes t, char *dst, size_t cap)
{
	dst[0] = '\0';
	if (lws_hdr_total_length(wsi, t) > 0 && lws_hdr_copy(wsi, dst, (int)cap, t) < 0)
		dst[0] = '\0';
}

static struct gate_exchange *http_begin(struct lws *wsi, struct gate_exchange **slot,
                                        const char *uri)
{
	static const struct {
		enum lws_token_indexes tok;
		const char *name;
	} methods[] = {
	    {WSI_TOKEN_GET_URI, "GET"},     {WSI_TOKEN_POST_URI, "POST"},
	    {WSI_TOKEN_PUT_URI, "PUT"},     {WSI_TOKEN_DELETE_URI, "DELETE"},
	    {WSI_TOKEN_PATCH_URI, "PATCH"}, {WSI_TOKEN_OPTIONS_URI, "OPTIONS"},
	    {WSI_TOKEN_HEAD_URI, "HEAD"},
	};
	struct gate_exchange *x = calloc(1, sizeof(*x));
	struct gate_ticket *t = lws_get_opaque_user_data(wsi);
	char cl[32];

	if (!x)
		return NULL;
	x->peer = t ? t->ip : NULL;
	snprintf(x->method, sizeof(x->method), "OTHER");
	for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
		if (lws_hdr_total_length(wsi, methods[i].tok) > 0) {
			snprintf(x->method, sizeof(x->method), "%s", methods[i].name);
			break;
		}
	snprintf(x->path, sizeof(x->path), "%s", uri ? uri : "/");
	/* lws keeps each name=value of the query as a fragment; lws_hdr_copy would run them
	 * together, so they are joined with '&' here. */
	x->query[0] = '\0';
	for (int i = 0, used = 0; used < (int)sizeof(x->query) - 1; i++) {
		int n = lws_hdr_copy_fragment(wsi, x->query + used + (used > 0),
		                              (int)sizeof(x->query) - used - (used > 0),
		                              WSI_TOKEN_HTTP_URI_ARGS, i);
		if (n < 0)
			break;
		if (used)
			x->query[used] = '&';
		used += n + (used > 0);
	}
	copy_hdr(wsi, WSI_TOKEN_HTTP_AUTHORIZATION, x->authorization, sizeof(x->authorization));
	copy_hdr(wsi, WSI_TOKEN_HTTP_CONTENT_TYPE, x->content_type, sizeof(x->content_type));
	copy_hdr(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH, cl, sizeof(cl));
	x->content_length = cl[0] ? strtol(cl, NULL, 10) : -1;
	buf_init(&x->body);
	(*slot) = x;
	return x;
}

static int http_write(struct lws *wsi, struct gate_exchange *x);

/* Links an exchange waiting for an asynchronous answer to its wsi. If lws drops the exchange
 * first, the link is orphaned and the late answer is discarded. */
struct http_wait {
	struct lws *wsi;
	struct gate_exchange *x;
	bool orphan;
};

static void on_http_complete(void *ctx, int status, const char *json)
{
	struct http_wait *w = ctx;

	if (!w->orphan) {
		w->x->wait = NULL;
		w->x->resp.status = status;
		w->x->resp.content_type = "application/json";
		buf_puts(&w->x->resp.body, json);
		lws_callback_on_writable(w->wsi);
	}
	free(w);
}

static void http_free(struct gate_exchange *x)
{
	if (x->wait)
		x->wait->orphan = true;
	buf_free(&x->body);
	http_response_free(&x->resp);
	free(x);
}

static void http_end(struct gate_exchange **slot)
{
	if (!(*slot))
		return;
	http_free((*slot));
	(*slot) = NULL;
}

/* Writes the response and frees the exchange. It is detached from its slot first: completing a
 * keep-alive transaction makes lws drop the protocol and free the per-wsi storage holding the
 * slot before http_write returns, so the slot must not be touched afterwards. */
static int http_finish(struct lws *wsi, struct gate_exchange **slot)
{
	struct gate_exchange *x = (*slot);
	int rc;

	(*slot) = NULL;
	rc = http_write(wsi, x);
	http_free(x);
	return rc;
}

static void fill_request(struct gate_exchange *x, struct http_request *req)
{
	memset(req, 0, sizeof(*req));
	req->method = x->method;
	req->path = x->path;
	req->query = x->query;
	req->authorization = x->authorization[0] ? x->authorization : NULL;
	req->content_type = x->content_type[0] ? x->content_type : NULL;
	req->content_length = x->content_length;
	req->peer = x->peer;
	req->body = x->body.data ? x->body.data : "";
	req->body_len = x->body.len;
}

/* Writes the prepared response from the HTTP writeable callback: head and body in one write,
 * so one send() per response (HTTP/1.1 only; lws 4.1.6 does not track the body's bytes). */
static int http_write(struct lws *wsi, struct gate_exchange *x)
{
	struct http_response *r = &x->resp;
	size_t len = strcmp(x->method, "HEAD") ? r->body.len : 0;
	size_t hdr_max = 1024 + (r->extra_headers ? strlen(r->extra_headers) : 0);
	unsigned char *buf = malloc(LWS_PRE + hdr_max + len), *start = buf + LWS_PRE, *p = start,
	              *end = start + hdr_max - 1;
	int n, rc = -1;

	if (!buf)
		return -1;
	metrics.http_requests[r->status / 100]++;
	if (lws_add_http_common_headers(wsi, (unsigned)r->status, r->content_type, r->body.len, &p,
	                                end) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"x-content-type-options:",
	                                (const unsigned char *)"nosniff", 7, &p, end) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
	                                (const unsigned char *)"no-store", 8, &p, end))
		goto out;
	if (r->extra_headers) {
		n = (int)strlen(r->extra_headers);
		if (p + n >= end)
			goto out;
		memcpy(p, r->extra_headers, (size_t)n);
		p += n;
	}
	if (lws_finalize_http_header(wsi, &p, end))
		goto out;
	if (len) {
		memcpy(p, r->body.data, len);
		p += len;
	}
	n = (int)(p - start);
	if (lws_write(wsi, start, (size_t)n, LWS_WRITE_HTTP_HEADERS) < n)
		goto out;
	/* A request refused before its body leaves unread bytes: close instead of reusing. */
	if (!x->refused) {
		struct gate_ticket *t = lws_get_opaque_user_data(wsi);
		rc = lws_http_transaction_completed(wsi) ? -1 : 0;
		/* Kept alive: the next complete head is due within HTTP_IDLE_TIMEOUT_S. */
		if (!rc && t)
			gate_ticket_phase(t, GATE_IDLE, g_cfg->http_idle_timeout_s * 1000);
	}
out:
	free(buf);
	return rc;
}

static void respond(struct lws *wsi, struct gate_exchange *x)
{
	struct http_request req;
	if (!x->resp.status) {
		fill_request(x, &req);
		/* A GET may be answered later too (history reads PostgreSQL, the server API asks
		 * the other replicas): on_http_complete asks for the writeable callback then. */
		x->wait = calloc(1, sizeof(*x->wait));
		if (x->wait) {
			x->wait->wsi = wsi;
			x->wait->x = x;
			req.complete = on_http_complete;
			req.ctx = x->wait;
		}
		http_handle(&req, &x->resp);
		if (!x->resp.status && x->wait)
			return;
		free(x->wait);
		x->wait = NULL;
	}
	lws_callback_on_writable(wsi);
}

int gate_http(struct lws *wsi, enum lws_callback_reasons reason, struct gate_exchange **slot,
              void *in, size_t len)
{
	switch (reason) {
	case LWS_CALLBACK_HTTP: {
		struct gate_exchange *x;
		struct http_request req;
		http_end(slot);
		x = http_begin(wsi, slot, in);
		if (!x)
			return -1;
		/* The head is complete: the body and the answer are due within
		 * HTTP_BODY_TIMEOUT_S, however slowly the bytes come. */
		if (lws_get_opaque_user_data(wsi))
			gate_ticket_phase(lws_get_opaque_user_data(wsi), GATE_HTTP,
			                  g_cfg->http_body_timeout_s * 1000);
		fill_request(x, &req);
		if (http_wants_body(&req, &x->resp))
			return 0; /* the body follows in LWS_CALLBACK_HTTP_BODY */
		if (x->resp.status && strcmp(x->method, "GET") && strcmp(x->method, "HEAD")) {
			/* Refused, and a body may follow: answer now and close, leaving it unread
			 * (lws would otherwise run the body callbacks for it). */
			x->refused = true;
			http_finish(wsi, slot);
			return -1;
		}
		respond(wsi, x);
		return 0;
	}
	case LWS_CALLBACK_HTTP_BODY:
		if (!(*slot))
			return -1;
		if ((*slot)->body.len + len > (size_t)g_cfg->notify_max_bytes) {
			/* Refuse as soon as the limit is crossed, without buffering the rest. */
			(*slot)->resp.status = 413;
			(*slot)->resp.content_type = "application/json";
			buf_puts(&(*slot)->resp.body, "{\"error\":\"body too large\"}");
			(*slot)->refused = true;
			http_finish(wsi, slot);
			return -1;
		}
		buf_put(&(*slot)->body, in, len);
		return 0;
	case LWS_CALLBACK_HTTP_BODY_COMPLETION: {
		/* lws 4.1.6 keeps a POST in its body state, calling this again on every service,
		 * until the transaction completes: the answer is written here, as lws's own
		 * form examples do, not from a later writeable callback. */
		struct http_request req;
		struct gate_exchange *x = (*slot);
		if (!x)
			return -1;
		if (x->wait)
			return 0; /* already being answered */
		if (x->resp.status)
			return http_finish(wsi, slot); /* decided before the body */
		fill_request(x, &req);
		x->wait = calloc(1, sizeof(*x->wait));
		if (!x->wait)
			return -1;
		x->wait->wsi = wsi;
		x->wait->x = x;
		req.complete = on_http_complete;
		req.ctx = x->wait;
		http_handle(&req, &x->resp);
		if (!x->resp.status)
			return 0; /* on_http_complete asks for a writeable callback */
		free(x->wait);
		x->wait = NULL;
		return http_finish(wsi, slot);
	}
	case LWS_CALLBACK_HTTP_WRITEABLE: {
		if (!(*slot) || !(*slot)->resp.status)
			return 0;
		return http_finish(wsi, slot);
	}
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		http_end(slot);
		return 0;
	default:
		return 0;
	}
}

void gate_http_end(struct gate_exchange **slot)
{
	http_end(slot);
}
