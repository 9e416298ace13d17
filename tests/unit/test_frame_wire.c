/* Unit tests for the wire side of src/frame.c: the WebSocket header built into a frame's
 * headroom (length boundaries 0, 125, 126, 65535, 65536, decoded back as a client would), the
 * header built once and shared, the writev split bookkeeping, and pushing back at the head. */
#include "frame.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

/* Decodes an unmasked server frame header as RFC 6455 section 5.2 reads it; returns the header
 * length and stores the payload length, or returns 0 for anything but a final text frame. */
static size_t decode(const unsigned char *p, uint64_t *len)
{
	size_t h = 2;

	if (p[0] != 0x81 || (p[1] & 0x80))
		return 0;
	*len = p[1] & 0x7f;
	if (*len == 126) {
		*len = (uint64_t)p[2] << 8 | p[3];
		h = 4;
	} else if (*len == 127) {
		*len = 0;
		for (int i = 0; i < 8; i++)
			*len = *len << 8 | p[2 + i];
		h = 10;
	}
	return h;
}

START_TEST(test_header_boundaries)
{
	/* Each length with the header size RFC 6455 requires: the shortest form that holds it. */
	static const struct {
		uint64_t len;
		size_t hlen;
	} cases[] = {{0, 2},     {1, 2},      {125, 2},    {126, 4},        {127, 4},
	             {65535, 4}, {65536, 10}, {70000, 10}, {1ull << 32, 10}};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		unsigned char hdr[FRAME_WS_HDR_MAX];
		uint64_t got = 0;
		size_t n = frame_ws_header(hdr, cases[i].len);
		ck_assert_uint_eq(n, cases[i].hlen);
		ck_assert_uint_eq(decode(hdr, &got), n);
		ck_assert_uint_eq(got, cases[i].len);
	}
}
END_TEST

START_TEST(test_frame_wire_bytes)
{
	static const size_t lens[] = {0, 125, 126, 65535, 65536};

	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		struct frame *f = frame_alloc(lens[i]);
		unsigned char *w, *again;
		size_t wlen = 0, wlen2 = 0;
		uint64_t plen = 0;
		size_t h;

		ck_assert_ptr_nonnull(f);
		memset(frame_data(f), 'a' + (int)i, lens[i]);
		w = frame_wire(f, &wlen);
		h = decode(w, &plen);
		ck_assert_uint_ne(h, 0);
		ck_assert_uint_eq(plen, lens[i]);
		ck_assert_uint_eq(wlen, h + lens[i]);
		/* The header sits right before the payload, inside the headroom. */
		ck_assert_ptr_eq(w + h, frame_data(f));
		ck_assert(w >= f->buf);
		/* Built once: a second recipient gets the very same bytes. */
		again = frame_wire(f, &wlen2);
		ck_assert_ptr_eq(again, w);
		ck_assert_uint_eq(wlen2, wlen);
		ck_assert_uint_eq(f->wire_hlen, h);
		frame_unref(f);
	}
}
END_TEST

START_TEST(test_sent_split)
{
	static const size_t lens[] = {10, 20, 5};
	size_t cut = 99;

	ck_assert_uint_eq(frame_sent_split(lens, 3, 0, &cut), 0);
	ck_assert_uint_eq(cut, 0);
	ck_assert_uint_eq(frame_sent_split(lens, 3, 7, &cut), 0);
	ck_assert_uint_eq(cut, 7);
	ck_assert_uint_eq(frame_sent_split(lens, 3, 10, &cut), 1);
	ck_assert_uint_eq(cut, 0);
	ck_assert_uint_eq(frame_sent_split(lens, 3, 11, &cut), 1);
	ck_assert_uint_eq(cut, 1);
	ck_assert_uint_eq(frame_sent_split(lens, 3, 29, &cut), 1);
	ck_assert_uint_eq(cut, 19);
	ck_assert_uint_eq(frame_sent_split(lens, 3, 30, &cut), 2);
	ck_assert_uint_eq(cut, 0);
	ck_assert_uint_eq(frame_sent_split(lens, 3, 35, &cut), 3);
	ck_assert_uint_eq(cut, 0);
	ck_assert_uint_eq(frame_sent_split(lens, 0, 0, &cut), 0);
	ck_assert_uint_eq(cut, 0);
}
END_TEST

START_TEST(test_push_front)
{
	struct frame_queue q;
	struct frame *a = frame_new("a", 1), *bb = frame_new("bb", 2), *ccc = frame_new("ccc", 3);

	frame_queue_init(&q);
	/* Into an empty queue, then in front of queued frames across growth and wraparound. */
	ck_assert_int_eq(frame_queue_push_front(&q, bb), 0);
	ck_assert_int_eq(frame_queue_push(&q, ccc), 0);
	ck_assert_int_eq(frame_queue_push_front(&q, a), 0);
	for (int i = 0; i < 5; i++)
		ck_assert_int_eq(frame_queue_push(&q, ccc), 0);
	ck_assert_int_eq(frame_queue_push_front(&q, bb), 0);
	ck_assert_uint_eq(frame_queue_count(&q), 9);
	ck_assert_uint_eq(frame_queue_bytes(&q), 2 + 1 + 2 + 3 * 6);
	ck_assert_ptr_eq(frame_queue_peek(&q, 0), bb);
	ck_assert_ptr_eq(frame_queue_peek(&q, 1), a);
	ck_assert_ptr_eq(frame_queue_peek(&q, 2), bb);
	ck_assert_ptr_eq(frame_queue_peek(&q, 3), ccc);
	ck_assert_ptr_eq(frame_queue_peek(&q, 8), ccc);
	ck_assert_uint_eq(bb->refs, 3);
	frame_queue_clear(&q);
	ck_assert_uint_eq(a->refs, 1);
	ck_assert_uint_eq(bb->refs, 1);
	ck_assert_uint_eq(ccc->refs, 1);
	frame_unref(a);
	frame_unref(bb);
	frame_unref(ccc);
}
END_TEST

static Suite *wire_suite(void)
{
	Suite *s = suite_create("frame_wire");
	TCase *t = tcase_create("wire");

	tcase_add_test(t, test_header_boundaries);
	tcase_add_test(t, test_frame_wire_bytes);
	tcase_add_test(t, test_sent_split);
	tcase_add_test(t, test_push_front);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(wire_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
