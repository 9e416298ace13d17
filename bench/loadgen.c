/* bench/loadgen: the load generator behind `make bench`. Forked receiver processes, each one
 * epoll loop over raw sockets speaking just enough WebSocket (bearer handshake, masked frames
 * out, frames in) to hold idle clients, join rooms and count and time every delivery; sender
 * processes that publish sequence-numbered events at a fixed open-loop rate over HTTP
 * (POST /api/notify) or PostgreSQL (realtime.publish); in live mode, members of live SQL rooms
 * counting the pushes that follow row changes the parent commits. Usage: loadgen --help. */
#include "hist.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libpq-fe.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_PROCS   128
#define MAX_SENDERS 64
#define MAX_PIDS    128
#define MAX_PORTS   16
#define SCRATCH     (256 * 1024)

enum mode { M_IDLE, M_FANOUT, M_LATENCY, M_NOTIFY, M_LIVE };
enum source { SRC_NOTIFY, SRC_PG };
enum phase { PH_CONNECT, PH_GO, PH_STOP };

static struct {
	enum mode mode;
	enum source source;
	const char *host;
	int port;
	int ports[MAX_PORTS]; /* --ports: room r's members connect to ports[r % nports] */
	int nports;
	const char *path;
	bool batch;
	const char *token;
	const char *notify_token;
	const char *pg;
	const char *change_sql; /* live mode: the statement that changes every room's row */
	long conns;
	int procs;
	uint32_t src_first; /* host order */
	int nsrc;
	long room_size; /* 0: one room for everybody */
	const char *room_prefix;
	double rate; /* events/s over all senders; 0 = closed loop (notify mode) */
	long events; /* total events to send */
	double duration_s;
	int senders; /* sender processes (pg) or connections (notify) */
	double settle_s, hold_s, drain_s, connect_timeout_s;
	int inflight;
	int rcvbuf;         /* SO_RCVBUF of client sockets (0: the kernel's default) */
	double rejoin_at_s; /* storm: every client drops and rejoins with since, at go + this */
	int npids;
	pid_t pids[MAX_PIDS];
	const char *json_out;
	bool quiet;
} opt;

/* Results a receiver process hands back to the parent. */
struct proc_result {
	uint64_t expected, unique, lost, dups, misrouted, out_of_range, open_at_end;
	struct hist lat;
};

/* Everything processes share; an anonymous MAP_SHARED mapping made before fork. Counters are
 * added with __atomic builtins; each process flushes its local counts once per loop turn. */
struct shared {
	volatile int phase;
	volatile uint64_t t0_ns;
	uint64_t connected, joined, failed, join_errors, closed, deliveries, bytes, frames;
	uint64_t last_rx_ns;
	uint64_t refused[6];     /* by HTTP status class of a refused handshake: [4]=4xx, [5]=5xx */
	uint64_t close_codes[5]; /* 1000/1001, 1008/1009, 4008, 40xx other, anything else */
	uint64_t sent, send_errors, senders_done, last_send_ns;
	uint64_t procs_done;
	/* Storm (--rejoin-at): clients dropped, rejoined (answered joined again), of which
	 * recovered:true / false, reconnects that failed; when the drop began and the last
	 * rejoin was answered. */
	volatile int storm;
	uint64_t dropped, rejoined, recovered, unrecovered, rejoin_failed;
	uint64_t storm_ns, last_rejoin_ns;
	/* Live mode: when the parent sent the latest change (0: none yet), pushes before it. */
	volatile uint64_t change_ns;
	uint64_t initial, changes_done;
	struct proc_result pr[MAX_PROCS];
	struct hist send_lat[MAX_SENDERS];
	uint32_t *room_members; /* joined members per room (in the same mapping) */
	uint8_t *accepted;      /* bitmap over event numbers the server accepted */
};

