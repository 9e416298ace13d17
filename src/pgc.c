/* An asynchronous libpq connection driven by a uv_poll on its socket and uv timers: connect
 * state machine, backoff, query queue with deadlines, notifications and heartbeat. The state
 * enum is changed only by set_state(), which logs every transition. */
#include "pgc.h"
#include "log.h"
#include "metrics.h"

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
	void *arg;
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
	PostgresPollingStatusType connect_phase;
	struct pgc_query *head, *tail; /* head is in flight when sent */
	struct pgc_query *urgent_tail; /* last query queued with pgc_query_first */
	bool in_flight;
	bool heartbeat_in_flight;
	uint32_t attempts;
	uint64_t reconnects;
	int closing;
};

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

/* Fails every queued query (callbacks see NULL) and empties the queue. */
static void fail_all(struct pgc *pc, const char *why)
{
	while (pc->head) {
		struct pgc_query *q = pc->head;
		pc->head = q->next;
		if (q->cb)
			q->cb(q->arg, NULL, why);
		free_query(q);
	}
	pc->tail = NULL;
	pc->urgent_tail = NULL;
	pc->in_flight = false;
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

static void drop_conn(struct pgc *pc)
{
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
	fail_all(pc, why);
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

static void start_connect(struct pgc *pc)
{
	if (pc->state == PGC_STOPPING)
		return;
	if (pc->reconnects || pc->attempts)
		pc->reconnects++;
	set_state(pc, PGC_CONNECTING);
	{
		/* The URL's own settings win; ours only fill gaps: a name DBAs can see in
		 * pg_stat_activity and TCP keepalives so a dead peer is noticed by the kernel too.
		 */
		char app[48];
		const char *keys[] = {"fallback_application_name",
		                      "keepalives",
		                      "keepalives_idle",
		                      "keepalives_interval",
		                      "keepalives_count",
		                      "dbname",
		                      NULL};
		const char *vals[] = {app, "1", "10", "5", "3", pc->conninfo, NULL};
		snprintf(app, sizeof(app), "roomcast-%s", pc->name);
		pc->conn = PQconnectStartParams(keys, vals, 1);
	}
	if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD) {
		lose(pc, pc->conn ? PQerrorMessage(pc->conn) : "out of memory");
		return;
	}
	uv_timer_start(&pc->timer, on_connect_deadline, CONNECT_TIMEOUT_MS, 0);
	connect_step(pc);
}

static void on_query_deadline(uv_timer_t *t)
{
	struct pgc *pc = t->data;
	if (pc->state == PGC_UP && pc->in_flight)
		lose(pc, "query timed out");
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
	uv_timer_start(&pc->timer, on_query_deadline, q->timeout_ms, 0);
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

struct pgc *pgc_start(uv_loop_t *loop, const char *conninfo, const char *name,
                      const struct pgc_hooks *hooks)
{
	struct pgc *pc = calloc(1, sizeof(*pc));

	if (!pc || !(pc->conninfo = strdup(conninfo))) {
		free(pc);
		return NULL;
	}
	pc->loop = loop;
	snprintf(pc->name, sizeof(pc->name), "%s", name);
	pc->hooks = *hooks;
	uv_timer_init(loop, &pc->timer);
	uv_timer_init(loop, &pc->heartbeat);
	pc->timer.data = pc->heartbeat.data = pc;
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
	if (!pc || pc->state == PGC_STOPPING)
		return;
	set_state(pc, PGC_STOPPING);
	drop_conn(pc);
	fail_all(pc, "shutting down");
	pc->closing = 2;
	uv_close((uv_handle_t *)&pc->timer, on_closed);
	uv_close((uv_handle_t *)&pc->heartbeat, on_closed);
}

void pgc_reconnect(struct pgc *pc, const char *why)
{
	if (pc && pc->state == PGC_UP)
		lose(pc, why);
}

bool pgc_is_up(const struct pgc *pc)
{
	return pc && pc->state == PGC_UP;
}

uint64_t pgc_reconnects(const struct pgc *pc)
{
	return pc ? pc->reconnects : 0;
}

/* Queues a copy of the query: urgent ones go ahead of every ordinary query (behind the one
 * in flight, which cannot be recalled, and behind earlier urgent ones, which keep their order). */
static int queue_query(struct pgc *pc, bool urgent, const char *sql, int nparams,
                       const char *const *params, uint32_t timeout_ms, pgc_result_fn cb, void *arg)
{
	struct pgc_query *q, *prev;

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
	return queue_query(pc, false, sql, nparams, params, timeout_ms, cb, arg);
}

int pgc_query_first(struct pgc *pc, const char *sql, int nparams, const char *const *params,
                    uint32_t timeout_ms, pgc_result_fn cb, void *arg)
{
	return queue_query(pc, true, sql, nparams, params, timeout_ms, cb, arg);
}
