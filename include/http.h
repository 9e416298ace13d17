/* The HTTP API (docs/http-api.md) as plain request -> response logic, independent of libwebsockets:
 * /health, /ready, /metrics, /admin/clients, /admin and POST /api/notify. */
#ifndef ROOMCAST_HTTP_H
#define ROOMCAST_HTTP_H

#include "auth.h"
#include "buf.h"
#include "config.h"

#include <stdbool.h>
#include <stddef.h>

/* A connection's last accepted notify credential (the Authorization value after "Bearer "), so
 * a kept-alive caller's token is checked once rather than on every request. Owned by the
 * connection; http_cred_memo_free releases it. */
struct http_cred_memo {
	char *token; /* malloc'd copy, NULL when none */
	size_t len;
	long long expires; /* the JWT's exp (unix seconds); 0 for NOTIFY_TOKEN */
};

struct http_request {
	const char *method; /* "GET", "POST", ... */
	const char *path;
	const char *query;         /* without '?', may be "" */
	const char *authorization; /* may be NULL */
	const char *content_type;  /* may be NULL */
	const char *peer;          /* TCP peer address (inet_ntop form), NULL when unknown */
	long content_length;       /* -1 when absent */
	const char *body;
	size_t body_len;
	/* For answers that need PostgreSQL: called later with the final status and JSON body
	 * when http_handle left resp->status at 0. */
	void (*complete)(void *ctx, int status, const char *json);
	void *ctx;
	struct http_cred_memo *memo; /* NULL: the credential is checked on every request */
};

struct http_response {
	int status;
	const char *content_type;
	const char *extra_headers; /* "name: value\r\n..." or NULL */
	struct buf body;
};

void http_setup(const struct config *cfg, const struct auth *auth, const char *version);
/* A handler for static files: fills resp and returns true when it owns path. */
typedef bool (*http_static_fn)(const char *path, const char *method, struct http_response *resp);
void http_set_static(http_static_fn serve);
/* Whether the body of this request should be read (POST to a path that takes one). Fills resp
 * and returns false when the request is refused before its body (405, 401/403 for a notify
 * without a valid credential, 415, 413), so no body byte is read for a refused request. */
bool http_wants_body(const struct http_request *req, struct http_response *resp);
/* Handles a complete request. */
void http_handle(const struct http_request *req, struct http_response *resp);
/* Handles a complete request whose head already passed http_wants_body (credential, type,
 * size): the answer http_handle gives, without checking the credential a second time. */
void http_handle_body(const struct http_request *req, struct http_response *resp);
/* Appends the bytes lws 4.1.6 writes for resp on a kept-alive HTTP/1.1 exchange (status line,
 * content type and length, nosniff, no-store, extra headers, then the body unless head_only):
 * for the front door, which answers POST /api/notify itself on kept-alive connections. */
void http_response_bytes(const struct http_response *resp, bool head_only, struct buf *out);
void http_response_free(struct http_response *resp);
void http_cred_memo_free(struct http_cred_memo *m);

#endif
