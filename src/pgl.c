/* PostgreSQL delivery: LISTEN on one connection, queries on another, and the watermark logic
 * that makes outbox events reach rooms exactly once. The watermark W is a transaction id below
 * which every committed event has been delivered; catch-up reads `xid >= W` after every
 * reconnect, and a periodic sweep advances W to the snapshot xmin, so neither a lost listener
 * nor transactions committing out of id order can lose an event. */
#include "pgl.h"
#include "buf.h"
#include "frame.h"
#include "log.h"
#include "metrics.h"
#include "pgc.h"
#include "pglisten.h"
#include "pgwatch.h"
#include "proto.h"
#include "recent.h"
#include "util.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#define CHANNEL           "realtime_events"
#define QUERY_TIMEOUT_MS  5000
#define POLICY_TIMEOUT_MS 3000
#define SWEEP_EVERY_MS    2000
/* How long live events may wait for the catch-up after a listener reconnect. A query
 * connection that hangs is noticed at its query deadline (5 s), reconnects at once and needs at
 * most its connect deadline (5 s) before the catch-up runs: 15 s covers that with room to
 * spare, so commit order holds unless PostgreSQL stays half-reachable for longer. */
#define HOLD_LIVE_MAX_MS 15000
#define PRUNE_EVERY_MS   60000
/* Events per replay page: the session queues a page within the send budget before asking for
 * the next, so a backlog of any size is caught up without holding it all. */
#define REPLAY_PAGE 200
/* How long a replay may wait for the query connection (after a restart) before failing. */
#define REPLAY_WAIT_MS 3000

/* An event id handed to the router (or claimed by a fetch about to deliver it). */
struct seen {
	long long id;
	uint64_t xid;
	bool delivered; /* handed to the router (else claimed, or waiting in the inbound queue) */
	UT_hash_handle hh;
};

/* Notifications are delivered in arrival (= commit) order; a large one waits at the head of
 * this queue for its row to be read, and everything behind it waits too. */
struct inbound {
	long long id;
	uint64_t xid;
	char *json; /* NULL until fetched */
	bool failed;
	struct inbound *next;
};

/* One asker of a replay page: a joining client (cb, arg) or a history page (hcb, harg). */
struct replay {
	void *arg;
	pgl_replay_fn cb;
	pgl_history_fn hcb;
	void *harg;
	struct replay *next;
};

/* One outbox query and every asker waiting for its answer. Replays and history read the outbox
 * with the same query and the same `recovered` rule; asks with the same room, since, after, top
 * and limit get the same rows, so a later ask joins a query already asked for (coalescing). It
 * may join only while the query's snapshot is provably not older than its membership: before
 * the query was handed to the query connection, or when no outbox event of its room was delivered
 * since (an event committed after the snapshot and delivered before the join would be in neither
 * the replay nor the asker's held live frames). */
struct rquery {
	UT_hash_handle hh; /* in g_open until answered */
	char key[ROOM_NAME_MAX + 96];
	char room[ROOM_NAME_MAX + 1];
	long long since, after, top; /* top 0: the first page */
	int limit;                   /* rows per page */
	bool history, sent;
	uint64_t sent_seq;      /* room_seq(room) when handed to the query connection */
	uint64_t wait_until_ns; /* while waiting for the query connection */
	struct replay *waiters; /* in ask order */
	struct replay **tail;
	struct rquery *next; /* g_waiting, or g_cached once answered */
	/* A first page answered while no event was delivered since it was sent is kept (in
	 * g_open and g_cached) for asks of the same page, until the room's next delivery or for
	 * REPLAY_CACHE_MS: the rows are what a new query would read, except events committed
	 * after its snapshot, which are not delivered yet and so reach the asker live. */
	bool answered, recovered;
	uint64_t answered_ns;
	long long *ids;
	struct frame **frames;
	size_t n;
	struct pgl_replay_page page; /* page.owed: owned here */
};

static struct rquery *g_open, *g_waiting, *g_cached;
static size_t g_ncached;
#define REPLAY_CACHE_MS  1000
#define REPLAY_CACHE_MAX 1024
/* Outbox deliveries per room, folded into buckets by the room name's hash: a query may be joined
 * (or its answer reused) while no event of its room was delivered since it was sent. Events of
 * other rooms cannot be missing from its asker's view, so a storm of rejoins in many rooms is
 * not split into one query per join by the other rooms' traffic. Two rooms sharing a bucket
 * only make a join start a query of its own, never reuse a stale one. */
#define ROOM_SEQ_BUCKETS 16384u
static uint64_t g_room_seq[ROOM_SEQ_BUCKETS];

static uint64_t *room_seq(const char *room)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *p = (const unsigned char *)room; *p; p++)
		h = (h ^ *p) * 16777619u;
	return &g_room_seq[h & (ROOM_SEQ_BUCKETS - 1)];
}
/* Replay (join) pages asked, by how they were served; queries sent for them. */
static uint64_t g_replays_query, g_replays_coalesced, g_replays_memory, g_replay_queries;
/* For the recent memory: the xmax of the snapshot of the last catch-up or sweep that
 * delivered events out of notification order while no notification of a later transaction has
 * been delivered since (0: none). */
static uint64_t g_unsettled_xid;
static uint64_t g_horizon_reads;

/* A join waiting for the outbox horizon before it is answered from the recent memory. */
struct mwait {
	void *arg;
	pgl_replay_fn cb;
	long long since;
	struct mwait *next;
	char room[ROOM_NAME_MAX + 1];
};
/* Asks waiting for the next horizon read (one is in flight at most: asks arriving meanwhile
 * wait for the next one, whose snapshot is then taken after they joined). */
static struct mwait *g_hz_next, **g_hz_tail = &g_hz_next;
static bool g_hz_in_flight;
/* Horizon reads are spaced at least this far apart: under a storm of rejoins each read then
 * serves every ask of the interval (one read answered per round trip was ~9 joins per
 * statement, more statements than outbox queries would have been); an ask after a quiet spell
 * is read at once. */
#define HZ_SPACING_MS 20
static uint64_t g_hz_sent_ns;

static const struct config *g_cfg;
static pgl_deliver_fn g_deliver; /* the router, given at start */
static struct pgc *g_listen, *g_query;
static uv_timer_t g_sweep_timer, g_prune_timer, g_wait_timer, g_hold_timer, g_hz_timer;
static bool g_enabled, g_listening, g_need_catchup, g_sweep_in_flight;
static bool g_have_w;
static bool g_hold_live;
static long long g_max_id;                /* highest outbox id delivered */
static long long g_restart_floor_id = -1; /* >= 0: catching up by id after a restart */
static char g_pm_start[64];               /* pg_postmaster_start_time() last seen */
static uint64_t g_w;
static struct seen *g_seen;
static struct inbound *g_in_head, *g_in_tail;

/* The room position `joined` carries (pgl_position): an outbox event id P such that every
 * event committed before P's transaction has been delivered. A replay after P carries every
 * event with a higher id and those with smaller ids still open when P was inserted (the
 * replay's floor): what it leaves out committed before P, so was delivered before the join.
 * Candidates are events delivered from their notification (commit order: everything committed
 * before was notified before), the highest id so far; one becomes the position once nothing
 * committed earlier can still be on its way by another path: no catch-up owed, no sweep fetch
 * in flight, no failed fetch not yet redelivered (W past its transaction). */
