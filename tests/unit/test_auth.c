/* Unit tests for src/auth.c. Tokens are built here by hand (base64url + OpenSSL HMAC / RSA / ECDSA)
 * so the verifier is never checked against its own minting code, except in the round-trip test. */
#include "auth.h"

#include <check.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#define NOW    1700000000L
#define LEEWAY 30

#define HS_ALL (AUTH_ALG_HS256 | AUTH_ALG_HS384 | AUTH_ALG_HS512)
#define RS_ALL (AUTH_ALG_RS256 | AUTH_ALG_RS384 | AUTH_ALG_RS512)
#define ES_ALL (AUTH_ALG_ES256 | AUTH_ALG_ES384 | AUTH_ALG_ES512)

static const char SECRET[] = "0123456789abcdef0123456789abcdef";
static const char OTHER_SECRET[] = "fedcba9876543210fedcba9876543210";
static const char ISSUER[] = "https://auth.example";
static const char AUDIENCE[] = "roomcast";

/* Keys are generated once in main, before the runner forks, so every test shares them. */
static EVP_PKEY *g_rsa;
static char *g_rsa_pem;
static EVP_PKEY *g_ec;
static char *g_ec_pem;

/* ---- token construction ---- */

/* Returns a malloc'd unpadded base64url encoding of in[0..n). */
static char *b64url(const void *in, size_t n)
{
	char *out = malloc(4 * ((n + 2) / 3) + 1);
	size_t len;

	ck_assert_ptr_nonnull(out);
	len = (size_t)EVP_EncodeBlock((unsigned char *)out, in, (int)n);
	while (len > 0 && out[len - 1] == '=')
		len--;
	out[len] = '\0';
	for (size_t i = 0; i < len; i++) {
		if (out[i] == '+')
			out[i] = '-';
		else if (out[i] == '/')
			out[i] = '_';
	}
	return out;
}

/* Returns malloc'd "a.b" or "a.b.c" (c may be NULL). */
static char *join(const char *a, const char *b, const char *c)
{
	size_t n = strlen(a) + strlen(b) + (c ? strlen(c) + 1 : 0) + 2;
	char *out = malloc(n);

	ck_assert_ptr_nonnull(out);
	if (c)
		snprintf(out, n, "%s.%s.%s", a, b, c);
	else
		snprintf(out, n, "%s.%s", a, b);
	return out;
}

/* Returns the malloc'd signing input base64url(header) "." base64url(payload). */
static char *signing_input(const char *header, const char *payload)
{
	char *h = b64url(header, strlen(header));
	char *p = b64url(payload, strlen(payload));
	char *out = join(h, p, NULL);

	free(h);
	free(p);
	return out;
}

static char *finish(char *input, const void *sig, size_t siglen)
{
	char *s = b64url(sig, siglen);
	char *out = join(input, s, NULL);

	free(s);
	free(input);
	return out;
}

static char *tok_hmac(const EVP_MD *md, const void *key, size_t keylen, const char *header,
                      const char *payload)
{
	char *input = signing_input(header, payload);
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;

	ck_assert_ptr_nonnull(
	    HMAC(md, key, (int)keylen, (const unsigned char *)input, strlen(input), mac, &maclen));
	return finish(input, mac, maclen);
}

/* Signs with an RSA (PKCS#1 v1.5) or EC key; EC signatures are converted from DER to the raw
 * r||s form JWS uses. */
static char *tok_pkey(EVP_PKEY *key, const EVP_MD *md, const char *header, const char *payload)
{
	char *input = signing_input(header, payload);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned char sig[1024];
	size_t siglen = sizeof(sig);
	char *out;

	ck_assert_ptr_nonnull(ctx);
	ck_assert_int_eq(EVP_DigestSignInit(ctx, NULL, md, NULL, key), 1);
	ck_assert_int_eq(
	    EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)input, strlen(input)), 1);
	EVP_MD_CTX_free(ctx);
	if (EVP_PKEY_get_base_id(key) == EVP_PKEY_EC) {
		const unsigned char *p = sig;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)siglen);
		unsigned char raw[64];
		ck_assert_ptr_nonnull(es);
		ck_assert_int_eq(BN_bn2binpad(ECDSA_SIG_get0_r(es), raw, 32), 32);
		ck_assert_int_eq(BN_bn2binpad(ECDSA_SIG_get0_s(es), raw + 32, 32), 32);
		ECDSA_SIG_free(es);
		out = finish(input, raw, sizeof(raw));
	} else {
		out = finish(input, sig, siglen);
	}
	return out;
}

/* Runs in main, outside any test, so it reports failure by returning NULL instead of asserting.
 * Returns the malloc'd SubjectPublicKeyInfo PEM of key. */
static char *pem_of(EVP_PKEY *key)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL, *out = NULL;
	long n;

	if (bio && PEM_write_bio_PUBKEY(bio, key) == 1) {
		n = BIO_get_mem_data(bio, &data);
		out = strndup(data, (size_t)n);
	}
	BIO_free(bio);
	return out;
}

/* ---- verifier configurations ---- */

enum cfg_kind {
	C_HS,         /* secret only; allows HS* and RS256, so RS256 must be narrowed away */
	C_HS256_ONLY, /* secret only; HS256 */
	C_BOTH,       /* secret + RSA PEM; HS* and RS* */
	C_RSA,        /* RSA PEM only; RS* and ES256 (ES256 narrowed away by the key type) */
	C_EC,         /* P-256 PEM only; ES* (narrowed to ES256) */
	C_ISS_AUD,    /* secret; HS*; issuer and audience configured */
};

static struct auth *make_auth(enum cfg_kind k)
{
	struct auth_config c = {.leeway_s = LEEWAY};
	char err[256] = "";
	struct auth *a;

	switch (k) {
	case C_HS:
		c.secret = (const unsigned char *)SECRET;
		c.secret_len = strlen(SECRET);
		c.algorithms = HS_ALL | AUTH_ALG_RS256;
		break;
	case C_HS256_ONLY:
		c.secret = (const unsigned char *)SECRET;
		c.secret_len = strlen(SECRET);
		c.algorithms = AUTH_ALG_HS256;
		break;
	case C_BOTH:
		c.secret = (const unsigned char *)SECRET;
		c.secret_len = strlen(SECRET);
		c.public_key_pem = g_rsa_pem;
		c.algorithms = HS_ALL | RS_ALL;
		break;
	case C_RSA:
		c.public_key_pem = g_rsa_pem;
		c.algorithms = RS_ALL | AUTH_ALG_ES256;
		break;
	case C_EC:
		c.public_key_pem = g_ec_pem;
		c.algorithms = ES_ALL;
		break;
	case C_ISS_AUD:
		c.secret = (const unsigned char *)SECRET;
		c.secret_len = strlen(SECRET);
		c.algorithms = HS_ALL;
		c.issuer = ISSUER;
		c.audience = AUDIENCE;
		break;
	}
	a = auth_new(&c, err, sizeof(err));
	ck_assert_msg(a != NULL, "auth_new(%d): %s", (int)k, err);
	return a;
}

