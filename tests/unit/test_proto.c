/* Unit tests for src/proto.c: the client-message parser proto_parse (client -> server) and
 * the reply/envelope builders, whose output is re-parsed with json-c and checked field by field. */
#include "proto.h"

#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

/* ---- parser helpers ---- */

static struct proto_msg g_msg;
static const char *g_detail;

/* Parses the NUL-terminated s (its exact length) into g_msg. */
static enum proto_code parse(const char *s)
{
	proto_msg_clear(&g_msg);
	g_detail = NULL;
	return proto_parse(s, strlen(s), &g_msg, &g_detail);
}

/* Asserts s is refused with want, a non-empty detail and nothing left allocated in g_msg. */
static void expect_error(const char *s, enum proto_code want)
{
	enum proto_code got = parse(s);

	ck_assert_msg(got == want, "%s: got %s, want %s", s, proto_code_name(got),
	              proto_code_name(want));
	ck_assert_ptr_nonnull(g_detail);
	ck_assert_msg(g_detail[0] != '\0', "%s: empty detail", s);
	ck_assert_ptr_null(g_msg.body);
	ck_assert_ptr_null(g_msg.token);
}

static void expect_ok(const char *s, enum proto_type type)
{
	enum proto_code got = parse(s);

	ck_assert_msg(got == PROTO_OK, "%s: got %s (%s)", s, proto_code_name(got),
	              g_detail ? g_detail : "");
	ck_assert_int_eq(g_msg.type, type);
}

static void teardown(void)
{
	proto_msg_clear(&g_msg);
}

/* ---- reply helpers ---- */

/* Checks the frame is one complete JSON object of exactly f->len bytes, NUL-terminated, with one
 * reference; returns the parsed object and drops the frame. */
static json_object *parse_frame(struct frame *f)
{
	json_tokener *tok;
	json_object *o;
	const char *text;

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(f->refs, 1);
	text = (const char *)frame_data(f);
	ck_assert_uint_eq(strlen(text), f->len);
	tok = json_tokener_new();
	ck_assert_ptr_nonnull(tok);
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	o = json_tokener_parse_ex(tok, text, (int)f->len);
	ck_assert_msg(json_tokener_get_error(tok) == json_tokener_success && o,
	              "not valid JSON: %s", text);
	ck_assert_msg(json_tokener_get_parse_end(tok) == f->len, "trailing bytes: %s", text);
	ck_assert_msg(json_object_is_type(o, json_type_object), "not an object: %s", text);
	json_tokener_free(tok);
	frame_unref(f);
	return o;
}

/* Asserts o is an object with exactly the NULL-terminated list of keys. */
static void expect_keys(json_object *o, ...)
{
	va_list ap;
	const char *k;
	int n = 0;

	ck_assert(json_object_is_type(o, json_type_object));
	va_start(ap, o);
	while ((k = va_arg(ap, const char *))) {
		ck_assert_msg(json_object_object_get_ex(o, k, NULL), "missing key %s in %s", k,
		              json_object_to_json_string(o));
		n++;
	}
	va_end(ap);
	ck_assert_msg(json_object_object_length(o) == n, "extra keys in %s",
	              json_object_to_json_string(o));
}

static json_object *field(json_object *o, const char *key)
{
	json_object *v = NULL;

	ck_assert_msg(json_object_object_get_ex(o, key, &v), "missing key %s", key);
	return v;
}

static void expect_str(json_object *o, const char *key, const char *want)
{
	json_object *v = field(o, key);

	ck_assert_msg(json_object_is_type(v, json_type_string), "%s is not a string", key);
	ck_assert_str_eq(json_object_get_string(v), want);
}

static void expect_int(json_object *o, const char *key, long long want)
{
	json_object *v = field(o, key);

	ck_assert_msg(json_object_is_type(v, json_type_int), "%s is not an integer", key);
	ck_assert_int_eq(json_object_get_int64(v), want);
}

