/* The in-place strict JSON scanner: validation with a nesting limit, object members, string
 * unescaping and compaction over the caller's bytes, without allocating (the notify door's body
 * parser, where building a json-c tree cost more than the rest of the request). */
#include "jscan.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

static bool is_ws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_ws(const char *s, size_t n, size_t i)
{
	while (i < n && is_ws((unsigned char)s[i]))
		i++;
	return i;
}

static int hex(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The 4 hex digits at s as a code unit, or -1. */
static long hex4(const char *s)
{
	long v = 0;

	for (int k = 0; k < 4; k++) {
		int h = hex((unsigned char)s[k]);
		if (h < 0)
			return -1;
		v = v << 4 | h;
	}
	return v;
}

/* A string starting at s[*i] (the opening quote); *i ends past the closing quote. */
static bool scan_string(const char *s, size_t n, size_t *i)
{
	size_t j = *i + 1;

	while (j < n) {
		unsigned char c = (unsigned char)s[j];

		if (c == '"') {
			*i = j + 1;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c != '\\') {
			j++;
			continue;
		}
		if (j + 1 >= n)
			return false;
		switch (s[j + 1]) {
		case '"':
		case '\\':
		case '/':
		case 'b':
		case 'f':
		case 'n':
		case 'r':
		case 't':
			j += 2;
			break;
		case 'u':
			if (n - j < 6 || hex4(s + j + 2) < 0)
				return false;
			j += 6;
			break;
		default:
			return false;
		}
	}
	return false;
}

static size_t digits(const char *s, size_t n, size_t i)
{
	while (i < n && s[i] >= '0' && s[i] <= '9')
		i++;
	return i;
}

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? from s[*i]. */
static bool scan_number(const char *s, size_t n, size_t *i)
{
	size_t j = *i, k;

	if (j < n && s[j] == '-')
		j++;
	if (j < n && s[j] == '0')
		j++;
	else if ((k = digits(s, n, j)) == j)
		return false;
	else
		j = k;
	if (j < n && s[j] == '.') {
		if ((k = digits(s, n, j + 1)) == j + 1)
			return false;
		j = k;
	}
	if (j < n && (s[j] == 'e' || s[j] == 'E')) {
		j++;
		if (j < n && (s[j] == '+' || s[j] == '-'))
			j++;
		if ((k = digits(s, n, j)) == j)
			return false;
		j = k;
	}
	*i = j;
	return true;
}

static bool scan_word(const char *s, size_t n, size_t *i, const char *w, size_t wl)
{
	if (n - *i < wl || memcmp(s + *i, w, wl))
		return false;
	*i += wl;
	return true;
}

static enum jscan_type type_at(unsigned char c)
{
	switch (c) {
	case '{':
		return JSCAN_OBJECT;
	case '[':
		return JSCAN_ARRAY;
	case '"':
		return JSCAN_STRING;
	case 't':
		return JSCAN_TRUE;
	case 'f':
		return JSCAN_FALSE;
	case 'n':
		return JSCAN_NULL;
	default:
		return JSCAN_NUMBER;
	}
}

/* Iterative, so the nesting limit is the only bound on depth and the C stack stays flat. */
enum jscan_result jscan_parse(const char *s, size_t n, int max_depth, struct jscan_val *top)
{
	char open[JSCAN_DEPTH_MAX]; /* '{' or '[' for each open container */
	int depth = 0;              /* containers open around the next value */
	size_t i = skip_ws(s, n, 0), start = i;

	if (max_depth > JSCAN_DEPTH_MAX)
		max_depth = JSCAN_DEPTH_MAX;
value:
	if (i >= n)
		return JSCAN_MALFORMED;
	/* This value sits at depth + 1. */
	if (depth >= max_depth)
		return JSCAN_TOO_DEEP;
	switch (s[i]) {
	case '{':
	case '[':
		open[depth++] = s[i];
		i = skip_ws(s, n, i + 1);
		if (i < n && s[i] == (open[depth - 1] == '{' ? '}' : ']')) {
			depth--;
			i++;
			goto after;
		}
		if (open[depth - 1] == '{')
			goto key;
		goto value;
	case '"':
		if (!scan_string(s, n, &i))
			return JSCAN_MALFORMED;
		goto after;
	case 't':
		if (!scan_word(s, n, &i, "true", 4))
			return JSCAN_MALFORMED;
		goto after;
	case 'f':
		if (!scan_word(s, n, &i, "false", 5))
			return JSCAN_MALFORMED;
		goto after;
	case 'n':
		if (!scan_word(s, n, &i, "null", 4))
			return JSCAN_MALFORMED;
		goto after;
	default:
		if (!scan_number(s, n, &i))
			return JSCAN_MALFORMED;
		goto after;
	}
key:
	if (i >= n || s[i] != '"' || !scan_string(s, n, &i))
		return JSCAN_MALFORMED;
	i = skip_ws(s, n, i);
	if (i >= n || s[i] != ':')
		return JSCAN_MALFORMED;
	i = skip_ws(s, n, i + 1);
	goto value;
after:
	if (!depth) {
		/* A number or literal ends where its grammar does: "1x" is 1 then trailing bytes.
		 */
		top->type = type_at((unsigned char)s[start]);
		top->p = s + start;
		top->len = i - start;
		return skip_ws(s, n, i) < n ? JSCAN_TRAILING : JSCAN_OK;
	}
	i = skip_ws(s, n, i);
	if (i >= n)
		return JSCAN_MALFORMED;
	if (s[i] == ',') {
		i = skip_ws(s, n, i + 1);
		if (open[depth - 1] == '{')
			goto key;
		goto value;
	}
	if (s[i] == (open[depth - 1] == '{' ? '}' : ']')) {
		depth--;
		i++;
		goto after;
	}
	return JSCAN_MALFORMED;
}

/* The end of the validated string whose opening quote is at p[i]. */
static size_t string_end(const char *p, size_t n, size_t i)
{
	for (i++; i < n && p[i] != '"'; i++)
		if (p[i] == '\\')
			i++; /* the escaped byte cannot be the closing quote */
	return i < n ? i + 1 : n;
}

/* The end of the validated value starting at p[i]. */
static size_t value_end(const char *p, size_t n, size_t i)
{
	int depth = 0;

	if (i >= n)
		return n;
	if (p[i] == '"')
		return string_end(p, n, i);
	if (p[i] != '{' && p[i] != '[') {
		while (i < n && !is_ws((unsigned char)p[i]) && p[i] != ',' && p[i] != '}' &&
		       p[i] != ']')
			i++;
		return i;
	}
	while (i < n) {
		switch (p[i]) {
		case '"':
			i = string_end(p, n, i);
			continue;
		case '{':
		case '[':
			depth++;
			break;
		case '}':
		case ']':
			if (--depth == 0)
				return i + 1;
			break;
		default:
			break;
		}
		i++;
	}
	return n;
}

void jscan_members(struct jscan_iter *it, const struct jscan_val *obj)
{
	it->p = obj->p;
	it->n = obj->type == JSCAN_OBJECT ? obj->len : 0;
	it->i = 1; /* past the '{' */
}

bool jscan_next_member(struct jscan_iter *it, struct jscan_val *key, struct jscan_val *val)
{
	const char *p = it->p;
	size_t n = it->n, i = skip_ws(p, n, it->i), e;

	if (i < n && p[i] == ',')
		i = skip_ws(p, n, i + 1);
	if (i >= n || p[i] != '"')
		return false; /* the closing '}' (or not an object) */
	e = string_end(p, n, i);
	key->type = JSCAN_STRING;
	key->p = p + i;
	key->len = e - i;
	i = skip_ws(p, n, e);
	if (i >= n || p[i] != ':')
		return false;
	i = skip_ws(p, n, i + 1);
	if (i >= n)
		return false;
	e = value_end(p, n, i);
	val->type = type_at((unsigned char)p[i]);
	val->p = p + i;
	val->len = e - i;
	it->i = e;
	return true;
}

/* Appends code point cp as UTF-8 at out[len..] within cap; returns the new length. */
static size_t put_utf8(char *out, size_t cap, size_t len, unsigned long cp)
{
	unsigned char u[4];
	size_t k;

	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		k = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | cp >> 6);
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		k = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | cp >> 12);
		u[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		k = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | cp >> 18);
		u[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		k = 4;
	}
	for (size_t j = 0; j < k; j++, len++)
		if (len < cap)
			out[len] = (char)u[j];
	return len;
}

