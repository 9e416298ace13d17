/* An asynchronous libpq connection driven by a uv_poll on its socket and uv timers: connect
 * state machine, backoff, query queue with deadlines, notifications and heartbeat. The state
 * enum is changed only by set_state(), which logs every transition. */
#include "pgc.h"
#include "log.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum pgc_state { PGC_IDLE = 0, PGC_CONNECTING, PGC_UP, PGC_BACKOFF, PGC_STOPPING };

struct pgc_query {
	char *sql;
	int nparams;
	char **params;
	uint32_t timeout_ms;
	pgc_result_fn cb;
	pgc_sent_fn sent;
	void *arg;
	unsigned flags;
	bool kept; /* survived a lost connection unsent once already */
	struct pgc_query *next;
};

struct pgc {
	uv_loop_t *loop;
	char *conninfo;
	char name[32];
	struct pgc_hooks hooks;
	enum pgc_state state;
	PGconn *conn;
	uv_poll_t *poll; /* allocated per socket: a closing handle cannot be reused at once */
	int poll_fd;
	PGresult *result;     /* first result of the query in flight, until libpq's final NULL */
	uv_timer_t timer;     /* connect deadline, backoff, or in-flight query deadline */
	uv_timer_t heartbeat; /* idle liveness probe */
	uv_check_t verdict;   /* after the poll that follows a passed query deadline */
	uint32_t sent_seq;    /* queries sent on this connection, for the verdict */
	uint32_t verdict_seq; /* the query whose deadline passed */
	PostgresPollingStatusType connect_phase;
	struct pgc_query *head, *tail; /* head is in flight when sent */
	struct pgc_query *urgent_tail; /* last query queued with pgc_query_first */
	bool in_flight;
	bool lost_by_deadline; /* while lose() runs for the query in flight's deadline */
	bool heartbeat_in_flight;
	uint32_t attempts;
	uint64_t reconnects;
	int closing;
	struct pgc_lookup *resolving; /* host names being looked up before PQconnectStartParams */
	void *relay; /* set: a --workers worker's pgc, served by the feed process */
};

/* Host names of a conninfo looked up one after the other on libuv's thread pool, so libpq
 * never resolves a name on the loop (PQconnectStartParams would, synchronously). */
struct pgc_lookup {
	uv_loop_t *loop;
	char *conninfo;
	pgc_lookup_fn cb; /* NULL once cancelled: the lookup's callback then only frees */
	void *arg;
	uv_getaddrinfo_t req;
	char **names; /* per host of the list: the name to look up, or NULL */
	char **addrs; /* per host: its numeric addresses, comma-separated ("" when none) */
	size_t n, next;
	char failed[256]; /* the last lookup error, for the log when no host resolves */
};

/* Numeric addresses kept per host name: libpq tries them in order, as it would the name's. */
#define RESOLVE_MAX_ADDRS 8

/* Connect and heartbeat deadlines; a query brings its own. */
#define CONNECT_TIMEOUT_MS   5000
#define HEARTBEAT_EVERY_MS   5000
#define HEARTBEAT_TIMEOUT_MS 3000
#define BACKOFF_MIN_MS       200
#define BACKOFF_MAX_MS       15000

static void on_io(uv_poll_t *h, int status, int events);
static void start_connect(struct pgc *pc);
static void pump(struct pgc *pc);

static void set_state(struct pgc *pc, enum pgc_state s)
{
	static const char *names[] = {"idle", "connecting", "up", "backoff", "stopping"};
	if (pc->state == s)
		return;
	log_info("postgres connection state", "conn", pc->name, "from", names[pc->state], "to",
	         names[s]);
	pc->state = s;
}

static void free_query(struct pgc_query *q)
{
	for (int i = 0; i < q->nparams; i++)
		free(q->params[i]);
	free(q->params);
	free(q->sql);
	free(q);
}

/* Fails every queued query (callbacks see NULL) and empties the queue. With keep_shared (an up
 * connection was lost), PGC_SHARED queries are kept, in order, for the next connection: a read
 * that waited in the queue, or was running when the connection failed under it, is not failed
 * because the connection broke (a read runs again harmlessly; the one in flight at its own
 * deadline is not, it would time out again). Kept once: if the connection is lost again before
 * they are answered (a failed reconnect included), they fail, so the wait is bounded by one
 * backoff and connect. */
