/* `roomcast migrate`: applies, reverts and lists the SQL migrations embedded in the binary
 * (migrate_files[]), recording each applied file with its SHA-256 in realtime.schema_migrations.
 * Blocking libpq on purpose: this is a subcommand and never runs on the event loop. */
#include "migrate.h"
#include "log.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>
#include <openssl/evp.h>

/* Return codes of the public functions (0 is success). */
enum {
	MIGRATE_ERR_DB = -1,           /* connection or SQL failure */
	MIGRATE_ERR_CHECKSUM = -2,     /* an applied file differs from the embedded one */
	MIGRATE_ERR_IRREVERSIBLE = -3, /* no .down.sql, or not a migration this binary knows */
	MIGRATE_ERR_ARG = -4,          /* bad argument */
};

/* Session advisory lock ("roomcast" in ASCII) held while applying or reverting, so replicas
 * that start together do not run the same file at the same time. */
#define MIGRATE_LOCK_KEY "8245931958348116852"

#define SHA256_HEX_LEN 64

/* Default of MIGRATE_WAIT_S: long enough for a first PostgreSQL start that loads a schema. */
#define MIGRATE_WAIT_DEFAULT_S 60
#define STR_(x)                #x
#define STR(x)                 STR_(x)

/* Copies a libpq message without its trailing newline, which would only clutter log lines. */
static const char *trimmed(const char *msg, char *buf, size_t cap)
{
	size_t n;

	snprintf(buf, cap, "%s", msg ? msg : "");
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return buf;
}

/* Server NOTICEs ("schema already exists, skipping") are expected on re-runs: debug only. */
static void on_notice(void *arg, const char *message)
{
	char buf[512];

	log_debug("postgres notice", "message", trimmed(message, buf, sizeof(buf)));
}

/* How long connect_db keeps retrying: MIGRATE_WAIT_S seconds (default 60, 0 = one attempt).
 * Read here rather than from the serve config table because only this subcommand uses it. */
static long wait_budget_ms(void)
{
	const char *env = getenv("MIGRATE_WAIT_S");
	char *end;
	long s;

	if (!env || !*env)
		return MIGRATE_WAIT_DEFAULT_S * 1000L;
	s = strtol(env, &end, 10);
	if (*end || s < 0 || s > 86400) {
		log_warn("invalid MIGRATE_WAIT_S, using the default", "value", env, "default_s",
		         STR(MIGRATE_WAIT_DEFAULT_S));
		return MIGRATE_WAIT_DEFAULT_S * 1000L;
	}
	return s * 1000L;
}

static long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

/* One connection attempt; NULL (with *why filled) when it fails. */
static PGconn *try_connect(const char *conninfo, char *why, size_t cap)
{
	/* expand_dbname lets conninfo be a URI or key=value string, as DATABASE_URL may be. The
	 * connect_timeout comes first so that one in conninfo wins: a host that drops packets
	 * would otherwise block an attempt for the kernel's whole SYN retry time. */
	const char *keys[] = {"connect_timeout", "dbname", "fallback_application_name", NULL};
	const char *values[] = {"10", conninfo, "roomcast-migrate", NULL};
	PGconn *conn = PQconnectdbParams(keys, values, 1);

	if (!conn) {
		snprintf(why, cap, "out of memory");
		return NULL;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		trimmed(PQerrorMessage(conn), why, cap);
		/* libpq splits its message over lines (a hint on the second): keep one log line. */
		for (char *p = why; *p; p++)
			if (*p == '\n' || *p == '\t')
				*p = ' ';
		PQfinish(conn);
		return NULL;
	}
	return conn;
}

/* Connects, retrying with backoff (250 ms doubling to 5 s) for MIGRATE_WAIT_S while the server
 * is unreachable or still starting: in a compose stack migrate often starts with PostgreSQL.
 * Every failed attempt is logged with its reason. Only connecting is retried; SQL errors later
 * fail at once. The caller owns the returned connection (PQfinish). */
