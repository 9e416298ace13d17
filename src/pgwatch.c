/* The PostgreSQL watch: a periodic NOTIFY the listener must hear back (a listener that hears
 * nothing is reconnected and reported), and a periodic realtime.attach_triggers() +
 * realtime.trigger_status() whose result /health, /ready and /metrics show. */
#include "pgwatch.h"
#include "buf.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUERY_TIMEOUT_MS 5000
#define MAX_TABLES       32

/* What /health says about the triggers. */
enum trig_state {
	TRIG_UNCHECKED = 0, /* no answer yet (query connection never up, or TRIGGER_CHECK_S=0) */
	TRIG_NO_MIGRATION,  /* realtime.trigger_status() does not exist */
	TRIG_ERROR,         /* the check failed for another reason */
	TRIG_OK,
	TRIG_MISSING, /* at least one table is missing or lacks its trigger */
	/* CAPTURE=triggers here, but the database was switched to logical capture: its triggers
	 * are attached and disabled, so only a CAPTURE=logical replica produces events. */
	TRIG_DISABLED,
};

struct watched {
	char name[96];
	char state[24];
};

static const struct config *g_cfg;
static uv_loop_t *g_loop;
static struct pgc *g_listen, *g_query;
static bool g_started;

/* ---- the listen probe ---- */

static uv_timer_t g_probe_timer, g_deadline_timer;
static bool g_probe_listening; /* LISTEN on the probe channel answered */
static bool g_probe_pending;   /* a probe was sent and not heard yet */
static bool g_deaf;            /* the last probe was not heard in time */
static char g_token[96];
static uint64_t g_probe_seq;
static uint64_t g_probe_failures;

/* ---- the trigger check ---- */

static uv_timer_t g_trig_timer;
static bool g_trig_in_flight;
static enum trig_state g_trig;
static char g_trig_reason[160];
static struct watched g_tables[MAX_TABLES];
static int g_ntables;
static char g_trig_summary[1024]; /* last logged state, to log changes only */

/* The probe's deadline, counted from the NOTIFY's commit: a tenth of a second is the normal
 * round trip; the bound only has to survive a busy server (and valgrind). */
static uint64_t deadline_ms(void)
{
	long s = g_cfg->listen_probe_s < 2    ? 2
	         : g_cfg->listen_probe_s > 10 ? 10
	                                      : g_cfg->listen_probe_s;
	return (uint64_t)s * 1000;
}

static void on_deadline(uv_timer_t *t)
{
	char n[24];

	if (!g_probe_pending)
		return;
	g_probe_pending = false;
	g_probe_failures++;
	snprintf(n, sizeof(n), "%llu", (unsigned long long)deadline_ms() / 1000);
	if (!g_deaf)
		log_warn("postgres listener hears no notifications: point DATABASE_URL at a direct "
		         "or session-mode connection (not a transaction pooler)",
		         "reason", "own NOTIFY not received", "deadline_s", n, "hint",
		         "a transaction-mode pooler (e.g. pgbouncer pool_mode=transaction, port "
		         "6543) accepts LISTEN but never delivers; reconnecting the listener");
	else
		log_warn("postgres listener still hears no notifications: point DATABASE_URL at a "
		         "direct or session-mode connection (not a transaction pooler)",
		         "reason", "own NOTIFY not received", "deadline_s", n);
	g_deaf = true;
	g_probe_listening = false;
	pgc_reconnect(g_listen, "listener hears no notifications");
}

static void on_probe_sent(void *arg, const PGresult *res, const char *err)
{
	if (!g_probe_pending)
		return; /* heard already (the other connection can be faster than this answer) */
	if (!res) {
		/* Not the listener's fault: the query connection failed; try again next time. */
		g_probe_pending = false;
		log_debug("listen probe not sent", "reason", err);
		return;
	}
	uv_timer_start(&g_deadline_timer, on_deadline, deadline_ms(), 0);
}