static void fail_all(struct pgc *pc, const char *why, bool keep_shared)
{
	struct pgc_query *keep = NULL, *klast = NULL;
	struct pgc_query *sent = pc->in_flight && pc->lost_by_deadline ? pc->head : NULL;

	while (pc->head) {
		struct pgc_query *q = pc->head;
		pc->head = q->next;
		if (keep_shared && q != sent && (q->flags & PGC_SHARED) && !q->kept) {
			q->kept = true;
			q->next = NULL;
			if (klast)
				klast->next = q;
			else
				keep = q;
			klast = q;
			continue;
		}
		if (q->cb)
			q->cb(q->arg, NULL, why);
		free_query(q);
	}
	pc->urgent_tail = NULL;
	pc->in_flight = false;
	/* A callback may have stopped pc: nothing kept is ever sent then. */
	while (keep && pc->state == PGC_STOPPING) {
		struct pgc_query *q = keep;
		keep = q->next;
		if (q->cb)
			q->cb(q->arg, NULL, why);
		free_query(q);
	}
	pc->head = keep;
	pc->tail = keep ? klast : NULL;
}

static void free_handle(uv_handle_t *h)
{
	free(h);
}

static void unwatch(struct pgc *pc)
{
	if (!pc->poll)
		return;
	uv_poll_stop(pc->poll);
	uv_close((uv_handle_t *)pc->poll, free_handle);
	pc->poll = NULL;
}

static void watch(struct pgc *pc, int events)
{
	int fd = pc->conn ? PQsocket(pc->conn) : -1;

	/* libpq may switch sockets while connecting (another host of a multi-host URI). */
	if (pc->poll && pc->poll_fd != fd)
		unwatch(pc);
	if (fd < 0)
		return;
	if (!pc->poll) {
		pc->poll = malloc(sizeof(*pc->poll));
		if (!pc->poll || uv_poll_init(pc->loop, pc->poll, fd) < 0) {
			free(pc->poll);
			pc->poll = NULL;
			return;
		}
		pc->poll->data = pc;
		pc->poll_fd = fd;
	}
	uv_poll_start(pc->poll, events, on_io);
}

static void abandon_resolve(struct pgc *pc)
{
	if (!pc->resolving)
		return;
	pgc_lookup_cancel(pc->resolving);
	pc->resolving = NULL;
}

static void drop_conn(struct pgc *pc)
{
	abandon_resolve(pc);
	unwatch(pc);
	if (pc->result) {
		PQclear(pc->result);
		pc->result = NULL;
	}
	if (pc->conn) {
		PQfinish(pc->conn);
		pc->conn = NULL;
	}
}

static void on_backoff_done(uv_timer_t *t)
{
	start_connect(t->data);
}

void pgc_retry_now(struct pgc *pc, const char *why)
{
	/* Relayed: the feed process skips its own backoffs when one of its connections is up. */
	if (pc && pc->relay)
		return;
	/* Only a connection waiting out its backoff: one that is connecting or up has nothing
	 * to skip, and a stopping one must stay down. */
	if (!pc || pc->state != PGC_BACKOFF)
		return;
	log_info("postgres reconnecting without waiting out the backoff", "conn", pc->name,
	         "reason", why);
	uv_timer_stop(&pc->timer);
	start_connect(pc);
}

/* Connection lost or never made: drop it, tell the owner, retry after a jittered delay. */
static void lose(struct pgc *pc, const char *reason)
{
	bool was_up = pc->state == PGC_UP;
	uint64_t delay;
	char why[256];

	if (pc->state == PGC_STOPPING)
		return;
	/* reason may live inside the PGconn that is about to be freed. */
	snprintf(why, sizeof(why), "%s", reason);
	for (char *nl = strchr(why, '\n'); nl; nl = strchr(nl, '\n'))
		*nl = ' ';
	log_warn("postgres connection failed", "conn", pc->name, "reason", why);
	drop_conn(pc);
	uv_timer_stop(&pc->timer);
	uv_timer_stop(&pc->heartbeat);
	pc->heartbeat_in_flight = false;
	/* Leave UP before failing queries: their callbacks must not be able to queue more. */
	set_state(pc, PGC_BACKOFF);
	fail_all(pc, why, was_up);
	if (was_up && pc->hooks.down)
		pc->hooks.down(pc, pc->hooks.arg);
	delay = BACKOFF_MIN_MS << (pc->attempts < 7 ? pc->attempts : 7);
	if (delay > BACKOFF_MAX_MS)
		delay = BACKOFF_MAX_MS;
	/* Full jitter in [delay/2, delay] so replicas do not reconnect in lockstep. */
	delay = delay / 2 + (uint64_t)rand() % (delay / 2 + 1);
	pc->attempts++;
	uv_timer_start(&pc->timer, on_backoff_done, delay, 0);
}