/* ---- the table ---- */

enum signer {
	S_HS256,
	S_HS384,
	S_HS512,
	S_HS256_OTHER, /* HS256 with a different secret */
	S_HS256_PEM,   /* HS256 keyed with the RSA public key's PEM text: the confusion attack */
	S_RS256,
	S_ES256,
	S_ES384_P256, /* ECDSA P-256 over SHA-384: right key, wrong digest for its curve */
	S_EMPTY,      /* "h.p." */
	S_JUNK,       /* a well-formed but meaningless signature */
	S_RAW,        /* hdr is the whole token */
};

struct vcase {
	const char *name;
	enum cfg_kind cfg;
	enum signer sig;
	const char *hdr;
	const char *payload;
	enum auth_reason want;
};

#define H_HS256 "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define H_HS384 "{\"alg\":\"HS384\",\"typ\":\"JWT\"}"
#define H_HS512 "{\"alg\":\"HS512\"}"
#define H_RS256 "{\"alg\":\"RS256\",\"typ\":\"JWT\"}"
#define H_ES256 "{\"alg\":\"ES256\",\"typ\":\"JWT\"}"
#define H_ES384 "{\"alg\":\"ES384\",\"typ\":\"JWT\"}"
#define P_OK    "{\"sub\":\"u1\",\"exp\":1700003600}"
/* 1700000000 is NOW; the leeway is 30 s. */
#define P_ISS_AUD(iss, aud) "{\"sub\":\"u1\",\"exp\":1700003600,\"iss\":" iss ",\"aud\":" aud "}"

