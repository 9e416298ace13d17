/* Room authorization: the claim rules decide at once; rooms that need ownership are
 * asked of the database policy or the backend when configured. */
#ifndef ROOMCAST_AUTHZ_H
#define ROOMCAST_AUTHZ_H

#include "auth.h"
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

struct conn;

/* AUTHZ_UNAVAILABLE: the policy could not answer (timeout, error, PostgreSQL down): the join is
 * refused, but as a failure the client may retry, not as a verdict. */
enum authz_result { AUTHZ_DENY = 0, AUTHZ_ALLOW, AUTHZ_ASK, AUTHZ_UNAVAILABLE };

void authz_setup(const struct config *cfg, uv_loop_t *loop);
/* The claim rules alone: ALLOW, DENY, or ASK when only the database/backend can tell. */
enum authz_result authz_claims(const struct auth_identity *id, const char *room);

/* Called with the verdict of an asynchronous check; always called, so check conn_alive(c). */
/* verdict: AUTHZ_ALLOW, AUTHZ_DENY or AUTHZ_UNAVAILABLE. */
typedef void (*authz_done_fn)(struct conn *c, const char *room, enum authz_result verdict,
                              void *arg);

/* Decides for c joining room. Returns ALLOW, DENY or UNAVAILABLE when known now (claims, a
 * verdict cached for this connection, or no policy to ask; cb not called), or ASK when an
 * asynchronous check was started (cb is called later; the connection is held meanwhile). */
enum authz_result authz_check(struct conn *c, const char *room, authz_done_fn cb, void *arg);

/* After a token refresh: may c stay in room? Claims decide; rooms only a policy can grant are
 * kept when the policy allowed them for this connection (its cached verdict). */
bool authz_still_allowed(struct conn *c, const char *room);
/* A policy check that got no answer (timeout, error): denies, cached only briefly. */
#define AUTHZ_VERDICT_FAILED (-1)
/* Verdicts kept per connection; past it the oldest denial (or expired one) gives way. */
#define AUTHZ_CACHE_MAX 256
/* Records a policy verdict for c: > 0 allowed, 0 denied, AUTHZ_VERDICT_FAILED. Joins reuse it
 * for 5 s (failed), 60 s (denied) or 300 s (allowed), then ask again. */
void authz_cache_put(struct conn *c, const char *room, int verdict);
/* Number of verdicts cached for c (for tests). */
uint32_t authz_cache_count(const struct conn *c);

/* True for rooms that are receive-only for ordinary users (product-<id>, sellers, clients,
 * admin, admins). */
bool authz_room_is_public(const char *room);
/* May id broadcast into room (of which it is a member)? Receive-only rooms refuse users that
 * are neither admin nor service, unless the token's "rooms" claim names the room. */
bool authz_may_broadcast(const struct auth_identity *id, const char *room);
/* Frees the connection's verdict cache. */
void authz_cache_free(struct conn *c);

#endif
