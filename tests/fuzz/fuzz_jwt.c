/* Fuzzes the JWT/claims checker: auth_verify on the input as a token under an HMAC, an RSA and an
 * EC configuration, again after re-signing it with the HMAC secret (so mutated claims get past
 * the signature and reach the claim checks), and auth_algorithms_parse on the input as a string. */
#include "fuzz.h"

#include "auth.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <strings.h>

/* FUZZ_RSA_PEM and FUZZ_EC_PEM: public halves of throwaway keys that signed the seed corpus
 * (tests/fuzz/gen_seeds.py writes both; the private halves are never kept). */
#include "fuzz_jwt_keys.h"

#define NOW    1700000000L
#define LEEWAY 30
#define SECRET "fuzz-secret-0123456789abcdef0123456789"

#define HS_ALL (AUTH_ALG_HS256 | AUTH_ALG_HS384 | AUTH_ALG_HS512)
#define RS_ALL (AUTH_ALG_RS256 | AUTH_ALG_RS384 | AUTH_ALG_RS512)
#define ES_ALL (AUTH_ALG_ES256 | AUTH_ALG_ES384 | AUTH_ALG_ES512)

static struct auth *g_hs, *g_rs, *g_es;

static struct auth *make(const char *pem, unsigned algs, const char *iss, const char *aud)
{
	struct auth_config c = {
	    .algorithms = algs, .leeway_s = LEEWAY, .issuer = iss, .audience = aud};
	char err[256];
	struct auth *a;

	if (pem) {
		c.public_key_pem = pem;
	} else {
		c.secret = (const unsigned char *)SECRET;
		c.secret_len = strlen(SECRET);
	}
	a = auth_new(&c, err, sizeof(err));
	if (!a) {
		fprintf(stderr, "auth_new: %s\n", err);
		abort();
	}
	return a;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	/* All of HS*, RS*, ES* are allowed everywhere: auth_new must narrow each to the family of
	 * the key it holds, and the oracle below checks that it did. */
	g_hs = make(NULL, HS_ALL | RS_ALL, NULL, NULL);
	g_rs = make(FUZZ_RSA_PEM, HS_ALL | RS_ALL | ES_ALL, "https://auth.example", "roomcast");
	g_es = make(FUZZ_EC_PEM, ES_ALL, NULL, NULL);
	return 0;
}

static int b64url_val(unsigned char c)
{
	const char *abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	const char *p = c ? strchr(abc, c) : NULL;
	return p ? (int)(p - abc) : -1;
}

/* Lenient base64url decode into a malloc'd NUL-terminated buffer (the harness only needs to
 * read the header's alg; strictness is the verifier's job). */
static char *b64url_dec(const char *s, size_t n, size_t *outlen)
{
	char *out = malloc(n * 3 / 4 + 2);
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;

	if (!out)
		abort();
	for (size_t i = 0; i < n; i++) {
		int v = b64url_val((unsigned char)s[i]);
		if (v < 0)
			break;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (char)(acc >> bits);
		}
	}
	out[o] = '\0';
	*outlen = o;
	return out;
}

static void b64url_enc(const unsigned char *in, size_t n, char *out)
{
	const char *abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t o = 0;
	uint32_t acc = 0;
	int bits = 0;

	for (size_t i = 0; i < n; i++) {
		acc = (acc << 8) | in[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			out[o++] = abc[(acc >> bits) & 63];
		}
	}
	if (bits)
		out[o++] = abc[(acc << (6 - bits)) & 63];
	out[o] = '\0';
}

/* True when the payload's time claim name is absent or at most NOW + LEEWAY (a number: any
 * other type must have made the token malformed). */
static bool time_claim_passed(struct json_object *claims, const char *name)
{
	struct json_object *v;

	if (!json_object_object_get_ex(claims, name, &v))
		return true;
	if (json_object_is_type(v, json_type_int))
		return json_object_get_int64(v) <= NOW + LEEWAY;
	return json_object_is_type(v, json_type_double) &&
	       json_object_get_double(v) <= NOW + LEEWAY;
}

