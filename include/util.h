/* Small helpers shared by several modules: clocks, timestamps, JSON string escaping into a
 * growable buffer, strict UTF-8 checks and constant-time comparison. */
#ifndef ROOMCAST_UTIL_H
#define ROOMCAST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "2026-11-22T10:00:00.123Z" plus NUL. */
#define UTIL_TS_LEN 25

void util_timestamp(char out[UTIL_TS_LEN]);
uint64_t util_now_ns(void); /* CLOCK_MONOTONIC */

/* A growable byte buffer; on allocation failure it sets failed and ignores further appends,
 * so builders check once at the end. */
struct buf {
	char *data;
	size_t len, cap;
	bool failed;
};

void buf_init(struct buf *b);
void buf_free(struct buf *b);
void buf_put(struct buf *b, const void *data, size_t len);
void buf_puts(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a quoted JSON string. */
void buf_json_str(struct buf *b, const char *s, size_t len);

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF, no sequence
 * cut short. util_utf8_seq gives the length (1-4) of the valid sequence at s, reading at most
 * avail bytes, or 0 when none starts there; a NUL never continues a sequence, so a
 * NUL-terminated string may pass 4. util_utf8_valid checks s[0..n) whole. */
size_t util_utf8_seq(const unsigned char *s, size_t avail);
bool util_utf8_valid(const void *s, size_t n);

/* Compares without early exit so timing does not reveal the matching prefix. */
bool util_consttime_eq(const char *a, size_t alen, const char *b, size_t blen);

#endif
