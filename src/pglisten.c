/* Application NOTIFY channels: the registrations of realtime.listens, LISTEN/UNLISTEN on the
 * listener connection as they change, and each notification turned into an ephemeral event
 * routed to the local members of the room its template names. Every replica LISTENs and hears
 * each notification itself, so delivery is local only (the bus would deliver it twice). */
#include "pglisten.h"
#include "buf.h"
#include "log.h"
#include "metrics.h"
#include "pgc.h"
#include "proto.h"
#include "room.h"
#include "router.h"
#include "util.h"

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QUERY_TIMEOUT_MS 5000
#define MAX_LISTENS      256

struct listen {
	char *channel, *tmpl, *event; /* event NULL: from the payload, else the channel */
	bool listening;               /* LISTEN sent on the current listener session */
};

static const struct config *g_cfg;
static struct pgc *g_listen;
static bool g_started, g_up, g_loading, g_reload_again, g_missing_logged;
static struct listen g_ls[MAX_LISTENS];
static size_t g_nls;
static void (*g_config_hook)(void);
static unsigned long long g_seq, g_heard, g_unroutable;

void pglisten_set_config_hook(void (*fn)(void))
{
	g_config_hook = fn;
}

static void listen_free(struct listen *l)
{
	free(l->channel);
	free(l->tmpl);
	free(l->event);
	memset(l, 0, sizeof(*l));
}

/* "LISTEN <quoted identifier>": a channel is an identifier, quoted by doubling its quotes. */
static int send_listen(const char *verb, const char *channel, pgc_result_fn cb)
{
	struct buf b;
	int rc;

	buf_init(&b);
	buf_printf(&b, "%s \"", verb);
	for (const char *p = channel; *p; p++)
		buf_puts(&b, *p == '"' ? "\"\"" : (char[2]){*p, '\0'});
	buf_puts(&b, "\"");
	rc = b.failed ? -1 : pgc_query(g_listen, b.data, 0, NULL, QUERY_TIMEOUT_MS, cb, NULL);
	buf_free(&b);
	return rc;
}

static void on_listen_sent(void *arg, const PGresult *res, const char *err)
{
	if (!res)
		log_warn("LISTEN on an application channel failed", "reason", err);
}

static struct listen *find(const char *channel)
{
	for (size_t i = 0; i < g_nls; i++)
		if (!strcmp(g_ls[i].channel, channel))
			return &g_ls[i];
	return NULL;
}

static void load(void);

/* The new registrations replace the old: LISTEN what is new, UNLISTEN what is gone. */
static void on_loaded(void *arg, const PGresult *res, const char *err)
{
	struct listen next[MAX_LISTENS];
	size_t n = 0;

	g_loading = false;
	if (!res) {
		/* Without migration 009 there is nothing to listen on; say so once. */
		if (!g_missing_logged)
			log_warn("realtime.listens not readable", "reason", err);
		g_missing_logged = true;
		return;
	}
	g_missing_logged = false;
	memset(next, 0, sizeof(next));
	for (int i = 0; i < PQntuples(res) && n < MAX_LISTENS; i++) {
		struct listen *old = find(PQgetvalue(res, i, 0));
		next[n].channel = strdup(PQgetvalue(res, i, 0));
		next[n].tmpl = strdup(PQgetvalue(res, i, 1));
		next[n].event = PQgetisnull(res, i, 2) ? NULL : strdup(PQgetvalue(res, i, 2));
		if (!next[n].channel || !next[n].tmpl) {
			listen_free(&next[n]);
			continue;
		}
		next[n].listening = old && old->listening;
		if (!next[n].listening && g_up &&
		    send_listen("LISTEN", next[n].channel, on_listen_sent) == 0) {
			next[n].listening = true;
			log_info("listening on an application channel", "channel", next[n].channel,
			         "room", next[n].tmpl);
		}
		n++;
	}
	for (size_t i = 0; i < g_nls; i++) {
		bool kept = false;
		for (size_t j = 0; j < n && !kept; j++)
			kept = !strcmp(next[j].channel, g_ls[i].channel);
		if (!kept && g_ls[i].listening && g_up) {
			send_listen("UNLISTEN", g_ls[i].channel, on_listen_sent);
			log_info("stopped listening on an application channel", "channel",
			         g_ls[i].channel);
		}
		listen_free(&g_ls[i]);
	}
	memcpy(g_ls, next, sizeof(next[0]) * n);
	g_nls = n;
	if (g_reload_again) {
		g_reload_again = false;
		load();
	}
}

static void load(void)
{
	if (!g_up)
		return;
	if (g_loading) {
		g_reload_again = true;
		return;
	}
	if (pgc_query(g_listen,
	              "SELECT channel, room_template, event FROM realtime.listens "
	              "ORDER BY channel",
	              0, NULL, QUERY_TIMEOUT_MS, on_loaded, NULL) == 0)
		g_loading = true;
}

void pglisten_listener_up(void)
{
	if (!g_started)
		return;
	g_up = true;
	/* A new session listens on nothing yet. */
	for (size_t i = 0; i < g_nls; i++)
		g_ls[i].listening = false;
	g_loading = false;
	send_listen("LISTEN", PGLISTEN_CONFIG_CHANNEL, on_listen_sent);
	load();
}

void pglisten_listener_down(void)
{
	g_up = false;
}