/* clang-format off */
static const struct vcase cases[] = {
	{"hs256 ok", C_HS, S_HS256, H_HS256, P_OK, AUTH_OK},
	{"hs384 ok", C_HS, S_HS384, H_HS384, P_OK, AUTH_OK},
	{"hs512 ok, no typ", C_HS, S_HS512, H_HS512, P_OK, AUTH_OK},
	{"typ lower-case jwt ok", C_HS, S_HS256, "{\"alg\":\"HS256\",\"typ\":\"jwt\"}", P_OK,
	 AUTH_OK},

	/* alg none and friends */
	{"alg none, empty sig", C_HS, S_EMPTY, "{\"alg\":\"none\"}", P_OK, AUTH_ALG_REFUSED},
	{"alg none, with sig", C_HS, S_HS256, "{\"alg\":\"none\",\"typ\":\"JWT\"}", P_OK,
	 AUTH_ALG_REFUSED},
	{"alg None, empty sig", C_HS, S_EMPTY, "{\"alg\":\"None\"}", P_OK, AUTH_ALG_REFUSED},
	{"alg lower-case hs256", C_HS, S_HS256, "{\"alg\":\"hs256\"}", P_OK, AUTH_ALG_REFUSED},
	{"alg unknown", C_HS, S_HS256, "{\"alg\":\"PS256\"}", P_OK, AUTH_ALG_REFUSED},
	{"alg missing", C_HS, S_HS256, "{\"typ\":\"JWT\"}", P_OK, AUTH_MALFORMED},
	{"alg not a string", C_HS, S_HS256, "{\"alg\":1}", P_OK, AUTH_MALFORMED},
	{"hs384 when only hs256", C_HS256_ONLY, S_HS384, H_HS384, P_OK, AUTH_ALG_REFUSED},

	/* signatures */
	{"wrong key", C_HS, S_HS256_OTHER, H_HS256, P_OK, AUTH_BAD_SIGNATURE},
	{"empty signature", C_HS, S_EMPTY, H_HS256, P_OK, AUTH_BAD_SIGNATURE},
	{"junk signature", C_HS, S_JUNK, H_HS256, P_OK, AUTH_BAD_SIGNATURE},
	{"rs256 empty signature", C_BOTH, S_EMPTY, H_RS256, P_OK, AUTH_BAD_SIGNATURE},

	/* algorithm confusion: RS256 header, HMAC signature */
	{"rs256 hmac'd with secret, secret only", C_HS, S_HS256, H_RS256, P_OK, AUTH_ALG_REFUSED},
	{"rs256 hmac'd with pem, secret only", C_HS, S_HS256_PEM, H_RS256, P_OK, AUTH_ALG_REFUSED},
	{"rs256 hmac'd with pem, both keys", C_BOTH, S_HS256_PEM, H_RS256, P_OK,
	 AUTH_BAD_SIGNATURE},
	{"rs256 hmac'd with secret, both keys", C_BOTH, S_HS256, H_RS256, P_OK, AUTH_BAD_SIGNATURE},
	{"hs256 hmac'd with pem, both keys", C_BOTH, S_HS256_PEM, H_HS256, P_OK,
	 AUTH_BAD_SIGNATURE},
	{"rs256 hmac'd with pem, pem only", C_RSA, S_HS256_PEM, H_RS256, P_OK, AUTH_BAD_SIGNATURE},
	{"hs256 hmac'd with pem, pem only", C_RSA, S_HS256_PEM, H_HS256, P_OK, AUTH_ALG_REFUSED},

	/* public keys */
	{"rs256 ok, both keys", C_BOTH, S_RS256, H_RS256, P_OK, AUTH_OK},
	{"rs256 ok, pem only", C_RSA, S_RS256, H_RS256, P_OK, AUTH_OK},
	{"hs256 valid, pem only", C_RSA, S_HS256, H_HS256, P_OK, AUTH_ALG_REFUSED},
	{"es256 header, rsa key", C_RSA, S_ES256, H_ES256, P_OK, AUTH_ALG_REFUSED},
	{"es256 ok", C_EC, S_ES256, H_ES256, P_OK, AUTH_OK},
	{"es384 header, p-256 key", C_EC, S_ES384_P256, H_ES384, P_OK, AUTH_ALG_REFUSED},
	{"rs256 token, ec key", C_EC, S_RS256, H_RS256, P_OK, AUTH_ALG_REFUSED},

	/* header extras */
	{"typ at+jwt", C_HS, S_HS256, "{\"alg\":\"HS256\",\"typ\":\"at+jwt\"}", P_OK,
	 AUTH_MALFORMED},
	{"typ not a string", C_HS, S_HS256, "{\"alg\":\"HS256\",\"typ\":1}", P_OK, AUTH_MALFORMED},
	{"crit header", C_HS, S_HS256, "{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}", P_OK,
	 AUTH_MALFORMED},
	{"kid ignored", C_HS, S_HS256, "{\"alg\":\"HS256\",\"kid\":\"k1\"}", P_OK, AUTH_OK},
	/* json-c and libjwt's jansson both keep the last duplicate; the post-decode alg check would
	 * catch them disagreeing. */
	{"duplicate alg, last is hs256", C_BOTH, S_HS256,
	 "{\"alg\":\"RS256\",\"alg\":\"HS256\"}", P_OK, AUTH_OK},
	{"duplicate alg, last is rs256", C_BOTH, S_HS256,
	 "{\"alg\":\"HS256\",\"alg\":\"RS256\"}", P_OK, AUTH_BAD_SIGNATURE},

	/* exp */
	{"expired", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":1699990000}", AUTH_EXPIRED},
	{"exp = now - leeway", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":1699999970}",
	 AUTH_OK},
	{"exp = now - leeway - 1", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":1699999969}",
	 AUTH_EXPIRED},
	{"exp fractional", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":1700003600.5}",
	 AUTH_OK},
	{"exp int64 max", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":9223372036854775807}", AUTH_OK},
	{"exp 1e300", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":1e300}", AUTH_OK},
	/* HS tokens no longer pass through libjwt (whose jansson refused integers beyond int64 as
	 * a bad signature); json-c reads this one as a number beyond int64: saturated, valid. */
	{"exp beyond int64", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":99999999999999999999}", AUTH_OK},
	{"exp int64 max - 1", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":9223372036854775806}", AUTH_OK},
	{"exp int64 min", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":-9223372036854775808}", AUTH_EXPIRED},
	{"exp -1e300", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":-1e300}", AUTH_EXPIRED},
	{"nbf int64 max", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":9223372036854775807,\"nbf\":9223372036854775807}",
	 AUTH_NOT_YET_VALID},
	{"nbf int64 min", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":9223372036854775807,\"nbf\":-9223372036854775808}", AUTH_OK},
	{"iat int64 max", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":9223372036854775807}", AUTH_ISSUED_FUTURE},
	{"iat int64 min", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":-9223372036854775808}", AUTH_OK},
	{"missing exp", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\"}", AUTH_MISSING_EXP},
	{"exp string", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":\"1700003600\"}",
	 AUTH_MISSING_EXP},
	{"exp null", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":null}", AUTH_MISSING_EXP},
	{"exp bool", C_HS, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":true}", AUTH_MISSING_EXP},
	{"bad signature wins over missing exp", C_HS, S_HS256_OTHER, H_HS256,
	 "{\"sub\":\"u1\"}", AUTH_BAD_SIGNATURE},

	/* nbf / iat */
	{"nbf future", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"nbf\":1700000600}", AUTH_NOT_YET_VALID},
	{"nbf = now + leeway", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"nbf\":1700000030}", AUTH_OK},
	{"nbf = now + leeway + 1", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"nbf\":1700000031}", AUTH_NOT_YET_VALID},
	{"nbf string", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"nbf\":\"1\"}", AUTH_MALFORMED},
	{"iat future", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":1700000600}", AUTH_ISSUED_FUTURE},
	{"iat = now + leeway", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":1700000030}", AUTH_OK},
	{"iat = now + leeway + 1", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":1700000031}", AUTH_ISSUED_FUTURE},
	{"iat past", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":1699990000}", AUTH_OK},
	{"iat string", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iat\":\"x\"}", AUTH_MALFORMED},

	/* iss / aud */
	{"iss and aud ok", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example\"", "\"roomcast\""), AUTH_OK},
	{"iss mismatch", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://evil.example\"", "\"roomcast\""), AUTH_BAD_ISSUER},
	{"iss prefix", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example/\"", "\"roomcast\""), AUTH_BAD_ISSUER},
	{"iss missing", C_ISS_AUD, S_HS256, H_HS256, "{\"sub\":\"u1\",\"exp\":1700003600}",
	 AUTH_BAD_ISSUER},
	{"iss not a string", C_ISS_AUD, S_HS256, H_HS256, P_ISS_AUD("1", "\"roomcast\""),
	 AUTH_BAD_ISSUER},
	{"aud string mismatch", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example\"", "\"other\""), AUTH_BAD_AUDIENCE},
	{"aud array without it", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example\"", "[\"a\",\"b\"]"), AUTH_BAD_AUDIENCE},
	{"aud array containing it", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example\"", "[\"a\",\"roomcast\"]"), AUTH_OK},
	{"aud empty array", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example\"", "[]"), AUTH_BAD_AUDIENCE},
	{"aud missing", C_ISS_AUD, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"iss\":\"https://auth.example\"}", AUTH_BAD_AUDIENCE},
	{"aud number", C_ISS_AUD, S_HS256, H_HS256, P_ISS_AUD("\"https://auth.example\"", "7"),
	 AUTH_MALFORMED},
	{"aud array with number", C_ISS_AUD, S_HS256, H_HS256,
	 P_ISS_AUD("\"https://auth.example\"", "[7,\"roomcast\"]"), AUTH_MALFORMED},
	{"iss/aud unchecked when not configured", C_HS, S_HS256, H_HS256,
	 P_ISS_AUD("\"x\"", "\"y\""), AUTH_OK},

	/* malformed */
	{"empty token", C_HS, S_RAW, "", NULL, AUTH_MALFORMED},
	{"two parts", C_HS, S_RAW, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9", NULL, AUTH_MALFORMED},
	{"four parts", C_HS, S_RAW, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.AAAA.AAAA", NULL,
	 AUTH_MALFORMED},
	{"empty header part", C_HS, S_RAW, ".eyJzdWIiOiJ1MSJ9.AAAA", NULL, AUTH_MALFORMED},
	{"empty payload part", C_HS, S_RAW, "eyJhbGciOiJIUzI1NiJ9..AAAA", NULL, AUTH_MALFORMED},
	{"bad base64 header", C_HS, S_RAW, "eyJhbGci*iJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.AAAA", NULL,
	 AUTH_MALFORMED},
	{"padded base64 header", C_HS, S_RAW, "eyJhbGciOiJIUzI1NiJ9==.eyJzdWIiOiJ1MSJ9.AAAA", NULL,
	 AUTH_MALFORMED},
	{"standard base64 alphabet", C_HS, S_RAW, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.AA+/",
	 NULL, AUTH_MALFORMED},
	{"impossible base64 length", C_HS, S_RAW, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.AAAAA",
	 NULL, AUTH_MALFORMED},
	/* Both spell {"alg":"none"}; only the first is canonical base64url. */
	{"canonical base64 header", C_HS, S_RAW, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1MSJ9.AAAA", NULL,
	 AUTH_ALG_REFUSED},
	{"stray bits in last base64 char", C_HS, S_RAW,
	 "eyJhbGciOiJub25lIn1.eyJzdWIiOiJ1MSJ9.AAAA", NULL, AUTH_MALFORMED},
	{"header not json", C_HS, S_HS256, "not json", P_OK, AUTH_MALFORMED},
	{"header json array", C_HS, S_HS256, "[\"HS256\"]", P_OK, AUTH_MALFORMED},
	{"header trailing bytes", C_HS, S_HS256, H_HS256 "x", P_OK, AUTH_MALFORMED},
	{"header two objects", C_HS, S_HS256, H_HS256 "{}", P_OK, AUTH_MALFORMED},
	{"header trailing comma", C_HS, S_HS256, "{\"alg\":\"HS256\",}", P_OK, AUTH_MALFORMED},
	{"payload not json", C_HS, S_HS256, H_HS256, "sub=u1", AUTH_MALFORMED},
	{"payload trailing bytes", C_HS, S_HS256, H_HS256, P_OK "\n}", AUTH_MALFORMED},
	{"payload single quotes", C_HS, S_HS256, H_HS256, "{'sub':'u1','exp':1700003600}",
	 AUTH_MALFORMED},
	/* Found by fuzz_jwt once HS tokens stopped passing through libjwt's jansson: json-c lets
	 * this overlong 4-byte form through. */
	{"payload overlong utf-8", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"\xc3\xa9\xf0\x85\x98\x80\",\"exp\":1700003600}", AUTH_MALFORMED},
	{"payload surrogate utf-8", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"\xed\xa0\x80\",\"exp\":1700003600}", AUTH_MALFORMED},
	/* json-c decodes a lone surrogate escape to U+FFFD: valid UTF-8 either way. */
	{"sub lone surrogate escape", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"n\":\"a\\ud800b\",\"exp\":1700003600}", AUTH_OK},
	{"sub escaped astral ok", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"n\":\"\\ud83d\\ude00\",\"exp\":1700003600}", AUTH_OK},
	{"payload bad utf-8", C_HS, S_HS256, H_HS256, "{\"sub\":\"\xff\",\"exp\":1700003600}",
	 AUTH_MALFORMED},
	{"payload depth 10 ok", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"x\":[[[[[[[[[1]]]]]]]]]}", AUTH_OK},
	{"payload depth 11", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u1\",\"exp\":1700003600,\"x\":[[[[[[[[[[1]]]]]]]]]]}", AUTH_MALFORMED},
	{"header depth 11", C_HS, S_HS256, "{\"alg\":\"HS256\",\"x\":[[[[[[[[[[1]]]]]]]]]]}", P_OK,
	 AUTH_MALFORMED},

	/* identity */
	{"no subject", C_HS, S_HS256, H_HS256, "{\"exp\":1700003600,\"role\":\"admin\"}",
	 AUTH_NO_SUBJECT},
	{"empty sub, no fallback", C_HS, S_HS256, H_HS256, "{\"sub\":\"\",\"exp\":1700003600}",
	 AUTH_NO_SUBJECT},
	{"null sub, no fallback", C_HS, S_HS256, H_HS256, "{\"sub\":null,\"exp\":1700003600}",
	 AUTH_NO_SUBJECT},
	{"sub object", C_HS, S_HS256, H_HS256, "{\"sub\":{},\"exp\":1700003600}", AUTH_MALFORMED},
	{"sub float", C_HS, S_HS256, H_HS256, "{\"sub\":1.5,\"exp\":1700003600}", AUTH_MALFORMED},
	{"sub bool", C_HS, S_HS256, H_HS256, "{\"sub\":true,\"exp\":1700003600}", AUTH_MALFORMED},
	/* Refused by our control-byte check (HS tokens no longer reach libjwt's jansson). */
	{"sub with escaped NUL", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"admin\\u0000x\",\"exp\":1700003600}", AUTH_MALFORMED},
	{"sub with escaped control byte", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"admin\\u0001x\",\"exp\":1700003600}", AUTH_MALFORMED},
	{"sub with newline", C_HS, S_HS256, H_HS256, "{\"sub\":\"a\\nb\",\"exp\":1700003600}",
	 AUTH_MALFORMED},
	{"role not a string", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u\",\"exp\":1700003600,\"role\":1}", AUTH_MALFORMED},
	{"role too long", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u\",\"exp\":1700003600,\"role\":\"abcdefghijklmnopqrstuvwxyz0123456\"}",
	 AUTH_MALFORMED},
	{"seller_id array", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u\",\"exp\":1700003600,\"seller_id\":[1]}", AUTH_MALFORMED},
	{"rooms not an array", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u\",\"exp\":1700003600,\"rooms\":\"order-*\"}", AUTH_MALFORMED},
	{"rooms with a number", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u\",\"exp\":1700003600,\"rooms\":[\"a\",7]}", AUTH_MALFORMED},
	{"rooms with empty pattern", C_HS, S_HS256, H_HS256,
	 "{\"sub\":\"u\",\"exp\":1700003600,\"rooms\":[\"\"]}", AUTH_MALFORMED},
};
/* clang-format on */

