/* Application NOTIFY channels (realtime.listen): roomcast LISTENs on channels an application
 * already notifies on and turns each notification into an ephemeral event for the room its
 * template names. The registrations live in realtime.listens and are reloaded live. */
#ifndef ROOMCAST_PGLISTEN_H
#define ROOMCAST_PGLISTEN_H

#include "buf.h"
#include "config.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <uv.h>

/* The channel the registration functions notify on when realtime.listens or
 * realtime.live_rooms change. */
#define PGLISTEN_CONFIG_CHANNEL "roomcast_config"

struct pgc;

/* Keeps the listener pointer (it outlives this module: pglisten_stop comes first). */
void pglisten_start(const struct config *cfg, struct pgc *listen);
void pglisten_stop(void);
/* The listener (re)connected: LISTEN on the config channel and every registered channel. */
void pglisten_listener_up(void);
void pglisten_listener_down(void);
/* Returns true when n was for this module (an application channel or the config channel). */
bool pglisten_on_notify(const PGnotify *n);
/* Called when the config channel says realtime.live_rooms changed (set by the server). */
void pglisten_set_config_hook(void (*fn)(void));

/* Fills template from obj's fields: each {name} is replaced by the field's string or number
 * text. Returns 0, or -1 when a field is missing or not a scalar, or the result does not fit
 * cap. obj may be NULL (only templates without fields can be filled). */
struct json_object;
int pglisten_fill(const char *tmpl, struct json_object *obj, char *out, size_t cap);
void pglisten_metrics(struct buf *b);

#endif