static void on_probe_timer(uv_timer_t *t)
{
	const char *p[1] = {g_token};

	if (g_probe_pending || !g_probe_listening || !pgc_is_up(g_query))
		return;
	snprintf(g_token, sizeof(g_token), "%s-%llu-%d", g_cfg->node_id,
	         (unsigned long long)++g_probe_seq, rand());
	g_probe_pending = true;
	if (pgc_query(g_query, "SELECT pg_notify('" PGWATCH_PROBE_CHANNEL "', $1)", 1, p,
	              QUERY_TIMEOUT_MS, on_probe_sent, NULL) < 0)
		g_probe_pending = false;
}

bool pgwatch_on_notify(const PGnotify *n)
{
	if (strcmp(n->relname, PGWATCH_PROBE_CHANNEL))
		return false;
	/* Other replicas probe on the same channel: only our own token counts. */
	if (!g_probe_pending || strcmp(n->extra, g_token))
		return true;
	g_probe_pending = false;
	uv_timer_stop(&g_deadline_timer);
	if (g_deaf) {
		g_deaf = false;
		log_info("postgres listener hears notifications again");
	}
	return true;
}

static void on_probe_listened(void *arg, const PGresult *res, const char *err)
{
	if (!res) {
		log_warn("LISTEN " PGWATCH_PROBE_CHANNEL " failed", "reason", err);
		return;
	}
	g_probe_listening = true;
}

void pgwatch_listener_up(void)
{
	if (!g_started || !g_cfg->listen_probe_s)
		return;
	pgc_query(g_listen, "LISTEN " PGWATCH_PROBE_CHANNEL, 0, NULL, QUERY_TIMEOUT_MS,
	          on_probe_listened, NULL);
}

void pgwatch_listener_down(void)
{
	if (!g_started)
		return;
	g_probe_listening = false;
	g_probe_pending = false;
	uv_timer_stop(&g_deadline_timer);
}

/* ---- the trigger check ---- */

static bool missing_function(const char *err)
{
	return err && strstr(err, "does not exist");
}

static void set_reason(const char *err)
{
	snprintf(g_trig_reason, sizeof(g_trig_reason), "%s", err ? err : "");
	for (char *nl = strchr(g_trig_reason, '\n'); nl; nl = strchr(nl, '\n'))
		*nl = ' ';
}

/* Logs the check's result when it differs from the last one logged. */
static void log_change(void)
{
	char s[sizeof(g_trig_summary)];
	size_t len = 0;

	s[0] = '\0';
	if (g_trig == TRIG_OK || g_trig == TRIG_MISSING) {
		for (int i = 0; i < g_ntables && len < sizeof(s); i++)
			if (strcmp(g_tables[i].state, "ok"))
				len += (size_t)snprintf(s + len, sizeof(s) - len, "%s%s:%s",
				                        len ? "," : "", g_tables[i].name,
				                        g_tables[i].state);
	} else {
		snprintf(s, sizeof(s), "#%d", (int)g_trig);
	}
	if (!strcmp(s, g_trig_summary))
		return;
	snprintf(g_trig_summary, sizeof(g_trig_summary), "%s", s);
	if (g_trig == TRIG_OK)
		log_info("watched tables all have their triggers");
	else if (g_trig == TRIG_MISSING)
		log_warn("watched tables without triggers: their changes publish no events",
		         "tables", s, "reason",
		         "table missing or trigger missing; checked again periodically");
	else if (g_trig == TRIG_NO_MIGRATION)
		log_warn("trigger check unavailable: migrations not applied (run roomcast migrate)",
		         "reason", g_trig_reason);
	else if (g_trig == TRIG_DISABLED)
		log_warn(
		    "watched tables' triggers are disabled: the database is in logical capture "
		    "mode but this replica runs CAPTURE=triggers",
		    "reason",
		    "events come only while a CAPTURE=logical replica streams; set CAPTURE=logical "
		    "here too, or switch the database back with CAPTURE=triggers roomcast migrate");
	else
		log_warn("trigger check failed", "reason", g_trig_reason);
}

