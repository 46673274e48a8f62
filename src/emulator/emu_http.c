/*
 * emu_http.c -- HTTP front of the emulator (libmicrohttpd, a thread per
 * connection so injected latency delays only its own connection).
 *
 * Caps: bodies over EMU_MAX_BODY get 413 (and are not buffered), idle
 * connections are closed after 10 s, at most 512 connections at once and
 * --max-connections-per-ip from one address (256: on loopback every client
 * shares one), and each request must arrive whole within --request-timeout
 * (10 s, see the watcher below).
 * The path is passed to the core still percent-encoded, so an externalId
 * holding "%2F" stays one path segment.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "../util/buf.h"
#include "emu_http.h"

#define EMU_HTTP_TIMEOUT_S 10

/* An open connection, for the request deadline. */
typedef struct watched {
    int fd;                       /* -1: the slot is free */
    long long since_ms;           /* when its current request began (opened, or the last one answered) */
    int answering;                /* the request is whole and being answered: not cut */
    int cut;
} watched;

struct emu_server {
    struct MHD_Daemon *d;
    emu_t *e;
    int port;
    long long request_timeout_ms;
    pthread_mutex_t lock;         /* guards conns and stop */
    pthread_cond_t wake;
    watched conns[EMU_HTTP_MAX_CONNECTIONS];
    int stop;
    pthread_t watcher;
    int watcher_started;
};

typedef struct conn_state {
    buf_t body;
    int too_big;
} conn_state;

static size_t keep_escaped(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    return strlen(s);
}

static enum MHD_Result add_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    (void)kind;
    buf_t *q = cls;
    if (q->len)
        buf_addc(q, '&');
    buf_adds(q, key);
    if (value) {
        buf_addc(q, '=');
        buf_adds(q, value);
    }
    return MHD_YES;
}

static enum MHD_Result send_json(struct MHD_Connection *conn, emu_response *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        emu_response_free(r);
        return MHD_NO;
    }
    r->body = NULL;
    if (r->body_len)
        MHD_add_response_header(resp, "Content-Type", "application/json");
    if (r->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", r->retry_after);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    if (r->request_id[0])
        MHD_add_response_header(resp, "x-wix-request-id", r->request_id);
    if (r->allow[0])
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    if (r->warning[0])
        MHD_add_response_header(resp, "x-wixr-warning", r->warning);
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- slow clients ----
 *
 * libmicrohttpd's timeout counts idle time only: a client sending one header
 * byte a second keeps its connection (and its thread) for ever, and 512 such
 * clients fill every slot. So each connection is watched from the moment it
 * opens: its request must be whole within the request timeout of the
 * connection opening or of its previous answer, or the watcher shuts the
 * socket down (the connection's thread then sees it closed and ends it). A
 * request being answered (an injected latency included) is not cut. The slot
 * is freed in the CLOSED notification, which libmicrohttpd sends before it
 * closes the socket, under the same lock: a shutdown never reaches a
 * descriptor already reused. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    emu_server *s = cls;
    pthread_mutex_lock(&s->lock);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (int i = 0; ci && i < EMU_HTTP_MAX_CONNECTIONS; i++) {
            if (s->conns[i].fd < 0) {
                s->conns[i] = (watched){.fd = ci->connect_fd, .since_ms = now_ms()};
                *socket_context = &s->conns[i];
                break;
            }
        }
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        ((watched *)*socket_context)->fd = -1;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&s->lock);
}

/* Marks the connection's request as whole (answering) or answered (its next one's time starts now). */
static void mark(emu_server *s, struct MHD_Connection *c, int answering)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (!ci || !ci->socket_context)
        return;
    pthread_mutex_lock(&s->lock);
    watched *w = ci->socket_context;
    w->answering = answering;
    if (!answering)
        w->since_ms = now_ms();
    pthread_mutex_unlock(&s->lock);
}