static void on_connect_deadline(uv_timer_t *t)
{
	struct pgc *pc = t->data;
	if (pc->state == PGC_CONNECTING)
		lose(pc, "connect timed out");
}

static void on_heartbeat_result(void *arg, const PGresult *res, const char *err)
{
	struct pgc *pc = arg;
	pc->heartbeat_in_flight = false;
	if (res && PQntuples(res) == 1 && !strcmp(pc->name, "listener"))
		metrics.pg_queue_usage = atof(PQgetvalue(res, 0, 0));
}

/* Sends a cheap probe when idle; a probe that outlives its deadline drops the connection,
 * which is how a half-open TCP connection (no RST) is noticed. */
static void on_heartbeat(uv_timer_t *t)
{
	struct pgc *pc = t->data;
	if (pc->state != PGC_UP || pc->heartbeat_in_flight)
		return;
	if (pgc_query(pc, "SELECT pg_notification_queue_usage()", 0, NULL, HEARTBEAT_TIMEOUT_MS,
	              on_heartbeat_result, pc) == 0)
		pc->heartbeat_in_flight = true;
}

static void became_up(struct pgc *pc)
{
	uv_timer_stop(&pc->timer);
	if (PQsetnonblocking(pc->conn, 1) != 0) {
		lose(pc, PQerrorMessage(pc->conn));
		return;
	}
	pc->attempts = 0;
	set_state(pc, PGC_UP);
	watch(pc, UV_READABLE);
	uv_timer_start(&pc->heartbeat, on_heartbeat, HEARTBEAT_EVERY_MS, HEARTBEAT_EVERY_MS);
	if (pc->hooks.up)
		pc->hooks.up(pc, pc->hooks.arg);
	pump(pc);
}

static void connect_step(struct pgc *pc)
{
	pc->connect_phase = PQconnectPoll(pc->conn);
	switch (pc->connect_phase) {
	case PGRES_POLLING_READING:
		watch(pc, UV_READABLE);
		break;
	case PGRES_POLLING_WRITING:
		watch(pc, UV_WRITABLE);
		break;
	case PGRES_POLLING_OK:
		became_up(pc);
		break;
	default:
		lose(pc, PQerrorMessage(pc->conn));
	}
}

/* Appends ",item" (or "item" first) to the comma list *b. Returns 0 or -1. */
static int conninfo_append_list(char **b, size_t *len, size_t *cap, const char *item)
{
	size_t need = *len + strlen(item) + 2;
	bool first = *b == NULL; /* items may be empty: the length cannot tell */

	if (need > *cap) {
		size_t ncap = need * 2 + 64;
		char *n = realloc(*b, ncap);
		if (!n)
			return -1;
		*b = n;
		*cap = ncap;
	}
	*len += (size_t)sprintf(*b + *len, "%s%s", first ? "" : ",", item);
	return 0;
}

/* Appends ' key=\'value\'' to b (libpq conninfo quoting). Returns 0 or -1 when out of memory. */
static int conninfo_append(char **b, size_t *len, size_t *cap, const char *key, const char *val)
{
	size_t need = *len + strlen(key) + 2 * strlen(val) + 6;

	if (need > *cap) {
		size_t ncap = need * 2;
		char *n = realloc(*b, ncap);
		if (!n)
			return -1;
		*b = n;
		*cap = ncap;
	}
	*len += (size_t)sprintf(*b + *len, "%s%s='", *len ? " " : "", key);
	for (; *val; val++) {
		if (*val == '\'' || *val == '\\')
			(*b)[(*len)++] = '\\';
		(*b)[(*len)++] = *val;
	}
	(*b)[(*len)++] = '\'';
	(*b)[*len] = '\0';
	return 0;
}

