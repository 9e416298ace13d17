/* Unit tests for what lets other servers' applications and clients use roomcast: the action
 * dialect of proto_parse, the typed form of room messages (proto_typed), room templates filled
 * from notification payloads (pglisten_fill) and live room patterns (liveroom_match). */
#include "liveroom.h"
#include "pglisten.h"
#include "proto.h"

#include <check.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

static struct proto_msg g_msg;
static const char *g_detail;

static enum proto_code parse(const char *s)
{
	proto_msg_clear(&g_msg);
	return proto_parse(s, strlen(s), &g_msg, &g_detail);
}

static void teardown(void)
{
	proto_msg_clear(&g_msg);
}

START_TEST(test_action_subscribe_filters)
{
	ck_assert_int_eq(parse("{\"action\":\"subscribe\",\"filters\":[\"parking_updates\","
	                       "\"payments\",\"alerts\"]}"),
	                 PROTO_OK);
	ck_assert_int_eq(g_msg.type, PROTO_JOIN);
	ck_assert(g_msg.dialect);
	ck_assert_uint_eq(g_msg.nrooms, 3);
	ck_assert_str_eq(g_msg.rooms[0], "parking_updates");
	ck_assert_str_eq(g_msg.rooms[2], "alerts");
	ck_assert_str_eq(g_msg.room, "parking_updates");
	ck_assert_int_eq(parse("{\"action\":\"unsubscribe\",\"filters\":[\"alerts\"]}"), PROTO_OK);
	ck_assert_int_eq(g_msg.type, PROTO_LEAVE);
	ck_assert_int_eq(parse("{\"action\":\"subscribe\",\"channel\":\"parking\"}"), PROTO_OK);
	ck_assert_uint_eq(g_msg.nrooms, 0);
	ck_assert_str_eq(g_msg.room, "parking");
}
END_TEST

START_TEST(test_action_errors)
{
	ck_assert_int_eq(parse("{\"action\":\"subscribe\",\"filters\":[]}"), PROTO_BAD_ROOM);
	ck_assert_int_eq(parse("{\"action\":\"subscribe\",\"filters\":[\"ok\",\"no spaces\"]}"),
	                 PROTO_BAD_ROOM);
	ck_assert_ptr_null(g_msg.rooms);
	ck_assert_int_eq(parse("{\"action\":\"subscribe\",\"filters\":[1]}"), PROTO_BAD_ROOM);
	ck_assert_int_eq(parse("{\"action\":\"dance\"}"), PROTO_BAD_TYPE);
	ck_assert_int_eq(parse("{\"action\":\"auth\"}"), PROTO_BAD_JSON);
	ck_assert_int_eq(parse("{\"action\":\"auth\",\"token\":\"abc\"}"), PROTO_OK);
	ck_assert_int_eq(g_msg.type, PROTO_AUTH);
	ck_assert_str_eq(g_msg.token, "abc");
	/* Our own messages are not a dialect; the Go-style data.channel is. */
	ck_assert_int_eq(parse("{\"type\":\"join\",\"payload\":{\"room\":\"a\"}}"), PROTO_OK);
	ck_assert(!g_msg.dialect);
	ck_assert_int_eq(parse("{\"type\":\"subscribe\",\"data\":{\"channel\":\"a\"}}"), PROTO_OK);
	ck_assert(g_msg.dialect);
}
END_TEST

static json_object *frame_json(struct frame *f)
{
	return json_tokener_parse((const char *)frame_data(f));
}

START_TEST(test_typed_event_shared_once)
{
	struct frame *f =
	    proto_event_envelope("\"n1-l3\"", "parking_update", "parking",
	                         "2026-01-21T10:30:00.000Z", "{\"espacio_id\":15}", "{}");
	struct frame *t, *t2;
	json_object *o, *v;

	f->flags |= FRAME_ROOM_MSG;
	t = proto_typed(f);
	ck_assert_ptr_ne(t, f);
	t2 = proto_typed(f);
	ck_assert_ptr_eq(t, t2); /* built once, kept with the frame */
	ck_assert(t->flags & FRAME_ROOM_MSG);
	o = frame_json(t);
	ck_assert_ptr_nonnull(o);
	ck_assert_int_eq(json_object_object_length(o), 5);
	json_object_object_get_ex(o, "type", &v);
	ck_assert_str_eq(json_object_get_string(v), "parking_update");
	json_object_object_get_ex(o, "data", &v);
	ck_assert_str_eq(json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN),
	                 "{\"espacio_id\":15}");
	json_object_object_get_ex(o, "id", &v);
	ck_assert_str_eq(json_object_get_string(v), "n1-l3");
	json_object_put(o);
	frame_unref(f); /* frees the typed form too (ASan/valgrind would say otherwise) */
}
END_TEST

START_TEST(test_typed_broadcast_and_replies)
{
	struct frame *f = proto_broadcast_envelope("b1", "conn-1", "u1", "chat", "ts", "\"hi\"", 4);
	struct frame *r = proto_pong(), *t;
	json_object *o, *v;

	f->flags |= FRAME_ROOM_MSG;
	t = proto_typed(f);
	o = frame_json(t);
	json_object_object_get_ex(o, "type", &v);
	ck_assert_str_eq(json_object_get_string(v), "broadcast");
	json_object_object_get_ex(o, "data", &v);
	ck_assert_str_eq(json_object_get_string(v), "hi");
	ck_assert(json_object_object_get_ex(o, "user", &v));
	json_object_put(o);
	ck_assert_ptr_eq(proto_typed(r), r); /* replies keep their shape */
	frame_unref(f);
	frame_unref(r);
}
END_TEST

