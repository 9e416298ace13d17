/* HTTP endpoint logic: health and readiness, admin views, Prometheus metrics, and the notify
 * door for backend services. Every refusal is a JSON {"error": ...} with the right status. */
#include "http.h"
#include "buf.h"
#include "jscan.h"
#include "bus.h"
#include "capture.h"
#include "cidr.h"
#include "cluster.h"
#include "conn.h"
#include "liveroom.h"
#include "log.h"
#include "metrics.h"
#include "pgl.h"
#include "pglisten.h"
#include "pgwatch.h"
#include "presence.h"
#include "proto.h"
#include "room.h"
#include "util.h"

#include <json-c/json.h>
#include <stdint.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const struct config *g_cfg;
static const struct auth *g_auth;
static const char *g_version;
static time_t g_started;
static uint64_t g_notify_seq;
/* NOTIFY_ALLOW_FROM, and the SHA-256 of NOTIFY_TOKEN (compared digest to digest, so neither
 * the time taken nor an early exit tells a caller the token's length or a matching prefix). */
static struct cidr_list g_notify_allow;
static unsigned char g_token_digest[SHA256_DIGEST_LENGTH];
static bool g_have_token;

/* Serves embedded files (the dashboard); registered by whoever wires the server, so this module
 * does not depend on the module that holds them. */
static http_static_fn g_static;

void http_set_static(http_static_fn serve)
{
	g_static = serve;
}

void http_setup(const struct config *cfg, const struct auth *auth, const char *version)
{
	g_cfg = cfg;
	g_auth = auth;
	g_version = version;
	g_started = time(NULL);
	cidr_list_free(&g_notify_allow);
	/* Validated by config_load: a list that does not parse here stays empty (deny). */
	if (cidr_list_parse(cfg->notify_allow_from, &g_notify_allow) < 0)
		log_error("NOTIFY_ALLOW_FROM failed", "reason", "not a CIDR list");
	g_have_token = cfg->notify_token && *cfg->notify_token;
	if (g_have_token)
		SHA256((const unsigned char *)cfg->notify_token, strlen(cfg->notify_token),
		       g_token_digest);
}

void http_response_free(struct http_response *resp)
{
	buf_free(&resp->body);
}

/* Decimal digits of v into the end of a buffer of 24; returns where they start. */
static const char *decimal(unsigned long long v, char out[24])
{
	char *p = out + 23;

	*p = '\0';
	do
		*--p = (char)('0' + v % 10);
	while (v /= 10);
	return p;
}

static void json_error(struct http_response *resp, int status, const char *msg)
{
	resp->status = status;
	resp->content_type = "application/json";
	buf_puts(&resp->body, "{\"error\":");
	buf_json_str(&resp->body, msg, strlen(msg));
	buf_puts(&resp->body, "}");
}

static void health(struct http_response *resp, bool ready_only)
{
	const char *pg = pgl_state();
	const char *redis = bus_state();
	bool healthy = strcmp(pg, "down") && strcmp(redis, "down");

	resp->content_type = "application/json";
	if (ready_only) {
		/* A deaf listener or missing triggers do not make the replica unready: it still
		 * serves clients, HTTP notify and Redis; the body says what is wrong. */
		resp->status = healthy ? 200 : 503;
		buf_printf(&resp->body, "{\"ready\":%s,\"postgres\":\"%s\",\"redis\":\"%s\"",
		           healthy ? "true" : "false", pg, redis);
		pgwatch_health_json(&resp->body);
		capture_health_json(&resp->body);
		buf_puts(&resp->body, "}");
		return;
	}
	healthy = healthy && !pgwatch_degraded() && !capture_degraded();
	resp->status = 200;
	buf_printf(&resp->body,
	           "{\"status\":\"%s\",\"service\":\"roomcast\",\"version\":\"%s\",\"node\":",
	           healthy ? "healthy" : "degraded", g_version);
	buf_json_str(&resp->body, g_cfg->node_id, strlen(g_cfg->node_id));
	buf_printf(&resp->body,
	           ",\"uptime_s\":%ld,\"connections\":%lld,\"postgres\":\"%s\",\"redis\":\"%s\"",
	           (long)(time(NULL) - g_started), (long long)conn_count(), pg, redis);
	pgwatch_health_json(&resp->body);
	capture_health_json(&resp->body);
	buf_puts(&resp->body, "}");
}

/* The bearer token of the request (from the header only: admin and notify tokens are never
 * accepted in URLs, which end up in proxy logs). */
static const char *bearer(const struct http_request *req, size_t *len)
{
	const char *a = req->authorization;
	if (!a || strncasecmp(a, "Bearer ", 7))
		return NULL;
	a += 7;
	while (*a == ' ')
		a++;
	*len = strlen(a);
	return *len ? a : NULL;
}

