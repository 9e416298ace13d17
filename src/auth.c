/* JWT verification and development minting. Owns the policy libjwt 1.10 lacks: the header and
 * the claims are parsed here (strict json-c), the algorithm is pinned to the configured set and
 * to the family of the key we hold, and libjwt is only asked to check the signature. */
#include "auth.h"
#include "log.h"
#include "util.h"

#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jwt.h>
#include <json-c/json.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>

/* Tokens travel in headers and query strings; anything bigger is not one of ours. */
#define AUTH_TOKEN_MAX 8192
/* Claims are flat; a low nesting limit keeps hostile payloads cheap to refuse. */
#define AUTH_JSON_DEPTH 10

#define AUTH_ALG_HS_MASK  (AUTH_ALG_HS256 | AUTH_ALG_HS384 | AUTH_ALG_HS512)
#define AUTH_ALG_RS_MASK  (AUTH_ALG_RS256 | AUTH_ALG_RS384 | AUTH_ALG_RS512)
#define AUTH_ALG_ES_MASK  (AUTH_ALG_ES256 | AUTH_ALG_ES384 | AUTH_ALG_ES512)
#define AUTH_ALG_ALL_MASK (AUTH_ALG_HS_MASK | AUTH_ALG_RS_MASK | AUTH_ALG_ES_MASK)

struct auth {
	unsigned char *secret; /* NULL when no HMAC key */
	size_t secret_len;
	char *pem; /* NUL-terminated PEM text, NULL when no public key */
	size_t pem_len;
	unsigned algorithms; /* configured set narrowed to the families we hold a key for */
	char *issuer;        /* NULL: not checked */
	char *audience;      /* NULL: not checked */
	int leeway_s;
	bool drop_claims_json;
};

static const struct {
	const char *name;
	unsigned bit;
	jwt_alg_t jalg;
} alg_table[] = {
    {"HS256", AUTH_ALG_HS256, JWT_ALG_HS256}, {"HS384", AUTH_ALG_HS384, JWT_ALG_HS384},
    {"HS512", AUTH_ALG_HS512, JWT_ALG_HS512}, {"RS256", AUTH_ALG_RS256, JWT_ALG_RS256},
    {"RS384", AUTH_ALG_RS384, JWT_ALG_RS384}, {"RS512", AUTH_ALG_RS512, JWT_ALG_RS512},
    {"ES256", AUTH_ALG_ES256, JWT_ALG_ES256}, {"ES384", AUTH_ALG_ES384, JWT_ALG_ES384},
    {"ES512", AUTH_ALG_ES512, JWT_ALG_ES512},
};
#define ALG_COUNT (sizeof(alg_table) / sizeof(alg_table[0]))

static const char *const reason_names[AUTH_REASON_COUNT] = {
    [AUTH_OK] = "ok",
    [AUTH_MALFORMED] = "malformed",
    [AUTH_ALG_REFUSED] = "alg_refused",
    [AUTH_BAD_SIGNATURE] = "bad_signature",
    [AUTH_MISSING_EXP] = "missing_exp",
    [AUTH_EXPIRED] = "expired",
    [AUTH_NOT_YET_VALID] = "not_yet_valid",
    [AUTH_ISSUED_FUTURE] = "issued_in_future",
    [AUTH_BAD_ISSUER] = "bad_issuer",
    [AUTH_BAD_AUDIENCE] = "bad_audience",
    [AUTH_NO_SUBJECT] = "no_subject",
};

const char *auth_reason_name(enum auth_reason r)
{
	if ((int)r < 0 || r >= AUTH_REASON_COUNT)
		return "unknown";
	return reason_names[r];
}

/* Config names are matched case-insensitively for operator comfort; the token's own "alg" is
 * matched exactly (RFC 7515 makes it case-sensitive, libjwt does not). */
static int alg_lookup(const char *name, size_t len, bool exact)
{
	for (size_t i = 0; i < ALG_COUNT; i++) {
		if (strlen(alg_table[i].name) != len)
			continue;
		if (exact ? !memcmp(name, alg_table[i].name, len)
		          : !strncasecmp(name, alg_table[i].name, len))
			return (int)i;
	}
	return -1;
}

