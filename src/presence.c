/* Presence bookkeeping: the cluster-wide table (room -> user -> connections per replica), the
 * room hooks that feed it with this replica's joins and leaves, the changes and snapshots
 * exchanged with the other replicas on `roomcast:ctl` (one message per change of a user's
 * connection count in a room on a replica: the Redis cost follows changes, never queries), the
 * liveness sweep that drops a silent replica's members, and the presence_join/leave events. */
#include "presence.h"
#include "buf.h"
#include "frame.h"
#include "log.h"
#include "proto.h"
#include "redisbus.h"
#include "room.h"
#include "util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

#define MAX_NODES    256
#define TICK_MS      200
#define SNAP_CHUNK   32768 /* bytes of one snapshot message */
#define NODE_NAME_SZ 64

struct pcount {
	uint16_t node;
	uint32_t conns;
};

struct puser {
	UT_hash_handle hh;
	struct pcount *per; /* per replica with connections */
	uint16_t nper, capper;
	uint32_t total;
	bool leaving; /* total 0, presence_leave due at leave_at_ns unless one comes back */
	uint64_t leave_at_ns;
	char user[];
};

struct proom {
	UT_hash_handle hh;
	struct puser *users;
	uint32_t nusers;               /* users with total > 0 */
	struct room_member **watchers; /* local members that joined with presence:true */
	uint32_t nwatch, capwatch;
	uint32_t nleaving;
	char name[];
};

static struct presence_members g_members;

static struct {
	const struct config *cfg;
	bool redis, running;
	uv_timer_t tick;
	struct proom *rooms;
	struct {
		char name[NODE_NAME_SZ];
		uint64_t last_ns;
		uint64_t entries; /* (room, user) pairs with connections on it */
	} nodes[MAX_NODES];
	int nnodes;
	uint64_t nleaving;
	uint64_t published; /* messages published on roomcast:ctl (changes, snapshot chunks) */
	uint64_t events;    /* presence_join / presence_leave frames queued */
} g;

/* ---- replicas ---- */

static int node_index(const char *name, bool create)
{
	for (int i = 0; i < g.nnodes; i++)
		if (!strcmp(g.nodes[i].name, name))
			return i;
	if (!create || g.nnodes == MAX_NODES)
		return -1;
	snprintf(g.nodes[g.nnodes].name, NODE_NAME_SZ, "%s", name);
	g.nodes[g.nnodes].entries = 0;
	g.nodes[g.nnodes].last_ns = util_now_ns();
	return g.nnodes++;
}

/* ---- events ---- */

static void send_event(struct proom *r, const char *type, const char *user)
{
	struct buf b;
	struct frame *f;

	if (!r->nwatch)
		return;
	/* Rooms above the limit send no per-user changes. */
	if (r->nusers > (uint32_t)g.cfg->presence_max_members)
		return;
	buf_init(&b);
	buf_printf(&b, "{\"type\":\"%s\",\"payload\":{\"room\":", type);
	buf_json_str(&b, r->name, strlen(r->name));
	buf_puts(&b, ",\"user\":");
	buf_json_str(&b, user, strlen(user));
	buf_puts(&b, "}}");
	f = b.failed ? NULL : frame_new(b.data, b.len);
	buf_free(&b);
	if (!f)
		return;
	for (uint32_t i = 0; i < r->nwatch; i++)
		g_members.send(r->watchers[i], f);
	g.events += r->nwatch;
	frame_unref(f);
}

/* ---- the table ---- */

static void room_maybe_free(struct proom *r)
{
	if (r->users || r->nwatch)
		return;
	HASH_DEL(g.rooms, r);
	free(r->watchers);
	free(r);
}

static void user_free(struct proom *r, struct puser *u)
{
	if (u->leaving) {
		r->nleaving--;
		g.nleaving--;
	}
	HASH_DEL(r->users, u);
	free(u->per);
	free(u);
}

/* Sets the connections of user in room on replica node (0: none) and runs the transitions:
 * a user's first connection anywhere announces presence_join (unless it comes back within
 * PRESENCE_FLAP_MS of leaving), its last one schedules presence_leave. */
