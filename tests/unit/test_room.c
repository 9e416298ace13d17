/* Unit tests for src/room.c: room-name validation, the wildcard patterns of the token's "rooms"
 * claim, and the two-sided membership bookkeeping (join/leave/leave_all/reset, empty-room freeing).
 */
#include "room.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NMEMBERS 1000

static void teardown(void)
{
	room_reset();
}

/* Index of m's subscription to r, or -1. */
static int sub_of(const struct room_member *m, const struct room *r)
{
	for (uint32_t i = 0; i < m->nsubs; i++)
		if (room_member_room(m, i) == r)
			return (int)i;
	return -1;
}

/* Asserts both sides of every link of room `name` agree and returns its member count. */
static uint32_t check_room_links(const char *name)
{
	struct room *r = room_find(name);
	struct room_member *const *mem;
	uint32_t n;

	ck_assert_ptr_nonnull(r);
	ck_assert_str_eq(room_name(r), name);
	mem = room_members(r, &n);
	for (uint32_t i = 0; i < n; i++) {
		int si = sub_of(mem[i], r);
		if (si < 0)
			ck_abort_msg("%s: member %u has no link back", name, i);
		if (room_member_pos(mem[i], (uint32_t)si) != i)
			ck_abort_msg("%s: member at %u has pos %u", name, i,
			             room_member_pos(mem[i], (uint32_t)si));
		for (uint32_t j = i + 1; j < n; j++)
			if (mem[i] == mem[j])
				ck_abort_msg("%s: member listed twice", name);
	}
	return n;
}

/* ---- names ---- */

START_TEST(test_name_valid)
{
	char name[ROOM_NAME_MAX + 2];

	ck_assert(room_name_valid("order-7", 7));
	ck_assert(room_name_valid("a", 1));
	ck_assert(room_name_valid("Az09_.:-", 8));
	ck_assert(room_name_valid("seller:12.x_y-Z", 15));

	ck_assert(!room_name_valid("", 0));
	ck_assert(!room_name_valid("abc", 0));
	ck_assert(!room_name_valid(NULL, 0));

	memset(name, 'x', sizeof(name));
	ck_assert(room_name_valid(name, ROOM_NAME_MAX));
	ck_assert(!room_name_valid(name, ROOM_NAME_MAX + 1));

	/* The length, not a NUL, bounds the name. */
	ck_assert(room_name_valid("ab c", 2));
	ck_assert(!room_name_valid("ab c", 4));
	ck_assert(!room_name_valid("a\0b", 3));
}
END_TEST

START_TEST(test_name_invalid_chars)
{
	static const char *const bad[] = {
	    "a b",  "a/b",  "/",   "a\\b", "caf\xc3\xa9", "\xe2\x82\xac", "a*b", "a?b",  "a\"b",
	    "a\tb", "a\nb", "a,b", "a+b",  "a@b",         "a#b",          "a%b", "\x7f",
	};

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		ck_assert_msg(!room_name_valid(bad[i], strlen(bad[i])), "accepted \"%s\"", bad[i]);
}
END_TEST

/* ---- patterns ---- */

START_TEST(test_pattern_star)
{
	ck_assert(room_pattern_match("*", "anything-at:all"));
	ck_assert(room_pattern_match("*", "x"));
	ck_assert(room_pattern_match("*", ""));
	ck_assert(room_pattern_match("**", "abc"));
}
END_TEST

START_TEST(test_pattern_prefix_suffix)
{
	ck_assert(room_pattern_match("order-*", "order-7"));
	ck_assert(room_pattern_match("order-*", "order-"));
	ck_assert(room_pattern_match("order-*", "order-7-extra"));
	ck_assert(!room_pattern_match("order-*", "order"));
	ck_assert(!room_pattern_match("order-*", "orders-7"));
	ck_assert(!room_pattern_match("order-*", "xorder-7"));

	ck_assert(room_pattern_match("*-7", "order-7"));
	ck_assert(room_pattern_match("*-7", "-7"));
	ck_assert(room_pattern_match("*-7", "a-7-7"));
	ck_assert(!room_pattern_match("*-7", "order-77"));
	ck_assert(!room_pattern_match("*-7", "order-7x"));
	ck_assert(!room_pattern_match("*-7", "7"));
}
END_TEST

START_TEST(test_pattern_multi_star)
{
	ck_assert(room_pattern_match("a*b*c", "abc"));
	ck_assert(room_pattern_match("a*b*c", "aXbYc"));
	ck_assert(room_pattern_match("a*b*c", "abbbcc"));
	ck_assert(room_pattern_match("a*b*c", "a-c-b-c"));
	ck_assert(!room_pattern_match("a*b*c", "acb"));
	ck_assert(!room_pattern_match("a*b*c", "ab"));
	ck_assert(!room_pattern_match("a*b*c", "abcd"));
	ck_assert(!room_pattern_match("a*b*c", "xabc"));
}
END_TEST