static void on_mode(void *arg, const PGresult *res, const char *err)
{
	g_trig_in_flight = false;
	/* No capture_state (before migration 010) or no row: the database has only ever run
	 * triggers. Another failure leaves the trigger verdict as it was. */
	if (res && PQntuples(res) == 1 && !strcmp(PQgetvalue(res, 0, 0), "logical"))
		g_trig = TRIG_DISABLED;
	log_change();
}

static void on_status(void *arg, const PGresult *res, const char *err)
{
	g_trig_in_flight = false;
	if (!res) {
		g_trig = missing_function(err) ? TRIG_NO_MIGRATION : TRIG_ERROR;
		if (g_trig == TRIG_NO_MIGRATION)
			g_ntables = 0;
		set_reason(err);
		log_change();
		return;
	}
	g_trig = TRIG_OK;
	g_ntables = 0;
	for (int i = 0; i < PQntuples(res) && g_ntables < MAX_TABLES; i++) {
		struct watched *w = &g_tables[g_ntables++];
		snprintf(w->name, sizeof(w->name), "%s", PQgetvalue(res, i, 0));
		snprintf(w->state, sizeof(w->state), "%s", PQgetvalue(res, i, 1));
		if (strcmp(w->state, "ok"))
			g_trig = TRIG_MISSING;
	}
	g_trig_reason[0] = '\0';
	/* Present is not enough: logical capture (migration 010) keeps the triggers attached but
	 * disabled, which trigger_status() cannot tell. A logical replica expects exactly that. */
	if (g_trig == TRIG_OK && !g_cfg->capture_logical &&
	    pgc_query(g_query, "SELECT mode FROM realtime.capture_state", 0, NULL, QUERY_TIMEOUT_MS,
	              on_mode, NULL) == 0) {
		g_trig_in_flight = true;
		return;
	}
	log_change();
}

static void on_attached(void *arg, const PGresult *res, const char *err)
{
	if (!res && missing_function(err)) {
		g_trig_in_flight = false;
		g_trig = TRIG_NO_MIGRATION;
		g_ntables = 0;
		set_reason(err);
		log_change();
		return;
	}
	if (!res)
		log_warn("realtime.attach_triggers failed", "reason", err);
	else if (PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "0"))
		log_info("triggers attached to watched tables", "count", PQgetvalue(res, 0, 0));
	if (pgc_query(g_query, "SELECT table_name, state FROM realtime.trigger_status()", 0, NULL,
	              QUERY_TIMEOUT_MS, on_status, NULL) < 0)
		g_trig_in_flight = false;
}

static void check_triggers(void)
{
	if (g_trig_in_flight || !pgc_is_up(g_query))
		return;
	g_trig_in_flight = true;
	if (pgc_query(g_query, "SELECT realtime.attach_triggers()", 0, NULL, QUERY_TIMEOUT_MS,
	              on_attached, NULL) < 0)
		g_trig_in_flight = false;
}

static void on_trig_timer(uv_timer_t *t)
{
	check_triggers();
}

void pgwatch_query_up(void)
{
	if (g_started && g_cfg->trigger_check_s)
		check_triggers();
}

/* ---- lifecycle and reporting ---- */

void pgwatch_start(const struct config *cfg, uv_loop_t *loop, struct pgc *listen, struct pgc *query)
{
	g_cfg = cfg;
	g_loop = loop;
	g_listen = listen;
	g_query = query;
	uv_timer_init(loop, &g_probe_timer);
	uv_timer_init(loop, &g_deadline_timer);
	uv_timer_init(loop, &g_trig_timer);
	if (cfg->listen_probe_s)
		uv_timer_start(&g_probe_timer, on_probe_timer, (uint64_t)cfg->listen_probe_s * 1000,
		               (uint64_t)cfg->listen_probe_s * 1000);
	if (cfg->trigger_check_s)
		uv_timer_start(&g_trig_timer, on_trig_timer, (uint64_t)cfg->trigger_check_s * 1000,
		               (uint64_t)cfg->trigger_check_s * 1000);
	g_started = true;
}