static PGconn *connect_db(const char *conninfo)
{
	char why[512], attempt_s[16], delay_s[24]; /* a long's digits: -O1 -Wformat-truncation */
	long budget, deadline, delay = 250, left;
	PGconn *conn;

	if (!conninfo || !*conninfo) {
		log_error("PQconnectdb failed", "reason", "no database URL given (DATABASE_URL)");
		return NULL;
	}
	budget = wait_budget_ms();
	deadline = now_ms() + budget;
	for (int attempt = 1;; attempt++) {
		conn = try_connect(conninfo, why, sizeof(why));
		if (conn)
			break;
		left = deadline - now_ms();
		snprintf(attempt_s, sizeof(attempt_s), "%d", attempt);
		if (left <= 0) {
			log_error(
			    "PQconnectdb failed", "reason", why, "attempts", attempt_s, "hint",
			    budget ? "gave up after MIGRATE_WAIT_S" : "MIGRATE_WAIT_S=0: no retry");
			return NULL;
		}
		if (delay > left)
			delay = left;
		snprintf(delay_s, sizeof(delay_s), "%ld", delay);
		log_warn("PQconnectdb failed, retrying", "reason", why, "attempt", attempt_s,
		         "retry_in_ms", delay_s);
		struct timespec ts = {delay / 1000, (delay % 1000) * 1000000L};
		nanosleep(&ts, NULL);
		delay = delay * 2 > 5000 ? 5000 : delay * 2;
	}
	PQsetNoticeProcessor(conn, on_notice, NULL);
	return conn;
}

static int result_ok(const PGresult *res)
{
	ExecStatusType st = PQresultStatus(res);

	return st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK || st == PGRES_EMPTY_QUERY;
}

/* Runs one parameterized statement; logs and returns NULL on failure. file may be NULL. */
static PGresult *query(PGconn *conn, const char *sql, int nparams, const char *const *params,
                       const char *file)
{
	char buf[1024];
	PGresult *res = PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);

	if (res && result_ok(res))
		return res;
	log_error("PQexecParams failed", "reason",
	          trimmed(res ? PQresultErrorMessage(res) : PQerrorMessage(conn), buf, sizeof(buf)),
	          "file", file);
	PQclear(res);
	return NULL;
}

/* Simple-protocol execution: sql may hold several statements. */
static int exec_simple(PGconn *conn, const char *sql, const char *file)
{
	char buf[1024];
	PGresult *res = PQexec(conn, sql);
	int rc = 0;

	if (!res || !result_ok(res)) {
		log_error("PQexec failed", "reason",
		          trimmed(res ? PQresultErrorMessage(res) : PQerrorMessage(conn), buf,
		                  sizeof(buf)),
		          "file", file);
		rc = MIGRATE_ERR_DB;
	}
	PQclear(res);
	return rc;
}

/* Runs a whole migration file. It carries its own BEGIN/COMMIT, so on failure the session is
 * left in an aborted transaction that must be rolled back before anything else can run. A
 * file that forgets its COMMIT is refused rather than silently committed by a later statement. */
static int exec_file(PGconn *conn, const char *name, const char *sql)
{
	int rc = exec_simple(conn, sql, name);

	if (!rc && PQtransactionStatus(conn) != PQTRANS_IDLE) {
		log_error("migration failed", "reason",
		          "file left its transaction open (no COMMIT?)", "file", name);
		rc = MIGRATE_ERR_DB;
	}
	if (rc && PQtransactionStatus(conn) != PQTRANS_IDLE)
		PQclear(PQexec(conn, "ROLLBACK"));
	return rc;
}

