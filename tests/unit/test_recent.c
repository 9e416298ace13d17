/* Unit tests for src/recent.c: when a room's recent-events memory covers a `since` (anchor
 * present, nothing newer dropped, room recorded before), what a lookup hands back (ids above
 * since plus smaller ids delivered after it, in id order, none at or below min_id), eviction
 * per room and by bytes, events delivered out of id order, and since 0 while the memory holds
 * every room's whole history (recent_mark_whole) until it loses an event; positions. */
#include "frame.h"
#include "recent.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int g_builds;

static struct frame *build(const char *room, const char *json, size_t len)
{
	g_builds++;
	return frame_new(json, len);
}

static void rec(const char *room, long long id, bool anchor, long long floor)
{
	const char *rooms[1] = {room};
	char json[64];
	int n = snprintf(json, sizeof(json), "{\"id\":%lld}", id);
	recent_record(rooms, 1, id, json, (size_t)n, anchor, floor);
}

/* The lookup's ids as "a,b,c" ("-" when not covered). */
static const char *look(const char *room, long long since, long long min_id)
{
	static char out[256];
	long long *ids;
	struct frame **frames;
	size_t n, len = 0;
	bool covers = recent_covers(room, since);
	int rc = recent_lookup(room, since, min_id, build, &ids, &frames, &n);

	ck_assert_int_ge(rc, 0);
	ck_assert_int_eq(rc == 1, covers);
	if (rc == 0)
		return "-";
	out[0] = 0;
	for (size_t i = 0; i < n; i++) {
		char want[64];
		snprintf(want, sizeof(want), "{\"id\":%lld}", ids[i]);
		ck_assert_str_eq((const char *)frame_data(frames[i]), want);
		len +=
		    (size_t)snprintf(out + len, sizeof(out) - len, "%s%lld", i ? "," : "", ids[i]);
		frame_unref(frames[i]);
	}
	free(ids);
	free(frames);
	return out;
}

START_TEST(test_covers_from_anchor)
{
	recent_setup(8, 1 << 20);
	rec("a", 10, true, 0);
	rec("a", 11, true, 10);
	rec("a", 12, true, 11);
	ck_assert_str_eq(look("a", 10, 0), "11,12");
	ck_assert_str_eq(look("a", 12, 0), "");
	/* Not an id of the room (or nothing recorded for it): unknown position, query. */
	ck_assert_str_eq(look("a", 9, 0), "-");
	ck_assert_str_eq(look("a", 13, 0), "-");
	ck_assert_str_eq(look("b", 10, 0), "-");
	/* min_id (the outbox horizon) leaves out what the query would no longer find. */
	ck_assert_str_eq(look("a", 10, 11), "12");
	/* Frames are built once and kept. */
	g_builds = 0;
	ck_assert_str_eq(look("a", 10, 0), "11,12");
	ck_assert_int_eq(g_builds, 0);
	recent_shutdown();
}
END_TEST

START_TEST(test_out_of_order_ids)
{
	recent_setup(8, 1 << 20);
	/* Commit order 10, 12, 11 (11's transaction committed last), then 13. */
	rec("a", 10, true, 0);
	rec("a", 12, true, 10);
	rec("a", 11, true, 12);
	rec("a", 13, true, 12);
	/* A client that saw 12 missed 11 (delivered after 12) and 13; in id order. */
	ck_assert_str_eq(look("a", 12, 0), "11,13");
	/* One that saw 11 had 10 and 12 already; 12 is repeated (a higher id, as the query). */
	ck_assert_str_eq(look("a", 11, 0), "12,13");
	ck_assert_str_eq(look("a", 10, 0), "11,12,13");
	recent_shutdown();
}
END_TEST

START_TEST(test_not_an_anchor)
{
	recent_setup(8, 1 << 20);
	rec("a", 10, true, 0);
	rec("a", 11, false, 10); /* delivered by a catch-up, before its order settled */
	rec("a", 12, true, 11);
	ck_assert_str_eq(look("a", 11, 0), "-");
	ck_assert_str_eq(look("a", 10, 0), "11,12");
	ck_assert_str_eq(look("a", 12, 0), "");
	recent_shutdown();
}
END_TEST

START_TEST(test_eviction_per_room)
{
	recent_setup(3, 1 << 20);
	for (long long id = 1; id <= 5; id++)
		rec("a", id, true, id - 1);
	/* 1 and 2 evicted: a since of 2 or before is not covered any more. */
	ck_assert_str_eq(look("a", 1, 0), "-");
	ck_assert_str_eq(look("a", 2, 0), "-");
	ck_assert_str_eq(look("a", 3, 0), "4,5");
	recent_shutdown();
}
END_TEST

