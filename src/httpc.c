/* Asynchronous HTTP GET over libuv: resolve, connect, send, read to end of response, each step
 * under one deadline. The request owns its handles; it is freed from the last close callback. */
#include "httpc.h"
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Responses larger than this are refused: a policy answer is a few bytes. */
#define HTTPC_MAX_RESPONSE 65536

struct httpc_req {
	uv_loop_t *loop;
	uv_getaddrinfo_t gai;
	uv_tcp_t tcp;
	uv_connect_t connect;
	uv_write_t write;
	uv_timer_t timer;
	httpc_done_fn cb;
	void *arg;
	char host[256], port[8];
	struct buf request;
	struct buf response;
	int open_handles;
	int done;
	int tcp_inited;
};

/* Drops one reference: each open handle and the pending name lookup hold one. */
static void release(struct httpc_req *r)
{
	if (--r->open_handles)
		return;
	buf_free(&r->request);
	buf_free(&r->response);
	free(r);
}

static void on_closed(uv_handle_t *h)
{
	release(h->data);
}

/* Reports once, then tears everything down. */
static void finish(struct httpc_req *r, int status, const char *body, size_t len, const char *err)
{
	if (r->done)
		return;
	r->done = 1;
	r->cb(r->arg, status, body, len, err);
	uv_timer_stop(&r->timer);
	uv_close((uv_handle_t *)&r->timer, on_closed);
	if (r->tcp_inited && !uv_is_closing((uv_handle_t *)&r->tcp))
		uv_close((uv_handle_t *)&r->tcp, on_closed);
}

static void parse_and_finish(struct httpc_req *r)
{
	char *data = r->response.data ? r->response.data : (char *)"";
	char *body = strstr(data, "\r\n\r\n");
	int status = 0;

	if (sscanf(data, "HTTP/1.%*c %d", &status) != 1 || !body) {
		finish(r, 0, NULL, 0, "malformed response");
		return;
	}
	body += 4;
	finish(r, status, body, r->response.len - (size_t)(body - data), NULL);
}

static void on_timeout(uv_timer_t *t)
{
	finish(t->data, 0, NULL, 0, "timed out");
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
	static char slab[16384];
	b->base = slab;
	b->len = sizeof(slab);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
	struct httpc_req *r = s->data;

	if (n > 0) {
		buf_put(&r->response, b->base, (size_t)n);
		if (r->response.failed || r->response.len > HTTPC_MAX_RESPONSE)
			finish(r, 0, NULL, 0, "response too large");
		return;
	}
	if (n == UV_EOF)
		parse_and_finish(r);
	else if (n < 0)
		finish(r, 0, NULL, 0, uv_strerror((int)n));
}

static void on_written(uv_write_t *w, int status)
{
	struct httpc_req *r = w->data;
	if (status < 0)
		finish(r, 0, NULL, 0, uv_strerror(status));
	else if (!r->done)
		uv_read_start((uv_stream_t *)&r->tcp, on_alloc, on_read);
}

static void on_connected(uv_connect_t *c, int status)
{
	struct httpc_req *r = c->data;
	uv_buf_t b;

	if (r->done)
		return;
	if (status < 0) {
		finish(r, 0, NULL, 0, uv_strerror(status));
		return;
	}
	b = uv_buf_init(r->request.data, (unsigned)r->request.len);
	r->write.data = r;
	uv_write(&r->write, (uv_stream_t *)&r->tcp, &b, 1, on_written);
}

static void on_resolved(uv_getaddrinfo_t *g, int status, struct addrinfo *ai)
{
	struct httpc_req *r = g->data;

	if (r->done) {
		uv_freeaddrinfo(ai);
		release(r);
		return;
	}
	if (status < 0 || !ai) {
		uv_freeaddrinfo(ai);
		finish(r, 0, NULL, 0, status < 0 ? uv_strerror(status) : "no address");
		release(r);
		return;
	}
	uv_tcp_init(r->loop, &r->tcp);
	r->tcp.data = r;
	r->tcp_inited = 1;
	r->open_handles++;
	r->connect.data = r;
	if (uv_tcp_connect(&r->connect, &r->tcp, ai->ai_addr, on_connected) < 0)
		finish(r, 0, NULL, 0, "connect failed");
	uv_freeaddrinfo(ai);
	release(r); /* the lookup's reference */
}

/* Splits http://host[:port]/path into parts; path includes the query. */
static int split_url(const char *url, char *host, size_t hcap, char *port, size_t pcap,
                     const char **path)
{
	const char *p, *slash, *colon;
	size_t hl;

	if (strncasecmp(url, "http://", 7))
		return -1;
	p = url + 7;
	slash = strchr(p, '/');
	if (!slash)
		slash = p + strlen(p);
	colon = memchr(p, ':', (size_t)(slash - p));
	hl = (size_t)((colon ? colon : slash) - p);
	if (!hl || hl >= hcap)
		return -1;
	memcpy(host, p, hl);
	host[hl] = '\0';
	if (colon) {
		size_t pl = (size_t)(slash - colon - 1);
		if (!pl || pl >= pcap)
			return -1;
		memcpy(port, colon + 1, pl);
		port[pl] = '\0';
	} else {
		snprintf(port, pcap, "80");
	}
	*path = *slash ? slash : "/";
	return 0;
}

int httpc_get(uv_loop_t *loop, const char *url, unsigned timeout_ms, httpc_done_fn cb, void *arg)
{
	struct httpc_req *r = calloc(1, sizeof(*r));
	const char *path;
	struct addrinfo hints;

	if (!r)
		return -1;
	if (split_url(url, r->host, sizeof(r->host), r->port, sizeof(r->port), &path) < 0) {
		free(r);
		return -1;
	}
	r->loop = loop;
	r->cb = cb;
	r->arg = arg;
	buf_init(&r->request);
	buf_init(&r->response);
	buf_printf(&r->request,
	           "GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n"
	           "Accept: application/json\r\nUser-Agent: roomcast\r\n\r\n",
	           path, r->host, r->port);
	uv_timer_init(loop, &r->timer);
	r->timer.data = r;
	r->open_handles = 1;
	uv_timer_start(&r->timer, on_timeout, timeout_ms, 0);
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	r->gai.data = r;
	r->open_handles++;
	if (uv_getaddrinfo(loop, &r->gai, on_resolved, r->host, r->port, &hints) < 0) {
		/* Report from the loop, never from inside httpc_get. */
		r->open_handles--;
		uv_timer_start(&r->timer, on_timeout, 0, 0);
	}
	return 0;
}

int httpc_query_escape(const char *s, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		             (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~';
		if (o + (plain ? 1 : 3) >= cap)
			return -1;
		if (plain) {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
	return (int)o;
}
