/* Logical capture (CAPTURE=logical, issue 16): the slot holder (elected with an advisory lock)
 * streams pgoutput from a logical replication slot on the loop, decodes committed transactions
 * and stores them in batches with realtime.capture_store on its own connection; the position is
 * confirmed to the slot only after that committed. See docs/database.md#logical-capture. */
#include "capture.h"
#include "buf.h"
#include "log.h"
#include "pgc.h"
#include "util.h"

#include <libpq-fe.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

/* Unstored decoded changes above this stop the reading until a store completes. */
#define PENDING_PAUSE_BYTES (8u << 20)
/* A store (one transaction of many events) gets this long. */
#define STORE_TIMEOUT_MS 60000
#define QUERY_TIMEOUT_MS 10000
/* Connecting the replication connection gets this long. */
#define REPL_CONNECT_TIMEOUT_MS 10000
/* Seconds from the Unix epoch to PostgreSQL's (2000-01-01). */
#define PG_EPOCH_OFFSET_S 946684800LL
#define JSONOID           114
#define JSONBOID          3802

enum role { ROLE_IDLE = 0, ROLE_STANDBY, ROLE_HOLDER };
enum repl { REPL_OFF = 0, REPL_CONNECTING, REPL_STARTING, REPL_STREAMING };

struct rel {
	uint32_t oid;
	char *ns, *name;
	int natts;
	char **att;
	uint32_t *typ;
};

static struct {
	const struct config *cfg;
	uv_loop_t *loop;
	struct pgc *pc;
	bool running, stopping;
	enum role role;
	bool misconfigured;
	char problem[256];  /* the last error, for /health */
	char last_gap[320]; /* why and when the slot was last found lost or missing */
	uv_timer_t tick;
	bool busy; /* a setup / lock / slot query in flight */

	PGconn *rconn;
	struct pgc_lookup *rlookup; /* the replication connection's host names being looked up */
	uv_poll_t *rpoll;
	int rfd;
	int rpoll_events;
	enum repl repl;
	uint64_t repl_since_ns;
	unsigned gen; /* bumped when the stream restarts: older store answers are ignored */

	struct rel *rels;
	size_t nrels;

	/* the transaction being decoded */
	bool in_txn;
	struct buf txn;
	size_t txn_changes;

	/* decoded, committed, not yet stored */
	struct buf pending;
	size_t pending_txns;
	int64_t pending_first_commit_us; /* unix microseconds */
	int64_t pending_last_commit_us;
	bool storing;
	int64_t storing_first_commit_us, storing_last_commit_us;
	bool paused;

	uint64_t received_lsn, confirmed_lsn, stored_lsn;

	/* slot status from the last check */
	char wal_status[16];
	bool slot_found;
	long long lag_bytes; /* -1 unknown */

	/* counters */
	uint64_t txns_stored, batches, gaps, store_failures, restarts, status_sent;
	double latency_sum_s;
	uint64_t latency_count;
	double last_latency_s;
} g;

static void repl_close(const char *why);
static void holder_begin(void);
static void try_flush(void);

static int64_t now_us(void)
{
	struct timeval tv;
	gettimeofday(&tv, NULL);
	return (int64_t)tv.tv_sec * 1000000 + tv.tv_usec;
}

static void lsn_str(uint64_t lsn, char out[32])
{
	snprintf(out, 32, "%X/%X", (unsigned)(lsn >> 32), (unsigned)lsn);
}

static int lsn_parse(const char *s, uint64_t *out)
{
	unsigned hi, lo;
	if (!s || sscanf(s, "%X/%X", &hi, &lo) != 2)
		return -1;
	*out = ((uint64_t)hi << 32) | lo;
	return 0;
}

static void set_problem(const char *p)
{
	size_t n = p ? strlen(p) : 0;
	if (n >= sizeof(g.problem))
		n = sizeof(g.problem) - 1; /* a long server message is cut */
	if (n)
		memcpy(g.problem, p, n);
	g.problem[n] = '\0';
}

/* ---- the blocking checks (start, migrate) ---- */

/* wal_level and realtime.capture_sync(mode, publication) on a blocking connection. */
static int check_and_sync(PGconn *c, const char *mode, const char *pub, char *err, size_t cap)
{
	const char *params[2] = {mode, pub};
	PGresult *r;

	if (!strcmp(mode, "logical")) {
		r = PQexec(c, "SELECT current_setting('wal_level')");
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			snprintf(err, cap, "reading wal_level failed: %s", PQerrorMessage(c));
			PQclear(r);
			return -1;
		}
		if (strcmp(PQgetvalue(r, 0, 0), "logical")) {
			snprintf(
			    err, cap,
			    "CAPTURE=logical needs wal_level=logical (the server has %s): set it "
			    "(ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL, or use "
			    "CAPTURE=triggers",
			    PQgetvalue(r, 0, 0));
			PQclear(r);
			return -1;
		}
		PQclear(r);
		r = PQexec(c, "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = "
		              "current_user");
		if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
		    strcmp(PQgetvalue(r, 0, 0), "t")) {
			snprintf(err, cap,
			         "CAPTURE=logical needs a role with the REPLICATION attribute "
			         "(ALTER ROLE "
			         "%s REPLICATION), to read the slot",
			         PQuser(c));
			PQclear(r);
			return -1;
		}
		PQclear(r);
	}
	r = PQexecParams(c, "SELECT realtime.capture_sync($1, $2)", 2, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(r) != PGRES_TUPLES_OK) {
		snprintf(
		    err, cap,
		    "realtime.capture_sync failed: %s(apply migration 010 with `roomcast migrate`; "
		    "the role must own the watched tables to publish them and set REPLICA "
		    "IDENTITY FULL)",
		    PQerrorMessage(c));
		PQclear(r);
		return -1;
	}
	PQclear(r);
	return 0;
}