START_TEST(test_pattern_literal)
{
	ck_assert(room_pattern_match("admins", "admins"));
	ck_assert(!room_pattern_match("admins", "admins2"));
	ck_assert(!room_pattern_match("admins", "admin"));
	ck_assert(!room_pattern_match("admins", "Admins"));
	/* Only '*' is special. */
	ck_assert(room_pattern_match("a?c", "a?c"));
	ck_assert(!room_pattern_match("a?c", "abc"));
	ck_assert(!room_pattern_match("a.c", "abc"));
	/* An empty pattern matches no room. */
	ck_assert(!room_pattern_match("", "r"));
	ck_assert(!room_pattern_match("", "order-7"));
}
END_TEST

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

START_TEST(test_pattern_pathological)
{
	/* Exponential backtracking would never finish; quadratic would take many seconds. */
	enum { N = 200000 };
	char *name = malloc(N + 2);
	double t0;
	bool hit;

	ck_assert_ptr_nonnull(name);
	memset(name, 'a', N);
	name[N] = '\0';
	t0 = now_s();
	hit = room_pattern_match("a*a*a*a*b", name);
	ck_assert(!hit);
	name[N] = 'b';
	name[N + 1] = '\0';
	hit = room_pattern_match("a*a*a*a*b", name);
	ck_assert(hit);
	ck_assert(!room_pattern_match("*a*a*a*a*a*a*a*a*c", name));
	ck_assert_msg(now_s() - t0 < 1.0, "pattern matching took %.3f s", now_s() - t0);
	free(name);
}
END_TEST

/* ---- membership ---- */

START_TEST(test_join_leave_basic)
{
	struct room_member a = {0}, b = {0};

	ck_assert_uint_eq(room_count(), 0);
	ck_assert_int_eq(room_join("order-7", &a), 0);
	ck_assert_uint_eq(room_count(), 1);
	ck_assert_ptr_nonnull(room_find("order-7"));
	ck_assert(room_is_member(&a, "order-7"));
	ck_assert(!room_is_member(&b, "order-7"));
	ck_assert(!room_is_member(&a, "order-8"));

	/* Rejoin is a no-op that says so. */
	ck_assert_int_eq(room_join("order-7", &a), 1);
	ck_assert_uint_eq(a.nsubs, 1);
	ck_assert_uint_eq(check_room_links("order-7"), 1);

	ck_assert_int_eq(room_join("order-7", &b), 0);
	ck_assert_uint_eq(check_room_links("order-7"), 2);

	/* Leaving a room one is not in, or one that does not exist. */
	ck_assert_int_eq(room_leave("order-8", &a), 1);
	ck_assert_int_eq(room_join("other", &b), 0);
	ck_assert_int_eq(room_leave("other", &a), 1);
	ck_assert_uint_eq(room_count(), 2);
	ck_assert_uint_eq(check_room_links("other"), 1);

	ck_assert_int_eq(room_leave("order-7", &a), 0);
	ck_assert_int_eq(room_leave("order-7", &a), 1);
	ck_assert(!room_is_member(&a, "order-7"));
	ck_assert_uint_eq(a.nsubs, 0);
	ck_assert_uint_eq(check_room_links("order-7"), 1);

	room_leave_all(&a);
	room_leave_all(&b);
	ck_assert_uint_eq(room_count(), 0);
}
END_TEST

START_TEST(test_empty_room_freed)
{
	struct room_member a = {0};

	ck_assert_int_eq(room_join("x", &a), 0);
	ck_assert_int_eq(room_join("y", &a), 0);
	ck_assert_uint_eq(room_count(), 2);
	ck_assert_int_eq(room_leave("x", &a), 0);
	ck_assert_ptr_null(room_find("x"));
	ck_assert_ptr_nonnull(room_find("y"));
	ck_assert_uint_eq(room_count(), 1);
	ck_assert_int_eq(room_leave("y", &a), 0);
	ck_assert_ptr_null(room_find("y"));
	ck_assert_uint_eq(room_count(), 0);

	/* A freed room comes back empty-handed when rejoined. */
	ck_assert_int_eq(room_join("x", &a), 0);
	ck_assert_uint_eq(check_room_links("x"), 1);
	room_leave_all(&a);
	ck_assert_ptr_null(a.subs.many);
	ck_assert_uint_eq(a.nsubs, 0);
	ck_assert_uint_eq(a.capsubs, 0);
	ck_assert_uint_eq(room_count(), 0);
}
END_TEST

