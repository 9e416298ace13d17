/* Reference-counted frames and the per-connection frame ring. Everything here runs on the one
 * loop thread, so the counts are plain integers. */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

struct frame *frame_alloc(size_t len)
{
	struct frame *f;

	if (len > UINT32_MAX - FRAME_PRE - 1)
		return NULL;
	f = malloc(sizeof(*f) + FRAME_PRE + len + 1);
	if (!f)
		return NULL;
	f->refs = 1;
	f->len = (uint32_t)len;
	f->born_ns = 0;
	f->flags = 0;
	f->alt = NULL;
	f->buf[FRAME_PRE + len] = '\0';
	return f;
}

struct frame *frame_new(const void *data, size_t len)
{
	struct frame *f = frame_alloc(len);
	if (f)
		memcpy(frame_data(f), data, len);
	return f;
}

void frame_unref(struct frame *f)
{
	if (f && --f->refs == 0) {
		frame_unref(f->alt);
		free(f);
	}
}

void frame_queue_init(struct frame_queue *q)
{
	memset(q, 0, sizeof(*q));
}

int frame_queue_push(struct frame_queue *q, struct frame *f)
{
	if (q->count == q->cap) {
		/* Grow by doubling and unwrap the ring so head is 0; cap stays a power of two. */
		uint32_t ncap = q->cap ? q->cap * 2 : 4;
		struct frame **nring = malloc(sizeof(*nring) * ncap);
		if (!nring)
			return -1;
		for (uint32_t i = 0; i < q->count; i++)
			nring[i] = q->ring[(q->head + i) & (q->cap - 1)];
		free(q->ring);
		q->ring = nring;
		q->cap = ncap;
		q->head = 0;
	}
	q->ring[(q->head + q->count) & (q->cap - 1)] = frame_ref(f);
	q->count++;
	q->bytes += f->len;
	return 0;
}

struct frame *frame_queue_pop(struct frame_queue *q)
{
	struct frame *f;

	if (!q->count)
		return NULL;
	f = q->ring[q->head];
	q->head = (q->head + 1) & (q->cap - 1);
	q->count--;
	q->bytes -= f->len;
	return f;
}

void frame_queue_clear(struct frame_queue *q)
{
	struct frame *f;
	while ((f = frame_queue_pop(q)))
		frame_unref(f);
	free(q->ring);
	frame_queue_init(q);
}
