/* Structured logging to stderr. Owns the process-wide log level, format and node name.
 * Each record is built in one buffer and written with one write(2) so lines from several
 * worker processes sharing stderr never interleave. */
#include "log.h"
#include "util.h"

#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static enum log_level g_level = LOG_INFO;
static enum log_format g_format = LOG_FORMAT_JSON;
static char g_node[128] = "roomcast";

void log_init(enum log_level level, enum log_format format, const char *node)
{
	g_level = level;
	g_format = format;
	if (node)
		snprintf(g_node, sizeof(g_node), "%s", node);
}

int log_level_parse(const char *s, enum log_level *out)
{
	static const char *names[] = {"debug", "info", "warn", "error"};
	for (int i = 0; i < 4; i++) {
		if (!strcasecmp(s, names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -1;
}

int log_enabled(enum log_level level)
{
	return level >= g_level;
}

/* Appends s to buf as JSON string content (no quotes). Any byte string gives valid JSON: control
 * bytes and DEL are \u-escaped, bytes that are not UTF-8 become U+FFFD, and a character that
 * does not fit whole is left out rather than cut. */
static size_t put_escaped(char *buf, size_t pos, size_t cap, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	while (*s && pos + 7 < cap) {
		unsigned char c = *s;
		size_t n = util_utf8_seq(s, 4);
		if (c == '"' || c == '\\') {
			buf[pos++] = '\\';
			buf[pos++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			pos += (size_t)snprintf(buf + pos, cap - pos, "\\u%04x", c);
		} else if (n == 0) {
			pos += (size_t)snprintf(buf + pos, cap - pos, "\\ufffd");
			n = 1;
		} else {
			memcpy(buf + pos, s, n);
			pos += n;
		}
		s += n ? n : 1;
	}
	return pos;
}

/* True when a text-format value can be written bare: non-empty, no space, quote, backslash,
 * '=' or control byte, and valid UTF-8. Anything else is quoted so that no value can forge
 * another key, another record or another line. */
static bool text_bare(const char *str)
{
	const unsigned char *s = (const unsigned char *)str;

	if (!*s)
		return false;
	while (*s) {
		size_t n = util_utf8_seq(s, 4);
		if (!n || *s <= 0x20 || *s == 0x7f || *s == '"' || *s == '\\' || *s == '=')
			return false;
		s += n;
	}
	return true;
}

/* Appends s to buf for the text format: bare when text_bare, else in double quotes with \",
 * \\, \n, \r, \t and \xNN for other control bytes and bytes that are not UTF-8. A message
 * (quote false) is never quoted, since it is a sentence from the code, but escaped alike. */
static size_t put_text(char *buf, size_t pos, size_t cap, const char *str, bool quote)
{
	const unsigned char *s = (const unsigned char *)str;

	if (text_bare(str)) {
		while (*s && pos + 4 < cap) {
			size_t n = util_utf8_seq(s, 4);
			memcpy(buf + pos, s, n);
			pos += n;
			s += n;
		}
		return pos;
	}
	if (quote && pos + 1 < cap)
		buf[pos++] = '"';
	/* 6 keeps room for the longest escape and the closing quote. */
	while (*s && pos + 6 < cap) {
		unsigned char c = *s;
		size_t n = util_utf8_seq(s, 4);
		if (c == '"' || c == '\\') {
			buf[pos++] = '\\';
			buf[pos++] = (char)c;
		} else if (c == '\n' || c == '\r' || c == '\t') {
			buf[pos++] = '\\';
			buf[pos++] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
		} else if (c < 0x20 || c == 0x7f || n == 0) {
			pos += (size_t)snprintf(buf + pos, cap - pos, "\\x%02x", c);
			n = 1;
		} else {
			memcpy(buf + pos, s, n);
			pos += n;
		}
		s += n ? n : 1;
	}
	if (quote && pos + 1 < cap)
		buf[pos++] = '"';
	return pos;
}

static size_t put_raw(char *buf, size_t pos, size_t cap, const char *s)
{
	size_t n = strlen(s);
	if (pos + 1 >= cap)
		return pos;
	if (pos + n >= cap)
		n = cap - pos - 1;
	memcpy(buf + pos, s, n);
	return pos + n;
}

void log_writev(enum log_level level, const char *msg, va_list ap)
{
	static const char *lvl[] = {"debug", "info", "warn", "error"};
	char buf[4096], ts[UTIL_TS_LEN];
	size_t pos = 0, cap = sizeof(buf) - 2;

	if (level < g_level)
		return;
	util_timestamp(ts);

	if (g_format == LOG_FORMAT_JSON) {
		pos = put_raw(buf, pos, cap, "{\"ts\":\"");
		pos = put_raw(buf, pos, cap, ts);
		pos = put_raw(buf, pos, cap, "\",\"level\":\"");
		pos = put_raw(buf, pos, cap, lvl[level]);
		pos = put_raw(buf, pos, cap, "\",\"msg\":\"");
		pos = put_escaped(buf, pos, cap, msg);
		pos = put_raw(buf, pos, cap, "\",\"node\":\"");
		pos = put_escaped(buf, pos, cap, g_node);
		pos = put_raw(buf, pos, cap, "\"");
	} else {
		pos = put_raw(buf, pos, cap, ts);
		pos = put_raw(buf, pos, cap, " ");
		pos = put_raw(buf, pos, cap, lvl[level]);
		pos = put_raw(buf, pos, cap, " ");
		pos = put_text(buf, pos, cap, msg, false);
	}
	for (;;) {
		const char *k = va_arg(ap, const char *);
		const char *v;
		if (!k)
			break;
		v = va_arg(ap, const char *);
		if (!v)
			continue;
		if (g_format == LOG_FORMAT_JSON) {
			pos = put_raw(buf, pos, cap, ",\"");
			pos = put_escaped(buf, pos, cap, k);
			pos = put_raw(buf, pos, cap, "\":\"");
			pos = put_escaped(buf, pos, cap, v);
			pos = put_raw(buf, pos, cap, "\"");
		} else {
			pos = put_raw(buf, pos, cap, " ");
			pos = put_text(buf, pos, cap, k, true);
			pos = put_raw(buf, pos, cap, "=");
			pos = put_text(buf, pos, cap, v, true);
		}
	}
	if (g_format == LOG_FORMAT_JSON)
		buf[pos++] = '}';
	buf[pos++] = '\n';
	/* A short write to stderr loses a log line at worst; nothing to recover. */
	if (write(STDERR_FILENO, buf, pos) < 0)
		return;
}

void log_write(enum log_level level, const char *msg, ...)
{
	va_list ap;
	va_start(ap, msg);
	log_writev(level, msg, ap);
	va_end(ap);
}
