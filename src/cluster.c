/* The server API run on every replica: a request goes out on the Redis control channel with
 * an id, every replica (the asker included, when the request comes back) applies it to its own
 * connections and answers on the same channel, and the asker sums the answers until every live
 * replica answered or CLUSTER_WAIT_MS passed. Replicas announce themselves every 2 s, so the asker
 * knows whom to wait for. Without Redis (or while its link is down) only this replica answers. */
#include "cluster.h"
#include "buf.h"
#include "bus.h"
#include "conn.h"
#include "log.h"
#include "pgl.h"
#include "presence.h"
#include "redisbus.h"
#include "room.h"
#include "session.h"
#include "util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ALIVE_EVERY_MS 2000
/* A replica not heard for this long is not waited for (it died or lost Redis). */
#define NODE_TTL_MS 6000
#define TICK_MS     20
#define MAX_NODES   256

static const char *const op_names[] = {"disconnect", "subscribe", "unsubscribe", "rooms"};

struct pending {
	struct pending *next;
	char id[96];
	enum cluster_op op;
	cluster_done_fn done;
	void *arg;
	uint64_t deadline_ns;
	long long affected;
	int replies;
	json_object *rooms, *nodes; /* CLUSTER_ROOMS: summed members per room, state per replica */
};

struct node_seen {
	char name[64];
	uint64_t last_ns;
};

static struct {
	const struct config *cfg;
	const char *version;
	time_t started;
	bool redis, running;
	uv_timer_t tick, alive;
	uint64_t seq;
	char nonce[20];
	struct pending *pending;
	struct node_seen nodes[MAX_NODES];
	int nnodes;
	uint64_t asked[4]; /* requests asked here, by op */
	uint64_t partial;  /* answers that lacked a replica */
	uint64_t applied;  /* requests applied here (from any replica) */
} g;

static void note_node(const char *name)
{
	uint64_t now = util_now_ns();
	int oldest = 0;

	for (int i = 0; i < g.nnodes; i++)
		if (!strcmp(g.nodes[i].name, name)) {
			g.nodes[i].last_ns = now;
			return;
		}
	if (g.nnodes < MAX_NODES) {
		oldest = g.nnodes++;
	} else {
		for (int i = 1; i < g.nnodes; i++)
			if (g.nodes[i].last_ns < g.nodes[oldest].last_ns)
				oldest = i;
	}
	snprintf(g.nodes[oldest].name, sizeof(g.nodes[oldest].name), "%s", name);
	g.nodes[oldest].last_ns = now;
}

/* Replicas heard within NODE_TTL_MS, this one always included. */
static int live_nodes(void)
{
	uint64_t now = util_now_ns();
	int n = 1;

	for (int i = 0; i < g.nnodes; i++)
		if (strcmp(g.nodes[i].name, g.cfg->node_id) &&
		    now - g.nodes[i].last_ns < (uint64_t)NODE_TTL_MS * 1000000ull)
			n++;
	return n;
}

/* ---- applying a request to this replica's connections ---- */

/* The connections of user-<user_id>, copied: closing, joining or leaving may change the room's
 * member array. Returns a malloc'd array (NULL with *n 0 when there is none). Each connection
 * is held; release them with put_conns. */
static struct conn **user_conns(const char *user_id, uint32_t *n)
{
	char name[ROOM_NAME_MAX + 8];
	struct room *r;
	struct room_member *const *m;
	struct conn **out;

	*n = 0;
	snprintf(name, sizeof(name), "user-%s", user_id);
	if (!(r = room_find(name)))
		return NULL;
	m = room_members(r, n);
	if (!*n || !(out = malloc(*n * sizeof(*out)))) {
		*n = 0;
		return NULL;
	}
	for (uint32_t i = 0; i < *n; i++) {
		out[i] = session_conn(session_of_member(m[i]));
		conn_hold(out[i]);
	}
	return out;
}

static void put_conns(struct conn **cs, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++)
		conn_release(cs[i]);
	free(cs);
}

