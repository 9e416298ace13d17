/* Unit tests for the conninfo rewriting in src/pgc.c that keeps host-name lookups off the loop:
 * which hosts of a conninfo need a lookup, and the key=value conninfo with hostaddr entries
 * that libpq then connects with (multi-host URIs, ports, target_session_attrs, quoting). */
#include "pgc.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

/* Returns the value of key in conninfo as libpq parses it ("" when unset); caller frees. */
static char *opt(const char *conninfo, const char *key)
{
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	char *v = NULL;

	ck_assert_msg(opts != NULL, "libpq refused %s: %s", conninfo, err ? err : "?");
	for (PQconninfoOption *o = opts; o->keyword; o++)
		if (!strcmp(o->keyword, key))
			v = strdup(o->val ? o->val : "");
	PQconninfoFree(opts);
	ck_assert_ptr_nonnull(v);
	return v;
}

static void assert_opt(const char *conninfo, const char *key, const char *want)
{
	char *v = opt(conninfo, key);
	ck_assert_msg(!strcmp(v, want), "%s: got '%s', want '%s' in %s", key, v, want, conninfo);
	free(v);
}

#define MULTI                                                                                      \
	"postgresql://app:s3cret@db.example:5433,10.0.0.9:5434,other/shop"                         \
	"?target_session_attrs=read-write&sslmode=prefer&connect_timeout=4"

START_TEST(test_hosts_that_need_a_lookup)
{
	char **names;
	size_t n;

	ck_assert_int_eq(pgc_conninfo_hosts(MULTI, &names, &n), 0);
	ck_assert_uint_eq(n, 3);
	ck_assert_str_eq(names[0], "db.example");
	ck_assert_ptr_null(names[1]); /* numeric */
	ck_assert_str_eq(names[2], "other");
	pgc_free_names(names, n);

	ck_assert_int_eq(pgc_conninfo_hosts("host=localhost dbname=x", &names, &n), 0);
	ck_assert_uint_eq(n, 1);
	ck_assert_str_eq(names[0], "localhost");
	pgc_free_names(names, n);
}
END_TEST

START_TEST(test_nothing_to_look_up)
{
	static const char *const none[] = {
	    "",
	    "dbname=x",
	    "host=/var/run/postgresql dbname=x",
	    "host=127.0.0.1,::1 port=5432",
	    "postgresql:///shop?host=/tmp",
	    /* The operator gave the addresses: libpq looks nothing up. */
	    "host=db.example hostaddr=10.0.0.1",
	};
	char **names;
	size_t n;

	for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
		ck_assert_int_eq(pgc_conninfo_hosts(none[i], &names, &n), 0);
		ck_assert_msg(names == NULL && n == 0, "%s: something to look up", none[i]);
	}
	ck_assert_int_eq(pgc_conninfo_hosts("host='unterminated", &names, &n), -1);
	ck_assert_int_eq(pgc_conninfo_hosts("postgresql://[::1", &names, &n), -1);
}
END_TEST

START_TEST(test_rewrite_multi_host)
{
	char *names[] = {"db.example", NULL, "other"};
	char *addrs[] = {"192.0.2.1,2001:db8::1", NULL, "192.0.2.3"};
	char *ci = pgc_conninfo_with_addrs(MULTI, names, addrs, 3);

	ck_assert_ptr_nonnull(ci);
	/* One entry per address; the name stays in host for TLS and .pgpass. */
	assert_opt(ci, "host", "db.example,db.example,10.0.0.9,other");
	assert_opt(ci, "hostaddr", "192.0.2.1,2001:db8::1,,192.0.2.3");
	assert_opt(ci, "port", "5433,5433,5434,");
	assert_opt(ci, "target_session_attrs", "read-write");
	assert_opt(ci, "sslmode", "prefer");
	assert_opt(ci, "connect_timeout", "4");
	assert_opt(ci, "user", "app");
	assert_opt(ci, "password", "s3cret");
	assert_opt(ci, "dbname", "shop");
	free(ci);
}
END_TEST

START_TEST(test_rewrite_single_port_and_failed_host)
{
	char *names[] = {"gone.example", "db.example"};
	char *addrs[] = {"", "127.0.0.1"};
	char *ci = pgc_conninfo_with_addrs("host=gone.example,db.example port=6543 dbname=x", names,
	                                   addrs, 2);

	/* A name that did not resolve is left out, not handed to libpq to look up on the loop. */
	ck_assert_ptr_nonnull(ci);
	assert_opt(ci, "host", "db.example");
	assert_opt(ci, "hostaddr", "127.0.0.1");
	assert_opt(ci, "port", "6543");
	free(ci);
	/* No host left at all: nothing to connect to. */
	ck_assert_ptr_null(pgc_conninfo_with_addrs("host=gone.example", names, addrs, 1));
}
END_TEST

START_TEST(test_rewrite_quotes_values)
{
	char *names[] = {"localhost"};
	char *addrs[] = {"127.0.0.1"};
	char *ci = pgc_conninfo_with_addrs(
	    "host=localhost password='it\\'s a \\\\ secret' application_name='a b'", names, addrs,
	    1);

	ck_assert_ptr_nonnull(ci);
	assert_opt(ci, "password", "it's a \\ secret");
	assert_opt(ci, "application_name", "a b");
	assert_opt(ci, "port", "");
	free(ci);
}
END_TEST

static Suite *conninfo_suite(void)
{
	Suite *s = suite_create("pgc_conninfo");
	TCase *t = tcase_create("rewrite");

	tcase_add_test(t, test_hosts_that_need_a_lookup);
	tcase_add_test(t, test_nothing_to_look_up);
	tcase_add_test(t, test_rewrite_multi_host);
	tcase_add_test(t, test_rewrite_single_port_and_failed_host);
	tcase_add_test(t, test_rewrite_quotes_values);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(conninfo_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
