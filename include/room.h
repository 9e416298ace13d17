/* The room registry: rooms by name, their members, membership links kept on both sides so
 * join/leave are O(1) and fan-out walks a flat array. Also room-name validation and the
 * wildcard patterns of the token's "rooms" claim. */
#ifndef ROOMCAST_ROOM_H
#define ROOMCAST_ROOM_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define ROOM_NAME_MAX 128

struct room;

/* One membership as seen from the member: which room and where in its member array. */
struct room_sub {
	struct room *room;
	uint32_t pos;
};

/* Rooms one member may be in: room_join refuses more. */
#define ROOM_MEMBER_MAX_SUBS 32768

/* Embedded in whatever joins rooms (a connection; one per client, hence 24 bytes). The
 * registry keeps pointers to it, so it must not move while it is in any room; room_leave_all
 * before freeing it. Read its memberships with room_member_room / room_member_pos. */
struct room_member {
	union {
		struct room *one;      /* while capsubs is 1 (the first membership, inline) */
		struct room_sub *many; /* capsubs > 1 */
	} subs;
	uint64_t seen_gen; /* last delivery generation that reached this member (dedupe) */
	uint32_t one_pos;  /* subs.one's pos */
	uint16_t nsubs, capsubs;
};

/* The room of m's membership i (< m->nsubs), and m's index in that room's member array. */
static inline struct room *room_member_room(const struct room_member *m, uint32_t i)
{
	return m->capsubs == 1 ? m->subs.one : m->subs.many[i].room;
}
static inline uint32_t room_member_pos(const struct room_member *m, uint32_t i)
{
	return m->capsubs == 1 ? m->one_pos : m->subs.many[i].pos;
}

const char *room_name(const struct room *r);
/* The member array, valid until the next join or leave on this room. */
struct room_member *const *room_members(const struct room *r, uint32_t *count);

/* Name rules: 1..128 bytes of [A-Za-z0-9_.:-]. */
bool room_name_valid(const char *name, size_t len);
/* '*' matches any run (also empty) of name characters; everything else is literal. */
bool room_pattern_match(const char *pattern, const char *name);

/* Adds m to the room, creating it. Returns 0 when added, 1 when already a member, -1 on
 * allocation failure or when m is in ROOM_MEMBER_MAX_SUBS rooms already. */
int room_join(const char *name, struct room_member *m);
/* Called after every join that added a member (not for repeated joins); fn must not join or
 * leave. One hook: the live rooms module's. */
void room_set_join_hook(void (*fn)(const char *name, struct room_member *m));
/* Presence bookkeeping: join runs after every join that added a member, leave before every
 * removal (room_leave, room_leave_all); neither may join or leave. */
void room_set_presence_hooks(void (*join)(const char *name, struct room_member *m),
                             void (*leave)(const char *name, struct room_member *m));
/* Runs when a room gets its first member (exists true, after the join hooks) and when its last
 * member is removed (exists false, before the room is freed; also from room_reset); it must
 * not join or leave. One hook: the bus's, which subscribes per room. */
void room_set_life_hook(void (*fn)(const char *name, bool exists));
/* Returns 0 when removed, 1 when not a member. Empty rooms are freed. */
int room_leave(const char *name, struct room_member *m);
void room_leave_all(struct room_member *m);
struct room *room_find(const char *name);
bool room_is_member(const struct room_member *m, const char *name);

size_t room_count(void);
/* Calls fn for every room; fn must not join or leave. */
void room_foreach(void (*fn)(const struct room *r, void *arg), void *arg);
struct buf;
/* Appends every room with its member count as a JSON object: {"order-7":2,...}. */
void room_counts_json(struct buf *b);
/* Frees every room (members are only unlinked). For shutdown and tests. */
void room_reset(void);

#endif
