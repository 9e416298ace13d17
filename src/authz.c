/* Claim-based room rules, and the dispatch to an asynchronous policy (SQL or HTTP) for rooms the
 * claims cannot decide. Without a policy those rooms are refused. */
#include "authz.h"
#include "conn.h"
#include "log.h"
#include "pgl.h"
#include "room.h"

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

void authz_setup(const struct config *cfg)
{
	g_cfg = cfg;
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
	if (g_cfg->authz_mode != AUTHZ_SQL || !(a = malloc(sizeof(*a))))
		return AUTHZ_DENY; /* the HTTP policy is not available in this build */
	a->cb = cb;
	a->arg = arg;
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