static int sha256_hex(const char *text, char out[SHA256_HEX_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (!EVP_Digest(text, strlen(text), md, &len, EVP_sha256(), NULL) || len != 32) {
		log_error("EVP_Digest failed", "reason", "sha256 unavailable");
		return MIGRATE_ERR_DB;
	}
	for (unsigned int i = 0; i < len; i++) {
		out[2 * i] = hex[md[i] >> 4];
		out[2 * i + 1] = hex[md[i] & 15];
	}
	out[2 * len] = '\0';
	return 0;
}

static int find_file(const char *version)
{
	for (unsigned i = 0; i < migrate_files_count; i++) {
		if (!strcmp(migrate_files[i].name, version))
			return (int)i;
	}
	return -1;
}

/* Blocks until no other migrator holds the lock, saying so when it has to wait. */
static int take_lock(PGconn *conn)
{
	PGresult *res =
	    query(conn, "SELECT pg_try_advisory_lock(" MIGRATE_LOCK_KEY ")", 0, NULL, NULL);
	int got;

	if (!res)
		return MIGRATE_ERR_DB;
	got = !strcmp(PQgetvalue(res, 0, 0), "t");
	PQclear(res);
	if (got)
		return 0;
	log_info("waiting for the migration lock held by another roomcast migrate");
	return exec_simple(conn, "SELECT pg_advisory_lock(" MIGRATE_LOCK_KEY ")", NULL);
}

static int table_exists(PGconn *conn, int *exists)
{
	PGresult *res = query(conn, "SELECT to_regclass('realtime.schema_migrations') IS NOT NULL",
	                      0, NULL, NULL);

	if (!res)
		return MIGRATE_ERR_DB;
	*exists = !strcmp(PQgetvalue(res, 0, 0), "t");
	PQclear(res);
	return 0;
}

/* Creates what is needed to record 001 itself. Skipped when present because CREATE SCHEMA IF
 * NOT EXISTS still demands CREATE on the database, which a migrated database's role may lack. */
static int bootstrap(PGconn *conn)
{
	int exists;

	if (table_exists(conn, &exists))
		return MIGRATE_ERR_DB;
	if (exists)
		return 0;
	return exec_simple(conn,
	                   "CREATE SCHEMA IF NOT EXISTS realtime;"
	                   "CREATE TABLE IF NOT EXISTS realtime.schema_migrations ("
	                   " version text PRIMARY KEY,"
	                   " checksum text NOT NULL,"
	                   " applied_at timestamptz NOT NULL DEFAULT now())",
	                   NULL);
}

/* Applied migrations (version, checksum, applied_at) in version order; *res is NULL when the
 * table does not exist yet, which means nothing is applied. */
static int load_applied(PGconn *conn, PGresult **res)
{
	int exists;

	*res = NULL;
	if (table_exists(conn, &exists))
		return MIGRATE_ERR_DB;
	if (!exists)
		return 0;
	*res = query(conn,
	             "SELECT version, checksum, to_char(applied_at AT TIME ZONE 'UTC',"
	             " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM realtime.schema_migrations"
	             " ORDER BY version",
	             0, NULL, NULL);
	return *res ? 0 : MIGRATE_ERR_DB;
}

static int applied_row(const PGresult *applied, const char *version)
{
	int n = applied ? PQntuples(applied) : 0;

	for (int i = 0; i < n; i++) {
		if (!strcmp(PQgetvalue(applied, i, 0), version))
			return i;
	}
	return -1;
}

/* Refuses when an applied file no longer matches what this binary embeds: running the rest
 * on top of a schema built from different SQL would be guesswork. */
static int verify_checksum(const char *name, const char *recorded)
{
	char sum[SHA256_HEX_LEN + 1];
	int i = find_file(name);

	if (i < 0)
		return 0;
	if (sha256_hex(migrate_files[i].up, sum))
		return MIGRATE_ERR_DB;
	if (strcmp(sum, recorded) != 0) {
		log_error("migration changed after it was applied", "file", name, "recorded",
		          recorded, "embedded", sum, "hint",
		          "restore the original file, or revert it with the old binary first");
		return MIGRATE_ERR_CHECKSUM;
	}
	return 0;
}

static int record_applied(PGconn *conn, const char *name, const char *sql)
{
	char sum[SHA256_HEX_LEN + 1];
	const char *params[2] = {name, sum};
	PGresult *res;

	if (sha256_hex(sql, sum))
		return MIGRATE_ERR_DB;
	res = query(conn,
	            "INSERT INTO realtime.schema_migrations (version, checksum) VALUES ($1, $2)"
	            " ON CONFLICT (version) DO UPDATE SET checksum = EXCLUDED.checksum,"
	            " applied_at = now()",
	            2, params, name);
	if (!res)
		return MIGRATE_ERR_DB;
	PQclear(res);
	return 0;
}

/* The down file of 001 drops the schema and the record table with it; nothing to delete then. */
static int forget_applied(PGconn *conn, const char *name)
{
	const char *params[1] = {name};
	PGresult *res;
	int exists;

	if (table_exists(conn, &exists))
		return MIGRATE_ERR_DB;
	if (!exists)
		return 0;
	res = query(conn, "DELETE FROM realtime.schema_migrations WHERE version = $1", 1, params,
	            name);
	if (!res)
		return MIGRATE_ERR_DB;
	PQclear(res);
	return 0;
}

static void finish(PGconn *conn, int locked)
{
	/* Closing the session releases the lock too; unlocking first just frees it sooner. */
	if (locked && PQtransactionStatus(conn) == PQTRANS_IDLE)
		PQclear(PQexec(conn, "SELECT pg_advisory_unlock(" MIGRATE_LOCK_KEY ")"));
	PQfinish(conn);
}

int migrate_up(const char *conninfo, FILE *out)
{
	PGconn *conn = connect_db(conninfo);
	PGresult *applied = NULL;
	int rc, done = 0;

	if (!conn)
		return MIGRATE_ERR_DB;
	rc = take_lock(conn);
	if (rc) {
		PQfinish(conn);
		return rc;
	}
	rc = bootstrap(conn);
	if (!rc)
		rc = load_applied(conn, &applied);
	/* Check every applied file before applying anything. */
	for (int i = 0; !rc && applied && i < PQntuples(applied); i++) {
		const char *version = PQgetvalue(applied, i, 0);

		if (find_file(version) < 0)
			log_warn("applied migration is not embedded in this binary (newer binary?)",
			         "file", version);
		rc = verify_checksum(version, PQgetvalue(applied, i, 1));
	}
	for (unsigned i = 0; !rc && i < migrate_files_count; i++) {
		const struct migrate_file *f = &migrate_files[i];

		if (applied_row(applied, f->name) >= 0)
			continue;
		/* Files are re-runnable, so a crash between the file's COMMIT and the record just
		 * means the file runs again next time. */
		rc = exec_file(conn, f->name, f->up);
		if (!rc)
			rc = record_applied(conn, f->name, f->up);
		if (!rc) {
			fprintf(out, "applied %s\n", f->name);
			done++;
		}
	}
	if (!rc && !done)
		fprintf(out, "up to date\n");
	fflush(out);
	PQclear(applied);
	finish(conn, 1);
	return rc;
}

int migrate_down(const char *conninfo, int steps, FILE *out)
{
	PGconn *conn;
	PGresult *applied = NULL;
	int rc, done = 0;

	if (steps < 0) {
		log_error("migrate down failed", "reason", "steps must be 0 or more");
		return MIGRATE_ERR_ARG;
	}
	conn = connect_db(conninfo);
	if (!conn)
		return MIGRATE_ERR_DB;
	rc = take_lock(conn);
	if (rc) {
		PQfinish(conn);
		return rc;
	}
	rc = load_applied(conn, &applied);
	/* Newest first: each down file assumes the later migrations are already gone. */
	for (int i = applied ? PQntuples(applied) - 1 : -1; !rc && i >= 0 && done < steps; i--) {
		const char *version = PQgetvalue(applied, i, 0);
		int f = find_file(version);

		if (f < 0 || !migrate_files[f].down) {
			log_error("migrate down failed", "file", version, "reason",
			          f < 0 ? "migration is not embedded in this binary"
			                : "migration has no .down.sql");
			rc = MIGRATE_ERR_IRREVERSIBLE;
			break;
		}
		rc = verify_checksum(version, PQgetvalue(applied, i, 1));
		if (!rc)
			rc = exec_file(conn, version, migrate_files[f].down);
		if (!rc)
			rc = forget_applied(conn, version);
		if (!rc) {
			fprintf(out, "reverted %s\n", version);
			done++;
		}
	}
	if (!rc && !done)
		fprintf(out, "nothing to revert\n");
	fflush(out);
	PQclear(applied);
	finish(conn, 1);
	return rc;
}

int migrate_status(const char *conninfo, FILE *out)
{
	PGconn *conn = connect_db(conninfo);
	PGresult *applied = NULL;
	char sum[SHA256_HEX_LEN + 1];
	int rc;

	if (!conn)
		return MIGRATE_ERR_DB;
	rc = load_applied(conn, &applied);
	for (unsigned i = 0; !rc && i < migrate_files_count; i++) {
		const char *name = migrate_files[i].name;
		int row = applied_row(applied, name);

		if (row < 0) {
			fprintf(out, "pending  %s\n", name);
			continue;
		}
		rc = sha256_hex(migrate_files[i].up, sum);
		if (rc)
			break;
		fprintf(out, "%-8s %s  %s\n",
		        strcmp(sum, PQgetvalue(applied, row, 1)) ? "changed" : "applied", name,
		        PQgetvalue(applied, row, 2));
	}
	for (int i = 0; !rc && applied && i < PQntuples(applied); i++) {
		if (find_file(PQgetvalue(applied, i, 0)) < 0)
			fprintf(out, "unknown  %s  %s (applied; not in this binary)\n",
			        PQgetvalue(applied, i, 0), PQgetvalue(applied, i, 2));
	}
	fflush(out);
	PQclear(applied);
	PQfinish(conn);
	return rc;
}