int auth_algorithms_parse(const char *list, unsigned *out)
{
	unsigned mask = 0;
	const char *p = list;

	if (!list || !out)
		return -1;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *s = p;
		int idx;

		while (len > 0 && isspace((unsigned char)*s)) {
			s++;
			len--;
		}
		while (len > 0 && isspace((unsigned char)s[len - 1]))
			len--;
		/* An empty item is a typo in the list, not a request for "no algorithm". */
		idx = len ? alg_lookup(s, len, false) : -1;
		if (idx < 0)
			return -1;
		mask |= alg_table[idx].bit;
		if (!end)
			break;
		p = end + 1;
	}
	*out = mask;
	return 0;
}

/* Returns the RS/ES algorithms a PEM public key can verify, 0 with a message in err when the PEM
 * does not hold an RSA or a P-256/384/521 EC public key. Each EC curve pins its one JWS alg so a
 * token cannot pick a digest the key was not meant for. */
static unsigned pem_key_mask(const char *pem, size_t len, char *err, size_t errlen)
{
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *pkey = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
	unsigned mask = 0;

	if (!pkey) {
		snprintf(err, errlen,
		         "public key is not a readable PEM public key (BEGIN PUBLIC KEY)");
	} else if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_RSA) {
		mask = AUTH_ALG_RS_MASK;
	} else if (EVP_PKEY_get_base_id(pkey) == EVP_PKEY_EC) {
		char group[64] = "";
		size_t glen = 0;
		if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &glen) == 1) {
			if (!strcmp(group, SN_X9_62_prime256v1))
				mask = AUTH_ALG_ES256;
			else if (!strcmp(group, SN_secp384r1))
				mask = AUTH_ALG_ES384;
			else if (!strcmp(group, SN_secp521r1))
				mask = AUTH_ALG_ES512;
		}
		if (!mask)
			snprintf(err, errlen, "public key uses an EC curve with no JWS algorithm");
	} else {
		snprintf(err, errlen, "public key is neither RSA nor EC");
	}
	EVP_PKEY_free(pkey);
	BIO_free(bio);
	/* Leave no stale errors on the thread's queue for the TLS code to misread later. */
	ERR_clear_error();
	return mask;
}

void auth_free(struct auth *a)
{
	if (!a)
		return;
	if (a->secret) {
		OPENSSL_cleanse(a->secret, a->secret_len);
		free(a->secret);
	}
	free(a->pem);
	free(a->issuer);
	free(a->audience);
	free(a);
}

/* An empty issuer/audience means "not configured", like NULL: an empty environment variable is
 * how operators usually unset one. Returns 0, or -1 when out of memory. */
static int copy_optional(char **dst, const char *src)
{
	*dst = NULL;
	if (!src || !*src)
		return 0;
	*dst = strdup(src);
	return *dst ? 0 : -1;
}

/* Returns a verifier owning copies of every buffer in cfg (free with auth_free), or NULL with a
 * one-line reason in err. */
struct auth *auth_new(const struct auth_config *cfg, char *err, size_t errlen)
{
	struct auth *a;
	bool has_secret, has_pem;
	unsigned keyed = 0;
	char dummy[1];

	if (!err || !errlen) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	err[0] = '\0';
	if (!cfg) {
		snprintf(err, errlen, "no auth configuration");
		return NULL;
	}
	if (!cfg->algorithms || (cfg->algorithms & ~(unsigned)AUTH_ALG_ALL_MASK)) {
		snprintf(err, errlen, "JWT algorithm set is empty or holds unknown bits");
		return NULL;
	}
	if (cfg->leeway_s < 0) {
		snprintf(err, errlen, "JWT leeway must not be negative");
		return NULL;
	}
	has_secret = cfg->secret && cfg->secret_len > 0;
	has_pem = cfg->public_key_pem && cfg->public_key_pem[0];
	if (!has_secret && !has_pem) {
		snprintf(err, errlen, "no JWT key: set JWT_SECRET or JWT_PUBLIC_KEY_FILE");
		return NULL;
	}
	/* libjwt takes the key length as an int. */
	if (has_secret && cfg->secret_len > INT_MAX) {
		snprintf(err, errlen, "JWT secret is too long");
		return NULL;
	}
	if (has_pem && strlen(cfg->public_key_pem) > INT_MAX) {
		snprintf(err, errlen, "JWT public key is too long");
		return NULL;
	}
	if (has_secret)
		keyed |= AUTH_ALG_HS_MASK;
	if (has_pem) {
		/* A key file the operator named but we cannot use is an error even when no RS/ES
		 * algorithm is allowed: it is a misconfiguration worth stopping for. */
		unsigned m =
		    pem_key_mask(cfg->public_key_pem, strlen(cfg->public_key_pem), err, errlen);
		if (!m)
			return NULL;
		keyed |= m;
	}
	/* Narrowing to the keyed families is what makes algorithm confusion impossible: an alg is
	 * only ever verified with the one key of its own family. */
	if (!(cfg->algorithms & keyed)) {
		snprintf(
		    err, errlen,
		    "no key for any allowed JWT algorithm (HS* need JWT_SECRET, RS*/ES* need a "
		    "matching JWT_PUBLIC_KEY_FILE)");
		return NULL;
	}

