/* Unit tests for the connection timer: the one-second wheel (src/wheel.c), the pure deadline
 * rules conn_due/conn_next_due, and the timer driven by hand over connections without a socket
 * (pings asked for, auth timeout, token expiry, silence and stuck closes). */
#include "conn.h"
#include "metrics.h"
#include "wheel.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the wheel ---- */

struct item {
	struct wheel_node node;
	uint32_t visited_at; /* tick of the last visit */
	unsigned visits;
	uint32_t want; /* the real deadline: refiled until it is reached */
};

static struct wheel g_w;

static void on_visit(struct wheel_node *n, void *arg)
{
	struct item *it = (struct item *)n;
	it->visits++;
	it->visited_at = g_w.now;
	if (g_w.now < it->want)
		wheel_put(&g_w, n, it->want);
}

START_TEST(test_wheel_visits_at_deadline)
{
	struct item a = {.want = 3}, b = {.want = 5};

	wheel_init(&g_w, 1);
	wheel_put(&g_w, &a.node, a.want);
	wheel_put(&g_w, &b.node, b.want);
	ck_assert_uint_eq(g_w.count, 2);
	wheel_advance(&g_w, 2, on_visit, NULL);
	ck_assert_uint_eq(a.visits + b.visits, 0);
	wheel_advance(&g_w, 3, on_visit, NULL);
	ck_assert_uint_eq(a.visits, 1);
	ck_assert_uint_eq(a.visited_at, 3);
	ck_assert(!wheel_filed(&a.node));
	wheel_advance(&g_w, 10, on_visit, NULL);
	ck_assert_uint_eq(b.visits, 1);
	ck_assert_uint_eq(b.visited_at, 5);
	ck_assert_uint_eq(g_w.count, 0);
	ck_assert_uint_eq(g_w.now, 10);
}
END_TEST

START_TEST(test_wheel_clamps_past_and_far_deadlines)
{
	struct item past = {.want = 0}, far = {.want = 1000};

	wheel_init(&g_w, 100);
	wheel_put(&g_w, &past.node, 7); /* already passed: the next tick */
	ck_assert_ptr_eq(past.node.pprev, &g_w.slot[101 % WHEEL_SLOTS]);
	wheel_put(&g_w, &far.node, far.want); /* beyond one turn: visited early, refiled */
	ck_assert_ptr_eq(far.node.pprev, &g_w.slot[(100 + WHEEL_SLOTS - 1) % WHEEL_SLOTS]);
	wheel_advance(&g_w, 1000, on_visit, NULL);
	ck_assert_uint_eq(past.visits, 1);
	ck_assert_uint_eq(past.visited_at, 101);
	ck_assert_uint_eq(far.visited_at, 1000);
	ck_assert_uint_le(far.visits, 1000 / (WHEEL_SLOTS - 1) + 1);
	ck_assert_uint_eq(g_w.count, 0);
}
END_TEST

START_TEST(test_wheel_del_and_refile)
{
	struct item a = {.want = 4}, b = {.want = 4};

	wheel_init(&g_w, 1);
	wheel_put(&g_w, &a.node, 4);
	wheel_put(&g_w, &b.node, 4);
	wheel_del(&g_w, &a.node);
	wheel_del(&g_w, &a.node); /* twice is harmless */
	ck_assert_uint_eq(g_w.count, 1);
	wheel_put(&g_w, &b.node, 6); /* moved later */
	wheel_advance(&g_w, 5, on_visit, NULL);
	ck_assert_uint_eq(a.visits + b.visits, 0);
	wheel_advance(&g_w, 6, on_visit, NULL);
	ck_assert_uint_eq(a.visits, 0);
	ck_assert_uint_eq(b.visits, 1);
}
END_TEST

static struct item g_pair[2];

/* Visiting either item of the pair unfiles the other, as a kill inside a visit may. */
static void on_visit_unfile_other(struct wheel_node *n, void *arg)
{
	struct item *it = (struct item *)n;
	it->visits++;
	wheel_del(&g_w, &g_pair[it == &g_pair[0]].node);
}