START_TEST(test_many_members)
{
	struct room_member *m = calloc(NMEMBERS, sizeof(*m));
	char name[32];
	uint32_t want = 0;

	ck_assert_ptr_nonnull(m);
	for (int i = 0; i < NMEMBERS; i++) {
		snprintf(name, sizeof(name), "small-%d", i % 10);
		if (room_join("big", &m[i]) != 0 || room_join(name, &m[i]) != 0)
			ck_abort_msg("join of member %d failed", i);
	}
	for (int i = 0; i < NMEMBERS; i += 7)
		if (room_join("big", &m[i]) != 1)
			ck_abort_msg("rejoin of member %d did not return 1", i);
	ck_assert_uint_eq(room_count(), 11);
	ck_assert_uint_eq(check_room_links("big"), NMEMBERS);

	/* Remove every other member: swap-removal must keep every pos pointing back. */
	for (int i = 0; i < NMEMBERS; i += 2)
		if (room_leave("big", &m[i]) != 0)
			ck_abort_msg("leave of member %d did not return 0", i);
	for (int i = 0; i < NMEMBERS; i += 2)
		if (room_leave("big", &m[i]) != 1)
			ck_abort_msg("second leave of member %d did not return 1", i);
	ck_assert_uint_eq(check_room_links("big"), NMEMBERS / 2);
	for (int i = 0; i < NMEMBERS; i++) {
		if (room_is_member(&m[i], "big") != (i % 2 == 1))
			ck_abort_msg("member %d: wrong membership of big", i);
		if (m[i].nsubs != (i % 2 ? 2u : 1u))
			ck_abort_msg("member %d: nsubs %u", i, m[i].nsubs);
	}
	for (int k = 0; k < 10; k++) {
		snprintf(name, sizeof(name), "small-%d", k);
		ck_assert_uint_eq(check_room_links(name), NMEMBERS / 10);
	}

	/* leave_all unlinks from every room and frees the emptied ones. */
	for (int i = 0; i < NMEMBERS; i += 3) {
		room_leave_all(&m[i]);
		if (m[i].nsubs != 0 || m[i].subs.many != NULL)
			ck_abort_msg("member %d still linked after leave_all", i);
	}
	for (int i = 1; i < NMEMBERS; i += 2)
		want += i % 3 != 0;
	ck_assert_uint_eq(check_room_links("big"), want);
	for (int k = 0; k < 10; k++) {
		snprintf(name, sizeof(name), "small-%d", k);
		check_room_links(name);
	}
	for (int i = 0; i < NMEMBERS; i++)
		room_leave_all(&m[i]);
	ck_assert_uint_eq(room_count(), 0);
	ck_assert_ptr_null(room_find("big"));
	ck_assert_ptr_null(room_find("small-0"));
	free(m);
}
END_TEST

START_TEST(test_member_many_rooms)
{
	struct room_member a = {0}, b = {0};
	char name[32];

	for (int k = 0; k < 100; k++) {
		snprintf(name, sizeof(name), "r%d", k);
		ck_assert_int_eq(room_join(name, &a), 0);
		if (k % 2)
			ck_assert_int_eq(room_join(name, &b), 0);
	}
	ck_assert_uint_eq(a.nsubs, 100);
	ck_assert_uint_eq(b.nsubs, 50);
	ck_assert_uint_eq(room_count(), 100);
	room_leave_all(&a);
	ck_assert_uint_eq(room_count(), 50);
	for (int k = 0; k < 100; k++) {
		snprintf(name, sizeof(name), "r%d", k);
		if (k % 2) {
			ck_assert_uint_eq(check_room_links(name), 1);
			ck_assert(room_is_member(&b, name));
		} else {
			ck_assert_ptr_null(room_find(name));
		}
	}
	room_leave_all(&b);
	ck_assert_uint_eq(room_count(), 0);
}
END_TEST

/* room_foreach callback: counts rooms. */
static void count_room_once(const struct room *r, void *arg)
{
	(void)r;
	++*(size_t *)arg;
}

/* The registry through several growths, with removals from the middle of its chains: every
 * room stays findable by name, gone rooms are not found, foreach visits each once. */
START_TEST(test_registry_many_rooms)
{
	enum { NR = 5000 };
	static struct room_member m[NR];
	char name[32];
	size_t visits = 0;

	memset(m, 0, sizeof(m));
	for (int k = 0; k < NR; k++) {
		snprintf(name, sizeof(name), "user-%d", k);
		ck_assert_int_eq(room_join(name, &m[k]), 0);
	}
	ck_assert_uint_eq(room_count(), NR);
	for (int k = 0; k < NR; k += 3) {
		snprintf(name, sizeof(name), "user-%d", k);
		ck_assert_int_eq(room_leave(name, &m[k]), 0);
	}
	for (int k = 0; k < NR; k++) {
		snprintf(name, sizeof(name), "user-%d", k);
		if (k % 3 == 0) {
			ck_assert_ptr_null(room_find(name));
		} else {
			ck_assert_uint_eq(check_room_links(name), 1);
			ck_assert(room_is_member(&m[k], name));
		}
	}
	room_foreach(count_room_once, &visits);
	ck_assert_uint_eq(visits, NR - (NR + 2) / 3);
	ck_assert_uint_eq(room_count(), visits);
	room_reset();
	ck_assert_uint_eq(room_count(), 0);
	ck_assert_ptr_null(room_find("user-1"));
}
END_TEST

