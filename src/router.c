/* Fan-out: walks each room's member array once and queues a frame reference per recipient.
 * A generation counter stamped on members gives exactly-once delivery across an event's rooms
 * without any per-event set. */
#include "router.h"
#include "log.h"
#include "proto.h"
#include "room.h"

static uint64_t g_gen;
static struct router_sink g_sink;

void router_setup(const struct router_sink *sink)
{
	g_sink = *sink;
}

static size_t deliver_room(struct room *r, struct frame *f, long long id_num, uint64_t gen)
{
	uint32_t count;
	struct room_member *const *members = room_members(r, &count);
	size_t n = 0;

	/* A member closed by the sink (slow consumer) stays in the array until lws detaches it
	 * later, outside this loop, so the array is stable while we walk it. */
	for (uint32_t i = 0; i < count; i++) {
		struct room_member *m = members[i];
		if (m->seen_gen == gen)
			continue;
		m->seen_gen = gen;
		if (g_sink.deliver)
			g_sink.deliver(m, f, room_name(r), id_num);
		n++;
	}
	return n;
}

size_t router_event(const struct router_event *ev)
{
	uint64_t gen = ++g_gen;
	size_t n = 0;

	metrics.messages_routed[ev->src]++;
	for (size_t i = 0; i < ev->nrooms; i++) {
		struct room *r = room_find(ev->rooms[i]);
		struct frame *f;
		if (!r)
			continue;
		f = proto_event_envelope(ev->id_raw, ev->event, ev->rooms[i], ev->ts, ev->data_raw,
		                         ev->meta_raw);
		if (!f) {
			log_error("proto_event_envelope failed", "reason", "out of memory");
			continue;
		}
		f->flags |= FRAME_ROOM_MSG;
		f->born_ns = ev->born_ns;
		n += deliver_room(r, f, ev->id_num, gen);
		frame_unref(f);
	}
	return n;
}

size_t router_raw(const char *room, const char *payload, size_t len, enum metrics_source src,
                  uint64_t born_ns)
{
	struct room *r = room_find(room);
	struct frame *f;
	size_t n;

	metrics.messages_routed[src]++;
	if (!r)
		return 0;
	f = frame_new(payload, len);
	if (!f) {
		log_error("frame_new failed", "reason", "out of memory");
		return 0;
	}
	f->flags |= FRAME_ROOM_MSG;
	f->born_ns = born_ns;
	n = deliver_room(r, f, 0, ++g_gen);
	frame_unref(f);
	return n;
}
