/* Unit tests for src/config.c: duration and rate parsing, and config_load's layering (defaults,
 * environment, flags), its validation (one line naming the variable on stderr) and --help. */
#include "auth.h"
#include "config.h"

#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every variable of docs/operations.md (plus AUTHZ and the HTTP gate limits). */
static const char *const VARS[] = {
    "PORT",
    "HOST",
    "JWT_SECRET",
    "JWT_ALGORITHMS",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_LEEWAY_S",
    "DATABASE_URL",
    "REDIS_ADDR",
    "REDIS_PASSWORD",
    "WS_ORIGINS",
    "BACKEND_URL",
    "NOTIFY_TOKEN",
    "NOTIFY_ALLOW_FROM",
    "MAX_HTTP_CONNECTIONS",
    "MAX_HTTP_CONNECTIONS_PER_IP",
    "HTTP_BODY_TIMEOUT_S",
    "HTTP_IDLE_TIMEOUT_S",
    "NOTIFY_MAX_BYTES",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_IP",
    "MAX_MESSAGE_SIZE",
    "SEND_QUEUE_MAX_BYTES",
    "RATE_LIMIT",
    "PING_INTERVAL_S",
    "PONG_TIMEOUT_S",
    "AUTH_TIMEOUT_S",
    "OUTBOX_RETENTION",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "ENVIRONMENT",
    "NODE_ID",
    "WORKERS",
    "TLS_CERT_FILE",
    "TLS_KEY_FILE",
    "AUTHZ",
    "HEADER_TIMEOUT_S",
    "MAX_HEADER_BYTES",
    "SHUTDOWN_GRACE_MS",
};
#define NVARS (sizeof(VARS) / sizeof(VARS[0]))

static const char SECRET[] = "0123456789abcdef0123456789abcdef";

static struct config g_cfg;
static char *g_out, *g_err;

/* A clean environment for every test: nothing inherited from the shell. */
static void setup(void)
{
	for (size_t i = 0; i < NVARS; i++)
		unsetenv(VARS[i]);
	g_out = g_err = NULL;
}

static void teardown(void)
{
	/* config_load zeroes cfg first, so config_free is safe after a failed load too. */
	config_free(&g_cfg);
	free(g_out);
	free(g_err);
	g_out = g_err = NULL;
}

/* Runs config_load with argv = {"serve", args..., NULL}, capturing out and err. */
static int load(const char *const *args)
{
	char *argv[16] = {"serve"};
	int argc = 1;
	size_t out_len = 0, err_len = 0;
	FILE *out, *err;
	int rc;

	free(g_out);
	free(g_err);
	config_free(&g_cfg);
	for (; args && args[argc - 1]; argc++) {
		ck_assert_int_lt(argc, 15);
		argv[argc] = (char *)args[argc - 1];
	}
	argv[argc] = NULL;
	out = open_memstream(&g_out, &out_len);
	err = open_memstream(&g_err, &err_len);
	ck_assert_ptr_nonnull(out);
	ck_assert_ptr_nonnull(err);
	rc = config_load(&g_cfg, argc, argv, out, err);
	fclose(out);
	fclose(err);
	return rc;
}

/* Asserts the last load wrote exactly one line to err, containing each NULL-terminated needle. */
static void expect_one_error_line(const char *needle, const char *needle2)
{
	size_t n = strlen(g_err);
	const char *nl = strchr(g_err, '\n');

	ck_assert_msg(n > 1, "nothing on err");
	ck_assert_msg(nl == g_err + n - 1, "want exactly one line, got: %s", g_err);
	ck_assert_msg(strstr(g_err, needle), "\"%s\" not in: %s", needle, g_err);
	if (needle2)
		ck_assert_msg(strstr(g_err, needle2), "\"%s\" not in: %s", needle2, g_err);
	ck_assert_str_eq(g_out, "");
}

static void expect_ok_load(const char *const *args)
{
	int rc = load(args);

	ck_assert_msg(rc == 0, "config_load = %d: %s", rc, g_err);
	ck_assert_str_eq(g_err, "");
	ck_assert_str_eq(g_out, "");
}

/* ---- durations and rates ---- */

START_TEST(test_duration_ok)
{
	ck_assert_int_eq(config_parse_duration("30s"), 30);
	ck_assert_int_eq(config_parse_duration("15m"), 900);
	ck_assert_int_eq(config_parse_duration("24h"), 86400);
	ck_assert_int_eq(config_parse_duration("7d"), 604800);
	ck_assert_int_eq(config_parse_duration("0s"), 0);
	ck_assert_int_eq(config_parse_duration("365d"), 365L * 86400);
}
END_TEST

