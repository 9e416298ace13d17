/* The recent-events memory: per room a FIFO of the last delivered outbox events (id, shared
 * event text, the room message built on first use), all entries on one global FIFO so the byte
 * bound evicts the oldest anywhere. Each room remembers a floor: the highest id it can no
 * longer answer for (evicted, or delivered before the room was recorded). */
#include "recent.h"
#include "frame.h"
#include "log.h"
#include "room.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <uthash.h>

/* One event's text, shared by the entries of its rooms. */
struct blob {
	uint32_t refs;
	size_t len;
	char text[];
};

struct ring;

struct entry {
	struct entry *next;          /* in its room, delivery order */
	struct entry *gprev, *gnext; /* global, delivery order */
	struct ring *ring;
	long long id;
	uint64_t seq; /* delivery order */
	bool anchor;
	struct blob *blob;
	struct frame *f; /* built on first lookup */
	size_t bytes;
};

struct ring {
	UT_hash_handle hh;
	struct entry *head, *tail;
	size_t n;
	long long floor;
	bool lost; /* an event of the room was evicted (see g_whole) */
	char room[ROOM_NAME_MAX + 1];
};

static size_t g_per_room, g_max_bytes, g_bytes, g_nrings;
static struct ring *g_rings;
static struct entry *g_ghead, *g_gtail;
static uint64_t g_seq;
/* Since recent_mark_whole: the outbox held no event then, and every event delivered since is
 * still here unless its room's ring says it lost one (a room without a ring has had none).
 * Then a client that saw nothing of a room (since 0) is answered with the room's whole ring. */
static bool g_whole;

static void blob_unref(struct blob *b)
{
	if (--b->refs == 0)
		free(b);
}

static void ring_free(struct ring *r)
{
	HASH_DEL(g_rings, r);
	g_bytes -= sizeof(*r);
	g_nrings--;
	free(r);
}

/* Removes the oldest entry of its room (which must be e), raising the room's floor; frees the
 * room when it empties (a room recorded again later starts from a higher floor). */
static void evict(struct entry *e)
{
	struct ring *r = e->ring;

	r->head = e->next;
	if (!r->head)
		r->tail = NULL;
	r->n--;
	if (e->id > r->floor)
		r->floor = e->id;
	if (e->gprev)
		e->gprev->gnext = e->gnext;
	else
		g_ghead = e->gnext;
	if (e->gnext)
		e->gnext->gprev = e->gprev;
	else
		g_gtail = e->gprev;
	g_bytes -= e->bytes;
	blob_unref(e->blob);
	if (e->f)
		frame_unref(e->f);
	free(e);
	r->lost = true;
	if (!r->n) {
		g_whole = false; /* a room without a ring may now have lost events */
		ring_free(r);
	}
}

static void ring_drop(struct ring *r)
{
	while (r->n > 1)
		evict(r->head);
	if (r->n)
		evict(r->head); /* frees r */
	else
		ring_free(r);
}

static void trim(void)
{
	while (g_ghead && g_bytes > g_max_bytes)
		evict(g_ghead);
}

void recent_clear(void)
{
	struct ring *r, *tmp;

	HASH_ITER(hh, g_rings, r, tmp)
	ring_drop(r);
	g_whole = false;
}

void recent_mark_whole(void)
{
	g_whole = g_nrings == 0;
}

void recent_setup(size_t per_room, size_t max_bytes)
{
	recent_clear();
	g_per_room = per_room;
	g_max_bytes = max_bytes;
}

void recent_shutdown(void)
{
	recent_setup(0, 0);
}

bool recent_enabled(void)
{
	return g_per_room && g_max_bytes;
}

size_t recent_bytes(void)
{
	return g_bytes;
}

size_t recent_rooms(void)
{
	return g_nrings;
}

