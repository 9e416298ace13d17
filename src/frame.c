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
	f->wire_hlen = 0;
	f->nmsgs = 0;
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

size_t frame_ws_header(unsigned char *out, uint64_t len)
{
	out[0] = 0x81; /* FIN, text */
	if (len < 126) {
		out[1] = (unsigned char)len; /* no mask bit: server frames are unmasked */
		return 2;
	}
	if (len <= 0xffff) {
		out[1] = 126;
		out[2] = (unsigned char)(len >> 8);
		out[3] = (unsigned char)len;
		return 4;
	}
	out[1] = 127;
	for (int i = 0; i < 8; i++)
		out[2 + i] = (unsigned char)(len >> (56 - 8 * i));
	return 10;
}

unsigned char *frame_wire(struct frame *f, size_t *len)
{
	_Static_assert(FRAME_PRE >= FRAME_WS_HDR_MAX, "the headroom must hold a frame header");
	if (!f->wire_hlen) {
		unsigned char hdr[FRAME_WS_HDR_MAX];
		size_t n = frame_ws_header(hdr, f->len);
		memcpy(f->buf + FRAME_PRE - n, hdr, n);
		f->wire_hlen = (uint8_t)n;
	}
	*len = f->wire_hlen + (size_t)f->len;
	return f->buf + FRAME_PRE - f->wire_hlen;
}

uint32_t frame_sent_split(const size_t *lens, uint32_t n, size_t written, size_t *cut)
{
	uint32_t whole = 0;

	while (whole < n && written >= lens[whole]) {
		written -= lens[whole];
		whole++;
	}
	*cut = whole < n ? written : 0;
	return whole;
}

void frame_queue_init(struct frame_queue *q)
{
	memset(q, 0, sizeof(*q));
}

/* Grows the ring to twice its size (4 at first), unwrapped so head is 0; cap stays a power of
 * two. The counters move with the slots (they share the allocation). */
static int queue_grow(struct frame_queue *q)
{
	struct frame_ring *o = q->r;
	uint32_t ncap = o ? o->cap * 2 : 4;
	struct frame_ring *n = malloc(sizeof(*n) + sizeof(n->slot[0]) * ncap);
	if (!n)
		return -1;
	n->cap = ncap;
	n->head = 0;
	n->count = o ? o->count : 0;
	n->bytes = o ? o->bytes : 0;
	for (uint32_t i = 0; i < n->count; i++)
		n->slot[i] = o->slot[(o->head + i) & (o->cap - 1)];
	free(o);
	q->r = n;
	return 0;
}

int frame_queue_push(struct frame_queue *q, struct frame *f)
{
	struct frame_ring *r;

	if ((!q->r || q->r->count == q->r->cap) && queue_grow(q) < 0)
		return -1;
	r = q->r;
	r->slot[(r->head + r->count) & (r->cap - 1)] = frame_ref(f);
	r->count++;
	r->bytes += f->len;
	return 0;
}

int frame_queue_push_front(struct frame_queue *q, struct frame *f)
{
	struct frame_ring *r;

	if ((!q->r || q->r->count == q->r->cap) && queue_grow(q) < 0)
		return -1;
	r = q->r;
	r->head = (r->head - 1) & (r->cap - 1);
	r->slot[r->head] = frame_ref(f);
	r->count++;
	r->bytes += f->len;
	return 0;
}

struct frame *frame_queue_pop(struct frame_queue *q)
{
	struct frame_ring *r = q->r;
	struct frame *f;

	if (!r || !r->count)
		return NULL;
	f = r->slot[r->head];
	r->head = (r->head + 1) & (r->cap - 1);
	r->count--;
	r->bytes -= f->len;
	return f;
}

void frame_queue_clear(struct frame_queue *q)
{
	struct frame *f;
	while ((f = frame_queue_pop(q)))
		frame_unref(f);
	free(q->r);
	frame_queue_init(q);
}