	a = calloc(1, sizeof(*a));
	if (!a)
		goto oom;
	a->algorithms = cfg->algorithms & keyed;
	a->leeway_s = cfg->leeway_s;
	a->drop_claims_json = cfg->drop_claims_json;
	if (has_secret) {
		a->secret = malloc(cfg->secret_len);
		if (!a->secret)
			goto oom;
		memcpy(a->secret, cfg->secret, cfg->secret_len);
		a->secret_len = cfg->secret_len;
	}
	if (has_pem) {
		a->pem = strdup(cfg->public_key_pem);
		if (!a->pem)
			goto oom;
		a->pem_len = strlen(a->pem);
	}
	if (copy_optional(&a->issuer, cfg->issuer) || copy_optional(&a->audience, cfg->audience))
		goto oom;
	return a;
oom:
	snprintf(err, errlen, "out of memory");
	auth_free(a);
	return NULL;
}

static int b64url_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	return -1;
}

/* Strict unpadded base64url (RFC 7515 §2): no '=', no other alphabet, no impossible length and
 * no stray bits in the last character, so one token has exactly one spelling. out must hold
 * n * 3 / 4 bytes. Returns 0 or -1. */
static int b64url_decode(const char *s, size_t n, unsigned char *out, size_t *outlen)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;

	if (n % 4 == 1)
		return -1;
	for (size_t i = 0; i < n; i++) {
		int v = b64url_value((unsigned char)s[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	if (acc != 0)
		return -1;
	*outlen = o;
	return 0;
}

/* Parses buf[0..len) as exactly one JSON object with json-c in strict mode: valid UTF-8, nesting
 * at most AUTH_JSON_DEPTH, nothing but JSON whitespace after the closing brace (strict mode
 * consumes that whitespace, so parse end == len). Returns a new reference (release with
 * json_object_put) or NULL. */
static struct json_object *parse_object(const unsigned char *buf, size_t len)
{
	struct json_tokener *tok;
	struct json_object *obj;
	bool ok;

	if (len == 0 || len > INT_MAX || memchr(buf, '\0', len) || !util_utf8_valid(buf, len))
		return NULL;
	/* json-c refuses a value once its depth reaches max_depth, hence the + 1. */
	tok = json_tokener_new_ex(AUTH_JSON_DEPTH + 1);
	if (!tok)
		return NULL;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	obj = json_tokener_parse_ex(tok, (const char *)buf, (int)len);
	ok = obj && json_tokener_get_error(tok) == json_tokener_success &&
	     json_tokener_get_parse_end(tok) == len && json_object_is_type(obj, json_type_object);
	json_tokener_free(tok);
	if (!ok) {
		json_object_put(obj);
		return NULL;
	}
	return obj;
}

/* JSON null counts as absent for optional claims: some issuers emit every field. */
static struct json_object *get_claim(struct json_object *o, const char *name)
{
	struct json_object *v = NULL;
	if (!json_object_object_get_ex(o, name, &v) || json_object_is_type(v, json_type_null))
		return NULL;
	return v;
}

/* Identity values end up in room names and logs, so control bytes (including an escaped NUL
 * that would silently truncate a C string) and invalid UTF-8 are refused rather than copied. */
static bool clean_string(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return false;
	}
	/* A \u escape of a lone surrogate decodes to bytes that are not UTF-8. */
	return util_utf8_valid(s, len);
}

/* Reads a time claim. Returns 1 when present (value in *out), 0 when absent, -1 when it is not a
 * finite number. Fractions round towards the stricter side: exp down, nbf/iat up. */
static int claim_time(struct json_object *payload, const char *name, bool round_up, long long *out)
{
	struct json_object *v;
	double d;

	if (!json_object_object_get_ex(payload, name, &v))
		return 0;
	if (json_object_is_type(v, json_type_int)) {
		*out = (long long)json_object_get_int64(v);
		return 1;
	}
	if (!json_object_is_type(v, json_type_double))
		return -1;
	d = json_object_get_double(v);
	if (!isfinite(d))
		return -1;
	d = round_up ? ceil(d) : floor(d);
	if (d >= 9.2e18)
		*out = LLONG_MAX;
	else if (d <= -9.2e18)
		*out = LLONG_MIN;
	else
		*out = (long long)d;
	return 1;
}

/* Copies a string-or-integer identifier claim into buf (integers in decimal, exactly as sent).
 * Returns 1 when set, 0 when absent, null or "", -1 on a wrong type, a control byte, or a value
 * that does not fit. */
static int claim_id(struct json_object *payload, const char *name, char *buf, size_t cap)
{
	struct json_object *v = get_claim(payload, name);
	const char *s;
	size_t len;

	if (!v)
		return 0;
	if (json_object_is_type(v, json_type_string)) {
		s = json_object_get_string(v);
		len = (size_t)json_object_get_string_len(v);
	} else if (json_object_is_type(v, json_type_int)) {
		/* Rendering through the serializer keeps the exact digits json-c stored, without a
		 * detour through a clamping getter. */
		s = json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN);
		len = strlen(s);
	} else {
		return -1;
	}
	if (len == 0)
		return 0;
	if (len >= cap || !clean_string(s, len))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return 1;
}

