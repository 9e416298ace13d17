/* The declarative option table and everything derived from it: defaults, environment, flags,
 * --help and validation. Adding an option is one row here plus one field in struct config. */
#include "config.h"
#include "auth.h"
#include "cidr.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

enum opt_type { OPT_STR, OPT_INT, OPT_DURATION };

struct opt {
	const char *env;
	enum opt_type type;
	size_t offset;
	const char *def; /* NULL: unset */
	long min, max;   /* for OPT_INT and OPT_DURATION */
	const char *help;
};

#define S(field) OPT_STR, offsetof(struct config, field)
#define I(field) OPT_INT, offsetof(struct config, field)
#define D(field) OPT_DURATION, offsetof(struct config, field)

static const struct opt opts[] = {
    {"PORT", I(port), "8080", 1, 65535, "listen port"},
    {"HOST", S(host), "0.0.0.0", 0, 0, "listen address"},
    {"JWT_SECRET", S(jwt_secret), NULL, 0, 0, "HMAC key (>= 32 bytes outside development)"},
    {"JWT_ALGORITHMS", S(jwt_algorithms), "HS256,HS384,HS512", 0, 0, "accepted alg values"},
    {"JWT_PUBLIC_KEY_FILE", S(jwt_public_key_file), NULL, 0, 0, "PEM key for RS*/ES* tokens"},
    {"JWT_ISSUER", S(jwt_issuer), NULL, 0, 0, "required iss when set"},
    {"JWT_AUDIENCE", S(jwt_audience), NULL, 0, 0, "required aud when set"},
    {"JWT_LEEWAY_S", I(jwt_leeway_s), "30", 0, 3600, "clock skew allowed on exp/nbf/iat"},
    {"DATABASE_URL", S(database_url), NULL, 0, 0, "libpq conninfo or URI"},
    {"REDIS_ADDR", S(redis_addr), NULL, 0, 0, "host:port of Redis; unset = single node"},
    {"REDIS_PASSWORD", S(redis_password), NULL, 0, 0, "Redis AUTH password"},
    {"WS_ORIGINS", S(ws_origins), NULL, 0, 0, "comma list of allowed Origins"},
    {"BACKEND_URL", S(backend_url), NULL, 0, 0, "room authorization over HTTP"},
    {"NOTIFY_TOKEN", S(notify_token), NULL, 0, 0, "shared secret for POST /api/notify"},
    {"NOTIFY_ALLOW_FROM", S(notify_allow_from), NULL, 0, 0,
     "comma list of CIDRs whose TCP peers may POST /api/notify without a credential"},
    {"NOTIFY_MAX_BYTES", I(notify_max_bytes), "65536", 64, 16 << 20, "max notify body"},
    {"MAX_CONNECTIONS", I(max_connections), "10000", 1, 10000000, "WebSocket clients"},
    {"MAX_CONNECTIONS_PER_IP", I(max_connections_per_ip), "1000", 1, 10000000,
     "WebSocket clients per address"},
    {"MAX_HTTP_CONNECTIONS", I(max_http_connections), "512", 1, 1000000,
     "connections not (yet) a WebSocket: request heads, HTTP, keep-alive"},
    {"MAX_HTTP_CONNECTIONS_PER_IP", I(max_http_connections_per_ip), "256", 1, 1000000,
     "connections not (yet) a WebSocket per address"},
    {"HTTP_BODY_TIMEOUT_S", I(http_body_timeout_s), "10", 1, 600,
     "absolute deadline for a request body and its answer, from the end of its head"},
    {"HTTP_IDLE_TIMEOUT_S", I(http_idle_timeout_s), "15", 1, 3600,
     "absolute deadline for the next complete request head on a kept-alive connection"},
    {"MAX_MESSAGE_SIZE", I(max_message_size), "8192", 64, 16 << 20, "bytes per client message"},
    {"SEND_QUEUE_MAX_BYTES", I(send_queue_max_bytes), "1048576", 1024, 1 << 30,
     "per-connection outbound budget"},
    {"PRESENCE_MAX_MEMBERS", I(presence_max_members), "1000", 1, 1000000,
     "members listed in a presence answer; larger rooms send no presence_join/leave"},
    {"RATE_LIMIT", S(rate_limit), "20/s,burst=40", 0, 0, "client messages per connection"},
    {"PING_INTERVAL_S", I(ping_interval_s), "25", 1, 3600, "server ping interval"},
    {"PONG_TIMEOUT_S", I(pong_timeout_s), "60", 2, 7200, "close a peer silent this long"},
    {"AUTH_TIMEOUT_S", I(auth_timeout_s), "10", 1, 3600, "deadline for first-frame auth"},
    {"TOKEN_EXPIRY_ACTION", S(token_expiry_action), "close", 0, 0,
     "at exp + leeway: close (4001) or keep (checked at the handshake only)"},
    {"LISTEN_PROBE_S", I(listen_probe_s), "30", 0, 3600,
     "seconds between checks that the listener hears its own NOTIFY (0: off)"},
    {"TRIGGER_CHECK_S", I(trigger_check_s), "10", 0, 3600,
     "seconds between realtime.attach_triggers() runs (0: off)"},
    {"CAPTURE", S(capture), "triggers", 0, 0,
     "how row changes become events: triggers, or logical (a replication slot read by roomcast)"},
    {"CAPTURE_SLOT", S(capture_slot), "roomcast", 0, 0,
     "logical replication slot (CAPTURE=logical)"},
    {"CAPTURE_PUBLICATION", S(capture_publication), "realtime_capture", 0, 0,
     "publication of the watched tables (CAPTURE=logical)"},
    {"CAPTURE_STATUS_INTERVAL_S", I(capture_status_interval_s), "5", 1, 30,
     "seconds between standby status updates and slot checks (CAPTURE=logical)"},
    {"OUTBOX_RETENTION", D(outbox_retention_s), "24h", 60, 365L * 86400, "replay window"},
    {"RECENT_PER_ROOM", I(recent_per_room), "256", 0, 100000,
     "outbox events remembered per room to answer joins with since without a query (0: off)"},
    {"RECENT_MAX_BYTES", I(recent_max_bytes), "33554432", 0, 1L << 40,
     "memory for those events, all rooms together (0: off)"},
    {"LOG_LEVEL", S(log_level), "info", 0, 0, "debug, info, warn or error"},
    {"LOG_FORMAT", S(log_format), "json", 0, 0, "json or text"},
    {"ENVIRONMENT", S(environment), "development", 0, 0, "development or production"},
    {"NODE_ID", S(node_id), NULL, 0, 0, "replica name (default hostname-pid)"},
    {"WORKERS", I(workers), "1", 1, 64, "processes sharing the port"},
    {"PG_POOL_SIZE", I(pg_pool_size), "2", 1, 16,
     "query connections the feed process holds for all workers (with WORKERS > 1)"},
    {"TLS_CERT_FILE", S(tls_cert_file), NULL, 0, 0, "PEM certificate for wss/https"},
    {"TLS_KEY_FILE", S(tls_key_file), NULL, 0, 0, "PEM key for wss/https"},
    {"AUTHZ", S(authz), NULL, 0, 0, "claims, sql or http (default: sql with DATABASE_URL)"},
    {"HEADER_TIMEOUT_S", I(header_timeout_s), "10", 1, 600, "deadline for a request head"},
    {"MAX_HEADER_BYTES", I(max_header_bytes), "8192", 1024, 65536, "request head size"},
    {"SHUTDOWN_GRACE_MS", I(shutdown_grace_ms), "3000", 0, 4500, "flush time on SIGTERM"},
};

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