#define N_CASES ((int)(sizeof(cases) / sizeof(cases[0])))

/* Returns a malloc'd token for c. */
static char *build(const struct vcase *c)
{
	switch (c->sig) {
	case S_HS256:
		return tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), c->hdr, c->payload);
	case S_HS384:
		return tok_hmac(EVP_sha384(), SECRET, strlen(SECRET), c->hdr, c->payload);
	case S_HS512:
		return tok_hmac(EVP_sha512(), SECRET, strlen(SECRET), c->hdr, c->payload);
	case S_HS256_OTHER:
		return tok_hmac(EVP_sha256(), OTHER_SECRET, strlen(OTHER_SECRET), c->hdr,
		                c->payload);
	case S_HS256_PEM:
		return tok_hmac(EVP_sha256(), g_rsa_pem, strlen(g_rsa_pem), c->hdr, c->payload);
	case S_RS256:
		return tok_pkey(g_rsa, EVP_sha256(), c->hdr, c->payload);
	case S_ES256:
		return tok_pkey(g_ec, EVP_sha256(), c->hdr, c->payload);
	case S_ES384_P256:
		return tok_pkey(g_ec, EVP_sha384(), c->hdr, c->payload);
	case S_EMPTY:
		return finish(signing_input(c->hdr, c->payload), "", 0);
	case S_JUNK:
		return finish(signing_input(c->hdr, c->payload), "0123456789abcdef0123456789abcdef",
		              32);
	case S_RAW:
		return strdup(c->hdr);
	}
	return NULL;
}

