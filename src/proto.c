/* Client message parsing and reply/envelope building. Parsing is strict: one JSON object of the
 * exact frame length, nesting at most PROTO_MAX_DEPTH, nothing but whitespace after it. */
#include "proto.h"
#include "buf.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

static const char *const code_names[] = {
    "ok",         "bad_json",     "bad_type",  "bad_room",        "forbidden",
    "not_member", "rate_limited", "too_large", "unauthenticated", "server_error",
};

const char *proto_code_name(enum proto_code c)
{
	return code_names[c];
}

void proto_msg_clear(struct proto_msg *m)
{
	free(m->body);
	free(m->token);
	free(m->rooms);
	memset(m, 0, sizeof(*m));
}

/* Whether s is exactly one JSON number (RFC 8259 section 6). */
static bool json_number_text(const char *s)
{
	if (*s == '-')
		s++;
	if (*s == '0') /* no leading zeros: "0" alone or "0." / "0e" */
		s++;
	else if (isdigit((unsigned char)*s))
		while (isdigit((unsigned char)*s))
			s++;
	else
		return false;
	if (*s == '.') {
		if (!isdigit((unsigned char)*++s))
			return false;
		while (isdigit((unsigned char)*s))
			s++;
	}
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!isdigit((unsigned char)*s))
			return false;
		while (isdigit((unsigned char)*s))
			s++;
	}
	return *s == '\0';
}

bool proto_json_standard(json_object *o)
{
	switch (json_object_get_type(o)) {
	case json_type_double:
		/* json-c serializes a parsed double as the text it was parsed from. */
		return json_number_text(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	case json_type_array:
		for (size_t i = 0; i < json_object_array_length(o); i++)
			if (!proto_json_standard(json_object_array_get_idx(o, i)))
				return false;
		return true;
	case json_type_object: {
		json_object_object_foreach(o, key, val)
		{
			(void)key;
			if (!proto_json_standard(val))
				return false;
		}
		return true;
	}
	default:
		return true;
	}
}

static json_object *get(json_object *o, const char *key)
{
	json_object *v = NULL;
	if (o && json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, key, &v))
		return v;
	return NULL;
}

/* The room may come as payload.room (ours) or data.channel (the Go service's clients). */
static json_object *find_room(json_object *payload, json_object *data)
{
	json_object *v;
	if ((v = get(payload, "room")))
		return v;
	if ((v = get(data, "channel")))
		return v;
	if ((v = get(data, "room")))
		return v;
	return get(payload, "channel");
}

static enum proto_code parse_room(json_object *v, struct proto_msg *out, const char **detail)
{
	const char *s;
	size_t n;

	if (!v || !json_object_is_type(v, json_type_string)) {
		*detail = "room is required";
		return PROTO_BAD_ROOM;
	}
	s = json_object_get_string(v);
	n = (size_t)json_object_get_string_len(v);
	if (!room_name_valid(s, n)) {
		*detail = "invalid room name";
		return PROTO_BAD_ROOM;
	}
	memcpy(out->room, s, n);
	out->room[n] = '\0';
	return PROTO_OK;
}

static enum proto_code parse_since(json_object *v, struct proto_msg *out, const char **detail)
{
	if (!v || json_object_is_type(v, json_type_null))
		return PROTO_OK;
	if (json_object_is_type(v, json_type_int)) {
		out->since = json_object_get_int64(v);
	} else if (json_object_is_type(v, json_type_string)) {
		const char *s = json_object_get_string(v);
		char *end;
		if (!*s) {
			*detail = "since must be an integer event id";
			return PROTO_BAD_JSON;
		}
		out->since = strtoll(s, &end, 10);
		if (*end) {
			*detail = "since must be an integer event id";
			return PROTO_BAD_JSON;
		}
	} else {
		*detail = "since must be an integer event id";
		return PROTO_BAD_JSON;
	}
	if (out->since < 0) {
		*detail = "since must not be negative";
		return PROTO_BAD_JSON;
	}
	out->has_since = true;
	return PROTO_OK;
}

