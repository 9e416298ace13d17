/* Room authorization: the claim rules decide at once; rooms that need ownership are
 * asked of the database policy or the backend when configured. */
#ifndef ROOMCAST_AUTHZ_H
#define ROOMCAST_AUTHZ_H

#include "auth.h"
#include "config.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* AUTHZ_UNAVAILABLE: the policy could not answer (timeout, error, PostgreSQL down): the join is
 * refused, but as a failure the client may retry, not as a verdict. */
enum authz_result { AUTHZ_DENY = 0, AUTHZ_ALLOW, AUTHZ_ASK, AUTHZ_UNAVAILABLE };

/* The SQL policy (AUTHZ=sql): asks realtime.can_join(claims_json, room) and calls cb(arg, room,
 * verdict) once when it returns 0 (verdict 1 allowed, 0 denied, -1 no answer); -1 when it
 * cannot ask. Given at setup (pgl_can_join) so this module never calls up into pgl. */
typedef void (*authz_sql_done_fn)(void *arg, const char *room, int verdict);
typedef int (*authz_sql_fn)(const char *claims_json, const char *room, authz_sql_done_fn cb,
                            void *arg);
void authz_setup(const struct config *cfg, uv_loop_t *loop, authz_sql_fn sql);
/* The claim rules alone: ALLOW, DENY, or ASK when only the database/backend can tell. */
enum authz_result authz_claims(const struct auth_identity *id, const char *room);

/* Called once with the verdict of an asynchronous check: AUTHZ_ALLOW, AUTHZ_DENY or
 * AUTHZ_UNAVAILABLE. */
typedef void (*authz_done_fn)(void *arg, const char *room, enum authz_result verdict);

/* Decides for identity id joining room; *cache is the asker's verdict cache (NULL at first;
 * free it with authz_cache_free). Returns ALLOW, DENY or UNAVAILABLE when known now (claims, a
 * cached verdict, or no policy to ask; cb not called), or ASK when an asynchronous check was
 * started: cb is called later, and the verdict recorded in *cache, so the caller keeps id,
 * cache and arg valid until then. */
enum authz_result authz_check(const struct auth_identity *id, void **cache, const char *room,
                              authz_done_fn cb, void *arg);

/* After a token refresh: may id stay in room? Claims decide; rooms only a policy can grant are
 * kept when the policy allowed them (the verdict in cache). */
bool authz_still_allowed(const struct auth_identity *id, void *cache, const char *room);
/* A policy check that got no answer (timeout, error): denies, cached only briefly. */
#define AUTHZ_VERDICT_FAILED (-1)
/* Verdicts kept per connection; past it the oldest denial (or expired one) gives way. */
#define AUTHZ_CACHE_MAX 256
/* Records a policy verdict in *cache: > 0 allowed, 0 denied, AUTHZ_VERDICT_FAILED. Joins reuse
 * it for 5 s (failed), 60 s (denied) or 300 s (allowed), then ask again. */
void authz_cache_put(void **cache, const char *room, int verdict);
/* Number of verdicts in cache (for tests). */
uint32_t authz_cache_count(const void *cache);

/* True for rooms that are receive-only for ordinary users (product-<id>, sellers, clients,
 * admin, admins). */
bool authz_room_is_public(const char *room);
/* May id broadcast into room (of which it is a member)? Receive-only rooms refuse users that
 * are neither admin nor service, unless the token's "rooms" claim names the room. */
bool authz_may_broadcast(const struct auth_identity *id, const char *room);
/* Frees a verdict cache and sets *cache to NULL. */
void authz_cache_free(void **cache);

#endif