static void count_room(const struct room *r, void *arg)
{
	uint32_t n;

	room_members(r, &n);
	*(size_t *)arg += n;
}

START_TEST(test_foreach)
{
	struct room_member a = {0}, b = {0};
	size_t links = 0;

	ck_assert_int_eq(room_join("p", &a), 0);
	ck_assert_int_eq(room_join("q", &a), 0);
	ck_assert_int_eq(room_join("q", &b), 0);
	room_foreach(count_room, &links);
	ck_assert_uint_eq(links, 3);
	room_leave_all(&a);
	room_leave_all(&b);
}
END_TEST

START_TEST(test_reset)
{
	struct room_member a = {0}, b = {0};

	ck_assert_int_eq(room_join("p", &a), 0);
	ck_assert_int_eq(room_join("q", &a), 0);
	ck_assert_int_eq(room_join("q", &b), 0);
	ck_assert_int_eq(room_join("s", &b), 0);
	room_reset();
	ck_assert_uint_eq(room_count(), 0);
	ck_assert_ptr_null(room_find("p"));
	ck_assert_ptr_null(room_find("q"));
	ck_assert_uint_eq(a.nsubs, 0);
	ck_assert_uint_eq(b.nsubs, 0);
	ck_assert(!room_is_member(&a, "q"));

	/* Members stay usable after a reset. */
	ck_assert_int_eq(room_join("q", &a), 0);
	ck_assert_int_eq(room_join("q", &b), 0);
	ck_assert_uint_eq(check_room_links("q"), 2);
	room_leave_all(&a);
	room_leave_all(&b);
	ck_assert_uint_eq(room_count(), 0);
}
END_TEST

/* The bus's life hook: one "appeared" per room with its first member, one "gone" when the
 * last one leaves, however the members come and go. */
static char g_life_log[512];

static void log_life(const char *name, bool exists)
{
	size_t n = strlen(g_life_log);
	snprintf(g_life_log + n, sizeof(g_life_log) - n, "%s%s ", exists ? "+" : "-", name);
}

START_TEST(test_life_hook)
{
	struct room_member a = {0}, b = {0};

	g_life_log[0] = '\0';
	room_set_life_hook(log_life);
	ck_assert_int_eq(room_join("p", &a), 0);
	ck_assert_int_eq(room_join("p", &b), 0);
	ck_assert_int_eq(room_join("p", &a), 1); /* repeated: nothing */
	ck_assert_int_eq(room_join("q", &b), 0);
	ck_assert_int_eq(room_leave("p", &a), 0);
	ck_assert_int_eq(room_leave("p", &a), 1);
	ck_assert_int_eq(room_leave("p", &b), 0);
	ck_assert_int_eq(room_join("p", &a), 0);
	room_leave_all(&b);
	room_leave_all(&a);
	ck_assert_str_eq(g_life_log, "+p +q -p +p -q -p ");
	ck_assert_int_eq(room_join("r", &a), 0);
	room_reset();
	ck_assert_str_eq(g_life_log, "+p +q -p +p -q -p +r -r ");
	room_set_life_hook(NULL);
	room_leave_all(&a);
}
END_TEST

static Suite *room_suite(void)
{
	Suite *s = suite_create("room");
	TCase *n = tcase_create("names");
	TCase *p = tcase_create("patterns");
	TCase *m = tcase_create("membership");

	tcase_add_test(n, test_name_valid);
	tcase_add_test(n, test_name_invalid_chars);
	suite_add_tcase(s, n);

	tcase_add_test(p, test_pattern_star);
	tcase_add_test(p, test_pattern_prefix_suffix);
	tcase_add_test(p, test_pattern_multi_star);
	tcase_add_test(p, test_pattern_literal);
	tcase_add_test(p, test_pattern_pathological);
	suite_add_tcase(s, p);

	tcase_add_checked_fixture(m, NULL, teardown);
	tcase_add_test(m, test_join_leave_basic);
	tcase_add_test(m, test_empty_room_freed);
	tcase_add_test(m, test_many_members);
	tcase_add_test(m, test_member_many_rooms);
	tcase_add_test(m, test_registry_many_rooms);
	tcase_add_test(m, test_foreach);
	tcase_add_test(m, test_reset);
	tcase_add_test(m, test_life_hook);
	suite_add_tcase(s, m);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(room_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
