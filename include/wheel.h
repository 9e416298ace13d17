/* A one-second timing wheel of intrusive nodes: the structure behind roomcast's single
 * per-connection timer. Filing, unfiling and visiting a node are O(1), whatever the count. */
#ifndef ROOMCAST_WHEEL_H
#define ROOMCAST_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Slots, one per second; a deadline further away is visited early and filed again. */
#define WHEEL_SLOTS 64

/* Two pointers: held once per connection, so the tick it is filed under is not kept (the slot
 * says it). */
struct wheel_node {
	struct wheel_node *next, **pprev; /* pprev NULL when not filed */
};

struct wheel {
	uint32_t now; /* the last tick visited */
	size_t count; /* nodes filed */
	struct wheel_node *slot[WHEEL_SLOTS];
};

/* Starts an empty wheel at tick now (ticks count up from 1; 0 means "never"). */
void wheel_init(struct wheel *w, uint32_t now);
/* Files n (unfiling it first if needed) to be visited at tick at, clamped into
 * [now + 1, now + WHEEL_SLOTS - 1]. */
void wheel_put(struct wheel *w, struct wheel_node *n, uint32_t at);
/* Unfiles n; a node that is not filed is left alone. */
void wheel_del(struct wheel *w, struct wheel_node *n);
static inline bool wheel_filed(const struct wheel_node *n)
{
	return n->pprev != NULL;
}
/* Visits every tick after w->now up to and including to, in order. Each node due at a tick is
 * unfiled and passed to due(), with w->now set to that tick; due() may file it again (always
 * for a later tick) and may unfile any other node. */
void wheel_advance(struct wheel *w, uint32_t to, void (*due)(struct wheel_node *n, void *arg),
                   void *arg);

#endif