/* Verifies the bearer JWT; on failure fills resp with 401 and returns false. */
static bool require_jwt(const struct http_request *req, struct http_response *resp,
                        struct auth_identity *id)
{
	size_t len;
	const char *tok = bearer(req, &len);
	enum auth_reason why;

	if (!tok) {
		json_error(resp, 401, "unauthorized");
		return false;
	}
	why = auth_verify(g_auth, tok, len, time(NULL), id);
	if (why != AUTH_OK) {
		metrics.auth_failures[why]++;
		json_error(resp, 401, "unauthorized");
		return false;
	}
	return true;
}

static void admin_clients(const struct http_request *req, struct http_response *resp)
{
	struct auth_identity id;

	if (!require_jwt(req, resp, &id))
		return;
	if (!auth_is_admin(&id)) {
		auth_identity_clear(&id);
		json_error(resp, 403, "forbidden");
		return;
	}
	auth_identity_clear(&id);
	resp->status = 200;
	resp->content_type = "application/json";
	buf_printf(&resp->body, "{\"clients\":%lld,\"rooms\":", (long long)conn_count());
	room_counts_json(&resp->body);
	buf_puts(&resp->body, ",\"node\":");
	buf_json_str(&resp->body, g_cfg->node_id, strlen(g_cfg->node_id));
	buf_puts(&resp->body, "}");
}

