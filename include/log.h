/* Structured logging: one JSON object (or one text line) per event on stderr, with the node name
 * and caller-supplied key/value context. Secrets are never passed here by design: callers log
 * identities and reasons, never tokens. */
#ifndef ROOMCAST_LOG_H
#define ROOMCAST_LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR };
enum log_format { LOG_FORMAT_JSON = 0, LOG_FORMAT_TEXT };

/* Copies node into a static buffer; may be called again to change any setting. */
void log_init(enum log_level level, enum log_format format, const char *node);
int log_level_parse(const char *s, enum log_level *out);
int log_enabled(enum log_level level);

/* Logs msg with context given as NULL-terminated pairs of (const char *key, const char *value).
 * A NULL value skips its pair, so optional context needs no branching at call sites. */
void log_write(enum log_level level, const char *msg, ...);
void log_writev(enum log_level level, const char *msg, va_list ap);

#define log_debug(...) log_write(LOG_DEBUG, __VA_ARGS__, (const char *)0)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__, (const char *)0)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__, (const char *)0)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__, (const char *)0)

#endif
