/* Small helpers shared by several modules: clocks, timestamps, strict UTF-8 checks and
 * constant-time comparison. (The growable buffer is buf.h.) */
#ifndef ROOMCAST_UTIL_H
#define ROOMCAST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* "2026-11-22T10:00:00.123Z" plus NUL. */
#define UTIL_TS_LEN 25

void util_timestamp(char out[UTIL_TS_LEN]);
uint64_t util_now_ns(void); /* CLOCK_MONOTONIC */

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF, no sequence
 * cut short. util_utf8_seq gives the length (1-4) of the valid sequence at s, reading at most
 * avail bytes, or 0 when none starts there; a NUL never continues a sequence, so a
 * NUL-terminated string may pass 4. util_utf8_valid checks s[0..n) whole. */
size_t util_utf8_seq(const unsigned char *s, size_t avail);
bool util_utf8_valid(const void *s, size_t n);

/* Compares without early exit so timing does not reveal the matching prefix. */
bool util_consttime_eq(const char *a, size_t alen, const char *b, size_t blen);

#endif