static void assert_zeroed(const struct auth_identity *id)
{
	static const struct auth_identity zero;
	ck_assert_msg(!memcmp(id, &zero, sizeof(zero)), "identity not zeroed after a refusal");
}

START_TEST(test_table)
{
	const struct vcase *c = &cases[_i];
	struct auth *a = make_auth(c->cfg);
	char *tok = build(c);
	struct auth_identity id;
	enum auth_reason r;

	memset(&id, 0xa5, sizeof(id));
	r = auth_verify(a, tok, strlen(tok), NOW, &id);
	ck_assert_msg(r == c->want, "case \"%s\": got %s, want %s", c->name, auth_reason_name(r),
	              auth_reason_name(c->want));
	if (r == AUTH_OK) {
		ck_assert_str_eq(id.user_id, "u1");
		ck_assert_ptr_nonnull(id.claims_json);
	} else {
		assert_zeroed(&id);
	}
	auth_identity_clear(&id);
	free(tok);
	auth_free(a);
}
END_TEST

/* ---- HMAC signatures (checked by roomcast with CRYPTO_memcmp, not by libjwt) ---- */

/* Returns a malloc'd token "h.p.<sig>" where sig is the raw HMAC of h.p with md, changed by
 * edit: 0 as is, 1 last byte flipped, 2 first byte flipped, 3 truncated by one byte, 4 one byte
 * appended, 5 all zero bytes of the right length. */
static char *tok_hmac_edit(const EVP_MD *md, const char *header, const char *payload, int edit)
{
	char *input = signing_input(header, payload);
	unsigned char mac[EVP_MAX_MD_SIZE + 1];
	unsigned int maclen = 0;

	ck_assert_ptr_nonnull(HMAC(md, SECRET, (int)strlen(SECRET), (const unsigned char *)input,
	                           strlen(input), mac, &maclen));
	switch (edit) {
	case 1:
		mac[maclen - 1] ^= 0x01;
		break;
	case 2:
		mac[0] ^= 0x80;
		break;
	case 3:
		maclen--;
		break;
	case 4:
		mac[maclen++] = 0;
		break;
	case 5:
		memset(mac, 0, maclen);
		break;
	}
	return finish(input, mac, maclen);
}

static enum auth_reason verify_hs(const char *tok)
{
	struct auth *a = make_auth(C_HS);
	struct auth_identity id;
	enum auth_reason r = auth_verify(a, tok, strlen(tok), NOW, &id);

	if (r != AUTH_OK)
		assert_zeroed(&id);
	auth_identity_clear(&id);
	auth_free(a);
	return r;
}

START_TEST(test_hmac_wrong_signatures)
{
	static const struct {
		const char *hdr;
		const EVP_MD *(*md)(void);
	} algs[] = {{H_HS256, EVP_sha256}, {H_HS384, EVP_sha384}, {H_HS512, EVP_sha512}};

	for (size_t i = 0; i < sizeof(algs) / sizeof(algs[0]); i++) {
		for (int edit = 0; edit <= 5; edit++) {
			char *tok = tok_hmac_edit(algs[i].md(), algs[i].hdr, P_OK, edit);
			enum auth_reason want = edit == 0 ? AUTH_OK : AUTH_BAD_SIGNATURE;
			enum auth_reason r = verify_hs(tok);
			ck_assert_msg(r == want, "%s edit %d: got %s", algs[i].hdr, edit,
			              auth_reason_name(r));
			free(tok);
		}
	}
}
END_TEST

/* The MAC is computed with the algorithm the header names, pinned to the allowed set: a valid
 * HS512 MAC under an HS256 header is as wrong as any other 64 bytes, and the reverse too. */
START_TEST(test_hmac_alg_mismatch_and_none)
{
	char *tok = tok_hmac(EVP_sha512(), SECRET, strlen(SECRET), H_HS256, P_OK);
	ck_assert_int_eq(verify_hs(tok), AUTH_BAD_SIGNATURE);
	free(tok);
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS512, P_OK);
	ck_assert_int_eq(verify_hs(tok), AUTH_BAD_SIGNATURE);
	free(tok);
	/* HS384 is valid, but not allowed by C_HS256_ONLY. */
	{
		struct auth *a = make_auth(C_HS256_ONLY);
		struct auth_identity id;
		tok = tok_hmac(EVP_sha384(), SECRET, strlen(SECRET), H_HS384, P_OK);
		ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW, &id), AUTH_ALG_REFUSED);
		free(tok);
		auth_free(a);
	}
	/* none with the correct HS256 MAC attached, and with none. */
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), "{\"alg\":\"none\"}", P_OK);
	ck_assert_int_eq(verify_hs(tok), AUTH_ALG_REFUSED);
	free(tok);
	tok = finish(signing_input("{\"alg\":\"none\"}", P_OK), "", 0);
	ck_assert_int_eq(verify_hs(tok), AUTH_ALG_REFUSED);
	free(tok);
	/* The HMAC key is never used for an RS256 header, even with a correct HMAC. */
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_RS256, P_OK);
	ck_assert_int_eq(verify_hs(tok), AUTH_ALG_REFUSED);
	free(tok);
}
END_TEST

/* The signature covers exactly header.payload: a payload changed after signing fails. */
START_TEST(test_hmac_covers_payload)
{
	char *good = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256, P_OK);
	char *other = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256,
	                       "{\"sub\":\"admin\",\"exp\":1700003600}");
	char *dot_g = strrchr(good, '.'), *dot_o = strrchr(other, '.');
	char *mixed = malloc(strlen(other) + strlen(good));

	ck_assert_ptr_nonnull(mixed);
	/* other's header.payload with good's signature. */
	sprintf(mixed, "%.*s%s", (int)(dot_o - other), other, dot_g);
	ck_assert_int_eq(verify_hs(mixed), AUTH_BAD_SIGNATURE);
	free(mixed);
	free(good);
	free(other);
}
END_TEST

