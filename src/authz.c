/* Claim-based room rules, and the dispatch to an asynchronous policy (SQL or HTTP) for rooms the
 * claims cannot decide. Without a policy those rooms are refused. */
#include "authz.h"
#include "httpc.h"
#include "log.h"
#include "room.h"
#include "util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Policy verdicts of one connection: a flat array of at most AUTHZ_CACHE_MAX. A verdict is
 * reused for a join until it expires: a failed check (timeout, error) only briefly, so a
 * policy that was slow once does not lock the user out for the connection's lifetime. */
struct verdict {
	char room[ROOM_NAME_MAX + 1];
	bool allowed;
	bool failed;         /* the check timed out or failed: a denial, not an answer */
	uint64_t at_ns;      /* when it was recorded (util_now_ns) */
	uint64_t expires_ns; /* joins ask the policy again from then on */
};

struct verdict_cache {
	uint32_t count, cap;
	struct verdict v[];
};

static const struct config *g_cfg;
static uv_loop_t *g_loop;

/* docs/protocol.md: both policies answer within 3 s or deny. */
#define POLICY_TIMEOUT_MS 3000
/* How long a verdict answers joins without asking again: a failure briefly, a real answer
 * longer (ownership changes rarely; a refresh keeps rooms by the verdict that let them in). */
#define FAILED_TTL_S  5
#define DENIED_TTL_S  60
#define ALLOWED_TTL_S 300

static authz_sql_fn g_sql;

void authz_setup(const struct config *cfg, uv_loop_t *loop, authz_sql_fn sql)
{
	g_sql = sql;
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
	if (is_room_of(room, "user-", id->user_id) ||
	    is_room_of(room, "seller-", auth_seller_id(id)) ||
	    is_room_of(room, "client-", auth_client_id(id)))
		return AUTHZ_ALLOW;
	if (!strncmp(room, "product-", 8) && room[8])
		return AUTHZ_ALLOW;
	for (char **p = id->rooms; p && *p; p++)
		if (room_pattern_match(*p, room))
			return AUTHZ_ALLOW;
	/* Another user's room and the admins room are decided by the claims alone; a policy
	 * must not be able to hand them out by accident. */
	if (!strcmp(room, "admins") || !strncmp(room, "user-", 5))
		return AUTHZ_DENY;
	return AUTHZ_ASK;
}

/* An asynchronous check: the caller keeps cache valid until cb has run. */
struct ask {
	authz_done_fn cb;
	void *arg;
	void **cache;
	char room[ROOM_NAME_MAX + 1];
};

static struct verdict *cache_find(void *cache, const char *room);

/* A policy answer (> 0 allowed, 0 denied, AUTHZ_VERDICT_FAILED) as the caller's result. */
static enum authz_result to_result(int verdict)
{
	return verdict > 0 ? AUTHZ_ALLOW : verdict < 0 ? AUTHZ_UNAVAILABLE : AUTHZ_DENY;
}

static void on_policy(void *arg, const char *room, int verdict)
{
	struct ask a = *(struct ask *)arg;

	free(arg);
	authz_cache_put(a.cache, room, verdict);
	a.cb(a.arg, room, to_result(verdict));
}

/* The backend answers {"allowed":true}; anything else, any other status, or no answer in time
 * denies. */
static void on_backend(void *arg, int status, const char *body, size_t len, const char *err)
{
	struct ask *a = arg;
	bool allowed = false;
	int verdict;

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
	/* No answer, or a server error: a failure, cached briefly. Any other status is the
	 * backend's denial. */
	verdict = status == 200                    ? allowed
	          : (status <= 0 || status >= 500) ? AUTHZ_VERDICT_FAILED
	                                           : 0;
	authz_cache_put(a->cache, a->room, verdict);
	a->cb(a->arg, a->room, to_result(verdict));
	free(a);
}

static int ask_backend(const struct auth_identity *id, const char *room, struct ask *a)
{
	char url[2048], eroom[3 * ROOM_NAME_MAX + 1], euser[3 * AUTH_ID_MAX + 1];
	const char *base = g_cfg->backend_url;
	size_t bl = strlen(base);

	if (httpc_query_escape(room, eroom, sizeof(eroom)) < 0 ||
	    httpc_query_escape(id->user_id, euser, sizeof(euser)) < 0)
		return -1;
	snprintf(url, sizeof(url), "%.*s/can_join?room=%s&user_id=%s",
	         (int)(bl && base[bl - 1] == '/' ? bl - 1 : bl), base, eroom, euser);
	snprintf(a->room, sizeof(a->room), "%s", room);
	return httpc_get(g_loop, url, POLICY_TIMEOUT_MS, on_backend, a) < 0 ? -1 : 0;
}