/* Item i of a comma list (items may be empty), or "" when the list is shorter. Writes into buf. */
static const char *list_item(const char *list, size_t i, char *buf, size_t cap)
{
	const char *p = list ? list : "";
	for (; i > 0; i--) {
		p = strchr(p, ',');
		if (!p)
			return "";
		p++;
	}
	snprintf(buf, cap, "%.*s", (int)strcspn(p, ","), p);
	return buf;
}

static size_t list_count(const char *list)
{
	size_t n = 1;
	if (!list || !*list)
		return 0;
	for (; *list; list++)
		n += *list == ',';
	return n;
}

/* A host entry that needs no lookup: empty (libpq's default), a socket directory, or numeric. */
static bool host_is_literal(const char *h)
{
	unsigned char a[sizeof(struct in6_addr)];
	return !*h || h[0] == '/' || h[0] == '@' || inet_pton(AF_INET, h, a) == 1 ||
	       inet_pton(AF_INET6, h, a) == 1;
}

int pgc_conninfo_hosts(const char *conninfo, char ***names, size_t *n)
{
	PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
	const char *host = NULL, *hostaddr = NULL;
	char item[1024];
	size_t count, need = 0;

	*names = NULL;
	*n = 0;
	if (!opts)
		return -1;
	for (PQconninfoOption *o = opts; o->keyword; o++) {
		if (!strcmp(o->keyword, "host"))
			host = o->val;
		else if (!strcmp(o->keyword, "hostaddr"))
			hostaddr = o->val;
	}
	count = list_count(host);
	/* With hostaddr given the operator chose the addresses: libpq looks nothing up. */
	if (count && !(hostaddr && *hostaddr)) {
		*names = calloc(count, sizeof(**names));
		if (!*names) {
			PQconninfoFree(opts);
			return -1;
		}
		for (size_t i = 0; i < count; i++) {
			list_item(host, i, item, sizeof(item));
			if (!host_is_literal(item)) {
				(*names)[i] = strdup(item);
				if (!(*names)[i]) {
					pgc_free_names(*names, count);
					*names = NULL;
					PQconninfoFree(opts);
					return -1;
				}
				need++;
			}
		}
		*n = count;
	}
	PQconninfoFree(opts);
	if (!need) {
		pgc_free_names(*names, *n);
		*names = NULL;
		*n = 0;
	}
	return 0;
}

void pgc_free_names(char **names, size_t n)
{
	for (size_t i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
}

char *pgc_conninfo_with_addrs(const char *conninfo, char *const *names, char *const *addrs,
                              size_t n)
{
	PQconninfoOption *opts = PQconninfoParse(conninfo, NULL);
	const char *host = NULL, *port = NULL;
	char *out = NULL, *hosts = NULL, *haddrs = NULL, *ports = NULL;
	size_t olen = 0, ocap = 0, hl = 0, hc = 0, al = 0, ac = 0, pl = 0, pc = 0, nports;
	char item[1024], pitem[64];
	bool ok = opts != NULL;

	for (PQconninfoOption *o = opts; ok && o->keyword; o++) {
		if (!strcmp(o->keyword, "host"))
			host = o->val;
		else if (!strcmp(o->keyword, "port"))
			port = o->val;
	}
	nports = list_count(port);
	/* One entry per address of each looked-up host, one per other host; a name that did not
	 * resolve is left out rather than handed to libpq, which would look it up on the loop. */
	for (size_t i = 0; ok && i < n; i++) {
		const char *h = list_item(host, i, item, sizeof(item));
		const char *pt = nports > 1 ? list_item(port, i, pitem, sizeof(pitem))
		                 : nports   ? port
		                            : "";
		const char *a = names[i] ? addrs[i] : "";
		size_t na = names[i] ? list_count(a) : 1;
		for (size_t k = 0; ok && k < na; k++) {
			char abuf[INET6_ADDRSTRLEN + 1];
			const char *ak = names[i] ? list_item(a, k, abuf, sizeof(abuf)) : "";
			/* Built as three comma lists, then quoted as values. */
			ok = !conninfo_append_list(&hosts, &hl, &hc, h) &&
			     !conninfo_append_list(&haddrs, &al, &ac, ak) &&
			     !conninfo_append_list(&ports, &pl, &pc, pt);
		}
	}
	if (ok && !hosts)
		ok = false; /* no host left */
	for (PQconninfoOption *o = opts; ok && o->keyword; o++) {
		if (!o->val || !strcmp(o->keyword, "host") || !strcmp(o->keyword, "hostaddr") ||
		    !strcmp(o->keyword, "port"))
			continue;
		ok = !conninfo_append(&out, &olen, &ocap, o->keyword, o->val);
	}
	if (ok)
		ok = !conninfo_append(&out, &olen, &ocap, "host", hosts) &&
		     !conninfo_append(&out, &olen, &ocap, "hostaddr", haddrs) &&
		     (!nports || !conninfo_append(&out, &olen, &ocap, "port", ports));
	PQconninfoFree(opts);
	free(hosts);
	free(haddrs);
	free(ports);
	if (!ok) {
		free(out);
		return NULL;
	}
	return out;
}

static void connect_with(struct pgc *pc, const char *conninfo)
{
	/* The URL's own settings win; ours only fill gaps: a name DBAs can see in
	 * pg_stat_activity and TCP keepalives so a dead peer is noticed by the kernel too. */
	char app[48];
	const char *keys[] = {"fallback_application_name",
	                      "keepalives",
	                      "keepalives_idle",
	                      "keepalives_interval",
	                      "keepalives_count",
	                      "dbname",
	                      NULL};
	const char *vals[] = {app, "1", "10", "5", "3", conninfo, NULL};

	snprintf(app, sizeof(app), "roomcast-%s", pc->name);
	pc->conn = PQconnectStartParams(keys, vals, 1);
	if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD) {
		lose(pc, pc->conn ? PQerrorMessage(pc->conn) : "out of memory");
		return;
	}
	connect_step(pc);
}