static long long apply_user_op(enum cluster_op op, const char *user_id, const char *room)
{
	uint32_t n;
	struct conn **cs = user_conns(user_id, &n);
	long long affected = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct conn *c = cs[i];
		if (!conn_alive(c))
			continue;
		if (op == CLUSTER_DISCONNECT) {
			conn_close(c, 4003, "disconnected by the server API", true);
			affected++;
		} else if (op == CLUSTER_SUBSCRIBE) {
			affected += session_server_join(c, room);
		} else {
			affected += session_server_leave(c, room);
		}
	}
	put_conns(cs, n);
	return affected;
}

/* "rooms":{...},"state":{...} of this replica. */
static void local_rooms(struct buf *b)
{
	buf_puts(b, "\"rooms\":");
	room_counts_json(b);
	buf_printf(b,
	           ",\"state\":{\"connections\":%lld,\"rooms\":%zu,\"postgres\":\"%s\","
	           "\"redis\":\"%s\",\"uptime_s\":%ld,\"version\":",
	           (long long)conn_count(), room_count(), pgl_state(), bus_state(),
	           (long)(time(NULL) - g.started));
	buf_json_str(b, g.version, strlen(g.version));
	buf_puts(b, "}");
}

/* Applies a request here and writes the answer's fields (without braces) into b. */
static void apply(enum cluster_op op, const char *user_id, const char *room, const char *from,
                  struct buf *b)
{
	if (op == CLUSTER_ROOMS) {
		local_rooms(b);
		return;
	}
	long long affected = apply_user_op(op, user_id, room);
	g.applied++;
	char count[24];
	snprintf(count, sizeof(count), "%lld", affected);
	log_info("server API applied", "op", op_names[op], "user", user_id, "room",
	         op == CLUSTER_DISCONNECT ? NULL : room, "affected", count, "from", from);
	buf_printf(b, "\"affected\":%lld", affected);
}

/* ---- collecting answers ---- */

static void add_answer(struct pending *p, const char *node, json_object *ans)
{
	json_object *v;

	p->replies++;
	if (p->op != CLUSTER_ROOMS) {
		if (json_object_object_get_ex(ans, "affected", &v))
			p->affected += json_object_get_int64(v);
		return;
	}
	if (json_object_object_get_ex(ans, "rooms", &v) &&
	    json_object_is_type(v, json_type_object)) {
		json_object_object_foreach(v, name, count)
		{
			json_object *have;
			int64_t sum = json_object_get_int64(count);
			if (json_object_object_get_ex(p->rooms, name, &have))
				sum += json_object_get_int64(have);
			json_object_object_add(p->rooms, name, json_object_new_int64(sum));
		}
	}
	if (json_object_object_get_ex(ans, "state", &v))
		json_object_object_add(p->nodes, node, json_object_get(v));
}

static void finish(struct pending *p, bool partial)
{
	struct buf b;

	if (partial)
		g.partial++;
	buf_init(&b);
	if (p->op == CLUSTER_ROOMS) {
		buf_puts(&b, "{\"rooms\":");
		buf_puts(&b, json_object_to_json_string_ext(p->rooms, JSON_C_TO_STRING_PLAIN));
		buf_puts(&b, ",\"nodes\":");
		buf_puts(&b, json_object_to_json_string_ext(p->nodes, JSON_C_TO_STRING_PLAIN));
	} else {
		buf_printf(&b, "{\"status\":\"success\",\"affected\":%lld", p->affected);
	}
	if (partial)
		buf_puts(&b, ",\"partial\":true");
	buf_puts(&b, "}");
	buf_put(&b, "", 1);
	if (b.failed)
		p->done(p->arg, 503, "{\"error\":\"out of memory\"}");
	else
		p->done(p->arg, 200, b.data);
	buf_free(&b);
	json_object_put(p->rooms);
	json_object_put(p->nodes);
	free(p);
}

/* Answers every request whose replicas all answered or whose time is up. */
static void check_pending(void)
{
	uint64_t now = util_now_ns();
	int live = live_nodes();
	struct pending **pp = &g.pending;

	while (*pp) {
		struct pending *p = *pp;
		if (p->replies >= live || now >= p->deadline_ns) {
			*pp = p->next;
			/* Fewer answers than live replicas: one of them did not answer in time. */
			finish(p, p->replies < live);
		} else {
			pp = &p->next;
		}
	}
	if (!g.pending && g.running)
		uv_timer_stop(&g.tick);
}