/* Prometheus text: the HELP and TYPE lines that open a metric family. */
static void family(struct buf *b, const char *name, const char *type, const char *help)
{
	buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample of a family; label NULL for an unlabelled one. */
static void sample(struct buf *b, const char *name, const char *label, const char *value,
                   unsigned long long v)
{
	if (label)
		buf_printf(b, "%s{%s=\"%s\"} %llu\n", name, label, value, v);
	else
		buf_printf(b, "%s %llu\n", name, v);
}

/* A counter family with one sample per name of names[from..n). */
static void labelled(struct buf *b, const char *name, const char *help, const char *label,
                     const char *const *names, const uint64_t *values, int from, int n)
{
	family(b, name, "counter", help);
	for (int i = from; i < n; i++)
		sample(b, name, label, names[i], (unsigned long long)values[i]);
}

static void counter(struct buf *b, const char *name, const char *help, uint64_t v)
{
	family(b, name, "counter", help);
	sample(b, name, NULL, NULL, (unsigned long long)v);
}

static void render_metrics(struct http_response *resp)
{
	struct buf *b = &resp->body;
	const char *auth_names[AUTH_REASON_COUNT],
	    *classes[6] = {"", "1xx", "2xx", "3xx", "4xx", "5xx"};

	resp->status = 200;
	resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
	family(b, "roomcast_connections", "gauge", "WebSocket clients connected now.");
	buf_printf(b, "roomcast_connections %lld\n", (long long)metrics.connections);
	counter(b, "roomcast_connections_total", "WebSocket clients accepted.",
	        metrics.connections_total);
	/* Every accepted TCP connection, by the budget it counts against (see gate.h). */
	family(b, "roomcast_open_connections", "gauge",
	       "Accepted TCP connections open now, by budget: http (request heads, HTTP, "
	       "keep-alive, upgrades not yet admitted) and websocket.");
	buf_printf(b,
	           "roomcast_open_connections{phase=\"http\"} %lld\n"
	           "roomcast_open_connections{phase=\"websocket\"} %lld\n",
	           (long long)metrics.open_http, (long long)metrics.open_ws);
	family(b, "roomcast_open_addresses", "gauge",
	       "Peer addresses with at least one open connection.");
	buf_printf(b, "roomcast_open_addresses %lld\n", (long long)metrics.open_addresses);
	{
		static const char *const phases[] = {"head", "http", "idle", "upgrade",
		                                     "websocket"};
		labelled(b, "roomcast_deadline_closes_total",
		         "Connections closed at an absolute deadline, by phase.", "phase", phases,
		         metrics.deadline_closes, 0, 4);
	}
	family(b, "roomcast_rooms", "gauge", "Rooms with at least one member.");
	buf_printf(b, "roomcast_rooms %zu\n", room_count());
	counter(b, "roomcast_messages_in_total", "Client messages received.", metrics.messages_in);
	labelled(b, "roomcast_messages_routed_total", "Messages routed to rooms, by source.",
	         "source", metrics_source_names, metrics.messages_routed, 0, METRICS_SRC_COUNT);
	counter(b, "roomcast_messages_out_total", "Room messages written to clients.",
	        metrics.deliveries);
	counter(b, "roomcast_bytes_out_total", "Bytes of WebSocket payload written.",
	        metrics.bytes_out);
	counter(b, "roomcast_client_errors_total", "Error replies sent to clients.",
	        metrics.client_errors);
	labelled(b, "roomcast_closes_total", "Connections closed by the server, by reason.",
	         "reason", metrics_close_names, metrics.closes, 0, METRICS_CLOSE_COUNT);
	labelled(b, "roomcast_handshakes_refused_total",
	         "Connections refused before the upgrade, by reason.", "reason",
	         metrics_refuse_names, metrics.refused, 0, METRICS_REFUSE_COUNT);
	/* Reason 0 is AUTH_OK, which is not a failure. */
	for (int i = 0; i < AUTH_REASON_COUNT; i++)
		auth_names[i] = auth_reason_name((enum auth_reason)i);
	labelled(b, "roomcast_auth_failures_total", "Tokens refused, by reason.", "reason",
	         auth_names, metrics.auth_failures, 1, AUTH_REASON_COUNT);
	labelled(b, "roomcast_http_requests_total", "HTTP responses, by status class.", "code",
	         classes, metrics.http_requests, 1, 6);

	family(b, "roomcast_postgres_up", "gauge",
	       "Whether the listener and query connections are up (-1: not configured).");
	buf_printf(b, "roomcast_postgres_up %d\n",
	           strcmp(pgl_state(), "disabled") ? metrics.pg_up : -1);
	counter(b, "roomcast_postgres_reconnects_total", "Listener connections lost.",
	        metrics.pg_reconnects);
	counter(b, "roomcast_postgres_catchup_rows_total",
	        "Events delivered by catch-up reads rather than notifications.",
	        metrics.pg_catchup_rows);
	family(b, "roomcast_postgres_notify_queue_usage", "gauge",
	       "pg_notification_queue_usage() at the last heartbeat.");
	buf_printf(b, "roomcast_postgres_notify_queue_usage %g\n", metrics.pg_queue_usage);
	pgwatch_metrics(b);
	pgl_metrics(b);
	capture_metrics(b);
	pglisten_metrics(b);
	liveroom_metrics(b);
	cluster_metrics(b);
	presence_metrics(b);

	family(b, "roomcast_redis_up", "gauge",
	       "Whether the Redis link (subscriber and publisher) is up (-1: not configured).");
	buf_printf(b, "roomcast_redis_up %d\n",
	           strcmp(bus_state(), "disabled") ? metrics.redis_up : -1);
	counter(b, "roomcast_redis_reconnects_total", "Redis links lost after being up.",
	        metrics.redis_reconnects);
	counter(b, "roomcast_redis_publish_failures_total",
	        "Messages not published through Redis, delivered on this replica only.",
	        metrics.redis_publish_failures);
	family(b, "roomcast_bus_channels_subscribed", "gauge",
	       "Room channels (ws:room:<room>) Redis confirmed this replica subscribed to.");
	buf_printf(b, "roomcast_bus_channels_subscribed %lld\n", (long long)metrics.bus_channels);
	counter(b, "roomcast_bus_messages_received_total",
	        "Room messages received from Redis (our own echoes included).",
	        metrics.bus_received);

	family(b, "roomcast_delivery_latency_seconds", "histogram",
	       "From event arrival to the write to the client.");
	for (int i = 0; i < METRICS_LAT_BUCKETS; i++)
		buf_printf(b, "roomcast_delivery_latency_seconds_bucket{le=\"%g\"} %llu\n",
		           metrics_lat_bounds[i], (unsigned long long)metrics.lat_buckets[i]);
	buf_printf(b,
	           "roomcast_delivery_latency_seconds_bucket{le=\"+Inf\"} %llu\n"
	           "roomcast_delivery_latency_seconds_sum %.9f\n"
	           "roomcast_delivery_latency_seconds_count %llu\n",
	           (unsigned long long)metrics.lat_count, metrics.lat_sum,
	           (unsigned long long)metrics.lat_count);
}

/* ---- POST /api/notify ---- */

/* Whether tok is the credential this connection was last accepted with (compared in constant
 * time; a JWT only until its exp: past it, the full check decides again, leeway included). */
static bool memo_hit(const struct http_request *req, const char *tok, size_t len)
{
	const struct http_cred_memo *m = req->memo;

	return m && m->token && m->len == len && !CRYPTO_memcmp(m->token, tok, len) &&
	       (!m->expires || (long long)time(NULL) < m->expires);
}

static void memo_keep(const struct http_request *req, const char *tok, size_t len,
                      long long expires)
{
	struct http_cred_memo *m = req->memo;
	char *copy;

	if (!m || !(copy = malloc(len)))
		return;
	memcpy(copy, tok, len);
	free(m->token);
	m->token = copy;
	m->len = len;
	m->expires = expires;
}

void http_cred_memo_free(struct http_cred_memo *m)
{
	free(m->token);
	memset(m, 0, sizeof(*m));
}

/* The notify credential, checked on the request head before any body byte is read: a TCP
 * peer in NOTIFY_ALLOW_FROM (never a forwarded header), NOTIFY_TOKEN, or a JWT with role admin
 * or service. */
/* Who passed the credential, for the server API's log: "peer <address>", "notify token", or
 * "<role> <user id>". */
struct caller {
	char who[160];
};

static bool notify_authorized_as(const struct http_request *req, struct http_response *resp,
                                 struct caller *as)
{
	size_t len;
	const char *tok;
	struct auth_identity id;
	enum auth_reason why;
	bool ok;

	if (req->peer && cidr_list_match(&g_notify_allow, req->peer)) {
		if (as)
			snprintf(as->who, sizeof(as->who), "peer %s", req->peer);
		return true;
	}
	tok = bearer(req, &len);
	if (!tok) {
		json_error(resp, 401, "unauthorized");
		return false;
	}
	if (!as && memo_hit(req, tok, len))
		return true;
	if (g_have_token) {
		unsigned char d[SHA256_DIGEST_LENGTH];
		SHA256((const unsigned char *)tok, len, d);
		if (!CRYPTO_memcmp(d, g_token_digest, sizeof(d))) {
			if (as)
				snprintf(as->who, sizeof(as->who), "notify token");
			memo_keep(req, tok, len, 0);
			return true;
		}
	}
	why = auth_verify(g_auth, tok, len, time(NULL), &id);
	if (why != AUTH_OK) {
		metrics.auth_failures[why]++;
		json_error(resp, 401, "unauthorized");
		return false;
	}
	ok = auth_is_admin(&id) || auth_is_service(&id);
	if (as)
		snprintf(as->who, sizeof(as->who), "%s %s", id.user_id ? auth_role(&id) : "",
		         id.user_id ? id.user_id
		                    : ""); /* set on AUTH_OK; the compiler cannot tell */
	if (ok)
		memo_keep(req, tok, len, id.exp);
	auth_identity_clear(&id);
	if (!ok)
		json_error(resp, 403, "forbidden: role admin or service required");
	return ok;
}

struct persist_wait {
	void (*complete)(void *ctx, int status, const char *json);
	void *ctx;
};

static void on_persisted(void *arg, long long id, const char *err)
{
	struct persist_wait *pw = arg;
	char body[160];

	if (err) {
		log_warn("persistent notify failed", "reason", err);
		pw->complete(pw->ctx, 503, "{\"error\":\"notification could not be stored\"}");
	} else {
		snprintf(body, sizeof(body),
		         "{\"status\":\"success\",\"message\":\"Notification sent\",\"id\":%lld}",
		         id);
		pw->complete(pw->ctx, 200, body);
	}
	free(pw);
}

static void persist_notify(const struct http_request *req, struct http_response *resp,
                           const char *event, const char *room, const char *data_raw)
{
	struct persist_wait *pw;

	if (strcmp(pgl_state(), "up") || !req->complete || !(pw = malloc(sizeof(*pw)))) {
		json_error(resp, 503, "persist needs PostgreSQL, which is not available");
		return;
	}
	pw->complete = req->complete;
	pw->ctx = req->ctx;
	if (pgl_publish(event, room, data_raw, on_persisted, pw) < 0) {
		free(pw);
		json_error(resp, 503, "persist needs PostgreSQL, which is not available");
	}
	/* resp->status stays 0: the answer comes through req->complete. */
}

/* What notify reads of a body: the members it knows, each the last of its name (json-c's rule
 * for duplicate keys, which the answers keep), and NULL types for absent ones. */
struct notify_body {
	struct jscan_val event, room, user, data, persist;
};

static void notify_members(const struct jscan_val *root, struct notify_body *nb)
{
	struct jscan_iter it;
	struct jscan_val k, v;

	memset(nb, 0, sizeof(*nb));
	jscan_members(&it, root);
	while (jscan_next_member(&it, &k, &v)) {
		if (jscan_key_is(&k, "event"))
			nb->event = v;
		else if (jscan_key_is(&k, "room"))
			nb->room = v;
		else if (jscan_key_is(&k, "user_id"))
			nb->user = v;
		else if (jscan_key_is(&k, "data"))
			nb->data = v;
		else if (jscan_key_is(&k, "persist"))
			nb->persist = v;
	}
}

/* The room a body names, decoded into out (ROOM_NAME_MAX + 1 bytes, NUL-terminated when
 * valid): its length (past ROOM_NAME_MAX when too long), or -1 when it names none. */
static long notify_room(const struct notify_body *nb, char *out)
{
	char num[JSCAN_INT_LEN];
	size_t n;

	if (nb->room.type == JSCAN_STRING) {
		n = jscan_unescape(&nb->room, out, ROOM_NAME_MAX);
	} else if (nb->user.type == JSCAN_STRING) {
		memcpy(out, "user-", 5);
		n = 5 + jscan_unescape(&nb->user, out + 5, ROOM_NAME_MAX - 5);
	} else if ((n = jscan_int_text(&nb->user, num))) {
		/* An integer user_id as json-c printed it: -0 is 0, huge ones saturate. */
		n = (size_t)snprintf(out, ROOM_NAME_MAX + 1, "user-%s", num);
	} else {
		return -1;
	}
	if (n <= ROOM_NAME_MAX)
		out[n] = '\0';
	return (long)n;
}

static void notify(const struct http_request *req, struct http_response *resp)
{
	struct jscan_val root;
	struct notify_body nb;
	char room_name_buf[ROOM_NAME_MAX + 1], id[160], id_raw[170], ts[UTIL_TS_LEN];
	char ev_small[256], *event = ev_small;
	struct buf data;
	struct frame *f;
	size_t ev_len;
	long name_len;
	enum jscan_result jr;

	/* The credential was checked on the head (http_wants_body, through http_handle). */
	/* Nothing checked the body's UTF-8 before us (lws does it for WebSocket frames only), and
	 * one bad byte in a room message makes browsers fail the connection of every member. */
	if (!util_utf8_valid(req->body, req->body_len)) {
		json_error(resp, 400, "body is not valid UTF-8");
		return;
	}
	/* Strict RFC 8259 in place, no tree: NaN, Infinity or 00.5 would be relayed verbatim into
	 * messages no client can parse. The nesting limit is the client protocol's, counted as
	 * json-c counts it there. */
	jr = jscan_parse(req->body, req->body_len, PROTO_MAX_DEPTH, &root);
	if (jr == JSCAN_TRAILING) {
		json_error(resp, 400, "trailing bytes after JSON");
		return;
	}
	if (jr != JSCAN_OK) {
		json_error(resp, 400, "malformed JSON");
		return;
	}
	notify_members(&root, &nb);
	if (root.type != JSCAN_OBJECT || nb.event.type != JSCAN_STRING || nb.event.len <= 2) {
		json_error(resp, 400, "event is required");
		return;
	}
	/* Decoded once to size it, then into a heap copy when the stack one is too small. */
	ev_len = jscan_unescape(&nb.event, ev_small, sizeof(ev_small) - 1);
	if (ev_len >= sizeof(ev_small)) {
		if (!(event = malloc(ev_len + 1))) {
			json_error(resp, 503, "notification could not be published");
			return;
		}
		jscan_unescape(&nb.event, event, ev_len);
	}
	event[ev_len] = '\0';
	/* From here the event name is a C string; one with a NUL would be published cut short. */
	if (memchr(event, '\0', ev_len)) {
		json_error(resp, 400, "invalid event name");
		goto out;
	}
	name_len = notify_room(&nb, room_name_buf);
	if (name_len < 0) {
		json_error(resp, 400, "room or user_id is required");
		goto out;
	}
	/* Checked at the length that was sent: a name too long or with a NUL would publish to a
	 * room other than the one named if it were cut. */
	if (name_len > ROOM_NAME_MAX || memchr(room_name_buf, '\0', (size_t)name_len) ||
	    !room_name_valid(room_name_buf, (size_t)name_len)) {
		json_error(resp, 400, "invalid room name");
		goto out;
	}
	/* data relayed compacted, otherwise byte for byte (docs/decisions.md). */
	buf_init(&data);
	if (nb.data.type)
		jscan_compact(&nb.data, &data);
	else
		buf_puts(&data, "null");
	if (data.failed) {
		buf_free(&data);
		json_error(resp, 503, "notification could not be published");
		goto out;
	}
	/* Only a JSON true persists (json-c's get_boolean would also call "false" true). */
	if (nb.persist.type == JSCAN_TRUE) {
		/* Durable: through realtime.publish, delivered by every replica's listener. */
		persist_notify(req, resp, event, room_name_buf, data.data);
		buf_free(&data);
		goto out;
	}
	{
		/* "<node>-n<seq>", and the same in quotes, without printf (once per notify); an
		 * overlong NODE_ID is cut as snprintf cuts it. */
		char n[24];
		const char *d = decimal(++g_notify_seq, n);
		size_t nl = strlen(g_cfg->node_id), dl = strlen(d);
		if (nl + 2 + dl >= sizeof(id)) {
			snprintf(id, sizeof(id), "%s-n%s", g_cfg->node_id, d);
			snprintf(id_raw, sizeof(id_raw), "\"%s\"", id);
		} else {
			memcpy(id, g_cfg->node_id, nl);
			memcpy(id + nl, "-n", 2);
			memcpy(id + nl + 2, d, dl + 1);
			id_raw[0] = '"';
			memcpy(id_raw + 1, id, nl + 2 + dl);
			memcpy(id_raw + 1 + nl + 2 + dl, "\"", 2);
		}
	}
	util_timestamp(ts);
	f = proto_event_envelope(id_raw, event, room_name_buf, ts, data.data,
	                         "{\"source\":\"notify\"}");
	buf_free(&data);
	if (!f || bus_publish(room_name_buf, (const char *)frame_data(f), f->len,
	                      METRICS_SRC_NOTIFY) < 0) {
		frame_unref(f);
		json_error(resp, 503, "notification could not be published");
		goto out;
	}
	frame_unref(f);
	resp->status = 200;
	resp->content_type = "application/json";
	buf_puts(&resp->body, "{\"status\":\"success\",\"message\":\"Notification sent\",\"id\":");
	buf_json_str(&resp->body, id, strlen(id));
	buf_puts(&resp->body, "}");
out:
	if (event != ev_small)
		free(event);
}

static bool notify_authorized(const struct http_request *req, struct http_response *resp)
{
	return notify_authorized_as(req, resp, NULL);
}

/* ---- GET /api/history ---- */

/* Copies the value of name from a query string ("a=1&b=2", %XX decoded) into out. Returns
 * false when absent, too long or malformed. */
static bool query_get(const char *q, const char *name, char *out, size_t cap)
{
	size_t nlen = strlen(name);

	for (const char *p = q; p && *p; p = strchr(p, '&'), p = p ? p + 1 : NULL) {
		size_t o = 0;
		if (strncmp(p, name, nlen) || p[nlen] != '=')
			continue;
		for (p += nlen + 1; *p && *p != '&'; p++) {
			char c = *p;
			if (c == '%') {
				unsigned v;
				if (sscanf(p + 1, "%2x", &v) != 1 || !p[1] || !p[2])
					return false;
				c = (char)v;
				p += 2;
			} else if (c == '+') {
				c = ' ';
			}
			if (o + 1 >= cap)
				return false;
			out[o++] = c;
		}
		out[o] = '\0';
		return true;
	}
	return false;
}

/* A decimal integer in [min, max] from the query, or def when absent; -1 when malformed. */
static long long query_int(const char *q, const char *name, long long def, long long min,
                           long long max)
{
	char v[32], *end;
	long long n;

	if (!query_get(q, name, v, sizeof(v)))
		return def;
	n = strtoll(v, &end, 10);
	if (!v[0] || *end || n < min)
		return -1;
	return n > max ? max : n;
}

struct history_wait {
	void (*complete)(void *ctx, int status, const char *json);
	void *ctx;
	char room[ROOM_NAME_MAX + 1];
};

static void on_history_page(void *arg, bool ok, bool recovered, struct frame **frames, size_t n,
                            bool more)
{
	struct history_wait *hw = arg;
	struct buf b;

	buf_init(&b);
	if (ok)
		proto_history_json(&b, hw->room, frames, n, recovered, more);
	for (size_t i = 0; i < n; i++)
		frame_unref(frames[i]);
	if (!ok || b.failed)
		hw->complete(hw->ctx, 503, "{\"error\":\"history could not be read\"}");
	else {
		buf_put(&b, "", 1); /* the answer is passed as a C string */
		hw->complete(hw->ctx, 200, b.data);
	}
	buf_free(&b);
	free(hw);
}

static void history(const struct http_request *req, struct http_response *resp)
{
	char room[ROOM_NAME_MAX + 2];
	long long since, limit;
	struct history_wait *hw;

	if (!notify_authorized(req, resp))
		return;
	if (!query_get(req->query, "room", room, sizeof(room)) ||
	    !room_name_valid(room, strlen(room))) {
		json_error(resp, 400, "room is required and must be a valid room name");
		return;
	}
	since = query_int(req->query, "since", 0, 0, INT64_MAX);
	limit = query_int(req->query, "limit", PROTO_HISTORY_DEFAULT, 1, PROTO_HISTORY_MAX);
	if (since < 0 || limit < 0) {
		json_error(resp, 400, "since and limit must be non-negative integers");
		return;
	}
	if (!pgl_enabled()) {
		/* Nothing is stored without an outbox: an empty page that says so. */
		resp->status = 200;
		resp->content_type = "application/json";
		proto_history_json(&resp->body, room, NULL, 0, false, false);
		return;
	}
	if (!req->complete || !(hw = calloc(1, sizeof(*hw)))) {
		json_error(resp, 503, "history could not be read");
		return;
	}
	hw->complete = req->complete;
	hw->ctx = req->ctx;
	memcpy(hw->room, room, strlen(room) + 1); /* valid: at most ROOM_NAME_MAX bytes */
	if (pgl_history(room, since, (int)limit, on_history_page, hw) < 0) {
		free(hw);
		json_error(resp, 503, "history could not be read");
	}
	/* resp->status stays 0: the answer comes through req->complete. */
}

/* ---- the server API: POST /api/disconnect, /api/subscribe, /api/unsubscribe, GET /api/rooms ----
 */

/* The answer may come before cluster_request returns (this replica alone): it then goes straight
 * into resp; later, through req->complete. */
struct api_wait {
	void (*complete)(void *ctx, int status, const char *json);
	void *ctx;
	struct http_response *resp; /* until cluster_request returns */
};

static void on_api_done(void *arg, int status, const char *json)
{
	struct api_wait *w = arg;

	if (w->resp) {
		w->resp->status = status;
		w->resp->content_type = "application/json";
		buf_puts(&w->resp->body, json);
		w->resp = NULL;
		return; /* server_api frees w */
	}
	w->complete(w->ctx, status, json);
	free(w);
}

static bool is_api_post(const char *path)
{
	return !strcmp(path, "/api/notify") || !strcmp(path, "/api/disconnect") ||
	       !strcmp(path, "/api/subscribe") || !strcmp(path, "/api/unsubscribe");
}

/* The user id of a server API body, as text (a string or an integer), into out. */
static bool body_user(json_object *root, char *out, size_t cap)
{
	json_object *u;
	size_t n;

	if (!json_object_object_get_ex(root, "user_id", &u) ||
	    !(json_object_is_type(u, json_type_string) || json_object_is_type(u, json_type_int)))
		return false;
	n = json_object_is_type(u, json_type_string) ? (size_t)json_object_get_string_len(u)
	                                             : strlen(json_object_get_string(u));
	/* user-<id> must be a valid room name: that is where the user's connections are. */
	if (!n || n >= cap || n + 5 > ROOM_NAME_MAX || strlen(json_object_get_string(u)) != n ||
	    !room_name_valid(json_object_get_string(u), n))
		return false;
	memcpy(out, json_object_get_string(u), n + 1);
	return true;
}

static void server_api(const struct http_request *req, struct http_response *resp,
                       enum cluster_op op)
{
	struct caller as = {{0}};
	char user[ROOM_NAME_MAX + 1] = "", room[ROOM_NAME_MAX + 1] = "";
	struct api_wait *w;

	if (!notify_authorized_as(req, resp, &as))
		return;
	if (op != CLUSTER_ROOMS) {
		json_tokener *tok = json_tokener_new_ex(PROTO_MAX_DEPTH);
		json_object *root = NULL, *r;
		if (tok) {
			json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
			root = json_tokener_parse_ex(tok, req->body, (int)req->body_len);
			json_tokener_free(tok);
		}
		if (!root || !json_object_is_type(root, json_type_object)) {
			json_object_put(root);
			json_error(resp, 400, "malformed JSON");
			return;
		}
		if (!body_user(root, user, sizeof(user))) {
			json_object_put(root);
			json_error(resp, 400, "user_id is required (a string or an integer)");
			return;
		}
		if (op != CLUSTER_DISCONNECT) {
			if (!json_object_object_get_ex(root, "room", &r) ||
			    !json_object_is_type(r, json_type_string) ||
			    (size_t)json_object_get_string_len(r) >= sizeof(room) ||
			    strlen(json_object_get_string(r)) !=
			        (size_t)json_object_get_string_len(r) ||
			    !room_name_valid(json_object_get_string(r),
			                     (size_t)json_object_get_string_len(r))) {
				json_object_put(root);
				json_error(resp, 400,
				           "room is required and must be a valid room name");
				return;
			}
			snprintf(room, sizeof(room), "%s", json_object_get_string(r));
		}
		json_object_put(root);
	}
	if (!req->complete || !(w = calloc(1, sizeof(*w)))) {
		json_error(resp, 503, "out of memory");
		return;
	}
	w->complete = req->complete;
	w->ctx = req->ctx;
	w->resp = resp;
	cluster_request(op, op == CLUSTER_ROOMS ? NULL : user, room[0] ? room : NULL, as.who,
	                on_api_done, w);
	if (!w->resp) {
		free(w); /* answered already */
		return;
	}
	w->resp = NULL;
	/* resp->status stays 0: the answer comes through req->complete. */
}

/* GET /api/presence?room=...: the presence answer a member gets, from this replica's copy of
 * the cluster's table. */
static void presence(const struct http_request *req, struct http_response *resp)
{
	char room[ROOM_NAME_MAX + 2];

	if (!notify_authorized(req, resp))
		return;
	if (!query_get(req->query, "room", room, sizeof(room)) ||
	    !room_name_valid(room, strlen(room))) {
		json_error(resp, 400, "room is required and must be a valid room name");
		return;
	}
	resp->status = 200;
	resp->content_type = "application/json";
	presence_answer(room, &resp->body);
}

static bool is_json_type(const char *ct)
{
	size_t n = strlen("application/json");
	return ct && !strncasecmp(ct, "application/json", n) && (ct[n] == '\0' || ct[n] == ';');
}

bool http_wants_body(const struct http_request *req, struct http_response *resp)
{
	if (!is_api_post(req->path))
		return false;
	if (strcmp(req->method, "POST")) {
		json_error(resp, 405, "method not allowed");
		resp->extra_headers = "Allow: POST\r\n";
		return false;
	}
	if (!notify_authorized(req, resp))
		return false;
	if (!is_json_type(req->content_type)) {
		json_error(resp, 415, "content type must be application/json");
		return false;
	}
	if (req->content_length > g_cfg->notify_max_bytes) {
		json_error(resp, 413, "body too large");
		return false;
	}
	return true;
}

void http_handle_body(const struct http_request *req, struct http_response *resp)
{
	if (strcmp(req->path, "/api/notify")) {
		http_handle(req, resp);
		return;
	}
	if (req->body_len > (size_t)g_cfg->notify_max_bytes)
		json_error(resp, 413, "body too large");
	else
		notify(req, resp);
}

/* The reason phrases lws 4.1.6 writes (lws_add_http_header_status), so an answer written here
 * is byte for byte the one lws would have written. */
static const char *reason_phrase(int status)
{
	static const char *const r4[] = {"Bad Request",
	                                 "Unauthorized",
	                                 "Payment Required",
	                                 "Forbidden",
	                                 "Not Found",
	                                 "Method Not Allowed",
	                                 "Not Acceptable",
	                                 "Proxy Auth Required",
	                                 "Request Timeout",
	                                 "Conflict",
	                                 "Gone",
	                                 "Length Required",
	                                 "Precondition Failed",
	                                 "Request Entity Too Large",
	                                 "Request URI too Long",
	                                 "Unsupported Media Type",
	                                 "Requested Range Not Satisfiable",
	                                 "Expectation Failed"},
	                         *const r5[] = {
	                             "Internal Server Error", "Not Implemented",
	                             "Bad Gateway",           "Service Unavailable",
	                             "Gateway Timeout",       "HTTP Version Not Supported"};

	if (status == 200)
		return "OK";
	if (status >= 400 && status < 400 + (int)(sizeof(r4) / sizeof(r4[0])))
		return r4[status - 400];
	if (status >= 500 && status < 500 + (int)(sizeof(r5) / sizeof(r5[0])))
		return r5[status - 500];
	return status >= 300 && status < 400 && status != 304 ? "Redirect" : "";
}

void http_response_bytes(const struct http_response *resp, bool head_only, struct buf *out)
{
	char n[24];

	/* Built with puts rather than printf: this runs once per notify on the fast path. */
	buf_puts(out, "HTTP/1.1 ");
	buf_puts(out, decimal((unsigned long long)(resp->status < 0 ? 0 : resp->status), n));
	buf_puts(out, " ");
	buf_puts(out, reason_phrase(resp->status));
	buf_puts(out, "\r\n");
	if (resp->content_type) {
		buf_puts(out, "content-type: ");
		buf_puts(out, resp->content_type);
		buf_puts(out, "\r\n");
	}
	buf_puts(out, "content-length: ");
	buf_puts(out, decimal(resp->body.len, n));
	buf_puts(out, "\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n");
	if (resp->extra_headers)
		buf_puts(out, resp->extra_headers);
	buf_puts(out, "\r\n");
	if (!head_only && resp->body.len)
		buf_put(out, resp->body.data, resp->body.len);
}

void http_handle(const struct http_request *req, struct http_response *resp)
{
	bool get = !strcmp(req->method, "GET") || !strcmp(req->method, "HEAD");
	const char *p = req->path;

	if (g_static && g_static(req->path, req->method, resp))
		return;
	if (!strcmp(p, "/api/notify")) {
		if (http_wants_body(req, resp)) {
			if (req->body_len > (size_t)g_cfg->notify_max_bytes)
				json_error(resp, 413, "body too large");
			else
				notify(req, resp);
		}
		return;
	}
	if (is_api_post(p)) {
		if (http_wants_body(req, resp)) {
			if (req->body_len > (size_t)g_cfg->notify_max_bytes)
				json_error(resp, 413, "body too large");
			else
				server_api(req, resp,
				           !strcmp(p, "/api/disconnect")  ? CLUSTER_DISCONNECT
				           : !strcmp(p, "/api/subscribe") ? CLUSTER_SUBSCRIBE
				                                          : CLUSTER_UNSUBSCRIBE);
		}
		return;
	}
	if (strcmp(p, "/health") && strcmp(p, "/ready") && strcmp(p, "/metrics") &&
	    strcmp(p, "/admin/clients") && strcmp(p, "/api/history") && strcmp(p, "/api/rooms") &&
	    strcmp(p, "/api/presence")) {
		json_error(resp, 404, "not found");
		return;
	}
	if (!get) {
		json_error(resp, 405, "method not allowed");
		resp->extra_headers = "Allow: GET\r\n";
		return;
	}
	if (!strcmp(p, "/health"))
		health(resp, false);
	else if (!strcmp(p, "/ready"))
		health(resp, true);
	else if (!strcmp(p, "/metrics"))
		render_metrics(resp);
	else if (!strcmp(p, "/api/history"))
		history(req, resp);
	else if (!strcmp(p, "/api/rooms"))
		server_api(req, resp, CLUSTER_ROOMS);
	else if (!strcmp(p, "/api/presence"))
		presence(req, resp);
	else
		admin_clients(req, resp);
}
