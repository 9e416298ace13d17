/* Unit tests for token times at the edges of int64: the saturating sum (auth_time_add) and the
 * connection deadline rules (conn_due / conn_next_due) for a token whose exp is INT64_MAX or
 * close to it, and for the most negative times, where exp + JWT_LEEWAY_S used to overflow. Run
 * under UBSan (make SANITIZE=1 unit) an overflow aborts the test. */
#include "auth.h"
#include "conn.h"

#include <check.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define WALL 1700000000LL

static struct config g_cfg;

static void open_conn(struct conn *c, long long exp)
{
	memset(&g_cfg, 0, sizeof(g_cfg));
	g_cfg.ping_interval_s = 1000; /* liveness out of the way */
	g_cfg.pong_timeout_s = 2000;
	g_cfg.jwt_leeway_s = 3600; /* the largest leeway the config accepts */
	memset(c, 0, sizeof(*c));
	c->state = CONN_OPEN;
	c->rx_at = 100;
	c->exp = exp;
}

START_TEST(test_time_add_saturates)
{
	ck_assert_int_eq(auth_time_add(1, 2), 3);
	ck_assert_int_eq(auth_time_add(LLONG_MAX, 1), LLONG_MAX);
	ck_assert_int_eq(auth_time_add(LLONG_MAX, 3600), LLONG_MAX);
	ck_assert_int_eq(auth_time_add(LLONG_MAX - 10, 3600), LLONG_MAX);
	ck_assert_int_eq(auth_time_add(LLONG_MAX, -30), LLONG_MAX - 30);
	ck_assert_int_eq(auth_time_add(LLONG_MIN, -30), LLONG_MIN);
	ck_assert_int_eq(auth_time_add(LLONG_MIN + 5, -30), LLONG_MIN);
	ck_assert_int_eq(auth_time_add(LLONG_MIN, 30), LLONG_MIN + 30);
	ck_assert_int_eq(auth_time_add(LLONG_MIN, LLONG_MAX), -1);
}
END_TEST

/* exp = INT64_MAX is a valid token that never expires: nothing is ever due for it. */
START_TEST(test_exp_int64_max_is_never_due)
{
	struct conn c;
	long long exps[] = {LLONG_MAX, LLONG_MAX - 1, LLONG_MAX - 29, LLONG_MAX - 3600,
	                    LLONG_MAX - 3601};

	for (size_t i = 0; i < sizeof(exps) / sizeof(exps[0]); i++) {
		open_conn(&c, exps[i]);
		ck_assert_msg(conn_due(&c, &g_cfg, 200, WALL) == 0, "exp %lld due at once",
		              exps[i]);
		/* The next look is bounded by the liveness deadline, not wrapped into the past. */
		ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 200, WALL), 1101);
		c.expiring_sent = true;
		ck_assert_msg(conn_due(&c, &g_cfg, 200, WALL) == 0, "exp %lld expired at once",
		              exps[i]);
		ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 200, WALL), 1101);
	}
}
END_TEST

/* At the far end of the wall clock the rules still hold without wrapping. */
START_TEST(test_exp_near_max_with_wall_near_max)
{
	struct conn c;

	open_conn(&c, LLONG_MAX - 100);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 200, LLONG_MAX - 131), 0);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 200, LLONG_MAX - 130), CONN_DUE_EXPIRING);
	c.expiring_sent = true;
	/* exp + leeway saturates at INT64_MAX: expired only when the wall clock gets there. */
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 200, LLONG_MAX - 1), 0);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 200, LLONG_MAX), CONN_DUE_EXPIRED);
}
END_TEST

/* The most negative exp (refused by auth_verify, but a conn must not trust that) is simply
 * expired, with no overflow in exp - EXPIRY_WARN_S. */
START_TEST(test_exp_int64_min_is_expired)
{
	struct conn c;

	open_conn(&c, LLONG_MIN);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 200, WALL), CONN_DUE_EXPIRING | CONN_DUE_EXPIRED);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 200, WALL), 201);
	c.expiring_sent = true;
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 200, WALL), 201);
	/* A wall clock at the far negative end does not overflow at - wall either. */
	open_conn(&c, LLONG_MAX);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 200, LLONG_MIN), 1101);
}
END_TEST

static Suite *times_suite(void)
{
	Suite *s = suite_create("token_times");
	TCase *t = tcase_create("edges");

	tcase_add_test(t, test_time_add_saturates);
	tcase_add_test(t, test_exp_int64_max_is_never_due);
	tcase_add_test(t, test_exp_near_max_with_wall_near_max);
	tcase_add_test(t, test_exp_int64_min_is_expired);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(times_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
