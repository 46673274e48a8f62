/*
 * front.c -- the service's HTTP front (libmicrohttpd, a thread per
 * connection): the routes, authentication, the checks that a request is
 * sound before its body is read, Wix-shaped error answers, the request
 * deadline of slow clients, and the listening socket.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../http/http.h"
#include "../json/json.h"
#include "../json/wix_error.h"
#include "../runtime/host.h"
#include "serve_internal.h"

/* A JSON answer; allow is the Allow header of a 405 (else NULL). */
static enum MHD_Result reply_allow(struct MHD_Connection *c, unsigned status, buf_t *b, const char *allow)
{
    enum MHD_Result ok = http_reply(c, status, b->data ? b->data : "", b->len, "application/json", allow);
    buf_free(b);
    return ok;
}

enum MHD_Result reply(struct MHD_Connection *c, unsigned status, buf_t *b)
{
    return reply_allow(c, status, b, NULL);
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text, const char *type)
{
    return http_reply(c, status, text, strlen(text), type, NULL);
}

/* Errors answer in the Wix shape (resellers-api.md §4.0), like the API wixr fronts:
 * an applicationError with a code, or for bad input a validationError naming the field. */
static enum MHD_Result reply_error_v(struct MHD_Connection *c, unsigned status, const char *allow, const char *code,
                                     const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static enum MHD_Result reply_error_v(struct MHD_Connection *c, unsigned status, const char *allow, const char *code,
                                     const char *fmt, va_list ap)
{
    buf_t b;
    buf_init(&b, 0);
    wix_error_body(&b, code, fmt, ap);
    return reply_allow(c, status, &b, allow);
}

static enum MHD_Result reply_error_allow(struct MHD_Connection *c, unsigned status, const char *allow,
                                         const char *code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result reply_error_allow(struct MHD_Connection *c, unsigned status, const char *allow,
                                         const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result r = reply_error_v(c, status, allow, code, fmt, ap);
    va_end(ap);
    return r;
}

enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result r = reply_error_v(c, status, NULL, code, fmt, ap);
    va_end(ap);
    return r;
}

/* 405, with the methods the route takes in Allow (RFC 9110 15.5.6). */
static enum MHD_Result reply_405(struct MHD_Connection *c, const char *allow)
{
    return reply_error_allow(c, 405, allow, "METHOD_NOT_ALLOWED", "this route takes %s", allow);
}

enum MHD_Result reply_invalid(struct MHD_Connection *c, const char *field, const char *rule, const char *fmt,
                                     ...)
{
    buf_t item, b;
    buf_init(&item, 0);
    buf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    wix_violation_item(&item, field, rule, fmt, ap);
    va_end(ap);
    wix_validation_body(&b, field, 0, item.data, item.len);
    buf_free(&item);
    return reply(c, 400, &b);
}

static int authorized(serve *s, struct MHD_Connection *c)
{
    if (!s->have_token)
        return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    size_t n = strlen(h), m = strlen(s->token);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < m; i++)
        diff |= (unsigned char)(s->token[i] ^ (i < n ? h[i] : 0));
    return diff == 0;
}

/* The request's headers, as libmicrohttpd parsed them: how many
 * Content-Length and Transfer-Encoding lines, and where each key and value
 * lies (for the NUL check below). */
#define MAX_HEADERS_SEEN 256
typedef struct header_count {
    int content_length, transfer_encoding, n, total;
    const char *key[MAX_HEADERS_SEEN], *value[MAX_HEADERS_SEEN];
    size_t value_size[MAX_HEADERS_SEEN];
} header_count;

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                    const char *value, size_t value_size)
{
    header_count *hc = cls;
    (void)kind;
    (void)key_size;
    if (key && !strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH))
        hc->content_length++;
    if (key && !strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING))
        hc->transfer_encoding++;
    hc->total++;
    if (hc->n < MAX_HEADERS_SEEN) {
        hc->key[hc->n] = key;
        hc->value[hc->n] = value;
        hc->value_size[hc->n] = value_size;
        hc->n++;
    }
    return MHD_YES;
}

