/* Unit tests for src/authz.c: the per-connection verdict cache (bounded, the oldest denial gives
 * way, rooms let in keep their verdict) and the receive-only rule for broadcasts. The policy
 * itself is never asked here: every check below is answered by the claims or the cache. */
#include "authz.h"

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct config g_cfg;

/* What a session keeps for authz: the identity and the verdict cache. */
struct asker {
	struct auth_identity ident;
	void *cache;
};

static void never_called(void *arg, const char *room, enum authz_result r)
{
	ck_abort_msg("the policy was asked for %s", room);
}

/* A connection of user u1 without seller/client ids: order-* rooms need the policy. */
static void make_conn(struct asker *c, struct auth_identity *id, const char *role)
{
	memset(&g_cfg, 0, sizeof(g_cfg));
	g_cfg.authz_mode = CONFIG_AUTHZ_SQL;
	authz_setup(&g_cfg, NULL, NULL);
	memset(c, 0, sizeof(*c));
	memset(id, 0, sizeof(*id));
	/* c->ident shares id's strings: the test clears id alone. */
	ck_assert_int_eq(auth_identity_set_strings(id, "u1", role, "", ""), 0);
	c->ident = *id;
}

static enum authz_result check(struct asker *c, const char *room)
{
	return authz_check(&c->ident, &c->cache, room, never_called, NULL);
}

START_TEST(test_cache_is_bounded)
{
	struct asker c;
	struct auth_identity id;
	char room[32];

	make_conn(&c, &id, "client");
	for (int i = 0; i < 10 * AUTHZ_CACHE_MAX; i++) {
		snprintf(room, sizeof(room), "order-%d", i);
		authz_cache_put(&c.cache, room, 0);
		ck_assert_uint_le(authz_cache_count(c.cache), AUTHZ_CACHE_MAX);
	}
	ck_assert_uint_eq(authz_cache_count(c.cache), AUTHZ_CACHE_MAX);
	/* The newest verdicts answer; the oldest were dropped (they would ask the policy). */
	snprintf(room, sizeof(room), "order-%d", 10 * AUTHZ_CACHE_MAX - 1);
	ck_assert_int_eq(check(&c, room), AUTHZ_DENY);
	authz_cache_free(&c.cache);
	ck_assert_uint_eq(authz_cache_count(c.cache), 0);
	auth_identity_clear(&id);
}
END_TEST

START_TEST(test_allowed_rooms_outlive_a_flood_of_denials)
{
	struct asker c;
	struct auth_identity id;
	char room[32];

	make_conn(&c, &id, "client");
	authz_cache_put(&c.cache, "order-7", 1);
	for (int i = 0; i < 4 * AUTHZ_CACHE_MAX; i++) {
		snprintf(room, sizeof(room), "order-%d", 1000 + i);
		authz_cache_put(&c.cache, room, AUTHZ_VERDICT_FAILED);
	}
	ck_assert_uint_eq(authz_cache_count(c.cache), AUTHZ_CACHE_MAX);
	ck_assert_int_eq(check(&c, "order-7"), AUTHZ_ALLOW);
	ck_assert(authz_still_allowed(&c.ident, c.cache, "order-7"));
	authz_cache_free(&c.cache);
	auth_identity_clear(&id);
}
END_TEST

START_TEST(test_verdicts_answer_until_they_expire)
{
	struct asker c;
	struct auth_identity id;

	make_conn(&c, &id, "client");
	authz_cache_put(&c.cache, "order-1", 1);
	authz_cache_put(&c.cache, "order-2", 0);
	authz_cache_put(&c.cache, "order-3", AUTHZ_VERDICT_FAILED);
	ck_assert_int_eq(check(&c, "order-1"), AUTHZ_ALLOW);
	ck_assert_int_eq(check(&c, "order-2"), AUTHZ_DENY);
	/* A failure refuses too, as unavailable, for a few seconds (the integration test waits
	 * for the expiry). */
	ck_assert_int_eq(check(&c, "order-3"), AUTHZ_UNAVAILABLE);
	ck_assert(!authz_still_allowed(&c.ident, c.cache, "order-3"));
	/* A later verdict for the same room replaces the entry. */
	authz_cache_put(&c.cache, "order-3", 1);
	ck_assert_int_eq(check(&c, "order-3"), AUTHZ_ALLOW);
	ck_assert_uint_eq(authz_cache_count(c.cache), 3);
	authz_cache_free(&c.cache);
	auth_identity_clear(&id);
}
END_TEST

START_TEST(test_receive_only_rooms)
{
	struct asker c;
	struct auth_identity id;
	char *granted[] = {"product-9", "chat-*", NULL};

	make_conn(&c, &id, "client");
	/* Any user may join product rooms, but not speak in them or in the role-wide rooms. */
	ck_assert_int_eq(authz_claims(&id, "product-5"), AUTHZ_ALLOW);
	ck_assert(!authz_may_broadcast(&id, "product-5"));
	ck_assert(!authz_may_broadcast(&id, "sellers"));
	ck_assert(!authz_may_broadcast(&id, "clients"));
	ck_assert(!authz_may_broadcast(&id, "admin"));
	ck_assert(!authz_may_broadcast(&id, "admins"));
	/* Rooms with an owner stay open to broadcasts from their members. */
	ck_assert(authz_may_broadcast(&id, "user-u1"));
	ck_assert(authz_may_broadcast(&id, "order-7"));
	ck_assert(authz_may_broadcast(&id, "chat-9"));
	ck_assert(authz_may_broadcast(&id, "product-")); /* not a product room */
	ck_assert(authz_may_broadcast(&id, "products"));
	/* The token may grant one explicitly. */
	id.rooms = granted;
	ck_assert(authz_may_broadcast(&id, "product-9"));
	ck_assert(!authz_may_broadcast(&id, "product-5"));
	id.rooms = NULL;
	/* Admins and services speak anywhere. */
	ck_assert_int_eq(auth_identity_set_strings(&id, "u1", "admin", "", ""), 0);
	ck_assert(authz_may_broadcast(&id, "product-5"));
	ck_assert(authz_may_broadcast(&id, "sellers"));
	ck_assert_int_eq(auth_identity_set_strings(&id, "u1", "service", "", ""), 0);
	ck_assert(authz_may_broadcast(&id, "clients"));
	ck_assert_int_eq(auth_identity_set_strings(&id, "u1", "seller", "", ""), 0);
	ck_assert(!authz_may_broadcast(&id, "sellers"));
	auth_identity_clear(&id);
}
END_TEST

static Suite *authz_suite(void)
{
	Suite *s = suite_create("authz");
	TCase *t = tcase_create("cache");

	tcase_add_test(t, test_cache_is_bounded);
	tcase_add_test(t, test_allowed_rooms_outlive_a_flood_of_denials);
	tcase_add_test(t, test_verdicts_answer_until_they_expire);
	tcase_add_test(t, test_receive_only_rooms);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(authz_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