/* now at the int64 edges: now + leeway and now - leeway saturate instead of wrapping. */
START_TEST(test_time_claims_at_int64_edges)
{
	struct auth *a = make_auth(C_HS);
	struct auth_identity id;
	char *tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256,
	                     "{\"sub\":\"u1\",\"exp\":9223372036854775807,"
	                     "\"nbf\":9223372036854775000,\"iat\":1}");

	/* At the far end of time nbf has passed: with a wrapping now + leeway it had not. */
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), (time_t)LLONG_MAX, &id), AUTH_OK);
	auth_identity_clear(&id);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), (time_t)LLONG_MAX - 1000, &id),
	                 AUTH_NOT_YET_VALID);
	free(tok);
	/* At the far negative end an ordinary token is not yet valid, not expired by a wrap. */
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256,
	               "{\"sub\":\"u1\",\"exp\":1700003600,\"nbf\":1}");
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), (time_t)LLONG_MIN, &id),
	                 AUTH_NOT_YET_VALID);
	free(tok);
	auth_free(a);
}
END_TEST

/* ---- identity extraction ---- */

/* Verifies an HS256 token with payload under C_HS and expects AUTH_OK. */
static void verify_ok(const char *payload, struct auth_identity *id)
{
	struct auth *a = make_auth(C_HS);
	char *tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256, payload);
	enum auth_reason r = auth_verify(a, tok, strlen(tok), NOW, id);

	ck_assert_msg(r == AUTH_OK, "payload %s: %s", payload, auth_reason_name(r));
	free(tok);
	auth_free(a);
}

START_TEST(test_subject_precedence)
{
	struct auth_identity id;

	verify_ok("{\"sub\":\"s\",\"user_id\":\"u\",\"id\":\"i\",\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "s");
	auth_identity_clear(&id);
	verify_ok("{\"user_id\":\"u\",\"id\":\"i\",\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "u");
	auth_identity_clear(&id);
	verify_ok("{\"id\":\"i\",\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "i");
	auth_identity_clear(&id);
	/* An empty sub does not hide the next claim. */
	verify_ok("{\"sub\":\"\",\"user_id\":7,\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "7");
	auth_identity_clear(&id);
}
END_TEST

START_TEST(test_integer_subject)
{
	struct auth_identity id;

	verify_ok("{\"sub\":42,\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "42");
	auth_identity_clear(&id);
	verify_ok("{\"id\":-3,\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "-3");
	auth_identity_clear(&id);
	verify_ok("{\"sub\":9223372036854775807,\"exp\":1700003600}", &id);
	ck_assert_str_eq(id.user_id, "9223372036854775807");
	auth_identity_clear(&id);
}
END_TEST

START_TEST(test_subject_length)
{
	char payload[512], sub[AUTH_ID_MAX + 1];
	struct auth *a = make_auth(C_HS);
	struct auth_identity id;
	char *tok;

	memset(sub, 'x', sizeof(sub));
	sub[AUTH_ID_MAX - 1] = '\0';
	snprintf(payload, sizeof(payload), "{\"sub\":\"%s\",\"exp\":1700003600}", sub);
	verify_ok(payload, &id);
	ck_assert_uint_eq(strlen(id.user_id), AUTH_ID_MAX - 1);
	auth_identity_clear(&id);

	sub[AUTH_ID_MAX - 1] = 'x';
	sub[AUTH_ID_MAX] = '\0';
	snprintf(payload, sizeof(payload), "{\"sub\":\"%s\",\"exp\":1700003600}", sub);
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256, payload);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW, &id), AUTH_MALFORMED);
	assert_zeroed(&id);
	free(tok);
	auth_free(a);
}
END_TEST

START_TEST(test_role_and_tenants)
{
	struct auth_identity id;

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"role\":\"SeLLer\",\"reference_id\":9}", &id);
	ck_assert_str_eq(auth_role(&id), "seller");
	ck_assert_str_eq(auth_seller_id(&id), "9");
	ck_assert_str_eq(auth_client_id(&id), "");
	ck_assert(!auth_is_admin(&id));
	auth_identity_clear(&id);

	/* reference_id means something else for non-sellers. */
	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"role\":\"client\",\"reference_id\":9,"
	          "\"id_client\":\"c5\"}",
	          &id);
	ck_assert_str_eq(auth_role(&id), "client");
	ck_assert_str_eq(auth_seller_id(&id), "");
	ck_assert_str_eq(auth_client_id(&id), "c5");
	auth_identity_clear(&id);

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"role\":\"seller\",\"id_seller\":\"s2\","
	          "\"reference_id\":9}",
	          &id);
	ck_assert_str_eq(auth_seller_id(&id), "s2");
	auth_identity_clear(&id);

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"seller_id\":1,\"id_seller\":2,"
	          "\"client_id\":3,\"id_client\":4}",
	          &id);
	ck_assert_str_eq(auth_role(&id), "");
	ck_assert_str_eq(auth_seller_id(&id), "1");
	ck_assert_str_eq(auth_client_id(&id), "3");
	auth_identity_clear(&id);

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"role\":\"ADMIN\"}", &id);
	ck_assert(auth_is_admin(&id));
	ck_assert(!auth_is_service(&id));
	auth_identity_clear(&id);

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"role\":\"Service\"}", &id);
	ck_assert(auth_is_service(&id));
	ck_assert(!auth_is_admin(&id));
	auth_identity_clear(&id);
}
END_TEST

