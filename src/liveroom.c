/* Live SQL rooms: the definitions of realtime.live_rooms, one state per live room (its bound
 * parameters, when its query is next due, the last row pushed), a tick that runs due queries
 * on the module's own connection, and the push of changed rows through the routing path.
 * Alone (no Redis), a replica delivers to its own members. With Redis, one replica runs a
 * room's query: the one holding the room's advisory lock on its live connection, which pushes
 * through the bus to every replica's members; the others try the lock once per interval and
 * answer their own newcomers with one query each. */
#include "liveroom.h"
#include "buf.h"
#include "bus.h"
#include "log.h"
#include "metrics.h"
#include "pgc.h"
#include "pglisten.h"
#include "proto.h"
#include "room.h"
#include "router.h"
#include "session.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#define TICK_MS           250
#define STATEMENT_TIMEOUT "5s"
/* The connection's own deadline: past the statement timeout, so a slow query is cancelled by
 * the server (and logged) rather than costing the connection. */
#define QUERY_DEADLINE_MS 8000
#define MAX_IN_FLIGHT     4
#define MAX_DEFS          64
#define MAX_PARAMS        8
#define PARAM_MAX         129

struct def {
	char *pattern, *query, *event;
	uint64_t every_ms;
};

/* Who runs a room's query when replicas share Redis. */
enum lock_state { LOCK_UNKNOWN = 0, LOCK_HELD, LOCK_OTHER };

struct live {
	char room[ROOM_NAME_MAX + 1];
	enum lock_state lock;
	bool snap_wanted; /* a follower's newcomers wait for a one-off query */
	char *pattern; /* the definition it was matched against (looked up again after reloads) */
	char vals[MAX_PARAMS][PARAM_MAX];
	int nvals;
	uint64_t due_ms;
	bool in_flight, dead; /* dead: freed when its query returns */
	char *last;           /* the last row pushed (JSON), NULL before the first */
	char last_id[96];
	char last_ts[UTIL_TS_LEN];
	UT_hash_handle hh;
};

/* A member that joined a live room: it gets the last row after its joined reply (or, on a
 * replica that does not run the room's query, the row of a one-off query). */
struct newcomer {
	struct conn *c;
	char room[ROOM_NAME_MAX + 1];
	struct newcomer *next;
};

static const struct config *g_cfg;
static uv_loop_t *g_loop;
static struct pgc *g_pc;
static uv_timer_t g_tick, g_soon;
static bool g_started, g_loading, g_reload_again, g_missing_logged;
static struct def g_defs[MAX_DEFS];
static size_t g_ndefs;
static struct live *g_lives;
static struct newcomer *g_new;
static struct newcomer *g_waiting; /* newcomers of rooms whose row is not known here yet */
static int g_in_flight;
static unsigned long long g_seq, g_queries, g_pushes, g_errors;
static double g_query_seconds;

static uint64_t now_ms(void)
{
	return uv_now(g_loop);
}

int liveroom_match(const char *pattern, const char *name, char vals[][129], int max)
{
	const char *p = pattern, *n = name;
	int k = 0;

	while (*p) {
		if (*p == '{') {
			const char *end = strchr(p, '}'), *lit = end ? end + 1 : NULL, *stop;
			size_t litlen;
			if (!end || k >= max)
				return -1;
			/* The parameter runs up to the next literal (or the end of the name). */
			litlen = strcspn(lit, "{");
			if (!litlen)
				stop = lit[0] ? NULL : n + strlen(n);
			else {
				char want[ROOM_NAME_MAX + 1];
				if (litlen > ROOM_NAME_MAX)
					return -1;
				memcpy(want, lit, litlen);
				want[litlen] = '\0';
				stop = strstr(n + 1, want);
			}
			if (!stop || stop == n || (size_t)(stop - n) >= PARAM_MAX)
				return -1;
			memcpy(vals[k], n, (size_t)(stop - n));
			vals[k][stop - n] = '\0';
			k++;
			n = stop;
			p = lit;
		} else if (*p++ != *n++) {
			return -1;
		}
	}
	return *n ? -1 : k;
}

