/* What a connected client can do: authenticate (first frame or refresh), join, leave,
 * broadcast, ping; automatic rooms; arming token expiry (the connection timer sends the warning
 * and closes 4001); rate limiting. */
#ifndef ROOMCAST_SESSION_H
#define ROOMCAST_SESSION_H

#include "config.h"

#include <stddef.h>

struct auth;
struct conn;

void session_setup(const struct config *cfg, const struct auth *auth);
/* The connection finished its upgrade; c->ident is filled when it presented a valid token. */
void session_open(struct conn *c, int authenticated);
/* Drops joins still waiting for replay and messages waiting for the identity lookup (the
 * connection is going away). */
void session_pending_clear(struct conn *c);
/* The server API's joins and leaves, decided by the backend (no authorization): the connection
 * joins (leaves) room and gets joined (left). Return 1 when c was affected (joined, or was in
 * the room and left), 0 otherwise. */
int session_server_join(struct conn *c, const char *room);
int session_server_leave(struct conn *c, const char *room);
/* One complete client text message. */
void session_message(struct conn *c, const char *data, size_t len);

#endif
