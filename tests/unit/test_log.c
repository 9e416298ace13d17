/* Unit tests for src/log.c: records written for hostile values (a user id or room carrying
 * newlines, control bytes, quotes, '=' or bytes that are not UTF-8) stay one line each in the
 * text format and one valid JSON object each in the JSON format. stderr is redirected to a file
 * and read back. */
#include "log.h"

#include <check.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <json-c/json.h>

/* A subject that tries to start a forged record on its own line. */
static const char FORGED_SUB[] = "u1\n{\"ts\":\"x\",\"level\":\"error\",\"msg\":\"admin login\"}";
static const char FORGED_TEXT_SUB[] = "u1\n2026-01-01T00:00:00Z error admin login user=root";
/* A room name with control bytes, DEL and an escape sequence. */
static const char CTRL_ROOM[] = "order-1\r\x1b[2J\x7f\x01";
/* A value that tries to add a key in the text format. */
static const char KEY_FORGE[] = "u1 role=admin";
/* Bytes that are not UTF-8: a lone continuation byte, a truncated sequence, an overlong '/', a
 * UTF-16 surrogate, and a code point above U+10FFFF. */
static const char BAD_UTF8[] = "a\x80"
                               "b\xe2\x82"
                               "c\xc0\xaf"
                               "d\xed\xa0\x80"
                               "e\xf4\x90\x80\x80"
                               "f";

/* Runs log_write's output into a temporary file and returns it (malloc'd, NUL-terminated). */
static char *capture(enum log_format fmt, const char *key, const char *value)
{
	char path[] = "/tmp/roomcast-test-log-XXXXXX";
	int fd = mkstemp(path), saved = dup(STDERR_FILENO);
	char *out;
	off_t len;

	ck_assert_int_ge(fd, 0);
	ck_assert_int_ge(saved, 0);
	unlink(path);
	ck_assert_int_ge(dup2(fd, STDERR_FILENO), 0);
	log_init(LOG_DEBUG, fmt, "node-1");
	log_info("client authenticated", "conn", "conn-1", key, value, "role", "client");
	ck_assert_int_ge(dup2(saved, STDERR_FILENO), 0);
	close(saved);
	len = lseek(fd, 0, SEEK_END);
	ck_assert_int_gt(len, 0);
	out = calloc(1, (size_t)len + 1);
	ck_assert_ptr_nonnull(out);
	ck_assert_int_eq(pread(fd, out, (size_t)len, 0), len);
	close(fd);
	return out;
}

static int count_char(const char *s, char c)
{
	int n = 0;
	for (; *s; s++)
		n += *s == c;
	return n;
}

/* Asserts rec is exactly one line holding one JSON object in which key maps to want. */
static void assert_json_record(const char *rec, const char *key, const char *want)
{
	size_t len = strlen(rec);
	struct json_tokener *tok = json_tokener_new();
	struct json_object *o, *v;

	ck_assert_int_eq(count_char(rec, '\n'), 1);
	ck_assert_int_eq(rec[len - 1], '\n');
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	o = json_tokener_parse_ex(tok, rec, (int)len - 1);
	ck_assert_msg(o && json_tokener_get_error(tok) == json_tokener_success &&
	                  json_tokener_get_parse_end(tok) == len - 1,
	              "not one valid JSON object: %s", rec);
	json_tokener_free(tok);
	ck_assert(json_object_object_get_ex(o, key, &v));
	if (want)
		ck_assert_str_eq(json_object_get_string(v), want);
	ck_assert(json_object_object_get_ex(o, "role", &v));
	ck_assert_str_eq(json_object_get_string(v), "client");
	json_object_put(o);
}

START_TEST(test_json_newline_in_subject_stays_one_record)
{
	char *rec = capture(LOG_FORMAT_JSON, "user", FORGED_SUB);
	assert_json_record(rec, "user", FORGED_SUB);
	free(rec);
}
END_TEST

START_TEST(test_json_control_bytes_in_room)
{
	char *rec = capture(LOG_FORMAT_JSON, "room", CTRL_ROOM);
	assert_json_record(rec, "room", CTRL_ROOM);
	ck_assert_ptr_null(strchr(rec, '\x1b'));
	ck_assert_ptr_null(strchr(rec, '\r'));
	free(rec);
}
END_TEST

START_TEST(test_json_invalid_utf8_stays_valid_json)
{
	char *rec = capture(LOG_FORMAT_JSON, "origin", BAD_UTF8);
	/* Each byte that starts no valid sequence reads as U+FFFD; valid characters are kept. */
#define R "\xef\xbf\xbd"
	assert_json_record(rec, "origin", "a" R "b" R R "c" R R "d" R R R "e" R R R R "f");
#undef R
	free(rec);
}
END_TEST