static void set_count(const char *room, const char *user, int node, uint32_t conns)
{
	struct proom *r;
	struct puser *u;
	uint32_t before;
	int i;

	HASH_FIND_STR(g.rooms, room, r);
	if (!r) {
		size_t len = strlen(room);
		if (!conns || !(r = calloc(1, sizeof(*r) + len + 1)))
			return;
		memcpy(r->name, room, len + 1);
		HASH_ADD_KEYPTR(hh, g.rooms, r->name, len, r);
	}
	HASH_FIND_STR(r->users, user, u);
	if (!u) {
		size_t len = strlen(user);
		if (!conns || !(u = calloc(1, sizeof(*u) + len + 1))) {
			room_maybe_free(r);
			return;
		}
		memcpy(u->user, user, len + 1);
		HASH_ADD_KEYPTR(hh, r->users, u->user, len, u);
	}
	before = u->total;
	for (i = 0; i < u->nper && u->per[i].node != node; i++)
		;
	if (i == u->nper) {
		if (!conns)
			return;
		if (u->nper == u->capper) {
			uint16_t ncap = u->capper ? u->capper * 2 : 1;
			struct pcount *np = realloc(u->per, ncap * sizeof(*np));
			if (!np)
				return;
			u->per = np;
			u->capper = ncap;
		}
		u->per[u->nper].node = (uint16_t)node;
		u->per[u->nper].conns = 0;
		u->nper++;
		g.nodes[node].entries++;
	}
	u->total = u->total - u->per[i].conns + conns;
	u->per[i].conns = conns;
	if (!conns) {
		u->per[i] = u->per[--u->nper];
		g.nodes[node].entries--;
	}
	if (!before && u->total) {
		r->nusers++;
		if (u->leaving) {
			u->leaving = false; /* back within the flap window: nothing to say */
			r->nleaving--;
			g.nleaving--;
		} else {
			send_event(r, "presence_join", user);
		}
	} else if (before && !u->total) {
		r->nusers--;
		u->leaving = true;
		u->leave_at_ns = util_now_ns() + (uint64_t)PRESENCE_FLAP_MS * 1000000ull;
		r->nleaving++;
		g.nleaving++; /* the tick announces it */
	}
}

/* Announces the leaves whose flap window passed, and forgets those users. */
static void expire_leaves(uint64_t now)
{
	struct proom *r, *rtmp;
	struct puser *u, *utmp;

	if (!g.nleaving)
		return;
	HASH_ITER(hh, g.rooms, r, rtmp)
	{
		if (!r->nleaving)
			continue;
		HASH_ITER(hh, r->users, u, utmp)
		{
			if (!u->leaving || u->leave_at_ns > now)
				continue;
			/* Counted as if still in: a room at the limit says who left it. */
			r->nusers++;
			send_event(r, "presence_leave", u->user);
			r->nusers--;
			user_free(r, u);
		}
		room_maybe_free(r);
	}
}

/* Drops every entry of replica node (it died, or sent a fresh snapshot). */
static void clear_node(int node)
{
	struct proom *r, *rtmp;
	struct puser *u, *utmp;

	if (!g.nodes[node].entries)
		return;
	HASH_ITER(hh, g.rooms, r, rtmp)
	{
		HASH_ITER(hh, r->users, u, utmp)
		{
			for (int i = 0; i < u->nper; i++)
				if (u->per[i].node == node) {
					set_count(r->name, u->user, node, 0);
					break;
				}
		}
	}
}

static void on_tick(uv_timer_t *t)
{
	uint64_t now = util_now_ns();

	expire_leaves(now);
	for (int i = 1; i < g.nnodes; i++)
		if (g.nodes[i].entries &&
		    now - g.nodes[i].last_ns > (uint64_t)PRESENCE_NODE_TTL_MS * 1000000ull) {
			log_info("presence: replica silent, its members leave", "replica",
			         g.nodes[i].name);
			clear_node(i);
		}
}

/* ---- this replica's joins and leaves ---- */

static uint32_t local_conns(const char *room, const char *user)
{
	struct proom *r;
	struct puser *u;

	HASH_FIND_STR(g.rooms, room, r);
	if (!r)
		return 0;
	HASH_FIND_STR(r->users, user, u);
	if (!u)
		return 0;
	for (int i = 0; i < u->nper; i++)
		if (u->per[i].node == 0)
			return u->per[i].conns;
	return 0;
}

static void publish_change(const char *room, const char *user, uint32_t conns)
{
	struct buf b;

	if (!g.redis || !redisbus_is_up())
		return; /* the snapshot at the next link-up carries it */
	buf_init(&b);
	buf_puts(&b, "{\"t\":\"p\",\"node\":");
	buf_json_str(&b, g.cfg->node_id, strlen(g.cfg->node_id));
	buf_puts(&b, ",\"room\":");
	buf_json_str(&b, room, strlen(room));
	buf_puts(&b, ",\"user\":");
	buf_json_str(&b, user, strlen(user));
	buf_printf(&b, ",\"conns\":%u}", conns);
	if (!b.failed && redisbus_ctl_publish(b.data, b.len) == 0)
		g.published++;
	buf_free(&b);
}