/* {"action":"subscribe"|"unsubscribe","filters":[rooms...]} (or one "channel"/"room"),
 * {"action":"auth","token":...}, {"action":"ping"}: the dialect of clients written for another
 * server, mapped onto our message types. */
static enum proto_code parse_action(json_object *root, const char *a, struct proto_msg *out,
                                    const char **detail)
{
	json_object *filters = get(root, "filters");
	size_t n;

	out->dialect = true;
	if (!strcmp(a, "auth")) {
		json_object *tok = get(root, "token");
		out->type = PROTO_AUTH;
		if (!tok || !json_object_is_type(tok, json_type_string) ||
		    !json_object_get_string_len(tok) ||
		    memchr(json_object_get_string(tok), '\0',
		           (size_t)json_object_get_string_len(tok))) {
			*detail = "token is required";
			return PROTO_BAD_JSON;
		}
		if (!(out->token = strdup(json_object_get_string(tok)))) {
			*detail = "out of memory";
			return PROTO_SERVER_ERROR;
		}
		return PROTO_OK;
	}
	if (!strcmp(a, "ping")) {
		out->type = PROTO_PING;
		return PROTO_OK;
	}
	if (strcmp(a, "subscribe") && strcmp(a, "unsubscribe")) {
		*detail = "unknown action";
		return PROTO_BAD_TYPE;
	}
	out->type = a[0] == 's' ? PROTO_JOIN : PROTO_LEAVE;
	if (!filters || !json_object_is_type(filters, json_type_array)) {
		json_object *one = get(root, "channel");
		return parse_room(one ? one : get(root, "room"), out, detail);
	}
	n = json_object_array_length(filters);
	if (n == 0 || n > PROTO_MAX_FILTERS) {
		*detail = "filters must name 1 to 64 rooms";
		return PROTO_BAD_ROOM;
	}
	if (!(out->rooms = calloc(n, sizeof(*out->rooms)))) {
		*detail = "out of memory";
		return PROTO_SERVER_ERROR;
	}
	for (size_t i = 0; i < n; i++) {
		enum proto_code rc = parse_room(json_object_array_get_idx(filters, i), out, detail);
		if (rc)
			return rc;
		memcpy(out->rooms[i], out->room, sizeof(out->room));
	}
	memcpy(out->room, out->rooms[0], sizeof(out->room));
	out->nrooms = n;
	return PROTO_OK;
}

static enum proto_code parse_fields(json_object *root, struct proto_msg *out, const char **detail)
{
	json_object *type = get(root, "type"), *payload = get(root, "payload"),
	            *data = get(root, "data");
	const char *t;
	enum proto_code rc;