static struct shared *S;
static long g_nrooms = 1;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void add(uint64_t *p, uint64_t v)
{
	if (v)
		__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

static void store_max(uint64_t *p, uint64_t v)
{
	uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
	while (v > cur &&
	       !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

static uint64_t load(const uint64_t *p)
{
	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void die(const char *what)
{
	fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void room_name(long r, char *out, size_t cap)
{
	snprintf(out, cap, "%s-%ld", opt.room_prefix, r);
}

/* Event n goes to room n % nrooms, so a room's k-th event is n / nrooms. */
static long events_per_room(void)
{
	return (opt.events + g_nrooms - 1) / g_nrooms;
}

/* ---- the payload scanner ----
 * Events carry {"_s":<seq>,"_t":<intended send time, CLOCK_MONOTONIC ns>} in their data. The
 * scanner pairs the two keys in order of appearance, whatever the key order and spacing of the
 * serializer (jsonb writes "_s": 1, "_t": 2), so it also reads batch arrays. */
typedef void (*msg_fn)(void *ctx, uint64_t seq, uint64_t t);

static const char *parse_num(const char *p, const char *end, uint64_t *out)
{
	uint64_t v = 0;

	while (p < end && (*p == ' ' || *p == ':' || *p == '\t'))
		p++;
	if (p >= end || !isdigit((unsigned char)*p))
		return NULL;
	while (p < end && isdigit((unsigned char)*p))
		v = v * 10 + (uint64_t)(*p++ - '0');
	*out = v;
	return p;
}

static int scan_events(const char *p, size_t n, msg_fn fn, void *ctx)
{
	const char *end = p + n;
	uint64_t s = 0, t = 0;
	bool have_s = false, have_t = false;
	int found = 0;

	while ((p = memmem(p, (size_t)(end - p), "\"_", 2)) && end - p >= 4) {
		char k = p[2];
		uint64_t v;
		const char *q;

		if (p[3] != '"' || (k != 's' && k != 't')) {
			p += 2;
			continue;
		}
		q = parse_num(p + 4, end, &v);
		if (!q) {
			p += 4;
			continue;
		}
		if (k == 's') {
			s = v;
			have_s = true;
		} else {
			t = v;
			have_t = true;
		}
		if (have_s && have_t) {
			fn(ctx, s, t);
			found++;
			have_s = have_t = false;
		}
		p = q;
	}
	return found;
}

/* ---- receivers ---- */

enum cstate { C_CONNECTING, C_HANDSHAKE, C_OPEN, C_JOINED, C_DONE };

struct conn {
	int fd;
	uint8_t state;
	uint8_t frag_op;
	bool joined;     /* reached C_JOINED once: its losses count even if it was closed later */
	bool rejoin;     /* storm: dropped; its next join carries since = max_id (or position) */
	uint64_t max_id; /* the highest event id it saw (storm's since) */
	/* The room position its first joined carried (0: none): the since of a client that saw
	 * no event (without it, since 0: the room's whole history). */
	uint64_t position;
	long idx;
	long room;
	char *rx; /* bytes of an incomplete frame or head kept between reads */
	uint32_t rxlen, rxcap;
	char *frag; /* a fragmented message being assembled (rare) */
	uint32_t fraglen, fragcap;
	uint8_t *seen; /* which of its room's events arrived */
	uint64_t got;
};

/* Per-process counts, flushed into the shared ones once per loop turn. */
static struct {
	uint64_t connected, joined, failed, join_errors, closed, deliveries, bytes, frames, last_rx;
	uint64_t dups, misrouted, out_of_range, initial;
	uint64_t dropped, rejoined, recovered, unrecovered, rejoin_failed, last_rejoin;
} L;

static struct hist g_lat;
static char *g_handshake;
static size_t g_handshake_len;
static uint8_t g_mask[4];
static int g_ep;
static long g_inflight;

static void flush_counts(void)
{
	add(&S->connected, L.connected);
	add(&S->joined, L.joined);
	add(&S->failed, L.failed);
	add(&S->join_errors, L.join_errors);
	add(&S->closed, L.closed);
	add(&S->deliveries, L.deliveries);
	add(&S->bytes, L.bytes);
	add(&S->frames, L.frames);
	add(&S->initial, L.initial);
	if (L.last_rx)
		store_max(&S->last_rx_ns, L.last_rx);
	add(&S->dropped, L.dropped);
	add(&S->rejoined, L.rejoined);
	add(&S->recovered, L.recovered);
	add(&S->unrecovered, L.unrecovered);
	add(&S->rejoin_failed, L.rejoin_failed);
	if (L.last_rejoin)
		store_max(&S->last_rejoin_ns, L.last_rejoin);
	L.connected = L.joined = L.failed = L.join_errors = L.closed = L.deliveries = L.bytes = 0;
	L.frames = L.initial = 0;
	L.dropped = L.rejoined = L.recovered = L.unrecovered = L.rejoin_failed = 0;
}

static void build_handshake(void)
{
	char buf[8192];
	int n =
	    snprintf(buf, sizeof(buf),
	             "GET %s%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
	             "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	             "Sec-WebSocket-Version: 13\r\n%s%s%s\r\n",
	             opt.path, opt.batch ? (strchr(opt.path, '?') ? "&batch=1" : "?batch=1") : "",
	             opt.host, opt.port, opt.token ? "Authorization: Bearer " : "",
	             opt.token ? opt.token : "", opt.token ? "\r\n" : "");
	g_handshake = strdup(buf);
	g_handshake_len = (size_t)n;
}

/* A client frame: FIN, opcode, masked with the process's key. */
static int send_frame(struct conn *c, int op, const void *data, size_t len)
{
	uint8_t f[256 + 14];
	size_t h = 0;

	if (len > 256)
		return -1;
	f[h++] = (uint8_t)(0x80 | op);
	if (len < 126) {
		f[h++] = (uint8_t)(0x80 | len);
	} else {
		f[h++] = 0x80 | 126;
		f[h++] = (uint8_t)(len >> 8);
		f[h++] = (uint8_t)len;
	}
	memcpy(f + h, g_mask, 4);
	h += 4;
	for (size_t i = 0; i < len; i++)
		f[h + i] = ((const uint8_t *)data)[i] ^ g_mask[i & 3];
	return send(c->fd, f, h + len, MSG_NOSIGNAL) == (ssize_t)(h + len) ? 0 : -1;
}

/* Closes the socket and frees its buffers; the books (seen, got, max_id) stay. */
static void conn_drop(struct conn *c)
{
	if (c->state == C_DONE)
		return;
	if (c->state == C_CONNECTING || c->state == C_HANDSHAKE)
		g_inflight--;
	epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->state = C_DONE;
	free(c->rx);
	c->rx = NULL;
	c->rxlen = c->rxcap = 0;
	free(c->frag);
	c->frag = NULL;
}

static void conn_end(struct conn *c, bool failed)
{
	if (c->state == C_DONE)
		return;
	if (failed && c->rejoin)
		L.rejoin_failed++;
	else if (failed)
		L.failed++;
	else
		L.closed++;
	conn_drop(c);
}

static int conn_open(struct conn *c)
{
	struct sockaddr_in src, dst;
	struct epoll_event ev;
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		L.failed += !c->rejoin;
		L.rejoin_failed += c->rejoin;
		c->state = C_DONE;
		return -1;
	}
	/* Ports are picked per (source, destination) at connect, so each 127.0.0.x adds a full
	 * ephemeral range. */
	setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* Small buffers keep a million held sockets within the kernel's TCP memory. */
	if (opt.rcvbuf > 0)
		setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &opt.rcvbuf, sizeof(opt.rcvbuf));
	memset(&src, 0, sizeof(src));
	src.sin_family = AF_INET;
	src.sin_addr.s_addr = htonl(opt.src_first + (uint32_t)(c->idx % opt.nsrc));
	if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
		close(c->fd);
		L.failed += !c->rejoin;
		L.rejoin_failed += c->rejoin;
		c->state = C_DONE;
		return -1;
	}
	memset(&dst, 0, sizeof(dst));
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)(opt.nports ? opt.ports[c->room % opt.nports] : opt.port));
	inet_pton(AF_INET, opt.host, &dst.sin_addr);
	if (connect(c->fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 && errno != EINPROGRESS) {
		close(c->fd);
		L.failed += !c->rejoin;
		L.rejoin_failed += c->rejoin;
		c->state = C_DONE;
		return -1;
	}
	c->state = C_CONNECTING;
	ev.events = EPOLLOUT | EPOLLIN;
	ev.data.ptr = c;
	epoll_ctl(g_ep, EPOLL_CTL_ADD, c->fd, &ev);
	return 0;
}

static void on_delivery(void *ctx, uint64_t seq, uint64_t t)
{
	struct conn *c = ctx;
	uint64_t now = now_ns();
	uint64_t k;

	L.deliveries++;
	L.last_rx = now;
	hist_add(&g_lat, now > t ? now - t : 0);
	if ((long)(seq % (uint64_t)g_nrooms) != c->room) {
		L.misrouted++;
		return;
	}
	k = seq / (uint64_t)g_nrooms;
	if (!c->seen || k >= (uint64_t)events_per_room()) {
		L.out_of_range++;
		return;
	}
	if (c->seen[k >> 3] & (1u << (k & 7))) {
		L.dups++;
		return;
	}
	c->seen[k >> 3] |= (uint8_t)(1u << (k & 7));
	c->got++;
}

/* Live mode: any room message is a push of the room's row. Before the first change it is the
 * row a new member gets; after one, it is timed from the change's send time and counted
 * against the changes (one push per member per change). */
static void on_push(struct conn *c)
{
	uint64_t now = now_ns(), t = S->change_ns;

	L.deliveries++;
	L.frames++;
	L.last_rx = now;
	if (!t) {
		L.initial++;
		return;
	}
	hist_add(&g_lat, now > t ? now - t : 0);
	c->got++;
}

static void on_text(struct conn *c, const char *p, size_t n)
{
	if (n > 8 && !memcmp(p, "{\"type\":", 8)) {
		if (memmem(p, n, "\"type\":\"joined\"", 15) && c->state == C_OPEN) {
			c->state = C_JOINED;
			if (c->rejoin) {
				L.rejoined++;
				L.last_rejoin = now_ns();
				if (memmem(p, n, "\"recovered\":true", 16))
					L.recovered++;
				else
					L.unrecovered++;
				return;
			}
			c->joined = true;
			L.joined++;
			if (opt.rejoin_at_s > 0) {
				const char *q = memmem(p, n, "\"position\":", 11);
				uint64_t pos;
				if (q && parse_num(q + 11, p + n, &pos))
					c->position = pos;
			}
			__atomic_fetch_add(&S->room_members[c->room], 1, __ATOMIC_RELAXED);
		} else if (memmem(p, n, "\"type\":\"error\"", 14)) {
			if (!L.join_errors && !opt.quiet)
				fprintf(stderr, "loadgen: server error reply: %.*s\n",
				        (int)(n > 200 ? 200 : n), p);
			L.join_errors++;
		}
		return;
	}
	if (opt.mode == M_LIVE) {
		if (c->joined)
			on_push(c);
		return;
	}
	if (scan_events(p, n, on_delivery, c))
		L.frames++;
	if (opt.rejoin_at_s > 0) /* since for the rejoin: events open with {"id":<n>, */
		for (const char *q = p; (q = memmem(q, (size_t)(p + n - q), "{\"id\":", 6));) {
			uint64_t id;
			const char *e = parse_num(q + 6, p + n, &id);
			if (e && id > c->max_id)
				c->max_id = id;
			q = e ? e : q + 6;
		}
}

static void on_close_frame(const uint8_t *p, size_t n)
{
	int code = n >= 2 ? (p[0] << 8 | p[1]) : 1005;
	int k = code == 1000 || code == 1001   ? 0
	        : code == 1008 || code == 1009 ? 1
	        : code == 4008                 ? 2
	        : code >= 4000                 ? 3
	                                       : 4;
	__atomic_fetch_add(&S->close_codes[k], 1, __ATOMIC_RELAXED);
}

static void frag_append(struct conn *c, const uint8_t *p, size_t n)
{
	if (c->fraglen + n > c->fragcap) {
		c->fragcap = (uint32_t)(c->fraglen + n) * 2;
		c->frag = realloc(c->frag, c->fragcap);
	}
	memcpy(c->frag + c->fraglen, p, n);
	c->fraglen += (uint32_t)n;
}

/* Handles every complete frame in buf; returns how many bytes were consumed, or -1 when the
 * connection ended. */
static long parse_frames(struct conn *c, uint8_t *buf, size_t len)
{
	size_t off = 0;

	while (len - off >= 2) {
		uint8_t *f = buf + off;
		int op = f[0] & 0x0f, fin = f[0] & 0x80, masked = f[1] & 0x80;
		uint64_t plen = f[1] & 0x7f;
		size_t h = 2;

		if (plen == 126) {
			if (len - off < 4)
				break;
			plen = (uint64_t)f[2] << 8 | f[3];
			h = 4;
		} else if (plen == 127) {
			if (len - off < 10)
				break;
			plen = 0;
			for (int i = 0; i < 8; i++)
				plen = plen << 8 | f[2 + i];
			h = 10;
		}
		if (masked)
			h += 4;
		if (len - off < h + plen)
			break;
		uint8_t *p = f + h;
		if (masked)
			for (uint64_t i = 0; i < plen; i++)
				p[i] ^= f[h - 4 + (i & 3)];
		off += h + plen;
		L.bytes += plen;
		switch (op) {
		case 0x1:
		case 0x2:
			if (fin) {
				if (op == 0x1)
					on_text(c, (const char *)p, plen);
			} else {
				c->frag_op = (uint8_t)op;
				c->fraglen = 0;
				frag_append(c, p, plen);
			}
			break;
		case 0x0:
			frag_append(c, p, plen);
			if (fin && c->frag_op == 0x1)
				on_text(c, c->frag, c->fraglen);
			break;
		case 0x8:
			on_close_frame(p, plen);
			send_frame(c, 0x8, p, plen > 125 ? 125 : plen);
			conn_end(c, false);
			return -1;
		case 0x9:
			send_frame(c, 0xA, p, plen > 125 ? 125 : plen);
			break;
		default:
			break;
		}
	}
	return (long)off;
}

static void keep_rest(struct conn *c, const char *p, size_t n)
{
	if (n > c->rxcap) {
		c->rxcap = (uint32_t)(n < 4096 ? 4096 : n * 2);
		free(c->rx);
		c->rx = malloc(c->rxcap);
	}
	memmove(c->rx, p, n);
	c->rxlen = (uint32_t)n;
}

static void on_handshake_done(struct conn *c)
{
	struct epoll_event ev;

	c->state = C_OPEN;
	g_inflight--;
	L.connected++;
	ev.events = EPOLLIN;
	ev.data.ptr = c;
	epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
	if (opt.mode != M_IDLE) {
		char msg[200], room[96];
		int n;
		room_name(c->room, room, sizeof(room));
		if (c->rejoin)
			n = snprintf(
			    msg, sizeof(msg),
			    "{\"type\":\"join\",\"payload\":{\"room\":\"%s\",\"since\":%llu}}",
			    room, (unsigned long long)(c->max_id ? c->max_id : c->position));
		else
			n = snprintf(msg, sizeof(msg),
			             "{\"type\":\"join\",\"payload\":{\"room\":\"%s\"}}", room);
		if (send_frame(c, 0x1, msg, (size_t)n) < 0)
			conn_end(c, false);
	}
}

static char *g_scratch;

static void on_readable(struct conn *c)
{
	char *buf = g_scratch;
	size_t have = c->rxlen;
	ssize_t n;

	/* The kept bytes go first so frames are parsed from one contiguous buffer. */
	if (have)
		memcpy(buf, c->rx, have);
	n = recv(c->fd, buf + have, SCRATCH - have, 0);
	if (n <= 0) {
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		conn_end(c, c->state == C_HANDSHAKE || c->state == C_CONNECTING);
		return;
	}
	have += (size_t)n;
	if (c->state == C_HANDSHAKE) {
		char *e = memmem(buf, have, "\r\n\r\n", 4);
		if (!e) {
			if (have > 16384)
				conn_end(c, true);
			else
				keep_rest(c, buf, have);
			return;
		}
		if (have < 12 || memcmp(buf + 9, "101", 3)) {
			int cls = have >= 10 ? buf[9] - '0' : 0;
			if (cls >= 0 && cls < 6)
				__atomic_fetch_add(&S->refused[cls], 1, __ATOMIC_RELAXED);
			if (!opt.quiet && load(&S->failed) + L.failed < 3)
				fprintf(stderr, "loadgen: handshake refused: %.*s\n",
				        (int)(e - buf > 80 ? 80 : e - buf), buf);
			conn_end(c, true);
			return;
		}
		size_t used = (size_t)(e + 4 - buf);
		memmove(buf, buf + used, have - used);
		have -= used;
		on_handshake_done(c);
		if (c->state == C_DONE)
			return;
	}
	long used = parse_frames(c, (uint8_t *)buf, have);
	if (used < 0)
		return;
	keep_rest(c, buf + used, have - (size_t)used);
}

static void on_writable(struct conn *c)
{
	int err = 0;
	socklen_t sl = sizeof(err);
	struct epoll_event ev;

	getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
	if (err) {
		conn_end(c, true);
		return;
	}
	if (send(c->fd, g_handshake, g_handshake_len, MSG_NOSIGNAL) != (ssize_t)g_handshake_len) {
		conn_end(c, true);
		return;
	}
	c->state = C_HANDSHAKE;
	ev.events = EPOLLIN;
	ev.data.ptr = c;
	epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
}

static void receiver(int k, long lo, long hi)
{
	long n = hi - lo, next = 0;
	struct conn *cs = calloc((size_t)n, sizeof(*cs));
	struct epoll_event evs[512];
	size_t bitmap =
	    opt.mode == M_IDLE || opt.mode == M_LIVE ? 0 : (size_t)(events_per_room() + 7) / 8;
	struct proc_result *r = &S->pr[k];

	g_scratch = malloc(SCRATCH);
	g_ep = epoll_create1(EPOLL_CLOEXEC);
	if (!cs || !g_scratch || g_ep < 0)
		die("receiver setup");
	hist_init(&g_lat);
	for (int i = 0; i < 4; i++)
		g_mask[i] = (uint8_t)(rand() >> 8);
	for (long i = 0; i < n; i++) {
		cs[i].idx = lo + i;
		cs[i].fd = -1;
		cs[i].room = opt.room_size ? (lo + i) / opt.room_size : 0;
		cs[i].state = C_DONE;
		if (bitmap && !(cs[i].seen = calloc(1, bitmap)))
			die("calloc");
	}
	bool stormed = false;
	while (S->phase != PH_STOP) {
		int ne;
		/* Storm: every client that joined drops its socket at once, then all reconnect
		 * (bounded as below) and rejoin with since = the highest id each saw. */
		if (!stormed && S->storm) {
			stormed = true;
			for (long i = 0; i < n; i++) {
				if (!cs[i].joined)
					continue;
				conn_drop(&cs[i]);
				cs[i].rejoin = true;
				L.dropped++;
			}
			next = 0;
		}
		/* Bounded handshakes in flight: a burst of SYNs beyond the listen backlog would
		 * only measure SYN retransmission timers. */
		while (next < n && g_inflight < opt.inflight) {
			struct conn *c = &cs[next++];
			if (stormed && !c->rejoin)
				continue;
			if (conn_open(c) == 0)
				g_inflight++;
		}
		ne = epoll_wait(g_ep, evs, 512, 20);
		for (int i = 0; i < ne; i++) {
			struct conn *c = evs[i].data.ptr;
			if (c->state == C_DONE)
				continue;
			if (c->state == C_CONNECTING) {
				if (evs[i].events & (EPOLLERR | EPOLLHUP))
					conn_end(c, true);
				else if (evs[i].events & EPOLLOUT)
					on_writable(c);
				continue;
			}
			if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
				on_readable(c);
		}
		flush_counts();
	}
	/* Settle the books: what each connection should have had against what it got. */
	memset(r, 0, sizeof(*r));
	hist_init(&r->lat);
	for (long i = 0; i < n; i++) {
		struct conn *c = &cs[i];
		if (c->state == C_OPEN || c->state == C_JOINED)
			r->open_at_end++;
		if (opt.mode == M_LIVE && c->joined) {
			uint64_t want = load(&S->changes_done);
			r->expected += want;
			r->unique += c->got >= want ? want : c->got;
			r->lost += want > c->got ? want - c->got : 0;
			L.dups += c->got > want ? c->got - want : 0;
		}
		if (!bitmap || !c->joined)
			continue;
		uint64_t expected = 0;
		for (long e = 0; e < events_per_room(); e++) {
			uint64_t seq = (uint64_t)(e * g_nrooms + c->room);
			if (seq < (uint64_t)opt.events &&
			    (S->accepted[seq >> 3] & (1u << (seq & 7))))
				expected++;
		}
		r->expected += expected;
		r->unique += c->got;
		r->lost += expected > c->got ? expected - c->got : 0;
	}
	r->dups = L.dups;
	r->misrouted = L.misrouted;
	r->out_of_range = L.out_of_range;
	r->lat = g_lat;
	for (long i = 0; i < n; i++)
		if (cs[i].fd >= 0)
			close(cs[i].fd);
	__atomic_fetch_add(&S->procs_done, 1, __ATOMIC_RELEASE);
	_exit(0);
}

/* ---- senders ---- */

static uint64_t due_ns(long n)
{
	return S->t0_ns + (uint64_t)((double)n * 1e9 / opt.rate);
}

static void mark_accepted(long n)
{
	if (opt.mode == M_NOTIFY) /* no receivers, no books: the bitmap is not even there */
		return;
	__atomic_fetch_or(&S->accepted[n >> 3], (uint8_t)(1u << (n & 7)), __ATOMIC_RELAXED);
}

static void wait_for_phase(void)
{
	while (S->phase == PH_CONNECT)
		usleep(1000);
}

static void wait_for_go(void)
{
	wait_for_phase();
	/* t0 is set a little in the future; sleeping to it starts every sender together. */
	struct timespec ts = {(time_t)(S->t0_ns / 1000000000ull), (long)(S->t0_ns % 1000000000ull)};
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
}

static int event_body(long n, uint64_t t, char *out, size_t cap)
{
	char room[96];
	if (opt.mode == M_NOTIFY)
		snprintf(room, sizeof(room), "%s-void", opt.room_prefix);
	else
		room_name(n % g_nrooms, room, sizeof(room));
	return snprintf(out, cap,
	                "{\"event\":\"bench\",\"room\":\"%s\",\"data\":{\"_s\":%ld,\"_t\":%llu}}",
	                room, n, (unsigned long long)t);
}

enum hstate { H_DOWN, H_CONNECTING, H_IDLE, H_BUSY };

struct hconn {
	int fd;
	int state;
	long ev;
	uint64_t intended;
	uint64_t retry_at;
	char rx[8192];
	size_t rxlen;
};

static int h_connect(int ep, struct hconn *h)
{
	struct sockaddr_in dst;
	struct epoll_event ev;
	int one = 1;

	h->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (h->fd < 0)
		return -1;
	setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	memset(&dst, 0, sizeof(dst));
	dst.sin_family = AF_INET;
	dst.sin_port = htons((uint16_t)opt.port);
	inet_pton(AF_INET, opt.host, &dst.sin_addr);
	if (connect(h->fd, (struct sockaddr *)&dst, sizeof(dst)) < 0 && errno != EINPROGRESS) {
		close(h->fd);
		h->fd = -1;
		return -1;
	}
	h->state = H_CONNECTING;
	h->rxlen = 0;
	ev.events = EPOLLOUT | EPOLLIN;
	ev.data.ptr = h;
	epoll_ctl(ep, EPOLL_CTL_ADD, h->fd, &ev);
	return 0;
}

static void h_down(int ep, struct hconn *h, uint64_t *errors)
{
	if (h->state == H_BUSY)
		(*errors)++;
	if (h->fd >= 0) {
		epoll_ctl(ep, EPOLL_CTL_DEL, h->fd, NULL);
		close(h->fd);
	}
	h->fd = -1;
	h->state = H_DOWN;
	h->retry_at = now_ns() + 50000000ull;
}

static int h_send(struct hconn *h, long n, uint64_t intended)
{
	char body[512], req[1024];
	int bl = event_body(n, intended, body, sizeof(body));
	int rl = snprintf(req, sizeof(req),
	                  "POST /api/notify HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
	                  "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
	                  opt.host, opt.port, opt.notify_token ? opt.notify_token : "", bl, body);
	if (send(h->fd, req, (size_t)rl, MSG_NOSIGNAL) != rl)
		return -1;
	h->state = H_BUSY;
	h->ev = n;
	h->intended = intended;
	return 0;
}

/* Consumes complete responses; returns -1 when the connection must be dropped. */
static int h_parse(struct hconn *h, struct hist *lat, uint64_t *ok, uint64_t *errors)
{
	for (;;) {
		char *e = memmem(h->rx, h->rxlen, "\r\n\r\n", 4);
		size_t head, cl = 0;
		bool close_after = false;
		int status;

		if (!e)
			return h->rxlen >= sizeof(h->rx) ? -1 : 0;
		head = (size_t)(e + 4 - h->rx);
		*e = '\0';
		for (char *p = h->rx; (p = strchr(p, '\n')); p++) {
			if (!strncasecmp(p + 1, "content-length:", 15))
				cl = (size_t)strtoul(p + 16, NULL, 10);
			else if (!strncasecmp(p + 1, "connection:", 11) &&
			         strcasestr(p + 12, "close"))
				close_after = true;
		}
		*e = '\r';
		if (h->rxlen < head + cl)
			return 0;
		status = h->rxlen >= 12 ? atoi(h->rx + 9) : 0;
		if (h->state == H_BUSY) {
			if (status == 200) {
				(*ok)++;
				mark_accepted(h->ev);
			} else {
				if (!opt.quiet && *errors < 3)
					fprintf(stderr, "loadgen: notify answered %d: %.*s\n",
					        status, (int)(cl > 120 ? 120 : cl), h->rx + head);
				(*errors)++;
			}
			hist_add(lat, now_ns() - h->intended);
			h->state = H_IDLE;
		}
		memmove(h->rx, h->rx + head + cl, h->rxlen - head - cl);
		h->rxlen -= head + cl;
		if (close_after)
			return -1;
	}
}

/* Notify over HTTP/1.1 keep-alive connections: open loop at opt.rate (an event waits for a free
 * connection but keeps its intended time), or closed loop when the rate is 0. */
static void sender_http(int k)
{
	int nh = opt.senders, ep = epoll_create1(EPOLL_CLOEXEC);
	struct hconn *hs = calloc((size_t)nh, sizeof(*hs));
	struct hist *lat = &S->send_lat[k];
	uint64_t ok = 0, errors = 0, deadline;
	long next = 0, total = opt.events;
	bool closed_loop = opt.rate <= 0;

	hist_init(lat);
	/* Connected once sending is about to start (t0 is 20 ms ahead): a connection opened
	 * before a long connect phase or hold would meet the server's keep-alive timeout. */
	wait_for_phase();
	for (int i = 0; i < nh; i++) {
		hs[i].fd = -1;
		h_connect(ep, &hs[i]);
	}
	wait_for_go();
	deadline = opt.duration_s > 0 ? S->t0_ns + (uint64_t)(opt.duration_s * 1e9) : UINT64_MAX;
	for (;;) {
		uint64_t now = now_ns(), wait = 100000000ull;
		struct epoll_event evs[64];
		struct timespec ts;
		int busy = 0, idle = 0, ne;

		if (now >= deadline && total > next)
			total = next;
		for (int i = 0; i < nh && next < total; i++) {
			struct hconn *h = &hs[i];
			if (h->state == H_DOWN && now >= h->retry_at)
				h_connect(ep, h);
			if (h->state != H_IDLE)
				continue;
			uint64_t due = closed_loop ? now : due_ns(next);
			if (due > now)
				break;
			if (h_send(h, next, due) < 0) {
				h_down(ep, h, &errors);
				continue;
			}
			next++;
		}
		for (int i = 0; i < nh; i++) {
			busy += hs[i].state == H_BUSY || hs[i].state == H_CONNECTING;
			idle += hs[i].state == H_IDLE;
		}
		if (next >= total && !busy)
			break;
		/* Answers still missing 10 s after the time limit are not coming. */
		if (next >= total && deadline != UINT64_MAX && now > deadline + 10000000000ull)
			break;
		/* Sleep until the next event is due, unless it is due already and waits for a
		 * connection: then only an answer can move things on. */
		if (!closed_loop && next < total && idle) {
			uint64_t due = due_ns(next);
			wait = due > now ? due - now : 0;
		}
		if (wait > 100000000ull)
			wait = 100000000ull;
		ts.tv_sec = (time_t)(wait / 1000000000ull);
		ts.tv_nsec = (long)(wait % 1000000000ull);
		ne = epoll_pwait2(ep, evs, 64, &ts, NULL);
		for (int i = 0; i < ne; i++) {
			struct hconn *h = evs[i].data.ptr;
			if (h->state == H_CONNECTING) {
				int err = 0;
				socklen_t sl = sizeof(err);
				struct epoll_event ev = {.events = EPOLLIN, .data.ptr = h};
				getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &sl);
				if (err || (evs[i].events & (EPOLLERR | EPOLLHUP))) {
					h_down(ep, h, &errors);
					continue;
				}
				h->state = H_IDLE;
				epoll_ctl(ep, EPOLL_CTL_MOD, h->fd, &ev);
				continue;
			}
			ssize_t n = recv(h->fd, h->rx + h->rxlen, sizeof(h->rx) - h->rxlen, 0);
			if (n <= 0) {
				if (n < 0 && errno == EAGAIN)
					continue;
				h_down(ep, h, &errors);
				continue;
			}
			h->rxlen += (size_t)n;
			if (h_parse(h, lat, &ok, &errors) < 0)
				h_down(ep, h, &errors);
		}
		add(&S->sent, ok);
		add(&S->send_errors, errors);
		ok = errors = 0;
	}
	store_max(&S->last_send_ns, now_ns());
	__atomic_fetch_add(&S->senders_done, 1, __ATOMIC_RELEASE);
	_exit(0);
}

