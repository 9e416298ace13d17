/* Address ranges in CIDR notation (IPv4 and IPv6): parsing a comma list such as
 * "10.0.0.0/8,127.0.0.1/32,::1/128" and matching a peer address against it. */
#ifndef ROOMCAST_CIDR_H
#define ROOMCAST_CIDR_H

#include <stdbool.h>
#include <stddef.h>

struct cidr {
	int family;             /* AF_INET or AF_INET6 */
	unsigned char addr[16]; /* network address, host bits cleared */
	int bits;
};

struct cidr_list {
	struct cidr *v;
	size_t n;
};

/* Parses a comma list (spaces around items allowed; an address without /bits is a single
 * host). Returns 0 and fills out (free with cidr_list_free), or -1 with out empty when an item
 * is not a valid range. NULL or "" gives an empty list. */
int cidr_list_parse(const char *s, struct cidr_list *out);
void cidr_list_free(struct cidr_list *l);
/* Whether the textual address ip (as inet_ntop writes it; an IPv4-mapped IPv6 address counts as
 * its IPv4 address) lies in any range of l. */
bool cidr_list_match(const struct cidr_list *l, const char *ip);

#endif
