/* The client protocol: parses client frames into typed messages (strict JSON, exact
 * length, low depth) and builds the server's reply frames and room-message envelopes. */
#ifndef ROOMCAST_PROTO_H
#define ROOMCAST_PROTO_H

#include "buf.h"
#include "frame.h"
#include "room.h"

#include <stdbool.h>
#include <stddef.h>

enum proto_type {
	PROTO_JOIN,
	PROTO_LEAVE,
	PROTO_BROADCAST,
	PROTO_AUTH,
	PROTO_PING,
	PROTO_HISTORY,
	PROTO_PRESENCE
};

/* History pages: limit defaults to PROTO_HISTORY_DEFAULT; more than PROTO_HISTORY_MAX is cut to it.
 */
#define PROTO_HISTORY_DEFAULT 100
#define PROTO_HISTORY_MAX     1000

/* Error codes of the error reply; proto_code_name() gives the wire string. */
enum proto_code {
	PROTO_OK = 0,
	PROTO_BAD_JSON,
	PROTO_BAD_TYPE,
	PROTO_BAD_ROOM,
	PROTO_FORBIDDEN,
	PROTO_NOT_MEMBER,
	PROTO_RATE_LIMITED,
	PROTO_TOO_LARGE,
	PROTO_UNAUTHENTICATED,
	PROTO_SERVER_ERROR,
};

struct proto_msg {
	enum proto_type type;
	char room[ROOM_NAME_MAX + 1];
	bool has_since;
	long long since;
	int limit;     /* history: events per page (1..PROTO_HISTORY_MAX) */
	bool presence; /* join: also send presence_join / presence_leave for the room */
	char *body;    /* broadcast body as compact JSON, malloc'd */
	size_t body_len;
	char *token; /* auth token, malloc'd */
	/* Written in another server's dialect ({"action":...}, or a room as data.channel): the
	 * connection may want typed room messages (see proto_typed). */
	bool dialect;
	/* {"action":"subscribe","filters":[...]}: every room, malloc'd (room holds the first). */
	char (*rooms)[ROOM_NAME_MAX + 1];
	size_t nrooms;
};

/* Most rooms one action message may name. */
#define PROTO_MAX_FILTERS 64

#define PROTO_MAX_DEPTH 16

/* Parses one client text frame. On PROTO_OK fills *out (free with proto_msg_clear); otherwise
 * *detail points to a static human-readable message for the error reply. */
enum proto_code proto_parse(const char *data, size_t len, struct proto_msg *out,
                            const char **detail);
void proto_msg_clear(struct proto_msg *m);
/* Whether a parsed JSON value is standard JSON all through. json-c's tokener, even in strict
 * mode, also takes NaN, Infinity and numbers such as 1., -.5 or 00.5, and writes such doubles
 * back out as they came, which no client's JSON.parse accepts. The notify door checks too. */
struct json_object;
bool proto_json_standard(struct json_object *o);
const char *proto_code_name(enum proto_code c);

/* Reply frames; each returns a new frame (refs = 1) or NULL on allocation failure. room may be
 * NULL where the reply has none. */
/* joined: recovered and replayed with with_recovery; position when >= 0 (pgl_position). */
struct frame *proto_joined(const char *room, bool recovered, long replayed, bool with_recovery,
                           long long position);
struct frame *proto_left(const char *room);
/* {"room":...,"events":[...],"recovered":...,"more":...}: the history answer (the HTTP body, and
 * the payload of the client reply); events are room-message frames, spliced as they are. */
struct buf;
void proto_history_json(struct buf *b, const char *room, struct frame **events, size_t n,
                        bool recovered, bool more);
/* {"type":"history","payload":<proto_history_json>} */
struct frame *proto_history(const char *room, struct frame **events, size_t n, bool recovered,
                            bool more);
struct frame *proto_error(enum proto_code code, const char *message, const char *room);
struct frame *proto_pong(void);
struct frame *proto_token_expiring(long in_s);
struct frame *proto_authenticated(long long exp);

/* Room-message envelopes. `raw` strings are spliced unchanged and must be valid JSON. */
struct frame *proto_broadcast_envelope(const char *id, const char *from, const char *user,
                                       const char *room, const char *ts, const char *body_raw,
                                       size_t body_len);
/* The typed form of a room message for clients that dispatch on "type":
 * {"type":<event>,"data":<data>,"room":...,"id":...,"ts":...} (a client broadcast becomes
 * type "broadcast" with its body as data, plus from and user). Built at most once per frame and
 * kept in f->alt; returns a borrowed pointer (f itself when f is not a room message or cannot
 * be rewritten). */
struct frame *proto_typed(struct frame *f);
/* id_raw is a JSON number (outbox) or JSON string (ephemeral), already encoded. */
struct frame *proto_event_envelope(const char *id_raw, const char *event, const char *room,
                                   const char *ts, const char *data_raw, const char *meta_raw);

#endif