START_TEST(test_duration_bad)
{
	static const char *const bad[] = {
	    "",
	    "10",
	    "5x",
	    "-1s",
	    "1.5h",
	    "s",
	    "+5s",
	    " 5s",
	    "5 s",
	    "5S",
	    "5ss",
	    "5s ",
	    "1e3s",
	    "99999999999999999999s",
	    "9999999999999999d",
	};

	ck_assert_int_eq(config_parse_duration(NULL), -1);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(config_parse_duration(bad[i]) == -1, "accepted \"%s\"", bad[i]);
}
END_TEST

START_TEST(test_rate_ok)
{
	double per_s = -1, burst = -1;

	ck_assert_int_eq(config_parse_rate("20/s,burst=40", &per_s, &burst), 0);
	ck_assert_double_eq(per_s, 20);
	ck_assert_double_eq(burst, 40);

	ck_assert_int_eq(config_parse_rate("120/m", &per_s, &burst), 0);
	ck_assert_double_eq_tol(per_s, 2.0, 1e-9);
	ck_assert_double_gt(burst, 0);

	ck_assert_int_eq(config_parse_rate("5/s", &per_s, &burst), 0);
	ck_assert_double_eq(per_s, 5);
	ck_assert_double_eq(burst, 10);

	ck_assert_int_eq(config_parse_rate("0.5/s,burst=1", &per_s, &burst), 0);
	ck_assert_double_eq(per_s, 0.5);
	ck_assert_double_eq(burst, 1);
}
END_TEST

START_TEST(test_rate_bad)
{
	static const char *const bad[] = {
	    "",
	    "20",
	    "/s",
	    "20/",
	    "20/h",
	    "20/sec",
	    "20/S",
	    "0/s",
	    "-5/s",
	    "abc/s",
	    "20/s,",
	    "20/s,burst=",
	    "20/s,burst=0",
	    "20/s,burst=-3",
	    "20/s,burst=40x",
	    "20/s,bursts=40",
	    "20/s;burst=40",
	    "nan/s",
	    "inf/s",
	    "1e999/s",
	    "20/s,burst=nan",
	    "20/s,burst=inf",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		double per_s = -1, burst = -1;
		ck_assert_msg(config_parse_rate(bad[i], &per_s, &burst) == -1, "accepted \"%s\"",
		              bad[i]);
	}
}
END_TEST

/* ---- config_load ---- */

START_TEST(test_defaults)
{
	setenv("JWT_SECRET", SECRET, 1);
	expect_ok_load(NULL);
	ck_assert_int_eq(g_cfg.port, 8080);
	ck_assert_str_eq(g_cfg.host, "0.0.0.0");
	ck_assert_str_eq(g_cfg.jwt_secret, SECRET);
	ck_assert_str_eq(g_cfg.jwt_algorithms, "HS256,HS384,HS512");
	ck_assert_uint_eq(g_cfg.jwt_alg_mask, AUTH_ALG_HS256 | AUTH_ALG_HS384 | AUTH_ALG_HS512);
	ck_assert_int_eq(g_cfg.jwt_leeway_s, 30);
	ck_assert_ptr_null(g_cfg.database_url);
	ck_assert_ptr_null(g_cfg.redis_addr);
	ck_assert_ptr_null(g_cfg.ws_origins);
	ck_assert_int_eq(g_cfg.notify_max_bytes, 65536);
	ck_assert_int_eq(g_cfg.max_connections, 10000);
	ck_assert_int_eq(g_cfg.max_connections_per_ip, 1000);
	ck_assert_int_eq(g_cfg.max_message_size, 8192);
	ck_assert_int_eq(g_cfg.send_queue_max_bytes, 1048576);
	ck_assert_str_eq(g_cfg.rate_limit, "20/s,burst=40");
	ck_assert_double_eq(g_cfg.rate_per_s, 20);
	ck_assert_double_eq(g_cfg.rate_burst, 40);
	ck_assert_int_eq(g_cfg.ping_interval_s, 25);
	ck_assert_int_eq(g_cfg.pong_timeout_s, 60);
	ck_assert_int_eq(g_cfg.auth_timeout_s, 10);
	ck_assert_int_eq(g_cfg.outbox_retention_s, 86400);
	ck_assert_str_eq(g_cfg.log_level, "info");
	ck_assert_str_eq(g_cfg.log_format, "json");
	ck_assert_str_eq(g_cfg.environment, "development");
	ck_assert(!g_cfg.production);
	ck_assert_int_eq(g_cfg.workers, 1);
	ck_assert_int_eq(g_cfg.authz_mode, CONFIG_AUTHZ_CLAIMS);
	ck_assert_ptr_nonnull(g_cfg.node_id);
	ck_assert_uint_gt(strlen(g_cfg.node_id), 0);
}
END_TEST