/* realtime.publish from a plain libpq connection, one synchronous statement at a time: a slow
 * commit delays the next events, and their intended times keep that delay in the latency. */
static void sender_pg(int k)
{
	PGconn *pg = PQconnectdb(opt.pg);
	struct hist *lat = &S->send_lat[k];
	uint64_t ok = 0, errors = 0;

	hist_init(lat);
	if (PQstatus(pg) != CONNECTION_OK) {
		fprintf(stderr, "loadgen: PostgreSQL: %s", PQerrorMessage(pg));
		__atomic_fetch_add(&S->senders_done, 1, __ATOMIC_RELEASE);
		_exit(1);
	}
	PQclear(PQexec(pg, "SET application_name = 'loadgen-sender'"));
	wait_for_go();
	for (long n = k; n < opt.events; n += opt.senders) {
		char sql[512], room[96];
		uint64_t due = due_ns(n);
		struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
		PGresult *res;

		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		room_name(n % g_nrooms, room, sizeof(room));
		snprintf(sql, sizeof(sql),
		         "SELECT realtime.publish('bench', ARRAY['%s'], "
		         "'{\"_s\":%ld,\"_t\":%llu}'::jsonb)",
		         room, n, (unsigned long long)due);
		res = PQexec(pg, sql);
		if (PQresultStatus(res) == PGRES_TUPLES_OK) {
			ok++;
			mark_accepted(n);
		} else {
			if (!errors && !opt.quiet)
				fprintf(stderr, "loadgen: publish failed: %s", PQerrorMessage(pg));
			errors++;
		}
		PQclear(res);
		hist_add(lat, now_ns() - due);
		if ((n / opt.senders) % 16 == 0) {
			add(&S->sent, ok);
			add(&S->send_errors, errors);
			ok = errors = 0;
		}
	}
	add(&S->sent, ok);
	add(&S->send_errors, errors);
	PQfinish(pg);
	store_max(&S->last_send_ns, now_ns());
	__atomic_fetch_add(&S->senders_done, 1, __ATOMIC_RELEASE);
	_exit(0);
}