START_TEST(test_typed_keeps_producers_own_messages)
{
	/* A producer's typed message forwarded from Redis (the REST service's stats) is already
	 * what a typed client reads: unchanged, and recognised once. */
	static const char stats[] = "{\"type\":\"ADMIN_STATS_UPDATED\",\"timestamp\":\"t\"}";
	static const char ev[] = "{\"event\":\"PAYMENT_RECEIVED\",\"data\":{\"a\":1}}";
	struct frame *f = frame_new(stats, sizeof(stats) - 1), *g = frame_new(ev, sizeof(ev) - 1);
	struct frame *t;
	json_object *o, *v;

	f->flags |= FRAME_ROOM_MSG;
	g->flags |= FRAME_ROOM_MSG;
	ck_assert_ptr_eq(proto_typed(f), f);
	ck_assert(f->flags & FRAME_TYPED_SAME);
	ck_assert_ptr_eq(proto_typed(f), f);
	t = proto_typed(g); /* a producer's {event,data}: reshaped like our events */
	ck_assert_ptr_ne(t, g);
	o = frame_json(t);
	json_object_object_get_ex(o, "type", &v);
	ck_assert_str_eq(json_object_get_string(v), "PAYMENT_RECEIVED");
	json_object_put(o);
	frame_unref(f);
	frame_unref(g);
}
END_TEST

START_TEST(test_fill_template)
{
	json_object *o = json_tokener_parse(
	    "{\"espacio_id\":15,\"zona\":\"B\",\"x\":null,\"ok\":true,\"obj\":{}}");
	char out[64];

	ck_assert_int_eq(pglisten_fill("parking", o, out, sizeof(out)), 0);
	ck_assert_str_eq(out, "parking");
	ck_assert_int_eq(pglisten_fill("parking-{espacio_id}", o, out, sizeof(out)), 0);
	ck_assert_str_eq(out, "parking-15");
	ck_assert_int_eq(pglisten_fill("{zona}:{espacio_id}", o, out, sizeof(out)), 0);
	ck_assert_str_eq(out, "B:15");
	ck_assert_int_eq(pglisten_fill("p-{missing}", o, out, sizeof(out)), -1);
	ck_assert_int_eq(pglisten_fill("p-{x}", o, out, sizeof(out)), -1);
	ck_assert_int_eq(pglisten_fill("p-{obj}", o, out, sizeof(out)), -1);
	ck_assert_int_eq(pglisten_fill("p-{espacio_id", o, out, sizeof(out)), -1);
	ck_assert_int_eq(pglisten_fill("0123456789", o, out, 8), -1);
	ck_assert_int_eq(pglisten_fill("p-{espacio_id}", NULL, out, sizeof(out)), -1);
	ck_assert_int_eq(pglisten_fill("plain", NULL, out, sizeof(out)), 0);
	json_object_put(o);
}
END_TEST

START_TEST(test_match_pattern)
{
	char v[8][129];

	ck_assert_int_eq(
	    liveroom_match("estadisticas:{negocio_id}", "estadisticas:negocio_123", v, 8), 1);
	ck_assert_str_eq(v[0], "negocio_123");
	ck_assert_int_eq(liveroom_match("estadisticas:{negocio_id}", "estadisticas:", v, 8), -1);
	ck_assert_int_eq(liveroom_match("estadisticas:{negocio_id}", "otra:1", v, 8), -1);
	ck_assert_int_eq(liveroom_match("s-{a}-{b}", "s-1-2-3", v, 8), 2);
	ck_assert_str_eq(v[0], "1");
	ck_assert_str_eq(v[1], "2-3");
	ck_assert_int_eq(liveroom_match("{a}.x", "abc.x", v, 8), 1);
	ck_assert_str_eq(v[0], "abc");
	ck_assert_int_eq(liveroom_match("{a}.x", "abc.xy", v, 8), -1);
	ck_assert_int_eq(liveroom_match("fixed", "fixed", v, 8), 0);
	ck_assert_int_eq(liveroom_match("fixed", "fixed2", v, 8), -1);
	ck_assert_int_eq(liveroom_match("{a}{b}", "ab", v, 8), -1);
	ck_assert_int_eq(liveroom_match("{a}-{b}", "x-y", v, 1), -1);
}
END_TEST

static Suite *apps_suite(void)
{
	Suite *s = suite_create("apps");
	TCase *t = tcase_create("apps");

	tcase_add_checked_fixture(t, NULL, teardown);
	tcase_add_test(t, test_action_subscribe_filters);
	tcase_add_test(t, test_action_errors);
	tcase_add_test(t, test_typed_event_shared_once);
	tcase_add_test(t, test_typed_broadcast_and_replies);
	tcase_add_test(t, test_typed_keeps_producers_own_messages);
	tcase_add_test(t, test_fill_template);
	tcase_add_test(t, test_match_pattern);
	suite_add_tcase(s, t);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(apps_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
