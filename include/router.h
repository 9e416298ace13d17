/* The one routing path: every message, whatever door it came through, ends here as an
 * immutable frame queued on each local member of its rooms. */
#ifndef ROOMCAST_ROUTER_H
#define ROOMCAST_ROUTER_H

#include "frame.h"
#include "metrics.h"

#include <stddef.h>
#include <stdint.h>

struct conn;

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

/* Hook for connections with joins waiting for replay: the session module buffers or sends. */
void router_to_pending(struct conn *c, const char *room, struct frame *f, long long id_num);

#endif
