/* The worker side of the feed: a pgc whose queries, results, notifications and up/down state
 * travel over a local socket to the feed process, which holds the PostgreSQL connections.
 * Results are rebuilt as PGresults so callers cannot tell the two transports apart. */
#include "pgrelay.h"
#include "buf.h"
#include "feedlink.h"
#include "log.h"
#include "metrics.h"
#include "pgc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <uthash.h>

#define RETRY_MIN_MS 50
#define RETRY_MAX_MS 2000
#define TICK_MS      1000
/* The listener's queue-usage probe, as a direct listener's heartbeat reports it. */
#define PROBE_EVERY_TICKS 5
/* A query the feed has not answered this long after its own deadline, while the feed answered
 * nothing else either, means the feed is stuck: the link is dropped, as a direct connection is
 * dropped at its query deadline. */
#define FEED_SLACK_MS 30000

struct pending {
	uint32_t id;
	pgc_result_fn cb;
	void *arg;
	uint64_t deadline_ms;
	UT_hash_handle hh;
};

struct pgrelay {
	struct pgc *pc;
	uv_loop_t *loop;
	char name[32];
	struct pgc_hooks hooks;
	struct feedlink link;
	uv_timer_t retry;
	uv_timer_t tick; /* deadlines; for the listener, pg_notification_queue_usage() too */
	unsigned ticks;
	bool probing;
	uint32_t retry_ms;
	bool up, stopping;
	int handles; /* open libuv handles; freed at 0 once stopping */
	uint32_t next_id;
	uint64_t ups;
	/* The last answer from the feed, or the ask that found none pending. */
	uint64_t progress_ms;
	struct pending *pending;
};

static char g_addr[FEEDLINK_ADDR_MAX];

static const struct pgc_relay g_relay;

void pgrelay_use(const char *addr)
{
	snprintf(g_addr, sizeof(g_addr), "%s", addr ? addr : "");
	pgc_use_relay(g_addr[0] ? &g_relay : NULL);
}

static int pgrelay_query(struct pgrelay *rl, unsigned flags, const char *sql, int nparams,
                         const char *const *params, uint32_t timeout_ms, pgc_result_fn cb,
                         void *arg);

static bool pgrelay_covers(const char *name)
{
	return g_addr[0] &&
	       (!strcmp(name, "listener") || !strcmp(name, "query") || !strcmp(name, "live"));
}

static void fail_pending(struct pgrelay *rl, const char *why)
{
	struct pending *p, *tmp;
	HASH_ITER(hh, rl->pending, p, tmp)
	{
		HASH_DEL(rl->pending, p);
		if (p->cb)
			p->cb(p->arg, NULL, why);
		free(p);
	}
}

/* With the link open (the feed's connections are down), the queries already asked are left to
 * the feed, which answers each one: it fails those it cannot keep and runs the shared reads it
 * kept for its next connection (see PGC_SHARED). Only a lost link fails them here. */
static void go_down(struct pgrelay *rl, const char *why, bool link_lost)
{
	bool was_up = rl->up;

	rl->up = false; /* first: failed queries' callbacks must not be able to queue more */
	if (was_up)
		log_warn("postgres connection failed", "conn", rl->name, "reason", why);
	if (link_lost)
		fail_pending(rl, why);
	if (was_up && rl->hooks.down && !rl->stopping)
		rl->hooks.down(rl->pc, rl->hooks.arg);
}

static void on_probed(void *arg, const PGresult *res, const char *err)
{
	struct pgrelay *rl = arg;
	rl->probing = false;
	if (res && PQntuples(res) == 1)
		metrics.pg_queue_usage = atof(PQgetvalue(res, 0, 0));
}

static void on_tick(uv_timer_t *t)
{
	struct pgrelay *rl = t->data;
	uint64_t now = uv_now(rl->loop);
	struct pending *p, *tmp;

	HASH_ITER(hh, rl->pending, p, tmp)
	{
		/* A query may wait long in the feed's queue behind a storm of others (its own
		 * deadline runs at the feed, from its send to PostgreSQL): the feed is stuck only
		 * when it answers nothing at all meanwhile. */
		if (now > p->deadline_ms && now > rl->progress_ms + FEED_SLACK_MS) {
			log_warn("postgres connection failed", "conn", rl->name, "reason",
			         "the feed did not answer in time");
			feedlink_close(&rl->link);
			return;
		}
	}
	if (!strcmp(rl->name, "listener") && ++rl->ticks % PROBE_EVERY_TICKS == 0 && !rl->probing &&
	    pgrelay_query(rl, 0, "SELECT pg_notification_queue_usage()", 0, NULL, 3000, on_probed,
	                  rl) == 0)
		rl->probing = true;
}

static void maybe_free(struct pgrelay *rl)
{
	if (rl->stopping && rl->handles == 0)
		free(rl);
}