static void on_tick(uv_timer_t *t)
{
	check_pending();
}

static const char *str_of(json_object *o, const char *key)
{
	json_object *v;
	if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	return json_object_get_string(v);
}

static void publish_alive(void)
{
	struct buf b;

	buf_init(&b);
	buf_puts(&b, "{\"t\":\"alive\",\"node\":");
	buf_json_str(&b, g.cfg->node_id, strlen(g.cfg->node_id));
	buf_puts(&b, "}");
	if (!b.failed)
		redisbus_ctl_publish(b.data, b.len);
	buf_free(&b);
}

static void on_alive(uv_timer_t *t)
{
	publish_alive();
}

static void on_link_up(void)
{
	publish_alive();
	presence_link_up();
}

static int op_of(const char *name)
{
	for (int i = 0; name && i < (int)(sizeof(op_names) / sizeof(op_names[0])); i++)
		if (!strcmp(op_names[i], name))
			return i;
	return -1;
}

/* A request from any replica (this one included): apply it and answer on the channel. */
static void on_request(json_object *o)
{
	const char *id = str_of(o, "id"), *from = str_of(o, "from"), *user = str_of(o, "user"),
	           *room = str_of(o, "room");
	int op = op_of(str_of(o, "op"));
	struct buf b;

	if (!id || !from || op < 0 || (op != CLUSTER_ROOMS && !user) ||
	    ((op == CLUSTER_SUBSCRIBE || op == CLUSTER_UNSUBSCRIBE) &&
	     (!room || !room_name_valid(room, strlen(room)))))
		return;
	note_node(from);
	buf_init(&b);
	buf_puts(&b, "{\"t\":\"re\",\"id\":");
	buf_json_str(&b, id, strlen(id));
	buf_puts(&b, ",\"node\":");
	buf_json_str(&b, g.cfg->node_id, strlen(g.cfg->node_id));
	buf_puts(&b, ",");
	apply((enum cluster_op)op, user, room, from, &b);
	buf_puts(&b, "}");
	if (b.failed || redisbus_ctl_publish(b.data, b.len) < 0)
		log_warn("server API answer not sent", "op", op_names[op], "from", from, "reason",
		         b.failed ? "out of memory" : "redis is down");
	buf_free(&b);
}

static void on_ctl(const char *payload, size_t len)
{
	json_tokener *tok = json_tokener_new();
	json_object *o = tok ? json_tokener_parse_ex(tok, payload, (int)len) : NULL;
	const char *t, *node, *id;

	json_tokener_free(tok);
	if (!o || !json_object_is_type(o, json_type_object) || !(t = str_of(o, "t"))) {
		json_object_put(o);
		return;
	}
	presence_on_ctl(t, o);
	if (!strcmp(t, "alive") && (node = str_of(o, "node"))) {
		note_node(node);
	} else if (!strcmp(t, "req")) {
		on_request(o);
	} else if (!strcmp(t, "re") && (id = str_of(o, "id")) && (node = str_of(o, "node"))) {
		note_node(node);
		for (struct pending *p = g.pending; p; p = p->next)
			if (!strcmp(p->id, id)) {
				add_answer(p, node, o);
				break;
			}
		check_pending();
	}
	json_object_put(o);
}