/* The low half of a pair as a \u escape at p[i..n), or -1. */
static long low_half(const char *p, size_t n, size_t i)
{
	long lo;

	if (n - i < 6 || p[i] != '\\' || p[i + 1] != 'u')
		return -1;
	lo = hex4(p + i + 2);
	return lo >= 0xdc00 && lo <= 0xdfff ? lo : -1;
}

/* The code point of the \u escape at p[i] (i < n, validated), and in *used how many bytes it
 * took (6, or 12 for a pair); an unpaired surrogate gives -1. */
static long u_escape(const char *p, size_t n, size_t i, size_t *used)
{
	long cp = hex4(p + i + 2), lo;

	*used = 6;
	if (cp < 0xd800 || cp > 0xdfff)
		return cp;
	if (cp >= 0xdc00 || (lo = low_half(p, n, i + 6)) < 0)
		return -1;
	*used = 12;
	return 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
}

size_t jscan_unescape(const struct jscan_val *str, char *out, size_t cap)
{
	const char *p = str->p;
	size_t n = str->len ? str->len - 1 : 0; /* up to the closing quote */
	size_t i = 1, len = 0, used;

	while (i < n) {
		char c = p[i];
		long cp;

		if (c != '\\') {
			if (len < cap)
				out[len] = c;
			len++;
			i++;
			continue;
		}
		if (i + 1 >= n)
			break;
		switch (p[i + 1]) {
		case 'b':
			c = '\b';
			break;
		case 'f':
			c = '\f';
			break;
		case 'n':
			c = '\n';
			break;
		case 'r':
			c = '\r';
			break;
		case 't':
			c = '\t';
			break;
		case 'u':
			if (n - i < 6)
				return len;
			cp = u_escape(p, n, i, &used);
			len = put_utf8(out, cap, len, cp < 0 ? 0xfffd : (unsigned long)cp);
			i += used;
			continue;
		default: /* '"', '\\', '/' stand for themselves */
			c = p[i + 1];
			break;
		}
		if (len < cap)
			out[len] = c;
		len++;
		i += 2;
	}
	return len;
}