START_TEST(test_env_applied)
{
	setenv("JWT_SECRET", SECRET, 1);
	setenv("PORT", "7000", 1);
	setenv("HOST", "127.0.0.1", 1);
	setenv("OUTBOX_RETENTION", "7d", 1);
	setenv("RATE_LIMIT", "120/m", 1);
	setenv("NODE_ID", "n1", 1);
	setenv("DATABASE_URL", "postgres://localhost/x", 1);
	expect_ok_load(NULL);
	ck_assert_int_eq(g_cfg.port, 7000);
	ck_assert_str_eq(g_cfg.host, "127.0.0.1");
	ck_assert_int_eq(g_cfg.outbox_retention_s, 7 * 86400);
	ck_assert_double_eq_tol(g_cfg.rate_per_s, 2.0, 1e-9);
	ck_assert_str_eq(g_cfg.node_id, "n1");
	ck_assert_int_eq(g_cfg.authz_mode, CONFIG_AUTHZ_SQL);
}
END_TEST

START_TEST(test_flag_overrides_env)
{
	static const char *const spaced[] = {"--port", "9000", NULL};
	static const char *const joined[] = {"--port=9000", NULL};
	static const char *const secret[] = {"--jwt-secret", SECRET, "--host=::1", NULL};

	setenv("JWT_SECRET", SECRET, 1);
	setenv("PORT", "7000", 1);
	expect_ok_load(spaced);
	ck_assert_int_eq(g_cfg.port, 9000);
	expect_ok_load(joined);
	ck_assert_int_eq(g_cfg.port, 9000);
	expect_ok_load(NULL);
	ck_assert_int_eq(g_cfg.port, 7000);

	/* A flag alone can supply a required value. */
	unsetenv("JWT_SECRET");
	expect_ok_load(secret);
	ck_assert_str_eq(g_cfg.jwt_secret, SECRET);
	ck_assert_str_eq(g_cfg.host, "::1");
}
END_TEST

START_TEST(test_invalid_port)
{
	static const char *const bad[] = {"abc", "0", "65536", "80x", "-1", "99999999999999999999"};
	static const char *const flag[] = {"--port=http", NULL};

	setenv("JWT_SECRET", SECRET, 1);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		setenv("PORT", bad[i], 1);
		ck_assert_msg(load(NULL) == -1, "PORT=%s accepted", bad[i]);
		expect_one_error_line("PORT", NULL);
	}
	unsetenv("PORT");
	ck_assert_int_eq(load(flag), -1);
	expect_one_error_line("PORT", NULL);
}
END_TEST