START_TEST(test_wheel_visit_may_unfile_others)
{
	memset(g_pair, 0, sizeof(g_pair));
	wheel_init(&g_w, 1);
	wheel_put(&g_w, &g_pair[0].node, 2);
	wheel_put(&g_w, &g_pair[1].node, 2);
	wheel_advance(&g_w, 2, on_visit_unfile_other, NULL);
	ck_assert_uint_eq(g_pair[0].visits + g_pair[1].visits, 1);
	ck_assert_uint_eq(g_w.count, 0);
}
END_TEST

START_TEST(test_wheel_many_random_deadlines)
{
	enum { N = 20000 };
	struct item *it = calloc(N, sizeof(*it));
	unsigned seed = 12345;

	ck_assert_ptr_nonnull(it);
	wheel_init(&g_w, 1);
	for (int i = 0; i < N; i++) {
		it[i].want = 2 + (uint32_t)(rand_r(&seed) % 500);
		wheel_put(&g_w, &it[i].node, it[i].want);
	}
	/* Uneven steps, as a late timer takes several ticks at once. */
	for (uint32_t to = 1; to < 520; to += 1 + (uint32_t)(rand_r(&seed) % 3))
		wheel_advance(&g_w, to, on_visit, NULL);
	wheel_advance(&g_w, 520, on_visit, NULL);
	for (int i = 0; i < N; i++) {
		ck_assert_uint_eq(it[i].visited_at, it[i].want);
		ck_assert(!wheel_filed(&it[i].node));
	}
	ck_assert_uint_eq(g_w.count, 0);
	free(it);
}
END_TEST

/* ---- deadline rules (pure) ---- */

static struct config g_cfg;

static void cfg_defaults(void)
{
	memset(&g_cfg, 0, sizeof(g_cfg));
	g_cfg.ping_interval_s = 25;
	g_cfg.pong_timeout_s = 60;
	g_cfg.auth_timeout_s = 10;
	g_cfg.jwt_leeway_s = 30;
	g_cfg.rate_burst = 40;
	g_cfg.rate_per_s = 20;
	g_cfg.send_queue_max_bytes = 1 << 20;
}

START_TEST(test_due_ping_then_silence)
{
	struct conn c;

	cfg_defaults();
	memset(&c, 0, sizeof(c));
	c.state = CONN_OPEN;
	c.rx_at = 10;
	/* Silent for at least PING_INTERVAL_S: a tick stamp may be up to a second old. */
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 35, 0), 0);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 20, 0), 36);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 36, 0), CONN_DUE_PING);
	c.ping_at = 36;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 37, 0), 0);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 36, 0), 62);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 62, 0), CONN_DUE_PING);
	c.ping_at = 62;
	/* No answer: dropped PONG_TIMEOUT_S after the last frame, pings or not. */
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 62, 0), 71);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 70, 0), 0);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 71, 0), CONN_DUE_SILENT);
	/* A frame (a pong or a message) restarts the clock. */
	c.rx_at = 65;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 71, 0), 0);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 71, 0), 91);
}
END_TEST

START_TEST(test_due_auth_timeout)
{
	struct conn c;

	cfg_defaults();
	memset(&c, 0, sizeof(c));
	c.state = CONN_AWAIT_AUTH;
	c.rx_at = 5;
	c.deadline = 16;
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 5, 0), 16);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 15, 0), 0);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 16, 0), CONN_DUE_AUTH);
	/* An authenticated connection ignores the old deadline. */
	c.state = CONN_OPEN;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 16, 0), 0);
}
END_TEST

