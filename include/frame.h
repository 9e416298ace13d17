/* Immutable reference-counted outbound frames and the per-connection byte-bounded queue that
 * holds them. A message is serialized once into a frame; every recipient queues a reference. */
#ifndef ROOMCAST_FRAME_H
#define ROOMCAST_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* Bytes reserved before the payload for the WebSocket header (lws requires LWS_PRE). */
#define FRAME_PRE 16

/* Room messages may be batched into one JSON array for ?batch=1 clients; replies may not. */
#define FRAME_ROOM_MSG 1u
/* The typed form of this room message is the message itself (see proto_typed). */
#define FRAME_TYPED_SAME 2u

struct frame {
	uint32_t refs;
	uint32_t len;
	uint32_t flags;
	/* Monotonic nanoseconds when the event entered roomcast (0 if unknown): feeds the
	 * notify-to-send latency histogram. */
	uint64_t born_ns;
	/* A second serialization of the same room message (the typed form some clients want),
	 * built once by the first recipient that needs it; this frame owns the reference. */
	struct frame *alt;
	unsigned char buf[]; /* FRAME_PRE bytes of headroom, then len payload bytes, then NUL */
};

/* Allocates a frame holding a copy of data with refs = 1; the caller owns that reference. */
struct frame *frame_new(const void *data, size_t len);
/* Allocates an uninitialized frame of len payload bytes (refs = 1) for in-place building. */
struct frame *frame_alloc(size_t len);
static inline unsigned char *frame_data(struct frame *f)
{
	return f->buf + FRAME_PRE;
}
static inline struct frame *frame_ref(struct frame *f)
{
	f->refs++;
	return f;
}
/* Drops one reference; frees the frame at zero. */
void frame_unref(struct frame *f);

/* A FIFO ring of frame references, bounded in bytes by its owner. */
struct frame_queue {
	struct frame **ring;
	uint32_t cap, head, count;
	size_t bytes;
};

void frame_queue_init(struct frame_queue *q);
/* Takes a new reference on f and appends it; -1 on allocation failure (f untouched). */
int frame_queue_push(struct frame_queue *q, struct frame *f);
/* Removes the head and returns the reference the queue held (caller unrefs), or NULL. */
struct frame *frame_queue_pop(struct frame_queue *q);
static inline struct frame *frame_queue_peek(const struct frame_queue *q, uint32_t i)
{
	return i < q->count ? q->ring[(q->head + i) & (q->cap - 1)] : NULL;
}
/* Drops every reference and frees the ring. */
void frame_queue_clear(struct frame_queue *q);

#endif
