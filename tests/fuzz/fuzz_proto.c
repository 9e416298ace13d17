/* Fuzzes proto_parse, the client-message parser, and for every message it accepts the
 * reply frames and room-message envelopes built from the parsed fields: each must be JSON that a
 * strict client parses, and must carry the parsed values back unchanged (catches escaping bugs). */
#include "fuzz.h"

#include "frame.h"
#include "proto.h"
#include "room.h"

/* Parses a built frame as a client would. Client frames reach proto_parse only after lws has
 * validated their UTF-8, so when the input was valid UTF-8 the output must be too; otherwise
 * only the JSON syntax is checked (the harness feeds bytes lws would have refused). */
static json_object *parse_frame(struct frame *f, bool utf8, const char *what)
{
	json_object *o;

	FUZZ_CHECK(f != NULL, "%s: no frame", what);
	FUZZ_CHECK(frame_data(f)[f->len] == '\0', "%s: frame not NUL-terminated", what);
	/* What JSON.parse accepts, not only what json-c does (NaN, Infinity). */
	FUZZ_CHECK(fuzz_json_rfc8259((const char *)frame_data(f), f->len),
	           "%s: not RFC 8259 JSON: %.*s", what, (int)f->len, (const char *)frame_data(f));
	o = fuzz_json_object((const char *)frame_data(f), f->len, utf8);
	FUZZ_CHECK(o, "%s: not a JSON object: %.*s", what, (int)f->len,
	           (const char *)frame_data(f));
	return o;
}

/* Asserts obj[key] is the string want (byte for byte, embedded NULs included). */
static void expect_str(json_object *obj, const char *key, const char *want, size_t want_len,
                       const char *what)
{
	size_t n = 0;
	const char *s = fuzz_json_str(obj, key, &n);

	FUZZ_CHECK(s && n == want_len && !memcmp(s, want, n), "%s: %s does not round-trip", what,
	           key);
}

static json_object *payload_of(json_object *o, const char *type, const char *what)
{
	json_object *p = NULL;

	expect_str(o, "type", type, strlen(type), what);
	FUZZ_CHECK(json_object_object_get_ex(o, "payload", &p) &&
	               json_object_is_type(p, json_type_object),
	           "%s: no payload object", what);
	return p;
}

static void check_error_reply(enum proto_code code, const char *detail, const char *room, bool utf8)
{
	struct frame *f = proto_error(code, detail, room);
	json_object *o = parse_frame(f, utf8, "error"), *p = payload_of(o, "error", "error");
	const char *name = proto_code_name(code);

	expect_str(p, "error", detail, strlen(detail), "error");
	expect_str(p, "code", name, strlen(name), "error");
	if (room && *room)
		expect_str(p, "room", room, strlen(room), "error");
	json_object_put(o);
	frame_unref(f);
}

/* The room replies of join/leave/broadcast: the room is valid and comes back intact. */
static void check_room_replies(const struct proto_msg *m, bool utf8)
{
	size_t rl = strlen(m->room);
	struct frame *f;
	json_object *o, *p, *v;

	FUZZ_CHECK(room_name_valid(m->room, rl), "parsed room is not a valid name");

	f = proto_joined(m->room, m->has_since, m->has_since ? 3 : 0, m->has_since,
	                 m->has_since ? m->since : -1);
	o = parse_frame(f, utf8, "joined");
	p = payload_of(o, "joined", "joined");
	expect_str(p, "room", m->room, rl, "joined");
	FUZZ_CHECK(json_object_object_get_ex(p, "recovered", &v) == m->has_since,
	           "joined: recovered present iff since");
	json_object_put(o);
	frame_unref(f);

	f = proto_left(m->room);
	o = parse_frame(f, utf8, "left");
	expect_str(payload_of(o, "left", "left"), "room", m->room, rl, "left");
	json_object_put(o);
	frame_unref(f);

	check_error_reply(PROTO_FORBIDDEN, "not authorized", m->room, utf8);
}

/* Broadcast and event envelopes around the parsed body. `user` is arbitrary text (the raw
 * input or a token) so the escaper sees every byte value. */