static void expect_bool(json_object *o, const char *key, bool want)
{
	json_object *v = field(o, key);

	ck_assert_msg(json_object_is_type(v, json_type_boolean), "%s is not a boolean", key);
	ck_assert_int_eq(json_object_get_boolean(v), want);
}

/* Asserts o has {"type": type, "payload": {...}} and returns the payload. */
static json_object *reply_payload(json_object *o, const char *type)
{
	json_object *p;

	expect_keys(o, "type", "payload", NULL);
	expect_str(o, "type", type);
	p = field(o, "payload");
	ck_assert(json_object_is_type(p, json_type_object));
	return p;
}

/* ---- parser: JSON shape ---- */

START_TEST(test_ping)
{
	expect_ok("{\"type\":\"ping\"}", PROTO_PING);
	ck_assert_ptr_null(g_msg.body);
	ck_assert_ptr_null(g_msg.token);
	ck_assert(!g_msg.has_since);
	expect_ok("{\"type\":\"ping\",\"payload\":{}}", PROTO_PING);
}
END_TEST

START_TEST(test_trailing_whitespace_accepted)
{
	expect_ok("{\"type\":\"ping\"} \t\r\n  ", PROTO_PING);
	expect_ok("  {\"type\":\"ping\"}\n", PROTO_PING);
}
END_TEST

START_TEST(test_trailing_bytes_rejected)
{
	static const char with_nul[] = "{\"type\":\"ping\"}\0";

	expect_error("{\"type\":\"ping\"}x", PROTO_BAD_JSON);
	expect_error("{\"type\":\"ping\"} {}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"ping\"}{\"type\":\"ping\"}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"ping\"}\n]", PROTO_BAD_JSON);
	/* A NUL inside the frame is a byte like any other, not an end of string. */
	proto_msg_clear(&g_msg);
	ck_assert_int_eq(proto_parse(with_nul, sizeof(with_nul) - 1, &g_msg, &g_detail),
	                 PROTO_BAD_JSON);
}
END_TEST

