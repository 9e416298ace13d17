/* Client message handling: authentication and refresh, joins with replay, leaves, broadcasts,
 * rate limiting. Every client mistake gets an error reply and the connection stays open; only
 * abuse (rate, size, expired token) closes it. Deadlines are run by the connection timer. */
#include "session.h"
#include "authz.h"
#include "buf.h"
#include "bus.h"
#include "conn.h"
#include "log.h"
#include "metrics.h"
#include "pgl.h"
#include "presence.h"
#include "proto.h"
#include "room.h"
#include "router.h"
#include "util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const struct config *g_cfg;
static const struct auth *g_auth;
static uint64_t g_broadcast_seq;

/* A connection may sit in at most this many rooms; joins beyond it are refused. */
#define MAX_ROOMS_PER_CONN 256

static void on_drained(struct conn *c);
static void on_closed(struct conn *c);
static void on_deadline(struct conn *c, unsigned due);
static void on_freed(struct conn *c);

static const char *member_user(const struct room_member *m)
{
	return session_of_member(m)->ident.user_id;
}

static void member_send(struct room_member *m, struct frame *f)
{
	conn_send(session_conn(session_of_member(m)), f);
}

/* The lower layers that deliver to members (router, presence) get the session's ways. */
void session_setup(const struct config *cfg, const struct auth *auth)
{
	g_cfg = cfg;
	g_auth = auth;
	router_setup(&(struct router_sink){.deliver = session_deliver});
	presence_setup(&(struct presence_members){.user = member_user, .send = member_send});
	conn_set_hooks(&(struct conn_hooks){.closed = on_closed,
	                                    .deadline = on_deadline,
	                                    .drained = on_drained,
	                                    .freed = on_freed,
	                                    .owner_size = sizeof(struct session)});
}

/* The session lives in c's owner area; on_freed releases what it holds. */
struct session *session_new(struct conn *c, struct auth_identity *ident, int format)
{
	/* The connection's owner area (session_setup sized it), zeroed by conn_new. */
	struct session *s = (struct session *)(void *)c->owner_area;

	/* A format asked for in the URL is kept whatever the first message looks like. */
	c->owner_bits = (uint8_t)((format == 1 ? SESSION_TYPED : 0) | (format ? SESSION_SPOKE : 0));
	if (ident) {
		s->ident = *ident;
		c->exp = s->ident.exp;
		memset(ident, 0, sizeof(*ident));
	}
	return s;
}

int session_send(struct session *s, struct frame *f)
{
	if (session_conn(s)->owner_bits & SESSION_TYPED)
		f = proto_typed(f); /* shared: serialized once per message, not per recipient */
	return conn_send(session_conn(s), f);
}

static void reply_error(struct conn *c, enum proto_code code, const char *msg, const char *room)
{
	metrics.client_errors++;
	conn_reply(c, proto_error(code, msg, room));
}

/* Starts the token's expiry schedule: token_expiring CONN_EXPIRY_WARN_S before exp (at once
 * when less is left), then 4001 at exp + JWT_LEEWAY_S. The connection timer runs it. */
static void arm_expiry(struct conn *c)
{
	c->exp = session_of(c)->ident.exp;
	c->expiring_sent = false;
	conn_timers_update(c);
}

static void join_auto(struct conn *c, const char *prefix, const char *id)
{
	char room[ROOM_NAME_MAX + 2];
	int n = snprintf(room, sizeof(room), "%s%s", prefix, id);

	if (n <= 0 || !room_name_valid(room, (size_t)n)) {
		log_warn("automatic room skipped", "conn", conn_id(c), "reason",
		         "id is not a valid room");
		return;
	}
	if (room_join(room, &session_of(c)->member) < 0)
		log_error("room_join failed", "conn", conn_id(c), "room", room, "reason",
		          "out of memory");
}

/*
 * Identity from the database. The auth service's tokens carry no seller or client id (sub is a
 * uuid), so with DATABASE_URL a connection whose token has neither asks realtime.identity(claims)
 * once. Meanwhile the connection is already in its user/admins rooms (nothing for them is lost)
 * and its messages wait here, in order, so a join of seller-<id> is decided with the answer
 * rather than refused. A failed lookup is logged and retried at the next auth refresh.
 */
enum dbid_state { DBID_NONE = 0, DBID_PENDING, DBID_DONE, DBID_FAILED };

struct held_msg {
	struct held_msg *next;
	size_t len;
	char data[];
};

struct dbident {
	enum dbid_state state;
	char seller_id[24], client_id[24]; /* the answer ("" when the database has none) */
	struct held_msg *head, *tail;
	uint32_t held;
};

/* A session's session->more. */
struct session_more {
	struct pending_join *pending; /* joins waiting for replay */
	void *authz_cache;            /* owned by the authz module */
	struct dbident *db;           /* the database identity lookup, once started */
};

/* c's more, or NULL when it never needed one. */
static struct session_more *more_of(const struct conn *c)
{
	return session_of(c)->more;
}

/* c's more, allocated on first use (freed with the session); NULL when out of memory. */
static struct session_more *more_get(struct conn *c)
{
	if (!session_of(c)->more)
		session_of(c)->more = calloc(1, sizeof(struct session_more));
	return session_of(c)->more;
}

/* c's lookup, or NULL when none was started. */
static struct dbident *dbident_of(const struct conn *c)
{
	struct session_more *mo = more_of(c);
	return mo ? mo->db : NULL;
}