int capture_prepare(const char *conninfo, const char *mode, const char *slot,
                    const char *publication, FILE *out)
{
	PGconn *c = PQconnectdb(conninfo);
	char err[1024];
	int rc = -1;

	if (PQstatus(c) != CONNECTION_OK) {
		fprintf(out, "capture: connect failed: %s", PQerrorMessage(c));
		PQfinish(c);
		return -1;
	}
	if (check_and_sync(c, mode, publication, err, sizeof(err)) < 0) {
		fprintf(out, "capture: %s\n", err);
		goto done;
	}
	if (!strcmp(mode, "logical")) {
		const char *params[1] = {slot};
		PGresult *r = PQexecParams(
		    c,
		    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput') "
		    "WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
		    1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(r) != PGRES_TUPLES_OK) {
			fprintf(out, "capture: creating slot %s failed: %s", slot,
			        PQerrorMessage(c));
			PQclear(r);
			goto done;
		}
		fprintf(out, "capture: logical, publication %s, slot %s %s\n", publication, slot,
		        PQntuples(r) ? "created" : "exists");
		PQclear(r);
	} else {
		fprintf(out, "capture: triggers (realtime triggers enabled)\n");
	}
	rc = 0;
done:
	PQfinish(c);
	return rc;
}

/* ---- decoding ---- */

struct rd {
	const unsigned char *p;
	size_t n;
	bool bad;
};

static uint64_t rd_int(struct rd *r, int bytes)
{
	uint64_t v = 0;
	if (r->bad || r->n < (size_t)bytes) {
		r->bad = true;
		return 0;
	}
	for (int i = 0; i < bytes; i++)
		v = (v << 8) | r->p[i];
	r->p += bytes;
	r->n -= (size_t)bytes;
	return v;
}

/* A NUL-terminated string inside the message (points into it). */
static const char *rd_str(struct rd *r)
{
	const unsigned char *z;
	const char *s;
	if (r->bad || !(z = memchr(r->p, 0, r->n))) {
		r->bad = true;
		return "";
	}
	s = (const char *)r->p;
	r->n -= (size_t)(z - r->p) + 1;
	r->p = z + 1;
	return s;
}

static struct rel *rel_find(uint32_t oid)
{
	for (size_t i = 0; i < g.nrels; i++)
		if (g.rels[i].oid == oid)
			return &g.rels[i];
	return NULL;
}

static void rel_clear(struct rel *rl)
{
	for (int i = 0; i < rl->natts; i++)
		free(rl->att[i]);
	free(rl->att);
	free(rl->typ);
	free(rl->ns);
	free(rl->name);
	memset(rl, 0, sizeof(*rl));
}

static void rels_free(void)
{
	for (size_t i = 0; i < g.nrels; i++)
		rel_clear(&g.rels[i]);
	free(g.rels);
	g.rels = NULL;
	g.nrels = 0;
}

/* 'R': a relation's columns, sent before its first change in each stream and after DDL. */
static int on_relation(struct rd *r)
{
	uint32_t oid = (uint32_t)rd_int(r, 4);
	const char *ns = rd_str(r), *name = rd_str(r);
	int natts;
	struct rel *rl, nr;

	rd_int(r, 1); /* replica identity */
	natts = (int)rd_int(r, 2);
	if (r->bad)
		return -1;
	memset(&nr, 0, sizeof(nr));
	nr.oid = oid;
	nr.ns = strdup(ns);
	nr.name = strdup(name);
	nr.att = calloc((size_t)natts + 1, sizeof(char *));
	nr.typ = calloc((size_t)natts + 1, sizeof(uint32_t));
	if (!nr.ns || !nr.name || !nr.att || !nr.typ) {
		rel_clear(&nr);
		return -1;
	}
	for (int i = 0; i < natts; i++) {
		rd_int(r, 1); /* flags */
		nr.att[i] = strdup(rd_str(r));
		nr.natts = i + 1;
		nr.typ[i] = (uint32_t)rd_int(r, 4);
		rd_int(r, 4); /* typmod */
		if (!nr.att[i] || r->bad) {
			rel_clear(&nr);
			return -1;
		}
	}
	rl = rel_find(oid);
	if (rl) {
		rel_clear(rl);
	} else {
		struct rel *grown = realloc(g.rels, (g.nrels + 1) * sizeof(*grown));
		if (!grown) {
			rel_clear(&nr);
			return -1;
		}
		g.rels = grown;
		rl = &g.rels[g.nrels++];
	}
	*rl = nr;
	return 0;
}

/* TupleData as a JSON object of text values (json columns as JSON); unchanged TOASTed values
 * are left out (capture_apply takes them from the old row). */
static int tuple_json(struct rd *r, const struct rel *rl, struct buf *b)
{
	int n = (int)rd_int(r, 2);
	bool first = true;

	buf_puts(b, "{");
	for (int i = 0; i < n && !r->bad; i++) {
		int kind = (int)rd_int(r, 1);
		const char *name = i < rl->natts ? rl->att[i] : "?";
		uint32_t len;

		if (kind == 'u')
			continue;
		if (kind != 'n' && kind != 't')
			return -1;
		buf_puts(b, first ? "" : ",");
		first = false;
		buf_json_str(b, name, strlen(name));
		buf_puts(b, ":");
		if (kind == 'n') {
			buf_puts(b, "null");
			continue;
		}
		len = (uint32_t)rd_int(r, 4);
		if (r->bad || r->n < len)
			return -1;
		if (i < rl->natts && (rl->typ[i] == JSONOID || rl->typ[i] == JSONBOID))
			buf_put(b, r->p, len);
		else
			buf_json_str(b, (const char *)r->p, len);
		r->p += len;
		r->n -= len;
	}
	buf_puts(b, "}");
	return r->bad ? -1 : 0;
}