static struct def *def_for(const char *room, char vals[][129], int *nvals)
{
	for (size_t i = 0; i < g_ndefs; i++) {
		int k = liveroom_match(g_defs[i].pattern, room, vals, MAX_PARAMS);
		if (k >= 0) {
			*nvals = k;
			return &g_defs[i];
		}
	}
	return NULL;
}

static struct def *def_named(const char *pattern)
{
	for (size_t i = 0; i < g_ndefs; i++)
		if (!strcmp(g_defs[i].pattern, pattern))
			return &g_defs[i];
	return NULL;
}

/* Frees a state already taken out of g_lives. */
static void live_free(struct live *l)
{
	free(l->pattern);
	free(l->last);
	free(l);
}

/* ---- pushing ---- */

/* Replicas share Redis: a room's query is run by one of them and pushed through the bus. */
static bool coordinated(void)
{
	return strcmp(bus_state(), "disabled") != 0;
}

static struct frame *row_frame(const struct live *l, const struct def *d, const char *row,
                               const char *id, const char *ts)
{
	char id_raw[104];
	struct frame *f;

	snprintf(id_raw, sizeof(id_raw), "\"%s\"", id);
	f = proto_event_envelope(id_raw, d->event, l->room, ts, row, "{\"source\":\"live\"}");
	if (f)
		f->flags |= FRAME_ROOM_MSG;
	return f;
}

static void push(struct live *l, const struct def *d, const char *row)
{
	char *copy = strdup(row);
	const char *rooms[1] = {l->room};
	char id_raw[104];
	struct router_event ev;

	if (!copy)
		return;
	free(l->last);
	l->last = copy;
	snprintf(l->last_id, sizeof(l->last_id), "%s-q%llu", g_cfg->node_id, ++g_seq);
	util_timestamp(l->last_ts);
	g_pushes++;
	if (coordinated()) {
		/* Every replica's members, this one's included, get it back from Redis. */
		struct frame *f = row_frame(l, d, l->last, l->last_id, l->last_ts);
		if (!f ||
		    bus_publish(l->room, (const char *)frame_data(f), f->len, METRICS_SRC_LIVE) < 0)
			log_warn("live room push not published", "room", l->room, "reason",
			         f ? "bus unavailable" : "out of memory");
		frame_unref(f);
		return;
	}
	snprintf(id_raw, sizeof(id_raw), "\"%s\"", l->last_id);
	memset(&ev, 0, sizeof(ev));
	ev.id_raw = id_raw;
	ev.event = d->event;
	ev.rooms = rooms;
	ev.nrooms = 1;
	ev.ts = l->last_ts;
	ev.data_raw = l->last;
	ev.meta_raw = "{\"source\":\"live\"}";
	ev.born_ns = util_now_ns();
	ev.src = METRICS_SRC_LIVE;
	router_event(&ev);
}

static void send_to(struct conn *c, const char *room, struct frame *f)
{
	if (!conn_alive(c) || !room_is_member(&session_of(c)->member, room))
		return;
	session_deliver(&session_of(c)->member, f, room, 0);
}

/* Hands the waiting newcomers of room l (of every room: l NULL) the row known here; with row
 * (a follower's one-off query) that row instead. Those still without one keep waiting when
 * keep (a follower's room then asks for a one-off query); the others are dropped. */
