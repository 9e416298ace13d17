/* Claim-based room rules, and the dispatch to an asynchronous policy (SQL or HTTP) for rooms the
 * claims cannot decide. Without a policy those rooms are refused. */
#include "authz.h"
#include "conn.h"
#include "httpc.h"
#include "log.h"
#include "pgl.h"
#include "room.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Policy verdicts of one connection: few rooms per connection, so a flat array. */
struct verdict {
	char room[ROOM_NAME_MAX + 1];
	bool allowed;
};

struct verdict_cache {
	uint32_t count, cap;
	struct verdict v[];
};

static const struct config *g_cfg;
static uv_loop_t *g_loop;

/* SPEC §6: both policies answer within 3 s or deny. */
#define POLICY_TIMEOUT_MS 3000

void authz_setup(const struct config *cfg, uv_loop_t *loop)
{
	g_cfg = cfg;
	g_loop = loop;
}

/* True when room is prefix followed by exactly value (value non-empty). */
static bool is_room_of(const char *room, const char *prefix, const char *value)
{
	size_t n = strlen(prefix);
	return value[0] && !strncmp(room, prefix, n) && !strcmp(room + n, value);
}

enum authz_result authz_claims(const struct auth_identity *id, const char *room)
{
	if (auth_is_admin(id))
		return AUTHZ_ALLOW;
	if (is_room_of(room, "user-", id->user_id) || is_room_of(room, "seller-", id->seller_id) ||
	    is_room_of(room, "client-", id->client_id))
		return AUTHZ_ALLOW;
	if (!strncmp(room, "product-", 8) && room[8])
		return AUTHZ_ALLOW;
	for (size_t i = 0; i < id->n_rooms; i++)
		if (room_pattern_match(id->rooms[i], room))
			return AUTHZ_ALLOW;
	/* Another user's room and the admins room are decided by the claims alone; a policy
	 * must not be able to hand them out by accident. */
	if (!strcmp(room, "admins") || !strncmp(room, "user-", 5))
		return AUTHZ_DENY;
	return AUTHZ_ASK;
}

struct ask {
	authz_done_fn cb;
	void *arg;
	struct conn *c; /* held for the HTTP policy */
	char room[ROOM_NAME_MAX + 1];
};

static struct verdict *cache_find(struct conn *c, const char *room);

static void on_policy(struct conn *c, const char *room, bool allowed, void *arg)
{
	struct ask a = *(struct ask *)arg;

	free(arg);
	if (conn_alive(c))
		authz_cache_put(c, room, allowed);
	a.cb(c, room, allowed, a.arg);
}

/* The backend answers {"allowed":true}; anything else, any other status, or no answer in time
 * denies. */
static void on_backend(void *arg, int status, const char *body, size_t len, const char *err)
{
	struct ask *a = arg;
	bool allowed = false;

	if (status == 200 && body) {
		json_object *o = json_tokener_parse(body), *v;
		allowed = o && json_object_object_get_ex(o, "allowed", &v) &&
		          json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
		json_object_put(o);
	} else {
		char st[12];
		snprintf(st, sizeof(st), "%d", status);
		log_warn("backend policy failed", "room", a->room, "status", st, "reason",
		         err ? err : "unexpected status");
	}
	if (conn_alive(a->c))
		authz_cache_put(a->c, a->room, allowed);
	a->cb(a->c, a->room, allowed, a->arg);
	conn_release(a->c);
	free(a);
}

static int ask_backend(struct conn *c, const char *room, struct ask *a)
{
	char url[2048], eroom[3 * ROOM_NAME_MAX + 1], euser[3 * AUTH_ID_MAX + 1];
	const char *base = g_cfg->backend_url;
	size_t bl = strlen(base);

	if (httpc_query_escape(room, eroom, sizeof(eroom)) < 0 ||
	    httpc_query_escape(c->ident.user_id, euser, sizeof(euser)) < 0)
		return -1;
	snprintf(url, sizeof(url), "%.*s/can_join?room=%s&user_id=%s",
	         (int)(bl && base[bl - 1] == '/' ? bl - 1 : bl), base, eroom, euser);
	a->c = c;
	snprintf(a->room, sizeof(a->room), "%s", room);
	if (httpc_get(g_loop, url, POLICY_TIMEOUT_MS, on_backend, a) < 0)
		return -1;
	conn_hold(c);
	return 0;
}

enum authz_result authz_check(struct conn *c, const char *room, authz_done_fn cb, void *arg)
{
	enum authz_result r = authz_claims(&c->ident, room);
	struct verdict *v;
	struct ask *a;

	if (r != AUTHZ_ASK)
		return r;
	if (g_cfg->authz_mode == AUTHZ_CLAIMS)
		return AUTHZ_DENY;
	if ((v = cache_find(c, room)))
		return v->allowed ? AUTHZ_ALLOW : AUTHZ_DENY;
	if (!(a = calloc(1, sizeof(*a))))
		return AUTHZ_DENY;
	a->cb = cb;
	a->arg = arg;
	if (g_cfg->authz_mode == AUTHZ_HTTP) {
		if (ask_backend(c, room, a) < 0) {
			free(a);
			log_warn("backend policy unavailable", "conn", c->id, "room", room,
			         "reason", "BACKEND_URL is not a usable http:// URL");
			return AUTHZ_DENY;
		}
		return AUTHZ_ASK;
	}
	if (pgl_can_join(c, room, on_policy, a) < 0) {
		/* PostgreSQL is down: deny now, uncached, so a later join asks again. */
		free(a);
		log_warn("room policy unavailable", "conn", c->id, "room", room, "reason",
		         "postgres is down");
		return AUTHZ_DENY;
	}
	return AUTHZ_ASK;
}

static struct verdict *cache_find(struct conn *c, const char *room)
{
	struct verdict_cache *vc = c->authz_cache;
	for (uint32_t i = 0; vc && i < vc->count; i++)
		if (!strcmp(vc->v[i].room, room))
			return &vc->v[i];
	return NULL;
}

void authz_cache_put(struct conn *c, const char *room, bool allowed)
{
	struct verdict_cache *vc = c->authz_cache;
	struct verdict *v = cache_find(c, room);

	if (!v) {
		if (!vc || vc->count == vc->cap) {
			uint32_t ncap = vc ? vc->cap * 2 : 4;
			struct verdict_cache *n = realloc(vc, sizeof(*n) + ncap * sizeof(n->v[0]));
			if (!n)
				return; /* uncached: the policy is simply asked again next time */
			if (!vc)
				n->count = 0;
			n->cap = ncap;
			c->authz_cache = vc = n;
		}
		v = &vc->v[vc->count++];
		snprintf(v->room, sizeof(v->room), "%s", room);
	}
	v->allowed = allowed;
}

void authz_cache_free(struct conn *c)
{
	free(c->authz_cache);
	c->authz_cache = NULL;
}

bool authz_still_allowed(struct conn *c, const char *room)
{
	enum authz_result r = authz_claims(&c->ident, room);
	struct verdict *v;

	if (r != AUTHZ_ASK)
		return r == AUTHZ_ALLOW;
	v = cache_find(c, room);
	return v && v->allowed;
}