/* 'I', 'U', 'D': one change appended to the transaction's JSON array. */
static int on_change(int type, struct rd *r)
{
	struct rel *rl = rel_find((uint32_t)rd_int(r, 4));
	struct buf tmp;
	int sub;
	const char *op = type == 'I' ? "INSERT" : type == 'U' ? "UPDATE" : "DELETE";
	bool keep_old = false;

	if (!rl || r->bad || !g.in_txn)
		return -1;
	/* product_order has no events: only its deleted rows matter (a deleted order's sellers). */
	if (!strcmp(rl->ns, "public") && !strcmp(rl->name, "product_order") && type != 'D')
		return 0;
	buf_init(&tmp);
	buf_puts(&tmp, g.txn_changes ? ",{\"s\":" : "{\"s\":");
	buf_json_str(&tmp, rl->ns, strlen(rl->ns));
	buf_puts(&tmp, ",\"t\":");
	buf_json_str(&tmp, rl->name, strlen(rl->name));
	buf_printf(&tmp, ",\"op\":\"%s\"", op);
	sub = (int)rd_int(r, 1);
	if (sub == 'K' || sub == 'O') {
		/* Only a whole old row ('O', REPLICA IDENTITY FULL) is the row; a key is not. */
		struct buf old;
		buf_init(&old);
		keep_old = sub == 'O';
		if (tuple_json(r, rl, &old) < 0) {
			buf_free(&old);
			buf_free(&tmp);
			return -1;
		}
		if (keep_old) {
			buf_puts(&tmp, ",\"o\":");
			buf_put(&tmp, old.data, old.len);
		}
		buf_free(&old);
		if (type == 'U')
			sub = (int)rd_int(r, 1);
	}
	if (type != 'D') {
		if (sub != 'N') {
			buf_free(&tmp);
			return -1;
		}
		buf_puts(&tmp, ",\"n\":");
		if (tuple_json(r, rl, &tmp) < 0) {
			buf_free(&tmp);
			return -1;
		}
	}
	buf_puts(&tmp, "}");
	if (tmp.failed) {
		buf_free(&tmp);
		return -1;
	}
	buf_put(&g.txn, tmp.data, tmp.len);
	g.txn_changes++;
	buf_free(&tmp);
	return 0;
}

/* Everything received is stored (or had nothing to store): lsn may be confirmed. */
static bool all_stored(void)
{
	return !g.in_txn && !g.pending_txns && !g.storing;
}

static void on_commit(struct rd *r)
{
	uint64_t end_lsn;
	int64_t commit_us;
	char lsn[32];

	rd_int(r, 1);           /* flags */
	rd_int(r, 8);           /* commit lsn */
	end_lsn = rd_int(r, 8); /* end of the commit record: the position to confirm */
	commit_us = (int64_t)rd_int(r, 8) + PG_EPOCH_OFFSET_S * 1000000;
	g.in_txn = false;
	if (r->bad)
		return;
	if (!g.txn_changes) {
		if (all_stored() && end_lsn > g.confirmed_lsn)
			g.confirmed_lsn = end_lsn;
		return;
	}
	lsn_str(end_lsn, lsn);
	buf_printf(&g.pending, "%s{\"lsn\":\"%s\",\"c\":[", g.pending_txns ? "," : "", lsn);
	buf_put(&g.pending, g.txn.data, g.txn.len);
	buf_puts(&g.pending, "]}");
	if (!g.pending_txns)
		g.pending_first_commit_us = commit_us;
	g.pending_last_commit_us = commit_us;
	g.pending_txns++;
	try_flush();
	if (g.pending.len > PENDING_PAUSE_BYTES)
		g.paused = true; /* until the store in flight is done */
}

/* One pgoutput message (the payload of an XLogData). */
static int on_pgoutput(const unsigned char *p, size_t n)
{
	struct rd r = {p + 1, n - 1, false};

	if (!n)
		return -1;
	switch (p[0]) {
	case 'B':
		g.in_txn = true;
		g.txn.len = 0;
		g.txn.failed = false;
		g.txn_changes = 0;
		return 0;
	case 'C':
		on_commit(&r);
		return r.bad || g.pending.failed ? -1 : 0;
	case 'R':
		return on_relation(&r);
	case 'I':
	case 'U':
	case 'D':
		return on_change(p[0], &r);
	default: /* 'Y' type, 'O' origin, 'T' truncate (no row trigger fires either), 'M' */
		return 0;
	}
}

/* ---- the replication connection ---- */

static void put_u64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)v;
		v >>= 8;
	}
}

static void poll_update(void);

/* Standby status update: written up to what was received, flushed (= confirmed_flush_lsn of the
 * slot) only up to what is stored. */
static void send_status(void)
{
	unsigned char m[34];

	if (g.repl != REPL_STREAMING)
		return;
	m[0] = 'r';
	put_u64(m + 1, g.received_lsn > g.confirmed_lsn ? g.received_lsn : g.confirmed_lsn);
	put_u64(m + 9, g.confirmed_lsn);
	put_u64(m + 17, g.confirmed_lsn);
	put_u64(m + 25, (uint64_t)(now_us() - PG_EPOCH_OFFSET_S * 1000000));
	m[33] = 0;
	if (PQputCopyData(g.rconn, (const char *)m, sizeof(m)) != 1) {
		repl_close("sending the standby status failed");
		return;
	}
	g.status_sent++;
	poll_update();
}