START_TEST(test_rooms_times_and_claims)
{
	struct auth_identity id, copy;
	struct json_object *claims;

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"iat\":1699999000,\"nbf\":1699999500,"
	          "\"rooms\":[\"order-*\",\"chat-9\"],\"url\":\"a/b\"}",
	          &id);
	ck_assert_uint_eq(auth_room_count(&id), 2);
	ck_assert_str_eq(id.rooms[0], "order-*");
	ck_assert_str_eq(id.rooms[1], "chat-9");
	ck_assert_int_eq(id.exp, 1700003600);
	/* iat and nbf are checked, not kept: only the payload (for SQL policy) still has them. */
	claims = json_tokener_parse(id.claims_json);
	ck_assert_ptr_nonnull(claims);
	ck_assert_int_eq(json_object_object_length(claims), 6);
	ck_assert_int_eq(json_object_get_int64(json_object_object_get(claims, "iat")), 1699999000);
	ck_assert_int_eq(json_object_get_int64(json_object_object_get(claims, "nbf")), 1699999500);
	json_object_put(claims);
	ck_assert_ptr_null(strstr(id.claims_json, "\\/"));

	ck_assert_int_eq(auth_identity_copy(&copy, &id), 0);
	auth_identity_clear(&id);
	ck_assert_uint_eq(auth_room_count(&copy), 2);
	ck_assert_ptr_null(copy.rooms[2]);
	ck_assert_str_eq(copy.rooms[1], "chat-9");
	ck_assert_str_eq(copy.user_id, "u");
	ck_assert_ptr_nonnull(copy.claims_json);
	auth_identity_clear(&copy);
	ck_assert_ptr_null(copy.rooms);
	ck_assert_uint_eq(auth_room_count(&copy), 0);

	verify_ok("{\"sub\":\"u\",\"exp\":1700003600,\"rooms\":[]}", &id);
	ck_assert_uint_eq(auth_room_count(&id), 0);
	ck_assert_int_eq(id.exp, 1700003600);
	auth_identity_clear(&id);
}
END_TEST

/* ---- sizes, config, mint ---- */

START_TEST(test_oversized_token)
{
	struct auth *a = make_auth(C_HS);
	size_t n = 9000;
	char *payload = malloc(n + 64), *tok;
	struct auth_identity id;

	snprintf(payload, n + 64, "{\"sub\":\"u\",\"exp\":1700003600,\"pad\":\"%0*d\"}", (int)n, 0);
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256, payload);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW, &id), AUTH_MALFORMED);
	free(tok);

	/* The length given is authoritative: bytes after it are not read, and a prefix of a valid
	 * token is not that token. */
	tok = tok_hmac(EVP_sha256(), SECRET, strlen(SECRET), H_HS256, P_OK);
	n = strlen(tok);
	tok = realloc(tok, n + 8);
	memcpy(tok + n, ".junk\x01", 7);
	ck_assert_int_eq(auth_verify(a, tok, n, NOW, &id), AUTH_OK);
	auth_identity_clear(&id);
	ck_assert_int_ne(auth_verify(a, tok, n - 1, NOW, &id), AUTH_OK);
	ck_assert_int_ne(auth_verify(a, tok, n - 4, NOW, &id), AUTH_OK);
	ck_assert_int_eq(auth_verify(a, tok, n + 6, NOW, &id), AUTH_MALFORMED);
	free(tok);
	free(payload);
	auth_free(a);
}
END_TEST

START_TEST(test_new_refuses)
{
	char err[256];
	struct auth_config c = {.leeway_s = 30};

	c.algorithms = HS_ALL;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));
	ck_assert(err[0] != '\0');

	/* HS* with an empty secret and no public key. */
	c.secret = (const unsigned char *)"";
	c.secret_len = 0;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));

	/* RS* without a PEM, even with a secret. */
	c.secret = (const unsigned char *)SECRET;
	c.secret_len = strlen(SECRET);
	c.algorithms = AUTH_ALG_RS256;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));

	/* HS* with only a PEM. */
	c.secret = NULL;
	c.secret_len = 0;
	c.public_key_pem = g_rsa_pem;
	c.algorithms = HS_ALL;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));

	/* A P-256 key cannot serve ES384. */
	c.public_key_pem = g_ec_pem;
	c.algorithms = AUTH_ALG_ES384 | AUTH_ALG_RS256;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));

	/* Unreadable PEM. */
	c.public_key_pem = "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n";
	c.algorithms = RS_ALL;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));
	ck_assert(strstr(err, "PEM") != NULL);

	/* Empty or unknown algorithm bits, negative leeway. */
	c.public_key_pem = g_rsa_pem;
	c.algorithms = 0;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));
	c.algorithms = 1u << 20;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));
	c.algorithms = RS_ALL;
	c.leeway_s = -1;
	ck_assert_ptr_null(auth_new(&c, err, sizeof(err)));
	ck_assert_ptr_null(auth_new(NULL, err, sizeof(err)));
	ck_assert_ptr_null(auth_new(NULL, NULL, 0));
}
END_TEST

START_TEST(test_new_copies_config)
{
	char secret[] = "0123456789abcdef0123456789abcdef";
	char issuer[] = "https://auth.example";
	char *pem = strdup(g_rsa_pem);
	struct auth_config c = {.secret = (const unsigned char *)secret,
	                        .secret_len = strlen(secret),
	                        .public_key_pem = pem,
	                        .algorithms = HS_ALL | RS_ALL,
	                        .issuer = issuer,
	                        .audience = "",
	                        .leeway_s = 30};
	char err[256];
	struct auth *a = auth_new(&c, err, sizeof(err));
	struct auth_identity id;
	char *hs, *rs;
	const char *payload = "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://auth.example\"}";

	ck_assert_msg(a != NULL, "%s", err);
	hs = tok_hmac(EVP_sha256(), secret, strlen(secret), H_HS256, payload);
	rs = tok_pkey(g_rsa, EVP_sha256(), H_RS256, payload);
	memset(secret, 'z', strlen(secret));
	memset(issuer, 'z', strlen(issuer));
	memset(pem, 'z', strlen(pem));
	free(pem);
	/* An empty audience means "not checked". */
	ck_assert_int_eq(auth_verify(a, hs, strlen(hs), NOW, &id), AUTH_OK);
	auth_identity_clear(&id);
	ck_assert_int_eq(auth_verify(a, rs, strlen(rs), NOW, &id), AUTH_OK);
	auth_identity_clear(&id);
	free(hs);
	free(rs);
	auth_free(a);
	auth_free(NULL);
}
END_TEST

