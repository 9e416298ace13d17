/* Bounded per-room memory of the outbox events delivered most recently: a join with `since`
 * that it provably covers is answered from here instead of an outbox query. Pure bookkeeping:
 * pgl.c decides what is recorded and when an answer may come from here. */
#ifndef ROOMCAST_RECENT_H
#define ROOMCAST_RECENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct frame;

/* Builds the room message for room from an event's realtime.event_json text (NULL on failure);
 * the caller of recent_lookup gets one reference, the memory keeps another. */
typedef struct frame *(*recent_build_fn)(const char *room, const char *json, size_t len);

/* per_room events at most per room, max_bytes in all (entries, texts and built frames); either
 * 0 disables recording. Forgets everything recorded before. */
void recent_setup(size_t per_room, size_t max_bytes);
/* Frees everything (also disables). */
void recent_shutdown(void);
/* Forgets every event (outbox ids may be handed out again, e.g. after a PostgreSQL crash). */
void recent_clear(void);
bool recent_enabled(void);
/* Called when the outbox had no event at a point from which every event committed later is
 * delivered (and recorded) here, with nothing recorded yet: from then on, until an event is
 * lost (evicted with its room's whole ring, not kept) or recent_clear, a join with since 0 is
 * covered by its room's memory (no ring: the room had no event). */
void recent_mark_whole(void);

/* Records outbox event id (json: its realtime.event_json text, copied once for all rooms) as
 * delivered now to rooms, in delivery order. anchor: the event may anchor a lookup (delivered
 * in commit order with nothing delivered before it that committed after it; see pgl.c). floor:
 * the highest id delivered before this event (a room seen for the first time covers nothing
 * at or below it). */
void recent_record(const char *const *rooms, size_t nrooms, long long id, const char *json,
                   size_t len, bool anchor, long long floor);

/* When room's memory provably holds every delivered event a client that saw since may have
 * missed (since is an anchor in it, nothing after it was dropped, nothing with a higher id was
 * dropped or delivered before the room was recorded; or since is 0, see recent_mark_whole;
 * or since is a position noted with recent_note_position and every event of the room
 * delivered after it is here: then also those with a smaller id delivered after it),
 * returns 1 and hands over, in id order,
 * the events with id > since plus those with a smaller id delivered after since, except ids <=
 * min_id: *ids and *frames are malloc'd (the caller frees them and owns one reference per
 * frame; NULL when *n is 0). Returns 0 when not covered, -1 out of memory. */
int recent_lookup(const char *room, long long since, long long min_id, recent_build_fn build,
                  long long **ids, struct frame ***frames, size_t *n);

/* The delivery point of the event recorded last (recent_record counts every call). */
uint64_t recent_seq(void);
/* Remembers a position pgl handed out in `joined` (see pgl_position) from which the memory
 * may answer: event id P such that every event committed after P was delivered here after
 * delivery point seq (what a client holding P may lack, wherever it got P). Then recent_lookup
 * covers since = P for a room whose every event delivered after seq is still here. Ids and
 * seqs must ascend (others are ignored); bounded, the oldest forgotten first; recent_clear
 * forgets them. */
void recent_note_position(long long id, uint64_t seq);

/* Whether recent_lookup would answer (min_id aside), without building anything. */
bool recent_covers(const char *room, long long since);

size_t recent_bytes(void);
size_t recent_rooms(void);

#endif