static void on_copy_message(const unsigned char *p, size_t n)
{
	struct rd r = {p + 1, n - 1, false};

	if (!n)
		return;
	if (p[0] == 'w') {
		uint64_t start = rd_int(&r, 8);
		rd_int(&r, 8); /* wal end */
		rd_int(&r, 8); /* send time */
		if (r.bad || on_pgoutput(r.p, r.n) < 0) {
			repl_close("undecodable pgoutput message");
			return;
		}
		if (start > g.received_lsn)
			g.received_lsn = start;
	} else if (p[0] == 'k') {
		uint64_t end = rd_int(&r, 8);
		rd_int(&r, 8);
		int reply = (int)rd_int(&r, 1);
		if (r.bad)
			return;
		if (end > g.received_lsn)
			g.received_lsn = end;
		if (all_stored() && end > g.confirmed_lsn)
			g.confirmed_lsn = end;
		if (reply)
			send_status();
	}
}

static void on_repl_io(uv_poll_t *h, int status, int events);

/* Watches the replication socket for what libpq needs: readable unless paused, writable while
 * output is queued or the connect phase asks for it. */
static void poll_set(int fd, int events)
{
	if (g.rpoll && g.rfd != fd) {
		uv_close((uv_handle_t *)g.rpoll, (uv_close_cb)free);
		g.rpoll = NULL;
	}
	if (!g.rpoll) {
		g.rpoll = malloc(sizeof(*g.rpoll));
		if (!g.rpoll || uv_poll_init(g.loop, g.rpoll, fd)) {
			free(g.rpoll);
			g.rpoll = NULL;
			return;
		}
		g.rfd = fd;
		g.rpoll_events = -1;
	}
	if (events != g.rpoll_events) {
		g.rpoll_events = events;
		if (events)
			uv_poll_start(g.rpoll, events, on_repl_io);
		else
			uv_poll_stop(g.rpoll);
	}
}

static void poll_update(void)
{
	int ev = 0;
	int f;

	if (!g.rconn)
		return;
	f = PQflush(g.rconn);
	if (f < 0) {
		repl_close("sending to the server failed");
		return;
	}
	if (!g.paused)
		ev |= UV_READABLE;
	if (f == 1)
		ev |= UV_WRITABLE;
	poll_set(PQsocket(g.rconn), ev);
}

static void repl_close(const char *why)
{
	if (g.repl != REPL_OFF && why) {
		log_warn("capture stream stopped", "reason", why);
		set_problem(why);
		g.restarts++;
	}
	pgc_lookup_cancel(g.rlookup);
	g.rlookup = NULL;
	if (g.rpoll) {
		uv_close((uv_handle_t *)g.rpoll, (uv_close_cb)free);
		g.rpoll = NULL;
	}
	if (g.rconn) {
		PQfinish(g.rconn);
		g.rconn = NULL;
	}
	g.repl = REPL_OFF;
	g.gen++;
	/* Not stored: the slot sends it again from the confirmed position. */
	g.in_txn = false;
	g.pending.len = 0;
	g.pending.failed = false;
	g.pending_txns = 0;
	g.paused = false;
	rels_free();
}

static void repl_read(void)
{
	char *buf;
	int n;

	if (!PQconsumeInput(g.rconn)) {
		char why[300];
		snprintf(why, sizeof(why), "replication connection: %s", PQerrorMessage(g.rconn));
		repl_close(why);
		return;
	}
	if (g.repl == REPL_STARTING) {
		PGresult *res;
		if (PQisBusy(g.rconn))
			return;
		res = PQgetResult(g.rconn);
		if (PQresultStatus(res) != PGRES_COPY_BOTH) {
			char why[300];
			snprintf(why, sizeof(why), "START_REPLICATION failed: %s",
			         PQresultErrorMessage(res));
			PQclear(res);
			repl_close(why);
			return;
		}
		PQclear(res);
		g.repl = REPL_STREAMING;
		set_problem("");
		log_info("capture streaming", "slot", g.cfg->capture_slot, "publication",
		         g.cfg->capture_publication);
	}
	while (g.repl == REPL_STREAMING && !g.paused &&
	       (n = PQgetCopyData(g.rconn, &buf, 1)) != 0) {
		if (n == -1) { /* the server ended the copy: its error follows */
			PGresult *res = PQgetResult(g.rconn);
			char why[300];
			snprintf(why, sizeof(why), "the server ended replication: %s",
			         res ? PQresultErrorMessage(res) : "");
			PQclear(res);
			repl_close(why);
			return;
		}
		if (n == -2) {
			char why[300];
			snprintf(why, sizeof(why), "replication read failed: %s",
			         PQerrorMessage(g.rconn));
			repl_close(why);
			return;
		}
		on_copy_message((const unsigned char *)buf, (size_t)n);
		PQfreemem(buf);
	}
}

static void start_replication(void)
{
	char sql[512];
	snprintf(sql, sizeof(sql),
	         "START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names "
	         "'%s')",
	         g.cfg->capture_slot, g.cfg->capture_publication);
	PQsetnonblocking(g.rconn, 1);
	if (!PQsendQuery(g.rconn, sql)) {
		char why[300];
		snprintf(why, sizeof(why), "START_REPLICATION not sent: %s",
		         PQerrorMessage(g.rconn));
		repl_close(why);
		return;
	}
	g.repl = REPL_STARTING;
	poll_update();
}

