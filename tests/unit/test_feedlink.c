/* Unit tests for src/feedlink.c: the frame reader refuses short frames, strings without their
 * NUL and lengths past the end; SQL NULL round-trips; over a socketpair, frames written in
 * pieces arrive whole and in order, and a frame announcing more than FEEDLINK_FRAME_MAX closes the
 * link. */
#include "buf.h"
#include "feedlink.h"

#include <check.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static struct feedlink_rd body_of(struct buf *b)
{
	/* Skips the length and the type byte, as the link does. */
	struct feedlink_rd r = {b->data + 5, b->len - 5, false};
	return r;
}

START_TEST(reader_round_trip)
{
	struct buf b;
	struct feedlink_rd r;
	uint32_t len;
	const char *s;

	feedlink_frame_begin(&b, 'Q');
	feedlink_put_u32(&b, 42);
	feedlink_put_str(&b, "SELECT 1");
	feedlink_put_str(&b, NULL);
	feedlink_put_bytes(&b, "ab\0c", 4);
	r = body_of(&b);
	ck_assert_uint_eq(feedlink_get_u32(&r), 42);
	s = feedlink_get_str(&r, &len);
	ck_assert_str_eq(s, "SELECT 1");
	ck_assert_uint_eq(len, 8);
	ck_assert_ptr_null(feedlink_get_str(&r, NULL));
	ck_assert(!r.bad); /* NULL, not a bad frame */
	s = feedlink_get_str(&r, &len);
	ck_assert_uint_eq(len, 4);
	ck_assert(!memcmp(s, "ab\0c", 4));
	ck_assert_uint_eq(r.left, 0);
	feedlink_get_u32(&r);
	ck_assert(r.bad); /* past the end */
	buf_free(&b);
}
END_TEST

START_TEST(reader_refuses_bad_strings)
{
	struct buf b;
	struct feedlink_rd r;

	/* A string whose length runs past the frame. */
	feedlink_frame_begin(&b, 'Q');
	feedlink_put_u32(&b, 100);
	buf_put(&b, "abc", 4);
	r = body_of(&b);
	ck_assert_ptr_null(feedlink_get_str(&r, NULL));
	ck_assert(r.bad);
	buf_free(&b);

	/* One without its NUL. */
	feedlink_frame_begin(&b, 'Q');
	feedlink_put_u32(&b, 3);
	buf_put(&b, "abc", 3);
	r = body_of(&b);
	ck_assert_ptr_null(feedlink_get_str(&r, NULL));
	ck_assert(r.bad);
	buf_free(&b);

	/* A zero length (not even the NUL). */
	feedlink_frame_begin(&b, 'Q');
	feedlink_put_u32(&b, 0);
	r = body_of(&b);
	ck_assert_ptr_null(feedlink_get_str(&r, NULL));
	ck_assert(r.bad);
	buf_free(&b);
}
END_TEST

static int g_frames, g_closed;
static uint32_t g_last;

static void on_frame(struct feedlink *l, char type, struct feedlink_rd *r)
{
	ck_assert_int_eq(type, 'N');
	g_last = feedlink_get_u32(r);
	ck_assert_uint_eq(g_last, (uint32_t)g_frames);
	ck_assert_str_eq(feedlink_get_str(r, NULL), "payload");
	ck_assert(!r->bad);
	g_frames++;
}

static void on_closed(struct feedlink *l)
{
	g_closed++;
}

START_TEST(link_reassembles_frames_and_drops_oversized)
{
	uv_loop_t loop;
	struct feedlink l;
	int sv[2];
	struct buf all;
	uint32_t huge = FEEDLINK_FRAME_MAX + 1;

	g_frames = g_closed = 0;
	ck_assert_int_eq(uv_loop_init(&loop), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(feedlink_open(&l, &loop, sv[0], NULL, on_frame, on_closed, NULL), 0);
	/* 50 frames written one byte at a time. */
	buf_init(&all);
	for (uint32_t i = 0; i < 50; i++) {
		struct buf b;
		uint32_t len;
		feedlink_frame_begin(&b, 'N');
		feedlink_put_u32(&b, i);
		feedlink_put_str(&b, "payload");
		len = (uint32_t)(b.len - 4);
		memcpy(b.data, &len, 4);
		buf_put(&all, b.data, b.len);
		buf_free(&b);
	}
	for (size_t i = 0; i < all.len; i++) {
		ck_assert_int_eq(write(sv[1], all.data + i, 1), 1);
		if (i % 7 == 0)
			uv_run(&loop, UV_RUN_NOWAIT);
	}
	while (g_frames < 50)
		uv_run(&loop, UV_RUN_ONCE);
	ck_assert_int_eq(g_closed, 0);
	/* A frame larger than any legitimate one ends the link. */
	ck_assert_int_eq(write(sv[1], &huge, 4), 4);
	while (!g_closed)
		uv_run(&loop, UV_RUN_ONCE);
	ck_assert_int_eq(g_frames, 50);
	buf_free(&all);
	close(sv[1]);
	uv_run(&loop, UV_RUN_DEFAULT);
	ck_assert_int_eq(uv_loop_close(&loop), 0);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("feedlink");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, reader_round_trip);
	tcase_add_test(tc, reader_refuses_bad_strings);
	tcase_add_test(tc, link_reassembles_frames_and_drops_oversized);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? 1 : 0;
}
