/* Regression tests for what the libFuzzer harnesses of tests/fuzz found, one test per finding,
 * each with the fuzzer's input (also a regress-* seed in tests/fuzz/corpus/) and its variants. */
#include "auth.h"
#include "config.h"
#include "http.h"
#include "log.h"
#include "proto.h"
#include "room.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOTIFY_TOKEN "regress-notify-token"

static struct config g_cfg;
static struct auth *g_auth;

static void setup(void)
{
	static const char secret[] = "regress-secret-0123456789abcdef0123";
	struct auth_config ac = {.secret = (const unsigned char *)secret,
	                         .secret_len = sizeof(secret) - 1,
	                         .algorithms = AUTH_ALG_HS256,
	                         .leeway_s = 30};
	char err[128];

	memset(&g_cfg, 0, sizeof(g_cfg));
	/* The fields the notify path reads; no PostgreSQL, in-process bus. */
	g_cfg.node_id = "regress";
	g_cfg.notify_token = NOTIFY_TOKEN;
	g_cfg.notify_max_bytes = 65536;
	g_auth = auth_new(&ac, err, sizeof(err));
	ck_assert_msg(g_auth != NULL, "auth_new: %s", err);
	log_init(LOG_ERROR, LOG_FORMAT_TEXT, "regress");
	http_setup(&g_cfg, g_auth, "test");
}

static void teardown(void)
{
	auth_free(g_auth);
	room_reset();
}

/* POSTs body[0..len) to /api/notify with the notify token; returns the status. */
static int notify(const char *body, size_t len)
{
	struct http_request req = {
	    .method = "POST",
	    .path = "/api/notify",
	    .query = "",
	    .authorization = "Bearer " NOTIFY_TOKEN,
	    .content_type = "application/json",
	    .content_length = (long)len,
	    .body = body,
	    .body_len = len,
	};
	struct http_response resp = {0};
	int status;

	http_handle(&req, &resp);
	status = resp.status;
	ck_assert_ptr_nonnull(resp.body.data);
	if (status != 200)
		ck_assert_msg(strstr(resp.body.data, "\"error\":") != NULL, "no error in %s",
		              resp.body.data);
	http_response_free(&resp);
	return status;
}

static int notify_str(const char *body)
{
	return notify(body, strlen(body));
}

/* fuzz_notify: NUL bytes after the JSON were taken for whitespace (strchr(" \t\r\n", c) also
 * finds the terminator), so a body with trailing bytes was accepted instead of 400. */
START_TEST(test_notify_trailing_nul)
{
	/* The input the fuzzer saved (crash-a41576c05b9c71a9cf32141e4e9a794d0685973e). */
	static const char found[] = "{\"event\":\"messafalse\n\n\n\n\nge\",\"user_id\":\"abc\"}"
	                            "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";
	static const char one[] = "{\"event\":\"x\",\"room\":\"r\"}\0";

	ck_assert_int_eq(notify(found, sizeof(found) - 1), 400);
	ck_assert_int_eq(notify(one, sizeof(one) - 1), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"room\":\"r\"} \r\n\t"), 200);
}
END_TEST

/* fuzz_notify: bytes that are not UTF-8 were relayed into text frames, which browsers answer by
 * failing the connection (1007), for every member of the room at once. json-c's own check lets
 * overlong forms, surrogates and code points past U+10FFFF through, so all are tested. */