static void repl_connect_step(void)
{
	switch (PQconnectPoll(g.rconn)) {
	case PGRES_POLLING_READING:
		poll_set(PQsocket(g.rconn), UV_READABLE);
		return;
	case PGRES_POLLING_WRITING:
		poll_set(PQsocket(g.rconn), UV_WRITABLE);
		return;
	case PGRES_POLLING_OK:
		start_replication();
		return;
	default: {
		char why[300];
		snprintf(why, sizeof(why), "replication connection failed: %s",
		         PQerrorMessage(g.rconn));
		repl_close(why);
	}
	}
}

static void on_repl_io(uv_poll_t *h, int status, int events)
{
	(void)h;
	(void)events;
	if (status < 0 && g.repl != REPL_CONNECTING) {
		repl_close("replication socket error");
		return;
	}
	if (g.repl == REPL_CONNECTING) {
		repl_connect_step();
		return;
	}
	repl_read();
	if (g.rconn)
		poll_update();
}

/* Starts the replication connection to conninfo (DATABASE_URL with numeric host addresses). */
static void on_repl_looked_up(void *arg, const char *conninfo, const char *why)
{
	const char *const keys[] = {"dbname", "replication", "application_name", "connect_timeout",
	                            NULL};
	const char *const vals[] = {conninfo, "database", "roomcast-capture", "10", NULL};
	char reason[320];

	(void)arg;
	g.rlookup = NULL;
	if (!conninfo) {
		snprintf(reason, sizeof(reason), "replication connection failed: %s", why);
		repl_close(reason);
		return;
	}
	g.rconn = PQconnectStartParams(keys, vals, 1);
	if (!g.rconn || PQstatus(g.rconn) == CONNECTION_BAD) {
		repl_close("replication connection could not start");
		return;
	}
	poll_set(PQsocket(g.rconn), UV_WRITABLE);
}

/* Connects with replication=database (walsender with SQL), as the slot's holder. The host
 * names are looked up off the loop first: PQconnectStartParams would resolve them on it,
 * synchronously. The connect deadline (on_tick) covers the lookup too. */
static void repl_open(void)
{
	struct pgc_lookup *lk;

	if (g.repl != REPL_OFF || g.role != ROLE_HOLDER)
		return;
	g.received_lsn = g.confirmed_lsn = g.stored_lsn;
	g.repl = REPL_CONNECTING;
	g.repl_since_ns = util_now_ns();
	lk = pgc_lookup(g.loop, g.cfg->database_url, on_repl_looked_up, NULL);
	/* NULL: on_repl_looked_up already ran (nothing to look up) and cleared g.rlookup. */
	if (lk)
		g.rlookup = lk;
}

/* ---- storing ---- */

static void on_stored(void *arg, const PGresult *res, const char *err)
{
	unsigned gen = (unsigned)(uintptr_t)arg;
	uint64_t lsn;
	double lat;

	if (g.stopping)
		return;
	g.storing = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
	    lsn_parse(PQgetvalue(res, 0, 0), &lsn) < 0) {
		char why[300];
		g.store_failures++;
		snprintf(why, sizeof(why), "realtime.capture_store failed: %s",
		         err   ? err
		         : res ? PQresultErrorMessage(res)
		               : "?");
		log_error("capture store failed", "reason", why);
		/* Nothing is confirmed: the stream starts again from the slot's position. */
		repl_close(why);
		return;
	}
	g.batches++;
	lat = (double)(now_us() - g.storing_last_commit_us) / 1e6;
	g.last_latency_s = lat;
	g.latency_sum_s += lat;
	g.latency_count++;
	if (lsn > g.stored_lsn)
		g.stored_lsn = lsn;
	if (gen == g.gen) { /* else the stream restarted meanwhile and confirms on its own */
		if (g.stored_lsn > g.confirmed_lsn)
			g.confirmed_lsn = g.stored_lsn;
		send_status();
	}
	try_flush();
	if (g.paused && g.pending.len <= PENDING_PAUSE_BYTES) {
		g.paused = false;
		repl_read(); /* messages libpq already holds */
		poll_update();
	}
}

/* Sends the pending transactions as one store when none is in flight. */
static void try_flush(void)
{
	const char *params[2];
	struct buf arr;

	if (g.storing || !g.pending_txns || !g.pc)
		return;
	buf_init(&arr);
	buf_puts(&arr, "[");
	buf_put(&arr, g.pending.data, g.pending.len);
	buf_put(&arr, "]", 2); /* with the NUL */
	if (arr.failed || g.pending.failed) {
		buf_free(&arr);
		repl_close("out of memory decoding");
		return;
	}
	params[0] = g.cfg->capture_slot;
	params[1] = arr.data;
	if (pgc_query(g.pc, "SELECT realtime.capture_store($1, $2::jsonb)::text", 2, params,
	              STORE_TIMEOUT_MS, on_stored, (void *)(uintptr_t)g.gen) < 0) {
		buf_free(&arr);
		return; /* the connection is down: pc_down restarts everything */
	}
	buf_free(&arr);
	g.storing = true;
	g.txns_stored += g.pending_txns;
	g.storing_first_commit_us = g.pending_first_commit_us;
	g.storing_last_commit_us = g.pending_last_commit_us;
	g.pending.len = 0;
	g.pending_txns = 0;
}

/* ---- holder election and the slot ---- */

static void on_gap(void *arg, const PGresult *res, const char *err)
{
	(void)arg;
	(void)err;
	if (g.stopping)
		return;
	g.busy = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_error("capture gap not recorded", "reason", err ? err : "query failed");
		return;
	}
	log_error("capture restarted after a gap: clients resuming from before it get "
	          "recovered:false",
	          "slot", g.cfg->capture_slot, "horizon", PQgetvalue(res, 0, 0));
	repl_open();
}