/* "JWT_SECRET" -> "--jwt-secret" into buf. */
static void flag_name(const char *env, char *buf, size_t cap)
{
	size_t i = 0;
	buf[i++] = '-';
	buf[i++] = '-';
	for (; *env && i + 1 < cap; env++)
		buf[i++] = *env == '_' ? '-' : (char)tolower((unsigned char)*env);
	buf[i] = '\0';
}

long config_parse_duration(const char *s)
{
	char *end;
	long v, mult;

	if (!s || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end[0] == '\0' || end[1] != '\0')
		return -1;
	switch (*end) {
	case 's':
		mult = 1;
		break;
	case 'm':
		mult = 60;
		break;
	case 'h':
		mult = 3600;
		break;
	case 'd':
		mult = 86400;
		break;
	default:
		return -1;
	}
	if (v > 100L * 365 * 86400 / mult)
		return -1;
	return v * mult;
}

int config_parse_rate(const char *s, double *per_s, double *burst)
{
	char unit[8] = "", rest[32] = "";
	double n = 0, b = 0;
	int consumed = 0;

	if (sscanf(s, "%lf/%7[a-z]%n", &n, unit, &consumed) < 2 || n <= 0 || !isfinite(n))
		return -1;
	if (!strcmp(unit, "s"))
		*per_s = n;
	else if (!strcmp(unit, "m"))
		*per_s = n / 60.0;
	else
		return -1;
	s += consumed;
	if (*s == '\0') {
		*burst = n * 2;
		return 0;
	}
	if (sscanf(s, ",burst=%lf%31s", &b, rest) != 1 || b < 1 || !isfinite(b))
		return -1;
	*burst = b;
	return 0;
}

