/* Unit tests for src/jscan.c: strict RFC 8259 validation (what json-c's strict mode let through
 * included), the nesting limit at its boundary, members with duplicate and escaped keys, string
 * unescaping with surrogates and caps, compaction, and integers as json-c prints them. */
#include "jscan.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static enum jscan_result parse(const char *s, struct jscan_val *top)
{
	return jscan_parse(s, strlen(s), 16, top);
}

/* '[' x n then ']' x n (n <= 64). */
static const char *nested(int n, char *out)
{
	memset(out, '[', (size_t)n);
	memset(out + n, ']', (size_t)n);
	out[2 * n] = '\0';
	return out;
}

START_TEST(test_valid)
{
	static const char *const ok[] = {
	    "{}",
	    "[]",
	    " {\"a\" : [1, -0, 0.5, 1e5, 1E+5, -1.25e-3, true, false, null]}\r\n\t",
	    "\"\"",
	    "0",
	    "-0",
	    "123",
	    "true",
	    "null",
	    "\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\ude00\"",
	    "\"caf\xc3\xa9\x7f\"",
	    "{\"a\":{\"b\":{}},\"c\":[[],{}]}",
	    "[\"\\ud800\"]",
	};
	struct jscan_val top;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
		ck_assert_msg(parse(ok[i], &top) == JSCAN_OK, "refused %s", ok[i]);
	ck_assert_int_eq(parse(" {\"a\":1} ", &top), JSCAN_OK);
	ck_assert_int_eq(top.type, JSCAN_OBJECT);
	ck_assert_uint_eq(top.len, 7);
	ck_assert_int_eq(parse("-12.5e3", &top), JSCAN_OK);
	ck_assert_int_eq(top.type, JSCAN_NUMBER);
	ck_assert_uint_eq(top.len, 7);
}
END_TEST

START_TEST(test_invalid)
{
	/* json-c 0.16's strict mode accepted the ones marked *: single-quoted keys, raw control
	 * bytes, 00 and -01, NaN, Infinity and 1. (the last three http.c refused after parsing). */
	static const char *const bad[] = {
	    "",
	    " ",
	    "{",
	    "}",
	    "[1,]",
	    "{\"a\":1,}",
	    "{a:1}",
	    "{'a':1}" /* * */,
	    "['a']",
	    "[1 2]",
	    "{\"a\" 1}",
	    "{\"a\":}",
	    "{,}",
	    "[,1]",
	    "01",
	    "00" /* * */,
	    "-01" /* * */,
	    "-",
	    "+1",
	    "1.",
	    ".5",
	    "1e",
	    "1e+",
	    "0x10",
	    "NaN",
	    "Infinity",
	    "-Infinity",
	    "nan",
	    "True",
	    "tru",
	    "nul",
	    "\"abc",
	    "\"\\x\"",
	    "\"\\U0041\"",
	    "\"\\u12\"",
	    "\"\\u12g4\"",
	    "\"\\\"",
	    "\"a\tb\"" /* * */,
	    "\"\x01\"" /* * */,
	    "/*c*/1",
	    "1//c",
	    "\f1",
	    "[1,\v2]",
	    "[\"a\" \"b\"]",
	};
	struct jscan_val top;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(parse(bad[i], &top) != JSCAN_OK, "accepted %s", bad[i]);
	/* A NUL is never whitespace nor part of a value. */
	ck_assert_int_eq(jscan_parse("[\"a\0b\"]", 7, 16, &top), JSCAN_MALFORMED);
	ck_assert_int_eq(jscan_parse("[1,\0 2]", 7, 16, &top), JSCAN_MALFORMED);
}
END_TEST

START_TEST(test_trailing)
{
	struct jscan_val top;

	ck_assert_int_eq(parse("{} x", &top), JSCAN_TRAILING);
	ck_assert_int_eq(parse("{}{}", &top), JSCAN_TRAILING);
	ck_assert_int_eq(parse("1x", &top), JSCAN_TRAILING);
	ck_assert_int_eq(parse("truex", &top), JSCAN_TRAILING);
	/* A leading zero ends the number: 0 then trailing bytes. */
	ck_assert_int_eq(parse("01", &top), JSCAN_TRAILING);
	ck_assert_int_eq(parse("-01", &top), JSCAN_TRAILING);
	ck_assert_int_eq(parse("\"a\"\f", &top), JSCAN_TRAILING);
	ck_assert_int_eq(jscan_parse("{}\0", 3, 16, &top), JSCAN_TRAILING);
	ck_assert_int_eq(jscan_parse("{} \0", 4, 16, &top), JSCAN_TRAILING);
	ck_assert_int_eq(parse("{} \r\n\t ", &top), JSCAN_OK);
}
END_TEST

