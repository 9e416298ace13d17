/* Wires the loop: libuv owns it, lws runs on it as a foreign loop, the gate accepts sockets and
 * hands them to lws, and this file's protocol callback routes lws events to the connection,
 * session and HTTP modules. Also signals, the reaper and the shutdown sequence. */
#include "server.h"
#include "assets.h"
#include "auth.h"
#include "authz.h"
#include "bus.h"
#include "capture.h"
#include "cluster.h"
#include "conn.h"
#include "presence.h"
#include "gate.h"
#include "http.h"
#include "liveroom.h"
#include "log.h"
#include "metrics.h"
#include "pgl.h"
#include "proto.h"
#include "router.h"
#include "session.h"

#include <errno.h>
#include <libwebsockets.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

enum server_state { SRV_STARTING = 0, SRV_RUNNING, SRV_DRAINING, SRV_STOPPING };

static struct config *g_cfg;
static struct auth *g_auth;
static uv_loop_t g_loop;
static struct lws_context *g_ctx;
static struct lws_vhost *g_vhost;
static uv_signal_t g_sigterm, g_sigint;
static uv_check_t g_reaper;
static uv_timer_t g_drain_timer;
static uv_timer_t g_watchdog;
static uint64_t g_drain_started;
static enum server_state g_state;

static void set_state(enum server_state s)
{
	static const char *names[] = {"starting", "running", "draining", "stopping"};
	log_info("server state", "from", names[g_state], "to", names[s]);
	g_state = s;
}

/* pgl's outbox events go down the one routing path. */
static void deliver_db_event(const struct pgl_event *e)
{
	struct router_event ev = {.id_num = e->id_num,
	                          .id_raw = e->id_raw,
	                          .event = e->event,
	                          .rooms = e->rooms,
	                          .nrooms = e->nrooms,
	                          .ts = e->ts,
	                          .data_raw = e->data_raw,
	                          .meta_raw = e->meta_raw,
	                          .born_ns = e->born_ns,
	                          .src = METRICS_SRC_DB};
	router_event(&ev);
}

/* ---- WebSocket ---- */

static bool g_tls;

/* Where a wsi's objects are: lws allocates no per-session data for us (per_session_data_size
 * 0). The gate ticket is the wsi's opaque user data from LWS_CALLBACK_SERVER_NEW_CLIENT_
 * INSTANTIATED (it holds the HTTP exchange slot, and the connection from admission on) until
 * the WebSocket is established; from then the ticket is freed and the connection is the
 * wsi's user pointer (lws_set_wsi_user: lws neither allocates nor frees it), so an idle client
 * costs no ticket and no per-session block. */
static struct conn *conn_of(struct lws *wsi, void *user)
{
	struct gate_ticket *t;

	if (user || !wsi)
		return user;
	t = lws_get_opaque_user_data(wsi);
	return t ? t->conn : NULL;
}

/* Creates the connection for an admitted upgrade; takes the ticket's identity. The ticket
 * keeps the connection until LWS_CALLBACK_ESTABLISHED. */
static int attach_conn(struct lws *wsi, struct gate_ticket *t)
{
	struct conn *c = conn_new(wsi, t->ip, t->batch);

	if (!c)
		return 1;
	if (!session_new(c, t->authenticated ? &t->ident : NULL,
	                 t->format == GATE_FORMAT_TYPED      ? 1
	                 : t->format == GATE_FORMAT_ENVELOPE ? 2
	                                                     : 0)) {
		conn_detach(c);
		return 1;
	}
	if (t->authenticated)
		c->state = CONN_OPEN; /* session_open finishes the transition */
	t->conn = c;
	return 0;
}

/* The wsi's connection goes: detached, and its WebSocket slot given back unless a ticket
 * still holds it (the handshake did not finish; the ticket releases it). */
static void detach(struct lws *wsi, void *user)
{
	struct gate_ticket *t = lws_get_opaque_user_data(wsi);
	struct conn *c = conn_of(wsi, user);
	const char *ip;

	if (!c)
		return;
	ip = c->ip;
	c->ip = NULL;
	conn_detach(c);
	if (t)
		t->conn = NULL;
	else {
		lws_set_wsi_user(wsi, NULL);
		if (ip)
			gate_ws_release(ip);
	}
}

