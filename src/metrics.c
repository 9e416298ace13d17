/* Storage for the process-wide metrics and the latency histogram's bucket bounds. */
#include "metrics.h"

struct metrics metrics;

const double metrics_lat_bounds[METRICS_LAT_BUCKETS] = {
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5};
const char *const metrics_source_names[METRICS_SRC_COUNT] = {"db",    "notify", "broadcast",
                                                             "redis", "listen", "live"};
const char *const metrics_close_names[METRICS_CLOSE_COUNT] = {
    "normal",    "shutdown",      "policy",     "too_big", "token",
    "forbidden", "slow_consumer", "rate_limit", "peer",    "timeout"};
const char *const metrics_refuse_names[METRICS_REFUSE_COUNT] = {
    "unauthorized", "origin", "capacity", "per_ip", "not_found", "bad_request", "header_timeout"};

void metrics_observe_latency(double s)
{
	for (int i = 0; i < METRICS_LAT_BUCKETS; i++)
		if (s <= metrics_lat_bounds[i])
			metrics.lat_buckets[i]++;
	metrics.lat_sum += s;
	metrics.lat_count++;
}