/* Tries each claim name in order; returns as claim_id for the first one that is present. */
static int claim_id_first(struct json_object *payload, const char *const *names, char *buf,
                          size_t cap)
{
	for (; *names; names++) {
		int r = claim_id(payload, *names, buf, cap);
		if (r != 0)
			return r;
	}
	return 0;
}

static bool json_string_equals(struct json_object *v, const char *want)
{
	size_t wl = strlen(want);
	return json_object_is_type(v, json_type_string) &&
	       (size_t)json_object_get_string_len(v) == wl &&
	       !memcmp(json_object_get_string(v), want, wl);
}

static enum auth_reason check_audience(const struct auth *a, struct json_object *payload)
{
	struct json_object *aud = get_claim(payload, "aud");

	if (!a->audience)
		return AUTH_OK;
	if (!aud)
		return AUTH_BAD_AUDIENCE;
	if (json_object_is_type(aud, json_type_string))
		return json_string_equals(aud, a->audience) ? AUTH_OK : AUTH_BAD_AUDIENCE;
	if (!json_object_is_type(aud, json_type_array))
		return AUTH_MALFORMED;
	for (size_t i = 0; i < json_object_array_length(aud); i++) {
		struct json_object *e = json_object_array_get_idx(aud, i);
		if (!json_object_is_type(e, json_type_string))
			return AUTH_MALFORMED;
		if (json_string_equals(e, a->audience))
			return AUTH_OK;
	}
	return AUTH_BAD_AUDIENCE;
}

/* Puts the four identity strings into one allocation holding exactly their bytes (user_id is
 * its start, the others are offsets). On failure out is unchanged; on success the old
 * allocation is freed (vals may point into it). */
static int pack_strings(struct auth_identity *out, const char *const vals[4])
{
	size_t len[4], total = 0, off[4];
	char *p, *old = (char *)(uintptr_t)out->user_id;

	for (int i = 0; i < 4; i++) {
		len[i] = strlen(vals[i]) + 1;
		off[i] = total;
		total += len[i];
	}
	if (off[3] > UINT16_MAX)
		return -1; /* longer than any identity auth_verify accepts */
	p = malloc(total);
	if (!p)
		return -1;
	for (int i = 0; i < 4; i++)
		memcpy(p + off[i], vals[i], len[i]);
	out->user_id = p;
	out->role_off = (uint16_t)off[1];
	out->seller_off = (uint16_t)off[2];
	out->client_off = (uint16_t)off[3];
	free(old);
	return 0;
}

int auth_identity_set_strings(struct auth_identity *id, const char *user_id, const char *role,
                              const char *seller_id, const char *client_id)
{
	const char *vals[4] = {user_id, role ? role : "", seller_id ? seller_id : "",
	                       client_id ? client_id : ""};
	return user_id ? pack_strings(id, vals) : -1;
}

/* Fills the identity fields of out from a verified payload. Allocates the strings, out->rooms
 * and out->claims_json (the caller clears out on failure). Out of memory is reported as
 * AUTH_MALFORMED: the enum has no internal-error reason and the token is refused either way. */