START_TEST(test_invalid_duration_env)
{
	setenv("JWT_SECRET", SECRET, 1);
	setenv("OUTBOX_RETENTION", "1.5h", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("OUTBOX_RETENTION", NULL);
	setenv("OUTBOX_RETENTION", "30s", 1); /* below the one-minute minimum */
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("OUTBOX_RETENTION", NULL);
	setenv("RATE_LIMIT", "lots", 1);
	setenv("OUTBOX_RETENTION", "1h", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("RATE_LIMIT", NULL);
}
END_TEST

START_TEST(test_secret_required)
{
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("JWT_SECRET", NULL);
	setenv("JWT_SECRET", "", 1); /* empty counts as unset */
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("JWT_SECRET", NULL);
}
END_TEST

START_TEST(test_short_secret)
{
	setenv("JWT_SECRET", "short", 1);
	expect_ok_load(NULL);
	ck_assert_str_eq(g_cfg.jwt_secret, "short");

	setenv("ENVIRONMENT", "production", 1);
	setenv("WS_ORIGINS", "https://app.example", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("JWT_SECRET", NULL);

	/* 31 bytes is still short; 32 is enough. */
	setenv("JWT_SECRET", "0123456789abcdef0123456789abcde", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("JWT_SECRET", NULL);
	setenv("JWT_SECRET", SECRET, 1);
	expect_ok_load(NULL);
	ck_assert(g_cfg.production);
}
END_TEST

START_TEST(test_algorithms_none)
{
	setenv("JWT_SECRET", SECRET, 1);
	setenv("JWT_ALGORITHMS", "none", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("JWT_ALGORITHMS", NULL);
	setenv("JWT_ALGORITHMS", "HS256,none", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("JWT_ALGORITHMS", NULL);
	setenv("JWT_ALGORITHMS", "HS512", 1);
	expect_ok_load(NULL);
	ck_assert_uint_eq(g_cfg.jwt_alg_mask, AUTH_ALG_HS512);
}
END_TEST

START_TEST(test_pong_after_ping)
{
	setenv("JWT_SECRET", SECRET, 1);
	setenv("PING_INTERVAL_S", "30", 1);
	setenv("PONG_TIMEOUT_S", "30", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("PONG_TIMEOUT_S", NULL);
	setenv("PONG_TIMEOUT_S", "20", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("PONG_TIMEOUT_S", NULL);
	setenv("PONG_TIMEOUT_S", "31", 1);
	expect_ok_load(NULL);
	ck_assert_int_eq(g_cfg.ping_interval_s, 30);
	ck_assert_int_eq(g_cfg.pong_timeout_s, 31);
}
END_TEST

START_TEST(test_workers_need_redis)
{
	setenv("JWT_SECRET", SECRET, 1);
	setenv("WORKERS", "2", 1);
	ck_assert_int_eq(load(NULL), -1);
	expect_one_error_line("WORKERS", "REDIS_ADDR");
	setenv("REDIS_ADDR", "127.0.0.1:6379", 1);
	expect_ok_load(NULL);
	ck_assert_int_eq(g_cfg.workers, 2);
	ck_assert_str_eq(g_cfg.redis_addr, "127.0.0.1:6379");
}
END_TEST

START_TEST(test_help)
{
	static const char *const help[] = {"--help", NULL};
	static const char *const after[] = {"--port=1", "--help", NULL};
	char flag[64];

	/* --help works even when the configuration would not validate. */
	ck_assert_int_eq(load(help), 1);
	ck_assert_str_eq(g_err, "");
	for (size_t i = 0; i < NVARS; i++) {
		size_t n = 2;
		ck_assert_msg(strstr(g_out, VARS[i]), "%s missing from --help", VARS[i]);
		strcpy(flag, "--");
		for (const char *c = VARS[i]; *c; c++)
			flag[n++] = *c == '_' ? '-' : (char)tolower((unsigned char)*c);
		flag[n] = '\0';
		ck_assert_msg(strstr(g_out, flag), "%s missing from --help", flag);
	}
	ck_assert_int_eq(load(after), 1);
	ck_assert_ptr_nonnull(strstr(g_out, "JWT_SECRET"));
}
END_TEST

START_TEST(test_unknown_flag)
{
	static const char *const unknown[] = {"--bogus", "1", NULL};
	static const char *const unknown_eq[] = {"--bogus=1", NULL};
	static const char *const positional[] = {"8080", NULL};
	static const char *const no_value[] = {"--port", NULL};

	setenv("JWT_SECRET", SECRET, 1);
	ck_assert_int_eq(load(unknown), -1);
	expect_one_error_line("--bogus", NULL);
	ck_assert_int_eq(load(unknown_eq), -1);
	expect_one_error_line("--bogus", NULL);
	ck_assert_int_eq(load(positional), -1);
	expect_one_error_line("8080", NULL);
	ck_assert_int_eq(load(no_value), -1);
	expect_one_error_line("--port", NULL);
}
END_TEST

static Suite *config_suite(void)
{
	Suite *s = suite_create("config");
	TCase *p = tcase_create("parse");
	TCase *l = tcase_create("load");

	tcase_add_test(p, test_duration_ok);
	tcase_add_test(p, test_duration_bad);
	tcase_add_test(p, test_rate_ok);
	tcase_add_test(p, test_rate_bad);
	suite_add_tcase(s, p);

	tcase_add_checked_fixture(l, setup, teardown);
	tcase_add_test(l, test_defaults);
	tcase_add_test(l, test_env_applied);
	tcase_add_test(l, test_flag_overrides_env);
	tcase_add_test(l, test_invalid_port);
	tcase_add_test(l, test_invalid_duration_env);
	tcase_add_test(l, test_secret_required);
	tcase_add_test(l, test_short_secret);
	tcase_add_test(l, test_algorithms_none);
	tcase_add_test(l, test_pong_after_ping);
	tcase_add_test(l, test_workers_need_redis);
	tcase_add_test(l, test_help);
	tcase_add_test(l, test_unknown_flag);
	suite_add_tcase(s, l);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(config_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
