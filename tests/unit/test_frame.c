/* Unit tests for src/frame.c: frame allocation (copy, NUL, FRAME_PRE headroom), reference counts
 * across several queues, and the ring queue's order and count/byte accounting through wraparound
 * and growth. Run under ASan to prove frames are freed exactly once, after the last reference. */
#include "frame.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A frame whose payload is the decimal id padded with '#' to id + 1 bytes, so each one has its
 * own length and content. */
static struct frame *numbered(int id)
{
	char buf[256];
	size_t len = (size_t)id + 1;
	int n;

	ck_assert_uint_lt(len, sizeof(buf));
	n = snprintf(buf, sizeof(buf), "%d", id);
	ck_assert_uint_le((size_t)n, len);
	memset(buf + n, '#', sizeof(buf) - (size_t)n);
	return frame_new(buf, len);
}

static int frame_id(struct frame *f)
{
	return atoi((const char *)frame_data(f));
}

/* Asserts the queue holds ids first..last in order, with exact count and bytes. */
static void expect_queue(const struct frame_queue *q, int first, int last)
{
	size_t bytes = 0;
	uint32_t n = (uint32_t)(last - first + 1);

	ck_assert_uint_eq(frame_queue_count(q), n);
	for (uint32_t i = 0; i < n; i++) {
		struct frame *f = frame_queue_peek(q, i);
		ck_assert_ptr_nonnull(f);
		ck_assert_int_eq(frame_id(f), first + (int)i);
		bytes += f->len;
	}
	ck_assert_ptr_null(frame_queue_peek(q, n));
	ck_assert_uint_eq(frame_queue_bytes(q), bytes);
}

/* Pushes fresh frames first..last; the queue ends up holding the only reference. */
static void push_range(struct frame_queue *q, int first, int last)
{
	for (int id = first; id <= last; id++) {
		struct frame *f = numbered(id);
		ck_assert_ptr_nonnull(f);
		ck_assert_int_eq(frame_queue_push(q, f), 0);
		ck_assert_uint_eq(f->refs, 2);
		frame_unref(f);
	}
}

/* Pops n frames, expecting ids first, first+1, ...; each popped frame is the last reference. */
static void pop_range(struct frame_queue *q, int first, int n)
{
	for (int i = 0; i < n; i++) {
		size_t before = frame_queue_bytes(q);
		struct frame *f = frame_queue_pop(q);
		ck_assert_ptr_nonnull(f);
		ck_assert_int_eq(frame_id(f), first + i);
		ck_assert_uint_eq(f->refs, 1);
		ck_assert_uint_eq(frame_queue_bytes(q), before - f->len);
		frame_unref(f);
	}
}

START_TEST(test_frame_new)
{
	static const char text[] = "hello, world";
	struct frame *f = frame_new(text, 5);

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(f->refs, 1);
	ck_assert_uint_eq(f->len, 5);
	ck_assert_uint_eq(f->flags, 0);
	ck_assert_uint_eq(f->born_ns, 0);
	ck_assert_ptr_eq(frame_data(f), f->buf + FRAME_PRE);
	ck_assert_int_eq(memcmp(frame_data(f), "hello", 5), 0);
	/* NUL right after the payload even though the source had none there. */
	ck_assert_int_eq(frame_data(f)[5], '\0');
	ck_assert_str_eq((const char *)frame_data(f), "hello");
	/* The headroom is writable (ASan flags it otherwise) and separate from the payload. */
	memset(f->buf, 0xAA, FRAME_PRE);
	ck_assert_str_eq((const char *)frame_data(f), "hello");
	frame_unref(f);
}
END_TEST

START_TEST(test_frame_new_empty_and_binary)
{
	static const unsigned char bin[] = {0, 1, 2, 0, 255};
	struct frame *f = frame_new("", 0);

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(f->len, 0);
	ck_assert_int_eq(frame_data(f)[0], '\0');
	frame_unref(f);

	f = frame_new(bin, sizeof(bin));
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(f->len, sizeof(bin));
	ck_assert_int_eq(memcmp(frame_data(f), bin, sizeof(bin)), 0);
	ck_assert_int_eq(frame_data(f)[sizeof(bin)], '\0');
	frame_unref(f);
}
END_TEST

START_TEST(test_frame_alloc)
{
	struct frame *f = frame_alloc(100);

	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(f->refs, 1);
	ck_assert_uint_eq(f->len, 100);
	ck_assert_int_eq(frame_data(f)[100], '\0');
	/* The whole headroom + payload is writable. */
	memset(f->buf, 'p', FRAME_PRE);
	memset(frame_data(f), 'x', 100);
	ck_assert_uint_eq(strlen((const char *)frame_data(f)), 100);
	frame_unref(f);

	ck_assert_ptr_null(frame_alloc((size_t)UINT32_MAX));
	frame_unref(NULL);
}
END_TEST