static void check_envelopes(const struct proto_msg *m, const char *user, bool utf8)
{
	const char *ts = "2026-11-22T10:00:00.123Z";
	const char *body = m->body ? m->body : "{\"k\":[1,\"two\",null]}";
	size_t body_len = m->body ? m->body_len : strlen(body);
	json_object *want, *o, *v;
	struct frame *f;

	FUZZ_CHECK(fuzz_json_parse(body, body_len, utf8, &want), "broadcast body is not JSON: %.*s",
	           (int)body_len, body);

	f = proto_broadcast_envelope("n1-42", "conn-1", user, m->room, ts, body, body_len);
	o = parse_frame(f, utf8, "broadcast envelope");
	FUZZ_CHECK(!json_object_object_get_ex(o, "type", NULL), "room messages have no type");
	expect_str(o, "user", user, strlen(user), "broadcast envelope");
	expect_str(o, "room", m->room, strlen(m->room), "broadcast envelope");
	FUZZ_CHECK(json_object_object_get_ex(o, "body", &v) && json_object_equal(v, want),
	           "broadcast envelope: body changed");
	json_object_put(o);
	frame_unref(f);

	/* The event name takes the same arbitrary text; data takes the body. */
	f = proto_event_envelope("123", user, m->room, ts, body, NULL);
	o = parse_frame(f, utf8, "event envelope");
	expect_str(o, "event", user, strlen(user), "event envelope");
	expect_str(o, "to", m->room, strlen(m->room), "event envelope");
	expect_str(o, "room", m->room, strlen(m->room), "event envelope");
	FUZZ_CHECK(json_object_object_get_ex(o, "data", &v) && json_object_equal(v, want),
	           "event envelope: data changed");
	json_object_put(o);
	/* Its typed form carries the same event and data. */
	f->flags |= FRAME_ROOM_MSG;
	o = parse_frame(proto_typed(f), utf8, "typed form"); /* freed with f */
	expect_str(o, "type", user, strlen(user), "typed form");
	FUZZ_CHECK(json_object_object_get_ex(o, "data", &v) && json_object_equal(v, want),
	           "typed form: data changed");
	json_object_put(o);
	frame_unref(f);
	json_object_put(want);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *in = (const char *)data, *detail = NULL;
	bool utf8 = fuzz_utf8_valid(data, size);
	struct proto_msg m;
	enum proto_code rc;
	char *text;

	rc = proto_parse(in, size, &m, &detail);
	FUZZ_CHECK(detail != NULL, "no detail");
	FUZZ_CHECK(rc <= PROTO_SERVER_ERROR, "code %d out of range", (int)rc);
	if (rc != PROTO_OK) {
		FUZZ_CHECK(*detail && !m.body && !m.token && !m.rooms,
		           "failed parse left state (%s)", detail);
		check_error_reply(rc, detail, NULL, true);
		return 0;
	}

	/* The input up to its first NUL, as arbitrary text for the escaper. */
	text = strndup(in, size);
	if (!text)
		abort();
	switch (m.type) {
	case PROTO_JOIN:
		FUZZ_CHECK(!m.has_since || m.since >= 0, "negative since accepted");
		check_room_replies(&m, utf8);
		/* An action message's filters: every one a valid room, the first one in room. */
		FUZZ_CHECK(m.nrooms <= PROTO_MAX_FILTERS &&
		               (!m.nrooms || !strcmp(m.rooms[0], m.room)),
		           "filters");
		for (size_t i = 0; i < m.nrooms; i++)
			FUZZ_CHECK(room_name_valid(m.rooms[i], strlen(m.rooms[i])),
			           "bad filter room");
		break;
	case PROTO_LEAVE:
		FUZZ_CHECK(!m.has_since, "leave with since");
		check_room_replies(&m, utf8);
		break;
	case PROTO_BROADCAST:
		FUZZ_CHECK(m.body && m.body_len == strlen(m.body), "broadcast body length");
		check_room_replies(&m, utf8);
		check_envelopes(&m, text, utf8);
		break;
	case PROTO_AUTH: {
		struct frame *f = proto_authenticated(m.has_since ? m.since : 1700000000);
		json_object *o = parse_frame(f, true, "authenticated");

		json_object *in_obj = fuzz_json_object(in, size, false), *part = NULL;
		const char *want = NULL;
		size_t want_len = 0;

		FUZZ_CHECK(m.token && *m.token, "auth without a token");
		/* The token is the JSON string whole, never a prefix of it. */
		if (json_object_object_get_ex(in_obj, "payload", &part))
			want = fuzz_json_str(part, "token", &want_len);
		if (!want && json_object_object_get_ex(in_obj, "data", &part))
			want = fuzz_json_str(part, "token", &want_len);
		if (!want && m.dialect) /* {"action":"auth","token":...} */
			want = fuzz_json_str(in_obj, "token", &want_len);
		FUZZ_CHECK(want && strlen(m.token) == want_len && !memcmp(m.token, want, want_len),
		           "token differs from the one sent");
		json_object_put(in_obj);
		json_object_put(o);
		frame_unref(f);
		/* Tokens are echoed nowhere, but they are the richest arbitrary strings here. */
		strcpy(m.room, "user-1");
		check_envelopes(&m, m.token, utf8);
		break;
	}
	case PROTO_PING: {
		struct frame *f = proto_pong();
		json_object *o = parse_frame(f, true, "pong");

		expect_str(o, "type", "pong", 4, "pong");
		json_object_put(o);
		frame_unref(f);
		break;
	}
	case PROTO_HISTORY:
		FUZZ_CHECK(!m.has_since || m.since >= 0, "negative since accepted");
		FUZZ_CHECK(m.limit >= 1 && m.limit <= PROTO_HISTORY_MAX, "limit %d out of range",
		           m.limit);
		check_room_replies(&m, utf8);
		break;
	case PROTO_PRESENCE:
		check_room_replies(&m, utf8);
		break;
	default:
		FUZZ_CHECK(0, "unknown type %d", (int)m.type);
	}
	free(text);
	proto_msg_clear(&m);
	return 0;
}