static int set_value(struct config *cfg, const struct opt *o, const char *val, FILE *err)
{
	char *base = (char *)cfg + o->offset;

	if (o->type == OPT_STR) {
		char **p = (char **)base;
		free(*p);
		*p = val ? strdup(val) : NULL;
		return 0;
	}
	if (o->type == OPT_INT) {
		char *end;
		long v;
		errno = 0;
		v = strtol(val, &end, 10);
		if (errno || !*val || *end || v < o->min || v > o->max) {
			fprintf(err,
			        "roomcast: invalid %s=%s: expected an integer from %ld to %ld\n",
			        o->env, val, o->min, o->max);
			return -1;
		}
		*(long *)base = v;
		return 0;
	}
	{
		long v = config_parse_duration(val);
		if (v < o->min || v > o->max) {
			fprintf(
			    err,
			    "roomcast: invalid %s=%s: expected a duration like 30s, 15m, 24h or 7d "
			    "(at least %lds)\n",
			    o->env, val, o->min);
			return -1;
		}
		*(long *)base = v;
	}
	return 0;
}

void config_print_help(FILE *out)
{
	char flag[64];
	fprintf(out, "usage: roomcast serve [--flag value ...]\n\n"
	             "Every flag is also an environment variable (flag wins).\n\n");
	for (size_t i = 0; i < NOPTS; i++) {
		flag_name(opts[i].env, flag, sizeof(flag));
		fprintf(out, "  %-26s %-24s %s (default: %s)\n", flag, opts[i].env, opts[i].help,
		        opts[i].def ? opts[i].def : "unset");
	}
}

static bool is_set(const char *s)
{
	return s && *s;
}