void pgwatch_stop(void)
{
	if (!g_started)
		return;
	uv_close((uv_handle_t *)&g_probe_timer, NULL);
	uv_close((uv_handle_t *)&g_deadline_timer, NULL);
	uv_close((uv_handle_t *)&g_trig_timer, NULL);
	g_started = false;
}

bool pgwatch_degraded(void)
{
	return g_started && (g_deaf || g_trig == TRIG_MISSING || g_trig == TRIG_NO_MIGRATION ||
	                     g_trig == TRIG_DISABLED);
}

void pgwatch_health_json(struct buf *b)
{
	static const char *names[] = {"unknown", "unknown", "unknown", "ok", "missing", "disabled"};
	bool first = true;

	if (!g_started)
		return;
	if (g_deaf)
		buf_puts(b,
		         ",\"postgres_reason\":\"listener hears no notifications: DATABASE_URL "
		         "must be a direct or session-mode connection, not a transaction pooler\"");
	if (!g_cfg->trigger_check_s)
		return;
	buf_printf(b, ",\"triggers\":{\"state\":\"%s\"", names[g_trig]);
	if (g_trig == TRIG_NO_MIGRATION)
		buf_puts(b, ",\"reason\":\"migrations not applied\"");
	else if (g_trig == TRIG_UNCHECKED)
		buf_puts(b, ",\"reason\":\"not checked yet\"");
	else if (g_trig == TRIG_ERROR)
		buf_puts(b, ",\"reason\":\"check failed\"");
	else if (g_trig == TRIG_DISABLED)
		buf_puts(b, ",\"reason\":\"the database is in logical capture mode (triggers "
		            "disabled) but this replica runs CAPTURE=triggers\"");
	if (g_trig == TRIG_OK || g_trig == TRIG_MISSING) {
		buf_puts(b, ",\"missing\":[");
		for (int i = 0; i < g_ntables; i++) {
			if (!strcmp(g_tables[i].state, "ok"))
				continue;
			if (!first)
				buf_puts(b, ",");
			first = false;
			buf_json_str(b, g_tables[i].name, strlen(g_tables[i].name));
		}
		buf_puts(b, "],\"tables\":{");
		for (int i = 0; i < g_ntables; i++) {
			if (i)
				buf_puts(b, ",");
			buf_json_str(b, g_tables[i].name, strlen(g_tables[i].name));
			buf_puts(b, ":");
			buf_json_str(b, g_tables[i].state, strlen(g_tables[i].state));
		}
		buf_puts(b, "}");
	}
	buf_puts(b, "}");
}

void pgwatch_metrics(struct buf *b)
{
	static const char *states[] = {"ok", "table_missing", "trigger_missing"};
	unsigned long long counts[4] = {0};

	if (!g_started)
		return;
	buf_printf(b,
	           "# HELP roomcast_postgres_listen_probe_failures_total Probes (own NOTIFY) the "
	           "listener did not hear in time.\n"
	           "# TYPE roomcast_postgres_listen_probe_failures_total counter\n"
	           "roomcast_postgres_listen_probe_failures_total %llu\n"
	           "# HELP roomcast_postgres_listener_deaf Whether the last probe went unheard.\n"
	           "# TYPE roomcast_postgres_listener_deaf gauge\n"
	           "roomcast_postgres_listener_deaf %d\n",
	           (unsigned long long)g_probe_failures, g_deaf ? 1 : 0);
	for (int i = 0; i < g_ntables; i++) {
		int k = 3;
		for (int j = 0; j < 3; j++)
			if (!strcmp(g_tables[i].state, states[j]))
				k = j;
		counts[k]++;
	}
	buf_puts(b, "# HELP roomcast_watched_tables Watched tables by trigger state at the last "
	            "check (realtime.trigger_status()).\n"
	            "# TYPE roomcast_watched_tables gauge\n");
	for (int j = 0; j < 3; j++)
		buf_printf(b, "roomcast_watched_tables{state=\"%s\"} %llu\n", states[j], counts[j]);
	buf_printf(b, "roomcast_watched_tables{state=\"other\"} %llu\n", counts[3]);
}