START_TEST(test_evicted_higher_id_uncovers)
{
	recent_setup(2, 1 << 20);
	/* 20 committed first, then 15, 16: evicting 20 drops an id above 15 and 16. */
	rec("a", 20, true, 0);
	rec("a", 15, true, 20);
	rec("a", 16, true, 20);
	ck_assert_str_eq(look("a", 15, 0), "-");
	ck_assert_str_eq(look("a", 16, 0), "-");
	rec("a", 21, true, 20);
	/* 15 evicted, floor 20 now: only sinces at or above 20 can be covered. */
	ck_assert_str_eq(look("a", 16, 0), "-");
	ck_assert_str_eq(look("a", 21, 0), "");
	recent_shutdown();
}
END_TEST

START_TEST(test_room_recorded_late)
{
	recent_setup(8, 1 << 20);
	/* The room is first recorded with 30 while 35 (another room's, or this one's before the
	 * memory existed) was delivered already: 30 cannot anchor, 36 can. */
	rec("a", 30, true, 35);
	rec("a", 36, true, 35);
	ck_assert_str_eq(look("a", 30, 0), "-");
	ck_assert_str_eq(look("a", 36, 0), "");
	recent_shutdown();
}
END_TEST

START_TEST(test_byte_bound)
{
	size_t bound = 4096;

	recent_setup(1000, bound);
	for (long long id = 1; id <= 200; id++) {
		rec(id % 2 ? "a" : "b", id, true, id - 1);
		ck_assert_uint_le(recent_bytes(), bound);
	}
	/* The oldest went, in both rooms; the newest are covered. */
	ck_assert_str_eq(look("a", 1, 0), "-");
	ck_assert_str_eq(look("a", 197, 0), "199");
	ck_assert_str_eq(look("b", 198, 0), "200");
	ck_assert_uint_le(recent_bytes(), bound);
	ck_assert_uint_eq(recent_rooms(), 2);
	/* An event larger than half the bound is not kept and its room forgets what it had. */
	{
		const char *rooms[1] = {"a"};
		char *big = malloc(bound);
		memset(big, 'x', bound);
		recent_record(rooms, 1, 201, big, bound, true, 200);
		free(big);
	}
	ck_assert_str_eq(look("a", 199, 0), "-");
	rec("a", 202, true, 201);
	ck_assert_str_eq(look("a", 199, 0), "-");
	ck_assert_str_eq(look("a", 202, 0), "");
	recent_clear();
	ck_assert_uint_eq(recent_rooms(), 0);
	ck_assert_uint_eq(recent_bytes(), 0);
	recent_shutdown();
}
END_TEST

START_TEST(test_disabled)
{
	recent_setup(0, 1 << 20);
	rec("a", 1, true, 0);
	rec("a", 2, true, 1);
	ck_assert(!recent_enabled());
	ck_assert_str_eq(look("a", 1, 0), "-");
	recent_setup(8, 0);
	rec("a", 3, true, 2);
	ck_assert_str_eq(look("a", 3, 0), "-");
	ck_assert_uint_eq(recent_bytes(), 0);
	recent_shutdown();
}
END_TEST

START_TEST(test_several_rooms_share_an_event)
{
	const char *rooms[2] = {"a", "b"};

	recent_setup(8, 1 << 20);
	rec("a", 1, true, 0);
	rec("b", 2, true, 1);
	recent_record(rooms, 2, 3, "{\"id\":3}", 8, true, 2);
	ck_assert_str_eq(look("a", 1, 0), "3");
	ck_assert_str_eq(look("b", 2, 0), "3");
	recent_shutdown();
}
END_TEST

/* A position (pgl_position) noted with its delivery point: a room answers since = it with what
 * was delivered to it after that point (and ids above it), while it holds all of that. */
START_TEST(test_position)
{
	uint64_t at;

	recent_setup(2, 1 << 20);
	rec("other", 50, true, 0);
	at = recent_seq();
	recent_note_position(50, at);
	/* Not handed out: unknown. */
	ck_assert_str_eq(look("a", 49, 0), "-");
	/* A room with no event since: covered, nothing to replay. */
	ck_assert_str_eq(look("a", 50, 0), "");
	rec("a", 52, true, 50);
	rec("a", 49, false, 52); /* committed out of order, delivered after the position */
	ck_assert_str_eq(look("a", 50, 0), "49,52");
	ck_assert_str_eq(look("a", 50, 49), "52");
	/* Evicting an event delivered after the position uncovers the room only. */
	rec("a", 53, true, 52);
	ck_assert_str_eq(look("a", 50, 0), "-");
	ck_assert_str_eq(look("b", 50, 0), "");
	/* A later position, after the eviction, is covered again. */
	recent_note_position(53, recent_seq());
	ck_assert_str_eq(look("a", 53, 0), "");
	rec("a", 54, true, 53);
	ck_assert_str_eq(look("a", 53, 0), "54");
	/* Positions only move forward. */
	recent_note_position(51, recent_seq());
	ck_assert_str_eq(look("a", 51, 0), "-");
	/* A clear (as any room memory emptying) uncovers rooms without memory too. */
	recent_note_position(60, recent_seq());
	ck_assert_str_eq(look("c", 60, 0), "");
	recent_clear();
	ck_assert_str_eq(look("c", 60, 0), "-");
	recent_note_position(61, 0); /* a delivery point before the clear */
	ck_assert_str_eq(look("c", 61, 0), "-");
	recent_shutdown();
}
END_TEST

