/*
 * emu_http.c -- HTTP front of the emulator (libmicrohttpd, a thread per
 * connection so injected latency delays only its own connection).
 *
 * Caps: bodies over EMU_MAX_BODY get 413 (and are not buffered), idle
 * connections are closed after 10 s, at most 512 connections at once and
 * --max-connections-per-ip from one address (256: on loopback every client
 * shares one), and each request must arrive whole within --request-timeout
 * (10 s; a watcher thread cuts slow clients off, http.h).
 * The path is passed to the core still percent-encoded, so an externalId
 * holding "%2F" stays one path segment.
 */
#define _GNU_SOURCE
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../http/http.h"
#include "../util/buf.h"
#include "emu_http.h"

#define EMU_HTTP_TIMEOUT_S 10

struct emu_server {
    struct MHD_Daemon *d;
    emu_t *e;
    int port;
    long long request_timeout_ms;
    http_watch *watch;            /* the open connections, for the request deadline */
    pthread_mutex_t lock;         /* guards stop */
    pthread_cond_t wake;
    int stop;
    pthread_t watcher;
    int watcher_started;
};

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
    struct MHD_Response *resp = http_response(r->body, r->body_len, MHD_RESPMEM_MUST_FREE,
                                              r->body_len ? "application/json" : NULL, r->allow[0] ? r->allow : NULL);
    if (!resp) {
        emu_response_free(r);
        return MHD_NO;
    }
    r->body = NULL;
    if (r->retry_after > 0) {
        char ra[16];
        snprintf(ra, sizeof ra, "%d", r->retry_after);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    if (r->request_id[0])
        MHD_add_response_header(resp, "x-wix-request-id", r->request_id);
    if (r->warning[0])
        MHD_add_response_header(resp, "x-wixr-warning", r->warning);
    return http_send(conn, (unsigned)r->status, resp);
}

/* Cuts slow clients off (http.h) every tick until the server stops. */
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
        http_watch_cut(s->watch, s->request_timeout_ms);
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
    http_body *st = *con_cls;
    if (!st) {
        st = http_body_new(EMU_MAX_BODY);
        if (!st)
            return MHD_NO;
        st->too_big = http_announced_over(conn, EMU_MAX_BODY);
        *con_cls = st;
        return MHD_YES;
    }
    if (*upload_data_size) {
        http_body_add(st, upload_data, upload_data_size);
        return MHD_YES;
    }
    http_watch_mark(srv->watch, conn, 1);
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
        .body = st->buf.data,
        .body_len = st->buf.len,
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
    emu_server *s = cls;
    (void)toe;
    http_watch_mark(s->watch, conn, 0);
    http_body_free(*con_cls);
    *con_cls = NULL;
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
    http_watch_free(s->watch);
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
    unsigned total = lim && lim->max_connections > 0 ? (unsigned)lim->max_connections
                                                     : (unsigned)EMU_HTTP_MAX_CONNECTIONS;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->wake, NULL);
    if (!(s->watch = http_watch_new((int)total))) {
        snprintf(err, errlen, "out of memory");
        server_free(s);
        return NULL;
    }
    struct sockaddr_in addr;
    if (http_ipv4(host, port, &addr) < 0) {
        snprintf(err, errlen, "--listen: '%s' is not an IPv4 address", host);
        server_free(s);
        return NULL;
    }
    http_daemon_options d = {.addr = &addr, .handler = handler, .completed = completed, .cls = s, .watch = s->watch,
                             .idle_timeout_s = EMU_HTTP_TIMEOUT_S, .max_connections = total,
                             .max_per_ip = per_ip, .unescape = keep_escaped};
    s->d = http_start(&d);
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
    s->port = http_bound_port(s->d, port);
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
