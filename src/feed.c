/* The --workers feed process (one per host): one PostgreSQL listener, PG_POOL_SIZE query
 * connections and one live-room connection, shared by every worker over a local socket. It
 * LISTENs on the union of the workers' channels and forwards each notification to the workers
 * that asked for it, runs their queries on the pool, and keeps the session state a pool would
 * otherwise break (LISTEN registrations, live-room advisory locks) per worker. */
#include "feed.h"
#include "buf.h"
#include "feedlink.h"
#include "log.h"
#include "pgc.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uthash.h>

/* ---- the feed process ---- */

enum lane { LANE_NONE = 0, LANE_LISTENER, LANE_QUERY, LANE_LIVE };

#define POOL_MAX 16
/* Queries a worker may have outstanding at the feed; more are answered with an error. Shared
 * (replay) queries have their own, larger bound: a storm of rejoins asks one per room a worker
 * has members in, which may be thousands, and failing them answers recovered:false although
 * nothing is lost. Joining a queued one costs a few bytes and is bounded by the worker's asks. */
#define CLIENT_QUERIES_MAX 4096
#define CLIENT_SHARED_MAX  32768

/* One worker pgc's link. Freed once its link closed and no query of its is outstanding. */
struct client {
	struct feedlink link;
	enum lane lane;
	bool gone;
	unsigned outstanding;
	unsigned shared; /* of them, shared queries run for this worker */
	unsigned joined; /* of them, asks that joined another's queued shared query */
	char **chans;    /* listener lane: the channels this worker LISTENs on */
	size_t nchans;
	struct client *prev, *next;
};

/* A live-room advisory lock held on the live connection for one worker (key: the room). */
struct lock {
	char *key;
	struct client *owner;
	UT_hash_handle hh;
};

enum fq_kind { FQ_PLAIN, FQ_LOCK, FQ_UNLOCK };

/* A further asker of a shared query: another worker's identical query (or the same worker's)
 * that joined it while it was still queued. */
struct fwait {
	struct client *c;
	uint32_t id;
	struct fwait *next;
};

/* One worker query in flight at one of the feed's connections. */
struct fq {
	struct client *c;
	uint32_t id;
	int pool; /* index into g_pool, or -1 */
	enum fq_kind kind;
	char *key; /* FQ_LOCK: the room */
	/* PGC_SHARED: the SQL text and parameters (skey), in g_shared until sent to PostgreSQL;
	 * identical shared queries asked meanwhile wait on it (also) instead of running. */
	char *skey;
	size_t skey_len;
	bool in_table;
	struct fwait *also;
	UT_hash_handle hh;
};

static uv_loop_t *g_loop;
static struct pgc *g_listener, *g_live, *g_pool[POOL_MAX];
static unsigned g_pool_load[POOL_MAX];
static int g_npool;
static bool g_lane_up[4];
static struct client *g_clients;
static struct lock *g_locks;
static struct fq *g_shared; /* shared queries queued at the pool, not yet sent */
/* Shared queries: run on the pool, and answered by one of those instead (coalesced). */
static uint64_t g_shared_run, g_shared_coalesced, g_logged_run, g_logged_coalesced;
static uv_timer_t g_stats;
static uv_pipe_t g_server;
static uv_signal_t g_sigterm, g_sigint;
static bool g_stopping;

static bool lane_up(enum lane ln)
{
	if (ln == LANE_LISTENER)
		return pgc_is_up(g_listener);
	if (ln == LANE_LIVE)
		return pgc_is_up(g_live);
	for (int i = 0; i < g_npool; i++)
		if (pgc_is_up(g_pool[i]))
			return true;
	return false;
}

static void send_state(struct client *c)
{
	struct buf b;
	feedlink_frame_begin(&b, FEEDLINK_STATE);
	feedlink_put_u32(&b, g_lane_up[c->lane]);
	feedlink_send(&c->link, &b);
}

/* Tells the lane's workers when its up/down state changed. */
static void lane_changed(enum lane ln)
{
	bool up = lane_up(ln);
	if (up == g_lane_up[ln])
		return;
	g_lane_up[ln] = up;
	for (struct client *c = g_clients; c; c = c->next)
		if (c->lane == ln && !c->gone)
			send_state(c);
}

static void client_maybe_free(struct client *c)
{
	if (!c->gone || c->outstanding || c->link.open)
		return;
	for (size_t i = 0; i < c->nchans; i++)
		free(c->chans[i]);
	free(c->chans);
	free(c);
}