START_TEST(test_bad_json)
{
	static const char *const bad[] = {
	    "",
	    "   ",
	    "{",
	    "{\"type\":\"ping\"",
	    "{\"type\":\"ping\",}",
	    "{'type':'ping'}",
	    "{type:\"ping\"}",
	    "{\"type\":\"ping\" \"x\":1}",
	    "nul",
	    "{\"type\":\"pi\\xng\"}",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		expect_error(bad[i], PROTO_BAD_JSON);
}
END_TEST

START_TEST(test_exact_length)
{
	static const char s[] = "{\"type\":\"ping\"}";

	/* The frame length, not the NUL, bounds the parse: one byte short is incomplete. */
	ck_assert_int_eq(proto_parse(s, sizeof(s) - 2, &g_msg, &g_detail), PROTO_BAD_JSON);
	ck_assert_int_eq(proto_parse(s, sizeof(s) - 1, &g_msg, &g_detail), PROTO_OK);
}
END_TEST

/* Returns a malloc'd ping message whose extra field makes `depth` containers nested in total (the
 * root object counts as one), arrays or objects, the innermost one empty: json-c also counts a
 * scalar leaf as a level, so an empty innermost container measures container depth exactly. */
static char *nested(int depth, bool objects)
{
	size_t cap = 64 + (size_t)depth * 8;
	char *s = malloc(cap);
	size_t n;

	ck_assert_ptr_nonnull(s);
	n = (size_t)snprintf(s, cap, "{\"type\":\"ping\",\"x\":");
	for (int i = 2; i < depth; i++)
		n += (size_t)snprintf(s + n, cap - n, "%s", objects ? "{\"k\":" : "[");
	n += (size_t)snprintf(s + n, cap - n, "%s", objects ? "{}" : "[]");
	for (int i = 2; i < depth; i++)
		n += (size_t)snprintf(s + n, cap - n, "%s", objects ? "}" : "]");
	snprintf(s + n, cap - n, "}");
	return s;
}

START_TEST(test_depth_limit)
{
	for (int objects = 0; objects <= 1; objects++) {
		char *ok = nested(PROTO_MAX_DEPTH, objects);
		char *deep = nested(PROTO_MAX_DEPTH + 1, objects);
		char *deeper = nested(PROTO_MAX_DEPTH * 8, objects);

		expect_ok(ok, PROTO_PING);
		expect_error(deep, PROTO_BAD_JSON);
		expect_error(deeper, PROTO_BAD_JSON);
		free(ok);
		free(deep);
		free(deeper);
	}
}
END_TEST

START_TEST(test_root_not_object)
{
	expect_error("[{\"type\":\"ping\"}]", PROTO_BAD_JSON);
	expect_error("\"ping\"", PROTO_BAD_JSON);
	expect_error("42", PROTO_BAD_JSON);
	expect_error("null", PROTO_BAD_JSON);
	expect_error("true", PROTO_BAD_JSON);
}
END_TEST

START_TEST(test_payload_not_object)
{
	expect_error("{\"type\":\"join\",\"payload\":[\"r\"]}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"join\",\"payload\":\"r\"}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"join\",\"payload\":7}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"ping\",\"payload\":true}", PROTO_BAD_JSON);
}
END_TEST

START_TEST(test_type_missing_or_unknown)
{
	expect_error("{}", PROTO_BAD_TYPE);
	expect_error("{\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
	expect_error("{\"type\":null,\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
	expect_error("{\"type\":1,\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
	expect_error("{\"type\":[\"join\"],\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
	expect_error("{\"type\":\"dance\",\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
	expect_error("{\"type\":\"JOIN\",\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
	expect_error("{\"type\":\"\",\"payload\":{\"room\":\"r\"}}", PROTO_BAD_TYPE);
}
END_TEST

/* ---- parser: join / leave ---- */

START_TEST(test_join_payload_room)
{
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"order-7\"}}", PROTO_JOIN);
	ck_assert_str_eq(g_msg.room, "order-7");
	ck_assert(!g_msg.has_since);
	ck_assert_ptr_null(g_msg.body);
}
END_TEST

START_TEST(test_join_go_shape)
{
	expect_ok("{\"type\":\"subscribe\",\"data\":{\"channel\":\"r\"}}", PROTO_JOIN);
	ck_assert_str_eq(g_msg.room, "r");
	expect_ok("{\"type\":\"subscribe\",\"payload\":{\"room\":\"seller-12\"}}", PROTO_JOIN);
	ck_assert_str_eq(g_msg.room, "seller-12");
	expect_ok("{\"type\":\"join\",\"data\":{\"channel\":\"chat:9\"}}", PROTO_JOIN);
	ck_assert_str_eq(g_msg.room, "chat:9");
}
END_TEST

START_TEST(test_history_and_presence)
{
	json_object *o, *p;

	expect_ok("{\"type\":\"history\",\"payload\":{\"room\":\"order-7\"}}", PROTO_HISTORY);
	ck_assert_str_eq(g_msg.room, "order-7");
	ck_assert_int_eq(g_msg.limit, PROTO_HISTORY_DEFAULT);
	ck_assert_int_eq(g_msg.since, 0);
	expect_ok("{\"type\":\"history\",\"payload\":{\"room\":\"r\",\"since\":\"42\","
	          "\"limit\":5}}",
	          PROTO_HISTORY);
	ck_assert_int_eq(g_msg.since, 42);
	ck_assert_int_eq(g_msg.limit, 5);
	expect_ok("{\"type\":\"history\",\"payload\":{\"room\":\"r\",\"limit\":99999}}",
	          PROTO_HISTORY);
	ck_assert_int_eq(g_msg.limit, PROTO_HISTORY_MAX);
	expect_error("{\"type\":\"history\",\"payload\":{\"room\":\"r\",\"limit\":0}}",
	             PROTO_BAD_JSON);
	expect_error("{\"type\":\"history\",\"payload\":{\"room\":\"r\",\"limit\":\"5\"}}",
	             PROTO_BAD_JSON);
	expect_error("{\"type\":\"history\",\"payload\":{\"room\":\"r\",\"since\":-1}}",
	             PROTO_BAD_JSON);
	expect_error("{\"type\":\"history\",\"payload\":{}}", PROTO_BAD_ROOM);
	expect_ok("{\"type\":\"presence\",\"payload\":{\"room\":\"chat-9\"}}", PROTO_PRESENCE);
	ck_assert_str_eq(g_msg.room, "chat-9");
	expect_error("{\"type\":\"presence\",\"payload\":{\"room\":\"a b\"}}", PROTO_BAD_ROOM);
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"presence\":true}}", PROTO_JOIN);
	ck_assert(g_msg.presence);
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"presence\":\"yes\"}}",
	          PROTO_JOIN);
	ck_assert(!g_msg.presence);
	/* The reply splices the events as they are. */
	{
		struct frame *ev = frame_new("{\"id\":1}", 8);
		o = parse_frame(proto_history("r", &ev, 1, true, false));
		p = reply_payload(o, "history");
		expect_str(p, "room", "r");
		expect_bool(p, "recovered", true);
		expect_bool(p, "more", false);
		ck_assert_int_eq(json_object_array_length(field(p, "events")), 1);
		expect_int(json_object_array_get_idx(field(p, "events"), 0), "id", 1);
		json_object_put(o);
		frame_unref(ev);
	}
}
END_TEST

START_TEST(test_leave_and_alias)
{
	expect_ok("{\"type\":\"leave\",\"payload\":{\"room\":\"order-7\"}}", PROTO_LEAVE);
	ck_assert_str_eq(g_msg.room, "order-7");
	expect_ok("{\"type\":\"unsubscribe\",\"data\":{\"channel\":\"a.b\"}}", PROTO_LEAVE);
	ck_assert_str_eq(g_msg.room, "a.b");
	expect_ok("{\"type\":\"unsubscribe\",\"payload\":{\"room\":\"x_y\"}}", PROTO_LEAVE);
	ck_assert_str_eq(g_msg.room, "x_y");
	expect_error("{\"type\":\"leave\",\"payload\":{}}", PROTO_BAD_ROOM);
}
END_TEST

START_TEST(test_room_bad)
{
	char msg[512], name[ROOM_NAME_MAX + 2];

	expect_error("{\"type\":\"join\",\"payload\":{\"room\":7}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{\"room\":null}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{\"room\":[\"r\"]}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\"}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{\"room\":\"\"}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{\"room\":\"a b\"}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{\"room\":\"a/b\"}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"join\",\"payload\":{\"room\":\"a\\u0000b\"}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"subscribe\",\"data\":{\"channel\":5}}", PROTO_BAD_ROOM);

	/* 128 bytes is the longest name and is copied whole; 129 is refused. */
	memset(name, 'r', ROOM_NAME_MAX);
	name[ROOM_NAME_MAX] = '\0';
	snprintf(msg, sizeof(msg), "{\"type\":\"join\",\"payload\":{\"room\":\"%s\"}}", name);
	expect_ok(msg, PROTO_JOIN);
	ck_assert_str_eq(g_msg.room, name);
	name[ROOM_NAME_MAX] = 'r';
	name[ROOM_NAME_MAX + 1] = '\0';
	snprintf(msg, sizeof(msg), "{\"type\":\"join\",\"payload\":{\"room\":\"%s\"}}", name);
	expect_error(msg, PROTO_BAD_ROOM);
}
END_TEST

START_TEST(test_since_accepted)
{
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"since\":42}}", PROTO_JOIN);
	ck_assert(g_msg.has_since);
	ck_assert_int_eq(g_msg.since, 42);
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"since\":\"1234567890123\"}}",
	          PROTO_JOIN);
	ck_assert(g_msg.has_since);
	ck_assert_int_eq(g_msg.since, 1234567890123LL);
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"since\":0}}", PROTO_JOIN);
	ck_assert(g_msg.has_since);
	ck_assert_int_eq(g_msg.since, 0);
	expect_ok("{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"since\":null}}", PROTO_JOIN);
	ck_assert(!g_msg.has_since);
	expect_ok("{\"type\":\"subscribe\",\"data\":{\"channel\":\"r\",\"since\":\"9\"}}",
	          PROTO_JOIN);
	ck_assert(g_msg.has_since);
	ck_assert_int_eq(g_msg.since, 9);
}
END_TEST

START_TEST(test_since_rejected)
{
	static const char *const bad[] = {
	    "1.5",  "1.0",     "-1",   "\"-1\"", "\"abc\"", "\"12abc\"",
	    "\"\"", "\"1.5\"", "true", "[1]",    "{}",
	};
	char msg[128];

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(msg, sizeof(msg),
		         "{\"type\":\"join\",\"payload\":{\"room\":\"r\",\"since\":%s}}", bad[i]);
		expect_error(msg, PROTO_BAD_JSON);
	}
}
END_TEST