static long long g_pos_id = -1, g_cand_id = -1; /* -1: none known */
static uint64_t g_pos_seq, g_cand_seq;          /* their recent_seq() delivery points */
/* Whether the recent memory may answer a rejoin from it, whichever process handed it out:
 * nothing committed after it was delivered here before it (an anchor, see deliver_json; or the
 * first read's newest event when no event committed after it had been, see on_swept). Then
 * what the client may lack is what was delivered here after it. */
static bool g_pos_mem, g_cand_mem;
static size_t g_sweep_claims;    /* ids the sweep fetch in flight claimed */
static uint64_t g_pos_block_xid; /* 0, or a failed fetch's highest xid */

static void pos_promote(void)
{
	if (g_pos_block_xid && g_have_w && g_pos_block_xid < g_w && !g_in_head)
		g_pos_block_xid = 0;
	if (g_cand_id <= g_pos_id || g_need_catchup || g_sweep_claims || g_pos_block_xid)
		return;
	g_pos_id = g_cand_id;
	g_pos_seq = g_cand_seq;
	g_pos_mem = g_cand_mem;
}

static void drain_inbound(void);
static void cache_expire(bool all);

static void release_live(void)
{
	g_hold_live = false;
	uv_timer_stop(&g_hold_timer);
	drain_inbound();
}

/* A catch-up that cannot run (the query connection stays away) must not stall live delivery
 * for ever: after the bound, live events flow and the catch-up delivers late. */
static void on_hold_expired(uv_timer_t *t)
{
	if (!g_hold_live)
		return;
	log_warn("live events released before the catch-up", "reason",
	         "query connection not back in time; missed events will arrive late");
	release_live();
}

static bool seen_has(long long id)
{
	struct seen *s;
	HASH_FIND(hh, g_seen, &id, sizeof(id), s);
	return s != NULL;
}

static void seen_add(long long id, uint64_t xid)
{
	struct seen *s;
	if (seen_has(id) || !(s = calloc(1, sizeof(*s))))
		return;
	s->id = id;
	s->xid = xid;
	HASH_ADD(hh, g_seen, id, sizeof(s->id), s);
}

static void seen_del(long long id)
{
	struct seen *s;
	HASH_FIND(hh, g_seen, &id, sizeof(id), s);
	if (s) {
		HASH_DEL(g_seen, s);
		free(s);
	}
}

/* Entries below the watermark can never be offered again: catch-up only reads xid >= W. */
static void seen_prune(void)
{
	struct seen *s, *tmp;
	HASH_ITER(hh, g_seen, s, tmp)
	{
		if (s->xid < g_w) {
			HASH_DEL(g_seen, s);
			free(s);
		}
	}
}

static json_object *parse_json(const char *text, size_t len)
{
	json_tokener *tok = json_tokener_new_ex(64);
	json_object *o;
	if (!tok)
		return NULL;
	o = json_tokener_parse_ex(tok, text, (int)len);
	if (json_tokener_get_error(tok) != json_tokener_success) {
		json_object_put(o);
		o = NULL;
	}
	json_tokener_free(tok);
	return o;
}

static const char *str_field(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string)
	           ? json_object_get_string(v)
	           : NULL;
}

static const char *raw_field(json_object *o, const char *k)
{
	json_object *v;
	return json_object_object_get_ex(o, k, &v)
	           ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN)
	           : NULL;
}

/* Routes one outbox event given as realtime.event_json text, and records it in the recent
 * memory. nonlive_xmax is 0 for an event delivered from its notification (notifications come
 * in commit order), else the xmax of the snapshot of the catch-up or sweep that found it. An
 * event may anchor a memory answer (see recent.h) only when delivered from its notification
 * with no out-of-order delivery unsettled: one is settled by the first notification of a
 * transaction whose xid is at least that xmax (it committed after the snapshot, so every
 * transaction that committed before the snapshot was notified, and delivered, before it). */
static void deliver_json(const char *text, uint64_t nonlive_xmax)
{
	size_t len = strlen(text);
	json_object *o = parse_json(text, len), *rooms_o, *id_o;
	const char *rooms[64];
	size_t n = 0;
	char id_raw[24];
	struct pgl_event ev;
	long long floor = g_max_id;
	bool anchor = false;

	if (!o || !json_object_object_get_ex(o, "rooms", &rooms_o) ||
	    !json_object_is_type(rooms_o, json_type_array) ||
	    !json_object_object_get_ex(o, "id", &id_o)) {
		log_error("outbox event unreadable", "reason", "payload is not an event");
		json_object_put(o);
		return;
	}
	for (size_t i = 0; i < json_object_array_length(rooms_o) && n < 64; i++) {
		json_object *r = json_object_array_get_idx(rooms_o, i);
		if (json_object_is_type(r, json_type_string))
			rooms[n++] = json_object_get_string(r);
	}
	memset(&ev, 0, sizeof(ev));
	ev.id_num = json_object_get_int64(id_o);
	if (ev.id_num > g_max_id)
		g_max_id = ev.id_num;
	snprintf(id_raw, sizeof(id_raw), "%lld", ev.id_num);
	ev.id_raw = id_raw;
	ev.event = str_field(o, "event") ? str_field(o, "event") : "event";
	ev.rooms = rooms;
	ev.nrooms = n;
	ev.ts = str_field(o, "ts") ? str_field(o, "ts") : "";
	ev.data_raw = raw_field(o, "data");
	ev.meta_raw = raw_field(o, "meta");
	ev.born_ns = util_now_ns();
	{
		struct seen *s;
		HASH_FIND(hh, g_seen, &ev.id_num, sizeof(ev.id_num), s);
		if (s)
			s->delivered = true;
	}
	g_deliver(&ev);
	for (size_t i = 0; i < json_object_array_length(rooms_o); i++) {
		const char *rn = json_object_get_string(json_object_array_get_idx(rooms_o, i));
		if (rn)
			(*room_seq(rn))++;
	}
	if (g_cached)
		cache_expire(false);
	if (nonlive_xmax) {
		if (nonlive_xmax > g_unsettled_xid)
			g_unsettled_xid = nonlive_xmax;
	} else {
		const char *x = str_field(o, "xid");
		if (g_unsettled_xid && x && strtoull(x, NULL, 10) >= g_unsettled_xid)
			g_unsettled_xid = 0;
		anchor = !g_unsettled_xid;
	}
	if (json_object_array_length(rooms_o) > n)
		/* Rooms past the 64th get nothing live, yet a query would replay the event there:
		 * their memory would lack it. Rare enough to forget everything. */
		recent_clear();
	else
		recent_record(rooms, n, ev.id_num, text, len, anchor, floor);
	if (!nonlive_xmax && ev.id_num > g_cand_id) {
		g_cand_id = ev.id_num;
		g_cand_seq = recent_seq();
		g_cand_mem = anchor;
		pos_promote();
	}
	json_object_put(o);
}

static void drain_inbound(void)
{
	/* After a reconnect, live notifications wait until the catch-up has delivered what was
	 * committed before them, so rooms still see commit order (bounded: HOLD_LIVE_MAX_MS). */
	if (g_hold_live)
		return;
	while (g_in_head && (g_in_head->json || g_in_head->failed)) {
		struct inbound *in = g_in_head;
		g_in_head = in->next;
		if (!g_in_head)
			g_in_tail = NULL;
		if (in->json)
			deliver_json(in->json, 0);
		free(in->json);
		free(in);
	}
}

