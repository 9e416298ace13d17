/* The bus front: without REDIS_ADDR publishing is delivering locally (one node, in-process
 * bus); with it every call goes to the Redis transport (redisbus.c). */
#include "bus.h"
#include "redisbus.h"
#include "router.h"
#include "util.h"

static bool g_redis;

int bus_start(const struct config *cfg, uv_loop_t *loop)
{
	g_redis = cfg->redis_addr && *cfg->redis_addr;
	return g_redis ? redisbus_start(cfg, loop, router_raw) : 0;
}

void bus_stop(void)
{
	if (g_redis)
		redisbus_stop();
}

int bus_publish(const char *room, const char *payload, size_t len, enum metrics_source src)
{
	if (g_redis)
		redisbus_publish(room, payload, len, src);
	else
		router_raw(room, payload, len, src, util_now_ns());
	return 0;
}

int bus_when_subscribed(const char *room, void (*fn)(void *arg), void *arg)
{
	return g_redis ? redisbus_when_subscribed(room, fn, arg) : 0;
}

const char *bus_state(void)
{
	if (!g_redis)
		return "disabled";
	return redisbus_is_up() ? "up" : "down";
}