START_TEST(test_refcount_shared)
{
	struct frame_queue q[3];
	struct frame *f = frame_new("shared", 6), *g;

	ck_assert_ptr_nonnull(f);
	for (int i = 0; i < 3; i++) {
		frame_queue_init(&q[i]);
		ck_assert_int_eq(frame_queue_push(&q[i], f), 0);
		ck_assert_uint_eq(f->refs, (uint32_t)i + 2);
	}
	ck_assert_ptr_eq(frame_ref(f), f);
	ck_assert_uint_eq(f->refs, 5);
	frame_unref(f);
	/* Drop the creator's reference: the queues keep it alive. */
	frame_unref(f);
	ck_assert_uint_eq(f->refs, 3);

	g = frame_queue_pop(&q[0]);
	ck_assert_ptr_eq(g, f);
	ck_assert_uint_eq(g->refs, 3);
	frame_unref(g);
	ck_assert_uint_eq(f->refs, 2);

	frame_queue_clear(&q[1]);
	ck_assert_uint_eq(f->refs, 1);
	/* Still readable through the last queue (ASan reports a use-after-free otherwise). */
	g = frame_queue_peek(&q[2], 0);
	ck_assert_ptr_eq(g, f);
	ck_assert_str_eq((const char *)frame_data(g), "shared");

	g = frame_queue_pop(&q[2]);
	ck_assert_ptr_eq(g, f);
	ck_assert_uint_eq(frame_queue_bytes(&q[2]), 0);
	frame_unref(g); /* last reference: freed here; ASan's leak check proves it */
	for (int i = 0; i < 3; i++)
		frame_queue_clear(&q[i]);
}
END_TEST

START_TEST(test_queue_order_and_bytes)
{
	struct frame_queue q;

	frame_queue_init(&q);
	ck_assert_ptr_null(q.r); /* an empty queue allocates nothing until its first push */
	ck_assert_ptr_null(frame_queue_pop(&q));
	ck_assert_ptr_null(frame_queue_peek(&q, 0));
	ck_assert_uint_eq(frame_queue_bytes(&q), 0);
	ck_assert_uint_eq(frame_queue_count(&q), 0);

	push_range(&q, 0, 4);
	expect_queue(&q, 0, 4);
	ck_assert_uint_eq(frame_queue_bytes(&q), 1 + 2 + 3 + 4 + 5);
	pop_range(&q, 0, 3);
	expect_queue(&q, 3, 4);
	ck_assert_uint_eq(frame_queue_bytes(&q), 4 + 5);
	push_range(&q, 5, 14);
	expect_queue(&q, 3, 14);
	ck_assert_uint_eq(frame_queue_count(&q), 12);
	ck_assert_uint_eq(frame_queue_bytes(&q), (4 + 15) * 12 / 2);
	pop_range(&q, 3, 12);
	ck_assert_uint_eq(frame_queue_count(&q), 0);
	ck_assert_uint_eq(frame_queue_bytes(&q), 0);
	ck_assert_ptr_null(frame_queue_pop(&q));
	frame_queue_clear(&q);
}
END_TEST

START_TEST(test_queue_wraparound)
{
	struct frame_queue q;
	uint32_t cap;

	frame_queue_init(&q);
	push_range(&q, 0, 3);
	cap = q.r->cap;
	ck_assert_uint_eq(frame_queue_count(&q),
	                  cap); /* full: the next pushes wrap only after pops */
	pop_range(&q, 0, 2);
	push_range(&q, 4, 5);
	ck_assert_uint_eq(q.r->cap, cap); /* wrapped in place, no growth */
	ck_assert_uint_ne(q.r->head, 0);
	expect_queue(&q, 2, 5);

	/* Growing from a wrapped ring keeps FIFO order. */
	push_range(&q, 6, 8);
	ck_assert_uint_gt(q.r->cap, cap);
	expect_queue(&q, 2, 8);

	/* Many cycles of push 3 / pop 3, the head running round the ring. */
	for (int round = 0; round < 50; round++) {
		int base = 9 + round * 3;
		push_range(&q, base, base + 2);
		pop_range(&q, base - 7, 3);
		expect_queue(&q, base - 4, base + 2);
	}
	frame_queue_clear(&q);
}
END_TEST

START_TEST(test_queue_clear)
{
	struct frame_queue q;
	struct frame *f = frame_new("keep", 4);

	ck_assert_ptr_nonnull(f);
	frame_queue_init(&q);
	for (int i = 0; i < 10; i++)
		ck_assert_int_eq(frame_queue_push(&q, f), 0);
	push_range(&q, 0, 5);
	ck_assert_uint_eq(f->refs, 11);
	ck_assert_uint_eq(frame_queue_count(&q), 16);
	frame_queue_clear(&q);
	ck_assert_uint_eq(f->refs, 1);
	ck_assert_uint_eq(frame_queue_count(&q), 0);
	ck_assert_uint_eq(frame_queue_bytes(&q), 0);
	ck_assert_ptr_null(q.r); /* the ring, counters included, is freed */

	/* The queue is reusable after a clear. */
	ck_assert_int_eq(frame_queue_push(&q, f), 0);
	ck_assert_uint_eq(frame_queue_bytes(&q), 4);
	ck_assert_ptr_eq(frame_queue_peek(&q, 0), f);
	frame_queue_clear(&q);
	frame_queue_clear(&q); /* clearing an empty queue is harmless */
	ck_assert_uint_eq(f->refs, 1);
	frame_unref(f);
}
END_TEST

static Suite *frame_suite(void)
{
	Suite *s = suite_create("frame");
	TCase *f = tcase_create("frame");
	TCase *q = tcase_create("queue");

	tcase_add_test(f, test_frame_new);
	tcase_add_test(f, test_frame_new_empty_and_binary);
	tcase_add_test(f, test_frame_alloc);
	tcase_add_test(f, test_refcount_shared);
	suite_add_tcase(s, f);

	tcase_add_test(q, test_queue_order_and_bytes);
	tcase_add_test(q, test_queue_wraparound);
	tcase_add_test(q, test_queue_clear);
	suite_add_tcase(s, q);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(frame_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