/* Cross-field checks and derived values; one line naming the variable on failure. */
static int validate(struct config *cfg, FILE *err)
{
	cfg->production = !strcasecmp(cfg->environment, "production");
	if (!cfg->production && strcasecmp(cfg->environment, "development")) {
		fprintf(err,
		        "roomcast: invalid ENVIRONMENT=%s: expected development or production\n",
		        cfg->environment);
		return -1;
	}
	cfg->capture_logical = !strcasecmp(cfg->capture, "logical");
	if (!cfg->capture_logical && strcasecmp(cfg->capture, "triggers")) {
		fprintf(err, "roomcast: invalid CAPTURE=%s: expected triggers or logical\n",
		        cfg->capture);
		return -1;
	}
	if (cfg->capture_logical && !is_set(cfg->database_url)) {
		fprintf(err, "roomcast: CAPTURE=logical needs DATABASE_URL\n");
		return -1;
	}
	if (strlen(cfg->capture_slot) < 1 || strlen(cfg->capture_slot) > 63 ||
	    strspn(cfg->capture_slot, "abcdefghijklmnopqrstuvwxyz0123456789_") !=
	        strlen(cfg->capture_slot)) {
		fprintf(
		    err,
		    "roomcast: invalid CAPTURE_SLOT=%s: 1-63 of lower-case letters, digits, _\n",
		    cfg->capture_slot);
		return -1;
	}
	if (strlen(cfg->capture_publication) < 1 || strlen(cfg->capture_publication) > 63 ||
	    strspn(cfg->capture_publication, "abcdefghijklmnopqrstuvwxyz0123456789_") !=
	        strlen(cfg->capture_publication)) {
		fprintf(err,
		        "roomcast: invalid CAPTURE_PUBLICATION=%s: 1-63 of lower-case letters, "
		        "digits, _\n",
		        cfg->capture_publication);
		return -1;
	}
	if (strcasecmp(cfg->log_format, "json") && strcasecmp(cfg->log_format, "text")) {
		fprintf(err, "roomcast: invalid LOG_FORMAT=%s: expected json or text\n",
		        cfg->log_format);
		return -1;
	}
	if (strcasecmp(cfg->log_level, "debug") && strcasecmp(cfg->log_level, "info") &&
	    strcasecmp(cfg->log_level, "warn") && strcasecmp(cfg->log_level, "error")) {
		fprintf(err,
		        "roomcast: invalid LOG_LEVEL=%s: expected debug, info, warn or error\n",
		        cfg->log_level);
		return -1;
	}
	if (auth_algorithms_parse(cfg->jwt_algorithms, &cfg->jwt_alg_mask) < 0) {
		fprintf(
		    err,
		    "roomcast: invalid JWT_ALGORITHMS=%s: expected a comma list of HS256, HS384, "
		    "HS512, RS256, RS384, RS512, ES256, ES384, ES512\n",
		    cfg->jwt_algorithms);
		return -1;
	}
	if (!is_set(cfg->jwt_secret) && !is_set(cfg->jwt_public_key_file)) {
		fprintf(err, "roomcast: JWT_SECRET is required (or JWT_PUBLIC_KEY_FILE)\n");
		return -1;
	}
	if (is_set(cfg->jwt_secret) && strlen(cfg->jwt_secret) < 32 && cfg->production) {
		fprintf(err,
		        "roomcast: invalid JWT_SECRET: shorter than 32 bytes is refused outside "
		        "ENVIRONMENT=development\n");
		return -1;
	}
	if (is_set(cfg->notify_token) && strlen(cfg->notify_token) < 32 && cfg->production) {
		fprintf(err,
		        "roomcast: invalid NOTIFY_TOKEN: shorter than 32 bytes is refused when "
		        "ENVIRONMENT=production\n");
		return -1;
	}
	{
		struct cidr_list l;
		if (cidr_list_parse(cfg->notify_allow_from, &l) < 0) {
			fprintf(err,
			        "roomcast: invalid NOTIFY_ALLOW_FROM=%s: expected a comma list of "
			        "CIDRs like 10.0.0.0/8,::1/128\n",
			        cfg->notify_allow_from);
			return -1;
		}
		cidr_list_free(&l);
	}
	if (config_parse_rate(cfg->rate_limit, &cfg->rate_per_s, &cfg->rate_burst) < 0) {
		fprintf(err, "roomcast: invalid RATE_LIMIT=%s: expected like 20/s,burst=40\n",
		        cfg->rate_limit);
		return -1;
	}
	if (!strcasecmp(cfg->token_expiry_action, "keep"))
		cfg->token_expiry_keep = true;
	else if (strcasecmp(cfg->token_expiry_action, "close")) {
		fprintf(err, "roomcast: invalid TOKEN_EXPIRY_ACTION=%s: expected close or keep\n",
		        cfg->token_expiry_action);
		return -1;
	}
	if (cfg->pong_timeout_s <= cfg->ping_interval_s) {
		fprintf(err,
		        "roomcast: invalid PONG_TIMEOUT_S=%ld: must exceed PING_INTERVAL_S=%ld\n",
		        cfg->pong_timeout_s, cfg->ping_interval_s);
		return -1;
	}
	if (is_set(cfg->tls_cert_file) != is_set(cfg->tls_key_file)) {
		fprintf(err, "roomcast: invalid %s: TLS_CERT_FILE and TLS_KEY_FILE go together\n",
		        is_set(cfg->tls_cert_file) ? "TLS_KEY_FILE" : "TLS_CERT_FILE");
		return -1;
	}
	if (is_set(cfg->tls_cert_file) &&
	    (access(cfg->tls_cert_file, R_OK) || access(cfg->tls_key_file, R_OK))) {
		fprintf(err, "roomcast: invalid %s: cannot read the file\n",
		        access(cfg->tls_cert_file, R_OK) ? "TLS_CERT_FILE" : "TLS_KEY_FILE");
		return -1;
	}
	if (cfg->workers > 1 && !is_set(cfg->redis_addr)) {
		fprintf(err,
		        "roomcast: invalid WORKERS=%ld: more than one worker needs REDIS_ADDR\n",
		        cfg->workers);
		return -1;
	}
	if (cfg->production && !is_set(cfg->ws_origins)) {
		fprintf(err, "roomcast: WS_ORIGINS is required when ENVIRONMENT=production\n");
		return -1;
	}
	if (!is_set(cfg->authz))
		cfg->authz_mode = is_set(cfg->backend_url)    ? CONFIG_AUTHZ_HTTP
		                  : is_set(cfg->database_url) ? CONFIG_AUTHZ_SQL
		                                              : CONFIG_AUTHZ_CLAIMS;
	else if (!strcasecmp(cfg->authz, "claims"))
		cfg->authz_mode = CONFIG_AUTHZ_CLAIMS;
	else if (!strcasecmp(cfg->authz, "sql") && is_set(cfg->database_url))
		cfg->authz_mode = CONFIG_AUTHZ_SQL;
	else if (!strcasecmp(cfg->authz, "http") && is_set(cfg->backend_url))
		cfg->authz_mode = CONFIG_AUTHZ_HTTP;
	else {
		fprintf(err,
		        "roomcast: invalid AUTHZ=%s: expected claims, sql (needs DATABASE_URL) or "
		        "http (needs BACKEND_URL)\n",
		        cfg->authz);
		return -1;
	}
	if (!is_set(cfg->node_id)) {
		char host[64] = "node", buf[96];
		gethostname(host, sizeof(host) - 1);
		snprintf(buf, sizeof(buf), "%s-%d", host, (int)getpid());
		free(cfg->node_id);
		cfg->node_id = strdup(buf);
	}
	return 0;
}

