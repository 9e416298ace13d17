/* The front door: owns the listening socket on the libuv loop, reads each connection's first
 * request head within a deadline and size limit, refuses what must be refused (401, 403, 404,
 * 429, 503, 431, 400) before anything is allocated for it, strips tokens and h2c upgrades, and
 * hands the socket to libwebsockets with a ticket describing what it already checked. */
#ifndef ROOMCAST_GATE_H
#define ROOMCAST_GATE_H

#include "auth.h"
#include "config.h"
#include "metrics.h"

#include <libwebsockets.h>
#include <stdbool.h>
#include <uv.h>

/* What the gate learned about an accepted WebSocket upgrade, keyed by its socket. */
struct gate_ticket {
	int fd;
	bool authenticated;
	bool batch;
	const char *ip; /* the per-address slot's own copy: valid while the slot is held */
	struct auth_identity ident; /* valid when authenticated */
};

/* What the admission checks need from a WebSocket upgrade request (pointers into the
 * request; lengths exclude any NUL). */
struct gate_upgrade {
	const char *target; /* path and query */
	size_t target_len;
	const char *origin, *authorization, *protocol; /* NULL when absent */
	size_t origin_len, authorization_len, protocol_len;
	bool has_key; /* Sec-WebSocket-Key present */
	const char *ip;
};

struct gate_refusal {
	int status;
	const char *reason; /* HTTP reason phrase */
	const char *body;   /* text/plain body */
	enum metrics_refuse why;
};

/* The checks every WebSocket upgrade passes, in order: path /ws, key, Origin, total and
 * per-address capacity, token (SPEC §3 order). Returns a ticket with its per-address slot
 * taken (free with gate_ticket_free(t, true) if it is not used), or NULL and *ref. */
struct gate_ticket *gate_admit(const struct gate_upgrade *u, int fd, struct gate_refusal *ref);

/* Keeps cfg and auth (they outlive the gate) for gate_admit and the listener. */
int gate_setup(const struct config *cfg, const struct auth *auth);
/* Opens the listening socket (plain HTTP mode) and hands accepted sockets to vhost. */
int gate_start(uv_loop_t *loop, struct lws_vhost *vhost);
/* Stops accepting; connections still being read are closed. */
void gate_stop(void);

/* Removes and returns the ticket for fd (NULL if none). The caller owns it: free with
 * gate_ticket_free, which keeps the per-address slot unless release_ip is set. */
struct gate_ticket *gate_ticket_take(int fd);
void gate_ticket_free(struct gate_ticket *t, bool release_ip);
/* A WebSocket client from ip went away: frees its per-address slot. */
void gate_ip_release(const char *ip);

#endif