START_TEST(test_since_zero_whole_history)
{
	recent_setup(2, 1 << 20);
	/* Not marked whole: a client that saw nothing of a room is answered by a query. */
	rec("a", 1, true, 0);
	ck_assert_str_eq(look("a", 0, 0), "-");
	ck_assert_str_eq(look("z", 0, 0), "-");
	recent_clear();
	recent_mark_whole();
	/* Whole: a room's memory is its history (none when it has no ring), not anchors alone. */
	ck_assert_str_eq(look("z", 0, 0), "");
	rec("a", 2, false, 0);
	rec("b", 3, true, 2);
	rec("a", 4, true, 3);
	ck_assert_str_eq(look("a", 0, 0), "2,4");
	ck_assert_str_eq(look("a", 0, 2), "4");
	ck_assert_str_eq(look("b", 0, 0), "3");
	ck_assert_str_eq(look("z", 0, 0), "");
	/* An eviction uncovers its room (per-room bound 2), the others stay whole. */
	rec("a", 5, true, 4);
	ck_assert_str_eq(look("a", 0, 0), "-");
	ck_assert_str_eq(look("a", 4, 0), "5");
	ck_assert_str_eq(look("b", 0, 0), "3");
	ck_assert_str_eq(look("z", 0, 0), "");
	/* A new setup (or clear) forgets the mark; an event not kept drops it for every room. */
	recent_setup(1, 1 << 20);
	recent_mark_whole();
	rec("b", 6, true, 0);
	ck_assert_str_eq(look("b", 0, 0), "6");
	recent_setup(1, 1 << 20); /* setup forgets the mark too */
	ck_assert_str_eq(look("z", 0, 0), "-");
	recent_mark_whole();
	rec("b", 7, true, 0);
	recent_record((const char *const[]){"c"}, 1, 8, "{\"id\":8}", 8, true, 7);
	ck_assert_str_eq(look("c", 0, 0), "8");
	{
		/* an event too large to keep (over half the bytes) drops the mark */
		static char big[1 << 20];
		memset(big, 'x', sizeof(big) - 1);
		recent_record((const char *const[]){"d"}, 1, 9, big, sizeof(big) - 1, true, 8);
	}
	ck_assert_str_eq(look("z", 0, 0), "-");
	ck_assert_str_eq(look("c", 0, 0), "-");
	recent_shutdown();
}
END_TEST

START_TEST(test_since_zero_lost_with_a_whole_room)
{
	size_t one;

	recent_setup(8, 1 << 20);
	recent_mark_whole();
	rec("a", 1, true, 0);
	one = recent_bytes(); /* a room with one event */
	/* Room for one such room, not two: recording b trims a's only event, and a room without
	 * memory no longer proves it had no event. */
	recent_setup(8, one + one / 2);
	recent_mark_whole();
	rec("a", 1, true, 0);
	ck_assert_str_eq(look("a", 0, 0), "1");
	rec("b", 2, true, 1);
	ck_assert_uint_eq(recent_rooms(), 1);
	ck_assert_str_eq(look("a", 0, 0), "-");
	ck_assert_str_eq(look("b", 0, 0), "-");
	ck_assert_str_eq(look("b", 2, 0), ""); /* its anchors still answer */
	recent_shutdown();
}
END_TEST

static Suite *recent_suite(void)
{
	Suite *s = suite_create("recent");
	TCase *c = tcase_create("recent");

	tcase_add_test(c, test_covers_from_anchor);
	tcase_add_test(c, test_out_of_order_ids);
	tcase_add_test(c, test_not_an_anchor);
	tcase_add_test(c, test_eviction_per_room);
	tcase_add_test(c, test_evicted_higher_id_uncovers);
	tcase_add_test(c, test_room_recorded_late);
	tcase_add_test(c, test_byte_bound);
	tcase_add_test(c, test_disabled);
	tcase_add_test(c, test_several_rooms_share_an_event);
	tcase_add_test(c, test_since_zero_whole_history);
	tcase_add_test(c, test_since_zero_lost_with_a_whole_room);
	tcase_add_test(c, test_position);
	suite_add_tcase(s, c);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(recent_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