START_TEST(test_notify_invalid_utf8)
{
	static const char *const bad[] = {
	    "{\"event\":\"\xff\xfe\",\"room\":\"r\"}",                        /* not UTF-8 at all */
	    "{\"event\":\"\xc0\x80\",\"room\":\"r\"}",                        /* overlong NUL */
	    "{\"event\":\"x\",\"room\":\"r\",\"data\":\"\xed\xa0\x80\"}",     /* surrogate D800 */
	    "{\"event\":\"x\",\"room\":\"r\",\"data\":\"\xf4\x90\x80\x80\"}", /* past U+10FFFF */
	    "{\"event\":\"x\",\"room\":\"r\",\"data\":\"\xe2\x82\"}",         /* cut short */
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(notify_str(bad[i]) == 400, "accepted bad UTF-8 #%zu", i);
	/* Real UTF-8 and escapes (a lone surrogate escape becomes U+FFFD) still pass. */
	ck_assert_int_eq(notify_str("{\"event\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\",\"room\":\"r\","
	                            "\"data\":\"\\ud800\xf4\x8f\xbf\xbf\"}"),
	                 200);
}
END_TEST

/* fuzz_notify: a room or user_id too long for the 128-byte name was cut by snprintf and the
 * message published to the shortened room instead of refused. */
START_TEST(test_notify_long_room)
{
	char body[512], name[200];

	memset(name, 'r', 129);
	name[129] = '\0';
	snprintf(body, sizeof(body), "{\"event\":\"x\",\"room\":\"%s\"}", name);
	ck_assert_int_eq(notify_str(body), 400);
	name[128] = '\0';
	snprintf(body, sizeof(body), "{\"event\":\"x\",\"room\":\"%s\"}", name);
	ck_assert_int_eq(notify_str(body), 200);

	/* "user-" + 124 bytes is one too many. */
	memset(name, 'u', 124);
	name[124] = '\0';
	snprintf(body, sizeof(body), "{\"event\":\"x\",\"user_id\":\"%s\"}", name);
	ck_assert_int_eq(notify_str(body), 400);
	name[123] = '\0';
	snprintf(body, sizeof(body), "{\"event\":\"x\",\"user_id\":\"%s\"}", name);
	ck_assert_int_eq(notify_str(body), 200);
}
END_TEST

/* fuzz_notify: a \u0000 in the room (or user_id, or event) cut the C string, so
 * "order-7\u0000junk" was delivered to order-7 and the event name was published shortened. */
START_TEST(test_notify_nul_in_names)
{
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"room\":\"order-7\\u0000junk\"}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"user_id\":\"7\\u0000x\"}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"order\\u0000_updated\",\"room\":\"order-7\"}"),
	                 400);
	ck_assert_int_eq(notify_str("{\"event\":\"order_updated\",\"room\":\"order-7\","
	                            "\"data\":\"a\\u0000b\"}"),
	                 200);
}
END_TEST

/* fuzz_proto: an auth token with a \u0000 was cut there by strdup, so
 * {"type":"auth","payload":{"token":"\u0000..."}} parsed as PROTO_OK with an empty token (which
 * the parser otherwise refuses) and "<jwt>\u0000junk" as the bare JWT. */
/* fuzz_notify's differential check of src/jscan.c against json-c (on its jscan_depth17 seed):
 * json_tokener_new_ex(16) lets a value sit 16 deep counting the document as 1, so 16 nested
 * empty arrays pass and 16 objects around a number do not; jscan first counted containers only.
 * With it the bodies json-c's strict mode took but RFC 8259 does not are refused. */
START_TEST(test_notify_jscan_edges)
{
	char b[512];
	int n;

	/* The body is the document (depth 1), data's value depth 2. */
	n = snprintf(b, sizeof(b), "{\"event\":\"x\",\"room\":\"r\",\"data\":%.*s%.*s}", 15,
	             "[[[[[[[[[[[[[[[[", 15, "]]]]]]]]]]]]]]]]");
	ck_assert_int_eq(notify(b, (size_t)n), 200);
	n = snprintf(b, sizeof(b), "{\"event\":\"x\",\"room\":\"r\",\"data\":%.*s%.*s}", 16,
	             "[[[[[[[[[[[[[[[[", 16, "]]]]]]]]]]]]]]]]");
	ck_assert_int_eq(notify(b, (size_t)n), 400);
	n = snprintf(b, sizeof(b), "{\"event\":\"x\",\"room\":\"r\",\"data\":%.*s1%.*s}", 14,
	             "[[[[[[[[[[[[[[[[", 14, "]]]]]]]]]]]]]]]]");
	ck_assert_int_eq(notify(b, (size_t)n), 200);
	n = snprintf(b, sizeof(b), "{\"event\":\"x\",\"room\":\"r\",\"data\":%.*s1%.*s}", 15,
	             "[[[[[[[[[[[[[[[[", 15, "]]]]]]]]]]]]]]]]");
	ck_assert_int_eq(notify(b, (size_t)n), 400);
	/* json-c's strict mode took these. */
	ck_assert_int_eq(notify_str("{'event':\"x\",'room':\"r\"}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"a\tb\",\"room\":\"r\"}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"user_id\":-01}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"user_id\":00}"), 400);
	/* json-c's key and integer rules are kept. */
	ck_assert_int_eq(notify_str("{\"event\\u0000x\":\"e\",\"room\":\"r\"}"), 200);
	ck_assert_int_eq(notify_str("{\"event\":\"e\",\"user_id\":-0}"), 200);
	ck_assert_int_eq(notify_str("{\"event\":\"e\",\"user_id\":-99999999999999999999}"), 200);
	ck_assert_int_eq(notify_str("{\"event\":\"e\",\"room\":\"a b\",\"room\":\"r\"}"), 200);
	ck_assert_int_eq(notify_str("{\"event\":\"e\",\"room\":\"r\",\"room\":\"a b\"}"), 400);
	ck_assert_int_eq(
	    notify_str("{\"event\":\"\\ud800\",\"room\":\"r\",\"data\":[\"\\udc00\"]}"), 200);
}
END_TEST