START_TEST(test_due_token_expiry)
{
	struct conn c;
	long long wall = 1700000000;

	cfg_defaults();
	g_cfg.ping_interval_s = 1000; /* liveness out of the way */
	g_cfg.pong_timeout_s = 2000;
	memset(&c, 0, sizeof(c));
	c.state = CONN_OPEN;
	c.rx_at = 100;
	c.exp = wall + 100;
	/* Warned 30 s before exp, judged by the wall clock. */
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 100, wall), 170);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 169, wall + 69), 0);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 170, wall + 70), CONN_DUE_EXPIRING);
	c.expiring_sent = true;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 170, wall + 70), 0);
	/* Then closed at exp + JWT_LEEWAY_S. */
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 190, wall + 90), 230);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 229, wall + 129), 0);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 230, wall + 130), CONN_DUE_EXPIRED);
	/* Past both at once: the warning, then the close. */
	c.expiring_sent = false;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 230, wall + 130),
	                  CONN_DUE_EXPIRING | CONN_DUE_EXPIRED);
	/* A time already reached is looked at on the next tick. */
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 230, wall + 130), 231);
	/* No ping is asked of a connection being closed for its token. */
	g_cfg.ping_interval_s = 25;
	g_cfg.pong_timeout_s = 60;
	c.expiring_sent = true;
	c.rx_at = 200;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 230, wall + 130), CONN_DUE_EXPIRED);
}
END_TEST

START_TEST(test_due_token_expiry_keep)
{
	struct conn c;
	long long wall = 1700000000;

	cfg_defaults();
	g_cfg.ping_interval_s = 1000;
	g_cfg.pong_timeout_s = 2000;
	g_cfg.token_expiry_keep = true;
	memset(&c, 0, sizeof(c));
	c.state = CONN_OPEN;
	c.rx_at = 100;
	c.exp = wall + 100;
	/* The warning is still sent 30 s before exp... */
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 100, wall), 170);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 170, wall + 70), CONN_DUE_EXPIRING);
	c.expiring_sent = true;
	/* ...but nothing closes it: long past exp + leeway only liveness is due. */
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 1000, wall + 5000), 0);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 190, wall + 90), 100 + 1000 + 1);
	g_cfg.token_expiry_keep = false;
}
END_TEST

START_TEST(test_due_closing_and_dead)
{
	struct conn c;

	cfg_defaults();
	memset(&c, 0, sizeof(c));
	c.state = CONN_CLOSING;
	c.rx_at = 1; /* long silent: closing has its own deadline */
	c.deadline = 300;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 299, 0), 0);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 200, 0), 300);
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 300, 0), CONN_DUE_STUCK);
	c.state = CONN_DEAD;
	ck_assert_uint_eq(conn_due(&c, &g_cfg, 400, 0), 0);
	ck_assert_uint_eq(conn_next_due(&c, &g_cfg, 400, 0), 0);
}
END_TEST

/* ---- the timer over real connection objects (no socket) ---- */

/* The owner's part, as the session does it: a warning frame, 4001 closes. */
static unsigned g_due_seen;
static void on_deadline(struct conn *c, unsigned due)
{
	g_due_seen |= due;
	if (due & CONN_DUE_AUTH)
		conn_close(c, 4001, "authentication timeout", true);
	if (due & CONN_DUE_EXPIRING) {
		struct frame *f = frame_new("{\"type\":\"token_expiring\"}", 25);
		conn_reply(c, f);
	}
	if (due & CONN_DUE_EXPIRED)
		conn_close(c, 4001, "token expired", true);
}

static void timer_setup(void)
{
	cfg_defaults();
	conn_setup(&g_cfg, NULL);
	conn_set_hooks(&(struct conn_hooks){.deadline = on_deadline});
	g_due_seen = 0;
}

static void timer_teardown(void)
{
	struct conn *c;
	while ((c = conn_first()))
		conn_detach(c);
	conn_reap();
}

START_TEST(test_timer_auth_timeout_closes_4001)
{
	struct conn *c = conn_new(NULL, "192.0.2.1", false);

	ck_assert_ptr_nonnull(c);
	ck_assert_int_eq(c->state, CONN_AWAIT_AUTH);
	conn_timers_run(11);
	ck_assert_int_eq(c->state, CONN_AWAIT_AUTH);
	conn_timers_run(12);
	ck_assert_int_eq(c->state, CONN_CLOSING);
	ck_assert_uint_eq(c->close_code, 4001);
	ck_assert_uint_eq(g_due_seen, CONN_DUE_AUTH);
	/* The close frame never goes out (no socket): stuck, then dropped. */
	ck_assert_uint_eq(c->deadline, 12 + 5 + 1);
	ck_assert(wheel_filed(&c->timer));
}
END_TEST