int pglisten_fill(const char *tmpl, json_object *obj, char *out, size_t cap)
{
	size_t n = 0;

	for (const char *p = tmpl; *p;) {
		const char *val;
		size_t vlen;
		if (*p == '{') {
			const char *end = strchr(p, '}');
			char key[128];
			json_object *v;
			if (!end || (size_t)(end - p - 1) >= sizeof(key))
				return -1;
			memcpy(key, p + 1, (size_t)(end - p - 1));
			key[end - p - 1] = '\0';
			if (!obj || !json_object_object_get_ex(obj, key, &v))
				return -1;
			switch (json_object_get_type(v)) {
			case json_type_string:
			case json_type_int:
			case json_type_double:
			case json_type_boolean:
				val = json_object_get_string(v);
				break;
			default:
				return -1;
			}
			vlen = strlen(val);
			p = end + 1;
		} else {
			val = p++;
			vlen = 1;
		}
		if (n + vlen >= cap)
			return -1;
		memcpy(out + n, val, vlen);
		n += vlen;
	}
	out[n] = '\0';
	return 0;
}

static const char *str_field(json_object *o, const char *k)
{
	json_object *v;
	return o && json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string)
	           ? json_object_get_string(v)
	           : NULL;
}

static void deliver(const struct listen *l, const char *payload)
{
	json_tokener *tok = json_tokener_new_ex(PROTO_MAX_DEPTH);
	json_object *o = NULL;
	char room[ROOM_NAME_MAX + 1], id[96], id_raw[104], ts[UTIL_TS_LEN];
	const char *rooms[1] = {room}, *event, *data_raw;
	struct router_event ev;
	struct buf text;

	if (tok) {
		json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
		o = json_tokener_parse_ex(tok, payload, (int)strlen(payload));
		if (json_tokener_get_error(tok) != json_tokener_success || !o ||
		    json_tokener_get_parse_end(tok) != strlen(payload) ||
		    !json_object_is_type(o, json_type_object) || !proto_json_standard(o)) {
			json_object_put(o);
			o = NULL;
		}
		json_tokener_free(tok);
	}
	if (pglisten_fill(l->tmpl, o, room, sizeof(room)) < 0 ||
	    !room_name_valid(room, strlen(room))) {
		g_unroutable++;
		log_warn("application notification not routed", "channel", l->channel, "reason",
		         "the room template's fields are missing or make no valid room name");
		json_object_put(o);
		return;
	}
	event = l->event                ? l->event
	        : str_field(o, "type")  ? str_field(o, "type")
	        : str_field(o, "event") ? str_field(o, "event")
	                                : l->channel;
	buf_init(&text);
	if (o) {
		data_raw = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
	} else {
		/* Not a JSON object: delivered as text. */
		buf_json_str(&text, payload, strlen(payload));
		data_raw = text.failed ? "null" : text.data;
	}
	snprintf(id, sizeof(id), "%s-l%llu", g_cfg->node_id, ++g_seq);
	snprintf(id_raw, sizeof(id_raw), "\"%s\"", id);
	util_timestamp(ts);
	memset(&ev, 0, sizeof(ev));
	ev.id_raw = id_raw;
	ev.event = event;
	ev.rooms = rooms;
	ev.nrooms = 1;
	ev.ts = ts;
	ev.data_raw = data_raw;
	ev.meta_raw = "{\"source\":\"listen\"}";
	ev.born_ns = util_now_ns();
	ev.src = METRICS_SRC_LISTEN;
	router_event(&ev);
	buf_free(&text);
	json_object_put(o);
}

bool pglisten_on_notify(const PGnotify *n)
{
	struct listen *l;

	if (!g_started)
		return false;
	if (!strcmp(n->relname, PGLISTEN_CONFIG_CHANNEL)) {
		if (!strcmp(n->extra, "live_rooms")) {
			if (g_config_hook)
				g_config_hook();
		} else {
			load();
		}
		return true;
	}
	if (!(l = find(n->relname)))
		return false;
	g_heard++;
	deliver(l, n->extra);
	return true;
}

void pglisten_start(const struct config *cfg, struct pgc *listen)
{
	g_cfg = cfg;
	g_listen = listen;
	g_started = true;
}

void pglisten_stop(void)
{
	for (size_t i = 0; i < g_nls; i++)
		listen_free(&g_ls[i]);
	g_nls = 0;
	g_started = g_up = false;
	g_listen = NULL;
}

void pglisten_metrics(struct buf *b)
{
	if (!g_started)
		return;
	buf_printf(b,
	           "# HELP roomcast_listen_channels Application channels roomcast listens on "
	           "(realtime.listens).\n"
	           "# TYPE roomcast_listen_channels gauge\n"
	           "roomcast_listen_channels %zu\n"
	           "# HELP roomcast_listen_notifications_total Notifications heard on application "
	           "channels.\n"
	           "# TYPE roomcast_listen_notifications_total counter\n"
	           "roomcast_listen_notifications_total %llu\n"
	           "# HELP roomcast_listen_unroutable_total Application notifications whose room "
	           "template could not be filled.\n"
	           "# TYPE roomcast_listen_unroutable_total counter\n"
	           "roomcast_listen_unroutable_total %llu\n",
	           g_nls, g_heard, g_unroutable);
}