START_TEST(test_json_every_byte_value)
{
	char all[256];
	for (int i = 1; i < 256; i++)
		all[i - 1] = (char)i;
	all[255] = '\0';
	char *rec = capture(LOG_FORMAT_JSON, "ua", all);
	assert_json_record(rec, "ua", NULL);
	free(rec);
}
END_TEST

START_TEST(test_json_long_multibyte_value_is_not_cut_mid_character)
{
	/* 3000 x U+20AC (3 bytes each) overflows the 4 KiB record. */
	char *v = malloc(9001);
	ck_assert_ptr_nonnull(v);
	for (int i = 0; i < 3000; i++)
		memcpy(v + 3 * i, "\xe2\x82\xac", 3);
	v[9000] = '\0';
	char *rec = capture(LOG_FORMAT_JSON, "user", v);
	struct json_tokener *tok = json_tokener_new();
	json_tokener_set_flags(tok, JSON_TOKENER_VALIDATE_UTF8);
	/* Truncated records are not complete JSON, but what is there must be valid UTF-8. */
	json_object_put(json_tokener_parse_ex(tok, rec, (int)strlen(rec)));
	ck_assert_int_ne(json_tokener_get_error(tok), json_tokener_error_parse_utf8_string);
	json_tokener_free(tok);
	ck_assert_int_eq(count_char(rec, '\n'), 1);
	free(rec);
	free(v);
}
END_TEST

START_TEST(test_text_newline_in_subject_stays_one_line)
{
	char *rec = capture(LOG_FORMAT_TEXT, "user", FORGED_TEXT_SUB);
	ck_assert_int_eq(count_char(rec, '\n'), 1);
	ck_assert_ptr_nonnull(
	    strstr(rec, " user=\"u1\\n2026-01-01T00:00:00Z error admin login user=root\" "));
	ck_assert_ptr_nonnull(strstr(rec, " role=client\n"));
	free(rec);
}
END_TEST

START_TEST(test_text_control_bytes_in_room)
{
	char *rec = capture(LOG_FORMAT_TEXT, "room", CTRL_ROOM);
	ck_assert_int_eq(count_char(rec, '\n'), 1);
	ck_assert_ptr_null(strchr(rec, '\r'));
	ck_assert_ptr_null(strchr(rec, '\x1b'));
	ck_assert_ptr_nonnull(strstr(rec, " room=\"order-1\\r\\x1b[2J\\x7f\\x01\" "));
	free(rec);
}
END_TEST

START_TEST(test_text_value_cannot_add_a_key)
{
	char *rec = capture(LOG_FORMAT_TEXT, "user", KEY_FORGE);
	ck_assert_ptr_nonnull(strstr(rec, " user=\"u1 role=admin\" role=client\n"));
	free(rec);
}
END_TEST

START_TEST(test_text_quotes_and_invalid_utf8)
{
	char *rec = capture(LOG_FORMAT_TEXT, "ua", "x\"y\\z\xff");
	ck_assert_ptr_nonnull(strstr(rec, " ua=\"x\\\"y\\\\z\\xff\" "));
	free(rec);
}
END_TEST

START_TEST(test_text_plain_values_stay_bare)
{
	char *rec = capture(LOG_FORMAT_TEXT, "user", "u-42_\xc3\xa9");
	ck_assert_ptr_nonnull(strstr(rec, " client authenticated conn=conn-1 user=u-42_\xc3\xa9 "
	                                  "role=client\n"));
	free(rec);
}
END_TEST

static Suite *log_suite(void)
{
	Suite *s = suite_create("log");
	TCase *j = tcase_create("json");
	TCase *t = tcase_create("text");

	tcase_add_test(j, test_json_newline_in_subject_stays_one_record);
	tcase_add_test(j, test_json_control_bytes_in_room);
	tcase_add_test(j, test_json_invalid_utf8_stays_valid_json);
	tcase_add_test(j, test_json_every_byte_value);
	tcase_add_test(j, test_json_long_multibyte_value_is_not_cut_mid_character);
	suite_add_tcase(s, j);
	tcase_add_test(t, test_text_newline_in_subject_stays_one_line);
	tcase_add_test(t, test_text_control_bytes_in_room);
	tcase_add_test(t, test_text_value_cannot_add_a_key);
	tcase_add_test(t, test_text_quotes_and_invalid_utf8);
	tcase_add_test(t, test_text_plain_values_stay_bare);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(log_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
