/* A pgc that runs in a --workers worker and reaches PostgreSQL through the feed process over a
 * local socket: same queries, results, notifications and up/down hooks as a direct pgc. Used by
 * pgc.c only; callers keep using pgc.h. */
#ifndef ROOMCAST_PGRELAY_H
#define ROOMCAST_PGRELAY_H

#include "pgc.h"

struct pgrelay;

/* Set in a worker before serving: pgc_start then relays the names pgrelay_covers through the
 * feed listening at addr (abstract unix socket name). addr is copied. */
void pgrelay_use(const char *addr);
/* The pgc names the feed serves: "listener", "query" and "live". */
bool pgrelay_covers(const char *name);

/* Starts connecting to the feed; hooks run with pc. Returns NULL when out of memory. */
struct pgrelay *pgrelay_start(struct pgc *pc, uv_loop_t *loop, const char *name,
                              const struct pgc_hooks *hooks);
/* Fails pending queries and closes; rl frees itself once its handles closed. No hook runs
 * after this. */
void pgrelay_stop(struct pgrelay *rl);
bool pgrelay_is_up(const struct pgrelay *rl);
uint64_t pgrelay_reconnects(const struct pgrelay *rl);
void pgrelay_reconnect(struct pgrelay *rl, const char *why);
int pgrelay_query(struct pgrelay *rl, bool urgent, const char *sql, int nparams,
                  const char *const *params, uint32_t timeout_ms, pgc_result_fn cb, void *arg);

#endif
