/*
 * emu_http.c -- HTTP front of the emulator (libmicrohttpd, a thread per
 * connection so injected latency delays only its own connection).
 *
 * Caps: bodies over EMU_MAX_BODY get 413 (and are not buffered), idle
 * connections are closed after 10 s, at most 512 connections at once.
 * The path is passed to the core still percent-encoded, so an externalId
 * holding "%2F" stays one path segment.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../util/buf.h"
#include "emu_http.h"

#define EMU_HTTP_TIMEOUT_S 10
#define EMU_HTTP_MAX_CONNECTIONS 512

struct emu_server {
    struct MHD_Daemon *d;
    emu_t *e;
    int port;
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
    (void)cls;
    (void)conn;
    (void)toe;
    conn_state *st = *con_cls;
    if (st) {
        buf_free(&st->body);
        free(st);
        *con_cls = NULL;
    }
}

emu_server *emu_http_start(emu_t *e, const char *host, int port, char *err, size_t errlen)
{
    emu_server *s = calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    s->e = e;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "--listen: '%s' is not an IPv4 address", host);
        free(s);
        return NULL;
    }
    s->d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                            (uint16_t)port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)EMU_HTTP_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_LIMIT, (unsigned)EMU_HTTP_MAX_CONNECTIONS,
                            MHD_OPTION_NOTIFY_COMPLETED, completed, NULL, MHD_OPTION_UNESCAPE_CALLBACK, keep_escaped,
                            NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U, MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "cannot listen on %s:%d (address in use or not permitted)", host, port);
        free(s);
        return NULL;
    }
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
    free(s);
}
