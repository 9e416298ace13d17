/* Entry point: picks the subcommand (serve, migrate, token, version) and wires the modules
 * together. No logic of its own beyond argument dispatch. */
#include "auth.h"
#include "capture.h"
#include "config.h"
#include "log.h"
#include "migrate.h"
#include "server.h"
#include "workers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(FILE *out)
{
	fprintf(out, "usage: roomcast <command> [options]\n\n"
	             "commands:\n"
	             "  serve      run the server (roomcast serve --help lists every setting)\n"
	             "  migrate    apply database migrations: migrate [up | down N | status]\n"
	             "  token      mint a development token: token --sub ID [--role R]\n"
	             "             [--seller-id N] [--client-id N] [--rooms a,b] [--ttl 1h]\n"
	             "  version    print the version\n");
}

static void setup_logging(const struct config *cfg)
{
	enum log_level lvl = LOG_INFO;
	log_level_parse(cfg->log_level, &lvl);
	log_init(lvl, strcmp(cfg->log_format, "text") ? LOG_FORMAT_JSON : LOG_FORMAT_TEXT,
	         cfg->node_id);
}

/* One serving process; with --workers each child runs this under its own NODE_ID. */
static int serve_one(struct config *cfg)
{
	setup_logging(cfg);
	return server_run(cfg);
}

static int cmd_serve(int argc, char **argv)
{
	struct config cfg;
	int rc = config_load(&cfg, argc, argv, stdout, stderr);

	if (rc) {
		config_free(&cfg);
		return rc > 0 ? 0 : 2;
	}
	setup_logging(&cfg);
	rc = cfg.workers > 1 ? workers_run(&cfg, serve_one) : server_run(&cfg);
	config_free(&cfg);
	return rc;
}

static int cmd_migrate(int argc, char **argv)
{
	const char *url = getenv("DATABASE_URL");
	const char *action = "up";
	int steps = 1;

	for (int i = 1; i < argc; i++) {
		if (!strncmp(argv[i], "--database-url=", 15))
			url = argv[i] + 15;
		else if (!strcmp(argv[i], "--database-url") && i + 1 < argc)
			url = argv[++i];
		else if (!strcmp(argv[i], "up") || !strcmp(argv[i], "status"))
			action = argv[i];
		else if (!strcmp(argv[i], "down")) {
			action = "down";
			if (i + 1 < argc && atoi(argv[i + 1]) > 0)
				steps = atoi(argv[++i]);
		} else {
			fprintf(stderr, "roomcast: migrate: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	if (!url || !*url) {
		fprintf(stderr, "roomcast: DATABASE_URL is required for migrate\n");
		return 2;
	}
	log_init(LOG_INFO, LOG_FORMAT_TEXT, "migrate");
	if (!strcmp(action, "status"))
		return migrate_status(url, stdout) ? 1 : 0;
	if (!strcmp(action, "down"))
		return migrate_down(url, steps, stdout) ? 1 : 0;
	if (migrate_up(url, stdout))
		return 1;
	/* CAPTURE set: the database is prepared for it (see docs/database.md#logical-capture). */
	if (getenv("CAPTURE") && *getenv("CAPTURE")) {
		const char *mode = getenv("CAPTURE");
		const char *slot = getenv("CAPTURE_SLOT"), *pub = getenv("CAPTURE_PUBLICATION");
		if (strcmp(mode, "logical") && strcmp(mode, "triggers")) {
			fprintf(stderr,
			        "roomcast: invalid CAPTURE=%s: expected triggers or logical\n",
			        mode);
			return 2;
		}
		if (capture_prepare(url, mode, slot && *slot ? slot : "roomcast",
		                    pub && *pub ? pub : "realtime_capture", stdout))
			return 1;
	}
	return 0;
}

static long parse_ttl(const char *s)
{
	return config_parse_duration(s);
}

static int cmd_token(int argc, char **argv)
{
	struct auth_mint m;
	struct auth_config ac;
	struct auth *a;
	const char *secret = getenv("JWT_SECRET");
	char err[256];
	char *tok;

	memset(&m, 0, sizeof(m));
	m.ttl_s = 3600;
	m.issuer = getenv("JWT_ISSUER");
	m.audience = getenv("JWT_AUDIENCE");
	for (int i = 1; i < argc; i++) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!v) {
			fprintf(stderr, "roomcast: token: %s needs a value\n", argv[i]);
			return 2;
		}
		if (!strcmp(argv[i], "--sub"))
			m.sub = v;
		else if (!strcmp(argv[i], "--role"))
			m.role = v;
		else if (!strcmp(argv[i], "--seller-id"))
			m.seller_id = v;
		else if (!strcmp(argv[i], "--client-id"))
			m.client_id = v;
		else if (!strcmp(argv[i], "--rooms"))
			m.rooms = v;
		else if (!strcmp(argv[i], "--secret"))
			secret = v;
		else if (!strcmp(argv[i], "--ttl")) {
			m.ttl_s = parse_ttl(v);
			if (m.ttl_s < 0) {
				fprintf(stderr,
				        "roomcast: token: invalid --ttl %s (like 30s, 1h)\n", v);
				return 2;
			}
		} else {
			fprintf(stderr, "roomcast: token: unknown argument %s\n", argv[i]);
			return 2;
		}
		i++;
	}
	if (!m.sub) {
		fprintf(stderr, "roomcast: token: --sub is required\n");
		return 2;
	}
	if (!secret || !*secret) {
		fprintf(stderr, "roomcast: token: JWT_SECRET is required\n");
		return 2;
	}
	memset(&ac, 0, sizeof(ac));
	ac.secret = (const unsigned char *)secret;
	ac.secret_len = strlen(secret);
	ac.algorithms = AUTH_ALG_HS256;
	a = auth_new(&ac, err, sizeof(err));
	if (!a) {
		fprintf(stderr, "roomcast: token: %s\n", err);
		return 2;
	}
	m.now = time(NULL);
	tok = auth_mint_token(a, &m);
	auth_free(a);
	if (!tok) {
		fprintf(stderr, "roomcast: token: auth_mint_token failed\n");
		return 1;
	}
	printf("%s\n", tok);
	free(tok);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "serve"))
		return cmd_serve(argc - 1, argv + 1);
	if (!strcmp(argv[1], "migrate"))
		return cmd_migrate(argc - 1, argv + 1);
	if (!strcmp(argv[1], "token"))
		return cmd_token(argc - 1, argv + 1);
	if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
		printf("roomcast %s\n", SERVER_VERSION);
		return 0;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "roomcast: unknown command %s\n", argv[1]);
	usage(stderr);
	return 2;
}