static void lookup_free(struct pgc_lookup *lk)
{
	pgc_free_names(lk->names, lk->n);
	pgc_free_names(lk->addrs, lk->n);
	free(lk->conninfo);
	free(lk);
}

static bool lookup_next(struct pgc_lookup *lk);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
	struct pgc_lookup *lk = req->data;
	char list[RESOLVE_MAX_ADDRS * (INET6_ADDRSTRLEN + 1)] = "";
	size_t len = 0, count = 0;

	if (!lk->cb) {
		uv_freeaddrinfo(res);
		lookup_free(lk);
		return;
	}
	if (status < 0)
		snprintf(lk->failed, sizeof(lk->failed), "could not resolve %s: %s",
		         lk->names[lk->next], uv_strerror(status));
	for (struct addrinfo *ai = res; ai && count < RESOLVE_MAX_ADDRS; ai = ai->ai_next) {
		char a[INET6_ADDRSTRLEN];
		const void *src =
		    ai->ai_family == AF_INET
		        ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
		        : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
		if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
		    !inet_ntop(ai->ai_family, src, a, sizeof(a)) || strstr(list, a))
			continue;
		len +=
		    (size_t)snprintf(list + len, sizeof(list) - len, "%s%s", count ? "," : "", a);
		count++;
	}
	uv_freeaddrinfo(res);
	lk->addrs[lk->next] = strdup(list);
	if (!lk->addrs[lk->next]) {
		lk->cb(lk->arg, NULL, "out of memory");
		lookup_free(lk);
		return;
	}
	lk->next++;
	(void)lookup_next(lk);
}

/* Looks up the next name (true: a lookup is running), or hands the rewritten conninfo to the
 * callback once all are done and frees lk (false). */
static bool lookup_next(struct pgc_lookup *lk)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
	char *ci;
	int rc;

	while (lk->next < lk->n && !lk->names[lk->next])
		lk->next++;
	if (lk->next < lk->n) {
		lk->req.data = lk;
		rc = uv_getaddrinfo(lk->loop, &lk->req, on_resolved, lk->names[lk->next], NULL,
		                    &hints);
		if (rc == 0)
			return true;
		snprintf(lk->failed, sizeof(lk->failed), "could not resolve %s: %s",
		         lk->names[lk->next], uv_strerror(rc));
		lk->addrs[lk->next] = strdup("");
		lk->next++;
		return lookup_next(lk);
	}
	ci = pgc_conninfo_with_addrs(lk->conninfo, lk->names, lk->addrs, lk->n);
	if (!ci) {
		char why[300];
		snprintf(why, sizeof(why), "%s", lk->failed[0] ? lk->failed : "no usable host");
		lk->cb(lk->arg, NULL, why);
		lookup_free(lk);
		return false;
	}
	lk->cb(lk->arg, ci, NULL);
	/* The callback copied what it needs; the string may hold a password. */
	memset(ci, 0, strlen(ci));
	free(ci);
	lookup_free(lk);
	return false;
}