static enum auth_reason extract_identity(const struct auth *a, struct json_object *payload,
                                         struct auth_identity *out)
{
	static const char *const user_names[] = {"sub", "user_id", "id", NULL};
	static const char *const seller_names[] = {"seller_id", "id_seller", NULL};
	static const char *const client_names[] = {"client_id", "id_client", NULL};
	char user_id[AUTH_ID_MAX] = "", role[AUTH_ROLE_MAX] = "", seller_id[AUTH_ID_MAX] = "",
	     client_id[AUTH_ID_MAX] = "";
	const char *vals[4] = {user_id, role, seller_id, client_id};
	struct json_object *v;
	int r;

	r = claim_id_first(payload, user_names, user_id, sizeof(user_id));
	if (r < 0)
		return AUTH_MALFORMED;
	if (r == 0)
		return AUTH_NO_SUBJECT;

	v = get_claim(payload, "role");
	if (v) {
		const char *s;
		size_t len;
		if (!json_object_is_type(v, json_type_string))
			return AUTH_MALFORMED;
		s = json_object_get_string(v);
		len = (size_t)json_object_get_string_len(v);
		if (len >= sizeof(role) || !clean_string(s, len))
			return AUTH_MALFORMED;
		for (size_t i = 0; i < len; i++)
			role[i] = (char)tolower((unsigned char)s[i]);
		role[len] = '\0';
	}

	r = claim_id_first(payload, seller_names, seller_id, sizeof(seller_id));
	/* reference_id names a seller only in seller tokens; for clients it is something else. */
	if (r == 0 && !strcmp(role, "seller"))
		r = claim_id(payload, "reference_id", seller_id, sizeof(seller_id));
	if (r < 0)
		return AUTH_MALFORMED;
	if (claim_id_first(payload, client_names, client_id, sizeof(client_id)) < 0)
		return AUTH_MALFORMED;
	if (pack_strings(out, vals) < 0)
		return AUTH_MALFORMED;

	v = get_claim(payload, "rooms");
	if (v) {
		size_t n;
		if (!json_object_is_type(v, json_type_array))
			return AUTH_MALFORMED;
		n = json_object_array_length(v);
		if (n) {
			out->rooms = calloc(n + 1, sizeof(*out->rooms)); /* NULL-terminated */
			if (!out->rooms)
				return AUTH_MALFORMED;
		}
		for (size_t i = 0; i < n; i++) {
			struct json_object *e = json_object_array_get_idx(v, i);
			size_t len;
			if (!json_object_is_type(e, json_type_string))
				return AUTH_MALFORMED;
			len = (size_t)json_object_get_string_len(e);
			if (!len || !clean_string(json_object_get_string(e), len))
				return AUTH_MALFORMED;
			out->rooms[i] = strdup(json_object_get_string(e));
			if (!out->rooms[i])
				return AUTH_MALFORMED;
		}
	}

