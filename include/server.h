/* The serving process: the libuv loop, libwebsockets on it as a foreign loop, the wiring of the
 * modules (callbacks given at start), the lws protocol callback (WebSocket traffic to conn and
 * session, HTTP to the gate), signals and graceful shutdown. */
#ifndef ROOMCAST_SERVER_H
#define ROOMCAST_SERVER_H

#include "config.h"

#define SERVER_VERSION "0.1.0"

/* Runs until SIGTERM/SIGINT and a graceful shutdown; returns the process exit code. */
int server_run(struct config *cfg);

#endif