START_TEST(test_proto_nul_in_token)
{
	/* The input the fuzzer saved (crash-8ade28317d5054b2b998ae4db1ca773454524a77). */
	static const char *const bad[] = {
	    "{\"type\":\"auth\",\"payload\":{\"token\":\"\\u0000E\\u0EEeyl\"}}",
	    "{\"type\":\"auth\",\"payload\":{\"token\":\"a.b.c\\u0000junk\"}}",
	    "{\"type\":\"auth\",\"data\":{\"token\":\"a.b\\u0000.c\"}}",
	};
	static const char good[] = "{\"type\":\"auth\",\"payload\":{\"token\":\"a.b.c\"}}";
	struct proto_msg m;
	const char *detail;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(proto_parse(bad[i], strlen(bad[i]), &m, &detail), PROTO_BAD_JSON);
		ck_assert_ptr_null(m.token);
		ck_assert_str_eq(detail, "invalid token");
	}
	ck_assert_int_eq(proto_parse(good, strlen(good), &m, &detail), PROTO_OK);
	ck_assert_str_eq(m.token, "a.b.c");
	proto_msg_clear(&m);
}
END_TEST

/* fuzz_notify: json-c takes NaN, Infinity and -Infinity even in strict mode (and numbers like
 * 00.5) and writes them back verbatim, so they were relayed in room messages that no client's
 * JSON.parse accepts. */
START_TEST(test_notify_nonstandard_json)
{
	/* The input the fuzzer saved. */
	ck_assert_int_eq(notify_str("{\"event\":\"ud\",\"room\":\"0d5516.6er-b7\","
	                            "\"data\":{\"us\":NaN}}"),
	                 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"room\":\"r\",\"data\":[1,Infinity]}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"room\":\"r\",\"data\":-Infinity}"), 400);
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"room\":\"r\",\"data\":{\"n\":00.5}}"), 400);
	/* Numbers, even out of double range, are JSON and pass. */
	ck_assert_int_eq(notify_str("{\"event\":\"x\",\"room\":\"r\",\"data\":[-0.5,1e400,-1E-3]}"),
	                 200);
}
END_TEST

/* fuzz_proto, the same on the client door (a broadcast body is spliced into every member's
 * frame): json-c also takes numbers like 00.0, 1. or -.5 and keeps their text. */
START_TEST(test_proto_nonstandard_json)
{
	static const char *const bad[] = {
	    /* The input the fuzzer saved (a seed with 00.0 spliced in). */
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"chat-9\",\"body\":{\"text\":\"hi "
	    "\xc3\xa9 \\\"q\\\" \\\\ \\n\\t/\",\"n\":[1,2.5,00.0,1e+300,true,null]}}}",
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":[1.]}}",
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":[-.5]}}",
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":[1.e5,00e1]}}",
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":NaN}}",
	    "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\",\"body\":{\"a\":[-Infinity]}}}",
	    "{\"type\":\"ping\",\"x\":Infinity}",
	};
	static const char good[] = "{\"type\":\"broadcast\",\"payload\":{\"room\":\"r\","
	                           "\"body\":[1e400,-0.0,0,0.5e-3,-10E+2]}}";
	struct proto_msg m;
	const char *detail;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ck_assert_int_eq(proto_parse(bad[i], strlen(bad[i]), &m, &detail), PROTO_BAD_JSON);
		ck_assert_ptr_null(m.body);
	}
	ck_assert_int_eq(proto_parse(good, strlen(good), &m, &detail), PROTO_OK);
	ck_assert_str_eq(m.body, "[1e400,-0.0,0,0.5e-3,-10E+2]");
	proto_msg_clear(&m);
}
END_TEST

static Suite *regress_suite(void)
{
	Suite *s = suite_create("regress_fuzz");
	TCase *n = tcase_create("notify");
	TCase *p = tcase_create("proto");

	tcase_add_checked_fixture(n, setup, teardown);
	tcase_add_test(n, test_notify_trailing_nul);
	tcase_add_test(n, test_notify_invalid_utf8);
	tcase_add_test(n, test_notify_long_room);
	tcase_add_test(n, test_notify_nul_in_names);
	tcase_add_test(n, test_notify_nonstandard_json);
	tcase_add_test(n, test_notify_jscan_edges);
	suite_add_tcase(s, n);

	tcase_add_test(p, test_proto_nul_in_token);
	tcase_add_test(p, test_proto_nonstandard_json);
	suite_add_tcase(s, p);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(regress_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
