/* Schema migrations embedded in the binary: applies pending ones in order inside one transaction
 * each and records them (with a checksum) in realtime.schema_migrations. Runs off the event loop,
 * from the `roomcast migrate` subcommand, so it may block. */
#ifndef ROOMCAST_MIGRATE_H
#define ROOMCAST_MIGRATE_H

#include <stdio.h>

struct migrate_file {
	const char *name; /* "001_outbox" */
	const char *up;   /* SQL text */
	const char *down; /* SQL text or NULL */
};

/* Generated at build time from migrations/ by tools/embed-sql.sh, sorted by name. */
extern const struct migrate_file migrate_files[];
extern const unsigned migrate_files_count;

/* Applies every pending migration; prints one line per applied file to out. Refuses (returns
 * a negative code) when an applied file's checksum differs from the embedded one. */
int migrate_up(const char *conninfo, FILE *out);
/* Reverts the last `steps` applied migrations with their .down.sql. */
int migrate_down(const char *conninfo, int steps, FILE *out);
/* Prints applied and pending migrations. */
int migrate_status(const char *conninfo, FILE *out);

#endif
