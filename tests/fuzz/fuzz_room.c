/* Fuzzes the room module: room_name_valid and room_pattern_match against reference versions
 * written here (input split at its first NUL into pattern and name), and join/leave/leave_all
 * sequences driven by the input bytes, checked against a model and the two-sided links. */
#include "fuzz.h"

#include "room.h"

#define NMEMBERS 4
#define NROOMS   8

/* Reference name rule, from the header: 1..128 bytes of [A-Za-z0-9_.:-]. */
static bool ref_name_valid(const char *s, size_t n)
{
	if (n == 0 || n > ROOM_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!s[i] ||
		    !strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-",
		            s[i]))
			return false;
	return true;
}

/* Reference glob: the textbook recursion, exponential in the number of stars, so only used on
 * short inputs. '*' matches any run, everything else itself. */
static bool ref_match(const char *p, const char *s)
{
	if (!*p)
		return !*s;
	if (*p == '*')
		return ref_match(p + 1, s) || (*s && ref_match(p, s + 1));
	return *s == *p && ref_match(p + 1, s + 1);
}

static void check_match(const uint8_t *data, size_t size)
{
	const uint8_t *nul = memchr(data, 0, size);
	size_t plen = nul ? (size_t)(nul - data) : size;
	char *pat = strndup((const char *)data, plen);
	char *name = strndup(nul ? (const char *)nul + 1 : "", nul ? size - plen - 1 : 0);
	size_t stars = 0;
	bool got;

	if (!pat || !name)
		abort();
	for (const char *p = pat; *p; p++)
		stars += *p == '*';
	got = room_pattern_match(pat, name);
	/* Bounded so the reference stays fast: at most C(40 + 4, 4) paths. */
	if (stars <= 4 && strlen(pat) <= 40 && strlen(name) <= 40)
		FUZZ_CHECK(got == ref_match(pat, name), "match('%s', '%s') = %d", pat, name, got);
	/* Whatever the pattern, these hold. */
	FUZZ_CHECK(room_pattern_match(name, name), "'%s' must match itself", name);
	FUZZ_CHECK(room_pattern_match("*", name), "'*' must match '%s'", name);
	free(pat);
	free(name);
}

static struct room_member g_m[NMEMBERS];
static bool g_model[NMEMBERS][NROOMS];
static const char *const g_names[NROOMS] = {
    "order-7", "seller-3",  "user-1", "admins",
    "a",       "product-1", "x:y.z_", "room-with-a-rather-long-name-0123456789"};

static int sub_of(const struct room_member *m, const struct room *r)
{
	for (uint32_t i = 0; i < m->nsubs; i++)
		if (room_member_room(m, i) == r)
			return (int)i;
	return -1;
}

/* Registry and model agree, and every link is mirrored on the other side. */
static void check_links(void)
{
	size_t nonempty = 0;

	for (int r = 0; r < NROOMS; r++) {
		struct room *room = room_find(g_names[r]);
		uint32_t n = 0, want = 0;
		struct room_member *const *mem;

		for (int m = 0; m < NMEMBERS; m++)
			want += g_model[m][r];
		if (!want) {
			FUZZ_CHECK(!room, "empty room %s not freed", g_names[r]);
			continue;
		}
		nonempty++;
		FUZZ_CHECK(room && !strcmp(room_name(room), g_names[r]), "room %s missing",
		           g_names[r]);
		mem = room_members(room, &n);
		FUZZ_CHECK(n == want, "room %s has %u members, model %u", g_names[r], n, want);
		for (uint32_t i = 0; i < n; i++) {
			int si = sub_of(mem[i], room);
			FUZZ_CHECK(mem[i] >= g_m && mem[i] < g_m + NMEMBERS, "foreign member");
			FUZZ_CHECK(g_model[mem[i] - g_m][r], "member not in model");
			FUZZ_CHECK(si >= 0 && room_member_pos(mem[i], (uint32_t)si) == i,
			           "link of %s[%u] broken", g_names[r], i);
		}
	}
	FUZZ_CHECK(room_count() == nonempty, "room_count %zu, model %zu", room_count(), nonempty);
	for (int m = 0; m < NMEMBERS; m++) {
		uint32_t want = 0;
		for (int r = 0; r < NROOMS; r++)
			want += g_model[m][r];
		FUZZ_CHECK(g_m[m].nsubs == want, "member %d has %u subs, model %u", m, g_m[m].nsubs,
		           want);
		FUZZ_CHECK(g_m[m].nsubs <= g_m[m].capsubs, "subs over capacity");
		for (uint32_t i = 0; i < g_m[m].nsubs; i++) {
			uint32_t n;
			uint32_t pos = room_member_pos(&g_m[m], i);
			struct room_member *const *mem =
			    room_members(room_member_room(&g_m[m], i), &n);
			FUZZ_CHECK(pos < n && mem[pos] == &g_m[m],
			           "sub %u of member %d does not point back", i, m);
		}
	}
}

/* Each byte is one operation: bits 0-2 the room, bits 3-4 the member, bits 5-7 the verb. */
static void run_ops(const uint8_t *data, size_t size)
{
	for (size_t i = 0; i < size; i++) {
		int r = data[i] & 7, m = (data[i] >> 3) & 3, rc;

		switch (data[i] >> 5) {
		case 0:
		case 1:
		case 2:
			rc = room_join(g_names[r], &g_m[m]);
			FUZZ_CHECK(rc == (g_model[m][r] ? 1 : 0), "join %s by %d: %d", g_names[r],
			           m, rc);
			g_model[m][r] = true;
			break;
		case 3:
		case 4:
			rc = room_leave(g_names[r], &g_m[m]);
			FUZZ_CHECK(rc == (g_model[m][r] ? 0 : 1), "leave %s by %d: %d", g_names[r],
			           m, rc);
			g_model[m][r] = false;
			break;
		case 5:
			FUZZ_CHECK(room_is_member(&g_m[m], g_names[r]) == g_model[m][r],
			           "is_member %s by %d", g_names[r], m);
			break;
		case 6:
			room_leave_all(&g_m[m]);
			memset(g_model[m], 0, sizeof(g_model[m]));
			FUZZ_CHECK(!g_m[m].subs.many && !g_m[m].capsubs, "leave_all kept subs");
			break;
		default:
			/* Leaving a room that does not exist, or one by a stranger, changes
			 * nothing. */
			FUZZ_CHECK(room_leave("no-such-room", &g_m[m]) == 1, "left a missing room");
			break;
		}
		check_links();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	bool valid = room_name_valid((const char *)data, size);

	FUZZ_CHECK(valid == ref_name_valid((const char *)data, size), "room_name_valid = %d",
	           valid);
	check_match(data, size);

	run_ops(data, size);
	/* Leave everything so each input starts from an empty registry (and leaks show). */
	for (int m = 0; m < NMEMBERS; m++)
		room_leave_all(&g_m[m]);
	memset(g_model, 0, sizeof(g_model));
	FUZZ_CHECK(room_count() == 0, "rooms left after leave_all: %zu", room_count());
	return 0;
}
