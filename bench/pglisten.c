/* bench/pglisten: PostgreSQL's own floor for commit-to-client latency. A raw libpq client that
 * LISTENs on realtime_events and times every notification against the intended send time the
 * load generator embedded in the event ("_t", CLOCK_MONOTONIC ns), in the same histogram.
 * Usage: pglisten CONNINFO [--events N] [--duration S] [--json FILE]; SIGTERM ends it early. */
#include "hist.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
	g_stop = 1;
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The number after "key": in a JSON text, whatever the spacing (jsonb writes "_t": 1). */
static bool find_num(const char *s, const char *key, uint64_t *out)
{
	const char *p = strstr(s, key);
	uint64_t v = 0;

	if (!p)
		return false;
	p += strlen(key);
	while (*p == ' ' || *p == ':')
		p++;
	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9')
		v = v * 10 + (uint64_t)(*p++ - '0');
	*out = v;
	return true;
}

int main(int argc, char **argv)
{
	const char *conninfo = NULL, *json = NULL;
	long want = 0;
	double duration = 0;
	struct hist h;
	uint64_t start, other = 0;
	PGconn *pg;
	PGresult *res;
	FILE *out = stdout;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--events") && i + 1 < argc)
			want = atol(argv[++i]);
		else if (!strcmp(argv[i], "--duration") && i + 1 < argc)
			duration = atof(argv[++i]);
		else if (!strcmp(argv[i], "--json") && i + 1 < argc)
			json = argv[++i];
		else if (argv[i][0] != '-' && !conninfo)
			conninfo = argv[i];
		else {
			fprintf(stderr, "usage: pglisten CONNINFO [--events N] [--duration S] "
			                "[--json FILE]\n");
			return 2;
		}
	}
	if (!conninfo) {
		fprintf(stderr, "pglisten: CONNINFO is required\n");
		return 2;
	}
	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	hist_init(&h);
	pg = PQconnectdb(conninfo);
	if (PQstatus(pg) != CONNECTION_OK) {
		fprintf(stderr, "pglisten: %s", PQerrorMessage(pg));
		return 1;
	}
	res = PQexec(pg, "LISTEN realtime_events");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		fprintf(stderr, "pglisten: LISTEN: %s", PQerrorMessage(pg));
		return 1;
	}
	PQclear(res);
	/* The orchestrator waits for this line before it starts the senders. */
	fprintf(stderr, "pglisten: listening\n");
	start = now_ns();
	while (!g_stop && (!want || (long)h.count < want) &&
	       (duration <= 0 || (double)(now_ns() - start) / 1e9 < duration)) {
		struct pollfd pfd = {.fd = PQsocket(pg), .events = POLLIN};
		PGnotify *n;

		if (poll(&pfd, 1, 100) < 0 && errno != EINTR)
			break;
		if (!PQconsumeInput(pg)) {
			fprintf(stderr, "pglisten: %s", PQerrorMessage(pg));
			break;
		}
		while ((n = PQnotifies(pg))) {
			uint64_t t, now = now_ns();
			if (find_num(n->extra, "\"_t\"", &t)) {
				hist_add(&h, now > t ? now - t : 0);
			} else {
				other++;
			}
			PQfreemem(n);
		}
	}
	PQfinish(pg);
	if (json && !(out = fopen(json, "w"))) {
		perror(json);
		return 1;
	}
	fprintf(out, "{\"received\":%llu,\"other\":%llu,\"latency\":", (unsigned long long)h.count,
	        (unsigned long long)other);
	hist_json(out, &h);
	fprintf(out, "}\n");
	if (out != stdout)
		fclose(out);
	return 0;
}