static void on_large_fetched(void *arg, const PGresult *res, const char *err)
{
	struct inbound *in = arg;
	if (res && PQntuples(res) == 1)
		in->json = strdup(PQgetvalue(res, 0, 0));
	if (!in->json) {
		/* The sweep will find it (its id stays out of the seen set). */
		in->failed = true;
		seen_del(in->id);
		if (in->xid + 1 > g_pos_block_xid)
			g_pos_block_xid = in->xid + 1; /* +1: never 0 */
		log_warn("large event fetch failed", "reason", err ? err : "row not found");
	}
	drain_inbound();
}

static void enqueue(long long id, uint64_t xid, const char *json, bool large)
{
	struct inbound *in = calloc(1, sizeof(*in));
	if (!in)
		return;
	in->id = id;
	in->xid = xid;
	if (large) {
		char idbuf[24];
		const char *p[1] = {idbuf};
		snprintf(idbuf, sizeof(idbuf), "%lld", id);
		if (pgc_query(
		        g_query,
		        "SELECT realtime.event_json(e) FROM realtime.events e WHERE e.id = $1", 1,
		        p, QUERY_TIMEOUT_MS, on_large_fetched, in) < 0) {
			in->failed = true;
			seen_del(id);
			if (xid + 1 > g_pos_block_xid)
				g_pos_block_xid = xid + 1;
		}
	} else {
		in->json = strdup(json);
	}
	if (g_in_tail)
		g_in_tail->next = in;
	else
		g_in_head = in;
	g_in_tail = in;
	drain_inbound();
}

static void on_notify(struct pgc *pc, const PGnotify *n, void *arg)
{
	json_object *o, *v;
	long long id;
	uint64_t xid;
	bool large;

	if (pgwatch_on_notify(n) || pglisten_on_notify(n) || strcmp(n->relname, CHANNEL))
		return;
	o = parse_json(n->extra, strlen(n->extra));
	if (!o || !json_object_object_get_ex(o, "id", &v)) {
		log_warn("notification ignored", "reason", "not an outbox event");
		json_object_put(o);
		return;
	}
	id = json_object_get_int64(v);
	xid = str_field(o, "xid") ? strtoull(str_field(o, "xid"), NULL, 10) : 0;
	large = json_object_object_get_ex(o, "large", &v) && json_object_get_boolean(v);
	json_object_put(o);
	if ((g_have_w && xid < g_w) || seen_has(id))
		return;
	seen_add(id, xid);
	enqueue(id, xid, n->extra, large);
}

/* ---- catch-up and sweep ---- */

struct sweep {
	bool catchup;
	uint64_t new_w;
	uint64_t xmax;    /* the snapshot's xmax (see deliver_json) */
	uint64_t max_xid; /* of the ids claimed */
	size_t n;
	long long *ids;
};

static void sweep(bool catchup);

static void sweep_done(struct sweep *sw, bool advance)
{
	if (advance) {
		g_w = sw->new_w;
		g_have_w = true;
		seen_prune();
		if (sw->catchup) {
			g_need_catchup = false;
			g_restart_floor_id = -1;
			release_live();
		}
	}
	g_sweep_in_flight = false;
	pos_promote();
	/* An ordinary sweep that was already under way when the listener came back kept the
	 * catch-up from starting; run it now rather than at the next tick, since live events are
	 * held until it is out. (Only after an ordinary sweep: a failed catch-up is retried by the
	 * timer or when the query connection returns, never in a tight loop.) */
	if (!sw->catchup && g_need_catchup) {
		free(sw->ids);
		free(sw);
		sweep(true);
		return;
	}
	free(sw->ids);
	free(sw);
}

static void on_fetched(void *arg, const PGresult *res, const char *err)
{
	struct sweep *sw = arg;

	g_sweep_claims = 0;
	if (!res) {
		/* Unclaim so the next sweep tries again; W stays where it was. */
		for (size_t i = 0; i < sw->n; i++)
			seen_del(sw->ids[i]);
		if (sw->max_xid + 1 > g_pos_block_xid)
			g_pos_block_xid = sw->max_xid + 1;
		log_warn("catch-up read failed", "reason", err);
		sweep_done(sw, false);
		return;
	}
	for (int i = 0; i < PQntuples(res); i++)
		deliver_json(PQgetvalue(res, i, 0), sw->xmax ? sw->xmax : 1);
	if (sw->catchup || PQntuples(res)) {
		char n[24];
		snprintf(n, sizeof(n), "%d", PQntuples(res));
		metrics.pg_catchup_rows += (uint64_t)PQntuples(res);
		if (PQntuples(res))
			log_info("delivered events missed by the listener", "rows", n);
	}
	sweep_done(sw, true);
}

static void on_swept(void *arg, const PGresult *res, const char *err)
{
	struct sweep *sw = arg;
	struct buf ids;

	if (!res || PQntuples(res) < 1) {
		log_warn("catch-up query failed", "reason", err ? err : "no rows");
		sweep_done(sw, false);
		return;
	}
	sw->new_w = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
	sw->xmax = strtoull(PQgetvalue(res, 0, 5), NULL, 10);
	if (g_pm_start[0] && strcmp(g_pm_start, PQgetvalue(res, 0, 4))) {
		/* PostgreSQL restarted. After a crash, transaction ids of work whose WAL was never
		 * flushed are handed out again, so events committed since may have xids below W:
		 * catch up by id instead (sequences never go back) and restart W from there. */
		log_warn("postgres restarted: catching up by event id", "reason",
		         "transaction ids may have been reused");
		snprintf(g_pm_start, sizeof(g_pm_start), "%s", PQgetvalue(res, 0, 4));
		g_restart_floor_id = g_max_id;
		g_w = 0;
		/* Ids and xids remembered may name other events now. */
		recent_clear();
		g_unsettled_xid = 0;
		sweep_done(sw, false);
		sweep(true);
		return;
	}
	snprintf(g_pm_start, sizeof(g_pm_start), "%s", PQgetvalue(res, 0, 4));
	if (!g_have_w) {
		/* First contact: nothing before now is owed to anyone connected. */
		/* Notifications of transactions below W are dropped from now on, also ones that
		 * committed after an event delivered already: remember nothing from before. */
		recent_clear();
		/* An empty outbox in the snapshot that set W, with nothing delivered yet: every
		 * event committed later has a transaction at or above W, so it is delivered (and
		 * recorded) here; a room's memory then holds its whole history (joins with since
		 * 0). */
		if (!g_max_id && PQgetvalue(res, 0, 6)[0] == 't')
			recent_mark_whole();
		/* The newest event in that snapshot is a position: everything committed before it
		 * committed before this process first read the outbox (owed to no one). Column 8:
		 * no event of that snapshot committed after it (none with a smaller id open when it
		 * was inserted, the replay's floor); then, with nothing delivered before, every
		 * event committed after it is delivered here from now on (the memory may answer).
		 */
		if (!PQgetisnull(res, 0, 7)) {
			long long top = strtoll(PQgetvalue(res, 0, 7), NULL, 10);
			if (top > g_cand_id) {
				g_cand_id = top;
				g_cand_seq = recent_seq();
				g_cand_mem = !g_max_id && PQgetvalue(res, 0, 8)[0] == 't';
			}
		}
		sweep_done(sw, true);
		return;
	}
	sw->ids = calloc((size_t)PQntuples(res) + 1, sizeof(long long));
	buf_init(&ids);
	buf_puts(&ids, "{");
	for (int i = 0; i < PQntuples(res) && sw->ids; i++) {
		long long id;
		uint64_t xid;
		if (PQgetisnull(res, i, 1))
			continue;
		id = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		xid = strtoull(PQgetvalue(res, i, 2), NULL, 10);
		if (seen_has(id))
			continue;
		/* A young row's notification may simply still be on its way: leave it to the
		 * listener (commit order) and keep W below it so the next sweep looks again. */
		if (!sw->catchup && PQgetvalue(res, i, 3)[0] == 't') {
			if (xid < sw->new_w)
				sw->new_w = xid;
			continue;
		}
		seen_add(id, xid);
		if (xid > sw->max_xid)
			sw->max_xid = xid;
		sw->ids[sw->n++] = id;
		buf_printf(&ids, "%s%lld", sw->n > 1 ? "," : "", id);
	}
	buf_puts(&ids, "}");
	if (!sw->n || ids.failed) {
		buf_free(&ids);
		sweep_done(sw, sw->ids != NULL);
		return;
	}
	{
		const char *p[1] = {ids.data};
		g_sweep_claims = sw->n;
		if ((sw->catchup ? pgc_query_first : pgc_query)(
		        g_query,
		        "SELECT realtime.event_json(e) FROM realtime.events e "
		        "WHERE e.id = ANY($1::bigint[]) ORDER BY e.id",
		        1, p, QUERY_TIMEOUT_MS, on_fetched, sw) < 0)
			on_fetched(sw, NULL, "query connection down");
	}
	buf_free(&ids);
}