/* The head of c's pending joins. Without a more it is a NULL that is only read: joins are
 * added through more_get. */
static struct pending_join **pending_head(const struct conn *c)
{
	static struct pending_join *none;
	struct session_more *mo = more_of(c);
	return mo ? &mo->pending : &none;
}

/* Messages a connection may send while its lookup is pending; more get rate_limited errors. */
#define HELD_MAX 64

static void dispatch(struct conn *c, const char *data, size_t len);

static void join_seller_room(struct conn *c)
{
	char room[ROOM_NAME_MAX + 1];

	if (strcmp(auth_role(&session_of(c)->ident), "seller") ||
	    !auth_seller_id(&session_of(c)->ident)[0])
		return;
	snprintf(room, sizeof(room), "seller-%s", auth_seller_id(&session_of(c)->ident));
	if (!room_is_member(&session_of(c)->member, room))
		join_auto(c, "seller-", auth_seller_id(&session_of(c)->ident));
}

/* Applies the looked-up ids to c's identity (a refreshed token has lost them again). */
static void apply_dbident(struct conn *c)
{
	struct dbident *d = dbident_of(c);

	if (auth_identity_fill_ids(&session_of(c)->ident, d->seller_id, d->client_id) < 0)
		log_error("auth_identity_fill_ids failed", "conn", conn_id(c), "reason",
		          "out of memory");
}

/* Runs the messages that waited for the lookup, unless one of them started another. */
static void release_held(struct conn *c)
{
	struct dbident *d = dbident_of(c);

	while (d->head && d->state != DBID_PENDING && conn_alive(c)) {
		struct held_msg *h = d->head;
		d->head = h->next;
		if (!d->head)
			d->tail = NULL;
		d->held--;
		dispatch(c, h->data, h->len);
		free(h);
	}
}

/* c was held for the lookup. */
static void on_dbident(void *arg, bool ok, const char *seller_id, const char *client_id,
                       const char *err)
{
	struct conn *c = arg;
	struct dbident *d;

	conn_release(c);
	if (!conn_alive(c) || !(d = dbident_of(c)) || d->state != DBID_PENDING)
		return;
	if (!ok) {
		char why[160];
		snprintf(why, sizeof(why), "%s", err ? err : "unknown");
		for (char *nl = strchr(why, '\n'); nl; nl = strchr(nl, '\n'))
			*nl = ' ';
		d->state = DBID_FAILED;
		log_warn(
		    "identity lookup failed: no seller/client rooms until the next auth refresh",
		    "conn", conn_id(c), "user", session_of(c)->ident.user_id, "reason", why);
	} else {
		d->state = DBID_DONE;
		snprintf(d->seller_id, sizeof(d->seller_id), "%s", seller_id);
		snprintf(d->client_id, sizeof(d->client_id), "%s", client_id);
		apply_dbident(c);
		log_write(seller_id[0] || client_id[0] ? LOG_INFO : LOG_DEBUG,
		          "identity resolved from the database", "conn", conn_id(c), "user",
		          session_of(c)->ident.user_id, "seller", seller_id[0] ? seller_id : NULL,
		          "client", client_id[0] ? client_id : NULL, (const char *)0);
		join_seller_room(c);
	}
	release_held(c);
}

/* Starts (or, after a refresh, reapplies) the database identity of c when its token lacks one. */
static void resolve_identity(struct conn *c)
{
	struct dbident *d = dbident_of(c);

	if (!pgl_enabled() || auth_is_admin(&session_of(c)->ident) ||
	    auth_is_service(&session_of(c)->ident))
		return;
	if (d && d->state == DBID_DONE) {
		apply_dbident(c);
		join_seller_room(c);
		return;
	}
	if (d && d->state == DBID_PENDING)
		return;
	if (auth_seller_id(&session_of(c)->ident)[0] || auth_client_id(&session_of(c)->ident)[0])
		return; /* the token says who it is */
	if (!d && !(d = more_get(c) ? more_of(c)->db = calloc(1, sizeof(*d)) : NULL)) {
		log_error("identity lookup failed", "conn", conn_id(c), "reason", "out of memory");
		return;
	}
	d->state = DBID_PENDING;
	conn_hold(c);
	if (pgl_identity(session_of(c)->ident.claims_json, session_of(c)->ident.user_id,
	                 auth_role(&session_of(c)->ident), on_dbident, c) < 0) {
		conn_release(c);
		d->state = DBID_FAILED;
		log_warn(
		    "identity lookup failed: no seller/client rooms until the next auth refresh",
		    "conn", conn_id(c), "user", session_of(c)->ident.user_id, "reason",
		    "postgres is down");
	}
}

/* True when msg was kept for after the lookup (or refused because too many wait). */
static bool hold_message(struct conn *c, const char *data, size_t len)
{
	struct dbident *d = dbident_of(c);
	struct held_msg *h;

	if (!d || d->state != DBID_PENDING)
		return false;
	if (d->held >= HELD_MAX || !(h = malloc(sizeof(*h) + len))) {
		reply_error(c, PROTO_RATE_LIMITED, "identity lookup in progress", NULL);
		return true;
	}
	h->next = NULL;
	h->len = len;
	memcpy(h->data, data, len);
	if (d->tail)
		d->tail->next = h;
	else
		d->head = h;
	d->tail = h;
	d->held++;
	return true;
}