static void on_slot_created(void *arg, const PGresult *res, const char *err)
{
	bool had_position = (bool)(uintptr_t)arg;
	const char *params[2];

	if (g.stopping)
		return;
	g.busy = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		char why[300];
		snprintf(why, sizeof(why), "creating slot %s failed: %s", g.cfg->capture_slot,
		         err   ? err
		         : res ? PQresultErrorMessage(res)
		               : "?");
		log_error("capture slot not created", "reason", why);
		set_problem(why);
		return;
	}
	lsn_parse(PQgetvalue(res, 0, 0), &g.stored_lsn);
	log_info("capture slot created", "slot", g.cfg->capture_slot, "lsn", PQgetvalue(res, 0, 0));
	if (!had_position) {
		repl_open();
		return;
	}
	/* A slot that had a stored position is gone: what was written meanwhile is lost. */
	g.gaps++;
	{
		char ts[UTIL_TS_LEN];
		util_timestamp(ts);
		snprintf(g.last_gap, sizeof(g.last_gap), "%s at %s",
		         g.problem[0] ? g.problem : "slot gone", ts);
	}
	params[0] = g.cfg->capture_slot;
	params[1] = PQgetvalue(res, 0, 0);
	g.busy = pgc_query(g.pc, "SELECT realtime.capture_gap($1, $2::pg_lsn)", 2, params,
	                   QUERY_TIMEOUT_MS, on_gap, NULL) == 0;
}

static void create_slot(bool had_position)
{
	const char *params[1] = {g.cfg->capture_slot};
	g.busy =
	    pgc_query(
	        g.pc, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", 1,
	        params, QUERY_TIMEOUT_MS, on_slot_created, (void *)(uintptr_t)had_position) == 0;
}

static void on_slot_dropped(void *arg, const PGresult *res, const char *err)
{
	(void)arg;
	if (g.stopping)
		return;
	g.busy = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
		log_error("capture: dropping the lost slot failed", "reason",
		          err   ? err
		          : res ? PQresultErrorMessage(res)
		                : "?");
		return;
	}
	create_slot(true);
}

/* Holder: the slot's state decides: stream, wait (another walsender has it), or create it
 * again after reporting the gap (missing with a stored position, or lost). */
static void on_slot_state(void *arg, const PGresult *res, const char *err)
{
	const char *params[1] = {g.cfg->capture_slot};
	bool found, had_position;
	uint64_t stored = 0;

	(void)arg;
	if (g.stopping)
		return;
	g.busy = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		log_warn("capture slot check failed", "reason",
		         err   ? err
		         : res ? PQresultErrorMessage(res)
		               : "?");
		return;
	}
	found = !PQgetisnull(res, 0, 0);
	had_position =
	    !PQgetisnull(res, 0, 3) && lsn_parse(PQgetvalue(res, 0, 3), &stored) == 0 && stored > 0;
	if (had_position && stored > g.stored_lsn)
		g.stored_lsn = stored;
	if (!found) {
		if (had_position) {
			char why[200];
			snprintf(why, sizeof(why), "slot %s was missing (dropped?): created again",
			         g.cfg->capture_slot);
			log_error("capture slot missing", "slot", g.cfg->capture_slot, "action",
			          "created again; changes since the stored position are lost");
			set_problem(why);
		}
		create_slot(had_position);
		return;
	}
	if (!strcmp(PQgetvalue(res, 0, 1), "lost")) {
		char why[200];
		snprintf(why, sizeof(why),
		         "slot %s was lost (behind max_slot_wal_keep_size): created again",
		         g.cfg->capture_slot);
		log_error("capture slot lost", "slot", g.cfg->capture_slot, "action",
		          "dropped and created again; changes since the stored position are lost");
		set_problem(why);
		g.busy = pgc_query(g.pc, "SELECT pg_drop_replication_slot($1)", 1, params,
		                   QUERY_TIMEOUT_MS, on_slot_dropped, NULL) == 0;
		return;
	}
	if (!strcmp(PQgetvalue(res, 0, 2), "t")) {
		set_problem("slot in use by another connection; waiting");
		return; /* a previous holder's walsender not gone yet: next tick */
	}
	repl_open();
}

static void holder_begin(void)
{
	const char *params[1] = {g.cfg->capture_slot};
	if (g.busy || g.role != ROLE_HOLDER || g.repl != REPL_OFF)
		return;
	g.busy =
	    pgc_query(g.pc,
	              "SELECT s.slot_name, coalesce(s.wal_status, ''), s.active::text, "
	              "(SELECT p.lsn::text FROM realtime.capture_position p WHERE p.slot = $1) "
	              "FROM (SELECT 1) one LEFT JOIN pg_replication_slots s "
	              "ON s.slot_name = $1",
	              1, params, QUERY_TIMEOUT_MS, on_slot_state, NULL) == 0;
}

static void on_lock(void *arg, const PGresult *res, const char *err)
{
	(void)arg;
	(void)err;
	if (g.stopping)
		return;
	g.busy = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1)
		return;
	if (strcmp(PQgetvalue(res, 0, 0), "t")) {
		g.role = ROLE_STANDBY;
		return;
	}
	g.role = ROLE_HOLDER;
	log_info("capture holder", "slot", g.cfg->capture_slot);
	holder_begin();
}

static void try_lock(void)
{
	const char *params[1] = {g.cfg->capture_slot};
	g.busy =
	    pgc_query(g.pc,
	              "SELECT pg_try_advisory_lock(hashtext('roomcast capture'), hashtext($1))", 1,
	              params, QUERY_TIMEOUT_MS, on_lock, NULL) == 0;
}

