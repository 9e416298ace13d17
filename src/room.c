/* Room registry and membership. Each room keeps a flat array of member pointers and each member
 * keeps (room, index) pairs, so leaving swaps the last member into the hole in O(1) and fan-out
 * is a linear walk with no allocation. */
#include "room.h"
#include "buf.h"

#include <stdlib.h>
#include <string.h>

/* Most rooms are a user's own (user-<id>), with one member: the name and that member live in
 * the room's one allocation. No hash is kept: names are short and chains are too (a header of
 * 24 bytes keeps user-<id> rooms of names up to 16 bytes in a 48-byte chunk). */
struct room {
	union {
		struct room_member *one;   /* while cap is 1 */
		struct room_member **many; /* cap > 1 */
	} m;
	struct room *next; /* the registry's chain */
	uint32_t count, cap;
	char name[]; /* allocated from offsetof(name): no tail padding */
};

/* The member array (see room_members). */
static struct room_member **mems(struct room *r)
{
	return r->cap == 1 ? &r->m.one : r->m.many;
}

/* The registry: chained through the rooms themselves, with at most two rooms per bucket on
 * average (one pointer for every one to two rooms, where open addressing at 3/4 full took one
 * to three, 16 bytes per room at 2 000). */
static struct room **g_tab;
static size_t g_cap, g_n; /* g_cap: a power of two, 0 while empty */

static uint32_t name_hash(const char *s)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* The link that points at name's room, or the NULL that ends its chain (g_cap > 0). */
static struct room **tab_link(const char *name)
{
	struct room **pp = &g_tab[name_hash(name) & (g_cap - 1)];
	while (*pp && strcmp((*pp)->name, name))
		pp = &(*pp)->next;
	return pp;
}

static struct room *tab_find(const char *name)
{
	return g_n ? *tab_link(name) : NULL;
}

/* Adds r (not present); -1 when the table cannot grow. */
static int tab_add(struct room *r)
{
	struct room **head;

	if (g_n + 1 > g_cap * 2) {
		size_t ncap = g_cap ? g_cap * 2 : 16;
		struct room **nt = calloc(ncap, sizeof(*nt));
		if (!nt)
			return -1;
		for (size_t i = 0; i < g_cap; i++)
			for (struct room *o = g_tab[i], *next; o; o = next) {
				next = o->next;
				head = &nt[name_hash(o->name) & (ncap - 1)];
				o->next = *head;
				*head = o;
			}
		free(g_tab);
		g_tab = nt;
		g_cap = ncap;
	}
	head = &g_tab[name_hash(r->name) & (g_cap - 1)];
	r->next = *head;
	*head = r;
	g_n++;
	return 0;
}

static void tab_del(struct room *r)
{
	struct room **pp = tab_link(r->name); /* r is registered: *pp is r */

	*pp = r->next;
	g_n--;
}

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
	return tab_find(name);
}

static int sub_index(const struct room_member *m, const struct room *r)
{
	for (uint32_t i = 0; i < m->nsubs; i++)
		if (room_member_room(m, i) == r)
			return (int)i;
	return -1;
}

static void sub_set(struct room_member *m, uint32_t i, struct room *r, uint32_t pos)
{
	if (m->capsubs == 1) {
		m->subs.one = r;
		m->one_pos = pos;
	} else {
		m->subs.many[i].room = r;
		m->subs.many[i].pos = pos;
	}
}

/* Drops m's membership i (the member side only): the last one moves into its place. */
static void sub_remove(struct room_member *m, uint32_t i)
{
	uint32_t last = m->nsubs - 1u;

	if (i != last)
		sub_set(m, i, room_member_room(m, last), room_member_pos(m, last));
	m->nsubs--;
	if (!m->nsubs && m->capsubs == 1) {
		m->subs.one = NULL;
		m->capsubs = 0;
	}
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

	r = tab_find(name);
	if (r && sub_index(m, r) >= 0)
		return 1;
	if (m->nsubs == m->capsubs) {
		/* The first membership (an idle client's user-<id>) fits inline; from the second
		 * on they live in an array. */
		if (m->capsubs == ROOM_MEMBER_MAX_SUBS)
			return -1;
		if (!m->capsubs) {
			m->capsubs = 1;
		} else {
			uint32_t ncap = m->capsubs * 2u;
			struct room_sub *ns;
			if (m->capsubs == 1 && (ns = malloc(sizeof(*ns) * ncap))) {
				ns[0].room = m->subs.one;
				ns[0].pos = m->one_pos;
			} else if (m->capsubs == 1) {
				ns = NULL;
			} else {
				ns = realloc(m->subs.many, sizeof(*ns) * ncap);
			}
			if (!ns)
				return -1;
			m->subs.many = ns;
			m->capsubs = (uint16_t)ncap;
		}
	}
	if (!r) {
		size_t len = strlen(name);
		r = calloc(1, offsetof(struct room, name) + len + 1);
		if (!r)
			return -1;
		memcpy(r->name, name, len + 1);
		if (tab_add(r) < 0) {
			free(r);
			return -1;
		}
	}
	if (!r->cap) {
		r->cap = 1; /* a new room: its one member is inline */
	} else if (r->count == r->cap) {
		uint32_t ncap = r->cap * 2;
		struct room_member **nm;
		if (r->cap == 1 && (nm = malloc(sizeof(*nm) * ncap)))
			nm[0] = r->m.one;
		else
			nm = r->cap == 1 ? NULL : realloc(r->m.many, sizeof(*nm) * ncap);
		if (!nm)
			return -1; /* r has members: it stays */
		r->m.many = nm;
		r->cap = ncap;
	}
	mems(r)[r->count] = m;
	sub_set(m, m->nsubs, r, r->count);
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
	tab_del(r);
	if (r->cap > 1)
		free(r->m.many);
	free(r);
}

/* Removes subscription si of m: swap-remove on both sides. */
static void unlink_sub(struct room_member *m, uint32_t si)
{
	struct room *r = room_member_room(m, si);
	uint32_t pos = room_member_pos(m, si);
	uint32_t last = r->count - 1;

	if (g_pres_leave)
		g_pres_leave(r->name, m);
	if (pos != last) {
		struct room_member **ms = mems(r), *moved = ms[last];
		int msi = sub_index(moved, r);
		ms[pos] = moved;
		sub_set(moved, (uint32_t)msi, r, pos);
	}
	r->count--;
	sub_remove(m, si);
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
		unlink_sub(m, m->nsubs - 1u);
	if (m->capsubs > 1)
		free(m->subs.many);
	m->subs.many = NULL;
	m->capsubs = 0;
}

const char *room_name(const struct room *r)
{
	return r->name;
}

struct room_member *const *room_members(const struct room *r, uint32_t *count)
{
	*count = r->count;
	return r->cap == 1 ? &r->m.one : r->m.many;
}

size_t room_count(void)
{
	return g_n;
}

void room_foreach(void (*fn)(const struct room *r, void *arg), void *arg)
{
	for (size_t i = 0; i < g_cap; i++)
		for (const struct room *r = g_tab[i]; r; r = r->next)
			fn(r, arg);
}

void room_reset(void)
{
	/* free_room unlinks the head of the chain it walks. */
	for (size_t i = 0; i < g_cap; i++)
		while (g_tab[i]) {
			struct room *r = g_tab[i];
			for (uint32_t k = 0; k < r->count; k++) {
				struct room_member *m = mems(r)[k];
				sub_remove(m, (uint32_t)sub_index(m, r));
			}
			free_room(r);
		}
	free(g_tab);
	g_tab = NULL;
	g_cap = g_n = 0;
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
