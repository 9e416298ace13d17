/* Live SQL rooms (realtime.live_room): while a room matching a registered pattern has members,
 * roomcast runs the pattern's query for it every so often on a connection of its own and pushes
 * the first row to the room whenever it changes. */
#ifndef ROOMCAST_LIVEROOM_H
#define ROOMCAST_LIVEROOM_H

#include "buf.h"
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

/* Starts the module's own PostgreSQL connection (nothing without DATABASE_URL). */
int liveroom_start(const struct config *cfg, uv_loop_t *loop);
void liveroom_stop(void);
/* realtime.live_rooms changed: read it again. */
void liveroom_reload(void);
void liveroom_metrics(struct buf *b);

/* Matches name against pattern, where each {param} stands for a non-empty run of characters.
 * On a match fills vals[i] (each of cap bytes) with the parameters in order and returns how
 * many there are (0..max); returns -1 when name does not match. */
int liveroom_match(const char *pattern, const char *name, char vals[][129], int max);

#endif