static void sweep(bool catchup)
{
	struct sweep *sw;
	char wbuf[24], fbuf[24];
	const char *p[2] = {wbuf, fbuf};

	if (g_sweep_in_flight || !g_listening || !pgc_is_up(g_query))
		return;
	sw = calloc(1, sizeof(*sw));
	if (!sw)
		return;
	sw->catchup = catchup;
	snprintf(wbuf, sizeof(wbuf), "%llu", (unsigned long long)(g_have_w ? g_w : 0));
	/* After a server restart the catch-up goes by id (see on_swept); otherwise no id floor. */
	snprintf(fbuf, sizeof(fbuf), "%lld",
	         g_restart_floor_id >= 0 ? g_restart_floor_id : LLONG_MAX);
	g_sweep_in_flight = true;
	/* A catch-up goes ahead of queued replays and policy checks: live events wait for it. */
	if ((catchup ? pgc_query_first : pgc_query)(
	        g_query,
	        "SELECT pg_snapshot_xmin(pg_current_snapshot())::text, e.id, e.xid::text, "
	        "clock_timestamp() - e.created_at < interval '1 second', "
	        "pg_postmaster_start_time()::text, pg_snapshot_xmax(pg_current_snapshot())::text, "
	        "$1::text::xid8 = '0'::xid8 AND NOT EXISTS (SELECT 1 FROM realtime.events), "
	        "CASE WHEN $1::text::xid8 = '0'::xid8 THEN (SELECT coalesce(max(id), 0) "
	        "FROM realtime.events)::text END, "
	        "CASE WHEN $1::text::xid8 = '0'::xid8 THEN NOT EXISTS (SELECT 1 FROM "
	        "realtime.events o, (SELECT id, xid, snap_xmin FROM realtime.events ORDER BY id "
	        "DESC LIMIT 1) t WHERE o.xid >= t.snap_xmin AND o.id < t.id AND o.xid <> t.xid) "
	        "END "
	        "FROM (SELECT 1) s LEFT JOIN realtime.events e "
	        "ON ($1::text::xid8 > '0'::xid8 AND e.xid >= $1::text::xid8) "
	        "OR e.id > $2::bigint ORDER BY e.id",
	        2, p, QUERY_TIMEOUT_MS, on_swept, sw) < 0) {
		g_sweep_in_flight = false;
		free(sw);
	}
}

static void update_state(void)
{
	metrics.pg_up = g_listening && pgc_is_up(g_query);
}

static void on_sweep_timer(uv_timer_t *t)
{
	cache_expire(false);
	sweep(g_need_catchup);
}

static void on_listened(void *arg, const PGresult *res, const char *err)
{
	if (!res) {
		log_error("LISTEN failed", "reason", err);
		return;
	}
	g_listening = true;
	g_need_catchup = true;
	if (g_have_w) {
		/* A reconnect: hold live events until the missed ones are out. */
		g_hold_live = true;
		uv_timer_start(&g_hold_timer, on_hold_expired, HOLD_LIVE_MAX_MS, 0);
	}
	update_state();
	sweep(true);
}

static void listener_up(struct pgc *pc, void *arg)
{
	pgc_query(pc, "LISTEN " CHANNEL, 0, NULL, QUERY_TIMEOUT_MS, on_listened, NULL);
	pgwatch_listener_up();
	pglisten_listener_up();
	/* After a restart the two connections back off independently; the query connection may
	 * be seconds from its next attempt while the catch-up (and live events held behind it)
	 * needs it now. The server is evidently back: skip the rest of its backoff. */
	pgc_retry_now(g_query, "listener connected");
}

static void listener_down(struct pgc *pc, void *arg)
{
	g_listening = false;
	pgwatch_listener_down();
	pglisten_listener_down();
	metrics.pg_reconnects++;
	update_state();
}

static void flush_waiting(bool expire_only);
static void fail_replay(struct rquery *q);

static void query_up(struct pgc *pc, void *arg)
{
	/* The same the other way round: events are delivered only once the listener is back. */
	pgc_retry_now(g_listen, "query connection connected");
	update_state();
	flush_waiting(false);
	if (g_need_catchup)
		sweep(true);
	pgwatch_query_up();
}

static void query_down(struct pgc *pc, void *arg)
{
	update_state();
}

/* ---- retention ---- */

static void on_pruned(void *arg, const PGresult *res, const char *err)
{
	if (!res)
		log_warn("realtime.prune failed", "reason", err);
	else if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0"))
		log_info("outbox pruned", "rows", PQgetvalue(res, 0, 0));
}

static void on_prune_timer(uv_timer_t *t)
{
	char secs[24];
	const char *p[1] = {secs};
	snprintf(secs, sizeof(secs), "%ld", g_cfg->outbox_retention_s);
	pgc_query(g_query, "SELECT realtime.prune(make_interval(secs => $1::int))", 1, p,
	          QUERY_TIMEOUT_MS, on_pruned, NULL);
}

/* ---- public ---- */

int pgl_start(const struct config *cfg, uv_loop_t *loop, pgl_deliver_fn deliver)
{
	g_deliver = deliver;
	struct pgc_hooks lh = {listener_up, listener_down, on_notify, NULL};
	struct pgc_hooks qh = {query_up, query_down, NULL, NULL};

	g_cfg = cfg;
	if (!cfg->database_url || !*cfg->database_url)
		return 0;
	g_enabled = true;
	recent_setup((size_t)cfg->recent_per_room, (size_t)cfg->recent_max_bytes);
	g_listen = pgc_start(loop, cfg->database_url, "listener", &lh);
	g_query = pgc_start(loop, cfg->database_url, "query", &qh);
	if (!g_listen || !g_query)
		return -1;
	uv_timer_init(loop, &g_sweep_timer);
	uv_timer_init(loop, &g_prune_timer);
	uv_timer_init(loop, &g_wait_timer);
	uv_timer_init(loop, &g_hold_timer);
	uv_timer_init(loop, &g_hz_timer);
	uv_timer_start(&g_sweep_timer, on_sweep_timer, SWEEP_EVERY_MS, SWEEP_EVERY_MS);
	uv_timer_start(&g_prune_timer, on_prune_timer, 5000, PRUNE_EVERY_MS);
	pgwatch_start(cfg, loop, g_listen, g_query);
	pglisten_start(cfg, g_listen);
	return 0;
}

