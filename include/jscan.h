/* A strict RFC 8259 JSON scanner working in place over (pointer, length): validates one document
 * with a nesting limit, walks an object's members, unescapes strings and compacts values, all
 * without allocating (compaction appends to a caller's buf). */
#ifndef ROOMCAST_JSCAN_H
#define ROOMCAST_JSCAN_H

#include "buf.h"

#include <stdbool.h>
#include <stddef.h>

/* The deepest jscan_parse lets a value sit, whatever the caller asks. */
#define JSCAN_DEPTH_MAX 256

/* "-9223372036854775808" or "18446744073709551615" plus NUL. */
#define JSCAN_INT_LEN 24

enum jscan_type {
	JSCAN_OBJECT = 1,
	JSCAN_ARRAY,
	JSCAN_STRING,
	JSCAN_NUMBER,
	JSCAN_TRUE,
	JSCAN_FALSE,
	JSCAN_NULL,
};

enum jscan_result {
	JSCAN_OK = 0,
	JSCAN_MALFORMED = -1, /* not JSON, or not RFC 8259 JSON */
	JSCAN_TOO_DEEP = -2,  /* a value deeper than max_depth */
	JSCAN_TRAILING = -3,  /* a whole value, then something other than whitespace */
};

/* A value's raw bytes inside the caller's input (a string's include its quotes). The
 * functions below that take one read only slices jscan_parse accepted, or parts of them that
 * jscan_next_member gave: they rely on that validation to stay within the slice. */
struct jscan_val {
	enum jscan_type type;
	const char *p;
	size_t len;
};

/* Checks that s[0..n) is exactly one JSON value, whitespace (space, tab, CR, LF) around it
 * allowed: strict grammar (no NaN, Infinity, leading zeros, '+', single quotes, comments, raw
 * control characters in strings or invalid escapes), and no value deeper than max_depth, the
 * whole document being at depth 1 and each array or object putting its elements one deeper
 * (json-c's json_tokener_new_ex(max_depth): with 16, 16 nested empty arrays pass, 16 nested
 * objects around a number do not). Bytes >= 0x80 are taken as they come: UTF-8 is the caller's
 * check. On JSCAN_OK *top is the value without the whitespace around it. */
enum jscan_result jscan_parse(const char *s, size_t n, int max_depth, struct jscan_val *top);

/* Iterates over an object's members in document order: start with jscan_members, then each
 * jscan_next_member gives the key (a JSCAN_STRING) and the value, false after the last. */
struct jscan_iter {
	const char *p;
	size_t n, i;
};

void jscan_members(struct jscan_iter *it, const struct jscan_val *obj);
bool jscan_next_member(struct jscan_iter *it, struct jscan_val *key, struct jscan_val *val);

/* Whether a key names name (a C string), compared after unescaping and, as json-c keeps keys as
 * C strings, only up to an escaped U+0000 in the key: "event\u0000x" names "event". */
bool jscan_key_is(const struct jscan_val *key, const char *name);

/* The last member named name (json-c's rule for duplicate keys), or false when there is none. */
bool jscan_member(const struct jscan_val *obj, const char *name, struct jscan_val *val);

/* Unescapes a string into out[0..cap) and returns the decoded length, which may exceed cap
 * (then only the first cap bytes were written; nothing is NUL-terminated). \u0000 decodes to a
 * NUL byte; a surrogate pair to its 4-byte UTF-8; a surrogate escape that is not half of a pair
 * to U+FFFD (EF BF BD), as json-c 0.16 and Go's encoding/json do. */
size_t jscan_unescape(const struct jscan_val *str, char *out, size_t cap);

/* Appends v to b without the whitespace outside its strings, every other byte as it came,
 * except that a \u escape of a surrogate that is not half of a pair becomes \ufffd (what it
 * decodes to here; PostgreSQL's jsonb refuses the lone half). */
void jscan_compact(const struct jscan_val *v, struct buf *b);

/* An integer number (no fraction, no exponent) written as json-c 0.16 prints it after parsing:
 * -0 is 0, and values past the 64-bit range saturate (to -9223372036854775808 below, to
 * 18446744073709551615 above). Returns the length written to out (NUL-terminated), or 0 when v
 * is not an integer. */
size_t jscan_int_text(const struct jscan_val *v, char out[JSCAN_INT_LEN]);

#endif
