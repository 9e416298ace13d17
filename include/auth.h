/* JWT verification that does not trust the token: pinned algorithms, required exp, nbf/iat with
 * leeway, iss/aud, and the identity (user, role, seller, client, extra room patterns) derived
 * from the claims. Also mints development tokens for `roomcast token`. */
#ifndef ROOMCAST_AUTH_H
#define ROOMCAST_AUTH_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* Bits of auth_config.algorithms. */
enum auth_alg {
	AUTH_ALG_HS256 = 1 << 0,
	AUTH_ALG_HS384 = 1 << 1,
	AUTH_ALG_HS512 = 1 << 2,
	AUTH_ALG_RS256 = 1 << 3,
	AUTH_ALG_RS384 = 1 << 4,
	AUTH_ALG_RS512 = 1 << 5,
	AUTH_ALG_ES256 = 1 << 6,
	AUTH_ALG_ES384 = 1 << 7,
	AUTH_ALG_ES512 = 1 << 8,
};

/* Why a token was refused; auth_reason_name() gives the metric/log label. */
enum auth_reason {
	AUTH_OK = 0,
	AUTH_MALFORMED,     /* not three base64url parts, bad JSON, wrong claim types */
	AUTH_ALG_REFUSED,   /* alg not in the allowed set, "none", or no key for its family */
	AUTH_BAD_SIGNATURE, /* signature does not verify (also empty signature) */
	AUTH_MISSING_EXP,   /* exp absent or not a number */
	AUTH_EXPIRED,       /* now > exp + leeway */
	AUTH_NOT_YET_VALID, /* now < nbf - leeway */
	AUTH_ISSUED_FUTURE, /* now < iat - leeway */
	AUTH_BAD_ISSUER,    /* iss configured and different */
	AUTH_BAD_AUDIENCE,  /* aud configured and not equal / not contained */
	AUTH_NO_SUBJECT,    /* none of sub, user_id, id */
	AUTH_REASON_COUNT
};

struct auth_config {
	const unsigned char *secret; /* HMAC key; may be NULL when only public-key algs are used */
	size_t secret_len;
	const char *public_key_pem; /* PEM text (not a path) for RS / ES algs, or NULL */
	unsigned algorithms;        /* bitmask of enum auth_alg */
	const char *issuer;         /* NULL: not checked */
	const char *audience;       /* NULL: not checked */
	int leeway_s;
	bool drop_claims_json; /* identities get no claims_json (nothing will read it) */
};

/* The verifier keeps copies of everything in the config; the caller's buffers may go away. */
struct auth;

/* Longest identifier claim accepted, NUL included; longer ones make the token malformed. */
#define AUTH_ID_MAX   128
#define AUTH_ROLE_MAX 32

/* The identity a verified token carries. Every connection keeps one, so the four strings share
 * one allocation of their actual lengths, user_id being its start. After auth_verify none of
 * them is NULL ("" when the claim is absent); a zeroed identity (not authenticated) has all
 * four NULL. nbf and iat are checked by auth_verify and not kept. */
struct auth_identity {
	/* sub, else user_id, else id (numbers rendered in decimal). It starts the one allocation
	 * that holds the four strings; the other three are offsets into it (three pointers would
	 * take 24 bytes of every session): read them with auth_role, auth_seller_id and
	 * auth_client_id. */
	const char *user_id;
	char **rooms; /* patterns of the "rooms" claim, each malloc'd, NULL-terminated; or NULL */
	char *claims_json; /* the payload as canonical JSON, malloc'd (for SQL policy); NULL
	                    * when the verifier was made with drop_claims_json */
	long long exp;     /* never 0 after auth_verify */
	/* Offsets from user_id: the strings end within 2 * AUTH_ID_MAX + AUTH_ROLE_MAX bytes of it,
	 * the fourth starts before that. */
	uint16_t role_off, seller_off, client_off;
};

/* The identity's other strings; NULL while it has none (zeroed, not authenticated). */
static inline const char *auth_role(const struct auth_identity *id) /* lower-cased */
{
	return id->user_id ? id->user_id + id->role_off : NULL;
}
/* seller_id, id_seller, or reference_id for role seller; "" when none. */
static inline const char *auth_seller_id(const struct auth_identity *id)
{
	return id->user_id ? id->user_id + id->seller_off : NULL;
}
/* client_id or id_client; "" when none. */
static inline const char *auth_client_id(const struct auth_identity *id)
{
	return id->user_id ? id->user_id + id->client_off : NULL;
}
/* Gives id these four strings in one new allocation (the values may point into the old one,
 * which is freed on success); 0, or -1 on allocation failure with id unchanged. */
int auth_identity_set_strings(struct auth_identity *id, const char *user_id, const char *role,
                              const char *seller_id, const char *client_id);

/* Patterns in id->rooms (no count is kept: it would pad the identity by 8 bytes). */
static inline size_t auth_room_count(const struct auth_identity *id)
{
	size_t n = 0;
	while (id->rooms && id->rooms[n])
		n++;
	return n;
}

/* Returns NULL and fills err on a bad config (e.g. no key for an allowed family, unreadable PEM).
 */
struct auth *auth_new(const struct auth_config *cfg, char *err, size_t errlen);
void auth_free(struct auth *a);

/* Parses "HS256,HS384" into a bitmask; returns -1 on an unknown or "none" name. */
int auth_algorithms_parse(const char *list, unsigned *out);
const char *auth_reason_name(enum auth_reason r);

/* Verifies token[0..len) at time now. On AUTH_OK fills *out (caller frees with
 * auth_identity_clear); on any other result *out is left zeroed. Never logs the token. */
enum auth_reason auth_verify(const struct auth *a, const char *token, size_t len, time_t now,
                             struct auth_identity *out);
void auth_identity_clear(struct auth_identity *id);
/* Deep copy; returns 0 or -1 on allocation failure. */
int auth_identity_copy(struct auth_identity *dst, const struct auth_identity *src);

/* Fills the seller / client ids id has not got (NULL or "" leaves one as it is); returns 0 or -1
 * on allocation failure (id unchanged). claims_json gains the same claims. */
int auth_identity_fill_ids(struct auth_identity *id, const char *seller_id, const char *client_id);

/* a + b, saturated at LLONG_MIN / LLONG_MAX instead of overflowing: exp, nbf and iat are
 * whatever the token says (exp = INT64_MAX is a valid token), so every sum with them goes here. */
static inline long long auth_time_add(long long a, long long b)
{
	long long r;
	if (__builtin_add_overflow(a, b, &r))
		return b > 0 ? LLONG_MAX : LLONG_MIN;
	return r;
}

/* a - b, saturated likewise. */
static inline long long auth_time_sub(long long a, long long b)
{
	long long r;
	if (__builtin_sub_overflow(a, b, &r))
		return b < 0 ? LLONG_MAX : LLONG_MIN;
	return r;
}

bool auth_is_admin(const struct auth_identity *id);
bool auth_is_service(const struct auth_identity *id);

struct auth_mint {
	const char *sub;
	const char *role;      /* may be NULL */
	const char *seller_id; /* may be NULL */
	const char *client_id; /* may be NULL */
	const char *rooms;     /* comma list of patterns, may be NULL */
	const char *issuer;    /* may be NULL */
	const char *audience;  /* may be NULL */
	long ttl_s;
	time_t now;
};

/* Mints an HS256 token with the HMAC secret of a. Returns a malloc'd string or NULL. */
char *auth_mint_token(const struct auth *a, const struct auth_mint *m);

#endif
