/* The growable byte buffer every JSON builder and wire frame appends to. */
#ifndef ROOMCAST_BUF_H
#define ROOMCAST_BUF_H

#include <stdbool.h>
#include <stddef.h>

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

#endif