/* The "alg" of the token's header, or "" when it cannot be read. */
static void header_alg(const char *tok, size_t len, char *alg, size_t cap)
{
	const char *dot = memchr(tok, '.', len);
	size_t hl, n = 0;
	char *h;
	json_object *o;
	const char *s;

	alg[0] = '\0';
	if (!dot)
		return;
	h = b64url_dec(tok, (size_t)(dot - tok), &hl);
	o = fuzz_json_object(h, hl, false);
	if ((s = fuzz_json_str(o, "alg", &n)) && n < cap && strlen(s) == n)
		memcpy(alg, s, n + 1);
	json_object_put(o);
	free(h);
}

static bool all_zero(const void *p, size_t n)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < n; i++)
		if (b[i])
			return false;
	return true;
}

/* Invariants of one verification; family is the alg prefix this configuration may accept. */
static enum auth_reason verify(const struct auth *a, const char *tok, size_t len,
                               const char *family)
{
	struct auth_identity id, copy;
	enum auth_reason r = auth_verify(a, tok, len, NOW, &id);
	char alg[16];
	json_object *claims;

	FUZZ_CHECK((int)r >= 0 && r < AUTH_REASON_COUNT, "reason %d", (int)r);
	FUZZ_CHECK(strcmp(auth_reason_name(r), "unknown"), "unnamed reason %d", (int)r);
	if (r != AUTH_OK) {
		FUZZ_CHECK(all_zero(&id, sizeof(id)), "refused (%s) but identity not zeroed",
		           auth_reason_name(r));
		return r;
	}
	/* Accepted: the key family matches the alg (no algorithm confusion) ... */
	header_alg(tok, len, alg, sizeof(alg));
	FUZZ_CHECK(!strncmp(alg, family, 2), "accepted alg '%s' under a %s key", alg, family);
	/* ... and the identity is what the claims promise. */
	FUZZ_CHECK(id.user_id && auth_role(&id) && auth_seller_id(&id) && auth_client_id(&id),
	           "identity field unset");
	FUZZ_CHECK(id.user_id[0] && strlen(id.user_id) < AUTH_ID_MAX, "no user id");
	FUZZ_CHECK(strlen(auth_role(&id)) < AUTH_ROLE_MAX &&
	               strlen(auth_seller_id(&id)) < AUTH_ID_MAX &&
	               strlen(auth_client_id(&id)) < AUTH_ID_MAX,
	           "identity field too long");
	for (const char *p = auth_role(&id); *p; p++)
		FUZZ_CHECK(!isupper((unsigned char)*p), "role not lower-cased: %s", auth_role(&id));
	FUZZ_CHECK(id.exp >= NOW - LEEWAY, "expired token accepted (exp %lld)", id.exp);
	FUZZ_CHECK(!id.rooms || id.rooms[0], "empty rooms array kept");
	for (size_t i = 0; i < auth_room_count(&id); i++)
		FUZZ_CHECK(id.rooms[i] && id.rooms[i][0], "empty room pattern %zu", i);
	/* Identity strings end up in JSON replies, logs and SQL: they must be proper UTF-8. */
	FUZZ_CHECK(fuzz_utf8_valid((const unsigned char *)id.user_id, strlen(id.user_id)) &&
	               fuzz_utf8_valid((const unsigned char *)auth_seller_id(&id),
	                               strlen(auth_seller_id(&id))) &&
	               fuzz_utf8_valid((const unsigned char *)auth_client_id(&id),
	                               strlen(auth_client_id(&id))),
	           "identity is not UTF-8");
	for (size_t i = 0; i < auth_room_count(&id); i++)
		FUZZ_CHECK(fuzz_utf8_valid((const unsigned char *)id.rooms[i], strlen(id.rooms[i])),
		           "room pattern %zu is not UTF-8", i);
	FUZZ_CHECK(id.claims_json, "no claims_json");
	claims = fuzz_json_object(id.claims_json, strlen(id.claims_json), true);
	FUZZ_CHECK(claims, "claims_json is not a UTF-8 JSON object: %s", id.claims_json);
	/* The identity keeps no nbf / iat; the payload it was verified from says what they were. */
	FUZZ_CHECK(time_claim_passed(claims, "nbf"), "token not yet valid accepted");
	FUZZ_CHECK(time_claim_passed(claims, "iat"), "token from the future accepted");
	json_object_put(claims);

	FUZZ_CHECK(auth_identity_copy(&copy, &id) == 0, "copy failed");
	FUZZ_CHECK(
	    !strcmp(copy.user_id, id.user_id) && !strcmp(auth_role(&copy), auth_role(&id)) &&
	        !strcmp(auth_seller_id(&copy), auth_seller_id(&id)) &&
	        !strcmp(auth_client_id(&copy), auth_client_id(&id)) && copy.user_id != id.user_id &&
	        auth_room_count(&copy) == auth_room_count(&id) && copy.exp == id.exp &&
	        !strcmp(copy.claims_json, id.claims_json) && copy.claims_json != id.claims_json,
	    "copy differs");
	for (size_t i = 0; i < auth_room_count(&id); i++)
		FUZZ_CHECK(!strcmp(copy.rooms[i], id.rooms[i]) && copy.rooms[i] != id.rooms[i],
		           "room copy");
	auth_identity_clear(&copy);
	auth_identity_clear(&id);
	FUZZ_CHECK(all_zero(&id, sizeof(id)), "clear left data");
	return r;
}