static int on_receive(struct lws *wsi, struct conn *c, const char *in, size_t len)
{
	bool complete = lws_is_final_fragment(wsi) && !lws_remaining_packet_payload(wsi);

	if (!conn_alive(c))
		return 0;
	if (conn_rx_len(c) + len > (size_t)g_cfg->max_message_size) {
		metrics.closes[METRICS_CLOSE_TOO_BIG]++;
		lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
		                 (unsigned char *)"message too big", 15);
		return -1;
	}
	if (lws_frame_is_binary(wsi)) {
		/* Not buffered, but counted: the size limit holds for binary messages too. */
		c->rx_skipped += len;
		if (c->rx_skipped > (size_t)g_cfg->max_message_size) {
			metrics.closes[METRICS_CLOSE_TOO_BIG]++;
			lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE,
			                 (unsigned char *)"message too big", 15);
			return -1;
		}
		if (complete) {
			c->rx_skipped = 0;
			conn_reply(c, proto_error(PROTO_BAD_JSON, "binary frames are not supported",
			                          NULL));
		}
		return 0;
	}
	/* The common case, a whole message in one callback, is parsed in place. */
	if (complete && !conn_rx_len(c)) {
		session_message(c, in, len);
		return 0;
	}
	if (conn_rx_put(c, in, len) < 0)
		return -1;
	if (complete) {
		session_message(c, c->rx->data, c->rx->len);
		/* Release the assembly buffer: idle connections should not keep it. */
		conn_rx_clear(c);
	}
	return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
                    size_t len)
{
	struct conn *c = conn_of(wsi, user);

	switch (reason) {
	case LWS_CALLBACK_SERVER_NEW_CLIENT_INSTANTIATED: {
		/* Every connection lws gets: the gate's hand-off (its ticket is claimed inside
		 * the adopt call) or, with TLS, one lws accepted itself. The ticket rides on the
		 * wsi from here to LWS_CALLBACK_WSI_DESTROY. */
		struct gate_ticket *t = g_tls ? gate_open_lws(wsi) : gate_ticket_claim();
		if (!t)
			return -1;
		lws_set_opaque_user_data(wsi, t);
		gate_ticket_bind(t, wsi);
		return 0;
	}
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
		struct gate_ticket *t = lws_get_opaque_user_data(wsi);
		if (!t || g_state != SRV_RUNNING)
			return 1;
		/* With TLS, lws read the head itself and the admission checks run here. */
		if (g_tls && !t->ws)
			return gate_admit_lws(wsi, t) ? 1 : attach_conn(wsi, t);
		/* Plain HTTP: only upgrades the gate admitted; one arriving later on a kept-alive
		 * connection bypassed the gate and is refused. */
		if (!t->ws || t->phase != GATE_UPGRADE)
			return 1;
		return attach_conn(wsi, t);
	}
	case LWS_CALLBACK_ESTABLISHED: {
		struct gate_ticket *t = lws_get_opaque_user_data(wsi);
		if (!c || !t)
			return -1;
		/* From here the connection's own timers (auth, ping, silence) bound it, and it
		 * holds its WebSocket slot itself (c->ip): the ticket goes. */
		t->phase = GATE_WS;
		t->conn = NULL;
		lws_set_opaque_user_data(wsi, NULL);
		gate_http_end(&t->http);
		gate_ticket_upgraded(t);
		lws_set_wsi_user(wsi, c);
		conn_established(c);
		session_open(c, c->state == CONN_OPEN);
		return 0;
	}
	case LWS_CALLBACK_RECEIVE: {
		int rc;
		if (!c)
			return -1;
		conn_touch(c);
		c->in_rx = true; /* replies queue behind a pong lws may owe (conn_send) */
		rc = on_receive(wsi, c, in, len);
		c->in_rx = false;
		return rc;
	}
	case LWS_CALLBACK_RECEIVE_PONG:
		if (c)
			conn_touch(c);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		return c ? conn_on_writeable(c) : -1;
	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		if (c && conn_alive(c))
			metrics.closes[METRICS_CLOSE_PEER]++;
		if (c)
			conn_peer_closing(c);
		return 0;
	case LWS_CALLBACK_CLOSED:
		detach(wsi, user);
		return 0;
	case LWS_CALLBACK_HTTP:
	case LWS_CALLBACK_HTTP_BODY:
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
	case LWS_CALLBACK_HTTP_WRITEABLE:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL: {
		/* HTTP runs only while the wsi has its ticket (before any WebSocket). */
		struct gate_ticket *t = lws_get_opaque_user_data(wsi);
		if (!t)
			return reason == LWS_CALLBACK_HTTP_DROP_PROTOCOL ? 0 : -1;
		return gate_http(wsi, reason, &t->http, in, len);
	}
	case LWS_CALLBACK_WSI_DESTROY: {
		/* Every wsi ends here, whatever phase it died in (a reset while waiting for a
		 * header slot included): its ticket, or past the handshake its connection,
		 * releases its budget slots. */
		struct gate_ticket *t = lws_get_opaque_user_data(wsi);
		detach(wsi, user);
		if (t) {
			gate_http_end(&t->http);
			lws_set_opaque_user_data(wsi, NULL);
			gate_ticket_close(t);
		}
		return 0;
	}
	default:
		return 0;
	}
}

