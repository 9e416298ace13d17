/* Shared helpers for the libFuzzer harnesses in tests/fuzz: the entry-point prototypes, a
 * check macro that turns a broken invariant into a crash libFuzzer records, and the JSON and
 * UTF-8 oracles several harnesses use on what the server would send. */
#ifndef ROOMCAST_FUZZ_H
#define ROOMCAST_FUZZ_H

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* A failed invariant must crash, not just print: libFuzzer only saves inputs that crash. */
#define FUZZ_CHECK(cond, ...)                                                                      \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: invariant failed: %s: ", __FILE__, __LINE__,       \
			        #cond);                                                            \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* Strict UTF-8, written straight from the byte ranges of the RFC 3629 grammar (no overlong
 * forms, no surrogates, nothing above U+10FFFF): what lws and browsers demand of text frames. */
static inline bool fuzz_utf8_valid(const unsigned char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		unsigned char c = s[i];
		unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */
		size_t tails;

		if (c <= 0x7f) {
			i++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			tails = 1;
		} else if (c >= 0xe0 && c <= 0xef) {
			tails = 2;
			if (c == 0xe0)
				lo = 0xa0;
			else if (c == 0xed)
				hi = 0x9f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			tails = 3;
			if (c == 0xf0)
				lo = 0x90;
			else if (c == 0xf4)
				hi = 0x8f;
		} else {
			return false;
		}
		if (n - i <= tails || s[i + 1] < lo || s[i + 1] > hi)
			return false;
		for (size_t j = 2; j <= tails; j++)
			if (s[i + j] < 0x80 || s[i + j] > 0xbf)
				return false;
		i += tails + 1;
	}
	return true;
}

/* Parses s[0..n) as exactly one JSON value the way a strict peer would (json-c strict mode,
 * nothing but whitespace after it, nesting below depth); with utf8, invalid UTF-8 also fails.
 * On success *out is a new reference (NULL for JSON null, hence the separate result). */
static inline bool fuzz_json_parse_depth(const char *s, size_t n, bool utf8, int depth,
                                         json_object **out)
{
	json_tokener *tok = json_tokener_new_ex(depth);
	json_object *o;
	bool ok;

	if (!tok || n > INT32_MAX)
		abort();
	/* json-c's own UTF-8 check lets overlong forms and surrogates through, hence ours too. */
	if (utf8 && !fuzz_utf8_valid((const unsigned char *)s, n)) {
		json_tokener_free(tok);
		*out = NULL;
		return false;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | (utf8 ? JSON_TOKENER_VALIDATE_UTF8 : 0));
	o = json_tokener_parse_ex(tok, s, (int)n);
	if (json_tokener_get_error(tok) == json_tokener_continue) {
		/* A bare number or literal ends only at a delimiter: a NUL says "no more input". */
		o = json_tokener_parse_ex(tok, "", 1);
		ok = json_tokener_get_error(tok) == json_tokener_success;
	} else {
		size_t end = json_tokener_get_parse_end(tok);
		ok = json_tokener_get_error(tok) == json_tokener_success;
		/* JSON allows whitespace after the value, nothing else. */
		for (; ok && end < n; end++)
			ok = strchr(" \t\r\n", s[end]) && s[end];
	}
	json_tokener_free(tok);
	if (!ok) {
		json_object_put(o);
		o = NULL;
	}
	*out = o;
	return ok;
}

static inline bool fuzz_json_parse(const char *s, size_t n, bool utf8, json_object **out)
{
	return fuzz_json_parse_depth(s, n, utf8, JSON_TOKENER_DEFAULT_DEPTH, out);
}

/* Like fuzz_json_parse_depth, for values that must be a JSON object; NULL otherwise. */
static inline json_object *fuzz_json_object_depth(const char *s, size_t n, bool utf8, int depth)
{
	json_object *o;

	if (!fuzz_json_parse_depth(s, n, utf8, depth, &o))
		return NULL;
	if (!json_object_is_type(o, json_type_object)) {
		json_object_put(o);
		return NULL;
	}
	return o;
}

static inline json_object *fuzz_json_object(const char *s, size_t n, bool utf8)
{
	return fuzz_json_object_depth(s, n, utf8, JSON_TOKENER_DEFAULT_DEPTH);
}

/* RFC 8259 JSON text, i.e. what JSON.parse in a browser accepts, checked by recursive descent
 * independently of json-c, whose strict mode still takes NaN, Infinity and raw control bytes in
 * strings (and whose serializer writes NaN and Infinity back out verbatim). */
