/* The framed link between a --workers worker and the feed process over a local socket:
 * length-prefixed frames, non-blocking reads into one growing buffer, writes queued with a
 * bound. Both ends use it: pgrelay in the workers, feed in the feed process. */
#include "feedlink.h"
#include "buf.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void feedlink_addr(char *out, size_t cap, int supervisor_pid)
{
	snprintf(out, cap, "roomcast-feed-%d", supervisor_pid);
}

uint32_t feedlink_get_u32(struct feedlink_rd *r)
{
	uint32_t v;
	if (r->bad || r->left < 4) {
		r->bad = true;
		return 0;
	}
	memcpy(&v, r->p, 4);
	r->p += 4;
	r->left -= 4;
	return v;
}

const char *feedlink_get_str(struct feedlink_rd *r, uint32_t *len)
{
	uint32_t n = feedlink_get_u32(r);
	const char *s;

	if (len)
		*len = 0;
	if (r->bad || n == ~0u)
		return NULL;
	if (n == 0 || n > r->left || r->p[n - 1] != '\0') {
		r->bad = true;
		return NULL;
	}
	s = r->p;
	r->p += n;
	r->left -= n;
	if (len)
		*len = n - 1;
	return s;
}

void feedlink_frame_begin(struct buf *b, char type)
{
	uint32_t zero = 0;
	buf_init(b);
	buf_put(b, &zero, 4);
	buf_put(b, &type, 1);
}

void feedlink_put_u32(struct buf *b, uint32_t v)
{
	buf_put(b, &v, 4);
}

void feedlink_put_bytes(struct buf *b, const char *s, uint32_t len)
{
	feedlink_put_u32(b, len + 1);
	buf_put(b, s, len);
	buf_put(b, "", 1);
}

void feedlink_put_str(struct buf *b, const char *s)
{
	if (!s)
		feedlink_put_u32(b, ~0u);
	else
		feedlink_put_bytes(b, s, (uint32_t)strlen(s));
}

struct wreq {
	uv_write_t req;
	char *data;
};

static void on_written(uv_write_t *req, int status)
{
	struct wreq *w = (struct wreq *)req;
	free(w->data);
	free(w);
}

static void link_handle_closed(uv_handle_t *h)
{
	struct feedlink *l = h->data;
	buf_free(&l->in);
	l->open = false;
	if (l->on_closed)
		l->on_closed(l);
}

void feedlink_close(struct feedlink *l)
{
	if (!l->open || l->closing)
		return;
	l->closing = true;
	uv_read_stop((uv_stream_t *)&l->pipe);
	uv_close((uv_handle_t *)&l->pipe, link_handle_closed);
}

int feedlink_send(struct feedlink *l, struct buf *b)
{
	struct wreq *w;
	uv_buf_t ub;
	uint32_t len;

	if (b->failed || !l->open || l->closing ||
	    uv_stream_get_write_queue_size((uv_stream_t *)&l->pipe) > FEEDLINK_WQ_MAX) {
		if (l->open && !l->closing && !b->failed)
			log_warn("feed link dropped", "reason", "peer does not read");
		buf_free(b);
		feedlink_close(l);
		return -1;
	}
	len = (uint32_t)(b->len - 4);
	memcpy(b->data, &len, 4);
	w = malloc(sizeof(*w));
	if (!w) {
		buf_free(b);
		feedlink_close(l);
		return -1;
	}
	w->data = b->data;
	ub = uv_buf_init(b->data, (unsigned)b->len);
	buf_init(b);
	if (uv_write(&w->req, (uv_stream_t *)&l->pipe, &ub, 1, on_written) < 0) {
		free(w->data);
		free(w);
		feedlink_close(l);
		return -1;
	}
	return 0;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *out)
{
	struct feedlink *l = h->data;
	size_t want = 65536;

	/* Read straight into the frame buffer's free tail. */
	if (l->in.cap - l->in.len < want) {
		char *n = realloc(l->in.data, l->in.len + want);
		if (!n) {
			*out = uv_buf_init(NULL, 0);
			return;
		}
		l->in.data = n;
		l->in.cap = l->in.len + want;
	}
	*out = uv_buf_init(l->in.data + l->in.len, (unsigned)(l->in.cap - l->in.len));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct feedlink *l = s->data;

	if (n < 0) {
		feedlink_close(l);
		return;
	}
	l->in.len += (size_t)n;
	while (!l->closing && l->in.len - l->in_off >= 4) {
		uint32_t len;
		struct feedlink_rd r;
		char type;
		memcpy(&len, l->in.data + l->in_off, 4);
		if (len < 1 || len > FEEDLINK_FRAME_MAX) {
			log_warn("feed link dropped", "reason", "bad frame length");
			feedlink_close(l);
			return;
		}
		if (l->in.len - l->in_off - 4 < len)
			break;
		type = l->in.data[l->in_off + 4];
		r.p = l->in.data + l->in_off + 5;
		r.left = len - 1;
		r.bad = false;
		l->in_off += 4 + len;
		l->on_frame(l, type, &r);
	}
	if (l->closing)
		return;
	/* Compact once per read, not per frame. */
	if (l->in_off) {
		memmove(l->in.data, l->in.data + l->in_off, l->in.len - l->in_off);
		l->in.len -= l->in_off;
		l->in_off = 0;
	}
}

int feedlink_open(struct feedlink *l, uv_loop_t *loop, int fd, uv_stream_t *server,
                  feedlink_frame_fn on_frame, feedlink_closed_fn on_closed, void *owner)
{
	memset(l, 0, sizeof(*l));
	buf_init(&l->in);
	l->on_frame = on_frame;
	l->on_closed = on_closed;
	l->owner = owner;
	if (uv_pipe_init(loop, &l->pipe, 0) < 0) {
		if (fd >= 0)
			close(fd);
		return -2;
	}
	l->pipe.data = l;
	l->open = true;
	if (!server && uv_pipe_open(&l->pipe, fd) < 0)
		close(fd); /* not the handle's yet */
	else if ((!server || uv_accept(server, (uv_stream_t *)&l->pipe) == 0) &&
	         uv_read_start((uv_stream_t *)&l->pipe, on_alloc, on_read) == 0)
		return 0;
	l->closing = true;
	uv_close((uv_handle_t *)&l->pipe, link_handle_closed);
	return -1;
}