static const struct lws_protocols protocols[] = {
    /* rx_buffer_size: lws allocates it for every connection (and reads at most that much per
     * read), so it is the smallest that still holds a whole control frame (125 bytes);
     * roomcast reassembles longer messages itself (up to MAX_MESSAGE_SIZE). tx_packet_size:
     * left at 0, lws 4.1.6 would cut every send to rx_buffer_size + 20 bytes and copy the
     * rest aside (lws_issue_raw), so it is set above any frame roomcast writes. */
    {"roomcast", callback, 0, 128, 0, NULL, 1 << 20},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

/* lws logs go through our logger at warn/error only. Some lws lines are noise for us (the
 * adoption path logs at error level on success). */
static void lws_log(int level, const char *line)
{
	char msg[512];
	size_t n = strlen(line);

	if (strstr(line, "calling service") || strstr(line, "deferring handling ah"))
		return;
	while (n && (line[n - 1] == '\n' || line[n - 1] == ' '))
		n--;
	snprintf(msg, sizeof(msg), "%.*s", (int)n, line);
	log_write(level == LLL_ERR ? LOG_ERROR : LOG_WARN, "libwebsockets", "detail", msg,
	          (const char *)0);
}

/* ---- lifecycle ---- */

static void on_reap(uv_check_t *h)
{
	conn_reap();
}

static void close_walk(uv_handle_t *h, void *arg)
{
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void finish(void)
{
	set_state(SRV_STOPPING);
	uv_timer_stop(&g_drain_timer);
	uv_close((uv_handle_t *)&g_drain_timer, NULL);
	uv_signal_stop(&g_sigterm);
	uv_signal_stop(&g_sigint);
	uv_close((uv_handle_t *)&g_sigterm, NULL);
	uv_close((uv_handle_t *)&g_sigint, NULL);
	conn_timers_stop();
	cluster_stop();
	presence_stop();
	bus_stop();
	liveroom_stop();
	capture_stop();
	pgl_stop();
	lws_context_destroy(g_ctx);
	g_ctx = NULL;
	/* The loop now ends by itself once lws has closed its handles; the watchdog (which
	 * does not keep the loop alive) bounds how long that may take. */
}

/* The promise is an exit within 5 s of SIGTERM whatever a peer or dependency does. */
static void on_watchdog(uv_timer_t *t)
{
	log_error("shutdown failed", "reason", "deadline passed; exiting now");
	_exit(0);
}

static void on_drain_tick(uv_timer_t *t)
{
	uint64_t waited_ms = (uv_now(&g_loop) - g_drain_started);
	if (conn_count() == 0 || waited_ms >= (uint64_t)g_cfg->shutdown_grace_ms)
		finish();
}

static void begin_shutdown(const char *why)
{
	struct conn *c;

	if (g_state != SRV_RUNNING)
		return;
	log_info("shutting down", "signal", why);
	set_state(SRV_DRAINING);
	gate_stop();
	for (c = conn_first(); c; c = c->next)
		conn_close(c, 1001, "server shutting down", true);
	g_drain_started = uv_now(&g_loop);
	uv_timer_start(&g_drain_timer, on_drain_tick, 20, 20);
	uv_timer_start(&g_watchdog, on_watchdog, (uint64_t)g_cfg->shutdown_grace_ms + 1200, 0);
	uv_unref((uv_handle_t *)&g_watchdog);
}

static void on_signal(uv_signal_t *s, int signum)
{
	begin_shutdown(signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

/* Descriptors beyond one per WebSocket client: listeners, PostgreSQL, Redis, lws, the gate's
 * spare, logs, and heads still being read. */
#define FD_RESERVE 64

/* Each connection holds a descriptor: MAX_CONNECTIONS WebSocket clients, MAX_HTTP_CONNECTIONS
 * others, and refused ones drained briefly (at most an eighth of the HTTP budget). Raises the
 * soft RLIMIT_NOFILE towards that (up to the hard limit); if it is still short, lowers the
 * budgets so that clients beyond them get a clean 503 instead of accept() failing at the
 * limit. Runs before lws sizes its descriptor table from the limit. */
static void fit_fd_limit(struct config *cfg)
{
	long http = cfg->max_http_connections + cfg->max_http_connections / 8 + 4;
	rlim_t want = (rlim_t)(cfg->max_connections + http) + FD_RESERVE;
	struct rlimit rl;
	char from[24], to[24], lim[24];

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0) {
		log_warn("getrlimit failed", "reason", strerror(errno));
		return;
	}
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want && rl.rlim_cur < rl.rlim_max) {
		struct rlimit up = rl;
		up.rlim_cur =
		    rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &up) == 0)
			rl = up;
		else
			log_warn("setrlimit failed", "reason", strerror(errno));
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want)
		return;
	snprintf(from, sizeof(from), "%ld", cfg->max_connections);
	cfg->max_connections = rl.rlim_cur > 2 * FD_RESERVE ? (long)(rl.rlim_cur - FD_RESERVE)
	                                                    : (long)(rl.rlim_cur / 2);
	/* A sixteenth of what is left for connections that are not (yet) WebSockets. */
	if (cfg->max_http_connections > cfg->max_connections / 16)
		cfg->max_http_connections =
		    cfg->max_connections / 16 > 4 ? cfg->max_connections / 16 : 4;
	cfg->max_connections -= cfg->max_http_connections + cfg->max_http_connections / 8 + 4;
	if (cfg->max_connections < 1)
		cfg->max_connections = 1;
	snprintf(to, sizeof(to), "%ld", cfg->max_connections);
	snprintf(lim, sizeof(lim), "%llu", (unsigned long long)rl.rlim_cur);
	log_warn("MAX_CONNECTIONS lowered to fit the open file limit", "from", from, "to", to,
	         "rlimit_nofile", lim);
}