/* n arrays around inner, then n closing brackets (n <= 64). */
static const char *around(int n, const char *inner, char *out)
{
	size_t il = strlen(inner);

	memset(out, '[', (size_t)n);
	memcpy(out + n, inner, il);
	memset(out + n + il, ']', (size_t)n);
	out[2 * n + il] = '\0';
	return out;
}

/* The limit counts as json_tokener_new_ex(16), what notify used, does: the document is at depth
 * 1 and each array or object puts its elements one deeper, so 16 nested empty arrays pass and
 * 15 arrays around anything are the most. */
START_TEST(test_depth)
{
	char b[200];
	struct jscan_val top;

	ck_assert_int_eq(parse(nested(16, b), &top), JSCAN_OK);
	ck_assert_int_eq(parse(nested(17, b), &top), JSCAN_TOO_DEEP);
	ck_assert_int_eq(parse(around(15, "1", b), &top), JSCAN_OK);
	ck_assert_int_eq(parse(around(16, "1", b), &top), JSCAN_TOO_DEEP);
	ck_assert_int_eq(parse(around(15, "{}", b), &top), JSCAN_OK);
	ck_assert_int_eq(parse(around(15, "{\"a\":1}", b), &top), JSCAN_TOO_DEEP);
	ck_assert_int_eq(parse(around(14, "{\"a\":[]}", b), &top), JSCAN_OK);
	ck_assert_int_eq(parse(around(14, "{\"a\":[\"\"]}", b), &top), JSCAN_TOO_DEEP);
	/* Siblings do not add up. */
	ck_assert_int_eq(parse("[[[[[[[[[[[[[[[]]]]]]]]]]]]]],[[[[[[[[[[[[[[]]]]]]]]]]]]]]]", &top),
	                 JSCAN_OK);
	ck_assert_int_eq(jscan_parse("1", 1, 0, &top), JSCAN_TOO_DEEP);
	ck_assert_int_eq(jscan_parse("1", 1, 1, &top), JSCAN_OK);
	ck_assert_int_eq(jscan_parse("[]", 2, 1, &top), JSCAN_OK);
	ck_assert_int_eq(jscan_parse("[1]", 3, 1, &top), JSCAN_TOO_DEEP);
	/* JSCAN_DEPTH_MAX whatever was asked. */
	{
		static char deep[2 * (JSCAN_DEPTH_MAX + 1) + 1];
		memset(deep, '[', JSCAN_DEPTH_MAX + 1);
		memset(deep + JSCAN_DEPTH_MAX + 1, ']', JSCAN_DEPTH_MAX + 1);
		ck_assert_int_eq(jscan_parse(deep, strlen(deep), 100000, &top), JSCAN_TOO_DEEP);
		ck_assert_int_eq(jscan_parse(deep + 1, strlen(deep) - 2, 100000, &top), JSCAN_OK);
	}
}
END_TEST

static bool member_text(const char *doc, const char *name, char *out, size_t cap)
{
	struct jscan_val top, v;

	ck_assert_int_eq(parse(doc, &top), JSCAN_OK);
	if (!jscan_member(&top, name, &v))
		return false;
	ck_assert_uint_lt(v.len, cap);
	memcpy(out, v.p, v.len);
	out[v.len] = '\0';
	return true;
}