/* A NUL inside a header value: libmicrohttpd 0.9.75 parses the header block
 * in place (each line end becomes NUL bytes) and hands out the value up to
 * the first NUL, so "X-Event-Id: ab<NUL>cd" reads as "ab" -- one id silently
 * another. What follows a value's end in that block tells: a well-formed line
 * has (after any trailing blanks) its line end there, a NUL again, or the next
 * header's name (a bare LF); anything else was hidden behind a NUL. */
static int nul_in_a_value(const header_count *hc)
{
    for (int i = 0; i < hc->n; i++) {
        const char *v = hc->value[i];
        if (!v || !hc->value_size[i])
            continue; /* an empty value hides nothing (an empty id is refused anyway) */
        if (strlen(v) != hc->value_size[i])
            return 1;
        const char *p = v + hc->value_size[i] + 1; /* past the NUL that ends the value */
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            continue;
        int next_key = 0;
        for (int k = 0; k < hc->n && !next_key; k++)
            next_key = hc->key[k] == p;
        if (!next_key)
            return 1;
    }
    return 0;
}

/* A request whose framing is ambiguous (two Content-Length, Content-Length
 * with Transfer-Encoding) or whose headers hide bytes behind a NUL: a proxy in
 * front may have read it otherwise (request smuggling). NULL when it is sound. */
static const char *ambiguous_request(struct MHD_Connection *c)
{
    header_count hc;
    hc.content_length = hc.transfer_encoding = hc.n = hc.total = 0;
    MHD_get_connection_values_n(c, MHD_HEADER_KIND, count_header, &hc);
    if (hc.total > MAX_HEADERS_SEEN)
        return "more than 256 headers";
    if (hc.content_length > 1)
        return "more than one Content-Length header";
    if (hc.transfer_encoding > 1)
        return "more than one Transfer-Encoding header";
    if (hc.content_length && hc.transfer_encoding)
        return "both Content-Length and Transfer-Encoding";
    if (nul_in_a_value(&hc))
        return "a header value holds a NUL byte";
    return NULL;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    serve *s = cls;
    http_body *st = *con_cls;
    /* HEAD is GET without the body (libmicrohttpd leaves the body out). */
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (!st) {
        /* Headers are in, the body (if any) is not: everything that can be
         * answered without the body is answered now, so no body is read
         * before the request is known to be sound and authenticated (an
         * answer queued now makes libmicrohttpd close the connection
         * without reading the body). */
        const char *why = ambiguous_request(c);
        if (why)
            return reply_error(c, 400, "BAD_REQUEST", "malformed request: %s", why);
        int healthz = !strcmp(url, "/healthz");
        if (!healthz && !authorized(s, c))
            return reply_error(c, 401, "UNAUTHENTICATED", "send Authorization: Bearer <WIXR_TOKEN>");
        if (!healthz && http_announced_over(c, (size_t)s->max_body))
            return reply_error(c, 413, "PAYLOAD_TOO_LARGE", "the body is larger than %ld bytes", s->max_body);
        if (!healthz && (strncmp(url, "/v1/events/", 11) != 0 || strcmp(method, "POST") != 0)) {
            /* the routes that take no body */
        } else if (!healthz) {
            st = http_body_new((size_t)s->max_body);
            if (!st)
                return MHD_NO;
            *con_cls = st;
            return MHD_YES;
        }
    } else if (*upload_size) {
        http_body_add(st, upload, upload_size);
        return MHD_YES;
    }
    if (!strcmp(url, "/healthz")) {
        if (!get)
            return reply_405(c, "GET, HEAD");
        /* 503 once SIGTERM closed intake: a load balancer stops sending here */
        pthread_mutex_lock(&s->lock);
        char *h = strdup(s->health ? s->health : "{}");
        int unavailable = s->health_503; /* the body says why */
        pthread_mutex_unlock(&s->lock);
        enum MHD_Result r = reply_text(c, unavailable ? 503 : 200, h ? h : "{}", "application/json");
        free(h);
        return r;
    }
    if (!authorized(s, c))
        return reply_error(c, 401, "UNAUTHENTICATED", "send Authorization: Bearer <WIXR_TOKEN>");
    if (st && st->too_big)
        return reply_error(c, 413, "PAYLOAD_TOO_LARGE", "the body is larger than %ld bytes", s->max_body);
    if (!strcmp(url, "/metrics")) {
        if (!get)
            return reply_405(c, "GET, HEAD");
        pthread_mutex_lock(&s->lock);
        char *m = strdup(s->metrics ? s->metrics : "");
        pthread_mutex_unlock(&s->lock);
        enum MHD_Result r = reply_text(c, 200, m ? m : "", "text/plain; version=0.0.4");
        free(m);
        return r;
    }
    if (!strncmp(url, "/v1/events/", 11) && url[11] && !strchr(url + 11, '/')) {
        if (!strcmp(method, "POST"))
            return post_event(s, c, url + 11, &st->buf);
        if (get)
            return get_event(s, c, url + 11);
        return reply_405(c, "GET, HEAD, POST");
    }
    return reply_error(c, 404, "NOT_FOUND", "no route %s %.200s (POST /v1/events/NAME, GET /v1/events/ID, "
                                            "/healthz, /metrics)", method, url);
}