	if (a->drop_claims_json)
		return AUTH_OK;
	out->claims_json = strdup(json_object_to_json_string_ext(
	    payload, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	return out->claims_json ? AUTH_OK : AUTH_MALFORMED;
}

/* Reads and vets the JOSE header. On AUTH_OK *alg_idx is the alg_table index of a pinned,
 * allowed, keyed algorithm. */
static enum auth_reason check_header(const struct auth *a, struct json_object *hdr, int *alg_idx)
{
	struct json_object *v;
	int idx;

	if (!json_object_object_get_ex(hdr, "alg", &v) || !json_object_is_type(v, json_type_string))
		return AUTH_MALFORMED;
	/* "none" and unknown names are not in the table; a->algorithms already excludes the
	 * families we have no key for. */
	idx = alg_lookup(json_object_get_string(v), (size_t)json_object_get_string_len(v), true);
	if (idx < 0 || !(a->algorithms & alg_table[idx].bit))
		return AUTH_ALG_REFUSED;
	/* libjwt refuses any typ but JWT with a generic error; saying so here keeps the reason
	 * accurate instead of reporting it as a bad signature. */
	if (json_object_object_get_ex(hdr, "typ", &v) &&
	    (!json_object_is_type(v, json_type_string) ||
	     strcasecmp(json_object_get_string(v), "JWT")))
		return AUTH_MALFORMED;
	/* RFC 7515 §4.1.11: extensions we do not understand must not be ignored. */
	if (json_object_object_get_ex(hdr, "crit", &v))
		return AUTH_MALFORMED;
	*alg_idx = idx;
	return AUTH_OK;
}

/* HS256/384/512 are checked here, not by libjwt: the MAC of header.payload is compared with the
 * decoded signature by CRYPTO_memcmp, so the time taken says nothing about how many leading
 * bytes of a forged signature were right (libjwt compares base64 text, and how depends on its
 * version). A signature of another length fails before any comparison; the digest lengths are
 * public. */
static enum auth_reason check_hmac(const struct auth *a, const char *token, size_t signed_len,
                                   const unsigned char *sig, size_t siglen, int alg_idx)
{
	unsigned bit = alg_table[alg_idx].bit;
	const EVP_MD *md = bit == AUTH_ALG_HS256   ? EVP_sha256()
	                   : bit == AUTH_ALG_HS384 ? EVP_sha384()
	                                           : EVP_sha512();
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	bool ok;

	/* Unreachable by construction of a->algorithms; an empty key would make any MAC valid. */
	if (!a->secret || !a->secret_len)
		return AUTH_ALG_REFUSED;
	if (!HMAC(md, a->secret, (int)a->secret_len, (const unsigned char *)token, signed_len, mac,
	          &maclen)) {
		ERR_clear_error();
		return AUTH_BAD_SIGNATURE;
	}
	ok = siglen == maclen && CRYPTO_memcmp(mac, sig, maclen) == 0;
	OPENSSL_cleanse(mac, sizeof(mac));
	return ok ? AUTH_OK : AUTH_BAD_SIGNATURE;
}

/* RS and ES: asks libjwt to check the signature with the public key only, then confirms it
 * verified under the alg we pinned (it reads alg from the token itself). */
static enum auth_reason check_signature(const struct auth *a, const char *token, size_t len,
                                        int alg_idx)
{
	char buf[AUTH_TOKEN_MAX + 1];
	const unsigned char *key = (const unsigned char *)a->pem;
	int keylen = (int)a->pem_len, rc;
	jwt_t *jwt = NULL;
	enum auth_reason r = AUTH_OK;

	/* Unreachable by construction of a->algorithms, but an empty key would make libjwt skip
	 * verification altogether, so it is checked where it matters. */
	if (!key || keylen <= 0)
		return AUTH_ALG_REFUSED;
	memcpy(buf, token, len);
	buf[len] = '\0';
	rc = jwt_decode(&jwt, buf, key, keylen);
	if (rc != 0 || !jwt)
		r = AUTH_BAD_SIGNATURE;
	else if (jwt_get_alg(jwt) != alg_table[alg_idx].jalg)
		r = AUTH_ALG_REFUSED;
	jwt_free(jwt);
	/* A failed RSA/EC verify leaves OpenSSL errors queued; the TLS code shares the queue. */
	ERR_clear_error();
	OPENSSL_cleanse(buf, len);
	return r;
}

static enum auth_reason check_claims(const struct auth *a, struct json_object *payload, time_t now,
                                     struct auth_identity *out)
{
	struct json_object *iss;
	long long t = (long long)now, nbf = 0, iat = 0;
	enum auth_reason r;

	switch (claim_time(payload, "exp", false, &out->exp)) {
	case 1:
		break;
	default:
		return AUTH_MISSING_EXP;
	}
	/* nbf and iat are checked here and not kept: nothing after verification reads them. */
	if (claim_time(payload, "nbf", true, &nbf) < 0 ||
	    claim_time(payload, "iat", true, &iat) < 0)
		return AUTH_MALFORMED;
	/* Every sum saturates: exp, nbf and iat are whatever the token says, and now is whatever
	 * the caller passes. */
	if (auth_time_add(t, -(long long)a->leeway_s) > out->exp)
		return AUTH_EXPIRED;
	if (nbf && auth_time_add(t, a->leeway_s) < nbf)
		return AUTH_NOT_YET_VALID;
	if (iat && auth_time_add(t, a->leeway_s) < iat)
		return AUTH_ISSUED_FUTURE;
	if (a->issuer) {
		iss = get_claim(payload, "iss");
		if (!iss || !json_string_equals(iss, a->issuer))
			return AUTH_BAD_ISSUER;
	}
	r = check_audience(a, payload);
	if (r != AUTH_OK)
		return r;
	return extract_identity(a, payload, out);
}

/* On AUTH_OK, out owns malloc'd rooms and claims_json (release with auth_identity_clear); on any
 * other result nothing is left allocated and out is zeroed. */
enum auth_reason auth_verify(const struct auth *a, const char *token, size_t len, time_t now,
                             struct auth_identity *out)
{
	unsigned char dec[AUTH_TOKEN_MAX], sigdec[AUTH_TOKEN_MAX];
	const char *dot1, *dot2, *sig;
	size_t hlen, plen, slen, dlen, siglen;
	struct json_object *hdr = NULL, *payload = NULL;
	int alg_idx = -1;
	enum auth_reason r;

	if (!out)
		return AUTH_MALFORMED;
	memset(out, 0, sizeof(*out));
	if (!a || !token || len == 0 || len > AUTH_TOKEN_MAX)
		return AUTH_MALFORMED;

	/* Exactly three parts; a fourth dot lands in the signature and fails the alphabet check. */
	dot1 = memchr(token, '.', len);
	if (!dot1)
		return AUTH_MALFORMED;
	dot2 = memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token));
	if (!dot2)
		return AUTH_MALFORMED;
	hlen = (size_t)(dot1 - token);
	plen = (size_t)(dot2 - dot1 - 1);
	sig = dot2 + 1;
	slen = len - (size_t)(sig - token);
	if (hlen == 0 || plen == 0)
		return AUTH_MALFORMED;