START_TEST(test_mint_round_trip)
{
	struct auth *a = make_auth(C_ISS_AUD);
	struct auth_mint m = {.sub = "42",
	                      .role = "Seller",
	                      .seller_id = "7",
	                      .client_id = "c\"1",
	                      .rooms = " order-* , chat-9,,",
	                      .issuer = ISSUER,
	                      .audience = AUDIENCE,
	                      .ttl_s = 3600,
	                      .now = NOW};
	struct auth_identity id;
	char *tok = auth_mint_token(a, &m);

	ck_assert_ptr_nonnull(tok);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW + 100, &id), AUTH_OK);
	ck_assert_str_eq(id.user_id, "42");
	ck_assert_str_eq(auth_role(&id), "seller");
	ck_assert_str_eq(auth_seller_id(&id), "7");
	ck_assert_str_eq(auth_client_id(&id), "c\"1");
	ck_assert_uint_eq(auth_room_count(&id), 2);
	ck_assert_str_eq(id.rooms[0], "order-*");
	ck_assert_str_eq(id.rooms[1], "chat-9");
	ck_assert_int_eq(id.exp, NOW + 3600);
	auth_identity_clear(&id);
	/* The minted iat is now: a verifier a leeway and a second earlier refuses it. */
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW - LEEWAY - 1, &id),
	                 AUTH_ISSUED_FUTURE);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW + 3600 + LEEWAY + 1, &id),
	                 AUTH_EXPIRED);
	free(tok);

	/* Without issuer/audience the token fails a verifier that requires them. */
	m.issuer = NULL;
	m.audience = NULL;
	m.rooms = NULL;
	m.role = NULL;
	tok = auth_mint_token(a, &m);
	ck_assert_ptr_nonnull(tok);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW, &id), AUTH_BAD_ISSUER);
	free(tok);

	m.ttl_s = 0;
	ck_assert_ptr_null(auth_mint_token(a, &m));
	m.ttl_s = 60;
	m.sub = NULL;
	ck_assert_ptr_null(auth_mint_token(a, &m));
	auth_free(a);

	/* No secret, no token. */
	a = make_auth(C_RSA);
	m.sub = "42";
	ck_assert_ptr_null(auth_mint_token(a, &m));
	auth_free(a);
}
END_TEST

START_TEST(test_mint_alg_not_allowed)
{
	struct auth_config c = {.secret = (const unsigned char *)SECRET,
	                        .secret_len = strlen(SECRET),
	                        .algorithms = AUTH_ALG_HS384,
	                        .leeway_s = LEEWAY};
	struct auth_mint m = {.sub = "42", .ttl_s = 60, .now = NOW};
	char err[256];
	struct auth *a = auth_new(&c, err, sizeof(err));
	struct auth_identity id;
	char *tok;

	ck_assert_msg(a != NULL, "%s", err);
	/* Minting still works (with a warning), but this verifier refuses its own HS256 token. */
	tok = auth_mint_token(a, &m);
	ck_assert_ptr_nonnull(tok);
	ck_assert_int_eq(auth_verify(a, tok, strlen(tok), NOW, &id), AUTH_ALG_REFUSED);
	free(tok);
	auth_free(a);
}
END_TEST

START_TEST(test_algorithms_parse)
{
	unsigned m = 12345;

	ck_assert_int_eq(auth_algorithms_parse("HS256,HS384,HS512", &m), 0);
	ck_assert_uint_eq(m, HS_ALL);
	ck_assert_int_eq(auth_algorithms_parse(" HS256 ,\tRS256 ", &m), 0);
	ck_assert_uint_eq(m, AUTH_ALG_HS256 | AUTH_ALG_RS256);
	ck_assert_int_eq(auth_algorithms_parse("ES512", &m), 0);
	ck_assert_uint_eq(m, AUTH_ALG_ES512);
	ck_assert_int_eq(auth_algorithms_parse("rs384,RS384", &m), 0);
	ck_assert_uint_eq(m, AUTH_ALG_RS384);
	ck_assert_int_eq(auth_algorithms_parse("HS256,RS256,ES256,HS384,RS384,ES384,HS512,RS512,"
	                                       "ES512",
	                                       &m),
	                 0);
	ck_assert_uint_eq(m, HS_ALL | RS_ALL | ES_ALL);

	m = 777;
	ck_assert_int_eq(auth_algorithms_parse("none", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("HS256,none", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("  ", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse(",", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("HS256,,HS384", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("HS256,", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("HS2560", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("HS 256", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse("PS256", &m), -1);
	ck_assert_int_eq(auth_algorithms_parse(NULL, &m), -1);
	ck_assert_uint_eq(m, 777);
}
END_TEST

START_TEST(test_reason_names)
{
	static const char *const want[AUTH_REASON_COUNT] = {
	    "ok",          "malformed",    "alg_refused",   "bad_signature",
	    "missing_exp", "expired",      "not_yet_valid", "issued_in_future",
	    "bad_issuer",  "bad_audience", "no_subject",
	};
	for (int i = 0; i < AUTH_REASON_COUNT; i++)
		ck_assert_str_eq(auth_reason_name((enum auth_reason)i), want[i]);
	ck_assert_str_eq(auth_reason_name(AUTH_REASON_COUNT), "unknown");
}
END_TEST

static Suite *auth_suite(void)
{
	Suite *s = suite_create("auth");
	TCase *tc = tcase_create("verify");

	tcase_add_loop_test(tc, test_table, 0, N_CASES);
	tcase_add_test(tc, test_subject_precedence);
	tcase_add_test(tc, test_integer_subject);
	tcase_add_test(tc, test_subject_length);
	tcase_add_test(tc, test_role_and_tenants);
	tcase_add_test(tc, test_rooms_times_and_claims);
	tcase_add_test(tc, test_oversized_token);
	tcase_add_test(tc, test_hmac_wrong_signatures);
	tcase_add_test(tc, test_hmac_alg_mismatch_and_none);
	tcase_add_test(tc, test_hmac_covers_payload);
	tcase_add_test(tc, test_time_claims_at_int64_edges);
	suite_add_tcase(s, tc);

	tc = tcase_create("config");
	tcase_add_test(tc, test_new_refuses);
	tcase_add_test(tc, test_new_copies_config);
	tcase_add_test(tc, test_mint_round_trip);
	tcase_add_test(tc, test_mint_alg_not_allowed);
	tcase_add_test(tc, test_algorithms_parse);
	tcase_add_test(tc, test_reason_names);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr;
	int failed;

	g_rsa = EVP_RSA_gen(2048);
	g_ec = EVP_EC_gen("P-256");
	if (!g_rsa || !g_ec) {
		fprintf(stderr, "test_auth: key generation failed\n");
		return 1;
	}
	g_rsa_pem = pem_of(g_rsa);
	g_ec_pem = pem_of(g_ec);
	if (!g_rsa_pem || !g_ec_pem) {
		fprintf(stderr, "test_auth: PEM export failed\n");
		return 1;
	}

	sr = srunner_create(auth_suite());
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);

	EVP_PKEY_free(g_rsa);
	EVP_PKEY_free(g_ec);
	free(g_rsa_pem);
	free(g_ec_pem);
	return failed ? 1 : 0;
}