/* Connections whose request is not whole within serve.request_timeout_ms
 * are cut off at the main loop's tick (http.h has why). */
void cut_slow_requests(serve *s)
{
    s->slow_cut_total += http_watch_cut(s->watch, s->boot_cfg->serve.request_timeout_ms);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    serve *s = cls;
    (void)toe;
    http_watch_mark(s->watch, c, 0);
    http_body_free(*con_cls);
    *con_cls = NULL;
}

int start_http(serve *s, const char *listen, char *err, size_t errlen)
{
    char host[128];
    int port;
    int bad = http_listen_parse(listen, host, sizeof host, &port);
    if (bad) {
        snprintf(err, errlen, bad == -1 ? "listen: expected HOST:PORT, got '%s'" : "listen: bad port in '%s'", listen);
        return -1;
    }
    if (!s->have_token && !(s->opt->insecure_no_auth && http_is_loopback(host))) {
        snprintf(err, errlen, "%s", s->opt->insecure_no_auth
                                        ? "--insecure-no-auth is only allowed on a loopback address"
                                        : "WIXR_TOKEN is not set: set it (clients send Authorization: Bearer <token>), "
                                          "or pass --insecure-no-auth to serve unauthenticated on loopback only");
        return -1;
    }
    struct sockaddr_in addr;
    if (http_ipv4(host, port, &addr) < 0) {
        snprintf(err, errlen, "listen: '%s' is not an IPv4 address", host);
        return -1;
    }
    const serve_settings *ss = &s->boot_cfg->serve;
    if (!(s->watch = http_watch_new(ss->max_connections))) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    http_daemon_options d = {.addr = &addr, .handler = on_request, .completed = on_completed, .cls = s,
                             .watch = s->watch, .idle_timeout_s = (unsigned)((ss->idle_timeout_ms + 999) / 1000),
                             .max_connections = (unsigned)ss->max_connections,
                             .max_per_ip = (unsigned)ss->max_connections_per_ip};
    s->mhd = http_start(&d);
    if (!s->mhd) {
        snprintf(err, errlen, "cannot listen on %s (in use, or not permitted)", listen);
        return -1;
    }
    port = http_bound_port(s->mhd, port);
    char bound[160];
    snprintf(bound, sizeof bound, "%s:%d", host, port);
    host_logline l;
    json_writer *w = host_log_begin(&l, "info", "wixr serve listening");
    jw_kstr(w, "address", bound);
    jw_key(w, "auth");
    jw_bool(w, s->have_token);
    jw_kstr(w, "journal", s->journal_path);
    host_log_end(&l);
    if (s->boot_cfg->state_dir) {
        char portfile[PATH_MAX];
        snprintf(portfile, sizeof portfile, "%s/serve.port", s->boot_cfg->state_dir);
        FILE *pf = fopen_private(portfile);
        if (pf) {
            fprintf(pf, "%d\n", port);
            fclose(pf);
        }
    }
    return 0;
}