struct pgc_lookup *pgc_lookup(uv_loop_t *loop, const char *conninfo, pgc_lookup_fn cb, void *arg)
{
	struct pgc_lookup *lk;
	char **names;
	size_t n;

	if (pgc_conninfo_hosts(conninfo, &names, &n) < 0 || !names) {
		/* Nothing to look up (or a conninfo libpq will refuse with a better message). */
		cb(arg, conninfo, NULL);
		return NULL;
	}
	lk = calloc(1, sizeof(*lk));
	if (!lk || !(lk->addrs = calloc(n, sizeof(*lk->addrs))) ||
	    !(lk->conninfo = strdup(conninfo))) {
		if (lk)
			free(lk->addrs);
		free(lk);
		pgc_free_names(names, n);
		cb(arg, NULL, "out of memory");
		return NULL;
	}
	lk->loop = loop;
	lk->cb = cb;
	lk->arg = arg;
	lk->names = names;
	lk->n = n;
	/* Finished at once (every lookup failed to start): lk is already freed. */
	return lookup_next(lk) ? lk : NULL;
}

void pgc_lookup_cancel(struct pgc_lookup *lk)
{
	if (!lk)
		return;
	lk->cb = NULL;
	/* Either way on_resolved still runs (with UV_EAI_CANCELED when the lookup had not
	 * started), sees cb NULL and frees lk. */
	(void)uv_cancel((uv_req_t *)&lk->req);
}

static void on_looked_up(void *arg, const char *conninfo, const char *why)
{
	struct pgc *pc = arg;

	pc->resolving = NULL;
	if (!conninfo) {
		lose(pc, why);
		return;
	}
	connect_with(pc, conninfo);
}

static void start_connect(struct pgc *pc)
{
	struct pgc_lookup *lk;

	if (pc->state == PGC_STOPPING)
		return;
	if (pc->reconnects || pc->attempts)
		pc->reconnects++;
	set_state(pc, PGC_CONNECTING);
	/* The deadline covers the lookups too. */
	uv_timer_start(&pc->timer, on_connect_deadline, CONNECT_TIMEOUT_MS, 0);
	lk = pgc_lookup(pc->loop, pc->conninfo, on_looked_up, pc);
	/* NULL when on_looked_up already ran; it cleared pc->resolving itself. */
	if (lk)
		pc->resolving = lk;
}

/* The verdict on a passed query deadline, given after the loop has read its sockets once
 * more: libuv runs timers before it polls, so when this process itself stalled (starved of CPU,
 * stopped) past the deadline, the answer may be sitting unread. */
static void on_query_verdict(uv_check_t *h)
{
	struct pgc *pc = h->data;

	uv_check_stop(h);
	if (pc->state == PGC_UP && pc->in_flight && pc->sent_seq == pc->verdict_seq) {
		pc->lost_by_deadline = true; /* the query in flight is not run again */
		lose(pc, "query timed out");
		pc->lost_by_deadline = false;
	}
}

static void on_query_deadline(uv_timer_t *t)
{
	struct pgc *pc = t->data;

	if (pc->state != PGC_UP || !pc->in_flight)
		return;
	pc->verdict_seq = pc->sent_seq;
	uv_check_start(&pc->verdict, on_query_verdict);
}