static void answer_err(struct client *c, uint32_t id, const char *err)
{
	struct buf b;
	if (c->gone)
		return;
	feedlink_frame_begin(&b, FEEDLINK_ANSWER);
	feedlink_put_u32(&b, id);
	feedlink_put_u32(&b, 0);
	feedlink_put_str(&b, err ? err : "query failed");
	feedlink_send(&c->link, &b);
}

static void answer_res(struct client *c, uint32_t id, const PGresult *res)
{
	struct buf b;
	int nf = PQnfields(res), nt = PQntuples(res);

	if (c->gone)
		return;
	feedlink_frame_begin(&b, FEEDLINK_ANSWER);
	feedlink_put_u32(&b, id);
	feedlink_put_u32(&b, 1);
	feedlink_put_u32(&b, (uint32_t)PQresultStatus(res));
	feedlink_put_u32(&b, (uint32_t)nf);
	for (int f = 0; f < nf; f++) {
		feedlink_put_str(&b, PQfname(res, f));
		feedlink_put_u32(&b, (uint32_t)PQftype(res, f));
	}
	feedlink_put_u32(&b, (uint32_t)nt);
	for (int t = 0; t < nt; t++)
		for (int f = 0; f < nf; f++)
			if (PQgetisnull(res, t, f))
				feedlink_put_u32(&b, ~0u);
			else
				feedlink_put_bytes(&b, PQgetvalue(res, t, f),
				                   (uint32_t)PQgetlength(res, t, f));
	feedlink_send(&c->link, &b);
}

/* An answer the feed gives itself: a command done, or one boolean row. */
static void answer_made(struct client *c, uint32_t id, const char *bool_col, bool val)
{
	struct buf b;
	if (c->gone)
		return;
	feedlink_frame_begin(&b, FEEDLINK_ANSWER);
	feedlink_put_u32(&b, id);
	feedlink_put_u32(&b, 1);
	if (!bool_col) {
		feedlink_put_u32(&b, PGRES_COMMAND_OK);
		feedlink_put_u32(&b, 0);
		feedlink_put_u32(&b, 0);
	} else {
		feedlink_put_u32(&b, PGRES_TUPLES_OK);
		feedlink_put_u32(&b, 1);
		feedlink_put_str(&b, bool_col);
		feedlink_put_u32(&b, 16); /* bool */
		feedlink_put_u32(&b, 1);
		feedlink_put_str(&b, val ? "t" : "f");
	}
	feedlink_send(&c->link, &b);
}

static struct lock *lock_find(const char *key)
{
	struct lock *k;
	HASH_FIND_STR(g_locks, key, k);
	return k;
}

static void lock_drop(struct lock *k)
{
	HASH_DEL(g_locks, k);
	free(k->key);
	free(k);
}

static void on_answer(void *arg, const PGresult *res, const char *err)
{
	struct fq *q = arg;
	struct client *c = q->c;

	if (q->pool >= 0 && g_pool_load[q->pool])
		g_pool_load[q->pool]--;
	if (q->kind == FQ_LOCK && res && PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't' &&
	    !lock_find(q->key)) {
		struct lock *k = calloc(1, sizeof(*k));
		if (k && (k->key = strdup(q->key))) {
			k->owner = c;
			HASH_ADD_KEYPTR(hh, g_locks, k->key, strlen(k->key), k);
		} else {
			free(k);
		}
		/* A worker gone meanwhile cannot give it back: the feed does (see client_gone). */
		if (c->gone && pgc_is_up(g_live)) {
			const char *p[1] = {q->key};
			pgc_query(
			    g_live,
			    "SELECT pg_advisory_unlock(hashtextextended('roomcast.live:' || $1, "
			    "0))",
			    1, p, 5000, NULL, NULL);
			if ((k = lock_find(q->key)))
				lock_drop(k);
		}
	}
	if (q->in_table) /* failed before it was sent (the connection dropped) */
		HASH_DEL(g_shared, q);
	if (q->skey)
		c->shared--;
	if (res)
		answer_res(c, q->id, res);
	else
		answer_err(c, q->id, err);
	/* c's count drops last: c may also be among the joined, and must outlive the loop. */
	while (q->also) {
		struct fwait *w = q->also;
		q->also = w->next;
		if (res)
			answer_res(w->c, w->id, res);
		else
			answer_err(w->c, w->id, err);
		w->c->outstanding--;
		w->c->joined--;
		client_maybe_free(w->c);
		free(w);
	}
	c->outstanding--;
	free(q->key);
	free(q->skey);
	free(q);
	client_maybe_free(c);
}