START_TEST(test_timer_pings_silent_peer_then_drops_it)
{
	struct conn *c = conn_new(NULL, "192.0.2.1", false);
	uint64_t timeouts = metrics.closes[METRICS_CLOSE_TIMEOUT];

	c->state = CONN_OPEN; /* no token expiry: exp 0 */
	conn_timers_update(c);
	conn_timers_run(26);
	ck_assert(!c->ping_due);
	conn_timers_run(27);
	ck_assert(c->ping_due);
	ck_assert_uint_eq(c->ping_at, 27);
	c->ping_due = false; /* as the writeable callback does */
	/* Traffic at tick 40 postpones the next ping to 66 and the drop to 101. */
	conn_timers_run(40);
	conn_touch(c);
	ck_assert_uint_eq(c->rx_at, 40);
	conn_timers_run(65);
	ck_assert(!c->ping_due);
	conn_timers_run(66);
	ck_assert(c->ping_due);
	conn_timers_run(100);
	ck_assert_uint_eq(metrics.closes[METRICS_CLOSE_TIMEOUT], timeouts);
	conn_timers_run(101);
	ck_assert_uint_eq(metrics.closes[METRICS_CLOSE_TIMEOUT], timeouts + 1);
	ck_assert_int_eq(c->state, CONN_CLOSING);
	/* The socket is still there (none here): dropped again, counted once. */
	conn_timers_run(105);
	ck_assert_uint_eq(metrics.closes[METRICS_CLOSE_TIMEOUT], timeouts + 1);
	ck_assert(wheel_filed(&c->timer));
}
END_TEST

START_TEST(test_timer_expired_token_warns_then_closes)
{
	struct conn *c = conn_new(NULL, "192.0.2.1", false);

	c->state = CONN_OPEN;
	c->exp = (long long)time(NULL) - g_cfg.jwt_leeway_s - 1;
	conn_timers_update(c);
	ck_assert(c->expiring_sent);
	ck_assert_uint_eq(frame_queue_count(&c->q), 1); /* token_expiring, before the close */
	ck_assert_int_eq(c->state, CONN_CLOSING);
	ck_assert_uint_eq(c->close_code, 4001);
}
END_TEST

START_TEST(test_timer_token_expiring_soon_warns_at_once)
{
	struct conn *c = conn_new(NULL, "192.0.2.1", false);

	c->state = CONN_OPEN;
	c->exp = (long long)time(NULL) + 10;
	conn_timers_update(c);
	ck_assert(c->expiring_sent);
	ck_assert_uint_eq(frame_queue_count(&c->q), 1);
	ck_assert_int_eq(c->state, CONN_OPEN);
	/* A detached connection leaves the wheel. */
	conn_detach(c);
	ck_assert(!wheel_filed(&c->timer));
}
END_TEST

static Suite *timers_suite(void)
{
	Suite *s = suite_create("timers");
	TCase *w = tcase_create("wheel");
	TCase *d = tcase_create("rules");
	TCase *t = tcase_create("timer");

	tcase_add_test(w, test_wheel_visits_at_deadline);
	tcase_add_test(w, test_wheel_clamps_past_and_far_deadlines);
	tcase_add_test(w, test_wheel_del_and_refile);
	tcase_add_test(w, test_wheel_visit_may_unfile_others);
	tcase_add_test(w, test_wheel_many_random_deadlines);
	suite_add_tcase(s, w);

	tcase_add_test(d, test_due_ping_then_silence);
	tcase_add_test(d, test_due_auth_timeout);
	tcase_add_test(d, test_due_token_expiry);
	tcase_add_test(d, test_due_token_expiry_keep);
	tcase_add_test(d, test_due_closing_and_dead);
	suite_add_tcase(s, d);

	tcase_add_checked_fixture(t, timer_setup, timer_teardown);
	tcase_add_test(t, test_timer_auth_timeout_closes_4001);
	tcase_add_test(t, test_timer_pings_silent_peer_then_drops_it);
	tcase_add_test(t, test_timer_expired_token_warns_then_closes);
	tcase_add_test(t, test_timer_token_expiring_soon_warns_at_once);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(timers_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