/* Rebuilds the feed's answer as a PGresult (text values, as pgc asks for). NULL when the frame
 * is bad or memory ran out. */
static PGresult *rebuild(struct feedlink_rd *r, ExecStatusType st)
{
	uint32_t nf = feedlink_get_u32(r), nt;
	PGresult *res = PQmakeEmptyPGresult(NULL, st);
	PGresAttDesc *att;

	if (!res || r->bad || nf > 1600)
		goto bad;
	att = nf ? calloc(nf, sizeof(*att)) : NULL;
	if (nf && !att)
		goto bad;
	for (uint32_t f = 0; f < nf; f++) {
		att[f].name = (char *)feedlink_get_str(r, NULL);
		att[f].typid = feedlink_get_u32(r);
		att[f].typlen = -1;
		att[f].atttypmod = -1;
		att[f].format = 0;
		if (!att[f].name)
			r->bad = true;
	}
	if (r->bad || (nf && !PQsetResultAttrs(res, (int)nf, att))) {
		free(att);
		goto bad;
	}
	free(att);
	nt = feedlink_get_u32(r);
	for (uint32_t t = 0; t < nt && !r->bad; t++)
		for (uint32_t f = 0; f < nf && !r->bad; f++) {
			uint32_t len;
			const char *v = feedlink_get_str(r, &len);
			if (r->bad ||
			    !PQsetvalue(res, (int)t, (int)f, (char *)v, v ? (int)len : -1))
				goto bad;
		}
	if (r->bad)
		goto bad;
	return res;
bad:
	PQclear(res);
	return NULL;
}

static void on_answer(struct pgrelay *rl, struct feedlink_rd *r)
{
	uint32_t id = feedlink_get_u32(r), ok = feedlink_get_u32(r);
	struct pending *p;
	PGresult *res = NULL;
	const char *err = NULL;

	rl->progress_ms = uv_now(rl->loop);
	HASH_FIND(hh, rl->pending, &id, sizeof(id), p);
	if (!p)
		return; /* failed already (the link went down and came back) */
	HASH_DEL(rl->pending, p);
	if (!ok)
		err = feedlink_get_str(r, NULL);
	else if (!(res = rebuild(r, (ExecStatusType)feedlink_get_u32(r))))
		err = "feed answer unreadable";
	if (p->cb)
		p->cb(p->arg, res, res ? NULL : err ? err : "query failed");
	PQclear(res);
	free(p);
}

static void on_frame(struct feedlink *l, char type, struct feedlink_rd *r)
{
	struct pgrelay *rl = l->owner;

	if (rl->stopping)
		return;
	if (type == FEEDLINK_STATE) {
		bool up = feedlink_get_u32(r) != 0;
		if (up && !rl->up) {
			rl->up = true;
			rl->ups++;
			rl->retry_ms = RETRY_MIN_MS;
			log_info("postgres connection state", "conn", rl->name, "from", "feed",
			         "to", "up");
			if (rl->hooks.up)
				rl->hooks.up(rl->pc, rl->hooks.arg);
		} else if (!up) {
			go_down(rl, "the feed's connection is down", false);
		}
	} else if (type == FEEDLINK_ANSWER) {
		on_answer(rl, r);
	} else if (type == FEEDLINK_NOTIFY && rl->up) {
		PGnotify n;
		memset(&n, 0, sizeof(n));
		n.be_pid = (int)feedlink_get_u32(r);
		n.relname = (char *)feedlink_get_str(r, NULL);
		n.extra = (char *)feedlink_get_str(r, NULL);
		if (!r->bad && n.relname && n.extra && rl->hooks.notify)
			rl->hooks.notify(rl->pc, &n, rl->hooks.arg);
	}
}

static void start_connect(struct pgrelay *rl);

static void on_retry(uv_timer_t *t)
{
	start_connect(t->data);
}

static void schedule_retry(struct pgrelay *rl)
{
	if (rl->stopping)
		return;
	uv_timer_start(&rl->retry, on_retry, rl->retry_ms, 0);
	rl->retry_ms = rl->retry_ms * 2 > RETRY_MAX_MS ? RETRY_MAX_MS : rl->retry_ms * 2;
}

static void on_link_closed(struct feedlink *l)
{
	struct pgrelay *rl = l->owner;
	rl->handles--;
	go_down(rl, "feed connection lost", true);
	schedule_retry(rl);
	maybe_free(rl);
}

static void start_connect(struct pgrelay *rl)
{
	struct sockaddr_un sa;
	size_t n = strlen(g_addr);
	struct buf b;
	int fd, rc;

	if (rl->stopping || rl->link.open)
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path + 1, g_addr, n);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	/* A unix connect completes at once or fails (EAGAIN: the backlog is full). */
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa,
	                      (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n)) < 0) {
		if (fd >= 0)
			close(fd);
		schedule_retry(rl);
		return;
	}
	rc = feedlink_open(&rl->link, rl->loop, fd, NULL, on_frame, on_link_closed, rl);
	if (rc == -2) {
		schedule_retry(rl);
		return;
	}
	rl->handles++;
	if (rc < 0)
		return; /* on_link_closed retries */
	feedlink_frame_begin(&b, FEEDLINK_HELLO);
	feedlink_put_str(&b, rl->name);
	feedlink_send(&rl->link, &b);
}

