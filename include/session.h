/* What a connected client can do: authenticate (first frame or refresh), join, leave,
 * broadcast, ping; automatic rooms; arming token expiry (the connection timer sends the warning
 * and closes 4001); rate limiting. */
#ifndef ROOMCAST_SESSION_H
#define ROOMCAST_SESSION_H

#include "auth.h"
#include "config.h"
#include "conn.h"
#include "room.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct frame;

/* What a client is above its transport: who it is, its rooms, the verdicts and replays it waits
 * for. One per connection, created by session_new right after conn_new in the connection's
 * owner area (one allocation) and gone with the connection (the conn's freed hook releases
 * what it holds), so it lives as long as any hold on the connection. */
struct session {
	struct room_member member;  /* the rooms hold this (session_of_member maps back) */
	struct auth_identity ident; /* zeroed until authenticated */
	/* What only some sessions need (joins waiting for replay, the database identity lookup,
	 * the authz module's verdict cache; session.c), allocated on first use: NULL for an idle
	 * client, which thus carries one pointer instead of three. */
	void *more;
	/* Its two flags (SESSION_TYPED, SESSION_SPOKE) live in the connection's owner_bits: here
	 * they would pad the session by 8 bytes. */
};

/* Bits of conn->owner_bits. TYPED: room messages in the typed form (proto_typed), asked with
 * ?format=typed, or the first message was written in another server's dialect. SPOKE: the
 * form is decided (a first message was seen, or ?format= chose it). */
enum { SESSION_TYPED = 1u << 0, SESSION_SPOKE = 1u << 1 };

static inline struct session *session_of(const struct conn *c)
{
	return (struct session *)(void *)c->owner_area; /* see session_new */
}
static inline struct session *session_of_member(const struct room_member *m)
{
	return (struct session *)m; /* member is the first field */
}
/* The transport: s is its owner area. */
static inline struct conn *session_conn(const struct session *s)
{
	return (struct conn *)(void *)((char *)(uintptr_t)s - offsetof(struct conn, owner_area));
}

/* Registers the connection hooks (closed, deadline, drained, freed): call before conn_new. */
void session_setup(const struct config *cfg, const struct auth *auth);
/* Makes c's session; takes *ident (zeroed afterwards) when it is not NULL. format: 0 (decided
 * by the first message), 1 typed, 2 envelope. Never NULL: the session is c's owner area, which
 * session_setup sized (c made before session_setup has none: do not call it then). */
struct session *session_new(struct conn *c, struct auth_identity *ident, int format);
/* The connection finished its upgrade; the session's identity is set when it presented a
 * valid token. */
void session_open(struct conn *c, int authenticated);
/* The router's sink: queues f (a room message of room, outbox id id_num or 0) on the member's
 * connection, in its form, or holds it behind a replay of that room. */
void session_deliver(struct room_member *m, struct frame *f, const char *room, long long id_num);
/* Queues room message f on s (in the typed form when s asked for it). */
int session_send(struct session *s, struct frame *f);
/* The server API's joins and leaves, decided by the backend (no authorization): the connection
 * joins (leaves) room and gets joined (left). Return 1 when c was affected (joined, or was in
 * the room and left), 0 otherwise. */
int session_server_join(struct conn *c, const char *room);
int session_server_leave(struct conn *c, const char *room);
/* One complete client text message. */
void session_message(struct conn *c, const char *data, size_t len);

#endif