/* ---- parser: broadcast ---- */

/* Asserts msg parses as a broadcast to room r whose compact body is want. */
static void expect_body(const char *msg, const char *want)
{
	expect_ok(msg, PROTO_BROADCAST);
	ck_assert_str_eq(g_msg.room, "r");
	ck_assert_ptr_nonnull(g_msg.body);
	ck_assert_str_eq(g_msg.body, want);
	ck_assert_uint_eq(g_msg.body_len, strlen(want));
}

START_TEST(test_broadcast_body_types)
{
	expect_body(
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":{ \"a\" : [ 1, 2 ] ,"
	    " \"b\" : { \"c\" : null } }}}",
	    "{\"a\":[1,2],\"b\":{\"c\":null}}");
	expect_body(
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":\"hi \\\"you\\\"\"}}",
	    "\"hi \\\"you\\\"\"");
	expect_body("{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":42}}", "42");
	expect_body("{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":true}}", "true");
	expect_body("{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":[ ]}}", "[]");
	expect_body("{\"type\":\"broadcast\",\"payload\":{\"body\":{},\"room\":\"r\"}}", "{}");
	expect_body("{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":null}}", "null");
}
END_TEST

START_TEST(test_broadcast_go_shape)
{
	expect_body("{\"type\":\"broadcast\",\"data\":{\"channel\":\"r\",\"message\":{\"x\": 1}}}",
	            "{\"x\":1}");
	expect_body("{\"type\":\"broadcast\",\"data\":{\"channel\":\"r\",\"message\":null}}",
	            "null");
}
END_TEST

