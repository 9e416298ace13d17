/* The Redis transport of the bus: one hiredis context subscribed to `events`, our heartbeat
 * channel, `roomcast:ctl` and `ws:room:<room>` for each room with local members (batched), one
 * for PUBLISH, both on the server's libuv loop, with connect deadline, heartbeat, jittered
 * reconnects and a degraded local mode while Redis is away. */
#ifndef ROOMCAST_REDISBUS_H
#define ROOMCAST_REDISBUS_H

#include "config.h"
#include "metrics.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* Where a room message received from Redis (or delivered locally while the link is down) goes:
 * the router's router_raw, given at start so this transport never calls up. Returns the number
 * of recipients. */
typedef size_t (*redisbus_deliver_fn)(const char *room, const char *payload, size_t len,
                                      enum metrics_source src, uint64_t born_ns);
/* Validates REDIS_ADDR and starts connecting; never waits for Redis. Returns -1 (after one
 * line on stderr naming the variable) when the address is malformed. */
int redisbus_start(const struct config *cfg, uv_loop_t *loop, redisbus_deliver_fn deliver);
/* Frees both contexts and closes the timers; the loop ends once their handles are closed. */
void redisbus_stop(void);
/* PUBLISHes on `ws:room:<room>` when the link is up (delivery then happens when the message
 * comes back on the subscription, on every replica alike); delivers locally and counts a
 * publish failure when it is not. */
void redisbus_publish(const char *room, const char *payload, size_t len, enum metrics_source src);
bool redisbus_is_up(void);
/* Returns 1 when room (which has local members) waits for Redis to confirm its subscription:
 * fn(arg) then runs once, when it is confirmed, when the link is lost, or at stop. Returns 0,
 * and fn never runs, when messages published to the room from now on already reach us (or
 * cannot, the link being down). fn must not join or leave rooms. */
int redisbus_when_subscribed(const char *room, void (*fn)(void *arg), void *arg);
/* The control channel `roomcast:ctl` (requests and answers between replicas). on_message gets
 * every message published there, our own included; on_up runs each time the link comes up
 * (first connect and every reconnect). */
typedef void (*redisbus_ctl_fn)(const char *payload, size_t len);
void redisbus_set_ctl(redisbus_ctl_fn on_message, void (*on_up)(void));
/* PUBLISHes on `roomcast:ctl`; -1 when the link is not up. */
int redisbus_ctl_publish(const char *payload, size_t len);

#endif
