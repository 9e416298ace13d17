/* Room registry and membership. Each room keeps a flat array of member pointers and each member
 * keeps (room, index) pairs, so leaving swaps the last member into the hole in O(1) and fan-out
 * is a linear walk with no allocation. */
#include "room.h"
#include "util.h"

#include <stdlib.h>
#include <string.h>
#include <uthash.h>

/* Most rooms are a user's own (user-<id>), with one member: the name lives in the same
 * allocation and the member array starts at one slot, so such a room costs two allocations. */
struct room {
	struct room_member **members; /* &one while cap is 1: most rooms have one member */
	struct room_member *one;
	uint32_t count, cap;
	UT_hash_handle hh;
	char name[];
};

static struct room *g_rooms;

static bool name_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       c == '_' || c == '-' || c == '.' || c == ':';
}

bool room_name_valid(const char *name, size_t len)
{
	if (!name || len == 0 || len > ROOM_NAME_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		if (!name_char((unsigned char)name[i]))
			return false;
	return true;
}

bool room_pattern_match(const char *p, const char *s)
{
	/* Iterative glob with one backtrack point: linear in practice, no recursion. */
	const char *star = NULL, *resume = NULL;

	while (*s) {
		if (*p == '*') {
			star = p++;
			resume = s;
		} else if (*p == *s) {
			p++;
			s++;
		} else if (star) {
			p = star + 1;
			s = ++resume;
		} else {
			return false;
		}
	}
	while (*p == '*')
		p++;
	return *p == '\0';
}

struct room *room_find(const char *name)
{
	struct room *r;
	HASH_FIND_STR(g_rooms, name, r);
	return r;
}

static int sub_index(const struct room_member *m, const struct room *r)
{
	for (uint32_t i = 0; i < m->nsubs; i++)
		if (m->subs[i].room == r)
			return (int)i;
	return -1;
}

bool room_is_member(const struct room_member *m, const char *name)
{
	struct room *r = room_find(name);
	return r && sub_index(m, r) >= 0;
}

static void (*g_join_hook)(const char *name, struct room_member *m);

void room_set_join_hook(void (*fn)(const char *name, struct room_member *m))
{
	g_join_hook = fn;
}

static void (*g_pres_join)(const char *name, struct room_member *m);
static void (*g_pres_leave)(const char *name, struct room_member *m);

void room_set_presence_hooks(void (*join)(const char *name, struct room_member *m),
                             void (*leave)(const char *name, struct room_member *m))
{
	g_pres_join = join;
	g_pres_leave = leave;
}

static void (*g_life)(const char *name, bool exists);

void room_set_life_hook(void (*fn)(const char *name, bool exists))
{
	g_life = fn;
}

int room_join(const char *name, struct room_member *m)
{
	struct room *r;

	HASH_FIND_STR(g_rooms, name, r);
	if (r && sub_index(m, r) >= 0)
		return 1;
	if (m->nsubs == m->capsubs) {
		/* The first membership (an idle client's user-<id>) fits inline; from the second
		 * on they live in an array. */
		uint32_t ncap = m->capsubs ? m->capsubs * 2 : 1;
		struct room_sub *ns;
		if (ncap == 1)
			ns = &m->one;
		else if (m->subs == &m->one && (ns = malloc(sizeof(*ns) * ncap)))
			ns[0] = m->one;
		else
			ns = m->subs == &m->one ? NULL : realloc(m->subs, sizeof(*ns) * ncap);
		if (!ns)
			return -1;
		m->subs = ns;
		m->capsubs = ncap;
	}
	if (!r) {
		size_t len = strlen(name);
		r = calloc(1, sizeof(struct room) + len + 1);
		if (!r)
			return -1;
		memcpy(r->name, name, len + 1);
		HASH_ADD_KEYPTR(hh, g_rooms, r->name, len, r);
	}
	if (r->count == r->cap) {
		uint32_t ncap = r->cap ? r->cap * 2 : 1;
		struct room_member **nm;
		if (ncap == 1)
			nm = &r->one;
		else if (r->members == &r->one && (nm = malloc(sizeof(*nm) * ncap)))
			nm[0] = r->one;
		else
			nm = r->members == &r->one ? NULL : realloc(r->members, sizeof(*nm) * ncap);
		if (!nm) {
			if (!r->count) {
				HASH_DEL(g_rooms, r);
				free(r);
			}
			return -1;
		}
		r->members = nm;
		r->cap = ncap;
	}
	r->members[r->count] = m;
	m->subs[m->nsubs].room = r;
	m->subs[m->nsubs].pos = r->count;
	m->nsubs++;
	r->count++;
	if (g_join_hook)
		g_join_hook(r->name, m);
	if (g_pres_join)
		g_pres_join(r->name, m);
	if (r->count == 1 && g_life)
		g_life(r->name, true);
	return 0;
}

/* Only rooms that had a member reach here (a room whose first join failed is deleted where
 * it failed), so the life hook sees every appearance matched by one disappearance. */
static void free_room(struct room *r)
{
	if (g_life)
		g_life(r->name, false);
	HASH_DEL(g_rooms, r);
	if (r->members != &r->one)
		free(r->members);
	free(r);
}

/* Removes subscription si of m: swap-remove on both sides. */
static void unlink_sub(struct room_member *m, uint32_t si)
{
	struct room *r = m->subs[si].room;
	uint32_t pos = m->subs[si].pos;
	uint32_t last = r->count - 1;

	if (g_pres_leave)
		g_pres_leave(r->name, m);
	if (pos != last) {
		struct room_member *moved = r->members[last];
		int msi = sub_index(moved, r);
		r->members[pos] = moved;
		moved->subs[msi].pos = pos;
	}
	r->count--;
	m->subs[si] = m->subs[m->nsubs - 1];
	m->nsubs--;
	if (!m->nsubs && m->subs == &m->one) {
		/* In no room, the member holds no pointer into itself (it may move again). */
		m->subs = NULL;
		m->capsubs = 0;
	}
	if (r->count == 0)
		free_room(r);
}

int room_leave(const char *name, struct room_member *m)
{
	struct room *r = room_find(name);
	int si;

	if (!r || (si = sub_index(m, r)) < 0)
		return 1;
	unlink_sub(m, (uint32_t)si);
	return 0;
}

void room_leave_all(struct room_member *m)
{
	while (m->nsubs)
		unlink_sub(m, m->nsubs - 1);
	if (m->subs != &m->one)
		free(m->subs);
	m->subs = NULL;
	m->capsubs = 0;
}

const char *room_name(const struct room *r)
{
	return r->name;
}

struct room_member *const *room_members(const struct room *r, uint32_t *count)
{
	*count = r->count;
	return r->members;
}

size_t room_count(void)
{
	return HASH_COUNT(g_rooms);
}

void room_foreach(void (*fn)(const struct room *r, void *arg), void *arg)
{
	struct room *r, *tmp;
	HASH_ITER(hh, g_rooms, r, tmp)
	{
		fn(r, arg);
	}
}

void room_reset(void)
{
	struct room *r, *tmp;
	HASH_ITER(hh, g_rooms, r, tmp)
	{
		for (uint32_t i = 0; i < r->count; i++) {
			struct room_member *m = r->members[i];
			int si = sub_index(m, r);
			m->subs[si] = m->subs[m->nsubs - 1];
			m->nsubs--;
		}
		free_room(r);
	}
}

static void put_count(const struct room *r, void *arg)
{
	struct buf *b = arg;
	uint32_t n;

	room_members(r, &n);
	if (b->data[b->len - 1] != '{')
		buf_puts(b, ",");
	buf_json_str(b, room_name(r), strlen(room_name(r)));
	buf_printf(b, ":%u", n);
}

void room_counts_json(struct buf *b)
{
	buf_puts(b, "{");
	if (!b->failed)
		room_foreach(put_count, b);
	buf_puts(b, "}");
}
