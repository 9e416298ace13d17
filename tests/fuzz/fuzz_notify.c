/* Fuzzes the POST /api/notify body parser through http_handle, authorized with the
 * notify token, and checks the answer against a reference reading of the same body: the status,
 * the JSON of the response, and the room message published on the bus (data compared as JSON
 * values). Also differential: jscan, the in-place scanner http.c reads bodies with, must accept
 * exactly what json-c plus an independent RFC 8259 check accept, and read the same members. */
#include "fuzz.h"

#include "auth.h"
#include "bus.h"
#include "config.h"
#include "http.h"
#include "jscan.h"
#include "log.h"
#include "proto.h"
#include "room.h"

#define NOTIFY_TOKEN "fuzz-notify-token-0123456789abcdef"

static struct config g_cfg;
static struct auth *g_auth;

/* What the harness saw published for the current input. */
static struct {
	int count;
	char room[512];
	json_object *msg;
} g_pub;

/* Linked with -Wl,--wrap=bus_publish: http.c's call lands here, so the published bytes are
 * checked exactly as every client of the room would receive them, then delivered as usual. */
int __real_bus_publish(const char *room, const char *payload, size_t len, enum metrics_source src);
int __wrap_bus_publish(const char *room, const char *payload, size_t len, enum metrics_source src);

int __wrap_bus_publish(const char *room, const char *payload, size_t len, enum metrics_source src)
{
	FUZZ_CHECK(src == METRICS_SRC_NOTIFY, "notify published as source %d", (int)src);
	FUZZ_CHECK(g_pub.count == 0, "published twice");
	g_pub.count++;
	snprintf(g_pub.room, sizeof(g_pub.room), "%s", room);
	/* Clients JSON.parse every room message: it must be RFC 8259 JSON, not only json-c's. */
	FUZZ_CHECK(fuzz_json_rfc8259(payload, len), "published room message is not JSON: %.*s",
	           (int)len, payload);
	/* Text frames must be UTF-8: a browser drops the whole connection on one bad byte. */
	g_pub.msg = fuzz_json_object(payload, len, true);
	FUZZ_CHECK(g_pub.msg, "published room message is not UTF-8 JSON: %.*s", (int)len, payload);
	return __real_bus_publish(room, payload, len, src);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	static const char *const unset[] = {
	    "DATABASE_URL",   "REDIS_ADDR",       "BACKEND_URL",    "AUTHZ",
	    "WORKERS",        "TLS_CERT_FILE",    "TLS_KEY_FILE",   "ENVIRONMENT",
	    "LOG_LEVEL",      "LOG_FORMAT",       "JWT_ALGORITHMS", "JWT_PUBLIC_KEY_FILE",
	    "JWT_ISSUER",     "JWT_AUDIENCE",     "RATE_LIMIT",     "PING_INTERVAL_S",
	    "PONG_TIMEOUT_S", "NOTIFY_MAX_BYTES", "WS_ORIGINS",
	};
	char *args[] = {"serve",
	                "--jwt-secret",
	                "fuzz-secret-0123456789abcdef0123456789",
	                "--notify-token",
	                NOTIFY_TOKEN,
	                "--node-id",
	                "fuzz-node",
	                NULL};
	struct auth_config ac = {0};
	char err[256];

	/* Start from the defaults whatever the caller's environment holds (no PostgreSQL, no
	 * Redis: persist answers 503 and the in-process bus delivers). */
	for (size_t i = 0; i < sizeof(unset) / sizeof(unset[0]); i++)
		unsetenv(unset[i]);
	if (config_load(&g_cfg, 7, args, stdout, stderr))
		abort();
	log_init(LOG_ERROR, LOG_FORMAT_TEXT, g_cfg.node_id);
	ac.secret = (const unsigned char *)g_cfg.jwt_secret;
	ac.secret_len = strlen(g_cfg.jwt_secret);
	ac.algorithms = g_cfg.jwt_alg_mask;
	ac.leeway_s = (int)g_cfg.jwt_leeway_s;
	g_auth = auth_new(&ac, err, sizeof(err));
	if (!g_auth) {
		fprintf(stderr, "auth_new: %s\n", err);
		abort();
	}
	http_setup(&g_cfg, g_auth, "fuzz");
	return 0;
}