void cluster_request(enum cluster_op op, const char *user_id, const char *room, const char *who,
                     cluster_done_fn done, void *arg)
{
	struct pending *p = calloc(1, sizeof(*p));
	struct buf b;

	g.asked[op]++;
	log_info("server API request", "op", op_names[op], "user", user_id, "room", room, "by",
	         who);
	if (!p || !(p->rooms = json_object_new_object()) ||
	    !(p->nodes = json_object_new_object())) {
		if (p) {
			json_object_put(p->rooms);
			free(p);
		}
		done(arg, 503, "{\"error\":\"out of memory\"}");
		return;
	}
	p->op = op;
	p->done = done;
	p->arg = arg;
	snprintf(p->id, sizeof(p->id), "%s/%s/%llu", g.cfg->node_id, g.nonce,
	         (unsigned long long)++g.seq);
	buf_init(&b);
	if (g.redis && g.running) {
		buf_puts(&b, "{\"t\":\"req\",\"id\":");
		buf_json_str(&b, p->id, strlen(p->id));
		buf_puts(&b, ",\"from\":");
		buf_json_str(&b, g.cfg->node_id, strlen(g.cfg->node_id));
		buf_printf(&b, ",\"op\":\"%s\"", op_names[op]);
		if (user_id) {
			buf_puts(&b, ",\"user\":");
			buf_json_str(&b, user_id, strlen(user_id));
		}
		if (room) {
			buf_puts(&b, ",\"room\":");
			buf_json_str(&b, room, strlen(room));
		}
		buf_puts(&b, "}");
		if (!b.failed && redisbus_ctl_publish(b.data, b.len) == 0) {
			buf_free(&b);
			/* Our own answer comes back with the others'. */
			p->deadline_ns = util_now_ns() + (uint64_t)CLUSTER_WAIT_MS * 1000000ull;
			p->next = g.pending;
			g.pending = p;
			if (!uv_is_active((uv_handle_t *)&g.tick))
				uv_timer_start(&g.tick, on_tick, TICK_MS, TICK_MS);
			return;
		}
		log_warn("server API answered by this replica only", "op", op_names[op], "reason",
		         "redis is down");
	}
	/* This replica alone: apply and answer now. */
	buf_free(&b);
	buf_init(&b);
	buf_puts(&b, "{");
	apply(op, user_id, room, g.cfg->node_id, &b);
	buf_puts(&b, "}");
	buf_put(&b, "", 1);
	if (!b.failed) {
		json_object *o = json_tokener_parse(b.data);
		if (o)
			add_answer(p, g.cfg->node_id, o);
		json_object_put(o);
	}
	buf_free(&b);
	finish(p, g.redis);
}

void cluster_metrics(struct buf *b)
{
	buf_puts(b, "# HELP roomcast_server_api_requests_total Server API requests asked on this "
	            "replica, by operation.\n# TYPE roomcast_server_api_requests_total counter\n");
	for (int i = 0; i < 4; i++)
		buf_printf(b, "roomcast_server_api_requests_total{op=\"%s\"} %llu\n", op_names[i],
		           (unsigned long long)g.asked[i]);
	buf_printf(b,
	           "# HELP roomcast_server_api_partial_total Server API answers that lacked a "
	           "replica (no answer within 500 ms, or Redis down).\n"
	           "# TYPE roomcast_server_api_partial_total counter\n"
	           "roomcast_server_api_partial_total %llu\n"
	           "# HELP roomcast_server_api_applied_total Server API user operations applied to "
	           "this replica's connections (asked on any replica).\n"
	           "# TYPE roomcast_server_api_applied_total counter\n"
	           "roomcast_server_api_applied_total %llu\n",
	           (unsigned long long)g.partial, (unsigned long long)g.applied);
}

int cluster_start(const struct config *cfg, uv_loop_t *loop, const char *version)
{
	g.cfg = cfg;
	g.version = version;
	g.started = time(NULL);
	g.redis = cfg->redis_addr && *cfg->redis_addr;
	snprintf(g.nonce, sizeof(g.nonce), "%llx", (unsigned long long)util_now_ns());
	uv_timer_init(loop, &g.tick);
	uv_timer_init(loop, &g.alive);
	g.running = true;
	if (g.redis) {
		redisbus_set_ctl(on_ctl, on_link_up);
		uv_timer_start(&g.alive, on_alive, ALIVE_EVERY_MS, ALIVE_EVERY_MS);
	}
	return 0;
}

void cluster_stop(void)
{
	if (!g.running)
		return;
	g.running = false;
	while (g.pending) {
		struct pending *p = g.pending;
		g.pending = p->next;
		finish(p, true);
	}
	if (g.redis)
		redisbus_set_ctl(NULL, NULL);
	uv_close((uv_handle_t *)&g.tick, NULL);
	uv_close((uv_handle_t *)&g.alive, NULL);
}
