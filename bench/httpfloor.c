/* bench/httpfloor: the kernel's floor for one HTTP keep-alive request on this machine. A
 * one-thread epoll server that reads whatever a connection sent (one recv) and answers it with a
 * constant 200 the size of roomcast's notify answer (one send): no parsing, no allocation, no
 * timer. Drive it with `loadgen notify --port P --pid <its pid>`: the server CPU per request
 * loadgen reports is the floor no notify path can go below. --peek reads with MSG_PEEK first and
 * then reads the same bytes again, as roomcast's gate does.
 * Usage: httpfloor [--port P] [--peek] */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static const char answer[] =
    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 69\r\n"
    "x-content-type-options: nosniff\r\ncache-control: no-store\r\n\r\n"
    "{\"status\":\"success\",\"message\":\"Notification sent\",\"id\":\"vm-14269-n3\"}";

int main(int argc, char **argv)
{
	int port = 9999, one = 1, peek = 0, lfd, ep;
	struct sockaddr_in a = {.sin_family = AF_INET};
	struct epoll_event ev = {.events = EPOLLIN}, evs[64];
	static char buf[65536];

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--peek"))
			peek = 1;
		else {
			fprintf(stderr, "usage: httpfloor [--port P] [--peek]\n");
			return 2;
		}
	}
	lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
	ep = epoll_create1(0);
	a.sin_port = htons((unsigned short)port);
	inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&a, sizeof(a)) || listen(lfd, 128)) {
		perror("httpfloor: bind");
		return 1;
	}
	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	for (;;) {
		int n = epoll_wait(ep, evs, 64, -1);
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			ssize_t r;
			if (fd == lfd) {
				int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
				if (c < 0)
					continue;
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				ev.data.fd = c;
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				continue;
			}
			r = recv(fd, buf, sizeof(buf), peek ? MSG_PEEK : 0);
			if (peek && r > 0)
				r = recv(fd, buf, (size_t)r, 0);
			if (r <= 0 || send(fd, answer, sizeof(answer) - 1, MSG_NOSIGNAL) < 0)
				close(fd);
		}
	}
}