START_TEST(test_broadcast_errors)
{
	expect_error("{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\"}}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"broadcast\",\"data\":{\"channel\":\"r\"}}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"broadcast\",\"payload\":{\"body\":{}}}", PROTO_BAD_ROOM);
	expect_error("{\"type\":\"broadcast\",\"payload\":{\"room\":1,\"body\":{}}}",
	             PROTO_BAD_ROOM);
}
END_TEST

/* ---- parser: auth ---- */

START_TEST(test_auth_token)
{
	expect_ok("{\"type\":\"auth\",\"payload\":{\"token\":\"aaa.bbb.ccc\"}}", PROTO_AUTH);
	ck_assert_ptr_nonnull(g_msg.token);
	ck_assert_str_eq(g_msg.token, "aaa.bbb.ccc");
	ck_assert_ptr_null(g_msg.body);
	expect_ok("{\"type\":\"auth\",\"data\":{\"token\":\"x.y.z\"}}", PROTO_AUTH);
	ck_assert_str_eq(g_msg.token, "x.y.z");
}
END_TEST

START_TEST(test_auth_errors)
{
	expect_error("{\"type\":\"auth\",\"payload\":{}}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"auth\"}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"auth\",\"payload\":{\"token\":\"\"}}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"auth\",\"payload\":{\"token\":123}}", PROTO_BAD_JSON);
	expect_error("{\"type\":\"auth\",\"payload\":{\"token\":null}}", PROTO_BAD_JSON);
}
END_TEST