/* A shared query reached PostgreSQL: its snapshot is taken from now on, so a later identical
 * ask may not join it (its membership could be newer than the snapshot). */
static void on_sent(void *arg)
{
	struct fq *q = arg;
	if (q->in_table) {
		HASH_DEL(g_shared, q);
		q->in_table = false;
	}
}

/* The identity of a shared query: SQL text and parameters, each with its length (a NULL
 * parameter as ~0). Returns a malloc'd key (*len set), or NULL when out of memory. */
static char *shared_key(const char *sql, int np, const char **params, size_t *len)
{
	struct buf b;
	buf_init(&b);
	feedlink_put_str(&b, sql);
	for (int i = 0; i < np; i++)
		feedlink_put_str(&b, params[i]);
	if (b.failed) {
		buf_free(&b);
		return NULL;
	}
	*len = b.len;
	return b.data;
}

/* Joins c's query id to an identical shared query still queued. True when it did. */
static bool shared_join(struct client *c, uint32_t id, const char *key, size_t len)
{
	struct fq *q;
	struct fwait *w;

	HASH_FIND(hh, g_shared, key, len, q);
	if (!q || !(w = calloc(1, sizeof(*w))))
		return false;
	w->c = c;
	w->id = id;
	w->next = q->also;
	q->also = w;
	c->outstanding++;
	c->joined++;
	g_shared_coalesced++;
	return true;
}

/* Logs the coalescing counters when they changed (once a second at most). */
static void on_stats(uv_timer_t *t)
{
	char run[24], co[24];
	if (g_shared_run == g_logged_run && g_shared_coalesced == g_logged_coalesced)
		return;
	g_logged_run = g_shared_run;
	g_logged_coalesced = g_shared_coalesced;
	snprintf(run, sizeof(run), "%llu", (unsigned long long)g_shared_run);
	snprintf(co, sizeof(co), "%llu", (unsigned long long)g_shared_coalesced);
	log_info("feed shared queries", "run", run, "coalesced", co);
}

/* The channel of "LISTEN x" / "UNLISTEN x" as PostgreSQL reports it in notifications (an
 * unquoted identifier folded to lower case, a quoted one as written). Returns a malloc'd name,
 * or NULL when sql is not such a statement. *listen says which. */
static char *listen_channel(const char *sql, bool *listen)
{
	const char *p;
	char *out, *o;

	if (!strncasecmp(sql, "LISTEN ", 7)) {
		*listen = true;
		p = sql + 7;
	} else if (!strncasecmp(sql, "UNLISTEN ", 9)) {
		*listen = false;
		p = sql + 9;
	} else {
		return NULL;
	}
	while (*p == ' ')
		p++;
	if (!*p || *p == '*' || !(out = o = malloc(strlen(p) + 1)))
		return NULL;
	if (*p == '"') {
		for (p++; *p; p++) {
			if (*p == '"' && p[1] == '"')
				*o++ = *p++;
			else if (*p == '"')
				break;
			else
				*o++ = *p;
		}
	} else {
		for (; *p && *p != ' ' && *p != ';'; p++)
			*o++ = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') : *p;
	}
	*o = '\0';
	return out;
}

static bool client_has(const struct client *c, const char *ch)
{
	for (size_t i = 0; i < c->nchans; i++)
		if (!strcmp(c->chans[i], ch))
			return true;
	return false;
}

static bool anyone_has(const char *ch, const struct client *except)
{
	for (struct client *c = g_clients; c; c = c->next)
		if (c != except && !c->gone && c->lane == LANE_LISTENER && client_has(c, ch))
			return true;
	return false;
}

static void client_unlisten(struct client *c, const char *ch)
{
	for (size_t i = 0; i < c->nchans; i++)
		if (!strcmp(c->chans[i], ch)) {
			free(c->chans[i]);
			c->chans[i] = c->chans[--c->nchans];
			return;
		}
}

static void unlisten_real(const char *ch)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "UNLISTEN \"");
	for (const char *p = ch; *p; p++)
		buf_puts(&b, *p == '"' ? "\"\"" : (char[2]){*p, '\0'});
	buf_puts(&b, "\"");
	if (!b.failed && pgc_is_up(g_listener))
		pgc_query(g_listener, b.data, 0, NULL, 5000, NULL, NULL);
	buf_free(&b);
}