static struct pgrelay *pgrelay_start(struct pgc *pc, uv_loop_t *loop, const char *name,
                                     const struct pgc_hooks *hooks)
{
	struct pgrelay *rl = calloc(1, sizeof(*rl));

	if (!rl)
		return NULL;
	rl->pc = pc;
	rl->loop = loop;
	snprintf(rl->name, sizeof(rl->name), "%s", name);
	rl->hooks = *hooks;
	rl->retry_ms = RETRY_MIN_MS;
	uv_timer_init(loop, &rl->retry);
	uv_timer_init(loop, &rl->tick);
	rl->retry.data = rl->tick.data = rl;
	rl->handles = 2;
	uv_timer_start(&rl->tick, on_tick, TICK_MS, TICK_MS);
	start_connect(rl);
	return rl;
}

static void on_timer_closed(uv_handle_t *h)
{
	struct pgrelay *rl = h->data;
	rl->handles--;
	maybe_free(rl);
}

static void pgrelay_stop(struct pgrelay *rl)
{
	if (!rl || rl->stopping)
		return;
	rl->stopping = true;
	rl->up = false;
	fail_pending(rl, "shutting down");
	uv_close((uv_handle_t *)&rl->retry, on_timer_closed);
	uv_close((uv_handle_t *)&rl->tick, on_timer_closed);
	feedlink_close(&rl->link);
}

static bool pgrelay_is_up(const struct pgrelay *rl)
{
	return rl && rl->up;
}

static uint64_t pgrelay_reconnects(const struct pgrelay *rl)
{
	return rl && rl->ups > 1 ? rl->ups - 1 : 0;
}

static void pgrelay_reconnect(struct pgrelay *rl, const char *why)
{
	struct buf b;
	if (!rl || !rl->up)
		return;
	feedlink_frame_begin(&b, FEEDLINK_RECONNECT);
	feedlink_put_str(&b, why);
	feedlink_send(&rl->link, &b);
}

static int pgrelay_query(struct pgrelay *rl, unsigned flags, const char *sql, int nparams,
                         const char *const *params, uint32_t timeout_ms, pgc_result_fn cb,
                         void *arg)
{
	struct pending *p;
	struct buf b;

	if (!rl || !rl->up || nparams < 0 || nparams > 64)
		return -1;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -1;
	feedlink_frame_begin(&b, FEEDLINK_QUERY);
	p->id = ++rl->next_id;
	p->cb = cb;
	p->arg = arg;
	/* The feed may queue it behind others before its deadline starts: generous slack. */
	p->deadline_ms = uv_now(rl->loop) + timeout_ms + FEED_SLACK_MS;
	if (!rl->pending)
		rl->progress_ms = uv_now(rl->loop);
	feedlink_put_u32(&b, p->id);
	feedlink_put_u32(&b, flags & (PGC_URGENT | PGC_SHARED));
	feedlink_put_u32(&b, timeout_ms);
	feedlink_put_str(&b, sql);
	feedlink_put_u32(&b, (uint32_t)nparams);
	for (int i = 0; i < nparams; i++)
		feedlink_put_str(&b, params[i]);
	if (feedlink_send(&rl->link, &b) < 0) {
		free(p);
		return -1;
	}
	HASH_ADD(hh, rl->pending, id, sizeof(p->id), p);
	return 0;
}

/* pgc's view of the relay (struct pgc_relay: pgc reaches it only through these). */
static void *relay_start(struct pgc *pc, uv_loop_t *loop, const char *name,
                         const struct pgc_hooks *hooks)
{
	return pgrelay_start(pc, loop, name, hooks);
}

static void relay_stop(void *rl)
{
	pgrelay_stop(rl);
}

static bool relay_is_up(const void *rl)
{
	return pgrelay_is_up(rl);
}

static uint64_t relay_reconnects(const void *rl)
{
	return pgrelay_reconnects(rl);
}

static void relay_reconnect(void *rl, const char *why)
{
	pgrelay_reconnect(rl, why);
}

static int relay_query(void *rl, unsigned flags, const char *sql, int nparams,
                       const char *const *params, uint32_t timeout_ms, pgc_result_fn cb, void *arg)
{
	return pgrelay_query(rl, flags, sql, nparams, params, timeout_ms, cb, arg);
}

static const struct pgc_relay g_relay = {
    .covers = pgrelay_covers,
    .start = relay_start,
    .stop = relay_stop,
    .is_up = relay_is_up,
    .reconnects = relay_reconnects,
    .reconnect = relay_reconnect,
    .query = relay_query,
};