START_TEST(test_msg_clear)
{
	expect_ok("{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":[1]}}",
	          PROTO_BROADCAST);
	proto_msg_clear(&g_msg);
	ck_assert_ptr_null(g_msg.body);
	ck_assert_uint_eq(g_msg.body_len, 0);
	ck_assert_str_eq(g_msg.room, "");
}
END_TEST

/* ---- reply builders ---- */

START_TEST(test_code_names)
{
	static const char *const want[] = {
	    "ok",         "bad_json",     "bad_type",  "bad_room",        "forbidden",
	    "not_member", "rate_limited", "too_large", "unauthenticated", "server_error",
	};

	for (int c = PROTO_OK; c <= PROTO_SERVER_ERROR; c++)
		ck_assert_str_eq(proto_code_name((enum proto_code)c), want[c]);
}
END_TEST

START_TEST(test_joined)
{
	json_object *o = parse_frame(proto_joined("order-7", false, 0, false, -1));
	json_object *p = reply_payload(o, "joined");

	expect_keys(p, "room", NULL);
	expect_str(p, "room", "order-7");
	json_object_put(o);

	o = parse_frame(proto_joined("order-7", true, 3, true, 1234));
	p = reply_payload(o, "joined");
	expect_keys(p, "room", "recovered", "replayed", "position", NULL);
	expect_str(p, "room", "order-7");
	expect_bool(p, "recovered", true);
	expect_int(p, "replayed", 3);
	expect_int(p, "position", 1234);
	json_object_put(o);

	o = parse_frame(proto_joined("r", false, 0, true, -1));
	p = reply_payload(o, "joined");
	expect_keys(p, "room", "recovered", "replayed", NULL);
	expect_bool(p, "recovered", false);
	expect_int(p, "replayed", 0);
	json_object_put(o);

	o = parse_frame(proto_joined("r", false, 0, false, 0));
	p = reply_payload(o, "joined");
	expect_keys(p, "room", "position", NULL);
	expect_int(p, "position", 0);
	json_object_put(o);
}
END_TEST

START_TEST(test_left)
{
	json_object *o = parse_frame(proto_left("chat-9"));
	json_object *p = reply_payload(o, "left");

	expect_keys(p, "room", NULL);
	expect_str(p, "room", "chat-9");
	json_object_put(o);
}
END_TEST

START_TEST(test_error_reply)
{
	json_object *o = parse_frame(proto_error(PROTO_FORBIDDEN, "not authorized", "order-7"));
	json_object *p = reply_payload(o, "error");

	expect_keys(p, "error", "code", "room", NULL);
	expect_str(p, "error", "not authorized");
	expect_str(p, "code", "forbidden");
	expect_str(p, "room", "order-7");
	json_object_put(o);

	o = parse_frame(proto_error(PROTO_RATE_LIMITED, "slow down", NULL));
	p = reply_payload(o, "error");
	expect_keys(p, "error", "code", NULL);
	expect_str(p, "error", "slow down");
	expect_str(p, "code", "rate_limited");
	json_object_put(o);

	/* The message is escaped like any other string. */
	o = parse_frame(proto_error(PROTO_BAD_JSON, "bad \"x\"\n\\", NULL));
	p = reply_payload(o, "error");
	expect_str(p, "error", "bad \"x\"\n\\");
	expect_str(p, "code", "bad_json");
	json_object_put(o);
}
END_TEST