static void settle_waiting(struct live *l, const char *row, bool keep)
{
	struct newcomer **pp = &g_waiting;

	while (*pp) {
		struct newcomer *nc = *pp;
		struct live *nl = l;
		struct def *d;
		if (!nl) {
			HASH_FIND_STR(g_lives, nc->room, nl);
		} else if (strcmp(nl->room, nc->room)) {
			pp = &nc->next;
			continue;
		}
		d = nl ? def_named(nl->pattern) : NULL;
		if (nl && d && (row || nl->last)) {
			char id[96], ts[UTIL_TS_LEN];
			struct frame *f;
			if (row) {
				snprintf(id, sizeof(id), "%s-q%llu", g_cfg->node_id, ++g_seq);
				util_timestamp(ts);
				f = row_frame(nl, d, row, id, ts);
			} else {
				f = row_frame(nl, d, nl->last, nl->last_id, nl->last_ts);
			}
			if (f) {
				send_to(nc->c, nc->room, f);
				frame_unref(f);
			}
		} else if (nl && d && keep && conn_alive(nc->c)) {
			if (nl->lock == LOCK_OTHER)
				nl->snap_wanted = true;
			pp = &nc->next;
			continue;
		}
		*pp = nc->next;
		conn_release(nc->c);
		free(nc);
	}
}

/* The newcomers of room l got (or will get) its row with everyone else. */
static void drop_waiting(const struct live *l)
{
	struct newcomer **pp = &g_waiting;

	while (*pp) {
		struct newcomer *nc = *pp;
		if (strcmp(nc->room, l->room)) {
			pp = &nc->next;
			continue;
		}
		*pp = nc->next;
		conn_release(nc->c);
		free(nc);
	}
}

/* ---- querying ---- */

enum run_kind { RUN_TICK, RUN_SNAPSHOT, RUN_LOCK, RUN_UNLOCK };

struct run {
	struct live *l; /* NULL for an unlock: the state is gone by then */
	enum run_kind kind;
	uint64_t started_ns;
};

static int send_run(struct live *l, enum run_kind kind);
static void on_soon(uv_timer_t *t);

static void on_row(void *arg, const PGresult *res, const char *err)
{
	struct run *r = arg;
	struct live *l = r->l;
	struct def *d = l ? def_named(l->pattern) : NULL;
	enum run_kind kind = r->kind;

	if (kind == RUN_TICK || kind == RUN_SNAPSHOT) {
		g_in_flight--;
		g_query_seconds += (double)(util_now_ns() - r->started_ns) / 1e9;
		/* A slot is free: start the next due room now, not at the next tick, or a replica
		 * could run only MAX_IN_FLIGHT queries per tick however fast they are. Deferred to
		 * the loop so the tick never runs inside this callback. */
		if (g_started && !uv_is_active((uv_handle_t *)&g_soon))
			uv_timer_start(&g_soon, on_soon, 0, 0);
	}
	free(r);
	if (!l)
		return;
	l->in_flight = false;
	if (l->dead) {
		/* A lock taken for a room that emptied meanwhile is given back. */
		if (kind == RUN_LOCK && res && PQntuples(res) == 1 &&
		    PQgetvalue(res, 0, 0)[0] == 't')
			l->lock = LOCK_HELD;
		if (l->lock == LOCK_HELD && g_pc && pgc_is_up(g_pc))
			send_run(l, RUN_UNLOCK);
		live_free(l);
		return;
	}
	if (!res) {
		/* Retried at the next tick (due_ms was already moved on). */
		g_errors++;
		log_warn("live room query failed", "room", l->room, "reason", err);
		return;
	}
	if (kind == RUN_LOCK) {
		bool held = PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';
		l->lock = held ? LOCK_HELD : LOCK_OTHER;
		if (held && d) {
			log_info("running the live room query on this replica", "room", l->room);
			free(l->last);
			l->last = NULL;
			send_run(l, RUN_TICK);
		} else if (!held) {
			settle_waiting(l, NULL, true); /* asks for a one-off query if any wait */
		}
		return;
	}
	if (d) {
		const char *row =
		    PQntuples(res) > 0 && !PQgetisnull(res, 0, 0) ? PQgetvalue(res, 0, 0) : "null";
		if (kind == RUN_SNAPSHOT) {
			l->snap_wanted = false;
			settle_waiting(l, row, false);
		} else if (!l->last || strcmp(l->last, row)) {
			push(l, d, row);
			/* The push reaches this room's newcomers too (through Redis, or here). */
			drop_waiting(l);
		}
	}
}

/* Sends one of the room's queries (at most one in flight per room). An unlock does not keep l:
 * the caller frees it. */
