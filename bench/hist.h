/* A log-linear latency histogram in the style of HdrHistogram, shared by bench/loadgen.c and
 * bench/pglisten.c: values in nanoseconds, exact below 256 ns, then 128 buckets per power of
 * two (at most 0.8 % relative error), fixed size so processes can merge them by adding counts. */
#ifndef ROOMCAST_BENCH_HIST_H
#define ROOMCAST_BENCH_HIST_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define HIST_SUB_BITS 8
#define HIST_SUB      (1u << HIST_SUB_BITS)
#define HIST_HALF     (HIST_SUB / 2)
#define HIST_BUCKETS  (HIST_SUB + (64 - HIST_SUB_BITS) * HIST_HALF)

struct hist {
	uint64_t count;
	uint64_t max;
	uint64_t min;
	double sum;
	uint64_t b[HIST_BUCKETS];
};

static inline void hist_init(struct hist *h)
{
	memset(h, 0, sizeof(*h));
	h->min = UINT64_MAX;
}

static inline unsigned hist_index(uint64_t v)
{
	unsigned msb;

	if (v < HIST_SUB)
		return (unsigned)v;
	msb = 63u - (unsigned)__builtin_clzll(v);
	/* The top HIST_SUB_BITS bits of v, in [HIST_HALF, HIST_SUB). */
	return HIST_SUB + (msb - HIST_SUB_BITS) * HIST_HALF +
	       (unsigned)(v >> (msb - HIST_SUB_BITS + 1)) - HIST_HALF;
}

/* The middle of bucket i: what a percentile that falls in it reports. */
static inline uint64_t hist_value(unsigned i)
{
	unsigned octave, m;

	if (i < HIST_SUB)
		return i;
	octave = (i - HIST_SUB) / HIST_HALF;
	m = (i - HIST_SUB) % HIST_HALF + HIST_HALF;
	return ((uint64_t)m << (octave + 1)) + ((1ull << (octave + 1)) >> 1);
}

static inline void hist_add(struct hist *h, uint64_t v)
{
	h->b[hist_index(v)]++;
	h->count++;
	h->sum += (double)v;
	if (v > h->max)
		h->max = v;
	if (v < h->min)
		h->min = v;
}

static inline void hist_merge(struct hist *into, const struct hist *from)
{
	for (unsigned i = 0; i < HIST_BUCKETS; i++)
		into->b[i] += from->b[i];
	into->count += from->count;
	into->sum += from->sum;
	if (from->max > into->max)
		into->max = from->max;
	if (from->min < into->min)
		into->min = from->min;
}

/* The value at quantile q (0..1); the maximum itself for q = 1. */
static inline uint64_t hist_quantile(const struct hist *h, double q)
{
	uint64_t want, seen = 0;

	if (!h->count)
		return 0;
	if (q >= 1.0)
		return h->max;
	want = (uint64_t)(q * (double)h->count + 0.5);
	if (want < 1)
		want = 1;
	for (unsigned i = 0; i < HIST_BUCKETS; i++) {
		seen += h->b[i];
		if (seen >= want) {
			uint64_t v = hist_value(i);
			return v > h->max ? h->max : v;
		}
	}
	return h->max;
}

/* {"count":…,"mean_us":…,"p50_us":…,"p90_us":…,"p99_us":…,"p999_us":…,"max_us":…} */
static inline void hist_json(FILE *out, const struct hist *h)
{
	fprintf(out,
	        "{\"count\":%llu,\"mean_us\":%.1f,\"min_us\":%.1f,\"p50_us\":%.1f,\"p90_us\":%.1f,"
	        "\"p99_us\":%.1f,\"p999_us\":%.1f,\"max_us\":%.1f}",
	        (unsigned long long)h->count, h->count ? h->sum / (double)h->count / 1e3 : 0.0,
	        h->count ? (double)h->min / 1e3 : 0.0, (double)hist_quantile(h, 0.5) / 1e3,
	        (double)hist_quantile(h, 0.9) / 1e3, (double)hist_quantile(h, 0.99) / 1e3,
	        (double)hist_quantile(h, 0.999) / 1e3, (double)h->max / 1e3);
}

#endif