START_TEST(test_pong)
{
	json_object *o = parse_frame(proto_pong());

	expect_keys(o, "type", NULL);
	expect_str(o, "type", "pong");
	json_object_put(o);
}
END_TEST

START_TEST(test_token_expiring_and_authenticated)
{
	json_object *o = parse_frame(proto_token_expiring(30));
	json_object *p = reply_payload(o, "token_expiring");

	expect_keys(p, "in_s", NULL);
	expect_int(p, "in_s", 30);
	json_object_put(o);

	o = parse_frame(proto_authenticated(4102444800123LL));
	p = reply_payload(o, "authenticated");
	expect_keys(p, "exp", NULL);
	expect_int(p, "exp", 4102444800123LL);
	json_object_put(o);
}
END_TEST

START_TEST(test_broadcast_envelope)
{
	static const char body[] = "{\"text\":\"hi\",\"n\":[1,2]}";
	json_object *o = parse_frame(proto_broadcast_envelope(
	    "n1-42", "conn-7", "user-1", "chat-9", "2026-11-22T10:00:00.123Z", body, strlen(body)));
	json_object *b;

	/* Room messages never carry "type". */
	expect_keys(o, "id", "from", "user", "room", "ts", "body", NULL);
	expect_str(o, "id", "n1-42");
	expect_str(o, "from", "conn-7");
	expect_str(o, "user", "user-1");
	expect_str(o, "room", "chat-9");
	expect_str(o, "ts", "2026-11-22T10:00:00.123Z");
	b = field(o, "body");
	expect_keys(b, "text", "n", NULL);
	expect_str(b, "text", "hi");
	ck_assert_int_eq(json_object_array_length(field(b, "n")), 2);
	json_object_put(o);

	/* body_len bounds the splice: only "null" of "null,garbage" is used. */
	o = parse_frame(proto_broadcast_envelope("n1-43", "c", "u", "r", "t", "null,garbage", 4));
	ck_assert(json_object_is_type(field(o, "body"), json_type_null));
	json_object_put(o);
}
END_TEST

START_TEST(test_event_envelope)
{
	json_object *o = parse_frame(proto_event_envelope(
	    "123", "order_updated", "order-7", "2026-11-22T10:00:00.123Z", "{\"status\":\"paid\"}",
	    "{\"source\":\"db\",\"table\":\"order\",\"op\":\"UPDATE\",\"changed\":[\"status\"]}"));
	json_object *d, *m;

	expect_keys(o, "id", "event", "to", "room", "ts", "data", "meta", NULL);
	expect_int(o, "id", 123);
	expect_str(o, "event", "order_updated");
	expect_str(o, "to", "order-7");
	expect_str(o, "room", "order-7");
	expect_str(o, "ts", "2026-11-22T10:00:00.123Z");
	d = field(o, "data");
	expect_keys(d, "status", NULL);
	expect_str(d, "status", "paid");
	m = field(o, "meta");
	expect_keys(m, "source", "table", "op", "changed", NULL);
	expect_str(m, "op", "UPDATE");
	json_object_put(o);

	/* Ephemeral id is a string; missing data is null and missing meta is {}. */
	o = parse_frame(proto_event_envelope("\"n1-9\"", "ping", "admins", "t", NULL, NULL));
	expect_keys(o, "id", "event", "to", "room", "ts", "data", "meta", NULL);
	expect_str(o, "id", "n1-9");
	expect_str(o, "to", "admins");
	expect_str(o, "room", "admins");
	ck_assert(json_object_is_type(field(o, "data"), json_type_null));
	m = field(o, "meta");
	ck_assert(json_object_is_type(m, json_type_object));
	ck_assert_int_eq(json_object_object_length(m), 0);
	json_object_put(o);

	/* Non-object data (an array) is spliced as is. */
	o = parse_frame(proto_event_envelope("5", "e", "r", "t", "[1,\"two\"]", "{}"));
	d = field(o, "data");
	ck_assert(json_object_is_type(d, json_type_array));
	ck_assert_int_eq(json_object_array_length(d), 2);
	json_object_put(o);
}
END_TEST