static void *watch_slow(void *arg)
{
    emu_server *s = arg;
    long long tick = s->request_timeout_ms / 4 < 100 ? s->request_timeout_ms / 4 : 100;
    if (tick < 10)
        tick = 10;
    pthread_mutex_lock(&s->lock);
    while (!s->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(tick * 1000000);
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&s->wake, &s->lock, &ts);
        long long now = now_ms();
        for (int i = 0; i < EMU_HTTP_MAX_CONNECTIONS; i++) {
            watched *w = &s->conns[i];
            if (w->fd >= 0 && !w->cut && !w->answering && now - w->since_ms > s->request_timeout_ms) {
                shutdown(w->fd, SHUT_RDWR);
                w->cut = 1;
            }
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                               const char *version, const char *upload_data, size_t *upload_data_size,
                               void **con_cls)
{
    (void)version;
    emu_server *srv = cls;
    conn_state *st = *con_cls;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (!st)
            return MHD_NO;
        buf_init(&st->body, EMU_MAX_BODY);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > EMU_MAX_BODY)
            st->too_big = 1;
        *con_cls = st;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!st->too_big && buf_add(&st->body, upload_data, *upload_data_size) < 0)
            st->too_big = 1;
        *upload_data_size = 0;
        return MHD_YES;
    }
    mark(srv, conn, 1);
    emu_response r;
    buf_t q;
    buf_init(&q, 4096);
    MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND, add_arg, &q);
    emu_request req = {
        .method = method,
        .path = url,
        .query = buf_cstr(&q),
        .authorization = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
        .account_id = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "wix-account-id"),
        .body = st->body.data,
        .body_len = st->body.len,
    };
    if (st->too_big)
        emu_reject_too_large(srv->e, &req, &r);
    else
        emu_handle(srv->e, &req, &r);
    buf_free(&q);
    if (r.latency_ms > 0) {
        struct timespec ts = {r.latency_ms / 1000, (long)(r.latency_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (r.drop) {
        emu_response_free(&r);
        return MHD_NO; /* closes the connection without an answer */
    }
    return send_json(conn, &r);
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    mark(cls, conn, 0);
    conn_state *st = *con_cls;
    if (st) {
        buf_free(&st->body);
        free(st);
        *con_cls = NULL;
    }
}

static void server_free(emu_server *s)
{
    if (s->watcher_started) {
        pthread_mutex_lock(&s->lock);
        s->stop = 1;
        pthread_cond_signal(&s->wake);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->watcher, NULL);
    }
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

emu_server *emu_http_start(emu_t *e, const char *host, int port, char *err, size_t errlen)
{
    return emu_http_start_limits(e, host, port, NULL, err, errlen);
}

emu_server *emu_http_start_limits(emu_t *e, const char *host, int port, const emu_http_limits *lim, char *err,
                                  size_t errlen)
{
    emu_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->e = e;
    s->request_timeout_ms = lim && lim->request_timeout_ms > 0 ? lim->request_timeout_ms : EMU_HTTP_REQUEST_TIMEOUT_MS;
    unsigned per_ip = lim && lim->max_connections_per_ip > 0 ? (unsigned)lim->max_connections_per_ip
                                                             : (unsigned)EMU_HTTP_MAX_PER_IP;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    for (int i = 0; i < EMU_HTTP_MAX_CONNECTIONS; i++)
        s->conns[i].fd = -1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "--listen: '%s' is not an IPv4 address", host);
        server_free(s);
        return NULL;
    }
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                            (uint16_t)port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)EMU_HTTP_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)EMU_HTTP_MAX_CONNECTIONS,
                            MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip, MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped,
                            NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not permitted)", host, port);
        server_free(s);
        return NULL;
    }
    if (pthread_create(&s->watcher, NULL, watch_slow, s) != 0) {
        snprintf(err, errlen, "cannot start the connection watcher");
        MHD_stop_daemon(s->d);
        server_free(s);
        return NULL;
    }
    s->watcher_started = 1;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = info ? info->port : port;
    return s;
}

int emu_http_port(const emu_server *s)
{
    return s->port;
}

void emu_http_stop(emu_server *s)
{
    if (!s)
        return;
    MHD_stop_daemon(s->d);
    server_free(s);
}