void pgl_stop(void)
{
	struct seen *s, *tmp;

	if (!g_enabled)
		return;
	uv_close((uv_handle_t *)&g_sweep_timer, NULL);
	uv_close((uv_handle_t *)&g_prune_timer, NULL);
	uv_close((uv_handle_t *)&g_wait_timer, NULL);
	uv_close((uv_handle_t *)&g_hold_timer, NULL);
	uv_close((uv_handle_t *)&g_hz_timer, NULL);
	while (g_waiting) {
		struct rquery *q = g_waiting;
		g_waiting = q->next;
		fail_replay(q);
	}
	cache_expire(true);
	while (g_hz_next) {
		struct mwait *w = g_hz_next;
		struct pgl_replay_page page = {0};
		g_hz_next = w->next;
		w->cb(w->arg, w->room, false, false, NULL, NULL, 0, &page);
		free(w);
	}
	g_hz_tail = &g_hz_next;
	recent_shutdown();
	pgwatch_stop();
	pglisten_stop();
	pgc_stop(g_listen);
	pgc_stop(g_query);
	g_listen = g_query = NULL;
	g_listening = false;
	while (g_in_head) {
		struct inbound *in = g_in_head;
		g_in_head = in->next;
		free(in->json);
		free(in);
	}
	g_in_tail = NULL;
	HASH_ITER(hh, g_seen, s, tmp)
	{
		HASH_DEL(g_seen, s);
		free(s);
	}
	g_enabled = false;
	g_pos_id = g_cand_id = -1;
	g_sweep_claims = 0;
	g_pos_block_xid = 0;
}

bool pgl_enabled(void)
{
	return g_enabled;
}

const char *pgl_state(void)
{
	if (!g_enabled)
		return "disabled";
	return g_listening && pgc_is_up(g_query) ? "up" : "down";
}

/* ---- replay ---- */

/* Builds the room message of an outbox event (realtime.event_json text) for room: replayed
 * events are byte-identical to live ones. Returns NULL when unreadable or out of memory. */
static struct frame *event_frame(const char *room, const char *json, size_t len)
{
	json_object *o = parse_json(json, len), *id_o;
	struct frame *f = NULL;
	char id_raw[24];

	if (o && json_object_object_get_ex(o, "id", &id_o)) {
		snprintf(id_raw, sizeof(id_raw), "%lld", (long long)json_object_get_int64(id_o));
		f = proto_event_envelope(id_raw,
		                         str_field(o, "event") ? str_field(o, "event") : "event",
		                         room, str_field(o, "ts") ? str_field(o, "ts") : "",
		                         raw_field(o, "data"), raw_field(o, "meta"));
		if (f)
			f->flags |= FRAME_ROOM_MSG;
	}
	json_object_put(o);
	return f;
}

/* Hands a page to one asker, with its own references to the frames, and frees rp. */
static void replay_give(struct rquery *q, struct replay *rp, bool ok, bool recovered,
                        const long long *ids, struct frame **frames, size_t n,
                        const struct pgl_replay_page *page)
{
	for (size_t i = 0; i < n; i++)
		frame_ref(frames[i]);
	if (rp->hcb)
		rp->hcb(rp->harg, ok, recovered, frames, n, page->more);
	else
		rp->cb(rp->arg, q->room, ok, recovered, ids, frames, n, page);
	free(rp);
}

/* Hands a page to each asker of q. Askers may ask again from their callbacks. */
static void rquery_answer(struct rquery *q, bool ok, bool recovered, const long long *ids,
                          struct frame **frames, size_t n, const struct pgl_replay_page *page)
{
	while (q->waiters) {
		struct replay *rp = q->waiters;
		q->waiters = rp->next;
		replay_give(q, rp, ok, recovered, ids, frames, n, page);
	}
}

static void rquery_close(struct rquery *q)
{
	struct rquery *f;
	HASH_FIND(hh, g_open, q->key, strlen(q->key), f);
	if (f == q)
		HASH_DEL(g_open, q);
}

/* Frees an answered query kept for later asks. */
static void cache_free(struct rquery *q)
{
	for (struct rquery **pp = &g_cached; *pp; pp = &(*pp)->next)
		if (*pp == q) {
			*pp = q->next;
			g_ncached--;
			break;
		}
	rquery_close(q);
	for (size_t i = 0; i < q->n; i++)
		frame_unref(q->frames[i]);
	free(q->ids);
	free(q->frames);
	free((void *)q->page.owed);
	free(q);
}

/* Drops the kept answers: all of them once an event was delivered (all = false: those past
 * REPLAY_CACHE_MS). */
static void cache_expire(bool all)
{
	uint64_t now = util_now_ns();
	struct rquery *q = g_cached, *next;

	for (; q; q = next) {
		next = q->next;
		if (all || now - q->answered_ns >= (uint64_t)REPLAY_CACHE_MS * 1000000ull)
			cache_free(q);
	}
}

bool pgl_delivered(long long id, uint64_t xid)
{
	struct seen *s;

	HASH_FIND(hh, g_seen, &id, sizeof(id), s);
	if (s)
		return s->delivered;
	/* Forgotten: below W, so delivered, unless it still waits in the inbound queue (a sweep
	 * skips events already seen there and may move W past them). */
	if (!g_have_w || xid >= g_w)
		return false;
	for (struct inbound *in = g_in_head; in; in = in->next)
		if (in->id == id)
			return false;
	return true;
}

bool pgl_position(long long *id)
{
	if (!g_enabled || g_pos_id < 0)
		return false;
	*id = g_pos_id;
	if (g_pos_mem)
		recent_note_position(g_pos_id, g_pos_seq);
	return true;
}

bool pgl_caught_up(uint64_t xid)
{
	return g_have_w && xid < g_w && !g_in_head;
}

/* The transaction of an event from its realtime.event_json text, which starts
 * {"id":N,"xid":"X" (UINT64_MAX when it does not). */
static uint64_t event_xid(const char *json)
{
	const char *p = strncmp(json, "{\"id\":", 6) ? NULL : json + 6;
	char *end;
	unsigned long long x;

	if (!p)
		return UINT64_MAX;
	while (*p >= '0' && *p <= '9')
		p++;
	if (strncmp(p, ",\"xid\":\"", 8))
		return UINT64_MAX;
	x = strtoull(p + 8, &end, 10);
	return end == p + 8 || *end != '"' ? UINT64_MAX : (uint64_t)x;
}

/* Sets page->owed to the events of the replay rows (ids[0..n), ids ascending) this process has
 * not delivered yet: the replay query saw them committed, their live copies are still to come
 * (session.c drops those for the asker). The answer holds while no event is delivered, which
 * is as long as a page is shared (see replay_ask). False when out of memory. */