	if (payload && !json_object_is_type(payload, json_type_object)) {
		*detail = "payload must be an object";
		return PROTO_BAD_JSON;
	}
	if (data && !json_object_is_type(data, json_type_object))
		data = NULL;
	if (!type && get(root, "action") &&
	    json_object_is_type(get(root, "action"), json_type_string))
		return parse_action(root, json_object_get_string(get(root, "action")), out, detail);
	if (data && get(data, "channel"))
		out->dialect = true;
	if (!type || !json_object_is_type(type, json_type_string)) {
		*detail = "type is required";
		return PROTO_BAD_TYPE;
	}
	t = json_object_get_string(type);
	if (!strcmp(t, "join") || !strcmp(t, "subscribe")) {
		out->type = PROTO_JOIN;
		if ((rc = parse_room(find_room(payload, data), out, detail)))
			return rc;
		json_object *since = get(payload, "since"), *presence = get(payload, "presence");
		if (!since)
			since = get(data, "since");
		out->presence = presence && json_object_is_type(presence, json_type_boolean) &&
		                json_object_get_boolean(presence);
		return parse_since(since, out, detail);
	}
	if (!strcmp(t, "leave") || !strcmp(t, "unsubscribe")) {
		out->type = PROTO_LEAVE;
		return parse_room(find_room(payload, data), out, detail);
	}
	if (!strcmp(t, "broadcast")) {
		json_object *body = NULL;
		const char *s;
		size_t n;
		out->type = PROTO_BROADCAST;
		if ((rc = parse_room(find_room(payload, data), out, detail)))
			return rc;
		/* A JSON null body is a present key whose value json-c gives as NULL. */
		if (!(payload && json_object_object_get_ex(payload, "body", &body)) &&
		    !(data && json_object_object_get_ex(data, "message", &body))) {
			*detail = "body is required";
			return PROTO_BAD_JSON;
		}
		s = body ? json_object_to_json_string_ext(body, JSON_C_TO_STRING_PLAIN) : "null";
		n = strlen(s);
		out->body = malloc(n + 1);
		if (!out->body) {
			*detail = "out of memory";
			return PROTO_SERVER_ERROR;
		}
		memcpy(out->body, s, n + 1);
		out->body_len = n;
		return PROTO_OK;
	}
	if (!strcmp(t, "auth")) {
		json_object *tok = get(payload, "token");
		if (!tok)
			tok = get(data, "token");
		out->type = PROTO_AUTH;
		if (!tok || !json_object_is_type(tok, json_type_string) ||
		    !json_object_get_string_len(tok)) {
			*detail = "token is required";
			return PROTO_BAD_JSON;
		}
		/* No JWT holds a NUL; strdup would cut the token there (to "" for "\u0000..."). */
		if (memchr(json_object_get_string(tok), '\0',
		           (size_t)json_object_get_string_len(tok))) {
			*detail = "invalid token";
			return PROTO_BAD_JSON;
		}
		out->token = strdup(json_object_get_string(tok));
		if (!out->token) {
			*detail = "out of memory";
			return PROTO_SERVER_ERROR;
		}
		return PROTO_OK;
	}
	if (!strcmp(t, "ping")) {
		out->type = PROTO_PING;
		return PROTO_OK;
	}
	if (!strcmp(t, "presence")) {
		out->type = PROTO_PRESENCE;
		return parse_room(find_room(payload, data), out, detail);
	}
	if (!strcmp(t, "history")) {
		json_object *limit = get(payload, "limit");
		out->type = PROTO_HISTORY;
		if ((rc = parse_room(find_room(payload, data), out, detail)) ||
		    (rc = parse_since(get(payload, "since"), out, detail)))
			return rc;
		out->limit = PROTO_HISTORY_DEFAULT;
		if (limit) {
			int64_t v;
			if (!json_object_is_type(limit, json_type_int) ||
			    (v = json_object_get_int64(limit)) < 1) {
				*detail = "limit must be a positive integer";
				return PROTO_BAD_JSON;
			}
			out->limit = v > PROTO_HISTORY_MAX ? PROTO_HISTORY_MAX : (int)v;
		}
		return PROTO_OK;
	}
	*detail = "unknown message type";
	return PROTO_BAD_TYPE;
}

