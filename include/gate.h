/* The front door: owns the listening socket on the libuv loop, reads each connection's first
 * request head within a deadline and size limit, refuses what must be refused (401, 403, 404,
 * 429, 503, 431, 400) before anything is allocated for it, strips tokens and h2c upgrades, and
 * hands the socket to libwebsockets with a ticket describing what it already checked. */
#ifndef ROOMCAST_GATE_H
#define ROOMCAST_GATE_H

#include "auth.h"
#include "config.h"

#include <libwebsockets.h>
#include <stdbool.h>
#include <uv.h>

/* What the gate learned about an accepted WebSocket upgrade, keyed by its socket. */
struct gate_ticket {
	int fd;
	bool authenticated;
	bool batch;
	char ip[48];
	struct auth_identity ident; /* valid when authenticated */
};

int gate_start(uv_loop_t *loop, const struct config *cfg, const struct auth *auth,
               struct lws_vhost *vhost);
/* Stops accepting; connections still being read are closed. */
void gate_stop(void);

/* Removes and returns the ticket for fd (NULL if none). The caller owns it: free with
 * gate_ticket_free, which keeps the per-address slot unless release_ip is set. */
struct gate_ticket *gate_ticket_take(int fd);
void gate_ticket_free(struct gate_ticket *t, bool release_ip);
/* A WebSocket client from ip went away: frees its per-address slot. */
void gate_ip_release(const char *ip);

#endif
