/* bench/sendfloor: the kernel's share of a delivery on this machine. One process writes
 * fixed-size WebSocket-sized messages round robin over N loopback TCP connections, one send()
 * each, the way a fan-out does, while a forked reader drains them; prints the writer's CPU
 * (utime+stime) per send(). No server can deliver one message per write below this figure.
 * Back to back by default; with --burst B --rate R the sends come in bursts of B, R bursts a
 * second, as a room of B members gets R messages a second: between bursts the reader sleeps, so
 * each burst pays the wakeups a paced fan-out pays.
 * Usage: sendfloor [--conns N] [--msgs M] [--size BYTES] [--burst B --rate R] */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
	       (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Drains every socket until all are closed. */
static void reader(int *fds, int n)
{
	int ep = epoll_create1(0), open = n;
	static char buf[1 << 16];
	struct epoll_event evs[256];

	for (int i = 0; i < n; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}
	while (open > 0) {
		int ne = epoll_wait(ep, evs, 256, 1000);
		for (int i = 0; i < ne; i++) {
			ssize_t r = recv(evs[i].data.fd, buf, sizeof(buf), 0);
			if (r <= 0 && !(r < 0 && errno == EAGAIN)) {
				epoll_ctl(ep, EPOLL_CTL_DEL, evs[i].data.fd, NULL);
				close(evs[i].data.fd);
				open--;
			}
		}
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	int n = 1000, size = 260, lfd, one = 1, burst = 0;
	double rate = 0;
	long msgs = 200000;
	struct sockaddr_in a;
	socklen_t al = sizeof(a);
	int *srv, *cli;
	char *msg;
	pid_t pid;
	double c0, t0, c1, t1;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--conns"))
			n = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--msgs"))
			msgs = atol(argv[i + 1]);
		else if (!strcmp(argv[i], "--size"))
			size = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--burst"))
			burst = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--rate"))
			rate = atof(argv[i + 1]);
	}
	srv = calloc((size_t)n, sizeof(int));
	cli = calloc((size_t)n, sizeof(int));
	msg = malloc((size_t)size);
	memset(msg, 'x', (size_t)size);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 4096) ||
	    getsockname(lfd, (struct sockaddr *)&a, &al)) {
		perror("listen");
		return 1;
	}
	for (int i = 0; i < n; i++) {
		cli[i] = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(cli[i], (struct sockaddr *)&a, sizeof(a)) < 0) {
			perror("connect");
			return 1;
		}
		srv[i] = accept(lfd, NULL, NULL);
		/* The same socket options a WebSocket server sets. */
		setsockopt(srv[i], IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	pid = fork();
	if (pid == 0) {
		for (int i = 0; i < n; i++)
			close(srv[i]);
		reader(cli, n);
	}
	for (int i = 0; i < n; i++)
		close(cli[i]);
	c0 = cpu_s();
	t0 = now_s();
	for (long m = 0; m < msgs; m++) {
		if (burst > 0 && rate > 0 && m && m % burst == 0) {
			/* Sleep until the next burst is due (absolute schedule, as a paced sender).
			 */
			double due = t0 + (double)(m / burst) / rate, now = now_s();
			if (due > now) {
				struct timespec ts = {
				    (time_t)(due - now),
				    (long)(((due - now) - (double)(time_t)(due - now)) * 1e9)};
				nanosleep(&ts, NULL);
			}
		}
		if (send(srv[m % n], msg, (size_t)size, 0) != size) {
			perror("send");
			return 1;
		}
	}
	c1 = cpu_s();
	t1 = now_s();
	for (int i = 0; i < n; i++)
		close(srv[i]);
	waitpid(pid, NULL, 0);
	printf("{\"conns\":%d,\"size\":%d,\"burst\":%d,\"rate\":%g,\"sends\":%ld,\"seconds\":%.3f,"
	       "\"cpu_us_per_send\":%.3f}\n",
	       n, size, burst, rate, msgs, t1 - t0, (c1 - c0) * 1e6 / (double)msgs);
	return 0;
}