	if (b64url_decode(token, hlen, dec, &dlen) < 0)
		return AUTH_MALFORMED;
	hdr = parse_object(dec, dlen);
	if (!hdr)
		return AUTH_MALFORMED;
	r = check_header(a, hdr, &alg_idx);
	json_object_put(hdr);
	if (r != AUTH_OK)
		return r;

	/* An empty signature can never be valid; refusing it here gives it a precise reason and
	 * does not depend on how a libjwt version treats an empty third part. */
	if (slen == 0)
		return AUTH_BAD_SIGNATURE;
	if (b64url_decode(sig, slen, sigdec, &siglen) < 0)
		return AUTH_MALFORMED;
	/* The payload is parsed before the signature check only because it is cheaper than RSA;
	 * none of it is trusted until the signature verifies. */
	if (b64url_decode(dot1 + 1, plen, dec, &dlen) < 0)
		return AUTH_MALFORMED;
	payload = parse_object(dec, dlen);
	if (!payload)
		return AUTH_MALFORMED;

	if (alg_table[alg_idx].bit & AUTH_ALG_HS_MASK)
		r = check_hmac(a, token, (size_t)(dot2 - token), sigdec, siglen, alg_idx);
	else
		r = check_signature(a, token, len, alg_idx);
	if (r == AUTH_OK)
		r = check_claims(a, payload, now, out);
	json_object_put(payload);
	if (r != AUTH_OK)
		auth_identity_clear(out);
	return r;
}

void auth_identity_clear(struct auth_identity *id)
{
	if (!id)
		return;
	for (char **r = id->rooms; r && *r; r++)
		free(*r);
	free(id->rooms);
	free(id->claims_json);
	free((char *)(uintptr_t)id->user_id); /* the strings' allocation */
	memset(id, 0, sizeof(*id));
}

/* dst receives its own copies of the strings, rooms and claims_json (release with
 * auth_identity_clear). On failure dst is left zeroed. */
int auth_identity_copy(struct auth_identity *dst, const struct auth_identity *src)
{
	if (!dst || !src || dst == src)
		return -1;
	*dst = *src;
	dst->user_id = NULL;
	dst->role_off = dst->seller_off = dst->client_off = 0;
	dst->rooms = NULL;
	dst->claims_json = NULL;
	if (src->user_id) {
		const char *vals[4] = {src->user_id, auth_role(src), auth_seller_id(src),
		                       auth_client_id(src)};
		if (pack_strings(dst, vals) < 0)
			goto fail;
	}
	if (src->rooms && src->rooms[0]) {
		size_t n = auth_room_count(src);
		dst->rooms = calloc(n + 1, sizeof(*dst->rooms)); /* NULL-terminated */
		if (!dst->rooms)
			goto fail;
		for (size_t i = 0; i < n; i++) {
			dst->rooms[i] = strdup(src->rooms[i]);
			if (!dst->rooms[i])
				goto fail;
		}
	}
	if (src->claims_json) {
		dst->claims_json = strdup(src->claims_json);
		if (!dst->claims_json)
			goto fail;
	}
	return 0;
fail:
	auth_identity_clear(dst);
	return -1;
}

/* Gives id the seller and client ids it lacks (from the database, not the token): the packed
 * strings are rebuilt, and claims_json, when kept, gains seller_id / client_id so a SQL policy
 * sees the same identity. Ids the token carried are never replaced. */