/* Sends the head of the queue when nothing is in flight. */
static void pump(struct pgc *pc)
{
	struct pgc_query *q = pc->head;

	if (pc->state != PGC_UP || pc->in_flight || !q)
		return;
	if (!PQsendQueryParams(pc->conn, q->sql, q->nparams, NULL, (const char *const *)q->params,
	                       NULL, NULL, 0)) {
		lose(pc, PQerrorMessage(pc->conn));
		return;
	}
	pc->in_flight = true;
	pc->sent_seq++;
	/* The deadline counts from here, the send: waiting in the queue never fails a query. */
	uv_timer_start(&pc->timer, on_query_deadline, q->timeout_ms, 0);
	if (q->sent) {
		pgc_sent_fn sent = q->sent;
		q->sent = NULL;
		sent(q->arg);
	}
	/* Flush what libpq could not write at once; readable stays watched for the answer. */
	watch(pc, PQflush(pc->conn) == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
}

static void finish_query(struct pgc *pc, PGresult *res)
{
	struct pgc_query *q = pc->head;
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

	uv_timer_stop(&pc->timer);
	pc->head = q->next;
	if (!pc->head)
		pc->tail = NULL;
	if (pc->urgent_tail == q)
		pc->urgent_tail = NULL;
	pc->in_flight = false;
	if (q->cb) {
		if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK)
			q->cb(q->arg, res, NULL);
		else
			q->cb(q->arg, NULL, res ? PQresultErrorMessage(res) : "no result");
	}
	free_query(q);
}

static void on_io(uv_poll_t *h, int status, int events)
{
	struct pgc *pc = h->data;
	PGnotify *n;

	if (pc->state == PGC_CONNECTING) {
		connect_step(pc);
		return;
	}
	if (pc->state != PGC_UP)
		return;
	if (status < 0) {
		lose(pc, uv_strerror(status));
		return;
	}
	if (events & UV_WRITABLE) {
		int fr = PQflush(pc->conn);
		if (fr < 0) {
			lose(pc, PQerrorMessage(pc->conn));
			return;
		}
		watch(pc, fr == 1 ? UV_READABLE | UV_WRITABLE : UV_READABLE);
	}
	if (!(events & UV_READABLE))
		return;
	if (!PQconsumeInput(pc->conn)) {
		lose(pc, PQerrorMessage(pc->conn));
		return;
	}
	/* A query is complete when libpq returns NULL; our queries are single statements, so
	 * the first result is the answer and any further one is dropped. */
	while (pc->in_flight && !PQisBusy(pc->conn)) {
		PGresult *res = PQgetResult(pc->conn);
		if (res) {
			if (pc->result)
				PQclear(res);
			else
				pc->result = res;
			continue;
		}
		res = pc->result;
		pc->result = NULL;
		if ((!res || PQresultStatus(res) == PGRES_FATAL_ERROR) &&
		    PQstatus(pc->conn) == CONNECTION_BAD) {
			/* The connection failed under the query (terminated, server gone): lost,
			 * so that a shared read is run again on the next connection (fail_all). */
			char why[256];
			snprintf(why, sizeof(why), "%s",
			         res ? PQresultErrorMessage(res) : PQerrorMessage(pc->conn));
			PQclear(res);
			lose(pc, why);
			return;
		}
		if (res) {
			finish_query(pc, res);
			PQclear(res);
		} else {
			finish_query(pc, NULL);
		}
		if (pc->state != PGC_UP)
			return;
	}
	while ((n = PQnotifies(pc->conn))) {
		if (pc->hooks.notify)
			pc->hooks.notify(pc, n, pc->hooks.arg);
		PQfreemem(n);
		if (pc->state != PGC_UP)
			return;
	}
	pump(pc);
}

static const struct pgc_relay *g_relay;

void pgc_use_relay(const struct pgc_relay *relay)
{
	g_relay = relay;
}

struct pgc *pgc_start(uv_loop_t *loop, const char *conninfo, const char *name,
                      const struct pgc_hooks *hooks)
{
	struct pgc *pc = calloc(1, sizeof(*pc));

	if (pc && g_relay && g_relay->covers(name)) {
		if (!(pc->relay = g_relay->start(pc, loop, name, hooks))) {
			free(pc);
			return NULL;
		}
		return pc;
	}
	if (!pc || !(pc->conninfo = strdup(conninfo))) {
		free(pc);
		return NULL;
	}
	pc->loop = loop;
	snprintf(pc->name, sizeof(pc->name), "%s", name);
	pc->hooks = *hooks;
	uv_timer_init(loop, &pc->timer);
	uv_timer_init(loop, &pc->heartbeat);
	uv_check_init(loop, &pc->verdict);
	pc->timer.data = pc->heartbeat.data = pc->verdict.data = pc;
	start_connect(pc);
	return pc;
}