START_TEST(test_members)
{
	char t[100];
	struct jscan_val top, k, v;
	struct jscan_iter it;
	int n = 0;

	ck_assert(member_text("{\"a\":1,\"b\":{\"a\":2},\"a\": [3, \"]\"] }", "a", t, sizeof(t)));
	ck_assert_str_eq(t, "[3, \"]\"]"); /* the last one, not the nested one */
	ck_assert(member_text("{\"a\":1,\"b\":\"x\\\"}\"}", "b", t, sizeof(t)));
	ck_assert_str_eq(t, "\"x\\\"}\"");
	ck_assert(member_text("{ \"b\" : -1.5e3 }", "b", t, sizeof(t)));
	ck_assert_str_eq(t, "-1.5e3");
	ck_assert(!member_text("{\"ab\":1,\"A\":2}", "a", t, sizeof(t)));
	ck_assert(!member_text("{}", "a", t, sizeof(t)));
	/* Keys compare unescaped, and only up to an escaped NUL, as json-c keeps them. */
	ck_assert(member_text("{\"\\u0065vent\":true}", "event", t, sizeof(t)));
	ck_assert_str_eq(t, "true");
	ck_assert(member_text("{\"event\\u0000x\":null}", "event", t, sizeof(t)));
	ck_assert(member_text("{\"\\u0000\":1}", "", t, sizeof(t)));
	ck_assert(!member_text("{\"even\":1}", "event", t, sizeof(t)));
	ck_assert(!member_text("{\"event\\u0001\":1}", "event", t, sizeof(t)));
	ck_assert(!member_text("{\"\\u0000event\":1}", "event", t, sizeof(t)));
	/* A non-object has no members. */
	ck_assert(!member_text("[\"a\",1]", "a", t, sizeof(t)));
	ck_assert_int_eq(parse("{\"x\":[1,{\"y\":2}],\"z\":\"w\",\"n\":null}", &top), JSCAN_OK);
	jscan_members(&it, &top);
	while (jscan_next_member(&it, &k, &v))
		n++;
	ck_assert_int_eq(n, 3);
	ck_assert_int_eq(v.type, JSCAN_NULL);
}
END_TEST

static size_t unescape(const char *json, char *out, size_t cap)
{
	struct jscan_val top;

	ck_assert_int_eq(parse(json, &top), JSCAN_OK);
	ck_assert_int_eq(top.type, JSCAN_STRING);
	return jscan_unescape(&top, out, cap);
}

START_TEST(test_unescape)
{
	char o[64];

	ck_assert_uint_eq(unescape("\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\"", o, sizeof(o)), 9);
	ck_assert(!memcmp(o, "a\"\\/\b\f\n\r\t", 9));
	ck_assert_uint_eq(unescape("\"\"", o, sizeof(o)), 0);
	ck_assert_uint_eq(unescape("\"\\u0000x\"", o, sizeof(o)), 2);
	ck_assert(!memcmp(o, "\0x", 2));
	ck_assert_uint_eq(unescape("\"\\u00e9\\u20AC\"", o, sizeof(o)), 5);
	ck_assert(!memcmp(o, "\xc3\xa9\xe2\x82\xac", 5));
	/* Pairs to 4 bytes; every unpaired half to U+FFFD, as json-c 0.16 does. */
	ck_assert_uint_eq(unescape("\"\\ud83d\\ude00\"", o, sizeof(o)), 4);
	ck_assert(!memcmp(o, "\xf0\x9f\x98\x80", 4));
	ck_assert_uint_eq(unescape("\"\\uDBFF\\uDFFF\"", o, sizeof(o)), 4);
	ck_assert(!memcmp(o, "\xf4\x8f\xbf\xbf", 4));
	ck_assert_uint_eq(unescape("\"\\ud800\"", o, sizeof(o)), 3);
	ck_assert(!memcmp(o, "\xef\xbf\xbd", 3));
	ck_assert_uint_eq(unescape("\"\\udc00x\"", o, sizeof(o)), 4);
	ck_assert(!memcmp(o, "\xef\xbf\xbdx", 4));
	ck_assert_uint_eq(unescape("\"\\ud800\\u0041\"", o, sizeof(o)), 4);
	ck_assert(!memcmp(o,
	                  "\xef\xbf\xbd"
	                  "A",
	                  4));
	ck_assert_uint_eq(unescape("\"\\ud800\\ud800\\udc00\"", o, sizeof(o)), 7);
	ck_assert(!memcmp(o, "\xef\xbf\xbd\xf0\x90\x80\x80", 7));
	ck_assert_uint_eq(unescape("\"\\udc00\\ud800\"", o, sizeof(o)), 6);
	ck_assert(!memcmp(o, "\xef\xbf\xbd\xef\xbf\xbd", 6));
	ck_assert_uint_eq(unescape("\"\\ud800\\n\"", o, sizeof(o)), 4);
	ck_assert(!memcmp(o, "\xef\xbf\xbd\n", 4));
	/* The cap: the full length comes back, only cap bytes are written. */
	memset(o, '#', sizeof(o));
	ck_assert_uint_eq(unescape("\"abcdef\"", o, 3), 6);
	ck_assert(!memcmp(o, "abc#", 4));
	memset(o, '#', sizeof(o));
	ck_assert_uint_eq(unescape("\"ab\\u00e9\"", o, 3), 4);
	ck_assert(!memcmp(o, "ab\xc3#", 4));
	ck_assert_uint_eq(unescape("\"\\ud83d\\ude00\"", o, 0), 4);
}
END_TEST