/* The reference reading of a notify body, written from docs/http-api.md and independent of http.c:
 * returns the expected status (200 or 400) and, for 200, the room and the parsed body. */
static int expect_notify(const uint8_t *data, size_t size, char *room, size_t cap,
                         json_object **root_out)
{
	json_object *root, *v;
	const char *s;
	size_t n;

	*root_out = NULL;
	/* Over HTTP nothing validated the bytes before us, so the parser must refuse bad UTF-8.
	 * The nesting limit is the client protocol's, by design. */
	root = fuzz_json_object_depth((const char *)data, size, true, PROTO_MAX_DEPTH);
	if (!root)
		return 400;
	/* json-c's strict mode also takes NaN, Infinity, 00, -01, single-quoted keys and raw
	 * control bytes in strings: a body is acceptable only when it is RFC 8259 JSON itself. */
	if (!fuzz_json_rfc8259((const char *)data, size)) {
		json_object_put(root);
		return 400;
	}
	/* The event name is published as a C string, so it has to be one. */
	s = fuzz_json_str(root, "event", &n);
	if (!s || !n || strlen(s) != n) {
		json_object_put(root);
		return 400;
	}
	if ((s = fuzz_json_str(root, "room", &n))) {
		if (n >= cap) {
			json_object_put(root);
			return 400;
		}
		memcpy(room, s, n);
		room[n] = '\0';
	} else if (json_object_object_get_ex(root, "user_id", &v) &&
	           (json_object_is_type(v, json_type_string) ||
	            json_object_is_type(v, json_type_int))) {
		s = json_object_get_string(v);
		n = json_object_is_type(v, json_type_string) ? (size_t)json_object_get_string_len(v)
		                                             : strlen(s);
		if (n + 5 >= cap) {
			json_object_put(root);
			return 400;
		}
		memcpy(room, "user-", 5);
		memcpy(room + 5, s, n);
		room[n + 5] = '\0';
		n += 5;
	} else {
		json_object_put(root);
		return 400;
	}
	/* A room with a NUL or past the length limit is invalid, not truncated. */
	if (!room_name_valid(room, n) || strlen(room) != n) {
		json_object_put(root);
		return 400;
	}
	*root_out = root;
	return 200;
}

/* jscan against the reference: the same verdict on the whole document (bodies with invalid
 * UTF-8 only as far as the grammar goes, since UTF-8 is the caller's check), and for an object
 * the same members, string values decoded to the same bytes, integers printed the same, and
 * every value compacted back to the same JSON value. */
