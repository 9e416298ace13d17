/* Immutable reference-counted outbound frames and the per-connection byte-bounded queue that
 * holds them. A message is serialized once into a frame; every recipient queues a reference. */
#ifndef ROOMCAST_FRAME_H
#define ROOMCAST_FRAME_H

#include <stddef.h>
#include <stdint.h>

/* Bytes reserved before the payload for the WebSocket header (lws requires LWS_PRE; a server
 * text frame's own header takes 2, 4 or 10 of them, see frame_wire). */
#define FRAME_PRE 16
/* Longest WebSocket header of an unmasked server frame: opcode byte, 127, 8 length bytes. */
#define FRAME_WS_HDR_MAX 10

/* Room messages may be batched into one JSON array for ?batch=1 clients; replies may not. */
#define FRAME_ROOM_MSG 1u
/* The typed form of this room message is the message itself (see proto_typed). */
#define FRAME_TYPED_SAME 2u
/* Several room messages joined into one JSON array for a ?batch=1 client; nmsgs counts them. */
#define FRAME_BATCH 4u

struct frame {
	uint32_t refs;
	uint32_t len;
	uint32_t flags;
	/* Bytes of WebSocket header frame_wire built in front of the payload (0: not yet). The
	 * frame is immutable once sent, so the header is built once for every recipient. */
	uint8_t wire_hlen;
	uint16_t nmsgs; /* FRAME_BATCH: room messages joined in it */
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

/* Pure: writes the header of an unmasked, final WebSocket text frame of len payload bytes into
 * out (FRAME_WS_HDR_MAX bytes) and returns its length: 2, 4 or 10. */
size_t frame_ws_header(unsigned char *out, uint64_t len);
/* The frame as it goes on the wire: its WebSocket text header (built in the headroom on the
 * first call, then reused: server frames are unmasked, so every recipient gets the same bytes)
 * followed by the payload. *len gets the total. The pointer lives as long as f. */
unsigned char *frame_wire(struct frame *f, size_t *len);

/* Pure: how bytes written by one writev of frames of the given wire lengths split: the number
 * of frames that went out whole, and in *cut the bytes of the next one that went out (0: none,
 * the write ended on a frame boundary). */
uint32_t frame_sent_split(const size_t *lens, uint32_t n, size_t written, size_t *cut);

/* A FIFO ring of frame references, bounded in bytes by its owner. Its counters live in the
 * ring's allocation, made on the first push: an empty queue that never held a frame (an idle
 * connection's) is one NULL pointer, not 24 bytes. */
struct frame_ring {
	uint32_t cap, head, count;
	uint32_t bytes; /* owners bound it far below 4 GB (SEND_QUEUE_MAX_BYTES is at most 1 GB) */
	struct frame *slot[];
};
struct frame_queue {
	struct frame_ring *r; /* NULL until the first push, and after frame_queue_clear */
};

void frame_queue_init(struct frame_queue *q);
static inline uint32_t frame_queue_count(const struct frame_queue *q)
{
	return q->r ? q->r->count : 0;
}
static inline uint32_t frame_queue_bytes(const struct frame_queue *q)
{
	return q->r ? q->r->bytes : 0;
}
/* Takes a new reference on f and appends it; -1 on allocation failure (f untouched). */
int frame_queue_push(struct frame_queue *q, struct frame *f);
/* Takes a new reference on f and puts it at the head (before every queued frame); -1 on
 * allocation failure (f untouched). */
int frame_queue_push_front(struct frame_queue *q, struct frame *f);
/* Removes the head and returns the reference the queue held (caller unrefs), or NULL. */
struct frame *frame_queue_pop(struct frame_queue *q);
static inline struct frame *frame_queue_peek(const struct frame_queue *q, uint32_t i)
{
	return i < frame_queue_count(q) ? q->r->slot[(q->r->head + i) & (q->r->cap - 1)] : NULL;
}
/* Drops every reference and frees the ring. */
void frame_queue_clear(struct frame_queue *q);

#endif