static bool find_owed(const PGresult *res, const long long *ids, size_t n,
                      struct pgl_replay_page *page)
{
	struct pgl_owed *owed = NULL;
	size_t k = 0, j = 0;

	for (int i = 0; i < PQntuples(res) && j < n; i++) {
		long long id;
		uint64_t xid;
		if (PQgetisnull(res, i, 1))
			continue;
		id = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		if (id != ids[j])
			continue; /* its frame could not be built: not replayed */
		j++;
		xid = event_xid(PQgetvalue(res, i, 2));
		if (pgl_delivered(id, xid))
			continue;
		if (!owed && !(owed = malloc((n - j + 1) * sizeof(*owed))))
			return false;
		owed[k].id = id;
		owed[k].xid = xid;
		k++;
	}
	page->owed = owed;
	page->nowed = k;
	return true;
}

static void on_replay(void *arg, const PGresult *res, const char *err)
{
	struct rquery *q = arg;
	long long *ids = NULL, pruned;
	struct frame **frames = NULL;
	struct pgl_replay_page page = {.top = q->top};
	size_t n = 0, rows = 0;
	bool recovered = false, ok;

	if (!res || PQntuples(res) < 1) {
		rquery_close(q);
		log_warn(q->history ? "history failed" : "replay failed", "room", q->room, "reason",
		         err ? err : "no rows");
		rquery_answer(q, false, false, NULL, NULL, 0, &page);
		free(q);
		return;
	}
	/* Nothing after since (after, on later pages) may have been pruned or deleted. */
	pruned = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	recovered = (q->since > q->after ? q->since : q->after) >= pruned;
	if (!q->top) {
		page.total = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
		page.top = strtoll(PQgetvalue(res, 0, 4), NULL, 10);
	}
	ids = calloc((size_t)PQntuples(res), sizeof(*ids));
	frames = calloc((size_t)PQntuples(res), sizeof(*frames));
	for (int i = 0; ids && frames && i < PQntuples(res); i++) {
		if (PQgetisnull(res, i, 1))
			continue;
		rows++;
		page.last = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		ids[n] = page.last;
		frames[n] =
		    event_frame(q->room, PQgetvalue(res, i, 2), (size_t)PQgetlength(res, i, 2));
		if (frames[n])
			n++;
	}
	/* A full page may have a successor, which starts after the last row read (kept or not). */
	page.more = rows == (size_t)q->limit;
	ok = ids && frames;
	if (ok && !q->history && !find_owed(res, ids, n, &page)) {
		for (size_t i = 0; i < n; i++)
			frame_unref(frames[i]);
		n = 0;
		ok = false;
	}
	if (ok && !q->history && !q->top && q->sent_seq == *room_seq(q->room) &&
	    g_ncached < REPLAY_CACHE_MAX) {
		q->answered = true;
		q->answered_ns = util_now_ns();
		q->recovered = recovered;
		q->ids = ids;
		q->frames = frames;
		q->n = n;
		q->page = page;
		q->next = g_cached;
		g_cached = q;
		g_ncached++;
		rquery_answer(q, ok, recovered, ids, frames, n, &page);
		return;
	}
	rquery_close(q);
	rquery_answer(q, ok, recovered, ids, frames, n, &page);
	for (size_t i = 0; i < n; i++)
		frame_unref(frames[i]);
	free(ids);
	free(frames);
	free((void *)page.owed);
	free(q);
}

/* The events of room $1 a client that saw $2 may have missed: ids above it, plus smaller ids
 * whose transaction was still open when $2 was inserted (bounded by that row's snap_xmin: the
 * floor), except those of $2's own transaction, which committed with it (without that, a page
 * after an event of a large transaction would repeat the whole transaction, and history paged
 * by the last id would never advance). The client may get a few it already had; it has their
 * ids. */
#define REPLAY_WHERE                                                                               \
	"e.rooms @> ARRAY[$1]::text[] AND (e.id > $2::bigint OR (e.id < $2::bigint AND "           \
	"e.xid >= (SELECT snap_xmin FROM fl) AND e.xid IS DISTINCT FROM (SELECT xid FROM fl "      \
	"WHERE id = $2::bigint)))"
#define REPLAY_FLOOR                                                                               \
	"WITH fl AS (SELECT id, xid, snap_xmin FROM realtime.events WHERE id >= $2::bigint "       \
	"ORDER BY id LIMIT 1)"

/* Sent as a shared read (PGC_SHARED): with --workers the feed runs an identical query of
 * several workers (the members of one room are spread over them) once while it is still
 * queued, which is safe for the reason a query not yet sent may be joined here; and a replay
 * waiting behind a storm of others is not failed for the wait. */
static int send_replay(struct rquery *q)
{
	char sbuf[24], limit[24], after[24], top[24];
	const char *p[5] = {q->room, sbuf, limit, after, top};
	int rc;

	snprintf(sbuf, sizeof(sbuf), "%lld", q->since);
	snprintf(limit, sizeof(limit), "%d", q->limit);
	snprintf(after, sizeof(after), "%lld", q->after);
	snprintf(top, sizeof(top), "%lld", q->top);
	if (!q->top)
		/* The first page also counts the replay and fixes its top, in one snapshot:
		 * later ids arrive live (held back until the replay is out). */
		rc = pgc_query_shared(
		    g_query,
		    REPLAY_FLOOR
		    ", m AS (SELECT count(*) AS n, coalesce(max(e.id), 0) "
		    "AS top FROM realtime.events e WHERE " REPLAY_WHERE ") "
		    "SELECT (SELECT pruned_through FROM realtime.outbox_state)::text, "
		    "e.id, realtime.event_json(e), m.n, m.top FROM m LEFT JOIN LATERAL ("
		    "SELECT * FROM realtime.events e WHERE " REPLAY_WHERE
		    " AND e.id <= m.top ORDER BY e.id LIMIT $3::int) e ON true "
		    "ORDER BY e.id",
		    3, p, QUERY_TIMEOUT_MS, on_replay, q);
	else
		rc = pgc_query_shared(g_query,
		                      REPLAY_FLOOR
		                      " SELECT (SELECT pruned_through FROM "
		                      "realtime.outbox_state)::text, e.id, realtime.event_json(e) "
		                      "FROM (SELECT 1) s LEFT JOIN LATERAL (SELECT * FROM "
		                      "realtime.events e WHERE " REPLAY_WHERE
		                      " AND e.id > $4::bigint AND e.id <= $5::bigint ORDER BY e.id "
		                      "LIMIT $3::int) e ON true ORDER BY e.id",
		                      5, p, QUERY_TIMEOUT_MS, on_replay, q);
	if (rc == 0) {
		q->sent = true;
		q->sent_seq = *room_seq(q->room);
		if (!q->history)
			g_replay_queries++;
	}
	return rc;
}

/* Fails a query that could not be sent (its askers see ok=false) and frees it. */
static void fail_replay(struct rquery *q)
{
	struct pgl_replay_page page = {.top = q->top};

	rquery_close(q);
	rquery_answer(q, false, false, NULL, NULL, 0, &page);
	free(q);
}

