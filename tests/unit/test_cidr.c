/* Unit tests for src/cidr.c: NOTIFY_ALLOW_FROM lists (IPv4 and IPv6 ranges, host bits, bad
 * items) and matching peer addresses, IPv4-mapped IPv6 included. */
#include "cidr.h"

#include <check.h>
#include <stdlib.h>

static bool match(const char *list, const char *ip)
{
	struct cidr_list l;
	bool m;

	ck_assert_int_eq(cidr_list_parse(list, &l), 0);
	m = cidr_list_match(&l, ip);
	cidr_list_free(&l);
	return m;
}

START_TEST(test_ipv4_ranges)
{
	ck_assert(match("127.0.0.2/32", "127.0.0.2"));
	ck_assert(!match("127.0.0.2/32", "127.0.0.3"));
	ck_assert(match("10.0.0.0/8", "10.255.1.2"));
	ck_assert(!match("10.0.0.0/8", "11.0.0.1"));
	ck_assert(match("172.16.0.0/12", "172.31.255.255"));
	ck_assert(!match("172.16.0.0/12", "172.32.0.0"));
	ck_assert(match("192.168.1.128/25", "192.168.1.200"));
	ck_assert(!match("192.168.1.128/25", "192.168.1.127"));
	ck_assert(match("0.0.0.0/0", "8.8.8.8"));
	ck_assert(match("127.0.0.1", "127.0.0.1")); /* no /bits: one host */
	/* Host bits are cleared, as routers read it. */
	ck_assert(match("10.1.2.3/8", "10.9.9.9"));
}
END_TEST

START_TEST(test_ipv6_ranges)
{
	ck_assert(match("::1/128", "::1"));
	ck_assert(!match("::1/128", "::2"));
	ck_assert(match("fd00::/8", "fd12:3456::1"));
	ck_assert(!match("fd00::/8", "fe80::1"));
	ck_assert(match("2001:db8::/33", "2001:db8:7fff::1"));
	ck_assert(!match("2001:db8::/33", "2001:db8:8000::1"));
	/* An IPv4-mapped peer (a dual-stack listener) counts as its IPv4 address. */
	ck_assert(match("127.0.0.0/8", "::ffff:127.0.0.9"));
	/* Families never mix otherwise. */
	ck_assert(!match("::/0", "127.0.0.1"));
	ck_assert(!match("0.0.0.0/0", "::1"));
}
END_TEST

START_TEST(test_lists)
{
	ck_assert(match(" 10.0.0.0/8 , ::1/128,127.0.0.2/32", "127.0.0.2"));
	ck_assert(match("10.0.0.0/8,::1/128", "::1"));
	ck_assert(!match("", "127.0.0.1"));
	ck_assert(!match("10.0.0.0/8", NULL));
	ck_assert(!match("10.0.0.0/8", "not an address"));
}
END_TEST

START_TEST(test_bad_items)
{
	static const char *const bad[] = {
	    "10.0.0.0/33", "::1/129",         "10.0.0.0/-1", "10.0.0.0/",
	    "10.0.0.0/8x", "10.0.0/8",        "example.com", "10.0.0.0/8,",
	    ",10.0.0.0/8", "10.0.0.0/8,,::1", "1.2.3.4/+8",  "256.0.0.0/8",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct cidr_list l;
		ck_assert_msg(cidr_list_parse(bad[i], &l) < 0, "accepted %s", bad[i]);
		ck_assert_uint_eq(l.n, 0);
	}
}
END_TEST

static Suite *cidr_suite(void)
{
	Suite *s = suite_create("cidr");
	TCase *c = tcase_create("cidr");

	tcase_add_test(c, test_ipv4_ranges);
	tcase_add_test(c, test_ipv6_ranges);
	tcase_add_test(c, test_lists);
	tcase_add_test(c, test_bad_items);
	suite_add_tcase(s, c);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(cidr_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
