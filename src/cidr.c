/* CIDR ranges: parsing comma lists of IPv4/IPv6 networks and matching textual peer addresses
 * against them (NOTIFY_ALLOW_FROM). */
#include "cidr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int parse_one(const char *s, size_t len, struct cidr *c)
{
	char buf[64], *slash, *end;
	long bits;
	int max;

	if (!len || len >= sizeof(buf))
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	slash = strchr(buf, '/');
	if (slash)
		*slash = '\0';
	memset(c, 0, sizeof(*c));
	if (inet_pton(AF_INET, buf, c->addr) == 1) {
		c->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, c->addr) == 1) {
		c->family = AF_INET6;
		max = 128;
	} else {
		return -1;
	}
	bits = max;
	if (slash) {
		if (!slash[1] || slash[1] == '-' || slash[1] == '+')
			return -1;
		bits = strtol(slash + 1, &end, 10);
		if (*end || bits < 0 || bits > max)
			return -1;
	}
	c->bits = (int)bits;
	/* Host bits cleared, so "10.1.2.3/8" means 10.0.0.0/8 as every router reads it. */
	for (int i = 0; i < max / 8; i++) {
		int keep = c->bits - i * 8;
		if (keep <= 0)
			c->addr[i] = 0;
		else if (keep < 8)
			c->addr[i] &= (unsigned char)(0xff << (8 - keep));
	}
	return 0;
}

int cidr_list_parse(const char *s, struct cidr_list *out)
{
	memset(out, 0, sizeof(*out));
	while (s && *s) {
		const char *comma = strchr(s, ',');
		const char *e = comma ? comma : s + strlen(s);
		const char *b = s;
		struct cidr c, *grown;

		while (b < e && (*b == ' ' || *b == '\t'))
			b++;
		while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (parse_one(b, (size_t)(e - b), &c) < 0)
			goto bad;
		grown = realloc(out->v, (out->n + 1) * sizeof(*grown));
		if (!grown)
			goto bad;
		out->v = grown;
		out->v[out->n++] = c;
		s = comma ? comma + 1 : NULL;
		if (comma && !*s)
			goto bad; /* trailing comma */
	}
	return 0;
bad:
	cidr_list_free(out);
	return -1;
}

void cidr_list_free(struct cidr_list *l)
{
	free(l->v);
	l->v = NULL;
	l->n = 0;
}

static bool in_range(const struct cidr *c, const unsigned char *a)
{
	int full = c->bits / 8, rest = c->bits % 8;

	if (memcmp(c->addr, a, (size_t)full))
		return false;
	return !rest || ((a[full] ^ c->addr[full]) & (0xff << (8 - rest))) == 0;
}

bool cidr_list_match(const struct cidr_list *l, const char *ip)
{
	unsigned char a4[4], a6[16];
	bool v4 = false, v6 = false;

	if (!ip || !l->n)
		return false;
	if (inet_pton(AF_INET, ip, a4) == 1) {
		v4 = true;
	} else if (inet_pton(AF_INET6, ip, a6) == 1) {
		static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
		v6 = true;
		if (!memcmp(a6, mapped, 12)) {
			memcpy(a4, a6 + 12, 4);
			v4 = true;
		}
	}
	for (size_t i = 0; i < l->n; i++)
		if ((v4 && l->v[i].family == AF_INET && in_range(&l->v[i], a4)) ||
		    (v6 && l->v[i].family == AF_INET6 && in_range(&l->v[i], a6)))
			return true;
	return false;
}