/* Replaces the signature with a valid HMAC over the first two parts when the header names an
 * HS alg, so mutated claims reach the claim checks and the identity extraction. */
static void verify_resigned(const char *tok, size_t len)
{
	const char *d1 = memchr(tok, '.', len), *d2;
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	const EVP_MD *md;
	char alg[16], *t;
	size_t in_len;

	if (!d1 || !(d2 = memchr(d1 + 1, '.', len - (size_t)(d1 + 1 - tok))))
		return;
	header_alg(tok, len, alg, sizeof(alg));
	if (!strcmp(alg, "HS256"))
		md = EVP_sha256();
	else if (!strcmp(alg, "HS384"))
		md = EVP_sha384();
	else if (!strcmp(alg, "HS512"))
		md = EVP_sha512();
	else
		return;
	in_len = (size_t)(d2 - tok);
	if (!HMAC(md, SECRET, (int)strlen(SECRET), (const unsigned char *)tok, in_len, mac,
	          &maclen))
		abort();
	t = malloc(in_len + 1 + 4 * EVP_MAX_MD_SIZE / 3 + 4);
	if (!t)
		abort();
	memcpy(t, tok, in_len);
	t[in_len] = '.';
	b64url_enc(mac, maclen, t + in_len + 1);
	/* Only verify()'s invariants apply: a validly signed token may still be refused as
	 * bad_signature, because libjwt re-parses it with jansson, which refuses some JSON json-c
	 * takes (raw control bytes in strings, \u0000, lax UTF-8, numbers that overflow). */
	verify(g_hs, t, strlen(t), "HS");
	free(t);
}

/* A reference reading of JWT_ALGORITHMS: comma items, surrounding spaces ignored, names
 * case-insensitive, no empty item, nothing unknown (so never "none"). */
static int ref_algorithms(const char *list, unsigned *out)
{
	static const char *const names[] = {"HS256", "HS384", "HS512", "RS256", "RS384",
	                                    "RS512", "ES256", "ES384", "ES512"};
	unsigned mask = 0;
	const char *p = list;

	for (;;) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		int found = -1;

		while (n && isspace((unsigned char)*p)) {
			p++;
			n--;
		}
		while (n && isspace((unsigned char)p[n - 1]))
			n--;
		for (int i = 0; i < 9; i++)
			if (n == 5 && !strncasecmp(p, names[i], 5))
				found = i;
		if (found < 0)
			return -1;
		mask |= 1u << found;
		if (!end)
			break;
		p = end + 1;
	}
	*out = mask;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *tok = (const char *)data;
	char *s;
	unsigned got = 0, want = 0;
	int rc, ref;

	verify(g_hs, tok, size, "HS");
	verify(g_rs, tok, size, "RS");
	verify(g_es, tok, size, "ES");
	verify_resigned(tok, size);

	s = strndup(tok, size);
	if (!s)
		abort();
	rc = auth_algorithms_parse(s, &got);
	ref = ref_algorithms(s, &want);
	FUZZ_CHECK(rc == ref && (rc < 0 || got == want), "algorithms '%s': %d/%#x, expected %d/%#x",
	           s, rc, got, ref, want);
	free(s);
	return 0;
}
