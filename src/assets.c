/* Serves the embedded dashboard files: exact paths only (so /admin/clients and the rest of the
 * API are never shadowed), GET and HEAD, with a CSP that allows no inline script or style. */
#include "assets.h"
#include "buf.h"

#include <string.h>

/* Everything the page loads comes from roomcast itself; the WebSocket and the polls too. */
static const char security_headers[] =
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "X-Frame-Options: DENY\r\n";

const struct assets_file *assets_find(const char *path)
{
	for (unsigned i = 0; i < assets_files_count; i++)
		if (!strcmp(assets_files[i].path, path))
			return &assets_files[i];
	return NULL;
}

bool assets_serve(const char *path, const char *method, struct http_response *resp)
{
	const struct assets_file *f = assets_find(path);

	if (!f)
		return false;
	if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
		resp->status = 405;
		resp->content_type = "application/json";
		resp->extra_headers = "Allow: GET, HEAD\r\n";
		buf_puts(&resp->body, "{\"error\":\"method not allowed\"}");
		return true;
	}
	resp->status = 200;
	resp->content_type = f->content_type;
	resp->extra_headers = security_headers;
	buf_put(&resp->body, f->data, f->len);
	return true;
}
