/* The framed link between a --workers worker and the feed process: wire format and a libuv
 * pipe that reads whole frames and queues writes with a bound. */
#ifndef ROOMCAST_FEEDLINK_H
#define ROOMCAST_FEEDLINK_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The abstract unix socket name (without its leading NUL) for a supervisor's feed. */
#define FEEDLINK_ADDR_MAX 64
void feedlink_addr(char *out, size_t cap, int supervisor_pid);

/* ---- wire format: frames of u32 length (native order: both ends are on one host) + body;
 * the body opens with a type byte. Strings carry their NUL; ~0u as a length is SQL NULL. */

enum {
	FEEDLINK_HELLO = 'H',     /* worker: u8 type, str pgc name */
	FEEDLINK_QUERY = 'Q',     /* worker: u32 id, u32 flags (PGC_URGENT, PGC_SHARED), u32
	                             timeout_ms, str sql, u32 n, str* */
	FEEDLINK_RECONNECT = 'R', /* worker: str why */
	FEEDLINK_STATE = 'S',     /* feed: u32 up */
	FEEDLINK_ANSWER = 'A',    /* feed: u32 id, u32 ok, str err | u32 status, u32 nf, (str name,
	                         u32 oid)*, u32 nt, (u32 len, bytes)* */
	FEEDLINK_NOTIFY = 'N',    /* feed: u32 be_pid, str channel, str payload */
};

/* Frames larger than this end the link (nothing legitimate comes close: a replay page). */
#define FEEDLINK_FRAME_MAX (64u << 20)
/* Bytes queued to a peer that does not read before the link is dropped. */
#define FEEDLINK_WQ_MAX (128u << 20)

struct feedlink_rd {
	const char *p;
	size_t left;
	bool bad; /* ran past the end or a string lacked its NUL */
};

uint32_t feedlink_get_u32(struct feedlink_rd *r);
/* A NUL-terminated string inside the frame (valid while the frame is handled), or NULL for
 * SQL NULL or a bad frame (r->bad tells which). *len excludes the NUL. */
const char *feedlink_get_str(struct feedlink_rd *r, uint32_t *len);

void feedlink_frame_begin(struct buf *b, char type);
void feedlink_put_u32(struct buf *b, uint32_t v);
void feedlink_put_str(struct buf *b, const char *s); /* NULL: SQL NULL */
void feedlink_put_bytes(struct buf *b, const char *s, uint32_t len);

struct feedlink;
/* One frame; r reads its body after the type byte. */
typedef void (*feedlink_frame_fn)(struct feedlink *l, char type, struct feedlink_rd *r);
/* The link closed (peer gone, bad frame, write failure or feedlink_close): runs once, after
 * the handle is closed, so the owner may free the link here. */
typedef void (*feedlink_closed_fn)(struct feedlink *l);

struct feedlink {
	uv_pipe_t pipe;
	struct buf in;
	size_t in_off;
	feedlink_frame_fn on_frame;
	feedlink_closed_fn on_closed;
	void *owner;
	bool open, closing;
};

/* Wraps a connected socket fd (or, with server set, accepts from it). Returns 0; -1 when it
 * failed and is closing (on_closed follows); -2 when nothing was set up (no on_closed). */
int feedlink_open(struct feedlink *l, uv_loop_t *loop, int fd, uv_stream_t *server,
                  feedlink_frame_fn on_frame, feedlink_closed_fn on_closed, void *owner);
/* Finishes the frame begun with feedlink_frame_begin and queues it; b is emptied. A peer that let
 * more than FEEDLINK_WQ_MAX pile up is dropped. Returns 0 or -1. */
int feedlink_send(struct feedlink *l, struct buf *b);
void feedlink_close(struct feedlink *l);

#endif