/* ---- the server's side of the books, from /proc ---- */

struct sample {
	double cpu_s;
	long rss_kb;
};

static struct sample sample_server(void)
{
	struct sample s = {0, 0};
	long tck = sysconf(_SC_CLK_TCK);

	for (int i = 0; i < opt.npids; i++) {
		char path[64], buf[4096];
		FILE *f;
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)opt.pids[i]);
		if ((f = fopen(path, "r"))) {
			size_t n = fread(buf, 1, sizeof(buf) - 1, f);
			char *p;
			buf[n] = '\0';
			/* Fields after the command name (which may hold spaces): state is field 3,
			 * utime 14 and stime 15. */
			if ((p = strrchr(buf, ')'))) {
				unsigned long ut = 0, st = 0;
				if (sscanf(p + 2,
				           "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
				           &ut, &st) == 2)
					s.cpu_s += (double)(ut + st) / (double)tck;
			}
			fclose(f);
		}
		snprintf(path, sizeof(path), "/proc/%d/status", (int)opt.pids[i]);
		if ((f = fopen(path, "r"))) {
			while (fgets(buf, sizeof(buf), f))
				if (!strncmp(buf, "VmRSS:", 6))
					s.rss_kb += strtol(buf + 6, NULL, 10);
			fclose(f);
		}
	}
	return s;
}