/* Sends the queries that waited for the query connection, or fails those past their wait. */
static void flush_waiting(bool expire_only)
{
	struct rquery **pp = &g_waiting, *ready = NULL, **rtail = &ready;
	uint64_t now = util_now_ns();

	/* Unlinked first: answering runs callbacks, which may queue more. */
	while (*pp) {
		struct rquery *q = *pp;
		if ((!expire_only && pgc_is_up(g_query)) || now >= q->wait_until_ns) {
			*pp = q->next;
			q->next = NULL;
			*rtail = q;
			rtail = &q->next;
		} else {
			pp = &q->next;
		}
	}
	while (ready) {
		struct rquery *q = ready;
		ready = q->next;
		if (expire_only || !pgc_is_up(g_query) || send_replay(q) < 0)
			fail_replay(q);
	}
	if (!g_waiting)
		uv_timer_stop(&g_wait_timer);
}

static void on_wait_timer(uv_timer_t *t)
{
	flush_waiting(!pgc_is_up(g_query));
}

/* Adds an asker to the open query for the same page, or starts one: sent now, or parked for
 * the query connection. Returns -1 (rp not kept) when neither. */
static int replay_ask(const char *room, long long since, long long after, long long top, int limit,
                      bool history, struct replay *rp)
{
	char key[ROOM_NAME_MAX + 96];
	struct rquery *q;
	int kl = snprintf(key, sizeof(key), "%c%lld/%lld/%lld/%d/%s", history ? 'h' : 'r', since,
	                  after, top, limit, room);

	if (kl <= 0 || (size_t)kl >= sizeof(key))
		return -1;
	HASH_FIND(hh, g_open, key, (size_t)kl, q);
	if (q && q->answered && q->sent_seq == *room_seq(q->room) &&
	    util_now_ns() - q->answered_ns < (uint64_t)REPLAY_CACHE_MS * 1000000ull) {
		g_replays_coalesced++;
		replay_give(q, rp, true, q->recovered, q->ids, q->frames, q->n, &q->page);
		return 0;
	}
	if (q && q->answered) {
		cache_free(q);
		q = NULL;
	}
	if (q && (!q->sent || q->sent_seq == *room_seq(q->room))) {
		*q->tail = rp;
		q->tail = &rp->next;
		if (!history)
			g_replays_coalesced++;
		return 0;
	}
	if (q) /* too old to join: the next ask of this page starts from the new one */
		HASH_DEL(g_open, q);
	if (!(q = calloc(1, sizeof(*q))))
		return -1;
	memcpy(q->key, key, (size_t)kl + 1);
	snprintf(q->room, sizeof(q->room), "%s", room);
	q->since = since;
	q->after = after;
	q->top = top;
	q->limit = limit;
	q->history = history;
	q->waiters = rp;
	q->tail = &rp->next;
	if (pgc_is_up(g_query)) {
		if (send_replay(q) < 0) {
			free(q);
			return -1;
		}
	} else {
		/* Just after a restart clients rejoin before the query connection is up; a short
		 * wait beats telling them the gap is lost. */
		q->wait_until_ns = util_now_ns() + (uint64_t)REPLAY_WAIT_MS * 1000000ull;
		q->next = g_waiting;
		g_waiting = q;
		if (!uv_is_active((uv_handle_t *)&g_wait_timer))
			uv_timer_start(&g_wait_timer, on_wait_timer, 100, 100);
	}
	HASH_ADD(hh, g_open, key, (size_t)kl, q);
	if (!history)
		g_replays_query++;
	return 0;
}

/* ---- replay from the recent memory ---- */

/* Whether the delivery state lets the memory answer: listening, the catch-up done, nothing held
 * or waiting in the inbound queue. Then every event the memory lacks is still to be delivered,
 * live, to the asker too (it is in the room already). */
static bool memory_usable(void)
{
	return recent_enabled() && g_listening && pgc_is_up(g_query) && g_have_w &&
	       !g_need_catchup && !g_hold_live && !g_in_head;
}

static void hz_send(void);

/* The horizon read: recovered is the query's rule (since >= pruned_through), read after the
 * join as the query would. Each waiting ask is answered from the memory when it still covers
 * since, else by an outbox query. */
static void on_horizon(void *arg, const PGresult *res, const char *err)
{
	struct mwait *w = arg;
	long long pruned = -1;

	g_hz_in_flight = false;
	if (res && PQntuples(res) == 1)
		pruned = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	else
		log_warn("replay horizon read failed", "reason", err ? err : "no rows");
	while (w) {
		struct mwait *next = w->next;
		struct pgl_replay_page page = {0};
		long long *ids;
		struct frame **frames;
		size_t n;
		struct replay *rp;

		if (pruned < 0) {
			w->cb(w->arg, w->room, false, false, NULL, NULL, 0, &page);
		} else if (w->since >= pruned && memory_usable() &&
		           recent_lookup(w->room, w->since, pruned, event_frame, &ids, &frames,
		                         &n) == 1) {
			page.total = (long long)n;
			page.last = n ? ids[n - 1] : 0;
			page.top = n ? ids[n - 1] : w->since;
			g_replays_memory++;
			w->cb(w->arg, w->room, true, true, ids, frames, n, &page);
			free(ids);
			free(frames);
		} else if ((rp = calloc(1, sizeof(*rp)))) {
			rp->arg = w->arg;
			rp->cb = w->cb;
			if (replay_ask(w->room, w->since, 0, 0, REPLAY_PAGE, false, rp) < 0) {
				free(rp);
				w->cb(w->arg, w->room, false, false, NULL, NULL, 0, &page);
			}
		} else {
			w->cb(w->arg, w->room, false, false, NULL, NULL, 0, &page);
		}
		free(w);
		w = next;
	}
	hz_send();
}

static void on_hz_timer(uv_timer_t *t)
{
	hz_send();
}

/* Sends the horizon read for the asks waiting, unless one is in flight or was sent less than
 * HZ_SPACING_MS ago (they wait for the next: one read serves every ask that joined before it
 * was sent). A shared read: with --workers the feed runs identical queued ones once. */
static void hz_send(void)
{
	struct mwait *batch = g_hz_next;
	uint64_t now = util_now_ns(), next = g_hz_sent_ns + (uint64_t)HZ_SPACING_MS * 1000000ull;

	if (g_hz_in_flight || !batch)
		return;
	if (g_hz_sent_ns && now < next) {
		if (!uv_is_active((uv_handle_t *)&g_hz_timer))
			uv_timer_start(&g_hz_timer, on_hz_timer, (next - now) / 1000000ull + 1, 0);
		return;
	}
	g_hz_next = NULL;
	g_hz_tail = &g_hz_next;
	if (pgc_query_shared(g_query, "SELECT pruned_through::text FROM realtime.outbox_state", 0,
	                     NULL, QUERY_TIMEOUT_MS, on_horizon, batch) < 0) {
		on_horizon(batch, NULL, "query connection down");
		return;
	}
	g_hz_in_flight = true;
	g_hz_sent_ns = now;
	g_horizon_reads++;
}

/* Parks a first page the memory covers until the next horizon read. Returns false when the
 * memory cannot answer it (the caller asks the outbox). */
static bool replay_from_memory(void *arg, const char *room, long long since, pgl_replay_fn cb)
{
	struct mwait *w;

	if (!memory_usable() || !recent_covers(room, since) || !(w = calloc(1, sizeof(*w))))
		return false;
	w->arg = arg;
	w->cb = cb;
	w->since = since;
	snprintf(w->room, sizeof(w->room), "%s", room);
	*g_hz_tail = w;
	g_hz_tail = &w->next;
	hz_send();
	return true;
}