int config_load(struct config *cfg, int argc, char **argv, FILE *out, FILE *err)
{
	char flag[64];

	memset(cfg, 0, sizeof(*cfg));
	for (size_t i = 0; i < NOPTS; i++) {
		const char *env = getenv(opts[i].env);
		if (opts[i].def && set_value(cfg, &opts[i], opts[i].def, err) < 0)
			return -1;
		if (env && *env && set_value(cfg, &opts[i], env, err) < 0)
			return -1;
	}
	for (int a = 1; a < argc; a++) {
		const char *arg = argv[a], *val = NULL, *eq;
		size_t name_len;
		size_t i;

		if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
			config_print_help(out);
			return 1;
		}
		eq = strchr(arg, '=');
		name_len = eq ? (size_t)(eq - arg) : strlen(arg);
		for (i = 0; i < NOPTS; i++) {
			flag_name(opts[i].env, flag, sizeof(flag));
			if (strlen(flag) == name_len && !strncmp(flag, arg, name_len))
				break;
		}
		if (i == NOPTS) {
			fprintf(err, "roomcast: unknown flag %s (see roomcast serve --help)\n",
			        arg);
			return -1;
		}
		if (eq)
			val = eq + 1;
		else if (a + 1 < argc)
			val = argv[++a];
		else {
			fprintf(err, "roomcast: flag %s needs a value\n", flag);
			return -1;
		}
		if (set_value(cfg, &opts[i], val, err) < 0)
			return -1;
	}
	return validate(cfg, err);
}

void config_free(struct config *cfg)
{
	for (size_t i = 0; i < NOPTS; i++)
		if (opts[i].type == OPT_STR)
			free(*(char **)((char *)cfg + opts[i].offset));
	memset(cfg, 0, sizeof(*cfg));
}