static void sleep_s(double s)
{
	struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
	nanosleep(&ts, NULL);
}

/* Live mode, in the parent: the hold, with --events changes spread evenly over it, each
 * stamped in S->change_ns just before it is sent (so the push latency includes its commit).
 * The window markers on stderr let the caller sample PostgreSQL and /metrics around it.
 * Returns the end of the window. */
static uint64_t live_changes(void)
{
	PGconn *pg = PQconnectdb(opt.pg);
	uint64_t t0, t_end;

	if (PQstatus(pg) != CONNECTION_OK) {
		fprintf(stderr, "loadgen: PostgreSQL: %s", PQerrorMessage(pg));
		PQfinish(pg);
		return now_ns();
	}
	PQclear(PQexec(pg, "SET application_name = 'loadgen-change'"));
	fprintf(stderr, "loadgen: live window start\n");
	fflush(stderr);
	t0 = S->t0_ns = now_ns();
	t_end = t0 + (uint64_t)(opt.hold_s * 1e9);
	for (long i = 0; i < opt.events; i++) {
		uint64_t due =
		    t0 + (uint64_t)(((double)i + 0.5) * opt.hold_s * 1e9 / (double)opt.events);
		struct timespec ts = {(time_t)(due / 1000000000ull), (long)(due % 1000000000ull)};
		PGresult *res;

		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
		S->change_ns = now_ns();
		res = PQexec(pg, opt.change_sql);
		if (PQresultStatus(res) == PGRES_COMMAND_OK ||
		    PQresultStatus(res) == PGRES_TUPLES_OK) {
			add(&S->changes_done, 1);
			add(&S->sent, 1);
		} else {
			fprintf(stderr, "loadgen: change failed: %s", PQerrorMessage(pg));
			add(&S->send_errors, 1);
		}
		PQclear(res);
	}
	PQfinish(pg);
	struct timespec te = {(time_t)(t_end / 1000000000ull), (long)(t_end % 1000000000ull)};
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &te, NULL);
	fprintf(stderr, "loadgen: live window end\n");
	fflush(stderr);
	return t_end;
}

/* ---- the parent ---- */

/* Storm: starts the drop once --rejoin-at seconds of sending have passed. */
static void storm_check(void)
{
	if (opt.rejoin_at_s <= 0 || S->storm)
		return;
	if ((double)((int64_t)now_ns() - (int64_t)S->t0_ns) / 1e9 >= opt.rejoin_at_s) {
		S->storm_ns = now_ns();
		__atomic_store_n(&S->storm, 1, __ATOMIC_RELEASE);
		/* The caller samples the database's query counts from here on. */
		fprintf(stderr, "loadgen: storm start\n");
		fflush(stderr);
	}
}

/* Every dropped client has rejoined or failed to (or there is no storm). */
static bool storm_settled(void)
{
	if (opt.rejoin_at_s <= 0)
		return true;
	return S->storm && load(&S->dropped) >= load(&S->joined) &&
	       load(&S->rejoined) + load(&S->rejoin_failed) >= load(&S->dropped);
}

static const char *mode_name(void)
{
	static const char *names[] = {"idle", "fanout", "latency", "notify", "live"};
	return names[opt.mode];
}

static void progress(const char *what)
{
	if (opt.quiet)
		return;
	fprintf(stderr,
	        "loadgen: %-8s connected %llu failed %llu joined %llu closed %llu sent %llu "
	        "deliveries %llu\n",
	        what, (unsigned long long)load(&S->connected), (unsigned long long)load(&S->failed),
	        (unsigned long long)load(&S->joined), (unsigned long long)load(&S->closed),
	        (unsigned long long)load(&S->sent), (unsigned long long)load(&S->deliveries));
}