int pgl_replay(void *arg, const char *room, long long since, long long after, long long top,
               pgl_replay_fn cb)
{
	struct replay *rp;

	if (!g_enabled)
		return -1;
	if (!after && !top && replay_from_memory(arg, room, since, cb))
		return 0;
	if (!(rp = calloc(1, sizeof(*rp))))
		return -1;
	rp->arg = arg;
	rp->cb = cb;
	if (replay_ask(room, since, after, top, REPLAY_PAGE, false, rp) < 0) {
		free(rp);
		return -1;
	}
	return 0;
}

int pgl_history(const char *room, long long since, int limit, pgl_history_fn cb, void *arg)
{
	struct replay *rp;

	if (!g_enabled || !(rp = calloc(1, sizeof(*rp))))
		return -1;
	rp->hcb = cb;
	rp->harg = arg;
	if (replay_ask(room, since, 0, 0, limit, true, rp) < 0) {
		free(rp);
		return -1;
	}
	return 0;
}

void pgl_metrics(struct buf *b)
{
	if (!g_enabled)
		return;
	buf_printf(b,
	           "# HELP roomcast_replay_queries_total Outbox queries sent for joins with since "
	           "(one per page, shared by every joiner it answers).\n"
	           "# TYPE roomcast_replay_queries_total counter\n"
	           "roomcast_replay_queries_total %llu\n"
	           "# HELP roomcast_replays_total Replay pages for joins with since, by how they "
	           "were served.\n"
	           "# TYPE roomcast_replays_total counter\n"
	           "roomcast_replays_total{source=\"query\"} %llu\n"
	           "roomcast_replays_total{source=\"coalesced\"} %llu\n"
	           "roomcast_replays_total{source=\"memory\"} %llu\n"
	           "# HELP roomcast_replay_horizon_reads_total Reads of the outbox horizon for "
	           "replays answered from the recent-events memory (one per batch of joins).\n"
	           "# TYPE roomcast_replay_horizon_reads_total counter\n"
	           "roomcast_replay_horizon_reads_total %llu\n"
	           "# HELP roomcast_recent_bytes Bytes held by the recent-events memory.\n"
	           "# TYPE roomcast_recent_bytes gauge\n"
	           "roomcast_recent_bytes %zu\n"
	           "# HELP roomcast_recent_rooms Rooms with events in the recent-events memory.\n"
	           "# TYPE roomcast_recent_rooms gauge\n"
	           "roomcast_recent_rooms %zu\n",
	           (unsigned long long)g_replay_queries, (unsigned long long)g_replays_query,
	           (unsigned long long)g_replays_coalesced, (unsigned long long)g_replays_memory,
	           (unsigned long long)g_horizon_reads, recent_bytes(), recent_rooms());
}

/* ---- policy ---- */

struct verdict_req {
	char room[ROOM_NAME_MAX + 1];
	pgl_verdict_fn cb;
	void *arg;
};

static void on_verdict(void *arg, const PGresult *res, const char *err)
{
	struct verdict_req *vr = arg;
	int verdict = !res ? -1 : PQntuples(res) == 1 && PQgetvalue(res, 0, 0)[0] == 't';

	if (!res)
		log_warn("realtime.can_join failed", "room", vr->room, "reason", err);
	vr->cb(vr->arg, vr->room, verdict);
	free(vr);
}

int pgl_can_join(const char *claims_json, const char *room, pgl_verdict_fn cb, void *arg)
{
	struct verdict_req *vr;
	const char *p[2] = {claims_json ? claims_json : "{}", room};

	if (!pgc_is_up(g_query) || !(vr = calloc(1, sizeof(*vr))))
		return -1;
	snprintf(vr->room, sizeof(vr->room), "%s", room);
	vr->cb = cb;
	vr->arg = arg;
	if (pgc_query(g_query, "SELECT realtime.can_join($1::jsonb, $2)", 2, p, POLICY_TIMEOUT_MS,
	              on_verdict, vr) < 0) {
		free(vr);
		return -1;
	}
	return 0;
}

/* ---- identity from the database ---- */

struct ident_req {
	void *arg;
	pgl_identity_fn cb;
};

/* realtime.identity answers {"seller_id": int|null, "client_id": int|null}. */
static void on_identity(void *arg, const PGresult *res, const char *err)
{
	struct ident_req *ir = arg;
	json_object *o = NULL, *v;
	char seller[24] = "", client[24] = "";
	bool ok = res && PQntuples(res) == 1 && !PQgetisnull(res, 0, 0) &&
	          (o = parse_json(PQgetvalue(res, 0, 0), (size_t)PQgetlength(res, 0, 0))) &&
	          json_object_is_type(o, json_type_object);

	if (ok && json_object_object_get_ex(o, "seller_id", &v) && json_object_get_int64(v) > 0)
		snprintf(seller, sizeof(seller), "%lld", (long long)json_object_get_int64(v));
	if (ok && json_object_object_get_ex(o, "client_id", &v) && json_object_get_int64(v) > 0)
		snprintf(client, sizeof(client), "%lld", (long long)json_object_get_int64(v));
	json_object_put(o);
	ir->cb(ir->arg, ok, seller, client, ok ? NULL : err ? err : "unexpected answer");
	free(ir);
}

int pgl_identity(const char *claims_json, const char *user_id, const char *role, pgl_identity_fn cb,
                 void *arg)
{
	struct ident_req *ir;
	json_object *o = NULL;
	const char *p[1] = {claims_json};
	int rc = -1;

	if (!pgc_is_up(g_query) || !(ir = calloc(1, sizeof(*ir))))
		return -1;
	if (!p[0]) {
		/* Claims are kept only for AUTHZ=sql; the lookup needs just the subject and role.
		 */
		o = json_object_new_object();
		json_object_object_add(o, "sub", json_object_new_string(user_id));
		json_object_object_add(o, "role", json_object_new_string(role));
		p[0] = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	}
	ir->arg = arg;
	ir->cb = cb;
	if (p[0] && pgc_query(g_query, "SELECT realtime.identity($1::jsonb)::text", 1, p,
	                      POLICY_TIMEOUT_MS, on_identity, ir) == 0) {
		rc = 0;
	} else {
		free(ir);
	}
	json_object_put(o);
	return rc;
}

/* ---- persistent notify ---- */

struct publish_req {
	pgl_published_fn cb;
	void *arg;
};

static void on_published(void *arg, const PGresult *res, const char *err)
{
	struct publish_req *pr = arg;
	if (res && PQntuples(res) == 1)
		pr->cb(pr->arg, strtoll(PQgetvalue(res, 0, 0), NULL, 10), NULL);
	else
		pr->cb(pr->arg, 0, err ? err : "no id returned");
	free(pr);
}

int pgl_publish(const char *event, const char *room, const char *data_json, pgl_published_fn cb,
                void *arg)
{
	struct publish_req *pr;
	const char *p[3] = {event, room, data_json};

	if (!pgc_is_up(g_query) || !(pr = calloc(1, sizeof(*pr))))
		return -1;
	pr->cb = cb;
	pr->arg = arg;
	if (pgc_query(g_query,
	              "SELECT realtime.publish($1, ARRAY[$2]::text[], $3::jsonb, "
	              "'{\"source\":\"notify\"}'::jsonb)",
	              3, p, QUERY_TIMEOUT_MS, on_published, pr) < 0) {
		free(pr);
		return -1;
	}
	return 0;
}
