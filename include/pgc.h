/* One asynchronous PostgreSQL connection on the libuv loop: non-blocking connect with a
 * deadline, reconnect with jittered exponential backoff, a FIFO of queries each with its own
 * deadline, notifications, and a heartbeat that detects half-open connections. Never blocks.
 * In a --workers worker, the connections named "listener", "query" and "live" are relayed
 * through the feed process behind this same interface: the relay (pgrelay.c, a layer above)
 * plugs itself in with pgc_use_relay, so pgc does not include it. */
#ifndef ROOMCAST_PGC_H
#define ROOMCAST_PGC_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct pgc;

/* res is NULL when the query failed, timed out or the connection dropped (err says why). The
 * result is freed by pgc after the callback returns. */
typedef void (*pgc_result_fn)(void *arg, const PGresult *res, const char *err);

struct pgc_hooks {
	void (*up)(struct pgc *pc, void *arg);   /* connected (again) */
	void (*down)(struct pgc *pc, void *arg); /* lost; a reconnect is scheduled */
	void (*notify)(struct pgc *pc, const PGnotify *n, void *arg);
	void *arg;
};

/* A relay serving some pgc names through another process: covers says which; the others
 * mirror pgc's functions for one relayed connection (rl, from start; hooks run with pc). */
struct pgc_relay {
	bool (*covers)(const char *name);
	void *(*start)(struct pgc *pc, uv_loop_t *loop, const char *name,
	               const struct pgc_hooks *hooks);
	void (*stop)(void *rl); /* no hook runs after it */
	bool (*is_up)(const void *rl);
	uint64_t (*reconnects)(const void *rl);
	void (*reconnect)(void *rl, const char *why);
	int (*query)(void *rl, unsigned flags, const char *sql, int nparams,
	             const char *const *params, uint32_t timeout_ms, pgc_result_fn cb, void *arg);
};

/* Set before the first pgc_start (NULL: every pgc connects directly); relay is kept, not
 * copied, and must outlive every pgc. */
void pgc_use_relay(const struct pgc_relay *relay);

/* Starts connecting at once. conninfo is copied. name labels logs ("listener", "query"). */
struct pgc *pgc_start(uv_loop_t *loop, const char *conninfo, const char *name,
                      const struct pgc_hooks *hooks);
/* Closes the connection and fails pending queries; frees pc once its handles closed. */
void pgc_stop(struct pgc *pc);
bool pgc_is_up(const struct pgc *pc);
/* Ends a reconnect backoff now (when pc is waiting one out): another connection to the same
 * server just succeeded, so the server is evidently back. why is logged. */
void pgc_retry_now(struct pgc *pc, const char *why);
uint64_t pgc_reconnects(const struct pgc *pc);
/* Drops an up connection as if it had failed (hooks.down runs, a reconnect is scheduled): for a
 * connection that answers queries but is evidently broken otherwise. why is logged. */
void pgc_reconnect(struct pgc *pc, const char *why);

/* Queues a parameterized query (text params, text results). Returns 0, or -1 when the
 * connection is down (cb is then not called). params are copied. */
int pgc_query(struct pgc *pc, const char *sql, int nparams, const char *const *params,
              uint32_t timeout_ms, pgc_result_fn cb, void *arg);
/* Like pgc_query, but queued ahead of every ordinary query not yet sent (earlier urgent ones
 * keep their order): for work that others wait on. */
int pgc_query_first(struct pgc *pc, const char *sql, int nparams, const char *const *params,
                    uint32_t timeout_ms, pgc_result_fn cb, void *arg);

/* Query flags (pgc_query_ex, and the relay's query). */
#define PGC_URGENT 1u /* queued ahead of every ordinary query not yet sent (pgc_query_first) */
/* A read whose answer may be shared: an identical query (same SQL text and parameters) from
 * another process that is still queued, not yet sent to PostgreSQL, may answer it too (the
 * feed does, for its workers). Only for reads whose snapshot may be any one taken after the
 * ask (a query already running is never joined), and which may run twice: when the connection
 * is lost before it is answered, it is kept once for the next connection instead of failed
 * (unless it was the query past its own deadline). Like every query, its deadline counts from
 * when it is sent to PostgreSQL, not from the ask: it does not fail for waiting in a queue. */
#define PGC_SHARED 2u

/* Called when the query is handed to PostgreSQL (a direct pgc only; never for a relayed one). */
typedef void (*pgc_sent_fn)(void *arg);

/* pgc_query with flags and, for a direct pgc, a callback when it is sent (sent may be NULL;
 * it runs before cb, with the same arg). */
int pgc_query_ex(struct pgc *pc, unsigned flags, const char *sql, int nparams,
                 const char *const *params, uint32_t timeout_ms, pgc_result_fn cb, pgc_sent_fn sent,
                 void *arg);
/* pgc_query with PGC_SHARED: for replay reads (see PGC_SHARED). */
int pgc_query_shared(struct pgc *pc, const char *sql, int nparams, const char *const *params,
                     uint32_t timeout_ms, pgc_result_fn cb, void *arg);

/* Host-name lookup off the loop. PQconnectStartParams resolves host names synchronously, so
 * pgc looks each name of the conninfo's host list up with uv_getaddrinfo first and passes the
 * numeric addresses as hostaddr next to host (TLS and .pgpass still see the name). */

/* Parses conninfo (URI or key=value). On 0, *names has one entry per host of the host list:
 * the name to look up, or NULL for a socket directory or a numeric address; *names is NULL
 * (and *n 0) when nothing needs looking up (no host, only literals, or hostaddr already set).
 * Returns -1 when conninfo cannot be parsed or out of memory. Free with pgc_free_names. */
int pgc_conninfo_hosts(const char *conninfo, char ***names, size_t *n);
void pgc_free_names(char **names, size_t n);
/* Rewrites conninfo as key=value with, for each host i, one host/hostaddr/port entry per
 * address in addrs[i] (a comma list; names[i] NULL: the host as it was, empty hostaddr). A
 * host whose lookup found nothing is left out. Every other setting (target_session_attrs,
 * sslmode, user, ...) is kept. Returns a malloc'd string (it may hold a password), or NULL when
 * no host is left or out of memory. */
char *pgc_conninfo_with_addrs(const char *conninfo, char *const *names, char *const *addrs,
                              size_t n);

/* conninfo is what to hand PQconnectStartParams (only valid during the call: it may hold a
 * password and is wiped after), or NULL with why saying what failed. */
typedef void (*pgc_lookup_fn)(void *arg, const char *conninfo, const char *why);
struct pgc_lookup;
/* Looks up conninfo's host names with the two functions above and calls cb once with the
 * rewritten conninfo. Returns the running lookup, or NULL when cb has already been called
 * (nothing to look up, or every lookup failed to start). conninfo is copied; the lookup frees
 * itself after cb. For connections pgc does not manage (capture's replication connection). */
struct pgc_lookup *pgc_lookup(uv_loop_t *loop, const char *conninfo, pgc_lookup_fn cb, void *arg);
/* cb will not be called; the lookup frees itself once libuv is done with it. NULL is a no-op. */
void pgc_lookup_cancel(struct pgc_lookup *lk);

#endif
