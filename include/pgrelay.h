/* A pgc that runs in a --workers worker and reaches PostgreSQL through the feed process over a
 * local socket: same queries, results, notifications and up/down hooks as a direct pgc. It sits
 * above pgc and plugs itself in (pgc_use_relay); callers keep using pgc.h. */
#ifndef ROOMCAST_PGRELAY_H
#define ROOMCAST_PGRELAY_H

struct pgrelay;

/* Set in a worker before serving: pgc_start then relays the connections named "listener",
 * "query" and "live" through the feed listening at addr (abstract unix socket name; copied).
 * An empty addr turns the relay off. */
void pgrelay_use(const char *addr);

#endif