static void on_setup(void *arg, const PGresult *res, const char *err)
{
	(void)arg;
	if (g.stopping)
		return;
	g.busy = false;
	if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		char why[300];
		snprintf(why, sizeof(why), "realtime.capture_sync failed: %s",
		         err   ? err
		         : res ? PQresultErrorMessage(res)
		               : "?");
		log_error("capture setup failed", "reason", why);
		set_problem(why);
		g.misconfigured = true;
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 0), "logical")) {
		log_error("CAPTURE=logical needs wal_level=logical", "wal_level",
		          PQgetvalue(res, 0, 0));
		set_problem("wal_level is not logical");
		g.misconfigured = true;
		return;
	}
	g.misconfigured = false;
	try_lock();
}

/* Brings the tables in line (a table created again, a new watch) and checks wal_level. */
static void setup(void)
{
	const char *params[1] = {g.cfg->capture_publication};
	g.busy =
	    pgc_query(g.pc,
	              "SELECT current_setting('wal_level'), realtime.capture_sync('logical', $1)",
	              1, params, QUERY_TIMEOUT_MS, on_setup, NULL) == 0;
}

static void on_slot_status(void *arg, const PGresult *res, const char *err)
{
	(void)arg;
	(void)err;
	if (g.stopping || !res || PQresultStatus(res) != PGRES_TUPLES_OK)
		return;
	g.slot_found = PQntuples(res) == 1;
	if (!g.slot_found) {
		snprintf(g.wal_status, sizeof(g.wal_status), "missing");
		g.lag_bytes = -1;
		return;
	}
	snprintf(g.wal_status, sizeof(g.wal_status), "%s", PQgetvalue(res, 0, 0));
	g.lag_bytes = PQgetisnull(res, 0, 1) ? -1 : atoll(PQgetvalue(res, 0, 1));
	if (g.role == ROLE_HOLDER && !strcmp(g.wal_status, "lost") && g.repl != REPL_OFF)
		repl_close("slot lost (behind max_slot_wal_keep_size)");
}

static void on_tick(uv_timer_t *t)
{
	(void)t;
	if (!g.pc || !pgc_is_up(g.pc))
		return;
	if (g.repl == REPL_STREAMING)
		send_status();
	if (g.repl == REPL_CONNECTING &&
	    util_now_ns() - g.repl_since_ns > (uint64_t)REPL_CONNECT_TIMEOUT_MS * 1000000)
		repl_close("replication connection timed out");
	{
		const char *params[1] = {g.cfg->capture_slot};
		pgc_query(
		    g.pc,
		    "SELECT coalesce(wal_status, ''), (pg_current_wal_lsn() - "
		    "confirmed_flush_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
		    1, params, QUERY_TIMEOUT_MS, on_slot_status, NULL);
	}
	if (g.busy)
		return;
	if (g.misconfigured || g.role == ROLE_IDLE)
		setup();
	else if (g.role == ROLE_STANDBY)
		try_lock();
	else if (g.repl == REPL_OFF)
		holder_begin();
}

static void pc_up(struct pgc *pc, void *arg)
{
	(void)pc;
	(void)arg;
	g.busy = false;
	g.role = ROLE_IDLE;
	setup();
}

/* The advisory lock went with the session: stop streaming, another replica may hold it now. */
static void pc_down(struct pgc *pc, void *arg)
{
	(void)pc;
	(void)arg;
	if (g.role == ROLE_HOLDER)
		log_warn("capture holder lost its connection", "slot", g.cfg->capture_slot);
	g.role = ROLE_IDLE;
	g.busy = false;
	g.storing = false;
	repl_close(NULL);
}

int capture_start(const struct config *cfg, uv_loop_t *loop)
{
	struct pgc_hooks h = {pc_up, pc_down, NULL, NULL};
	PGconn *c;

	memset(&g, 0, sizeof(g));
	g.cfg = cfg;
	g.loop = loop;
	if (!cfg->capture_logical)
		return 0;
	/* The configuration errors a DBA must fix are reported at start, clearly, not retried. */
	{
		const char *const keys[] = {"dbname", "connect_timeout", NULL};
		const char *const vals[] = {cfg->database_url, "5", NULL};
		c = PQconnectdbParams(keys, vals, 1);
	}
	if (PQstatus(c) == CONNECTION_OK) {
		char err[1024];
		if (check_and_sync(c, "logical", cfg->capture_publication, err, sizeof(err)) < 0) {
			log_error("CAPTURE=logical cannot start", "reason", err);
			fprintf(stderr, "roomcast: %s\n", err);
			PQfinish(c);
			return -1;
		}
	} else {
		log_warn("capture: PostgreSQL not reachable at start; checked on connect");
	}
	PQfinish(c);
	buf_init(&g.txn);
	buf_init(&g.pending);
	g.lag_bytes = -1;
	g.running = true;
	g.pc = pgc_start(loop, cfg->database_url, "capture", &h);
	if (!g.pc)
		return -1;
	uv_timer_init(loop, &g.tick);
	uv_timer_start(&g.tick, on_tick, (uint64_t)cfg->capture_status_interval_s * 1000,
	               (uint64_t)cfg->capture_status_interval_s * 1000);
	uv_unref((uv_handle_t *)&g.tick);
	return 0;
}

void capture_stop(void)
{
	if (!g.running)
		return;
	g.stopping = true;
	repl_close(NULL);
	uv_timer_stop(&g.tick);
	uv_close((uv_handle_t *)&g.tick, NULL);
	pgc_stop(g.pc);
	g.pc = NULL;
	buf_free(&g.txn);
	buf_free(&g.pending);
	g.running = false;
}

/* ---- health and metrics ---- */

static const char *role_name(void)
{
	return g.role == ROLE_HOLDER ? "holder" : g.role == ROLE_STANDBY ? "standby" : "idle";
}

