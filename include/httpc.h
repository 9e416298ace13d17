/* A minimal asynchronous HTTP/1.1 client on the libuv loop, for asking a backend service
 * (BACKEND_URL room policy). Plain http:// only; one request per connection; every request
 * has a deadline. */
#ifndef ROOMCAST_HTTPC_H
#define ROOMCAST_HTTPC_H

#include <stddef.h>
#include <uv.h>

/* status is the HTTP status (0 on a transport failure or timeout, err then says why); body is
 * NUL-terminated and only valid during the call. */
typedef void (*httpc_done_fn)(void *arg, int status, const char *body, size_t len, const char *err);

/* GET url (http://host[:port]/path?query). cb is always called exactly once, never from
 * inside httpc_get. Returns 0, or -1 for a URL it cannot use (cb not called). */
int httpc_get(uv_loop_t *loop, const char *url, unsigned timeout_ms, httpc_done_fn cb, void *arg);

/* Appends s to out percent-encoded for a query value; returns the length written or -1. */
int httpc_query_escape(const char *s, char *out, size_t cap);

#endif
