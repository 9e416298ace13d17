/* The --workers supervisor: forks N children that each run the normal server on the shared
 * port (the gate sets SO_REUSEPORT), plus, with a database, the feed process that holds the
 * PostgreSQL connections for all of them; forwards SIGTERM/SIGINT, restarts a child that dies
 * with a growing backoff, and bounds shutdown at 5 s. The supervisor serves nothing. */
#include "workers.h"
#include "feed.h"
#include "feedlink.h"
#include "log.h"
#include "pgrelay.h"
#include "util.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WORKERS_MAX      64
#define STOP_DEADLINE_MS 5000
#define BACKOFF_MIN_MS   100
#define BACKOFF_MAX_MS   10000
/* A child that lived this long was healthy: its next crash restarts it at the minimum delay. */
#define STABLE_MS 30000
/* A child that fails this soon after its very first start has met a configuration problem
 * (port taken, bad key file) that a restart cannot fix. */
#define FIRST_START_MS 2000

struct worker {
	pid_t pid; /* 0 while not running */
	uint64_t started_ms;
	uint64_t restart_at_ms;
	long backoff_ms;
	bool ever_stable;
};

static struct worker g_w[WORKERS_MAX + 1];
static int g_n;     /* workers */
static int g_total; /* workers, and the feed (index g_n) when there is a database */
static char g_feed_addr[FEEDLINK_ADDR_MAX];
static pid_t g_supervisor;
static sigset_t g_oldmask;

static uint64_t now_ms(void)
{
	return util_now_ns() / 1000000;
}

/* SIGCHLD only needs to wake sigtimedwait; a real handler (not SIG_DFL) guarantees the kernel
 * queues it while blocked. */
static void on_sigchld(int sig)
{
}

static void child_name(const struct config *cfg, int i, char *node, size_t cap)
{
	if (i == g_n)
		snprintf(node, cap, "%s-feed", cfg->node_id);
	else
		snprintf(node, cap, "%s-w%d", cfg->node_id, i);
}

static pid_t spawn(struct config *cfg, workers_serve_fn serve, int i)
{
	char node[160];
	pid_t pid;

	child_name(cfg, i, node, sizeof(node));
	pid = fork();
	if (pid < 0) {
		log_error("fork failed", "reason", strerror(errno));
		return -1;
	}
	if (pid == 0) {
		signal(SIGCHLD, SIG_DFL);
		sigprocmask(SIG_SETMASK, &g_oldmask, NULL);
		/* A supervisor killed with SIGKILL cannot forward anything: children stop by
		 * themselves instead of holding the port. */
		prctl(PR_SET_PDEATHSIG, SIGTERM);
		if (getppid() != g_supervisor)
			_exit(1);
		free(cfg->node_id);
		cfg->node_id = strdup(node);
		setenv("NODE_ID", node, 1);
		if (i == g_n) {
			/* Named in ps and /proc/<pid>/comm: operators can tell it from a worker. */
			prctl(PR_SET_NAME, "roomcast-feed");
			enum log_level lvl = LOG_INFO;
			log_level_parse(cfg->log_level, &lvl);
			log_init(lvl,
			         strcmp(cfg->log_format, "text") ? LOG_FORMAT_JSON
			                                         : LOG_FORMAT_TEXT,
			         node);
			exit(feed_run(cfg, g_feed_addr));
		}
		if (g_total > g_n)
			pgrelay_use(g_feed_addr);
		exit(serve(cfg));
	}
	{
		char ps[16];
		snprintf(ps, sizeof(ps), "%d", (int)pid);
		log_info("worker started", "worker", node, "pid", ps);
	}
	g_w[i].pid = pid;
	g_w[i].started_ms = now_ms();
	return pid;
}

static int live_count(void)
{
	int n = 0;
	for (int i = 0; i < g_total; i++)
		n += g_w[i].pid > 0;
	return n;
}

static void signal_all(int sig)
{
	for (int i = 0; i < g_total; i++)
		if (g_w[i].pid > 0)
			kill(g_w[i].pid, sig);
}

static int find(pid_t pid)
{
	for (int i = 0; i < g_total; i++)
		if (g_w[i].pid == pid)
			return i;
	return -1;
}