enum proto_code proto_parse(const char *data, size_t len, struct proto_msg *out,
                            const char **detail)
{
	json_tokener *tok;
	json_object *root;
	enum proto_code rc;
	size_t end;

	memset(out, 0, sizeof(*out));
	*detail = "";
	if (len > (size_t)INT32_MAX) {
		*detail = "message too large";
		return PROTO_TOO_LARGE;
	}
	tok = json_tokener_new_ex(PROTO_MAX_DEPTH);
	if (!tok) {
		*detail = "out of memory";
		return PROTO_SERVER_ERROR;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, data, (int)len);
	if (json_tokener_get_error(tok) != json_tokener_success || !root) {
		*detail = json_tokener_get_error(tok) == json_tokener_error_depth
		              ? "JSON nested too deeply"
		              : "malformed JSON";
		json_tokener_free(tok);
		json_object_put(root);
		return PROTO_BAD_JSON;
	}
	end = json_tokener_get_parse_end(tok);
	json_tokener_free(tok);
	for (; end < len; end++) {
		char c = data[end];
		if (c != ' ' && c != '\t' && c != '\r' && c != '\n') {
			*detail = "trailing bytes after JSON";
			json_object_put(root);
			return PROTO_BAD_JSON;
		}
	}
	if (!proto_json_standard(root)) {
		*detail = "malformed JSON";
		json_object_put(root);
		return PROTO_BAD_JSON;
	}
	if (!json_object_is_type(root, json_type_object)) {
		*detail = "message must be a JSON object";
		json_object_put(root);
		return PROTO_BAD_JSON;
	}
	rc = parse_fields(root, out, detail);
	json_object_put(root);
	if (rc != PROTO_OK) {
		free(out->body);
		free(out->token);
		free(out->rooms);
		out->body = out->token = NULL;
		out->rooms = NULL;
		out->nrooms = 0;
	}
	return rc;
}

/* Turns a finished buffer into a frame; NULL if building failed anywhere. */
static struct frame *finish(struct buf *b)
{
	struct frame *f = b->failed ? NULL : frame_new(b->data, b->len);
	buf_free(b);
	return f;
}

static void put_room_field(struct buf *b, const char *room)
{
	buf_puts(b, "\"room\":");
	buf_json_str(b, room, strlen(room));
}

struct frame *proto_joined(const char *room, bool recovered, long replayed, bool with_recovery,
                           long long position)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "{\"type\":\"joined\",\"payload\":{");
	put_room_field(&b, room);
	if (with_recovery)
		buf_printf(&b, ",\"recovered\":%s,\"replayed\":%ld", recovered ? "true" : "false",
		           replayed);
	if (position >= 0)
		buf_printf(&b, ",\"position\":%lld", position);
	buf_puts(&b, "}}");
	return finish(&b);
}

struct frame *proto_left(const char *room)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "{\"type\":\"left\",\"payload\":{");
	put_room_field(&b, room);
	buf_puts(&b, "}}");
	return finish(&b);
}

void proto_history_json(struct buf *b, const char *room, struct frame **events, size_t n,
                        bool recovered, bool more)
{
	buf_puts(b, "{");
	put_room_field(b, room);
	buf_puts(b, ",\"events\":[");
	for (size_t i = 0; i < n; i++) {
		if (i)
			buf_puts(b, ",");
		buf_put(b, frame_data(events[i]), events[i]->len);
	}
	buf_printf(b, "],\"recovered\":%s,\"more\":%s}", recovered ? "true" : "false",
	           more ? "true" : "false");
}

struct frame *proto_history(const char *room, struct frame **events, size_t n, bool recovered,
                            bool more)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "{\"type\":\"history\",\"payload\":");
	proto_history_json(&b, room, events, n, recovered, more);
	buf_puts(&b, "}");
	return finish(&b);
}

struct frame *proto_error(enum proto_code code, const char *message, const char *room)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "{\"type\":\"error\",\"payload\":{\"error\":");
	buf_json_str(&b, message, strlen(message));
	buf_printf(&b, ",\"code\":\"%s\"", proto_code_name(code));
	if (room && *room) {
		buf_puts(&b, ",");
		put_room_field(&b, room);
	}
	buf_puts(&b, "}}");
	return finish(&b);
}

struct frame *proto_pong(void)
{
	static const char s[] = "{\"type\":\"pong\"}";
	return frame_new(s, sizeof(s) - 1);
}

struct frame *proto_token_expiring(long in_s)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "{\"type\":\"token_expiring\",\"payload\":{\"in_s\":%ld}}", in_s);
	return finish(&b);
}

struct frame *proto_authenticated(long long exp)
{
	struct buf b;
	buf_init(&b);
	buf_printf(&b, "{\"type\":\"authenticated\",\"payload\":{\"exp\":%lld}}", exp);
	return finish(&b);
}