int server_run(struct config *cfg)
{
	struct lws_context_creation_info info;
	static lws_retry_bo_t retry;
	void *foreign[1];
	struct auth_config ac;
	char err[256] = "";
	char *pem = NULL;
	int rc = 0;

	g_cfg = cfg;
	memset(&ac, 0, sizeof(ac));
	if (cfg->jwt_public_key_file && *cfg->jwt_public_key_file) {
		FILE *f = fopen(cfg->jwt_public_key_file, "r");
		size_t n;
		if (!f || !(pem = calloc(1, 65536)) || (n = fread(pem, 1, 65535, f)) == 0) {
			fprintf(stderr,
			        "roomcast: invalid JWT_PUBLIC_KEY_FILE=%s: cannot read it\n",
			        cfg->jwt_public_key_file);
			if (f)
				fclose(f);
			free(pem);
			return 2;
		}
		fclose(f);
	}
	ac.secret = (const unsigned char *)cfg->jwt_secret;
	ac.secret_len = cfg->jwt_secret ? strlen(cfg->jwt_secret) : 0;
	ac.public_key_pem = pem;
	ac.algorithms = cfg->jwt_alg_mask;
	ac.issuer = cfg->jwt_issuer;
	ac.audience = cfg->jwt_audience;
	ac.leeway_s = (int)cfg->jwt_leeway_s;
	/* Only the SQL policy reads the claims; every connection would otherwise keep a copy. */
	ac.drop_claims_json = cfg->authz_mode != CONFIG_AUTHZ_SQL;
	g_auth = auth_new(&ac, err, sizeof(err));
	free(pem);
	if (!g_auth) {
		fprintf(stderr, "roomcast: invalid JWT configuration: %s\n", err);
		return 2;
	}
	if (!cfg->production && cfg->jwt_secret && strlen(cfg->jwt_secret) < 32)
		log_warn(
		    "JWT_SECRET is shorter than 32 bytes; refused when ENVIRONMENT=production");
	if (!cfg->ws_origins || !*cfg->ws_origins)
		log_warn("WS_ORIGINS is unset: WebSocket handshakes from any Origin are allowed");

	signal(SIGPIPE, SIG_IGN);
	/* Backoff jitter uses rand(): seed it per process so replicas do not retry in lockstep. */
	srand((unsigned)time(NULL) ^ (unsigned)getpid() << 16);
	uv_loop_init(&g_loop);
	lws_set_log_level(LLL_ERR | LLL_WARN, lws_log);
	fit_fd_limit(cfg);

	/* No lws validity timer: with a zero hangup time lws never arms one (a NULL policy would
	 * mean its default, 300/310 s). Every lws timer is an insert into one sorted list that
	 * costs O(connections); pings and PONG_TIMEOUT_S are the connection timer's (conn.c). */
	retry.secs_since_valid_ping = 0;
	retry.secs_since_valid_hangup = 0;

	memset(&info, 0, sizeof(info));
	foreign[0] = &g_loop;
	info.foreign_loops = foreign;
	info.options = LWS_SERVER_OPTION_LIBUV | LWS_SERVER_OPTION_VALIDATE_UTF8 |
	               LWS_SERVER_OPTION_EXPLICIT_VHOSTS;
	info.port = CONTEXT_PORT_NO_LISTEN_SERVER;
	info.protocols = protocols;
	info.retry_and_idle_policy = &retry;
	info.timeout_secs = (unsigned)cfg->header_timeout_s;
	info.keepalive_timeout = 30;
	info.max_http_header_pool = 1024;
	/* lws stores headers with per-fragment overhead: leave room above the gate's limit so a
	 * head the gate accepted always fits. */
	info.max_http_header_data = (unsigned short)(cfg->max_header_bytes + 2048);
	info.alpn = "http/1.1";
	info.vhost_name = "roomcast";
	g_tls = cfg->tls_cert_file && *cfg->tls_cert_file;
	if (g_tls) {
		/* lws terminates TLS and listens itself (the gate cannot read encrypted heads);
		 * TLS 1.2 and later only, and ALPN offers HTTP/1.1 only. */
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
		info.port = (int)cfg->port;
		info.iface = cfg->host;
		info.ssl_cert_filepath = cfg->tls_cert_file;
		info.ssl_private_key_filepath = cfg->tls_key_file;
		info.ssl_options_set = SSL_OP_NO_SSLv2 | SSL_OP_NO_SSLv3 | SSL_OP_NO_TLSv1 |
		                       SSL_OP_NO_TLSv1_1 | SSL_OP_NO_COMPRESSION;
	}
	g_ctx = lws_create_context(&info);
	if (!g_ctx) {
		log_error("lws_create_context failed", "reason", "see libwebsockets log");
		auth_free(g_auth);
		return 1;
	}
	g_vhost = lws_create_vhost(g_ctx, &info);
	if (!g_vhost) {
		log_error("lws_create_vhost failed", "reason", "see libwebsockets log");
		lws_context_destroy(g_ctx);
		auth_free(g_auth);
		return 1;
	}
	conn_setup(cfg, g_ctx);
	session_setup(cfg, g_auth);
	authz_setup(cfg, &g_loop, pgl_can_join);
	http_setup(cfg, g_auth, SERVER_VERSION);
	http_set_static(assets_serve);
	if (gate_setup(cfg, g_auth, &g_loop) < 0 || bus_start(cfg, &g_loop) < 0 ||
	    pgl_start(cfg, &g_loop, deliver_db_event) < 0 || capture_start(cfg, &g_loop) < 0 ||
	    liveroom_start(cfg, &g_loop) < 0 || cluster_start(cfg, &g_loop, SERVER_VERSION) < 0 ||
	    presence_start(cfg, &g_loop) < 0 || (!g_tls && gate_start(g_vhost) < 0)) {
		lws_context_destroy(g_ctx);
		auth_free(g_auth);
		return 1;
	}
	conn_timers_start(&g_loop);
	uv_check_init(&g_loop, &g_reaper);
	uv_check_start(&g_reaper, on_reap);
	uv_unref((uv_handle_t *)&g_reaper);
	uv_timer_init(&g_loop, &g_drain_timer);
	uv_timer_init(&g_loop, &g_watchdog);
	uv_signal_init(&g_loop, &g_sigterm);
	uv_signal_init(&g_loop, &g_sigint);
	uv_signal_start(&g_sigterm, on_signal, SIGTERM);
	uv_signal_start(&g_sigint, on_signal, SIGINT);
	set_state(SRV_RUNNING);
	{
		char port[12];
		snprintf(port, sizeof(port), "%ld", cfg->port);
		log_info("roomcast ready", "host", cfg->host, "port", port, "version",
		         SERVER_VERSION, "authz",
		         cfg->authz_mode == CONFIG_AUTHZ_SQL    ? "sql"
		         : cfg->authz_mode == CONFIG_AUTHZ_HTTP ? "http"
		                                                : "claims");
	}
	uv_run(&g_loop, UV_RUN_DEFAULT);
	/* lws has closed its handles; close anything left and let the close callbacks run. */
	uv_check_stop(&g_reaper);
	conn_reap();
	uv_walk(&g_loop, close_walk, NULL);
	uv_run(&g_loop, UV_RUN_DEFAULT);
	if (uv_loop_close(&g_loop))
		log_warn("uv_loop_close failed", "reason", "handles still open");
	room_reset();
	auth_free(g_auth);
	log_info("stopped");
	return rc;
}