static void run(struct client *c, uint32_t id, unsigned flags, const char *sql, int np,
                const char **params, uint32_t timeout_ms)
{
	struct fq *q;
	struct pgc *pc = NULL;
	enum fq_kind kind = FQ_PLAIN;
	int pool = -1;
	bool shared = (flags & PGC_SHARED) && c->lane == LANE_QUERY && !(flags & PGC_URGENT);
	char *skey = NULL;
	size_t skey_len = 0;

	if (shared && (skey = shared_key(sql, np, params, &skey_len)) &&
	    shared_join(c, id, skey, skey_len)) {
		free(skey);
		return;
	}
	if (skey ? c->shared >= CLIENT_SHARED_MAX
	         : c->outstanding - c->shared - c->joined >= CLIENT_QUERIES_MAX) {
		free(skey);
		answer_err(c, id, "too many queries queued at the feed");
		return;
	}
	if (c->lane == LANE_LISTENER) {
		bool listen;
		char *ch = listen_channel(sql, &listen);
		pc = g_listener;
		if (ch && listen && !client_has(c, ch)) {
			char **n = realloc(c->chans, (c->nchans + 1) * sizeof(*n));
			if (n) {
				c->chans = n;
				c->chans[c->nchans++] = ch;
				ch = NULL;
			}
		} else if (ch && !listen) {
			client_unlisten(c, ch);
			if (anyone_has(ch, c)) {
				/* Others still listen: this worker just stops hearing it. */
				free(ch);
				answer_made(c, id, NULL, false);
				return;
			}
		}
		free(ch);
	} else if (c->lane == LANE_LIVE) {
		pc = g_live;
		/* Session advisory locks decide which replica runs a live room; the workers
		 * share one session here, where a lock would be granted to all of them, so the
		 * feed answers for the worker that does not own it. */
		if (np == 1 && params[0] && strstr(sql, "pg_try_advisory_lock(")) {
			struct lock *k = lock_find(params[0]);
			if (k && k->owner != c) {
				answer_made(c, id, "pg_try_advisory_lock", false);
				return;
			}
			kind = k ? FQ_PLAIN : FQ_LOCK;
		} else if (np == 1 && params[0] && strstr(sql, "pg_advisory_unlock(")) {
			struct lock *k = lock_find(params[0]);
			if (!k || k->owner != c) {
				answer_made(c, id, "pg_advisory_unlock", false);
				return;
			}
			lock_drop(k);
			kind = FQ_UNLOCK;
		}
	} else {
		for (int i = 0; i < g_npool; i++)
			if (pgc_is_up(g_pool[i]) &&
			    (pool < 0 || g_pool_load[i] < g_pool_load[pool]))
				pool = i;
		pc = pool >= 0 ? g_pool[pool] : NULL;
	}
	if (!pgc_is_up(pc) || !(q = calloc(1, sizeof(*q)))) {
		free(skey);
		answer_err(c, id, "connection down");
		return;
	}
	q->c = c;
	q->id = id;
	q->pool = pool;
	q->kind = kind;
	if (kind == FQ_LOCK && !(q->key = strdup(params[0]))) {
		free(q);
		free(skey);
		answer_err(c, id, "out of memory");
		return;
	}
	if (skey) {
		/* In the table before queueing: pgc may send it at once (on_sent takes it out). */
		q->skey = skey;
		q->skey_len = skey_len;
		q->in_table = true;
		HASH_ADD_KEYPTR(hh, g_shared, q->skey, q->skey_len, q);
	}
	if (pgc_query_ex(pc, (flags & PGC_URGENT) | (skey ? PGC_SHARED : 0u), sql, np, params,
	                 timeout_ms, on_answer, skey ? on_sent : NULL, q) < 0) {
		if (q->in_table)
			HASH_DEL(g_shared, q);
		free(q->key);
		free(q->skey);
		free(q);
		answer_err(c, id, "connection down");
		return;
	}
	c->outstanding++;
	if (skey) {
		c->shared++;
		g_shared_run++;
	}
	if (pool >= 0)
		g_pool_load[pool]++;
}

