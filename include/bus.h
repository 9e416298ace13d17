/* The bus between replicas for ephemeral messages (HTTP notify, client broadcasts): Redis
 * pub/sub on `ws:room:<room>` when REDIS_ADDR is set, else an in-process bus. Every replica,
 * the publisher included, delivers what it receives, exactly once. */
#ifndef ROOMCAST_BUS_H
#define ROOMCAST_BUS_H

#include "config.h"
#include "metrics.h"

#include <stddef.h>
#include <uv.h>

int bus_start(const struct config *cfg, uv_loop_t *loop);
void bus_stop(void);
/* Publishes a finished room message. Returns 0, or a negative code when it could not be
 * published anywhere (it is then not delivered). */
int bus_publish(const char *room, const char *payload, size_t len, enum metrics_source src);
/* Returns 1 when a join of room (already in the registry) should be answered later: the
 * replica subscribes per room, and messages published to the room before its subscription is
 * confirmed would not reach it. fn(arg) then runs once (confirmed, link lost, or stop); fn
 * must not join or leave rooms. Returns 0 (fn never runs) when nothing needs waiting for. */
int bus_when_subscribed(const char *room, void (*fn)(void *arg), void *arg);
/* "disabled" (in-process), "up" or "down". */
const char *bus_state(void);

#endif
