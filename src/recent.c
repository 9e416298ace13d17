/* The recent-events memory: per room a FIFO of the last delivered outbox events (id, shared
 * event text, the room message built on first use), all entries on one global FIFO so the byte
 * bound evicts the oldest anywhere. Each room remembers a floor: the highest id it can no
 * longer answer for (evicted, or delivered before the room was recorded), and from_seq: it
 * holds every event of the room delivered after that point. Also the positions pgl handed
 * out in `joined` (id, delivery point), so a rejoin from one is answered here. */
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
	uint64_t from_seq; /* every event of the room delivered after it is here */
	bool lost;         /* an event of the room was evicted (see g_whole) */
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
/* No ring was freed and no event left unrecorded after this delivery point: a room without a
 * ring had no event delivered after it, a new ring holds all of its room's from here. */
static uint64_t g_gone_seq;

/* Positions handed out (see recent_note_position): ids and delivery points both ascend. */
#define POSITIONS_MAX 4096
struct position {
	long long id;
	uint64_t seq;
};
static struct position *g_pos;
static size_t g_pos_first, g_pos_n;

static void blob_unref(struct blob *b)
{
	if (--b->refs == 0)
		free(b);
}

static void ring_free(struct ring *r)
{
	g_gone_seq = g_seq; /* its events were delivered at or before now */
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
	if (e->seq > r->from_seq)
		r->from_seq = e->seq; /* per room eviction goes in delivery order */
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
	g_gone_seq = g_seq;
	g_pos_first = g_pos_n = 0;
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
	free(g_pos);
	g_pos = NULL;
}

uint64_t recent_seq(void)
{
	return g_seq;
}

void recent_note_position(long long id, uint64_t seq)
{
	struct position *last;

	if (!recent_enabled())
		return;
	if (!g_pos && !(g_pos = malloc(POSITIONS_MAX * sizeof(*g_pos))))
		return;
	last = g_pos_n ? &g_pos[(g_pos_first + g_pos_n - 1) % POSITIONS_MAX] : NULL;
	if (last && (id <= last->id || seq < last->seq))
		return; /* kept ascending; pgl only moves forward */
	if (g_pos_n == POSITIONS_MAX) {
		g_pos_first = (g_pos_first + 1) % POSITIONS_MAX;
		g_pos_n--;
	}
	g_pos[(g_pos_first + g_pos_n++) % POSITIONS_MAX] = (struct position){id, seq};
}

/* The delivery point of position id when it is one handed out and still remembered. */
static bool position_seq(long long id, uint64_t *seq)
{
	size_t lo = 0, hi = g_pos_n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (g_pos[(g_pos_first + mid) % POSITIONS_MAX].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == g_pos_n || g_pos[(g_pos_first + lo) % POSITIONS_MAX].id != id)
		return false;
	*seq = g_pos[(g_pos_first + lo) % POSITIONS_MAX].seq;
	return true;
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
			g_gone_seq = seq; /* the room lacks this event */
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
			r->from_seq = g_gone_seq;
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

/* Whether room's memory covers position since (one handed out in `joined`, *pseq its delivery
 * point): every event of the room delivered after it is here (the client was in the room from
 * then on; everything before it was delivered before it joined, see pgl.c). *rp is its ring,
 * NULL when it had none. */
static bool covering_position(const char *room, long long since, struct ring **rp, uint64_t *pseq)
{
	size_t rl = strlen(room);
	struct ring *r;

	if (!recent_enabled() || rl > ROOM_NAME_MAX || !position_seq(since, pseq) ||
	    g_gone_seq > *pseq)
		return false;
	HASH_FIND(hh, g_rings, room, rl, r);
	*rp = r;
	return !r || r->from_seq <= *pseq;
}

bool recent_covers(const char *room, long long since)
{
	struct ring *r;
	uint64_t pseq;
	if (since == 0 && covering_all(room, &r))
		return true;
	return covering_anchor(room, since, &r) != NULL ||
	       covering_position(room, since, &r, &pseq);
}

int recent_lookup(const char *room, long long since, long long min_id, recent_build_fn build,
                  long long **ids, struct frame ***frames, size_t *n)
{
	size_t k = 0;
	struct ring *r = NULL;
	struct entry *anchor, **pick;
	uint64_t pseq = UINT64_MAX; /* a position's delivery point: also what came after it */

	*ids = NULL;
	*frames = NULL;
	*n = 0;
	if (since == 0 && covering_all(room, &r)) {
		anchor = NULL; /* every event of the room has an id above 0 */
		if (!r)
			return 1;
	} else if (!(anchor = covering_anchor(room, since, &r))) {
		if (!covering_position(room, since, &r, &pseq))
			return 0;
		if (!r)
			return 1; /* no event of the room delivered since the position */
	}
	if (!(pick = malloc(r->n * sizeof(*pick))))
		return -1;
	for (struct entry *e = r->head; e; e = e->next)
		if (e->id > min_id &&
		    (e->id > since || (anchor && e->id < since && e->seq > anchor->seq) ||
		     (e->id != since && e->seq > pseq)))
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