static void usage(FILE *out)
{
	fprintf(
	    out,
	    "usage: loadgen MODE [options]\n"
	    "modes:\n"
	    "  idle      open --conns WebSocket clients, hold them --hold seconds\n"
	    "  fanout    clients join rooms; --events sequence-numbered events at --rate via\n"
	    "            POST /api/notify (or --source pg); count deliveries, loss, duplicates\n"
	    "  latency   like fanout, default source pg: commit-to-client latency histogram\n"
	    "  notify    POST /api/notify only (no clients): requests/s, closed loop when --rate "
	    "0\n"
	    "  live      clients join live SQL rooms and are held --hold seconds, during which\n"
	    "            --events changes (--change-sql run on --pg) are spread evenly; counts\n"
	    "            the rows pushed (one per member per change) and times them from each\n"
	    "            change; stderr says 'loadgen: live window start|end' around the hold\n"
	    "options:\n"
	    "  --host A --port P --path /ws --batch     server and WebSocket path (?batch=1)\n"
	    "  --token JWT                              bearer token for the handshake\n"
	    "  --conns N --procs P --inflight K         clients, receiver processes, handshakes\n"
	    "                                           in flight per process (64)\n"
	    "  --src 127.0.0.2 --nsrc K                 source addresses, round robin\n"
	    "  --room-size K --room-prefix S            K members per room (0: one room)\n"
	    "  --events N --rate R --duration S         events, events/s (0: closed loop), or\n"
	    "                                           a time limit (notify mode)\n"
	    "  --source notify|pg --notify-token T --pg CONNINFO --senders K\n"
	    "  --change-sql SQL                         live mode: the change, one statement\n"
	    "  --settle S --hold S --drain S --connect-timeout S\n"
	    "  --ports P1,P2,..                         several servers (replicas): room r's\n"
	    "                                           members use port r %% count; senders P1\n"
	    "  --rcvbuf BYTES                           SO_RCVBUF of every client socket\n"
	    "  --rejoin-at S                            storm: S s after sending starts, every\n"
	    "                                           client drops its socket, reconnects and\n"
	    "                                           rejoins with since = highest id it saw\n"
	    "                                           (none: the position its joined carried)\n"
	    "  --hold S (fanout/latency)                hold S s before sending: CPU holding\n"
	    "  --pid PID (repeatable)                   server processes: RSS and CPU from /proc\n"
	    "  --json FILE                              results (default stdout), one JSON object\n"
	    "  --quiet\n");
}

static void parse_args(int argc, char **argv)
{
	enum {
		OPT_HOST = 1,
		OPT_PORT,
		OPT_PATH,
		OPT_BATCH,
		OPT_TOKEN,
		OPT_NTOKEN,
		OPT_PG,
		OPT_CONNS,
		OPT_PROCS,
		OPT_SRC,
		OPT_NSRC,
		OPT_RSIZE,
		OPT_RPREFIX,
		OPT_RATE,
		OPT_EVENTS,
		OPT_DURATION,
		OPT_SENDERS,
		OPT_SOURCE,
		OPT_SETTLE,
		OPT_HOLD,
		OPT_DRAIN,
		OPT_CTIMEOUT,
		OPT_INFLIGHT,
		OPT_PID,
		OPT_JSON,
		OPT_QUIET,
		OPT_CHANGE,
		OPT_PORTS,
		OPT_RCVBUF,
		OPT_REJOIN,
		OPT_HELP
	};
	static const struct option lo[] = {{"host", 1, 0, OPT_HOST},
	                                   {"port", 1, 0, OPT_PORT},
	                                   {"path", 1, 0, OPT_PATH},
	                                   {"batch", 0, 0, OPT_BATCH},
	                                   {"token", 1, 0, OPT_TOKEN},
	                                   {"notify-token", 1, 0, OPT_NTOKEN},
	                                   {"pg", 1, 0, OPT_PG},
	                                   {"conns", 1, 0, OPT_CONNS},
	                                   {"procs", 1, 0, OPT_PROCS},
	                                   {"src", 1, 0, OPT_SRC},
	                                   {"nsrc", 1, 0, OPT_NSRC},
	                                   {"room-size", 1, 0, OPT_RSIZE},
	                                   {"room-prefix", 1, 0, OPT_RPREFIX},
	                                   {"rate", 1, 0, OPT_RATE},
	                                   {"events", 1, 0, OPT_EVENTS},
	                                   {"duration", 1, 0, OPT_DURATION},
	                                   {"senders", 1, 0, OPT_SENDERS},
	                                   {"source", 1, 0, OPT_SOURCE},
	                                   {"settle", 1, 0, OPT_SETTLE},
	                                   {"hold", 1, 0, OPT_HOLD},
	                                   {"drain", 1, 0, OPT_DRAIN},
	                                   {"connect-timeout", 1, 0, OPT_CTIMEOUT},
	                                   {"inflight", 1, 0, OPT_INFLIGHT},
	                                   {"pid", 1, 0, OPT_PID},
	                                   {"json", 1, 0, OPT_JSON},
	                                   {"quiet", 0, 0, OPT_QUIET},
	                                   {"change-sql", 1, 0, OPT_CHANGE},
	                                   {"ports", 1, 0, OPT_PORTS},
	                                   {"rcvbuf", 1, 0, OPT_RCVBUF},
	                                   {"rejoin-at", 1, 0, OPT_REJOIN},
	                                   {"help", 0, 0, OPT_HELP},
	                                   {0, 0, 0, 0}};
	struct in_addr a;
	int c;
	bool source_set = false;

	opt.host = "127.0.0.1";
	opt.port = 8080;
	opt.path = "/ws";
	opt.room_prefix = "bench";
	opt.src_first = 0x7f000002;
	opt.senders = 4;
	opt.settle_s = 2;
	opt.drain_s = 3;
	opt.connect_timeout_s = 120;
	opt.inflight = 64;
	opt.events = 1000;
	opt.rate = 100;
	if (argc < 2 || argv[1][0] == '-') {
		usage(argc >= 2 && !strcmp(argv[1], "--help") ? stdout : stderr);
		exit(argc >= 2 && !strcmp(argv[1], "--help") ? 0 : 2);
	}
	if (!strcmp(argv[1], "idle"))
		opt.mode = M_IDLE;
	else if (!strcmp(argv[1], "fanout"))
		opt.mode = M_FANOUT;
	else if (!strcmp(argv[1], "latency"))
		opt.mode = M_LATENCY;
	else if (!strcmp(argv[1], "notify"))
		opt.mode = M_NOTIFY;
	else if (!strcmp(argv[1], "live"))
		opt.mode = M_LIVE;
	else {
		usage(stderr);
		exit(2);
	}
	optind = 2;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case OPT_HOST:
			opt.host = optarg;
			break;
		case OPT_PORT:
			opt.port = atoi(optarg);
			break;
		case OPT_PATH:
			opt.path = optarg;
			break;
		case OPT_BATCH:
			opt.batch = true;
			break;
		case OPT_TOKEN:
			opt.token = optarg;
			break;
		case OPT_NTOKEN:
			opt.notify_token = optarg;
			break;
		case OPT_PG:
			opt.pg = optarg;
			break;
		case OPT_CONNS:
			opt.conns = atol(optarg);
			break;
		case OPT_PROCS:
			opt.procs = atoi(optarg);
			break;
		case OPT_SRC:
			if (inet_pton(AF_INET, optarg, &a) != 1) {
				fprintf(stderr, "loadgen: bad --src %s\n", optarg);
				exit(2);
			}
			opt.src_first = ntohl(a.s_addr);
			break;
		case OPT_NSRC:
			opt.nsrc = atoi(optarg);
			break;
		case OPT_RSIZE:
			opt.room_size = atol(optarg);
			break;
		case OPT_RPREFIX:
			opt.room_prefix = optarg;
			break;
		case OPT_RATE:
			opt.rate = atof(optarg);
			break;
		case OPT_EVENTS:
			opt.events = atol(optarg);
			break;
		case OPT_DURATION:
			opt.duration_s = atof(optarg);
			break;
		case OPT_SENDERS:
			opt.senders = atoi(optarg);
			break;
		case OPT_SOURCE:
			source_set = true;
			if (!strcmp(optarg, "pg"))
				opt.source = SRC_PG;
			else if (!strcmp(optarg, "notify"))
				opt.source = SRC_NOTIFY;
			else {
				fprintf(stderr, "loadgen: --source is notify or pg\n");
				exit(2);
			}
			break;
		case OPT_SETTLE:
			opt.settle_s = atof(optarg);
			break;
		case OPT_HOLD:
			opt.hold_s = atof(optarg);
			break;
		case OPT_DRAIN:
			opt.drain_s = atof(optarg);
			break;
		case OPT_CTIMEOUT:
			opt.connect_timeout_s = atof(optarg);
			break;
		case OPT_INFLIGHT:
			opt.inflight = atoi(optarg);
			break;
		case OPT_PID:
			if (opt.npids < MAX_PIDS)
				opt.pids[opt.npids++] = (pid_t)atoi(optarg);
			break;
		case OPT_JSON:
			opt.json_out = optarg;
			break;
		case OPT_QUIET:
			opt.quiet = true;
			break;
		case OPT_CHANGE:
			opt.change_sql = optarg;
			break;
		case OPT_PORTS:
			for (char *q = optarg; *q && opt.nports < MAX_PORTS;) {
				opt.ports[opt.nports++] = (int)strtol(q, &q, 10);
				q += *q == ',';
			}
			if (opt.nports)
				opt.port = opt.ports[0];
			break;
		case OPT_RCVBUF:
			opt.rcvbuf = atoi(optarg);
			break;
		case OPT_REJOIN:
			opt.rejoin_at_s = atof(optarg);
			break;
		case OPT_HELP:
			usage(stdout);
			exit(0);
		default:
			usage(stderr);
			exit(2);
		}
	}
	if (!source_set)
		opt.source = opt.mode == M_LATENCY ? SRC_PG : SRC_NOTIFY;
	if (opt.mode == M_NOTIFY) {
		opt.conns = 0;
		opt.source = SRC_NOTIFY;
		if (opt.duration_s <= 0 && opt.events <= 0)
			opt.duration_s = 5;
		if (opt.duration_s > 0)
			opt.events = 1L << 40; /* bounded by the duration instead */
	}
	if (opt.mode != M_NOTIFY && opt.conns <= 0) {
		fprintf(stderr, "loadgen: --conns is required\n");
		exit(2);
	}
	if (opt.mode == M_LIVE && (!opt.pg || !opt.change_sql || opt.hold_s <= 0)) {
		fprintf(stderr, "loadgen: live needs --pg, --change-sql and --hold\n");
		exit(2);
	}
	if (opt.mode != M_IDLE && opt.mode != M_NOTIFY && opt.mode != M_LIVE && opt.rate <= 0) {
		fprintf(stderr, "loadgen: --rate must be positive for %s\n", mode_name());
		exit(2);
	}
	if (opt.source == SRC_PG && opt.mode != M_IDLE && opt.mode != M_LIVE && !opt.pg) {
		fprintf(stderr, "loadgen: --source pg needs --pg CONNINFO\n");
		exit(2);
	}
	/* One process holds at most ~19 500 sockets here (a hard limit of 20 000 files). */
	if (opt.procs <= 0)
		opt.procs = (int)((opt.conns + 14999) / 15000);
	if (opt.procs < 1)
		opt.procs = 1;
	if (opt.procs > MAX_PROCS)
		opt.procs = MAX_PROCS;
	if (opt.senders < 1)
		opt.senders = 1;
	if (opt.senders > MAX_SENDERS)
		opt.senders = MAX_SENDERS;
	if (opt.nsrc <= 0)
		opt.nsrc = (int)(1 + opt.conns / 10000);
	if (opt.nsrc > 250)
		opt.nsrc = 250;
	if (opt.inflight < 1)
		opt.inflight = 1;
	g_nrooms = opt.room_size > 0 ? (opt.conns + opt.room_size - 1) / opt.room_size : 1;
	if (opt.mode == M_IDLE)
		opt.events = 0;
}