enum authz_result authz_check(const struct auth_identity *id, void **cache, const char *room,
                              authz_done_fn cb, void *arg)
{
	enum authz_result r = authz_claims(id, room);
	struct verdict *v;
	struct ask *a;

	if (r != AUTHZ_ASK)
		return r;
	if (g_cfg->authz_mode == CONFIG_AUTHZ_CLAIMS)
		return AUTHZ_DENY;
	if ((v = cache_find(*cache, room)) && util_now_ns() < v->expires_ns)
		return v->allowed ? AUTHZ_ALLOW : v->failed ? AUTHZ_UNAVAILABLE : AUTHZ_DENY;
	if (!(a = calloc(1, sizeof(*a))))
		return AUTHZ_UNAVAILABLE;
	a->cb = cb;
	a->arg = arg;
	a->cache = cache;
	if (g_cfg->authz_mode == CONFIG_AUTHZ_HTTP) {
		if (ask_backend(id, room, a) < 0) {
			free(a);
			log_warn("backend policy unavailable", "user", id->user_id, "room", room,
			         "reason", "BACKEND_URL is not a usable http:// URL");
			return AUTHZ_UNAVAILABLE;
		}
		return AUTHZ_ASK;
	}
	if (!g_sql || g_sql(id->claims_json, room, on_policy, a) < 0) {
		/* PostgreSQL is down: refuse now, uncached, so a later join asks again. */
		free(a);
		log_warn("room policy unavailable", "user", id->user_id, "room", room, "reason",
		         "postgres is down");
		return AUTHZ_UNAVAILABLE;
	}
	return AUTHZ_ASK;
}

static struct verdict *cache_find(void *cache, const char *room)
{
	struct verdict_cache *vc = cache;
	for (uint32_t i = 0; vc && i < vc->count; i++)
		if (!strcmp(vc->v[i].room, room))
			return &vc->v[i];
	return NULL;
}

/* The entry to overwrite in a full cache: an expired one, else the oldest that did not let
 * the connection in (so rooms it is in keep their verdict for a refresh), else the oldest. */
static struct verdict *cache_victim(struct verdict_cache *vc, uint64_t now)
{
	struct verdict *best = NULL;
	int best_rank = 3;

	for (uint32_t i = 0; i < vc->count; i++) {
		struct verdict *v = &vc->v[i];
		int rank = now >= v->expires_ns ? 0 : !v->allowed ? 1 : 2;
		if (rank < best_rank || (rank == best_rank && v->at_ns < best->at_ns)) {
			best = v;
			best_rank = rank;
		}
	}
	return best;
}

void authz_cache_put(void **cache, const char *room, int verdict)
{
	struct verdict_cache *vc = *cache;
	struct verdict *v = cache_find(vc, room);
	uint64_t now = util_now_ns();
	unsigned ttl_s;

	if (!v && vc && vc->count == AUTHZ_CACHE_MAX) {
		v = cache_victim(vc, now);
	} else if (!v) {
		if (!vc || vc->count == vc->cap) {
			uint32_t ncap = vc ? vc->cap * 2 : 4;
			struct verdict_cache *n;
			if (ncap > AUTHZ_CACHE_MAX)
				ncap = AUTHZ_CACHE_MAX;
			n = realloc(vc, sizeof(*n) + ncap * sizeof(n->v[0]));
			if (!n)
				return; /* uncached: the policy is simply asked again next time */
			if (!vc)
				n->count = 0;
			n->cap = ncap;
			*cache = vc = n;
		}
		v = &vc->v[vc->count++];
	}
	snprintf(v->room, sizeof(v->room), "%s", room);
	v->allowed = verdict > 0;
	v->failed = verdict < 0;
	ttl_s = v->failed ? FAILED_TTL_S : v->allowed ? ALLOWED_TTL_S : DENIED_TTL_S;
	v->at_ns = now;
	v->expires_ns = now + (uint64_t)ttl_s * 1000000000ull;
}

uint32_t authz_cache_count(const void *cache)
{
	const struct verdict_cache *vc = cache;
	return vc ? vc->count : 0;
}

void authz_cache_free(void **cache)
{
	free(*cache);
	*cache = NULL;
}

/* Rooms whose readers are not their writers: product-<id> (any authenticated user may join it
 * by the claim rules, docs/protocol.md), the role-wide rooms the n8n workflows post to (sellers,
 * clients, admin; any user of the role may join them) and admins. Events come from the
 * database or notify; members only listen. */
bool authz_room_is_public(const char *room)
{
	if (!strncmp(room, "product-", 8) && room[8])
		return true;
	return !strcmp(room, "sellers") || !strcmp(room, "clients") || !strcmp(room, "admin") ||
	       !strcmp(room, "admins");
}

bool authz_may_broadcast(const struct auth_identity *id, const char *room)
{
	if (auth_is_admin(id) || auth_is_service(id))
		return true;
	if (!authz_room_is_public(room))
		return true;
	/* The token's issuer may still name such a room for this user on purpose. */
	for (char **p = id->rooms; p && *p; p++)
		if (room_pattern_match(*p, room))
			return true;
	return false;
}

bool authz_still_allowed(const struct auth_identity *id, void *cache, const char *room)
{
	enum authz_result r = authz_claims(id, room);
	struct verdict *v;

	if (r != AUTHZ_ASK)
		return r == AUTHZ_ALLOW;
	v = cache_find(cache, room);
	return v && v->allowed;
}