static void on_closed(uv_handle_t *h)
{
	struct pgc *pc = h->data;
	if (--pc->closing)
		return;
	free(pc->conninfo);
	free(pc);
}

void pgc_stop(struct pgc *pc)
{
	if (pc && pc->relay) {
		/* No hook runs after this, so pc is not needed past it. */
		g_relay->stop(pc->relay);
		free(pc);
		return;
	}
	if (!pc || pc->state == PGC_STOPPING)
		return;
	set_state(pc, PGC_STOPPING);
	drop_conn(pc);
	fail_all(pc, "shutting down", false);
	pc->closing = 3;
	uv_close((uv_handle_t *)&pc->timer, on_closed);
	uv_close((uv_handle_t *)&pc->heartbeat, on_closed);
	uv_close((uv_handle_t *)&pc->verdict, on_closed);
}

void pgc_reconnect(struct pgc *pc, const char *why)
{
	if (pc && pc->relay) {
		g_relay->reconnect(pc->relay, why);
		return;
	}
	if (pc && pc->state == PGC_UP)
		lose(pc, why);
}

bool pgc_is_up(const struct pgc *pc)
{
	if (pc && pc->relay)
		return g_relay->is_up(pc->relay);
	return pc && pc->state == PGC_UP;
}

uint64_t pgc_reconnects(const struct pgc *pc)
{
	if (pc && pc->relay)
		return g_relay->reconnects(pc->relay);
	return pc ? pc->reconnects : 0;
}

/* Queues a copy of the query: urgent ones go ahead of every ordinary query (behind the one
 * in flight, which cannot be recalled, and behind earlier urgent ones, which keep their order). */
static int queue_query(struct pgc *pc, unsigned flags, const char *sql, int nparams,
                       const char *const *params, uint32_t timeout_ms, pgc_result_fn cb,
                       pgc_sent_fn sent, void *arg)
{
	struct pgc_query *q, *prev;
	bool urgent = flags & PGC_URGENT;

	if (pc && pc->relay)
		return g_relay->query(pc->relay, flags, sql, nparams, params, timeout_ms, cb, arg);
	if (!pc || pc->state != PGC_UP)
		return -1;
	q = calloc(1, sizeof(*q));
	if (!q)
		return -1;
	q->sql = strdup(sql);
	q->nparams = nparams;
	q->params = nparams ? calloc((size_t)nparams, sizeof(char *)) : NULL;
	for (int i = 0; i < nparams; i++)
		if (params[i])
			q->params[i] = strdup(params[i]);
	q->timeout_ms = timeout_ms;
	q->cb = cb;
	q->sent = sent;
	q->flags = flags;
	q->arg = arg;
	prev = pc->tail;
	if (urgent) {
		prev = pc->urgent_tail ? pc->urgent_tail : pc->in_flight ? pc->head : NULL;
		pc->urgent_tail = q;
	}
	if (prev) {
		q->next = prev->next;
		prev->next = q;
	} else {
		q->next = pc->head;
		pc->head = q;
	}
	if (!q->next)
		pc->tail = q;
	pump(pc);
	return 0;
}

int pgc_query(struct pgc *pc, const char *sql, int nparams, const char *const *params,
              uint32_t timeout_ms, pgc_result_fn cb, void *arg)
{
	return queue_query(pc, 0, sql, nparams, params, timeout_ms, cb, NULL, arg);
}

int pgc_query_first(struct pgc *pc, const char *sql, int nparams, const char *const *params,
                    uint32_t timeout_ms, pgc_result_fn cb, void *arg)
{
	return queue_query(pc, PGC_URGENT, sql, nparams, params, timeout_ms, cb, NULL, arg);
}

int pgc_query_ex(struct pgc *pc, unsigned flags, const char *sql, int nparams,
                 const char *const *params, uint32_t timeout_ms, pgc_result_fn cb, pgc_sent_fn sent,
                 void *arg)
{
	return queue_query(pc, flags, sql, nparams, params, timeout_ms, cb, sent, arg);
}

int pgc_query_shared(struct pgc *pc, const char *sql, int nparams, const char *const *params,
                     uint32_t timeout_ms, pgc_result_fn cb, void *arg)
{
	return queue_query(pc, PGC_SHARED, sql, nparams, params, timeout_ms, cb, NULL, arg);
}
