/*
 * http.h -- what the two HTTP fronts, the service's (serve/front.c) and the
 * emulator's (emulator/emu_http.c), share over libmicrohttpd: answers,
 * request bodies under a cap, the listening address and daemon, and the
 * request deadline that cuts slow clients off.
 */
#ifndef WIXR_HTTP_H
#define WIXR_HTTP_H

#include <microhttpd.h>
#include <netinet/in.h>
#include <stddef.h>

#include "../util/buf.h"

/* ---- answers (reply.c) ---- */

/* A response of len bytes of body (mode as libmicrohttpd's: copied, or freed
 * with the response), with the Content-Type type and the Allow allow when
 * they are not NULL. NULL when out of memory (a body to free stays the caller's). */
struct MHD_Response *http_response(void *body, size_t len, enum MHD_ResponseMemoryMode mode, const char *type,
                                   const char *allow);
/* Queues r as the answer with status and lets go of it. */
enum MHD_Result http_send(struct MHD_Connection *c, unsigned status, struct MHD_Response *r);
/* Both at once, the body copied. */
enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const void *body, size_t len, const char *type,
                           const char *allow);

/* ---- request bodies (reply.c) ---- */

/* A request's body as it arrives, kept up to a cap: past it, too_big is set
 * and the rest is not kept. */
typedef struct http_body {
    buf_t buf;
    int too_big;
} http_body;

/* The request's Content-Length announces more than cap bytes (the answer can
 * be a 413 before any of the body is read). */
int http_announced_over(struct MHD_Connection *c, size_t cap);
http_body *http_body_new(size_t cap);
/* Takes the *size bytes of data libmicrohttpd handed over (and sets *size to 0). */
void http_body_add(http_body *b, const char *data, size_t *size);
void http_body_free(http_body *b);

/* ---- the request deadline (watch.c) ----
 *
 * libmicrohttpd's timeout counts idle time only: a client sending one header
 * byte every few seconds keeps its connection (and its thread) for ever, and
 * enough such clients fill every slot. So each connection is watched from the
 * moment it opens: its request must be whole within a limit of the connection
 * opening or of its previous answer, else http_watch_cut shuts the socket
 * down (the connection's thread then sees it closed and ends it). A request
 * marked as being answered is not cut. A slot is freed in the CLOSED
 * notification, which libmicrohttpd sends before it closes the socket, under
 * the watch's lock: a shutdown never reaches a descriptor already reused. */
typedef struct http_watch http_watch;

/* Room for slots connections at once (the daemon's connection limit). */
http_watch *http_watch_new(int slots);
void http_watch_free(http_watch *w);
/* libmicrohttpd's connection notification (http_start installs it; cls is the watch). */
void http_watch_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code);
/* The connection's request is whole and being answered (answering 1), or
 * answered (0: its next request's time starts now). */
void http_watch_mark(http_watch *w, struct MHD_Connection *c, int answering);
/* Shuts down the connections whose request is not whole after limit_ms;
 * returns how many. */
int http_watch_cut(http_watch *w, long long limit_ms);

/* ---- listening (listen.c) ---- */

/* HOST:PORT into host (localhost read as 127.0.0.1) and port: 0, or -1 when
 * it is not HOST:PORT, -2 when PORT is not a number from 0 to 65535. */
int http_listen_parse(const char *listen, char *host, size_t hostlen, int *port);
int http_is_loopback(const char *host);
/* host:port as a socket address; -1 when host is not an IPv4 address. */
int http_ipv4(const char *host, int port, struct sockaddr_in *addr);

typedef struct http_daemon_options {
    const struct sockaddr_in *addr;
    MHD_AccessHandlerCallback handler;
    MHD_RequestCompletedCallback completed;
    void *cls;                    /* the handler's and completed's */
    http_watch *watch;            /* the connections it watches */
    unsigned idle_timeout_s, max_connections, max_per_ip;
    size_t (*unescape)(void *cls, struct MHD_Connection *c, char *s); /* NULL: libmicrohttpd's (%HH decoded) */
} http_daemon_options;

/* A daemon with a thread per connection (so a slow answer delays only its own
 * connection) on o->addr; NULL when it cannot listen there. */
struct MHD_Daemon *http_start(const http_daemon_options *o);
/* The port it listens on (asked for: 0 picks one). */
int http_bound_port(struct MHD_Daemon *d, int asked);

#endif