static void compact(const char *json, const char *want)
{
	struct jscan_val top;
	struct buf b;

	ck_assert_int_eq(parse(json, &top), JSCAN_OK);
	buf_init(&b);
	jscan_compact(&top, &b);
	ck_assert(!b.failed);
	ck_assert_str_eq(b.data, want);
	buf_free(&b);
}

START_TEST(test_compact)
{
	compact(" { \"a\" : [ 1 , 2.50 ,\n\t\"x y\\\" \" ] ,\r\n \"b\" : { } } ",
	        "{\"a\":[1,2.50,\"x y\\\" \"],\"b\":{}}");
	compact("\"a/b \\/ \\u00e9 \\ud83d\\ude00\"", "\"a/b \\/ \\u00e9 \\ud83d\\ude00\"");
	compact("-0", "-0");
	compact("1E+400", "1E+400");
	compact("[true,false,null]", "[true,false,null]");
	compact("[\"\\\\\", \"\\\\u0041\" ]", "[\"\\\\\",\"\\\\u0041\"]");
	/* Unpaired surrogate escapes become what they decode to. */
	compact("[\"\\ud800\", \"\\udc00x\", \"\\ud800\\ud800\\udc00\"]",
	        "[\"\\ufffd\",\"\\ufffdx\",\"\\ufffd\\ud800\\udc00\"]");
	compact("\"\\uD800\\u0041\"", "\"\\ufffd\\u0041\"");
}
END_TEST

static const char *int_text(const char *json, char *out)
{
	struct jscan_val top;

	ck_assert_int_eq(parse(json, &top), JSCAN_OK);
	return jscan_int_text(&top, out) ? out : NULL;
}

START_TEST(test_int_text)
{
	char o[JSCAN_INT_LEN];

	ck_assert_str_eq(int_text("0", o), "0");
	ck_assert_str_eq(int_text("-0", o), "0");
	ck_assert_str_eq(int_text("42", o), "42");
	ck_assert_str_eq(int_text("-42", o), "-42");
	ck_assert_str_eq(int_text("9223372036854775807", o), "9223372036854775807");
	ck_assert_str_eq(int_text("9223372036854775808", o), "9223372036854775808");
	ck_assert_str_eq(int_text("18446744073709551615", o), "18446744073709551615");
	ck_assert_str_eq(int_text("18446744073709551616", o), "18446744073709551615");
	ck_assert_str_eq(int_text("99999999999999999999999", o), "18446744073709551615");
	ck_assert_str_eq(int_text("-9223372036854775808", o), "-9223372036854775808");
	ck_assert_str_eq(int_text("-9223372036854775809", o), "-9223372036854775808");
	ck_assert_str_eq(int_text("-99999999999999999999999", o), "-9223372036854775808");
	ck_assert_ptr_null(int_text("1.0", o));
	ck_assert_ptr_null(int_text("1e2", o));
	ck_assert_ptr_null(int_text("1E2", o));
	ck_assert_ptr_null(int_text("\"1\"", o));
	ck_assert_ptr_null(int_text("true", o));
}
END_TEST

static Suite *jscan_suite(void)
{
	Suite *s = suite_create("jscan");
	TCase *c = tcase_create("jscan");

	tcase_add_test(c, test_valid);
	tcase_add_test(c, test_invalid);
	tcase_add_test(c, test_trailing);
	tcase_add_test(c, test_depth);
	tcase_add_test(c, test_members);
	tcase_add_test(c, test_unescape);
	tcase_add_test(c, test_compact);
	tcase_add_test(c, test_int_text);
	suite_add_tcase(s, c);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(jscan_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
