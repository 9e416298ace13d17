/* The front door: owns the listening socket on the libuv loop, reads each connection's first
 * request head within a deadline and size limit, refuses what must be refused (401, 403, 404,
 * 429, 503, 431, 400) before anything is allocated for it, strips tokens and h2c upgrades, and
 * hands the socket to libwebsockets with a ticket describing what it already checked. With TLS,
 * lws listens and reads the head, and the same budgets and checks run here from its callbacks
 * (gate_open_lws, gate_admit_lws): admission lives in this module only, and so does the lws
 * HTTP plumbing (gate_http: requests lws parsed, answered through http.c). Counts every
 * connection from accept to close and closes any that passes its phase's deadline. */
#ifndef ROOMCAST_GATE_H
#define ROOMCAST_GATE_H

#include "auth.h"
#include "config.h"
#include "metrics.h"

#include <libwebsockets.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* Where an accepted connection is in its life. Each phase but GATE_WS has an absolute deadline
 * that no byte resets: the head (HEADER_TIMEOUT_S from accept, which also bounds the WebSocket
 * handshake), a request body and its answer (HTTP_BODY_TIMEOUT_S from the end of the head) and
 * an idle keep-alive connection's next head (HTTP_IDLE_TIMEOUT_S from the last answer). */
enum gate_phase { GATE_HEAD = 0, GATE_HTTP, GATE_IDLE, GATE_UPGRADE, GATE_WS, GATE_PHASES };

/* gate_ticket.format: the room message form asked for with ?format= */
#define GATE_FORMAT_TYPED    1
#define GATE_FORMAT_ENVELOPE 2

/*
 * One accepted TCP connection, counted from accept to close: in the HTTP budget
 * (MAX_HTTP_CONNECTIONS, MAX_HTTP_CONNECTIONS_PER_IP) until its upgrade is admitted, then in the
 * WebSocket one (MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP). The gate owns it while it reads the
 * head; from the hand-off it belongs to the lws connection (its opaque user data, never a
 * descriptor number, which lws clears before its last callback and the kernel reuses) and is
 * freed with gate_ticket_close from LWS_CALLBACK_WSI_DESTROY, or, once it is an established
 * WebSocket, with gate_ticket_upgraded: its WebSocket slot is then held by the connection's
 * address alone (gate_ws_release gives it back), so an idle client keeps no ticket.
 */
struct gate_ticket {
	enum gate_phase phase;
	bool ws; /* counted in the WebSocket budget */
	bool authenticated;
	bool batch;
	/* ?format=typed: room messages as {"type":event,"data":...}; ?format=envelope: the usual
	 * form whatever the first message; 0: decided by the first message. */
	uint8_t format;
	const char *ip;             /* the per-address entry's copy: valid until close */
	struct auth_identity ident; /* valid when authenticated; attach_conn takes it */
	struct lws *wsi;            /* NULL while the gate holds the socket */
	uint64_t deadline_ms;       /* on the loop's clock; 0: none */
	uint64_t opened_ms;
	struct gate_ticket *dprev, *dnext; /* the deadline list (tickets in lws) */
	void *ipe;                         /* the per-address entry */
	struct gate_exchange *http;        /* the HTTP exchange on this wsi (see gate_http) */
	void *conn; /* the WebSocket connection, from admission to gate_ticket_upgraded */
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
 * per-address capacity, token (docs/protocol.md). On success moves t into the WebSocket budget,
 * records what it learned (identity, batch) and returns 0; else -1 and *ref. */
int gate_admit(struct gate_ticket *t, const struct gate_upgrade *u, struct gate_refusal *ref);

/* With TLS, lws listens and reads the head itself; the same budgets and checks run from its
 * callbacks. gate_open_lws counts a connection lws accepted (LWS_CALLBACK_SERVER_NEW_CLIENT_
 * INSTANTIATED), with the head's deadline (which covers the TLS handshake) running: NULL when
 * over a budget (the socket is closed, no answer is possible before the handshake).
 * gate_admit_lws runs gate_admit on the upgrade lws parsed (LWS_CALLBACK_FILTER_PROTOCOL_
 * CONNECTION): 0 admitted, 1 refused (the HTTP answer is written; lws closes). */
struct gate_ticket *gate_open_lws(struct lws *wsi);
int gate_admit_lws(struct lws *wsi, struct gate_ticket *t);
/* Counts a connection lws accepted itself (TLS) from ip: NULL and *ref when a budget is full. */
struct gate_ticket *gate_ticket_open(const char *ip, struct gate_refusal *ref);
/* The ticket of the socket being handed to lws right now (the gate calls lws's adopt, which
 * reports the new connection before it returns); NULL when none. The caller binds it to the
 * wsi at once. */
struct gate_ticket *gate_ticket_claim(void);
/* Ties t to wsi, so its deadlines can close it. */
void gate_ticket_bind(struct gate_ticket *t, struct lws *wsi);
/* Enters phase and sets its absolute deadline (ms from now; 0: none). */
void gate_ticket_phase(struct gate_ticket *t, enum gate_phase phase, long ms);
/* The connection is gone: releases its budget slots and frees t. */
void gate_ticket_close(struct gate_ticket *t);
/* The WebSocket handshake of t is done: frees t but keeps its WebSocket slot, which is then
 * released with gate_ws_release(ip) where ip is t->ip (the per-address entry's copy, valid
 * until then). */
void gate_ticket_upgraded(struct gate_ticket *t);
void gate_ws_release(const char *ip);

/* The lws HTTP plumbing: the protocol callback hands every HTTP reason (LWS_CALLBACK_HTTP,
 * _HTTP_BODY, _HTTP_BODY_COMPLETION, _HTTP_WRITEABLE, _HTTP_DROP_PROTOCOL) here with the wsi's
 * slot for its exchange (NULL at first) and returns what this returns. The exchange is
 * answered through http.c and freed when answered, dropped, or with gate_http_end (from
 * LWS_CALLBACK_WSI_DESTROY). */
struct gate_exchange;
int gate_http(struct lws *wsi, enum lws_callback_reasons reason, struct gate_exchange **slot,
              void *in, size_t len);
void gate_http_end(struct gate_exchange **slot);

/* Keeps cfg and auth (they outlive the gate) and starts the deadline sweep on loop. */
int gate_setup(const struct config *cfg, const struct auth *auth, uv_loop_t *loop);
/* Opens the listening socket (plain HTTP mode) and hands accepted sockets to vhost. */
int gate_start(struct lws_vhost *vhost);
/* Stops accepting and the deadline sweep; connections still being read are closed. */
void gate_stop(void);

#endif