static void local_change(const char *room, struct room_member *m, int delta)
{
	const char *user = g_members.user ? g_members.user(m) : NULL;
	uint32_t n;

	if (!user || !user[0])
		return;
	n = local_conns(room, user);
	if (delta < 0 && !n)
		return;
	n = delta > 0 ? n + 1 : n - 1;
	set_count(room, user, 0, n);
	publish_change(room, user, n);
}

static void on_join(const char *room, struct room_member *m)
{
	local_change(room, m, 1);
}

static void on_leave(const char *room, struct room_member *m)
{
	struct proom *r;

	HASH_FIND_STR(g.rooms, room, r);
	if (r)
		for (uint32_t i = 0; i < r->nwatch; i++)
			if (r->watchers[i] == m) {
				r->watchers[i] = r->watchers[--r->nwatch];
				break;
			}
	local_change(room, m, -1);
}

void presence_watch(struct room_member *c, const char *room)
{
	struct proom *r;

	HASH_FIND_STR(g.rooms, room, r);
	if (!r)
		return;
	for (uint32_t i = 0; i < r->nwatch; i++)
		if (r->watchers[i] == c)
			return;
	if (r->nwatch == r->capwatch) {
		uint32_t ncap = r->capwatch ? r->capwatch * 2 : 4;
		struct room_member **nw = realloc(r->watchers, ncap * sizeof(*nw));
		if (!nw)
			return;
		r->watchers = nw;
		r->capwatch = ncap;
	}
	r->watchers[r->nwatch++] = c;
}

/* ---- queries ---- */

void presence_answer(const char *room, struct buf *b)
{
	struct proom *r;
	struct puser *u, *tmp;
	long listed = 0;

	HASH_FIND_STR(g.rooms, room, r);
	buf_puts(b, "{\"room\":");
	buf_json_str(b, room, strlen(room));
	buf_printf(b, ",\"count\":%u,\"members\":[", r ? r->nusers : 0);
	if (r)
		HASH_ITER(hh, r->users, u, tmp)
		{
			if (!u->total)
				continue;
			if (listed == g.cfg->presence_max_members)
				break;
			if (listed++)
				buf_puts(b, ",");
			buf_puts(b, "{\"user\":");
			buf_json_str(b, u->user, strlen(u->user));
			buf_printf(b, ",\"conns\":%u}", u->total);
		}
	buf_puts(b, "]");
	if (r && r->nusers > (uint32_t)g.cfg->presence_max_members)
		buf_puts(b, ",\"truncated\":true");
	buf_puts(b, "}");
}

/* ---- other replicas ---- */

static const char *str_of(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static bool valid_entry(const char *room, const char *user)
{
	return room && user && room_name_valid(room, strlen(room)) && user[0] && strlen(user) < 256;
}

/* Publishes this replica's whole table in chunks; the first tells the others to drop what
 * they had from us. */
static void publish_snapshot(void)
{
	struct proom *r, *rtmp;
	struct puser *u, *utmp;
	struct buf b;
	bool first = true, any = false;

	if (!g.redis || !redisbus_is_up())
		return;
	buf_init(&b);
#define SNAP_OPEN()                                                                                \
	do {                                                                                       \
		buf_puts(&b, "{\"t\":\"snap\",\"node\":");                                         \
		buf_json_str(&b, g.cfg->node_id, strlen(g.cfg->node_id));                          \
		buf_printf(&b, ",\"first\":%s,\"e\":[", first ? "true" : "false");                 \
		any = false;                                                                       \
	} while (0)
#define SNAP_SEND()                                                                                \
	do {                                                                                       \
		buf_puts(&b, "]}");                                                                \
		if (!b.failed && redisbus_ctl_publish(b.data, b.len) == 0)                         \
			g.published++;                                                             \
		b.len = 0;                                                                         \
		first = false;                                                                     \
	} while (0)
	SNAP_OPEN();
	HASH_ITER(hh, g.rooms, r, rtmp)
	{
		HASH_ITER(hh, r->users, u, utmp)
		{
			for (int i = 0; i < u->nper; i++) {
				if (u->per[i].node != 0)
					continue;
				if (any)
					buf_puts(&b, ",");
				buf_puts(&b, "[");
				buf_json_str(&b, r->name, strlen(r->name));
				buf_puts(&b, ",");
				buf_json_str(&b, u->user, strlen(u->user));
				buf_printf(&b, ",%u]", u->per[i].conns);
				any = true;
				if (b.len > SNAP_CHUNK) {
					SNAP_SEND();
					SNAP_OPEN();
				}
			}
		}
	}
	if (any || first)
		SNAP_SEND();
#undef SNAP_OPEN
#undef SNAP_SEND
	buf_free(&b);
}

static void ask_sync(void)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{\"t\":\"sync\",\"node\":");
	buf_json_str(&b, g.cfg->node_id, strlen(g.cfg->node_id));
	buf_puts(&b, "}");
	if (!b.failed)
		redisbus_ctl_publish(b.data, b.len);
	buf_free(&b);
}