static void raise_nofile(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int main(int argc, char **argv)
{
	size_t room_bytes, acc_bytes, total;
	struct sample before, at_go, after, ready, held = {0, 0};
	pid_t kids[MAX_PROCS + MAX_SENDERS];
	int nkids = 0, nsenders = 0, rc = 0;
	uint64_t expected = 0, t_end = 0;
	char *mem;
	FILE *out = stdout;
	double connect_s;

	parse_args(argc, argv);
	raise_nofile();
	room_bytes = sizeof(uint32_t) * (size_t)g_nrooms;
	acc_bytes = opt.mode == M_NOTIFY || opt.mode == M_LIVE ? 1 : (size_t)(opt.events / 8 + 1);
	total = sizeof(struct shared) + room_bytes + acc_bytes;
	mem = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		die("mmap");
	S = (struct shared *)mem;
	S->room_members = (uint32_t *)(mem + sizeof(struct shared));
	S->accepted = (uint8_t *)(mem + sizeof(struct shared) + room_bytes);
	build_handshake();
	before = sample_server();

	uint64_t t_start = now_ns();
	if (opt.mode != M_NOTIFY) {
		long per = (opt.conns + opt.procs - 1) / opt.procs;
		for (int k = 0; k < opt.procs; k++) {
			long lo = k * per, hi = lo + per > opt.conns ? opt.conns : lo + per;
			pid_t p;
			if (lo >= hi)
				break;
			if ((p = fork()) < 0)
				die("fork");
			if (p == 0) {
				/* A parent killed by a timeout must not leave thousands of sockets
				 * held by orphans. */
				prctl(PR_SET_PDEATHSIG, SIGKILL);
				srand((unsigned)getpid());
				receiver(k, lo, hi);
			}
			kids[nkids++] = p;
		}
	}
	if (opt.mode != M_IDLE && opt.mode != M_LIVE) {
		nsenders = opt.source == SRC_PG ? opt.senders : 1;
		for (int k = 0; k < nsenders; k++) {
			pid_t p = fork();
			if (p < 0)
				die("fork");
			if (p == 0) {
				prctl(PR_SET_PDEATHSIG, SIGKILL);
				if (opt.source == SRC_PG)
					sender_pg(k);
				else
					sender_http(k);
			}
			kids[nkids++] = p;
		}
	}

	/* Connect (and join) everybody before anything is measured. */
	for (uint64_t last = 0;;) {
		uint64_t c = load(&S->connected), f = load(&S->failed);
		uint64_t settled = load(&S->joined) + load(&S->join_errors) + load(&S->closed);
		if (c + f >= (uint64_t)opt.conns &&
		    (opt.mode == M_IDLE || opt.mode == M_NOTIFY || settled >= c))
			break;
		if ((double)(now_ns() - t_start) / 1e9 > opt.connect_timeout_s) {
			fprintf(stderr, "loadgen: connect phase timed out\n");
			rc = 1;
			break;
		}
		if (now_ns() - last > 1000000000ull) {
			if (last)
				progress("connect");
			last = now_ns();
		}
		usleep(20000);
	}
	connect_s = (double)(now_ns() - t_start) / 1e9;
	progress("ready");
	if (opt.settle_s > 0)
		sleep_s(opt.settle_s);
	at_go = ready = sample_server();
	/* Fan-out with --hold: what holding the clients costs before any event is sent. */
	if (opt.hold_s > 0 && opt.mode != M_IDLE && opt.mode != M_LIVE) {
		sleep_s(opt.hold_s);
		held = sample_server();
		at_go = held;
	}

	if (opt.mode == M_IDLE) {
		if (opt.hold_s > 0)
			sleep_s(opt.hold_s);
		after = sample_server();
	} else if (opt.mode == M_LIVE) {
		t_end = live_changes();
		after = sample_server();
	} else {
		uint64_t last_seen = 0, last_change;
		double send_limit =
		    opt.rate > 0 ? (double)opt.events / opt.rate + 60 : opt.duration_s + 30;

		S->t0_ns = now_ns() + 20000000ull;
		__atomic_store_n(&S->phase, PH_GO, __ATOMIC_RELEASE);
		while (load(&S->senders_done) < (uint64_t)nsenders &&
		       (double)((int64_t)now_ns() - (int64_t)S->t0_ns) / 1e9 < send_limit) {
			storm_check();
			usleep(10000);
		}
		storm_check();
		for (long n = 0; n < (opt.mode == M_NOTIFY ? 0 : opt.events); n++)
			if (S->accepted[n >> 3] & (1u << (n & 7)))
				expected += S->room_members[n % g_nrooms];
		last_change = now_ns();
		while (opt.mode != M_NOTIFY) {
			uint64_t d = load(&S->deliveries) + load(&S->rejoined);
			if (load(&S->deliveries) >= expected && storm_settled())
				break;
			if (d != last_seen) {
				last_seen = d;
				last_change = now_ns();
			} else if ((double)(now_ns() - last_change) / 1e9 > opt.drain_s) {
				break;
			}
			usleep(10000);
		}
		after = sample_server();
		t_end = opt.mode == M_NOTIFY ? load(&S->last_send_ns) : load(&S->last_rx_ns);
	}
	progress("done");
	__atomic_store_n(&S->phase, PH_STOP, __ATOMIC_RELEASE);
	for (int i = 0; i < nkids; i++)
		waitpid(kids[i], NULL, 0);

	/* Merge and report. */
	struct proc_result sum;
	struct hist send_lat;
	struct rusage ru;
	memset(&sum, 0, sizeof(sum));
	hist_init(&sum.lat);
	hist_init(&send_lat);
	for (int k = 0; k < opt.procs && opt.mode != M_NOTIFY; k++) {
		struct proc_result *r = &S->pr[k];
		sum.expected += r->expected;
		sum.unique += r->unique;
		sum.lost += r->lost;
		sum.dups += r->dups;
		sum.misrouted += r->misrouted;
		sum.out_of_range += r->out_of_range;
		sum.open_at_end += r->open_at_end;
		hist_merge(&sum.lat, &r->lat);
	}
	for (int k = 0; k < nsenders; k++)
		hist_merge(&send_lat, &S->send_lat[k]);
	getrusage(RUSAGE_CHILDREN, &ru);

	if (opt.json_out && !(out = fopen(opt.json_out, "w")))
		die(opt.json_out);
	double span = t_end > S->t0_ns ? (double)(t_end - S->t0_ns) / 1e9 : 0;
	uint64_t deliveries = load(&S->deliveries);
	double cpu = after.cpu_s - at_go.cpu_s;
	fprintf(out, "{\"mode\":\"%s\",\"source\":\"%s\",\"batch\":%s,\"conns\":%ld,\"procs\":%d,",
	        mode_name(), opt.source == SRC_PG ? "pg" : "notify", opt.batch ? "true" : "false",
	        opt.conns, opt.procs);
	fprintf(out, "\"rooms\":%ld,\"room_size\":%ld,\"connected\":%llu,\"failed\":%llu,",
	        g_nrooms, opt.room_size, (unsigned long long)load(&S->connected),
	        (unsigned long long)load(&S->failed));
	fprintf(out, "\"refused_4xx\":%llu,\"refused_5xx\":%llu,\"connect_s\":%.2f,",
	        (unsigned long long)S->refused[4], (unsigned long long)S->refused[5], connect_s);
	fprintf(out, "\"joined\":%llu,\"join_errors\":%llu,\"closed\":%llu,\"open_at_end\":%llu,",
	        (unsigned long long)load(&S->joined), (unsigned long long)load(&S->join_errors),
	        (unsigned long long)load(&S->closed), (unsigned long long)sum.open_at_end);
	fprintf(out,
	        "\"close_codes\":{\"normal\":%llu,\"policy_size\":%llu,\"slow_4008\":%llu,"
	        "\"other_4xxx\":%llu,\"other\":%llu},",
	        (unsigned long long)S->close_codes[0], (unsigned long long)S->close_codes[1],
	        (unsigned long long)S->close_codes[2], (unsigned long long)S->close_codes[3],
	        (unsigned long long)S->close_codes[4]);
	fprintf(out, "\"rate\":%.1f,\"sent\":%llu,\"send_errors\":%llu,\"span_s\":%.3f,", opt.rate,
	        (unsigned long long)load(&S->sent), (unsigned long long)load(&S->send_errors),
	        span);
	if (opt.mode == M_NOTIFY)
		fprintf(out, "\"requests_per_s\":%.0f,",
		        span > 0 ? (double)load(&S->sent) / span : 0);
	else if (opt.mode == M_LIVE)
		fprintf(out,
		        "\"changes\":%llu,\"initial\":%llu,\"expected\":%llu,\"deliveries\":%llu,"
		        "\"pushes\":%llu,\"lost\":%llu,\"dups\":%llu,",
		        (unsigned long long)load(&S->changes_done),
		        (unsigned long long)load(&S->initial), (unsigned long long)sum.expected,
		        (unsigned long long)deliveries, (unsigned long long)sum.unique,
		        (unsigned long long)sum.lost, (unsigned long long)sum.dups);
	else if (opt.mode != M_IDLE)
		fprintf(out,
		        "\"expected\":%llu,\"deliveries\":%llu,\"unique\":%llu,\"lost\":%llu,"
		        "\"dups\":%llu,\"misrouted\":%llu,\"out_of_range\":%llu,"
		        "\"deliveries_per_s\":%.0f,\"frames\":%llu,\"per_frame\":%.2f,",
		        (unsigned long long)expected, (unsigned long long)deliveries,
		        (unsigned long long)sum.unique, (unsigned long long)sum.lost,
		        (unsigned long long)sum.dups, (unsigned long long)sum.misrouted,
		        (unsigned long long)sum.out_of_range,
		        span > 0 ? (double)deliveries / span : 0,
		        (unsigned long long)load(&S->frames),
		        load(&S->frames) ? (double)deliveries / (double)load(&S->frames) : 0);
	fprintf(out, "\"server\":{\"pids\":%d,\"rss_before_kb\":%ld,\"rss_ready_kb\":%ld,",
	        opt.npids, before.rss_kb, at_go.rss_kb);
	fprintf(out, "\"rss_after_kb\":%ld,\"cpu_s\":%.2f", after.rss_kb, cpu);
	if (opt.mode != M_NOTIFY && load(&S->connected))
		fprintf(out, ",\"rss_per_conn_bytes\":%.0f",
		        (double)(ready.rss_kb - before.rss_kb) * 1024.0 /
		            (double)load(&S->connected));
	if (held.cpu_s > 0 || held.rss_kb > 0)
		fprintf(out, ",\"hold_s\":%.1f,\"hold_cpu_pct\":%.2f,\"rss_held_kb\":%ld",
		        opt.hold_s, (held.cpu_s - ready.cpu_s) * 100.0 / opt.hold_s, held.rss_kb);
	/* What holding them costs: keep-alive pings and timers while nothing else happens. */
	if ((opt.mode == M_IDLE || opt.mode == M_LIVE) && opt.hold_s > 0)
		fprintf(out, ",\"hold_s\":%.1f,\"hold_cpu_pct\":%.1f", opt.hold_s,
		        cpu * 100.0 / opt.hold_s);
	if (opt.mode != M_IDLE && opt.mode != M_NOTIFY && deliveries)
		fprintf(out, ",\"cpu_us_per_delivery\":%.3f", cpu * 1e6 / (double)deliveries);
	if (opt.mode == M_NOTIFY && load(&S->sent))
		fprintf(out, ",\"cpu_us_per_request\":%.3f", cpu * 1e6 / (double)load(&S->sent));
	fprintf(out, "},");
	if (opt.rejoin_at_s > 0)
		fprintf(out,
		        "\"storm\":{\"dropped\":%llu,\"rejoined\":%llu,\"recovered\":%llu,"
		        "\"unrecovered\":%llu,\"rejoin_failed\":%llu,\"rejoin_s\":%.3f},",
		        (unsigned long long)load(&S->dropped),
		        (unsigned long long)load(&S->rejoined),
		        (unsigned long long)load(&S->recovered),
		        (unsigned long long)load(&S->unrecovered),
		        (unsigned long long)load(&S->rejoin_failed),
		        S->last_rejoin_ns > S->storm_ns && S->storm_ns
		            ? (double)(S->last_rejoin_ns - S->storm_ns) / 1e9
		            : 0);
	fprintf(out, "\"loadgen_cpu_s\":%.2f,\"latency\":",
	        (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	            (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
	hist_json(out, &sum.lat);
	fprintf(out, ",\"send_latency\":");
	hist_json(out, &send_lat);
	fprintf(out, "}\n");
	if (out != stdout)
		fclose(out);
	if (!opt.quiet) {
		fprintf(stderr, "loadgen: %s: %llu connected, %llu failed", mode_name(),
		        (unsigned long long)load(&S->connected),
		        (unsigned long long)load(&S->failed));
		if (opt.mode != M_IDLE && opt.mode != M_NOTIFY)
			fprintf(stderr,
			        ", %llu/%llu delivered (%llu lost, %llu dups) in %.2fs = %.0f/s, "
			        "p50 %.0fus "
			        "p99 %.0fus",
			        (unsigned long long)deliveries, (unsigned long long)expected,
			        (unsigned long long)sum.lost, (unsigned long long)sum.dups, span,
			        span > 0 ? (double)deliveries / span : 0,
			        (double)hist_quantile(&sum.lat, 0.5) / 1e3,
			        (double)hist_quantile(&sum.lat, 0.99) / 1e3);
		if (opt.mode == M_NOTIFY)
			fprintf(stderr, ", %llu requests in %.2fs = %.0f/s",
			        (unsigned long long)load(&S->sent), span,
			        span > 0 ? (double)load(&S->sent) / span : 0);
		fprintf(stderr, "\n");
	}
	return rc;
}
