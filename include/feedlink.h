/* The framed link between a --workers worker and the feed process: wire format and a libuv
 * pipe that reads whole frames and queues writes with a bound. */
#ifndef ROOMCAST_FEEDLINK_H
#define ROOMCAST_FEEDLINK_H

#include "util.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The abstract unix socket name (without its leading NUL) for a supervisor's feed. */
#define FEED_ADDR_MAX 64
void feed_addr(char *out, size_t cap, int supervisor_pid);

/* ---- wire format: frames of u32 length (native order: both ends are on one host) + body;
 * the body opens with a type byte. Strings carry their NUL; ~0u as a length is SQL NULL. */

enum {
	FEED_HELLO = 'H',     /* worker: u8 type, str pgc name */
	FEED_QUERY = 'Q',     /* worker: u32 id, u32 urgent, u32 timeout_ms, str sql, u32 n, str* */
	FEED_RECONNECT = 'R', /* worker: str why */
	FEED_STATE = 'S',     /* feed: u32 up */
	FEED_ANSWER = 'A',    /* feed: u32 id, u32 ok, str err | u32 status, u32 nf, (str name,
	                         u32 oid)*, u32 nt, (u32 len, bytes)* */
	FEED_NOTIFY = 'N',    /* feed: u32 be_pid, str channel, str payload */
};

/* Frames larger than this end the link (nothing legitimate comes close: a replay page). */
#define FEED_FRAME_MAX (64u << 20)
/* Bytes queued to a peer that does not read before the link is dropped. */
#define FEED_WQ_MAX (128u << 20)

struct feed_rd {
	const char *p;
	size_t left;
	bool bad; /* ran past the end or a string lacked its NUL */
};

uint32_t feed_get_u32(struct feed_rd *r);
/* A NUL-terminated string inside the frame (valid while the frame is handled), or NULL for
 * SQL NULL or a bad frame (r->bad tells which). *len excludes the NUL. */
const char *feed_get_str(struct feed_rd *r, uint32_t *len);

void feed_frame_begin(struct buf *b, char type);
void feed_put_u32(struct buf *b, uint32_t v);
void feed_put_str(struct buf *b, const char *s); /* NULL: SQL NULL */
void feed_put_bytes(struct buf *b, const char *s, uint32_t len);

struct feed_link;
/* One frame; r reads its body after the type byte. */
typedef void (*feed_frame_fn)(struct feed_link *l, char type, struct feed_rd *r);
/* The link closed (peer gone, bad frame, write failure or feed_link_close): runs once, after
 * the handle is closed, so the owner may free the link here. */
typedef void (*feed_closed_fn)(struct feed_link *l);

struct feed_link {
	uv_pipe_t pipe;
	struct buf in;
	size_t in_off;
	feed_frame_fn on_frame;
	feed_closed_fn on_closed;
	void *owner;
	bool open, closing;
};

/* Wraps a connected socket fd (or, with server set, accepts from it). Returns 0; -1 when it
 * failed and is closing (on_closed follows); -2 when nothing was set up (no on_closed). */
int feed_link_open(struct feed_link *l, uv_loop_t *loop, int fd, uv_stream_t *server,
                   feed_frame_fn on_frame, feed_closed_fn on_closed, void *owner);
/* Finishes the frame begun with feed_frame_begin and queues it; b is emptied. A peer that let
 * more than FEED_WQ_MAX pile up is dropped. Returns 0 or -1. */
int feed_link_send(struct feed_link *l, struct buf *b);
void feed_link_close(struct feed_link *l);

#endif
