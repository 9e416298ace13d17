/* Configuration: one declarative table of options that drives environment variables, `--flags`,
 * `roomcast serve --help` and validation. Owns struct config and its parsing. */
#ifndef ROOMCAST_CONFIG_H
#define ROOMCAST_CONFIG_H

#include <stdbool.h>
#include <stdio.h>

enum config_authz_mode { CONFIG_AUTHZ_CLAIMS = 0, CONFIG_AUTHZ_SQL, CONFIG_AUTHZ_HTTP };

struct config {
	long port;
	char *host;
	char *jwt_secret;
	char *jwt_algorithms;
	unsigned jwt_alg_mask; /* derived from jwt_algorithms */
	char *jwt_public_key_file;
	char *jwt_issuer;
	char *jwt_audience;
	long jwt_leeway_s;
	char *database_url;
	char *redis_addr;
	char *redis_password;
	char *ws_origins;
	char *backend_url;
	char *notify_token;
	char *notify_allow_from; /* CIDR list, validated here, parsed by http.c */
	long notify_max_bytes;
	long max_connections;
	long max_connections_per_ip;
	long max_http_connections;
	long max_http_connections_per_ip;
	long http_body_timeout_s;
	long http_idle_timeout_s;
	long max_message_size;
	long send_queue_max_bytes;
	long presence_max_members;
	char *rate_limit;
	double rate_per_s; /* derived from rate_limit */
	double rate_burst; /* derived from rate_limit */
	long ping_interval_s;
	long pong_timeout_s;
	long auth_timeout_s;
	char *token_expiry_action;
	bool token_expiry_keep;    /* derived: TOKEN_EXPIRY_ACTION=keep */
	long listen_probe_s;       /* 0: the listener is not probed */
	long trigger_check_s;      /* 0: realtime.attach_triggers() is not run */
	char *capture;             /* CAPTURE: triggers or logical */
	bool capture_logical;      /* derived: CAPTURE=logical */
	char *capture_slot;        /* validated: [a-z0-9_]{1,63} */
	char *capture_publication; /* validated: [a-z0-9_]{1,63} */
	long capture_status_interval_s;
	long outbox_retention_s;
	long recent_per_room;  /* 0: no recent-events memory */
	long recent_max_bytes; /* 0: no recent-events memory */
	char *log_level;
	char *log_format;
	char *environment;
	char *node_id;
	long workers;
	long pg_pool_size; /* with workers: the feed process's query connections */
	char *tls_cert_file;
	char *tls_key_file;
	char *authz;
	enum config_authz_mode authz_mode; /* derived from authz and the URLs */
	long header_timeout_s;
	long max_header_bytes;
	long shutdown_grace_ms;
	bool production; /* derived from environment */
};

/* Fills cfg from defaults, then the environment, then argv flags (argv[0] is the subcommand),
 * and validates. On error prints one line naming the variable to err and returns -1. On
 * `--help` prints the table to out and returns 1. Strings in cfg are malloc'd; free with
 * config_free. */
int config_load(struct config *cfg, int argc, char **argv, FILE *out, FILE *err);
void config_free(struct config *cfg);
void config_print_help(FILE *out);

/* Parses "30s", "5m", "24h", "7d" into seconds; -1 on error. */
long config_parse_duration(const char *s);
/* Parses "20/s,burst=40" (also "/m"); returns -1 on error. */
int config_parse_rate(const char *s, double *per_s, double *burst);

#endif