static void on_client_frame(struct feedlink *l, char type, struct feedlink_rd *r)
{
	struct client *c = l->owner;

	if (type == FEEDLINK_HELLO && c->lane == LANE_NONE) {
		const char *name = feedlink_get_str(r, NULL);
		c->lane = !name                       ? LANE_NONE
		          : !strcmp(name, "listener") ? LANE_LISTENER
		          : !strcmp(name, "live")     ? LANE_LIVE
		          : !strcmp(name, "query")    ? LANE_QUERY
		                                      : LANE_NONE;
		if (c->lane == LANE_NONE) {
			log_warn("feed client refused", "reason", "unknown connection name");
			feedlink_close(l);
			return;
		}
		send_state(c);
	} else if (type == FEEDLINK_QUERY && c->lane != LANE_NONE) {
		uint32_t id = feedlink_get_u32(r), flags = feedlink_get_u32(r),
		         tmo = feedlink_get_u32(r);
		const char *sql = feedlink_get_str(r, NULL);
		uint32_t np = feedlink_get_u32(r);
		const char *params[64];
		if (np > 64 || !sql)
			r->bad = true;
		for (uint32_t i = 0; i < np && !r->bad; i++)
			params[i] = feedlink_get_str(r, NULL);
		if (r->bad) {
			log_warn("feed client dropped", "reason", "bad query frame");
			feedlink_close(l);
			return;
		}
		run(c, id, flags, sql, (int)np, params, tmo);
	} else if (type == FEEDLINK_RECONNECT && c->lane != LANE_NONE) {
		const char *why = feedlink_get_str(r, NULL);
		struct pgc *pc = c->lane == LANE_LISTENER ? g_listener
		                 : c->lane == LANE_LIVE   ? g_live
		                                          : NULL;
		/* Only for the single connections: a pool member is not the one a worker saw. */
		if (pc)
			pgc_reconnect(pc, why ? why : "a worker asked");
	} else {
		log_warn("feed client dropped", "reason", "unexpected frame");
		feedlink_close(l);
	}
}

/* A worker's link closed: what the feed holds on its behalf is given back. */
static void on_client_closed(struct feedlink *l)
{
	struct client *c = l->owner;
	struct lock *k, *tmp;

	c->gone = true;
	if (c->prev)
		c->prev->next = c->next;
	else
		g_clients = c->next;
	if (c->next)
		c->next->prev = c->prev;
	for (size_t i = 0; i < c->nchans; i++)
		if (!g_stopping && !anyone_has(c->chans[i], c))
			unlisten_real(c->chans[i]);
	HASH_ITER(hh, g_locks, k, tmp)
	{
		if (k->owner != c)
			continue;
		if (!g_stopping && pgc_is_up(g_live)) {
			const char *p[1] = {k->key};
			pgc_query(
			    g_live,
			    "SELECT pg_advisory_unlock(hashtextextended('roomcast.live:' || $1, "
			    "0))",
			    1, p, 5000, NULL, NULL);
		}
		lock_drop(k);
	}
	client_maybe_free(c);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct client *c;
	struct ucred cred;
	socklen_t len = sizeof(cred);
	uv_os_fd_t fd;

	if (status < 0 || !(c = calloc(1, sizeof(*c))))
		return;
	/* Linked first: a link that fails to open closes through on_client_closed. */
	c->next = g_clients;
	if (g_clients)
		g_clients->prev = c;
	g_clients = c;
	switch (feedlink_open(&c->link, g_loop, -1, server, on_client_frame, on_client_closed, c)) {
	case 0:
		break;
	case -1:
		return;
	default:
		c->link.owner = c;
		on_client_closed(&c->link);
		return;
	}
	/* The abstract socket has no file permissions: only this user's processes may use it. */
	if (uv_fileno((uv_handle_t *)&c->link.pipe, &fd) < 0 ||
	    getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.uid != geteuid()) {
		log_warn("feed client refused", "reason", "not this user's process");
		feedlink_close(&c->link);
	}
}

static void pgc_up(struct pgc *pc, void *arg)
{
	/* The server is back: no connection needs to wait out its backoff. */
	pgc_retry_now(g_listener, "another connection connected");
	pgc_retry_now(g_live, "another connection connected");
	for (int i = 0; i < g_npool; i++)
		pgc_retry_now(g_pool[i], "another connection connected");
	lane_changed((enum lane)(intptr_t)arg);
}