struct fuzz_rfc {
	const unsigned char *s;
	size_t n, i;
	int depth;
};

static inline void fuzz_rfc_ws(struct fuzz_rfc *p)
{
	while (p->i < p->n && strchr(" \t\r\n", p->s[p->i]) && p->s[p->i])
		p->i++;
}

static inline bool fuzz_rfc_digits(struct fuzz_rfc *p)
{
	size_t start = p->i;

	while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9')
		p->i++;
	return p->i > start;
}

static inline bool fuzz_rfc_string(struct fuzz_rfc *p)
{
	if (p->i >= p->n || p->s[p->i] != '"')
		return false;
	p->i++;
	while (p->i < p->n) {
		unsigned char c = p->s[p->i++];

		if (c == '"')
			return true;
		if (c < 0x20)
			return false;
		if (c != '\\')
			continue;
		if (p->i >= p->n)
			return false;
		c = p->s[p->i++];
		if (c == 'u') {
			for (int k = 0; k < 4; k++, p->i++)
				if (p->i >= p->n || !strchr("0123456789abcdefABCDEF", p->s[p->i]) ||
				    !p->s[p->i])
					return false;
		} else if (!c || !strchr("\"\\/bfnrt", c)) {
			return false;
		}
	}
	return false;
}

static inline bool fuzz_rfc_literal(struct fuzz_rfc *p, const char *word)
{
	size_t n = strlen(word);

	if (p->n - p->i < n || memcmp(p->s + p->i, word, n))
		return false;
	p->i += n;
	return true;
}

static inline bool fuzz_rfc_number(struct fuzz_rfc *p)
{
	if (p->i < p->n && p->s[p->i] == '-')
		p->i++;
	if (p->i < p->n && p->s[p->i] == '0')
		p->i++;
	else if (!fuzz_rfc_digits(p))
		return false;
	if (p->i < p->n && p->s[p->i] == '.') {
		p->i++;
		if (!fuzz_rfc_digits(p))
			return false;
	}
	if (p->i < p->n && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
		p->i++;
		if (p->i < p->n && (p->s[p->i] == '+' || p->s[p->i] == '-'))
			p->i++;
		if (!fuzz_rfc_digits(p))
			return false;
	}
	return true;
}

static inline bool fuzz_rfc_value(struct fuzz_rfc *p)
{
	bool ok = false;

	fuzz_rfc_ws(p);
	if (p->i >= p->n || ++p->depth > 256)
		return false;
	switch (p->s[p->i]) {
	case '{':
	case '[': {
		unsigned char close = p->s[p->i] == '{' ? '}' : ']';

		p->i++;
		fuzz_rfc_ws(p);
		if (p->i < p->n && p->s[p->i] == close) {
			p->i++;
			ok = true;
			break;
		}
		for (;;) {
			if (close == '}') {
				fuzz_rfc_ws(p);
				if (!fuzz_rfc_string(p))
					break;
				fuzz_rfc_ws(p);
				if (p->i >= p->n || p->s[p->i++] != ':')
					break;
			}
			if (!fuzz_rfc_value(p))
				break;
			fuzz_rfc_ws(p);
			if (p->i < p->n && p->s[p->i] == ',') {
				p->i++;
				continue;
			}
			ok = p->i < p->n && p->s[p->i++] == close;
			break;
		}
		break;
	}
	case '"':
		ok = fuzz_rfc_string(p);
		break;
	case 't':
		ok = fuzz_rfc_literal(p, "true");
		break;
	case 'f':
		ok = fuzz_rfc_literal(p, "false");
		break;
	case 'n':
		ok = fuzz_rfc_literal(p, "null");
		break;
	default:
		ok = fuzz_rfc_number(p);
	}
	p->depth--;
	return ok;
}

static inline bool fuzz_json_rfc8259(const char *s, size_t n)
{
	struct fuzz_rfc p = {(const unsigned char *)s, n, 0, 0};
	bool ok = fuzz_rfc_value(&p);

	fuzz_rfc_ws(&p);
	return ok && p.i == n;
}

/* The string member key of object o as (pointer, length), or NULL when absent or not a string. */
static inline const char *fuzz_json_str(json_object *o, const char *key, size_t *len)
{
	json_object *v;

	if (!o || !json_object_is_type(o, json_type_object) ||
	    !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
		return NULL;
	*len = (size_t)json_object_get_string_len(v);
	return json_object_get_string(v);
}

#endif