int auth_identity_fill_ids(struct auth_identity *id, const char *seller_id, const char *client_id)
{
	const char *vals[4];

	if (!id->user_id)
		return -1;
	vals[0] = id->user_id;
	vals[1] = auth_role(id);
	vals[2] = auth_seller_id(id)[0] || !seller_id ? auth_seller_id(id) : seller_id;
	vals[3] = auth_client_id(id)[0] || !client_id ? auth_client_id(id) : client_id;
	if (vals[2] == auth_seller_id(id) && vals[3] == auth_client_id(id))
		return 0;
	if (pack_strings(id, vals) < 0)
		return -1; /* the old allocation is still id's */
	if (id->claims_json) {
		struct json_object *o = json_tokener_parse(id->claims_json);
		char *text = NULL;
		if (o && json_object_is_type(o, json_type_object)) {
			if (auth_seller_id(id)[0])
				json_object_object_add(o, "seller_id",
				                       json_object_new_string(auth_seller_id(id)));
			if (auth_client_id(id)[0])
				json_object_object_add(o, "client_id",
				                       json_object_new_string(auth_client_id(id)));
			text = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
		}
		json_object_put(o);
		if (text) {
			free(id->claims_json);
			id->claims_json = text;
		}
	}
	return 0;
}

bool auth_is_admin(const struct auth_identity *id)
{
	return id && id->user_id && !strcmp(auth_role(id), "admin");
}

bool auth_is_service(const struct auth_identity *id)
{
	return id && id->user_id && !strcmp(auth_role(id), "service");
}

/* Adds the comma list of room patterns as a JSON array claim. libjwt 1.10 has no array setter,
 * so the grant goes through jwt_add_grants_json built by json-c (which does the escaping). */
static int add_rooms_grant(jwt_t *jwt, const char *list)
{
	struct json_object *obj = json_object_new_object();
	struct json_object *arr = json_object_new_array();
	const char *p = list;
	int rc = -1;

	if (!obj || !arr)
		goto done;
	for (;;) {
		const char *end = strchr(p, ',');
		size_t len = end ? (size_t)(end - p) : strlen(p);
		const char *s = p;
		while (len > 0 && isspace((unsigned char)*s)) {
			s++;
			len--;
		}
		while (len > 0 && isspace((unsigned char)s[len - 1]))
			len--;
		if (len > 0) {
			struct json_object *room = json_object_new_string_len(s, (int)len);
			if (!room || json_object_array_add(arr, room)) {
				json_object_put(room);
				goto done;
			}
		}
		if (!end)
			break;
		p = end + 1;
	}
	if (json_object_object_add(obj, "rooms", arr))
		goto done;
	arr = NULL;
	rc = jwt_add_grants_json(jwt, json_object_to_json_string_ext(obj, JSON_C_TO_STRING_PLAIN));
done:
	json_object_put(arr);
	json_object_put(obj);
	return rc;
}

static int add_optional_grant(jwt_t *jwt, const char *name, const char *value)
{
	if (!value || !*value)
		return 0;
	return jwt_add_grant(jwt, name, value);
}

/* Returns a malloc'd HS256 token (caller frees), or NULL without a secret, without a subject,
 * with a non-positive ttl, or on a libjwt failure. */
char *auth_mint_token(const struct auth *a, const struct auth_mint *m)
{
	jwt_t *jwt = NULL;
	char *tok = NULL;

	if (!a || !m || !m->sub || !*m->sub || !a->secret || !a->secret_len || m->ttl_s <= 0)
		return NULL;
	if ((long)m->now > LONG_MAX - m->ttl_s)
		return NULL;
	if (!(a->algorithms & AUTH_ALG_HS256))
		log_warn("minting an HS256 token that this configuration will not accept");
	if (jwt_new(&jwt))
		return NULL;
	if (jwt_add_grant(jwt, "sub", m->sub) || add_optional_grant(jwt, "role", m->role) ||
	    add_optional_grant(jwt, "seller_id", m->seller_id) ||
	    add_optional_grant(jwt, "client_id", m->client_id) ||
	    add_optional_grant(jwt, "iss", m->issuer) ||
	    add_optional_grant(jwt, "aud", m->audience) ||
	    (m->rooms && add_rooms_grant(jwt, m->rooms)) ||
	    jwt_add_grant_int(jwt, "iat", (long)m->now) ||
	    jwt_add_grant_int(jwt, "exp", (long)m->now + m->ttl_s) ||
	    jwt_set_alg(jwt, JWT_ALG_HS256, a->secret, (int)a->secret_len))
		goto done;
	tok = jwt_encode_str(jwt);
done:
	/* jwt_free scrubs libjwt's copy of the secret. */
	jwt_free(jwt);
	return tok;
}