static void pgc_down(struct pgc *pc, void *arg)
{
	enum lane ln = (enum lane)(intptr_t)arg;
	struct lock *k, *tmp;

	if (ln == LANE_LISTENER)
		/* A new session listens on nothing: workers LISTEN again when it is up. */
		for (struct client *c = g_clients; c; c = c->next) {
			for (size_t i = 0; i < c->nchans; i++)
				free(c->chans[i]);
			c->nchans = 0;
		}
	if (ln == LANE_LIVE)
		HASH_ITER(hh, g_locks, k, tmp)
	lock_drop(k);
	lane_changed(ln);
}

static void pgc_notified(struct pgc *pc, const PGnotify *n, void *arg)
{
	for (struct client *c = g_clients; c; c = c->next) {
		struct buf b;
		if (c->gone || c->lane != LANE_LISTENER || !client_has(c, n->relname))
			continue;
		feedlink_frame_begin(&b, FEEDLINK_NOTIFY);
		feedlink_put_u32(&b, (uint32_t)n->be_pid);
		feedlink_put_str(&b, n->relname);
		feedlink_put_str(&b, n->extra);
		feedlink_send(&c->link, &b);
	}
}

static void on_stop_signal(uv_signal_t *s, int sig)
{
	struct client *c, *next;

	if (g_stopping)
		return;
	g_stopping = true;
	log_info("feed stopping");
	uv_close((uv_handle_t *)&g_sigterm, NULL);
	uv_close((uv_handle_t *)&g_sigint, NULL);
	uv_close((uv_handle_t *)&g_server, NULL);
	on_stats(&g_stats);
	uv_close((uv_handle_t *)&g_stats, NULL);
	for (c = g_clients; c; c = next) {
		next = c->next;
		feedlink_close(&c->link);
	}
	pgc_stop(g_listener);
	pgc_stop(g_live);
	for (int i = 0; i < g_npool; i++)
		pgc_stop(g_pool[i]);
}

static int listen_at(const char *addr)
{
	struct sockaddr_un sa;
	size_t n = strlen(addr);
	int fd;

	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	if (n + 1 > sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path + 1, addr, n); /* abstract: leading NUL, nothing on disk */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (bind(fd, (struct sockaddr *)&sa,
	         (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) < 0 ||
	    listen(fd, 256) < 0) {
		log_error("feed socket failed", "reason", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

int feed_run(const struct config *cfg, const char *addr)
{
	struct pgc_hooks lh = {pgc_up, pgc_down, pgc_notified, (void *)(intptr_t)LANE_LISTENER};
	struct pgc_hooks vh = {pgc_up, pgc_down, NULL, (void *)(intptr_t)LANE_LIVE};
	struct pgc_hooks qh = {pgc_up, pgc_down, NULL, (void *)(intptr_t)LANE_QUERY};
	int fd;

	signal(SIGPIPE, SIG_IGN);
	g_loop = uv_default_loop();
	fd = listen_at(addr);
	if (fd < 0 || uv_pipe_init(g_loop, &g_server, 0) < 0 || uv_pipe_open(&g_server, fd) < 0 ||
	    uv_listen((uv_stream_t *)&g_server, 256, on_connection) < 0) {
		log_error("feed listen failed", "reason", "cannot serve the local socket");
		return 1;
	}
	g_npool = cfg->pg_pool_size < 1          ? 1
	          : cfg->pg_pool_size > POOL_MAX ? POOL_MAX
	                                         : (int)cfg->pg_pool_size;
	g_listener = pgc_start(g_loop, cfg->database_url, "listener", &lh);
	g_live = pgc_start(g_loop, cfg->database_url, "live", &vh);
	for (int i = 0; i < g_npool; i++)
		g_pool[i] = pgc_start(g_loop, cfg->database_url, "query", &qh);
	uv_signal_init(g_loop, &g_sigterm);
	uv_signal_init(g_loop, &g_sigint);
	uv_signal_start(&g_sigterm, on_stop_signal, SIGTERM);
	uv_signal_start(&g_sigint, on_stop_signal, SIGINT);
	uv_timer_init(g_loop, &g_stats);
	uv_timer_start(&g_stats, on_stats, 1000, 1000);
	uv_unref((uv_handle_t *)&g_stats);
	{
		char n[16];
		snprintf(n, sizeof(n), "%d", g_npool + 2);
		log_info("feed started", "postgres_connections", n);
	}
	uv_run(g_loop, UV_RUN_DEFAULT);
	uv_loop_close(g_loop);
	log_info("feed stopped");
	return 0;
}
