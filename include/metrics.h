/* Process-wide counters and gauges. Modules bump them directly; the HTTP layer renders
 * them for /metrics and /health. Plain integers: everything runs on the one loop thread. */
#ifndef ROOMCAST_METRICS_H
#define ROOMCAST_METRICS_H

#include <stdint.h>

/* METRICS_SRC_LISTEN: application NOTIFY channels (realtime.listen); METRICS_SRC_LIVE: live SQL
 * rooms. */
enum metrics_source {
	METRICS_SRC_DB = 0,
	METRICS_SRC_NOTIFY,
	METRICS_SRC_BROADCAST,
	METRICS_SRC_REDIS,
	METRICS_SRC_LISTEN,
	METRICS_SRC_LIVE,
	METRICS_SRC_COUNT
};
enum metrics_close {
	METRICS_CLOSE_NORMAL = 0,
	METRICS_CLOSE_SHUTDOWN,
	METRICS_CLOSE_POLICY,
	METRICS_CLOSE_TOO_BIG,
	METRICS_CLOSE_TOKEN,
	METRICS_CLOSE_FORBIDDEN,
	METRICS_CLOSE_SLOW,
	METRICS_CLOSE_RATE,
	METRICS_CLOSE_PEER,
	METRICS_CLOSE_TIMEOUT, /* silent past PONG_TIMEOUT_S */
	METRICS_CLOSE_COUNT
};
enum metrics_refuse {
	METRICS_REFUSE_UNAUTHORIZED = 0,
	METRICS_REFUSE_ORIGIN,
	METRICS_REFUSE_CAPACITY,
	METRICS_REFUSE_PER_IP,
	METRICS_REFUSE_NOT_FOUND,
	METRICS_REFUSE_BAD_REQUEST,
	METRICS_REFUSE_HEADER_TIMEOUT,
	METRICS_REFUSE_COUNT
};

#define METRICS_LAT_BUCKETS 14

struct metrics {
	int64_t connections;
	uint64_t connections_total;
	uint64_t messages_in;
	uint64_t messages_routed[METRICS_SRC_COUNT];
	uint64_t deliveries;
	uint64_t bytes_out;
	uint64_t drops_slow;
	uint64_t closes[METRICS_CLOSE_COUNT];
	uint64_t refused[METRICS_REFUSE_COUNT];
	uint64_t auth_failures[16]; /* by enum auth_reason */
	uint64_t client_errors;
	uint64_t pg_reconnects, pg_catchup_rows;
	int pg_up;
	double pg_queue_usage;
	uint64_t redis_reconnects, redis_publish_failures;
	int redis_up;
	/* Room channels (`ws:room:<room>`) Redis confirmed subscribed; room messages received. */
	int64_t bus_channels;
	uint64_t bus_received;
	uint64_t http_requests[6]; /* by status class 1xx..5xx, index 0 unused */
	/* The gate's budgets: every accepted TCP connection, from accept to close. */
	int64_t open_http, open_ws, open_addresses;
	uint64_t deadline_closes[5]; /* by enum gate_phase: closed at an absolute deadline */
	uint64_t lat_buckets[METRICS_LAT_BUCKETS]; /* notify-to-send seconds histogram */
	double lat_sum;
	uint64_t lat_count;
};

extern struct metrics metrics;
extern const double metrics_lat_bounds[METRICS_LAT_BUCKETS];
extern const char *const metrics_source_names[METRICS_SRC_COUNT];
extern const char *const metrics_close_names[METRICS_CLOSE_COUNT];
extern const char *const metrics_refuse_names[METRICS_REFUSE_COUNT];

void metrics_observe_latency(double seconds);

#endif