static void describe(int status, char *out, size_t cap)
{
	if (WIFEXITED(status))
		snprintf(out, cap, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(out, cap, "signal %d", WTERMSIG(status));
	else
		snprintf(out, cap, "status %d", status);
}

int workers_run(struct config *cfg, workers_serve_fn serve)
{
	struct sigaction sa;
	sigset_t set;
	bool stopping = false, clean = true;
	uint64_t deadline = 0;
	int fatal = 0;

	g_n = cfg->workers > WORKERS_MAX ? WORKERS_MAX : (int)cfg->workers;
	g_supervisor = getpid();
	/* One set of PostgreSQL connections per host, whatever the worker count. */
	g_total = g_n + (cfg->database_url && *cfg->database_url ? 1 : 0);
	feedlink_addr(g_feed_addr, sizeof(g_feed_addr), (int)g_supervisor);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_sigchld;
	sa.sa_flags = SA_NOCLDSTOP;
	sigaction(SIGCHLD, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGCHLD);
	/* Blocked before the first fork so no signal slips between fork and the wait loop. */
	sigprocmask(SIG_BLOCK, &set, &g_oldmask);
	{
		char n[16];
		snprintf(n, sizeof(n), "%d", g_n);
		log_info("supervisor started", "workers", n);
	}
	for (int i = 0; i < g_total; i++) {
		g_w[i].backoff_ms = BACKOFF_MIN_MS;
		if (spawn(cfg, serve, i) < 0) {
			stopping = true;
			clean = false;
			fatal = 1;
			deadline = now_ms() + STOP_DEADLINE_MS;
			signal_all(SIGTERM);
			break;
		}
	}

	for (;;) {
		uint64_t now = now_ms(), wake = now + 1000;
		struct timespec ts;
		siginfo_t info;
		pid_t pid;
		int status, sig;

		if (stopping)
			wake = deadline;
		else
			for (int i = 0; i < g_total; i++)
				if (!g_w[i].pid && g_w[i].restart_at_ms < wake)
					wake = g_w[i].restart_at_ms;
		wake = wake > now ? wake - now : 0;
		ts.tv_sec = (time_t)(wake / 1000);
		ts.tv_nsec = (long)(wake % 1000) * 1000000L;
		sig = sigtimedwait(&set, &info, &ts);
		if ((sig == SIGTERM || sig == SIGINT) && !stopping) {
			log_info("supervisor stopping", "signal",
			         sig == SIGTERM ? "SIGTERM" : "SIGINT");
			stopping = true;
			deadline = now_ms() + STOP_DEADLINE_MS;
			signal_all(sig);
		}

		while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
			int i = find(pid);
			char how[32], node[160];
			uint64_t lived;

			if (i < 0)
				continue;
			g_w[i].pid = 0;
			describe(status, how, sizeof(how));
			child_name(cfg, i, node, sizeof(node));
			lived = now_ms() - g_w[i].started_ms;
			if (stopping) {
				if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
					clean = false;
					log_warn("worker stopped uncleanly", "worker", node, "how",
					         how);
				}
				continue;
			}
			if (lived >= STABLE_MS) {
				g_w[i].ever_stable = true;
				g_w[i].backoff_ms = BACKOFF_MIN_MS;
			}
			if (!g_w[i].ever_stable && lived < FIRST_START_MS && WIFEXITED(status) &&
			    WEXITSTATUS(status) != 0) {
				log_error("worker failed to start; stopping", "worker", node, "how",
				          how);
				fatal = WEXITSTATUS(status);
				clean = false;
				stopping = true;
				deadline = now_ms() + STOP_DEADLINE_MS;
				signal_all(SIGTERM);
				continue;
			}
			{
				char delay[24];
				snprintf(delay, sizeof(delay), "%ld", g_w[i].backoff_ms);
				log_error("worker died; restarting", "worker", node, "how", how,
				          "delay_ms", delay);
			}
			g_w[i].restart_at_ms = now_ms() + (uint64_t)g_w[i].backoff_ms;
			g_w[i].backoff_ms *= 2;
			if (g_w[i].backoff_ms > BACKOFF_MAX_MS)
				g_w[i].backoff_ms = BACKOFF_MAX_MS;
		}

		if (stopping) {
			if (!live_count())
				break;
			if (now_ms() >= deadline) {
				log_error("workers did not stop in time; killing them");
				signal_all(SIGKILL);
				for (int i = 0; i < g_total; i++)
					if (g_w[i].pid > 0 && waitpid(g_w[i].pid, &status, 0) > 0)
						g_w[i].pid = 0;
				clean = false;
				break;
			}
			continue;
		}
		now = now_ms();
		for (int i = 0; i < g_total; i++)
			if (!g_w[i].pid && g_w[i].restart_at_ms <= now && spawn(cfg, serve, i) < 0)
				g_w[i].restart_at_ms = now + (uint64_t)g_w[i].backoff_ms;
	}
	sigprocmask(SIG_SETMASK, &g_oldmask, NULL);
	log_info("supervisor stopped");
	if (fatal)
		return fatal;
	return clean ? 0 : 1;
}