static const char *repl_name(void)
{
	static const char *n[] = {"off", "connecting", "starting", "streaming"};
	return n[g.repl];
}

static double lag_seconds(void)
{
	int64_t first = g.storing        ? g.storing_first_commit_us
	                : g.pending_txns ? g.pending_first_commit_us
	                                 : 0;
	return first ? (double)(now_us() - first) / 1e6 : 0.0;
}

bool capture_degraded(void)
{
	if (!g.running)
		return false;
	return g.misconfigured || !strcmp(g.wal_status, "lost") ||
	       !strcmp(g.wal_status, "missing") ||
	       (g.role == ROLE_HOLDER && g.repl != REPL_STREAMING);
}

void capture_health_json(struct buf *b)
{
	char stored[32];

	if (!g.running)
		return;
	lsn_str(g.stored_lsn, stored);
	buf_puts(b, ",\"capture\":{\"mode\":\"logical\",\"slot\":");
	buf_json_str(b, g.cfg->capture_slot, strlen(g.cfg->capture_slot));
	buf_printf(b, ",\"role\":\"%s\",\"stream\":\"%s\",\"wal_status\":", role_name(),
	           repl_name());
	buf_json_str(b, g.wal_status, strlen(g.wal_status));
	if (g.lag_bytes >= 0)
		buf_printf(b, ",\"lag_bytes\":%lld", g.lag_bytes);
	else
		buf_puts(b, ",\"lag_bytes\":null");
	buf_printf(b, ",\"lag_s\":%.3f,\"stored_lsn\":\"%s\",\"gaps\":%llu", lag_seconds(), stored,
	           (unsigned long long)g.gaps);
	if (g.problem[0]) {
		buf_puts(b, ",\"problem\":");
		buf_json_str(b, g.problem, strlen(g.problem));
	}
	if (g.last_gap[0]) {
		buf_puts(b, ",\"last_gap\":");
		buf_json_str(b, g.last_gap, strlen(g.last_gap));
	}
	buf_puts(b, "}");
}

void capture_metrics(struct buf *b)
{
	if (!g.running)
		return;
	buf_puts(b, "# HELP roomcast_capture_holder Whether this replica holds the capture slot.\n"
	            "# TYPE roomcast_capture_holder gauge\n");
	buf_printf(b, "roomcast_capture_holder %d\n", g.role == ROLE_HOLDER);
	buf_puts(b, "# HELP roomcast_capture_streaming Whether the slot is being streamed here.\n"
	            "# TYPE roomcast_capture_streaming gauge\n");
	buf_printf(b, "roomcast_capture_streaming %d\n", g.repl == REPL_STREAMING);
	buf_puts(b, "# HELP roomcast_capture_lag_bytes WAL between the server's position and the "
	            "slot's confirmed position (-1 unknown).\n"
	            "# TYPE roomcast_capture_lag_bytes gauge\n");
	buf_printf(b, "roomcast_capture_lag_bytes %lld\n", g.lag_bytes);
	buf_puts(b, "# HELP roomcast_capture_lag_seconds Age of the oldest commit decoded and not "
	            "yet stored.\n# TYPE roomcast_capture_lag_seconds gauge\n");
	buf_printf(b, "roomcast_capture_lag_seconds %.3f\n", lag_seconds());
	buf_puts(b, "# HELP roomcast_capture_slot_lost Whether the slot is lost or missing.\n"
	            "# TYPE roomcast_capture_slot_lost gauge\n");
	buf_printf(b, "roomcast_capture_slot_lost %d\n",
	           !strcmp(g.wal_status, "lost") || !strcmp(g.wal_status, "missing"));
	buf_puts(b, "# HELP roomcast_capture_gaps_total Times the slot was found lost or dropped "
	            "and capture started again at the current position.\n"
	            "# TYPE roomcast_capture_gaps_total counter\n");
	buf_printf(b, "roomcast_capture_gaps_total %llu\n", (unsigned long long)g.gaps);
	buf_puts(b, "# HELP roomcast_capture_transactions_total Decoded transactions stored.\n"
	            "# TYPE roomcast_capture_transactions_total counter\n");
	buf_printf(b, "roomcast_capture_transactions_total %llu\n",
	           (unsigned long long)g.txns_stored);
	buf_puts(b, "# HELP roomcast_capture_batches_total Stores (one transaction each).\n"
	            "# TYPE roomcast_capture_batches_total counter\n");
	buf_printf(b, "roomcast_capture_batches_total %llu\n", (unsigned long long)g.batches);
	buf_puts(b, "# HELP roomcast_capture_store_failures_total Stores that failed (the stream "
	            "restarts from the confirmed position).\n"
	            "# TYPE roomcast_capture_store_failures_total counter\n");
	buf_printf(b, "roomcast_capture_store_failures_total %llu\n",
	           (unsigned long long)g.store_failures);
	buf_puts(b, "# HELP roomcast_capture_restarts_total Times the stream stopped.\n"
	            "# TYPE roomcast_capture_restarts_total counter\n");
	buf_printf(b, "roomcast_capture_restarts_total %llu\n", (unsigned long long)g.restarts);
	buf_puts(b, "# HELP roomcast_capture_commit_to_stored_seconds From a commit to its events "
	            "stored (last transaction of each batch).\n"
	            "# TYPE roomcast_capture_commit_to_stored_seconds summary\n");
	buf_printf(b, "roomcast_capture_commit_to_stored_seconds_sum %.6f\n", g.latency_sum_s);
	buf_printf(b, "roomcast_capture_commit_to_stored_seconds_count %llu\n",
	           (unsigned long long)g.latency_count);
}
