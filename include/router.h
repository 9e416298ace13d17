/* The one routing path: every message, whatever door it came through, ends here as an
 * immutable frame queued on each local member of its rooms. */
#ifndef ROOMCAST_ROUTER_H
#define ROOMCAST_ROUTER_H

#include "frame.h"
#include "metrics.h"

#include <stddef.h>
#include <stdint.h>

struct room_member;

/* Where the router hands a frame for one member of a room. The member's owner (a session)
 * queues it; the router never knows what a member is. */
struct router_sink {
	/* f is a room message for room (outbox id id_num, 0 for ephemeral); the sink takes its own
	 * reference when it keeps f. */
	void (*deliver)(struct room_member *m, struct frame *f, const char *room, long long id_num);
};
/* Copies sink; set once at start-up, before the first message. */
void router_setup(const struct router_sink *sink);

/* An outbox or notify event addressed to several rooms. Each recipient gets it once, with
 * room/to naming the first of the event's rooms that it is in; one frame per room is built,
 * lazily, so the JSON is serialized once per room and never per recipient. */
struct router_event {
	long long id_num;   /* outbox id, 0 for ephemeral */
	const char *id_raw; /* JSON for the id field: 123 or "n1-5" */
	const char *event;
	const char *const *rooms;
	size_t nrooms;
	const char *ts;
	const char *data_raw;
	const char *meta_raw;
	uint64_t born_ns;
	enum metrics_source src;
};

size_t router_event(const struct router_event *ev);
/* A ready room message (broadcast envelope, or bytes another producer published) for one room,
 * forwarded byte for byte. Returns the number of recipients. */
size_t router_raw(const char *room, const char *payload, size_t len, enum metrics_source src,
                  uint64_t born_ns);

#endif
