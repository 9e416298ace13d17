/* Room authorization (SPEC §6): the claim rules decide at once; rooms that need ownership are
 * asked of the database policy or the backend when configured. */
#ifndef ROOMCAST_AUTHZ_H
#define ROOMCAST_AUTHZ_H

#include "auth.h"
#include "config.h"

#include <stdbool.h>

struct conn;

enum authz_result { AUTHZ_DENY = 0, AUTHZ_ALLOW, AUTHZ_ASK };

void authz_setup(const struct config *cfg);
/* The claim rules alone: ALLOW, DENY, or ASK when only the database/backend can tell. */
enum authz_result authz_claims(const struct auth_identity *id, const char *room);

/* Called with the verdict unless the connection died first. */
typedef void (*authz_done_fn)(struct conn *c, const char *room, bool allowed, void *arg);

/* Decides for c joining room. Returns ALLOW or DENY when known now (cb not called), or ASK when
 * an asynchronous check was started (cb called later; the connection is held meanwhile). */
enum authz_result authz_check(struct conn *c, const char *room, authz_done_fn cb, void *arg);

#endif