void presence_link_up(void)
{
	if (!g.running)
		return;
	publish_snapshot();
	ask_sync();
}

void presence_on_ctl(const char *type, json_object *msg)
{
	const char *node = str_of(msg, "node");
	int n;

	if (!g.running || !node || !strcmp(node, g.cfg->node_id))
		return;
	if ((n = node_index(node, true)) < 0)
		return;
	g.nodes[n].last_ns = util_now_ns();
	if (!strcmp(type, "p")) {
		const char *room = str_of(msg, "room"), *user = str_of(msg, "user");
		json_object *c;
		if (valid_entry(room, user) && json_object_object_get_ex(msg, "conns", &c))
			set_count(room, user, n, (uint32_t)json_object_get_int64(c));
	} else if (!strcmp(type, "snap")) {
		json_object *first, *e;
		if (json_object_object_get_ex(msg, "first", &first) &&
		    json_object_get_boolean(first))
			clear_node(n);
		if (!json_object_object_get_ex(msg, "e", &e) ||
		    !json_object_is_type(e, json_type_array))
			return;
		for (size_t i = 0; i < json_object_array_length(e); i++) {
			json_object *t = json_object_array_get_idx(e, i);
			if (!json_object_is_type(t, json_type_array) ||
			    json_object_array_length(t) != 3)
				continue;
			const char *room = json_object_get_string(json_object_array_get_idx(t, 0)),
			           *user = json_object_get_string(json_object_array_get_idx(t, 1));
			if (valid_entry(room, user))
				set_count(room, user, n,
				          (uint32_t)json_object_get_int64(
				              json_object_array_get_idx(t, 2)));
		}
	} else if (!strcmp(type, "sync")) {
		publish_snapshot(); /* a replica (re)joined: it needs ours */
	}
}

void presence_metrics(struct buf *b)
{
	struct proom *r, *tmp;
	uint64_t users = 0;

	HASH_ITER(hh, g.rooms, r, tmp)
	{
		users += r->nusers;
	}
	buf_printf(b,
	           "# HELP roomcast_presence_rooms Rooms in the cluster-wide presence table.\n"
	           "# TYPE roomcast_presence_rooms gauge\n"
	           "roomcast_presence_rooms %u\n"
	           "# HELP roomcast_presence_users Users present, summed over the rooms of the "
	           "presence table.\n"
	           "# TYPE roomcast_presence_users gauge\n"
	           "roomcast_presence_users %llu\n"
	           "# HELP roomcast_presence_published_total Presence changes and snapshot chunks "
	           "published to the other replicas.\n"
	           "# TYPE roomcast_presence_published_total counter\n"
	           "roomcast_presence_published_total %llu\n"
	           "# HELP roomcast_presence_events_total presence_join and presence_leave replies "
	           "queued to watching connections.\n"
	           "# TYPE roomcast_presence_events_total counter\n"
	           "roomcast_presence_events_total %llu\n",
	           HASH_COUNT(g.rooms), (unsigned long long)users, (unsigned long long)g.published,
	           (unsigned long long)g.events);
}

/* ---- start and stop ---- */

void presence_setup(const struct presence_members *members)
{
	g_members = *members;
}

int presence_start(const struct config *cfg, uv_loop_t *loop)
{
	g.cfg = cfg;
	g.redis = cfg->redis_addr && *cfg->redis_addr;
	g.nnodes = 0;
	node_index(cfg->node_id, true); /* index 0: this replica */
	uv_timer_init(loop, &g.tick);
	uv_timer_start(&g.tick, on_tick, TICK_MS, TICK_MS);
	uv_unref((uv_handle_t *)&g.tick);
	room_set_presence_hooks(on_join, on_leave);
	g.running = true;
	return 0;
}

void presence_stop(void)
{
	struct proom *r, *rtmp;
	struct puser *u, *utmp;

	if (!g.running)
		return;
	g.running = false;
	room_set_presence_hooks(NULL, NULL);
	uv_close((uv_handle_t *)&g.tick, NULL);
	HASH_ITER(hh, g.rooms, r, rtmp)
	{
		HASH_ITER(hh, r->users, u, utmp)
		{
			user_free(r, u);
		}
		r->nwatch = 0;
		room_maybe_free(r);
	}
}