struct frame *proto_broadcast_envelope(const char *id, const char *from, const char *user,
                                       const char *room, const char *ts, const char *body_raw,
                                       size_t body_len)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "{\"id\":");
	buf_json_str(&b, id, strlen(id));
	buf_puts(&b, ",\"from\":");
	buf_json_str(&b, from, strlen(from));
	buf_puts(&b, ",\"user\":");
	buf_json_str(&b, user, strlen(user));
	buf_puts(&b, ",");
	put_room_field(&b, room);
	buf_puts(&b, ",\"ts\":");
	buf_json_str(&b, ts, strlen(ts));
	buf_puts(&b, ",\"body\":");
	buf_put(&b, body_raw, body_len);
	buf_puts(&b, "}");
	return finish(&b);
}

struct frame *proto_event_envelope(const char *id_raw, const char *event, const char *room,
                                   const char *ts, const char *data_raw, const char *meta_raw)
{
	struct buf b;
	buf_init(&b);
	buf_puts(&b, "{\"id\":");
	buf_puts(&b, id_raw);
	buf_puts(&b, ",\"event\":");
	buf_json_str(&b, event, strlen(event));
	buf_puts(&b, ",\"to\":");
	buf_json_str(&b, room, strlen(room));
	buf_puts(&b, ",");
	put_room_field(&b, room);
	buf_puts(&b, ",\"ts\":");
	buf_json_str(&b, ts, strlen(ts));
	buf_puts(&b, ",\"data\":");
	buf_puts(&b, data_raw && *data_raw ? data_raw : "null");
	buf_puts(&b, ",\"meta\":");
	buf_puts(&b, meta_raw && *meta_raw ? meta_raw : "{}");
	buf_puts(&b, "}");
	return finish(&b);
}

struct frame *proto_typed(struct frame *f)
{
	json_object *o, *v;
	struct buf b;
	struct frame *t;
	bool bc;

	if (!(f->flags & FRAME_ROOM_MSG) || (f->flags & FRAME_TYPED_SAME))
		return f;
	if (f->alt)
		return f->alt;
	{
		/* The frame's exact bytes: a payload forwarded from Redis is not ours. */
		struct json_tokener *tok = json_tokener_new();
		o = tok ? json_tokener_parse_ex(tok, (const char *)frame_data(f), (int)f->len)
		        : NULL;
		if (tok && json_tokener_get_error(tok) != json_tokener_success) {
			json_object_put(o);
			o = NULL;
		}
		json_tokener_free(tok);
	}
	if (!o || !json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return f;
	}
	/* An event (ours or a producer's {event,data}) or one of our broadcasts is reshaped; a
	 * payload that is neither (a producer's own {"type":…} message, such as the REST
	 * service's stats) already is what a typed client reads, and goes unchanged. */
	bc = !json_object_object_get_ex(o, "event", &v);
	if (bc && !json_object_object_get_ex(o, "body", NULL)) {
		json_object_put(o);
		f->flags |= FRAME_TYPED_SAME; /* remembered: the next recipient parses nothing */
		return f;
	}
	buf_init(&b);
	buf_puts(&b, "{\"type\":");
	if (bc)
		buf_puts(&b, "\"broadcast\"");
	else
		buf_puts(&b, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
	buf_puts(&b, ",\"data\":");
	buf_puts(&b, json_object_object_get_ex(o, bc ? "body" : "data", &v)
	                 ? json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN)
	                 : "null");
	static const char *const keys[] = {"room", "id", "ts", "from", "user"};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
		if (json_object_object_get_ex(o, keys[i], &v))
			buf_printf(&b, ",\"%s\":%s", keys[i],
			           json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
	buf_puts(&b, "}");
	json_object_put(o);
	t = finish(&b);
	if (!t)
		return f;
	t->flags = f->flags;
	t->born_ns = f->born_ns;
	f->alt = t;
	return t;
}