static int send_run(struct live *l, enum run_kind kind)
{
	struct run *r = calloc(1, sizeof(*r));
	const char *params[MAX_PARAMS];
	struct def *d = def_named(l->pattern);
	struct buf sql;
	int nparams = l->nvals, rc = -1;

	if (!r || (!d && kind != RUN_UNLOCK)) {
		free(r);
		return -1;
	}
	buf_init(&sql);
	if (kind == RUN_LOCK || kind == RUN_UNLOCK) {
		/* A session advisory lock on the live connection, keyed by the room: given back
		 * when the room empties here, or by PostgreSQL when the connection goes. */
		buf_printf(
		    &sql,
		    "SELECT pg_%sadvisory_%slock(hashtextextended('roomcast.live:' || $1, 0))",
		    kind == RUN_LOCK ? "try_" : "", kind == RUN_LOCK ? "" : "un");
		params[0] = l->room;
		nparams = 1;
	} else {
		/* A trailing semicolon would end the subquery. */
		size_t qlen = strlen(d->query);
		while (qlen && strchr(" \t\r\n;", d->query[qlen - 1]))
			qlen--;
		buf_puts(&sql, "SELECT row_to_json(q)::text FROM (");
		buf_put(&sql, d->query, qlen);
		buf_puts(&sql, "\n) q LIMIT 1");
		for (int i = 0; i < l->nvals; i++)
			params[i] = l->vals[i];
	}
	r->l = kind == RUN_UNLOCK ? NULL : l;
	r->kind = kind;
	r->started_ns = util_now_ns();
	if (!sql.failed &&
	    pgc_query(g_pc, sql.data, nparams, params, QUERY_DEADLINE_MS, on_row, r) == 0) {
		rc = 0;
		if (kind != RUN_UNLOCK)
			l->in_flight = true;
		if (kind == RUN_TICK || kind == RUN_SNAPSHOT) {
			g_in_flight++;
			g_queries++;
		}
	} else {
		free(r);
	}
	buf_free(&sql);
	return rc;
}

/* Takes a room out of service; its lock, if held here, is given back. */
static void retire(struct live *l)
{
	HASH_DEL(g_lives, l);
	if (l->in_flight) {
		l->dead = true; /* on_row finishes the job */
		return;
	}
	if (l->lock == LOCK_HELD && pgc_is_up(g_pc))
		send_run(l, RUN_UNLOCK);
	live_free(l);
}

static void tick(void)
{
	struct live *l, *tmp;
	uint64_t now = now_ms();
	bool coord = coordinated();

	HASH_ITER(hh, g_lives, l, tmp)
	{
		struct def *d = def_named(l->pattern);
		if (!room_find(l->room) || !d) {
			/* The last member left (or the definition went): stop querying. */
			retire(l);
			continue;
		}
		if (l->in_flight || !pgc_is_up(g_pc) || g_in_flight >= MAX_IN_FLIGHT)
			continue;
		if (l->snap_wanted) {
			send_run(l, RUN_SNAPSHOT);
			continue;
		}
		if (now < l->due_ms)
			continue;
		/* On the room's own schedule, so a start that waited for a slot does not push
		 * every later run back; a room more than an interval late starts afresh. */
		l->due_ms = l->due_ms && now - l->due_ms < d->every_ms ? l->due_ms + d->every_ms
		                                                       : now + d->every_ms;
		/* Not the runner: try the lock each interval, to take over when the runner's
		 * members have gone. */
		if (send_run(l, coord && l->lock != LOCK_HELD ? RUN_LOCK : RUN_TICK) == 0) {
			/* To the back of the order: rooms waiting longest come first next time, so
			 * none starves while slots are short. It is in flight, so this walk skips
			 * it when it meets it again. */
			HASH_DEL(g_lives, l);
			HASH_ADD_STR(g_lives, room, l);
		}
	}
}

static void on_tick(uv_timer_t *t)
{
	tick();
}