START_TEST(test_escaping)
{
	static const char nasty[] = "a\"b\\c\nd\te\x01f\x1fg/h";
	json_object *o, *p;

	o = parse_frame(proto_joined(nasty, true, 1, true, -1));
	p = reply_payload(o, "joined");
	expect_str(p, "room", nasty);
	json_object_put(o);

	o = parse_frame(proto_left(nasty));
	expect_str(reply_payload(o, "left"), "room", nasty);
	json_object_put(o);

	o = parse_frame(proto_error(PROTO_NOT_MEMBER, nasty, nasty));
	p = reply_payload(o, "error");
	expect_str(p, "error", nasty);
	expect_str(p, "room", nasty);
	json_object_put(o);

	o = parse_frame(proto_broadcast_envelope(nasty, nasty, nasty, nasty, nasty, "1", 1));
	expect_str(o, "id", nasty);
	expect_str(o, "from", nasty);
	expect_str(o, "user", nasty);
	expect_str(o, "room", nasty);
	expect_str(o, "ts", nasty);
	json_object_put(o);

	o = parse_frame(proto_event_envelope("1", nasty, nasty, nasty, NULL, NULL));
	expect_str(o, "event", nasty);
	expect_str(o, "to", nasty);
	expect_str(o, "room", nasty);
	expect_str(o, "ts", nasty);
	json_object_put(o);

	/* UTF-8 passes through unchanged. */
	o = parse_frame(proto_left("caf\xc3\xa9"));
	expect_str(reply_payload(o, "left"), "room", "caf\xc3\xa9");
	json_object_put(o);
}
END_TEST

static Suite *proto_suite(void)
{
	Suite *s = suite_create("proto");
	TCase *p = tcase_create("parse");
	TCase *r = tcase_create("replies");

	tcase_add_checked_fixture(p, NULL, teardown);
	tcase_add_test(p, test_ping);
	tcase_add_test(p, test_trailing_whitespace_accepted);
	tcase_add_test(p, test_trailing_bytes_rejected);
	tcase_add_test(p, test_bad_json);
	tcase_add_test(p, test_exact_length);
	tcase_add_test(p, test_depth_limit);
	tcase_add_test(p, test_root_not_object);
	tcase_add_test(p, test_payload_not_object);
	tcase_add_test(p, test_type_missing_or_unknown);
	tcase_add_test(p, test_join_payload_room);
	tcase_add_test(p, test_join_go_shape);
	tcase_add_test(p, test_history_and_presence);
	tcase_add_test(p, test_leave_and_alias);
	tcase_add_test(p, test_room_bad);
	tcase_add_test(p, test_since_accepted);
	tcase_add_test(p, test_since_rejected);
	tcase_add_test(p, test_broadcast_body_types);
	tcase_add_test(p, test_broadcast_go_shape);
	tcase_add_test(p, test_broadcast_errors);
	tcase_add_test(p, test_auth_token);
	tcase_add_test(p, test_auth_errors);
	tcase_add_test(p, test_msg_clear);
	suite_add_tcase(s, p);

	tcase_add_test(r, test_code_names);
	tcase_add_test(r, test_joined);
	tcase_add_test(r, test_left);
	tcase_add_test(r, test_error_reply);
	tcase_add_test(r, test_pong);
	tcase_add_test(r, test_token_expiring_and_authenticated);
	tcase_add_test(r, test_broadcast_envelope);
	tcase_add_test(r, test_event_envelope);
	tcase_add_test(r, test_escaping);
	suite_add_tcase(s, r);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(proto_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