static void jscan_differential(const uint8_t *data, size_t size)
{
	static const char *const names[] = {"event", "room", "user_id", "data", "persist", "a", ""};
	const char *s = (const char *)data;
	struct jscan_val top, v;
	enum jscan_result jr = jscan_parse(s, size, PROTO_MAX_DEPTH, &top);
	json_object *root = NULL, *w, *c;
	bool want;

	if (!fuzz_utf8_valid(data, size))
		return;
	want = fuzz_json_parse_depth(s, size, true, PROTO_MAX_DEPTH, &root) &&
	       fuzz_json_rfc8259(s, size);
	FUZZ_CHECK((jr == JSCAN_OK) == want, "jscan says %d, the reference %d", (int)jr, (int)want);
	if (!want || !root) {
		json_object_put(root);
		return;
	}
	if (json_object_is_type(root, json_type_object)) {
		FUZZ_CHECK(top.type == JSCAN_OBJECT, "object scanned as %d", (int)top.type);
		for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
			bool has = json_object_object_get_ex(root, names[i], &w);
			FUZZ_CHECK(jscan_member(&top, names[i], &v) == has, "member %s: %d",
			           names[i], (int)has);
			if (!has)
				continue;
			if (json_object_is_type(w, json_type_string)) {
				char out[2048];
				size_t n = jscan_unescape(&v, out, sizeof(out));
				FUZZ_CHECK(v.type == JSCAN_STRING &&
				               n == (size_t)json_object_get_string_len(w) &&
				               (n > sizeof(out) ||
				                !memcmp(out, json_object_get_string(w), n)),
				           "member %s decoded differently", names[i]);
			}
			if (json_object_is_type(w, json_type_int)) {
				char num[JSCAN_INT_LEN];
				FUZZ_CHECK(jscan_int_text(&v, num) &&
				               !strcmp(num, json_object_get_string(w)),
				           "member %s: integer %s", names[i],
				           json_object_get_string(w));
			}
		}
	}
	{
		struct buf b;
		buf_init(&b);
		jscan_compact(&top, &b);
		FUZZ_CHECK(!b.failed && fuzz_json_parse(b.data, b.len, true, &c),
		           "compacted value is not JSON: %.*s", (int)b.len, b.data ? b.data : "");
		FUZZ_CHECK(json_object_equal(c, root), "compacted value changed: %.*s", (int)b.len,
		           b.data);
		for (size_t i = 0, in = 0; i < b.len; i++) {
			char ch = b.data[i];
			if (in && ch == '\\')
				i++;
			else if (ch == '"')
				in = !in;
			else
				FUZZ_CHECK(
				    in || !(ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'),
				    "whitespace left at %zu: %s", i, b.data);
		}
		json_object_put(c);
		buf_free(&b);
	}
	json_object_put(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct http_request req = {
	    .method = "POST",
	    .path = "/api/notify",
	    .query = "",
	    .authorization = "Bearer " NOTIFY_TOKEN,
	    .content_type = "application/json",
	    .content_length = (long)size,
	    .body = (const char *)data,
	    .body_len = size,
	};
	struct http_response resp = {0};
	char room[ROOM_NAME_MAX + 8];
	json_object *want_root = NULL, *got, *persist, *v, *w;
	int want;
	size_t n;

	jscan_differential(data, size);
	memset(&g_pub, 0, sizeof(g_pub));
	want = expect_notify(data, size, room, sizeof(room), &want_root);
	/* persist:true needs PostgreSQL, which the harness does not have. Only a JSON true
	 * persists: json-c's get_boolean would also call 1, 2^64 or "false" true. */
	if (want == 200 && json_object_object_get_ex(want_root, "persist", &persist) &&
	    json_object_is_type(persist, json_type_boolean) && json_object_get_boolean(persist))
		want = 503;
	if (size > (size_t)g_cfg.notify_max_bytes)
		want = 413;

	http_handle(&req, &resp);
	FUZZ_CHECK(resp.status == want, "status %d, expected %d; body %.*s", resp.status, want,
	           (int)resp.body.len, resp.body.data ? resp.body.data : "");
	FUZZ_CHECK(!resp.body.failed && resp.body.data, "no response body");
	got = fuzz_json_object(resp.body.data, resp.body.len, true);
	FUZZ_CHECK(got && fuzz_json_rfc8259(resp.body.data, resp.body.len),
	           "response is not JSON: %s", resp.body.data);
	if (want != 200) {
		FUZZ_CHECK(fuzz_json_str(got, "error", &n) && n, "refusal without an error");
		FUZZ_CHECK(g_pub.count == 0, "refused notify was published");
	} else {
		FUZZ_CHECK(fuzz_json_str(got, "status", &n), "success without status");
		FUZZ_CHECK(g_pub.count == 1, "accepted notify published %d times", g_pub.count);
		FUZZ_CHECK(!strcmp(g_pub.room, room), "published to %s, expected %s", g_pub.room,
		           room);
		/* The message carries the event and data exactly as sent. */
		json_object_object_get_ex(want_root, "event", &w);
		FUZZ_CHECK(json_object_object_get_ex(g_pub.msg, "event", &v) &&
		               json_object_equal(v, w),
		           "event changed");
		if (!json_object_object_get_ex(want_root, "data", &w))
			w = NULL;
		FUZZ_CHECK(json_object_object_get_ex(g_pub.msg, "data", &v) &&
		               json_object_equal(v, w),
		           "data changed");
		FUZZ_CHECK(fuzz_json_str(g_pub.msg, "room", &n) && n == strlen(room) &&
		               !memcmp(fuzz_json_str(g_pub.msg, "room", &n), room, n),
		           "room field changed");
	}
	json_object_put(got);
	json_object_put(want_root);
	json_object_put(g_pub.msg);
	http_response_free(&resp);
	return 0;
}