static void dbident_free(struct conn *c)
{
	struct dbident *d = dbident_of(c);

	if (!d)
		return;
	while (d->head) {
		struct held_msg *h = d->head;
		d->head = h->next;
		free(h);
	}
	free(d);
	more_of(c)->db = NULL;
}

/* Enters the authenticated state with its automatic rooms; the caller arms the expiry. */
static void become_open(struct conn *c)
{
	c->state = CONN_OPEN;
	join_auto(c, "user-", session_of(c)->ident.user_id);
	if (auth_is_admin(&session_of(c)->ident))
		join_auto(c, "", "admins");
	if (!strcmp(auth_role(&session_of(c)->ident), "seller") &&
	    auth_seller_id(&session_of(c)->ident)[0])
		join_auto(c, "seller-", auth_seller_id(&session_of(c)->ident));
	log_info("client authenticated", "conn", conn_id(c), "user", session_of(c)->ident.user_id,
	         "role",
	         auth_role(&session_of(c)->ident)[0] ? auth_role(&session_of(c)->ident) : NULL);
	resolve_identity(c);
}

void session_open(struct conn *c, int authenticated)
{
	/* Without a token the AUTH_TIMEOUT_S deadline set by conn_new runs. */
	if (authenticated) {
		become_open(c);
		arm_expiry(c);
	}
}

/* A join with `since` waiting for its replay. The connection is already in the room so no
 * live event is missed; live frames for the room are held here until the replay is sent. The
 * replay comes in pages, each queued within the send budget (half of SEND_QUEUE_MAX_BYTES,
 * topped up when the queue has drained to a quarter), so a backlog larger than the budget is
 * caught up instead of closing the client 4008. */
struct pending_join {
	char room[ROOM_NAME_MAX + 1];
	struct frame **frames; /* live frames held back */
	long long *ids;
	size_t n, cap;
	long long since, after, top, total;
	struct frame **page; /* the page being queued (owned references from page_pos on) */
	long long *page_ids;
	size_t page_n, page_pos;
	long long *sent; /* ids of replayed events queued so far, ascending */
	size_t nsent, capsent;
	bool fetching, more, answered, lost;
	/* Replayed events this process had not delivered live when their page was read (see
	 * struct pgl_owed): their live copies are dropped. Once the replay is out the join stays
	 * here, draining (live frames pass straight through), until each has come or pgl says it
	 * was delivered. More than OWED_MAX: overflow, the whole `sent` set is kept instead and
	 * the drain ends once pgl has delivered everything up to owed_xmax. */
	struct pgl_owed *owed; /* ascending ids */
	size_t nowed, capowed;
	uint64_t owed_xmax;
	bool overflow, draining;
	long long position; /* for `joined` (-1: none), taken when it entered the room */
	struct pending_join *next;
};

/* Owed ids kept per join; a replay owing more (this process far behind its notifications, e.g.
 * a listener reconnect catching up) drains by its whole replayed set. */
#define OWED_MAX 1024

struct join_args {
	struct conn *c;
	bool has_since;
	long long since;
	bool presence;
};

static struct pending_join *pending_find(struct conn *c, const char *room,
                                         struct pending_join ***link)
{
	struct pending_join **pp = pending_head(c);
	for (; *pp; pp = &(*pp)->next)
		if (!(*pp)->draining && !strcmp((*pp)->room, room)) {
			if (link)
				*link = pp;
			return *pp;
		}
	return NULL;
}