bool jscan_key_is(const struct jscan_val *key, const char *name)
{
	size_t nl = strlen(name), len;
	char dec[64];

	/* Without a backslash the key is its bytes (raw control characters, NUL among them, are
	 * not JSON): the common case, compared in place. */
	if (key->len >= 2 && !memchr(key->p + 1, '\\', key->len - 2))
		return key->len - 2 == nl && !memcmp(key->p + 1, name, nl);
	if (nl >= sizeof(dec))
		return false; /* longer than any name this is asked about */
	len = jscan_unescape(key, dec, nl + 1);
	if (len < nl || memcmp(dec, name, nl))
		return false;
	return len == nl || dec[nl] == '\0';
}

bool jscan_member(const struct jscan_val *obj, const char *name, struct jscan_val *val)
{
	struct jscan_iter it;
	struct jscan_val k, v;
	bool found = false;

	jscan_members(&it, obj);
	while (jscan_next_member(&it, &k, &v))
		if (jscan_key_is(&k, name)) {
			*val = v;
			found = true;
		}
	return found;
}

void jscan_compact(const struct jscan_val *v, struct buf *b)
{
	const char *p = v->p;
	size_t n = v->len, i = 0, run = 0, used;

	while (i < n) {
		if (is_ws((unsigned char)p[i])) {
			buf_put(b, p + run, i - run);
			run = ++i;
			continue;
		}
		if (p[i] != '"') {
			i++;
			continue;
		}
		for (i++; i < n && p[i] != '"'; i++) {
			if (p[i] != '\\')
				continue;
			if (i + 1 < n && p[i + 1] == 'u' && n - i >= 6 &&
			    u_escape(p, n, i, &used) < 0) {
				buf_put(b, p + run, i - run);
				buf_put(b, "\\ufffd", 6);
				run = i + 6;
				i += 5;
			} else if (i + 1 < n && p[i + 1] == 'u' && n - i >= 6) {
				i += used - 1;
			} else {
				i++;
			}
		}
		i++; /* the closing quote */
	}
	if (run < n)
		buf_put(b, p + run, n - run);
}

size_t jscan_int_text(const struct jscan_val *v, char out[JSCAN_INT_LEN])
{
	const char *p = v->p;
	size_t n = v->len, i = 0;
	bool neg;
	uint64_t x = 0, limit;
	int len;

	if (v->type != JSCAN_NUMBER || !n || memchr(p, '.', n) || memchr(p, 'e', n) ||
	    memchr(p, 'E', n))
		return 0;
	neg = p[0] == '-';
	i = neg;
	limit = neg ? (uint64_t)INT64_MAX + 1 : UINT64_MAX;
	for (; i < n; i++) {
		unsigned d = (unsigned)(p[i] - '0');
		if (d > 9)
			return 0;
		x = x > (limit - d) / 10 ? limit : x * 10 + d;
	}
	if (neg && x)
		len = x > (uint64_t)INT64_MAX
		          ? snprintf(out, JSCAN_INT_LEN, "%lld", (long long)INT64_MIN)
		          : snprintf(out, JSCAN_INT_LEN, "-%llu", (unsigned long long)x);
	else
		len = snprintf(out, JSCAN_INT_LEN, "%llu", (unsigned long long)x);
	return len > 0 ? (size_t)len : 0;
}