void recent_record(const char *const *rooms, size_t nrooms, long long id, const char *json,
                   size_t len, bool anchor, long long floor)
{
	struct blob *b;
	uint64_t seq = ++g_seq;

	if (!recent_enabled() || !nrooms)
		return;
	b = malloc(sizeof(*b) + len + 1);
	if (b) {
		b->refs = 1; /* ours until the loop is done */
		b->len = len;
		memcpy(b->text, json, len);
		b->text[len] = 0;
	}
	for (size_t i = 0; i < nrooms; i++) {
		size_t rl = strlen(rooms[i]);
		struct ring *r;
		struct entry *e;

		if (rl > ROOM_NAME_MAX)
			continue;
		HASH_FIND(hh, g_rings, rooms[i], rl, r);
		e = b ? calloc(1, sizeof(*e)) : NULL;
		if (!e || sizeof(*e) + len > g_max_bytes / 2) {
			/* Not kept: the room can no longer answer for anything before it. */
			free(e);
			g_whole = false;
			if (r)
				ring_drop(r);
			if (!e && b)
				log_error("recent_record failed", "reason", "out of memory");
			continue;
		}
		if (!r) {
			if (!(r = calloc(1, sizeof(*r)))) {
				free(e);
				continue;
			}
			memcpy(r->room, rooms[i], rl + 1);
			r->floor = floor;
			HASH_ADD(hh, g_rings, room, rl, r);
			g_bytes += sizeof(*r);
			g_nrings++;
		}
		e->ring = r;
		e->id = id;
		e->seq = seq;
		e->anchor = anchor;
		e->blob = b;
		b->refs++;
		e->bytes = sizeof(*e) + len;
		if (r->tail)
			r->tail->next = e;
		else
			r->head = e;
		r->tail = e;
		r->n++;
		e->gprev = g_gtail;
		if (g_gtail)
			g_gtail->gnext = e;
		else
			g_ghead = e;
		g_gtail = e;
		g_bytes += e->bytes;
		if (r->n > g_per_room)
			evict(r->head);
	}
	if (b)
		blob_unref(b);
	trim();
}

static int by_id(const void *a, const void *b)
{
	long long x = (*(struct entry *const *)a)->id, y = (*(struct entry *const *)b)->id;
	return x < y ? -1 : x > y;
}

/* Whether room's memory covers since 0 (the client saw nothing of the room): every event the
 * room ever had is here (see g_whole); *rp is its ring, NULL when it had none. */
static bool covering_all(const char *room, struct ring **rp)
{
	size_t rl = strlen(room);
	struct ring *r;

	if (!recent_enabled() || !g_whole || rl > ROOM_NAME_MAX)
		return false;
	HASH_FIND(hh, g_rings, room, rl, r);
	*rp = r;
	return !r || !r->lost;
}

/* The entry of event since in room's memory when the memory covers since, else NULL. */
static struct entry *covering_anchor(const char *room, long long since, struct ring **rp)
{
	size_t rl = strlen(room);
	struct ring *r;

	if (!recent_enabled() || rl > ROOM_NAME_MAX)
		return NULL;
	HASH_FIND(hh, g_rings, room, rl, r);
	/* Everything with a higher id than since that was ever delivered must still be here. */
	if (!r || since < r->floor)
		return NULL;
	*rp = r;
	for (struct entry *e = r->head; e; e = e->next)
		if (e->id == since)
			return e->anchor ? e : NULL;
	return NULL;
}

bool recent_covers(const char *room, long long since)
{
	struct ring *r;
	if (since == 0 && covering_all(room, &r))
		return true;
	return covering_anchor(room, since, &r) != NULL;
}

int recent_lookup(const char *room, long long since, long long min_id, recent_build_fn build,
                  long long **ids, struct frame ***frames, size_t *n)
{
	size_t k = 0;
	struct ring *r = NULL;
	struct entry *anchor, **pick;

	*ids = NULL;
	*frames = NULL;
	*n = 0;
	if (since == 0 && covering_all(room, &r)) {
		anchor = NULL; /* every event of the room has an id above 0 */
		if (!r)
			return 1;
	} else if (!(anchor = covering_anchor(room, since, &r))) {
		return 0;
	}
	if (!(pick = malloc(r->n * sizeof(*pick))))
		return -1;
	for (struct entry *e = r->head; e; e = e->next)
		if (e->id > min_id &&
		    (e->id > since || (anchor && e->id < since && e->seq > anchor->seq)))
			pick[k++] = e;
	qsort(pick, k, sizeof(*pick), by_id);
	if (k &&
	    (!(*ids = malloc(k * sizeof(**ids))) || !(*frames = malloc(k * sizeof(**frames))))) {
		free(*ids);
		*ids = NULL;
		free(pick);
		return -1;
	}
	for (size_t i = 0; i < k; i++) {
		struct entry *e = pick[i];
		if (!e->f) {
			e->f = build(r->room, e->blob->text, e->blob->len);
			if (!e->f) {
				for (size_t j = 0; j < i; j++)
					frame_unref((*frames)[j]);
				free(*ids);
				free(*frames);
				*ids = NULL;
				*frames = NULL;
				free(pick);
				return -1;
			}
			e->bytes += e->f->len + sizeof(*e->f);
			g_bytes += e->f->len + sizeof(*e->f);
		}
		(*ids)[i] = e->id;
		(*frames)[i] = frame_ref(e->f);
	}
	*n = k;
	free(pick);
	trim(); /* the frames built may have taken it over the bound */
	return 1;
}