/* True when the replay already queued event id (pj->sent ascends: pages come in id order). */
static bool replay_sent(const struct pending_join *pj, long long id)
{
	size_t lo = 0, hi = pj->nsent;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (pj->sent[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < pj->nsent && pj->sent[lo] == id;
}

/* Removes id from pj's owed events; true when it was one. */
static bool owed_take(struct pending_join *pj, long long id)
{
	for (size_t i = 0; i < pj->nowed; i++)
		if (pj->owed[i].id == id) {
			memmove(pj->owed + i, pj->owed + i + 1,
			        (pj->nowed - i - 1) * sizeof(*pj->owed));
			pj->nowed--;
			return true;
		}
	return false;
}

/* Whether a drain may end: every owed event delivered (its live copy came, or pgl delivered it
 * through another of its rooms). */
static bool drain_over(struct pending_join *pj)
{
	size_t k = 0;

	for (size_t i = 0; i < pj->nowed; i++)
		if (!pgl_delivered(pj->owed[i].id, pj->owed[i].xid))
			pj->owed[k++] = pj->owed[i];
	pj->nowed = k;
	return !k && (!pj->overflow || pgl_caught_up(pj->owed_xmax));
}

/* Unlinks and frees a pending join; its held frames are sent first when flush is set, except
 * those the replay already carried. With flush, a join still owed live copies of replayed
 * events stays linked, draining. */
static void pending_end(struct conn *c, struct pending_join **link, bool flush)
{
	struct pending_join *pj = *link;

	flush = flush && conn_alive(c);
	for (size_t i = 0; i < pj->n; i++) {
		if (!(pj->ids[i] && replay_sent(pj, pj->ids[i])))
			if (flush)
				session_send(session_of(c), pj->frames[i]);
		if (pj->ids[i])
			owed_take(pj, pj->ids[i]);
		frame_unref(pj->frames[i]);
	}
	for (size_t i = pj->page_pos; i < pj->page_n; i++)
		frame_unref(pj->page[i]);
	free(pj->page);
	free(pj->page_ids);
	free(pj->frames);
	free(pj->ids);
	pj->page = NULL;
	pj->page_ids = NULL;
	pj->frames = NULL;
	pj->ids = NULL;
	pj->n = pj->cap = pj->page_n = pj->page_pos = 0;
	if (flush && !pj->draining && !drain_over(pj)) {
		pj->draining = true;
		if (!pj->overflow) {
			free(pj->sent);
			pj->sent = NULL;
			pj->nsent = pj->capsent = 0;
		}
		return;
	}
	*link = pj->next;
	free(pj->sent);
	free(pj->owed);
	free(pj);
}

/* Ends the draining joins of room (a leave). */
static void drains_end(struct conn *c, const char *room)
{
	struct pending_join **pp = pending_head(c);

	while (*pp)
		if ((*pp)->draining && !strcmp((*pp)->room, room))
			pending_end(c, pp, false);
		else
			pp = &(*pp)->next;
}

/* The connection is gone: its rooms, joins still waiting for replay and messages waiting for
 * the identity lookup go. */
static void on_closed(struct conn *c)
{
	struct session *s = session_of(c);

	if (!s)
		return;
	room_leave_all(&s->member);
	while (*pending_head(c))
		pending_end(c, pending_head(c), false);
	dbident_free(c);
}

static void on_freed(struct conn *c)
{
	struct session *s = session_of(c);

	/* s itself is freed with c (its owner area). */
	auth_identity_clear(&s->ident);
	if (s->more) {
		authz_cache_free(&((struct session_more *)s->more)->authz_cache);
		free(s->more);
		s->more = NULL;
	}
}

/* Auth timeout, token expiring, token expired: the connection timer found them due. */
static void on_deadline(struct conn *c, unsigned due)
{
	if (due & CONN_DUE_AUTH)
		conn_close(c, 4001, "authentication timeout", true);
	if (due & CONN_DUE_EXPIRING) {
		long long left = auth_time_sub(c->exp, (long long)time(NULL));
		conn_reply(c, proto_token_expiring(left > 0 ? (long)left : 0));
	}
	if (due & CONN_DUE_EXPIRED)
		conn_close(c, 4001, "token expired", true);
}

/* A live outbox event (id) for a connection with draining joins: true when a replay already
 * carried it (its copy is dropped), whichever room it comes through. Drains that are over end. */
static bool drain_drops(struct conn *c, long long id)
{
	struct pending_join **pp = pending_head(c);
	bool drop = false;

	while (*pp) {
		struct pending_join *pj = *pp;
		if (!pj->draining) {
			pp = &pj->next;
			continue;
		}
		if (owed_take(pj, id) || (pj->overflow && replay_sent(pj, id)))
			drop = true;
		if (drain_over(pj))
			pending_end(c, pp, false);
		else
			pp = &pj->next;
	}
	return drop;
}

void session_deliver(struct room_member *m, struct frame *f, const char *room, long long id_num)
{
	struct session *s = session_of_member(m);
	struct conn *c = session_conn(s);
	struct pending_join *pj;

	if (*pending_head(c) && id_num && drain_drops(c, id_num))
		return;
	pj = *pending_head(c) ? pending_find(c, room, NULL) : NULL;
	if (!pj) {
		session_send(s, f);
		return;
	}
	if (pj->n == pj->cap) {
		size_t ncap = pj->cap ? pj->cap * 2 : 8;
		struct frame **nf = realloc(pj->frames, ncap * sizeof(*nf));
		long long *ni = nf ? realloc(pj->ids, ncap * sizeof(*ni)) : NULL;
		if (!nf || !ni) {
			if (nf)
				pj->frames = nf;
			conn_close(c, 1011, "out of memory", false);
			return;
		}
		pj->frames = nf;
		pj->ids = ni;
		pj->cap = ncap;
	}
	pj->frames[pj->n] = frame_ref(f);
	pj->ids[pj->n] = id_num;
	pj->n++;
}

static void on_replayed(void *arg, const char *room, bool ok, bool recovered, const long long *ids,
                        struct frame **frames, size_t n, const struct pgl_replay_page *page);

/* Asks pgl for a replay page for c, held until on_replayed. */
static int replay_ask(struct conn *c, const char *room, long long since, long long after,
                      long long top)
{
	conn_hold(c);
	if (pgl_replay(c, room, since, after, top, on_replayed) == 0)
		return 0;
	conn_release(c);
	return -1;
}

/* Replay over (or failed): the live frames held meanwhile follow. */
static void replay_done(struct conn *c, struct pending_join *pj)
{
	struct pending_join **link;
	char count[24], owed[24];

	snprintf(count, sizeof(count), "%zu", pj->nsent);
	snprintf(owed, sizeof(owed), "%zu", pj->nowed);
	log_debug("replayed", "conn", conn_id(c), "room", pj->room, "events", count, "recovered",
	          pj->lost ? "false" : "true", "owed", owed, "owed_overflow",
	          pj->overflow ? "true" : NULL);
	if (pending_find(c, pj->room, &link) == pj)
		pending_end(c, link, true);
}

/* Asks for the next page; a failure ends the replay with what was sent. */
static void replay_fetch(struct conn *c, struct pending_join *pj)
{
	pj->fetching = true;
	if (replay_ask(c, pj->room, pj->since, pj->after, pj->top) == 0)
		return;
	pj->fetching = false;
	if (!pj->answered) {
		pj->answered = true;
		conn_reply(c, proto_joined(pj->room, false, 0, true, pj->position));
	} else {
		/* Said recovered:true already: correct that, the client refetches. */
		conn_reply(c, proto_joined(pj->room, false, (long)pj->nsent, true, pj->position));
	}
	pj->lost = true;
	replay_done(c, pj);
}

/* Queues the current page while the queue stays within the replay's share of the budget, then
 * asks for the next page or finishes. Returns when c has to drain first (the drain hook calls
 * again). */
static void replay_pump(struct conn *c, struct pending_join *pj)
{
	size_t budget = (size_t)g_cfg->send_queue_max_bytes / 2;

	while (pj->page_pos < pj->page_n) {
		struct frame *f = pj->page[pj->page_pos];
		/* An event bigger than the share still goes, alone, into an empty queue. */
		if (frame_queue_bytes(&c->q) && frame_queue_bytes(&c->q) + f->len > budget) {
			c->drain_below = budget / 2;
			return;
		}
		if (pj->nsent == pj->capsent) {
			size_t ncap = pj->capsent ? pj->capsent * 2 : 256;
			long long *ns = realloc(pj->sent, ncap * sizeof(*ns));
			if (!ns) {
				conn_close(c, 1011, "out of memory", false);
				return;
			}
			pj->sent = ns;
			pj->capsent = ncap;
		}
		pj->sent[pj->nsent++] = pj->page_ids[pj->page_pos];
		pj->page_pos++;
		if (session_send(session_of(c), f) < 0) {
			frame_unref(f);
			return; /* closed 4008: nothing more to do */
		}
		frame_unref(f);
	}
	free(pj->page);
	free(pj->page_ids);
	pj->page = NULL;
	pj->page_ids = NULL;
	pj->page_n = pj->page_pos = 0;
	if (pj->fetching)
		return;
	if (pj->more)
		replay_fetch(c, pj);
	else
		replay_done(c, pj);
}

/* The drain hook: replays waiting for room in the queue go on. */
static void on_drained(struct conn *c)
{
	struct pending_join *pj = *pending_head(c);

	while (pj && conn_alive(c)) {
		struct pending_join *next = pj->next; /* pj may end inside replay_pump */
		if (pj->page_pos < pj->page_n)
			replay_pump(c, pj);
		pj = next;
	}
}

static void on_replayed(void *arg, const char *room, bool ok, bool recovered, const long long *ids,
                        struct frame **frames, size_t n, const struct pgl_replay_page *page)
{
	struct conn *c = arg; /* held by replay_ask */
	struct pending_join *pj = conn_alive(c) ? pending_find(c, room, NULL) : NULL;

	conn_release(c);
	if (!pj || !pj->fetching) {
		/* Left the room (or the connection closed) while the page was read. */
		for (size_t i = 0; i < n; i++)
			frame_unref(frames[i]);
		return;
	}
	pj->fetching = false;
	if (!pj->answered) {
		pj->answered = true;
		pj->top = page->top;
		pj->total = page->total;
		pj->lost = !(ok && recovered);
		conn_reply(c, proto_joined(room, ok && recovered, ok ? (long)pj->total : 0, true,
		                           pj->position));
	} else if (!(ok && recovered) && !pj->lost) {
		/* Events not yet replayed were pruned (or the outbox failed) meanwhile. */
		pj->lost = true;
		conn_reply(c, proto_joined(room, false, (long)pj->nsent, true, pj->position));
	}
	if (!ok) {
		replay_done(c, pj);
		return;
	}
	for (size_t i = 0; i < page->nowed; i++) {
		if (page->owed[i].xid > pj->owed_xmax)
			pj->owed_xmax = page->owed[i].xid;
		if (pj->overflow)
			continue;
		if (pj->nowed == pj->capowed) {
			size_t ncap = pj->capowed ? pj->capowed * 2 : 8;
			struct pgl_owed *no =
			    ncap <= OWED_MAX ? realloc(pj->owed, ncap * sizeof(*no)) : NULL;
			if (!no) {
				/* Past the bound (or out of memory): still exact, by the
				 * whole replayed set. */
				pj->overflow = true;
				continue;
			}
			pj->owed = no;
			pj->capowed = ncap;
		}
		pj->owed[pj->nowed++] = page->owed[i];
	}
	pj->more = page->more && page->last > pj->after;
	if (page->last)
		pj->after = page->last;
	/* pj has no page here: replay_pump asks for the next one only once its page is queued. */
	pj->page = malloc((n ? n : 1) * sizeof(*pj->page));
	pj->page_ids = malloc((n ? n : 1) * sizeof(*pj->page_ids));
	if (!pj->page || !pj->page_ids) {
		for (size_t i = 0; i < n; i++)
			frame_unref(frames[i]);
		conn_close(c, 1011, "out of memory", false);
		return; /* pending_end frees the arrays when the connection goes */
	}
	if (n) { /* an empty answer (from the recent memory) may come with NULL arrays */
		memcpy(pj->page, frames, n * sizeof(*frames));
		memcpy(pj->page_ids, ids, n * sizeof(*ids));
	}
	pj->page_n = n;
	pj->page_pos = 0;
	replay_pump(c, pj);
}

/* A join's reply waits for this replica's subscription to the room's bus channel: a message
 * published anywhere after the client read `joined` then reaches it (docs/decisions.md). */
struct bus_wait {
	struct conn *c; /* held */
	long long position;
	char room[ROOM_NAME_MAX + 1];
};

static void on_bus_subscribed(void *arg)
{
	struct bus_wait *w = arg;

	/* A leave meanwhile was answered `left`; a late `joined` would contradict it. */
	if (conn_alive(w->c) && room_is_member(&session_of(w->c)->member, w->room))
		conn_reply(w->c, proto_joined(w->room, false, 0, false, w->position));
	conn_release(w->c);
	free(w);
}

static void reply_joined(struct conn *c, const char *room, long long position)
{
	struct bus_wait *w = malloc(sizeof(*w));

	if (w) {
		w->c = c;
		w->position = position;
		snprintf(w->room, sizeof(w->room), "%s", room);
		conn_hold(c);
		if (bus_when_subscribed(room, on_bus_subscribed, w))
			return;
		conn_release(c);
		free(w);
	}
	conn_reply(c, proto_joined(room, false, 0, false, position));
}

/* The room position for a `joined` (see pgl_position), -1 when none; taken once the connection
 * is in the room, so every event delivered from then on reaches it. */
static long long join_position(void)
{
	long long pos;
	return pgl_position(&pos) ? pos : -1;
}

static void finish_join(struct conn *c, const char *room, const struct join_args *ja)
{
	struct pending_join *pj;
	long long position;

	if (room_join(room, &session_of(c)->member) < 0) { /* 1 (already a member) is fine */
		reply_error(c, PROTO_SERVER_ERROR, "could not join", room);
		return;
	}
	position = join_position();
	if (ja->presence)
		presence_watch(&session_of(c)->member, room);
	if (!ja->has_since) {
		reply_joined(c, room, position);
		return;
	}
	/* Without a readable outbox the gap cannot be filled: say so, the client refetches. */
	if (!pgl_enabled() || !more_get(c) || !(pj = calloc(1, sizeof(*pj)))) {
		conn_reply(c, proto_joined(room, false, 0, true, position));
		return;
	}
	snprintf(pj->room, sizeof(pj->room), "%s", room);
	pj->since = ja->since;
	pj->position = position;
	pj->next = more_of(c)->pending;
	more_of(c)->pending = pj;
	pj->fetching = true;
	if (replay_ask(c, room, ja->since, 0, 0) < 0) {
		/* pj was pushed at the head of the list just above. */
		pending_end(c, pending_head(c), false);
		conn_reply(c, proto_joined(room, false, 0, true, position));
	}
}

/* A policy that could not answer is a server error the client may retry (the failure is cached
 * for a few seconds), not a verdict about the room. */
static void refuse_join(struct conn *c, const char *room, enum authz_result r)
{
	if (r == AUTHZ_UNAVAILABLE)
		reply_error(c, PROTO_SERVER_ERROR, "room policy unavailable, try again", room);
	else
		reply_error(c, PROTO_FORBIDDEN, "not authorized", room);
}

/* ja->c was held for the check. */
static void on_authz_done(void *arg, const char *room, enum authz_result verdict)
{
	struct join_args *ja = arg;
	struct conn *c = ja->c;

	if (conn_alive(c)) {
		if (verdict != AUTHZ_ALLOW)
			refuse_join(c, room, verdict);
		else if (!pending_find(c, room, NULL))
			finish_join(c, room,
			            ja); /* also when it joined meanwhile: `since` counts */
	}
	conn_release(c);
	free(ja);
}

static void do_join(struct conn *c, struct proto_msg *m)
{
	struct join_args ja = {c, m->has_since, m->since, m->presence}, *heap;
	enum authz_result r;
	void *no_cache = NULL;

	if (pending_find(c, m->room, NULL))
		return; /* its joined reply is on the way */
	if (room_is_member(&session_of(c)->member, m->room)) {
		/* Already in (an automatic room, or a repeated join): nothing to authorize, but
		 * a `since` still asks for the events missed while disconnected. */
		if (m->has_since) {
			finish_join(c, m->room, &ja);
		} else {
			if (m->presence)
				presence_watch(&session_of(c)->member, m->room);
			conn_reply(c, proto_joined(m->room, false, 0, false, join_position()));
		}
		return;
	}
	if (session_of(c)->member.nsubs >= MAX_ROOMS_PER_CONN) {
		reply_error(c, PROTO_FORBIDDEN, "too many rooms", m->room);
		return;
	}
	heap = malloc(sizeof(*heap));
	if (!heap) {
		reply_error(c, PROTO_SERVER_ERROR, "out of memory", m->room);
		return;
	}
	*heap = ja;
	/* The verdict cache is only used by the SQL and HTTP policies (claims decide before any
	 * look at it, so no_cache is never kept). */
	if (g_cfg->authz_mode != CONFIG_AUTHZ_CLAIMS && !more_get(c)) {
		reply_error(c, PROTO_SERVER_ERROR, "out of memory", m->room);
		free(heap);
		return;
	}
	conn_hold(c);
	r = authz_check(&session_of(c)->ident, more_of(c) ? &more_of(c)->authz_cache : &no_cache,
	                m->room, on_authz_done, heap);
	if (r == AUTHZ_ASK)
		return; /* on_authz_done owns heap and the hold */
	conn_release(c);
	free(heap);
	if (r == AUTHZ_ALLOW)
		finish_join(c, m->room, &ja);
	else
		refuse_join(c, m->room, r);
}

static void do_leave(struct conn *c, struct proto_msg *m)
{
	struct pending_join **link;

	if (pending_find(c, m->room, &link))
		pending_end(c, link, false);
	drains_end(c, m->room);
	if (room_leave(m->room, &session_of(c)->member) != 0) {
		reply_error(c, PROTO_NOT_MEMBER, "not a member of this room", m->room);
		return;
	}
	conn_reply(c, proto_left(m->room));
}

static void do_broadcast(struct conn *c, struct proto_msg *m)
{
	char id[160], ts[UTIL_TS_LEN];
	struct frame *f;

	if (!room_is_member(&session_of(c)->member, m->room)) {
		reply_error(c, PROTO_NOT_MEMBER, "join the room before broadcasting", m->room);
		return;
	}
	if (!authz_may_broadcast(&session_of(c)->ident, m->room)) {
		reply_error(c, PROTO_FORBIDDEN, "this room is receive-only", m->room);
		return;
	}
	/* Ephemeral ids are strings, unique across replicas by the node prefix. */
	snprintf(id, sizeof(id), "%s-%llu", g_cfg->node_id, (unsigned long long)++g_broadcast_seq);
	util_timestamp(ts);
	f = proto_broadcast_envelope(id, conn_id(c), session_of(c)->ident.user_id, m->room, ts,
	                             m->body, m->body_len);
	if (!f) {
		reply_error(c, PROTO_SERVER_ERROR, "out of memory", m->room);
		return;
	}
	if (bus_publish(m->room, (const char *)frame_data(f), f->len, METRICS_SRC_BROADCAST) < 0)
		reply_error(c, PROTO_SERVER_ERROR, "broadcast could not be published", m->room);
	frame_unref(f);
}

/* ---- the server API ---- */

int session_server_join(struct conn *c, const char *room)
{
	if (!conn_alive(c) || c->state != CONN_OPEN)
		return 0;
	if (room_join(room, &session_of(c)->member) < 0) {
		log_error("room_join failed", "conn", conn_id(c), "room", room, "reason",
		          "out of memory");
		return 0;
	}
	reply_joined(c, room, join_position());
	return 1;
}

int session_server_leave(struct conn *c, const char *room)
{
	struct pending_join **link;

	if (!conn_alive(c))
		return 0;
	if (pending_find(c, room, &link))
		pending_end(c, link, false);
	drains_end(c, room);
	if (room_leave(room, &session_of(c)->member) != 0)
		return 0;
	conn_reply(c, proto_left(room));
	return 1;
}

/* ---- presence ---- */

static void do_presence(struct conn *c, struct proto_msg *m)
{
	struct buf b;
	struct frame *f;

	if (!room_is_member(&session_of(c)->member, m->room)) {
		reply_error(c, PROTO_NOT_MEMBER, "join the room before asking who is in it",
		            m->room);
		return;
	}
	buf_init(&b);
	buf_puts(&b, "{\"type\":\"presence\",\"payload\":");
	presence_answer(m->room, &b);
	buf_puts(&b, "}");
	f = b.failed ? NULL : frame_new(b.data, b.len);
	buf_free(&b);
	if (!f)
		reply_error(c, PROTO_SERVER_ERROR, "out of memory", m->room);
	else
		conn_reply(c, f);
}

/* ---- history ---- */

struct history_req {
	struct conn *c;
	char room[ROOM_NAME_MAX + 1];
};

/* The page goes out as one reply; a page larger than half the send budget is cut there (and
 * says more:true), so the reply never closes the client 4008: it asks again after the last id. */
static void on_history(void *arg, bool ok, bool recovered, struct frame **frames, size_t n,
                       bool more)
{
	struct history_req *h = arg;
	struct conn *c = h->c;
	size_t keep = 0, bytes = 0, budget = (size_t)g_cfg->send_queue_max_bytes / 2;

	while (keep < n && (keep == 0 || bytes + frames[keep]->len <= budget))
		bytes += frames[keep++]->len;
	if (conn_alive(c)) {
		if (!ok)
			reply_error(c, PROTO_SERVER_ERROR, "history unavailable, try again",
			            h->room);
		else
			conn_reply(
			    c, proto_history(h->room, frames, keep, recovered, more || keep < n));
	}
	for (size_t i = 0; i < n; i++)
		frame_unref(frames[i]);
	conn_release(c);
	free(h);
}

static void do_history(struct conn *c, struct proto_msg *m)
{
	struct history_req *h;

	if (!room_is_member(&session_of(c)->member, m->room)) {
		reply_error(c, PROTO_NOT_MEMBER, "join the room before asking its history",
		            m->room);
		return;
	}
	/* Without an outbox nothing is stored: an empty page that says so. */
	if (!pgl_enabled()) {
		conn_reply(c, proto_history(m->room, NULL, 0, false, false));
		return;
	}
	if (!(h = calloc(1, sizeof(*h)))) {
		reply_error(c, PROTO_SERVER_ERROR, "out of memory", m->room);
		return;
	}
	h->c = c;
	snprintf(h->room, sizeof(h->room), "%s", m->room);
	conn_hold(c);
	if (pgl_history(m->room, m->since, m->limit, on_history, h) < 0) {
		conn_release(c);
		free(h);
		reply_error(c, PROTO_SERVER_ERROR, "history unavailable, try again", m->room);
	}
}

/* After a refresh, rooms the new token no longer allows are left with an error each. Rooms
 * granted by an asynchronous policy are kept: the policy is about ownership, not the token. */
static void recheck_rooms(struct conn *c)
{
	for (uint32_t i = session_of(c)->member.nsubs; i-- > 0;) {
		const char *room = room_name(room_member_room(&session_of(c)->member, i));
		char name[ROOM_NAME_MAX + 1];
		if (authz_still_allowed(&session_of(c)->ident,
		                        more_of(c) ? more_of(c)->authz_cache : NULL, room))
			continue;
		snprintf(name, sizeof(name), "%s", room);
		room_leave(name, &session_of(c)->member);
		reply_error(c, PROTO_FORBIDDEN, "no longer authorized", name);
	}
}

static void do_auth(struct conn *c, struct proto_msg *m)
{
	struct auth_identity id;
	enum auth_reason why = auth_verify(g_auth, m->token, strlen(m->token), time(NULL), &id);

	if (why != AUTH_OK) {
		metrics.auth_failures[why]++;
		log_info("authentication failed", "conn", conn_id(c), "reason",
		         auth_reason_name(why));
		reply_error(c, PROTO_UNAUTHENTICATED, "invalid token", NULL);
		if (c->state == CONN_AWAIT_AUTH)
			conn_close(c, 4001, "invalid token", true);
		return;
	}
	if (c->state == CONN_OPEN) {
		/* A refresh may extend the session but never switch to another user. */
		if (strcmp(id.user_id, session_of(c)->ident.user_id)) {
			auth_identity_clear(&id);
			reply_error(c, PROTO_FORBIDDEN, "token is for another user", NULL);
			return;
		}
		auth_identity_clear(&session_of(c)->ident);
		session_of(c)->ident = id;
		/* The database ids first: rooms they grant must survive the recheck. A lookup that
		 * failed is tried again here. */
		resolve_identity(c);
		recheck_rooms(c);
		conn_reply(c, proto_authenticated(session_of(c)->ident.exp));
		arm_expiry(c);
		return;
	}
	session_of(c)->ident = id;
	become_open(c);
	conn_reply(c, proto_authenticated(session_of(c)->ident.exp));
	arm_expiry(c);
}

/* Rate limiting: an error reply at most every 100 ms while over the limit, and a 4029 close
 * when the client keeps going for twice its burst without slowing down. */
static bool rate_ok(struct conn *c)
{
	uint32_t now;

	if (conn_rate_take(c))
		return true;
	c->strikes++;
	if (c->strikes > (uint32_t)(g_cfg->rate_burst * 2)) {
		conn_close(c, 4029, "rate limit abused", false);
		return false;
	}
	/* Milliseconds, wrapping: only the difference is used. */
	now = (uint32_t)(util_now_ns() / 1000000);
	if ((uint32_t)(now - c->last_limited_ms) > 100) {
		c->last_limited_ms = now;
		reply_error(c, PROTO_RATE_LIMITED, "rate limit exceeded", NULL);
	}
	return false;
}

void session_message(struct conn *c, const char *data, size_t len)
{
	if (!conn_alive(c))
		return;
	metrics.messages_in++;
	if (!rate_ok(c))
		return;
	if (hold_message(c, data, len))
		return;
	dispatch(c, data, len);
}

/* An action message may name several rooms: each is joined (left) as if asked alone. */
static void each_room(struct conn *c, struct proto_msg *m,
                      void (*fn)(struct conn *c, struct proto_msg *m))
{
	if (!m->nrooms) {
		fn(c, m);
		return;
	}
	for (size_t i = 0; i < m->nrooms && conn_alive(c); i++) {
		memcpy(m->room, m->rooms[i], sizeof(m->room));
		fn(c, m);
	}
}

/* One message, rate limit already taken. */
static void dispatch(struct conn *c, const char *data, size_t len)
{
	struct proto_msg m;
	const char *detail;
	enum proto_code rc;

	rc = proto_parse(data, len, &m, &detail);
	if (rc != PROTO_OK) {
		reply_error(c, rc, detail, m.room);
		return;
	}
	/* A client written for another server says so in its first message: from then on it
	 * gets room messages in the typed form it dispatches on. */
	if (!(c->owner_bits & SESSION_SPOKE))
		c->owner_bits |= SESSION_SPOKE | (m.dialect ? SESSION_TYPED : 0);
	if (c->state == CONN_AWAIT_AUTH && m.type != PROTO_AUTH && m.type != PROTO_PING) {
		reply_error(c, PROTO_UNAUTHENTICATED, "authenticate first", m.room);
		proto_msg_clear(&m);
		return;
	}
	switch (m.type) {
	case PROTO_JOIN:
		each_room(c, &m, do_join);
		break;
	case PROTO_LEAVE:
		each_room(c, &m, do_leave);
		break;
	case PROTO_BROADCAST:
		do_broadcast(c, &m);
		break;
	case PROTO_AUTH:
		do_auth(c, &m);
		break;
	case PROTO_PING:
		conn_reply(c, proto_pong());
		break;
	case PROTO_HISTORY:
		do_history(c, &m);
		break;
	case PROTO_PRESENCE:
		do_presence(c, &m);
		break;
	}
	proto_msg_clear(&m);
}