static void on_soon(uv_timer_t *t)
{
	struct newcomer *nc;

	while ((nc = g_new)) {
		g_new = nc->next;
		nc->next = g_waiting;
		g_waiting = nc;
	}
	settle_waiting(NULL, NULL, true);
	tick();
}

/* A member joined a room: start its live state, and hand it the row after its joined reply. */
static void on_join(const char *name, struct room_member *m)
{
	char vals[MAX_PARAMS][PARAM_MAX];
	int nvals = 0;
	struct def *d;
	struct live *l;
	struct newcomer *nc;

	if (!g_ndefs || !(d = def_for(name, vals, &nvals)))
		return;
	HASH_FIND_STR(g_lives, name, l);
	if (!l) {
		if (!(l = calloc(1, sizeof(*l))) || !(l->pattern = strdup(d->pattern))) {
			free(l);
			return;
		}
		snprintf(l->room, sizeof(l->room), "%s", name);
		memcpy(l->vals, vals, sizeof(vals));
		l->nvals = nvals;
		l->due_ms = 0;
		HASH_ADD_STR(g_lives, room, l);
	}
	/* Alone, the first member gets the first push; with Redis another replica may be
	 * running the room already, so every newcomer waits for a row. */
	if (m && (l->last || coordinated()) && (nc = calloc(1, sizeof(*nc)))) {
		nc->c = session_conn(session_of_member(m));
		conn_hold(nc->c);
		snprintf(nc->room, sizeof(nc->room), "%s", name);
		nc->next = g_new;
		g_new = nc;
	}
	/* After the joined reply: on the next loop turn. */
	uv_timer_start(&g_soon, on_soon, 0, 0);
}

/* ---- definitions ---- */

static void load(void);

static void defs_clear(void)
{
	for (size_t i = 0; i < g_ndefs; i++) {
		free(g_defs[i].pattern);
		free(g_defs[i].query);
		free(g_defs[i].event);
	}
	g_ndefs = 0;
}

static void adopt_rooms(const struct room *r, void *arg)
{
	on_join(room_name(r), NULL);
}

static void on_loaded(void *arg, const PGresult *res, const char *err)
{
	struct live *l, *tmp;

	g_loading = false;
	if (!res) {
		if (!g_missing_logged)
			log_warn("realtime.live_rooms not readable", "reason", err);
		g_missing_logged = true;
	} else {
		g_missing_logged = false;
		defs_clear();
		for (int i = 0; i < PQntuples(res) && g_ndefs < MAX_DEFS; i++) {
			struct def *d = &g_defs[g_ndefs];
			d->pattern = strdup(PQgetvalue(res, i, 0));
			d->query = strdup(PQgetvalue(res, i, 1));
			d->event = strdup(PQgetvalue(res, i, 3));
			d->every_ms = strtoull(PQgetvalue(res, i, 2), NULL, 10);
			if (d->every_ms < 1000)
				d->every_ms = 1000;
			if (!d->pattern || !d->query || !d->event) {
				free(d->pattern);
				free(d->query);
				free(d->event);
				continue;
			}
			g_ndefs++;
		}
		/* A changed query starts afresh; rooms already busy become live now. */
		HASH_ITER(hh, g_lives, l, tmp)
		{
			free(l->last);
			l->last = NULL;
			l->due_ms = 0;
		}
		room_foreach(adopt_rooms, NULL);
		log_info("live rooms loaded", "definitions", g_ndefs ? "some" : "none");
	}
	if (g_reload_again) {
		g_reload_again = false;
		load();
	}
}

static void load(void)
{
	if (!g_started || !pgc_is_up(g_pc))
		return;
	if (g_loading) {
		g_reload_again = true;
		return;
	}
	if (pgc_query(g_pc,
	              "SELECT pattern, query, (extract(epoch FROM every) * 1000)::bigint, event "
	              "FROM realtime.live_rooms ORDER BY length(pattern) DESC, pattern",
	              0, NULL, QUERY_DEADLINE_MS, on_loaded, NULL) == 0)
		g_loading = true;
}

void liveroom_reload(void)
{
	load();
}

static void on_set(void *arg, const PGresult *res, const char *err)
{
	if (!res)
		log_warn("live room connection setup failed", "reason", err);
}

static void conn_up(struct pgc *pc, void *arg)
{
	pgc_query_first(pc, "SET statement_timeout = '" STATEMENT_TIMEOUT "'", 0, NULL,
	                QUERY_DEADLINE_MS, on_set, NULL);
	struct live *l, *tmp;

	/* A new session holds no advisory lock: whoever runs a room is found out again. */
	HASH_ITER(hh, g_lives, l, tmp)
	{
		l->lock = LOCK_UNKNOWN;
		l->due_ms = 0;
	}
	g_loading = false;
	load();
}

int liveroom_start(const struct config *cfg, uv_loop_t *loop)
{
	struct pgc_hooks h = {conn_up, NULL, NULL, NULL};

	g_cfg = cfg;
	g_loop = loop;
	if (!cfg->database_url || !*cfg->database_url)
		return 0;
	g_pc = pgc_start(loop, cfg->database_url, "live", &h);
	if (!g_pc)
		return -1;
	uv_timer_init(loop, &g_tick);
	uv_timer_init(loop, &g_soon);
	uv_timer_start(&g_tick, on_tick, TICK_MS, TICK_MS);
	room_set_join_hook(on_join);
	pglisten_set_config_hook(liveroom_reload);
	g_started = true;
	return 0;
}

void liveroom_stop(void)
{
	struct live *l, *tmp;

	if (!g_started)
		return;
	/* Cleared first: the queries that pgc_stop fails below must not restart the timers. */
	g_started = false;
	room_set_join_hook(NULL);
	pglisten_set_config_hook(NULL);
	uv_close((uv_handle_t *)&g_tick, NULL);
	uv_close((uv_handle_t *)&g_soon, NULL);
	while (g_new) {
		struct newcomer *nc = g_new;
		g_new = nc->next;
		conn_release(nc->c);
		free(nc);
	}
	while (g_waiting) {
		struct newcomer *nc = g_waiting;
		g_waiting = nc->next;
		conn_release(nc->c);
		free(nc);
	}
	/* Stopping the connection fails its queries: their callbacks free what they held. */
	HASH_ITER(hh, g_lives, l, tmp)
	{
		HASH_DEL(g_lives, l);
		if (l->in_flight)
			l->dead = true; /* on_row frees it */
		else
			live_free(l);
	}
	pgc_stop(g_pc);
	g_pc = NULL;
	defs_clear();
}

void liveroom_metrics(struct buf *b)
{
	if (!g_started)
		return;
	buf_printf(b,
	           "# HELP roomcast_live_definitions Live room patterns (realtime.live_rooms).\n"
	           "# TYPE roomcast_live_definitions gauge\n"
	           "roomcast_live_definitions %zu\n"
	           "# HELP roomcast_live_rooms Live SQL rooms being queried (rooms with members "
	           "matching a realtime.live_room pattern).\n"
	           "# TYPE roomcast_live_rooms gauge\n"
	           "roomcast_live_rooms %u\n"
	           "# HELP roomcast_live_queries_total Live room queries run.\n"
	           "# TYPE roomcast_live_queries_total counter\n"
	           "roomcast_live_queries_total %llu\n"
	           "# HELP roomcast_live_query_seconds_total Time spent in live room queries.\n"
	           "# TYPE roomcast_live_query_seconds_total counter\n"
	           "roomcast_live_query_seconds_total %.6f\n"
	           "# HELP roomcast_live_pushes_total Changed rows pushed to live rooms.\n"
	           "# TYPE roomcast_live_pushes_total counter\n"
	           "roomcast_live_pushes_total %llu\n"
	           "# HELP roomcast_live_query_errors_total Live room queries that failed.\n"
	           "# TYPE roomcast_live_query_errors_total counter\n"
	           "roomcast_live_query_errors_total %llu\n",
	           g_ndefs, HASH_COUNT(g_lives), g_queries, g_query_seconds, g_pushes, g_errors);
}
