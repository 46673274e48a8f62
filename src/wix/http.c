/*
 * http.c -- the http wire (see client.h): each attempt is a libcurl easy
 * handle on the scheduler's multi handle, so many calls overlap their
 * network waits on one thread; easy handles are reused (keep-alive
 * connections stay in the multi handle's cache). The API key is sent in the
 * Authorization header and nowhere else.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/buf.h"
#include "client.h"

#define HTTP_POOL_MAX 256

typedef struct http_xfer http_xfer;

typedef struct http_wire {
    const wix_settings *s;
    sched_t *sched;
    char *auth;                  /* "Authorization: <key>" (secret) */
    http_xfer *pool[HTTP_POOL_MAX];
    int npool;
} http_wire;

/* An easy handle and what it keeps between attempts: the options that never
 * change are set once, and its header list is built again only when an
 * attempt needs other headers (another account, a body or none). Idle ones
 * wait in the wire's pool; their connections stay in the multi handle's cache. */
struct http_xfer {
    sched_transfer xfer;         /* first: CURLOPT_PRIVATE points here */
    http_wire *w;
    wix_attempt *a;              /* the attempt on the wire, while there is one */
    CURL *easy;
    struct curl_slist *hdrs;     /* for hdr_account and hdr_body */
    char *hdr_account;           /* NULL: no wix-account-id */
    int hdr_body;
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    http_xfer *x = arg;
    return buf_add(x->a->resp, p, size * n) < 0 ? 0 : size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    wix_attempt *a = ((http_xfer *)arg)->a;
    size_t len = size * n;
    if (len > 17 && !strncasecmp(p, "x-wix-request-id:", 17)) {
        const char *v = p + 17;
        while (*v == ' ')
            v++;
        size_t k = 0;
        while (v + k < p + len && v[k] != '\r' && v[k] != '\n' && k < sizeof a->request_id - 1)
            k++;
        memcpy(a->request_id, v, k);
        a->request_id[k] = '\0';
    } else if (len > 12 && !strncasecmp(p, "retry-after:", 12)) {
        const char *v = p + 12;
        while (*v == ' ')
            v++;
        if (isdigit((unsigned char)*v))
            a->retry_after_ms = strtol(v, NULL, 10) * 1000;
    }
    return len;
}

static void xfer_free(http_xfer *x)
{
    if (x->easy)
        curl_easy_cleanup(x->easy);
    curl_slist_free_all(x->hdrs);
    free(x->hdr_account);
    free(x);
}

/* A handle from the pool, or a new one with the options every attempt shares. */
static http_xfer *xfer_get(http_wire *w)
{
    if (w->npool)
        return w->pool[--w->npool];
    http_xfer *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->w = w;
    x->hdr_body = -1; /* no header list yet */
    x->xfer.done = NULL;
    CURL *e = x->easy = curl_easy_init();
    if (!e) {
        free(x);
        return NULL;
    }
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)&x->xfer);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, w->s->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, w->s->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "wixr/0.1");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    return x;
}

/* The handle goes back to the pool (or away), and the attempt to the client. */
static void xfer_end(http_xfer *x, int reusable)
{
    http_wire *w = x->w;
    wix_attempt *a = x->a;
    x->a = NULL;
    if (reusable && w->npool < HTTP_POOL_MAX)
        w->pool[w->npool++] = x;
    else
        xfer_free(x);
    wix_attempt_done(a);
}

static void http_done(sched_transfer *t, CURLcode rc)
{
    http_xfer *x = (http_xfer *)t;
    wix_attempt *a = x->a;
    if (rc != CURLE_OK) {
        a->have_error = 1;
        buf_t url;
        buf_init(&url, 0);
        wix_shown_url(&url, x->w->s->base_url, a->path);
        snprintf(a->error, sizeof a->error, "%s (%.400s)", curl_easy_strerror(rc), buf_cstr(&url));
        buf_free(&url);
        if (rc == CURLE_WRITE_ERROR && a->resp->failed)
            snprintf(a->error, sizeof a->error, "the answer is larger than %zu bytes", a->resp->limit);
        a->status = 0;
    } else {
        curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &a->status);
    }
    /* Some errors will not go away by trying again. */
    if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_WRITE_ERROR)
        a->final = 1;
    xfer_end(x, 1);
}

/* The handle's header list for this attempt: kept when the last one fits. */
static int set_headers(http_xfer *x, const wix_attempt *a)
{
    int body = a->body != NULL;
    if (x->hdr_body == body && (x->hdr_account && a->account ? !strcmp(x->hdr_account, a->account)
                                                              : !x->hdr_account && !a->account))
        return 0;
    curl_slist_free_all(x->hdrs);
    free(x->hdr_account);
    x->hdrs = NULL;
    x->hdr_account = NULL;
    x->hdr_body = -1;
    char *acc = NULL;
    if (a->account) {
        static const char name[] = "wix-account-id: ";
        size_t n = strlen(a->account);
        acc = malloc(sizeof name + n);
        x->hdr_account = strdup(a->account);
        if (!acc || !x->hdr_account) {
            free(acc);
            return -1; /* (the handle is not pooled again: xfer_end(x, 0) frees the rest) */
        }
        memcpy(acc, name, sizeof name - 1);
        memcpy(acc + sizeof name - 1, a->account, n + 1);
    }
    const char *lines[] = {x->w->auth, acc, "Accept: application/json", "Expect:",
                           body ? "Content-Type: application/json" : NULL};
    struct curl_slist *h = NULL;
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        struct curl_slist *t;
        if (lines[i] && !(t = curl_slist_append(h, lines[i]))) {
            curl_slist_free_all(h);
            free(acc);
            return -1;
        }
        if (lines[i])
            h = t;
    }
    free(acc);
    x->hdrs = h;
    x->hdr_body = body;
    return curl_easy_setopt(x->easy, CURLOPT_HTTPHEADER, h) == CURLE_OK ? 0 : -1;
}

/* Sets up x's handle for the attempt and hands it to the scheduler; -1 when it could not. */
static int xfer_start(http_xfer *x)
{
    http_wire *w = x->w;
    wix_attempt *a = x->a;
    CURL *e = x->easy;
    char small[512], *url = small;
    size_t nb = strlen(w->s->base_url), np = strlen(a->path);
    if (nb + np + 1 > sizeof small && !(url = malloc(nb + np + 1)))
        return -1;
    memcpy(url, w->s->base_url, nb);
    memcpy(url + nb, a->path, np + 1);
    CURLcode rc = curl_easy_setopt(e, CURLOPT_URL, url); /* libcurl keeps its own copy */
    if (url != small)
        free(url);
    if (rc != CURLE_OK || set_headers(x, a) < 0)
        return -1;
    /* Every method option is set each time: the handle keeps the last attempt's. */
    if (!strcmp(a->method, "GET")) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, (char *)NULL);
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else if (!a->body && !strcmp(a->method, "DELETE")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, a->method);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcmp(a->method, "POST") ? a->method : (const char *)NULL);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(a->body ? a->body_len : 0));
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, a->body ? a->body : "");
    }
    return sched_add_transfer(w->sched, e);
}

static void http_send(void *self, wix_attempt *a)
{
    http_wire *w = self;
    http_xfer *x = xfer_get(w);
    if (!x) {
        a->have_error = 1;
        snprintf(a->error, sizeof a->error, "out of memory starting the HTTP request");
        wix_attempt_done(a);
        return;
    }
    x->a = a;
    x->xfer.done = http_done;
    if (xfer_start(x) < 0) {
        a->have_error = 1;
        snprintf(a->error, sizeof a->error, "could not start the HTTP request");
        xfer_end(x, 0); /* a handle in an unknown state is not pooled */
    }
}

static void http_close(void *self)
{
    http_wire *w = self;
    if (!w)
        return;
    for (int i = 0; i < w->npool; i++)
        xfer_free(w->pool[i]);
    if (w->auth) {
        volatile char *p = w->auth;
        while (*p)
            *p++ = 0;
        free(w->auth);
    }
    free(w);
}

int wix_http_wire(wix_wire *out, const wix_settings *s, sched_t *sched, char *err, size_t errlen)
{
    if (!s->api_key) {
        snprintf(err, errlen, "wix.transport is http but no API key is set (WIX_API_KEY or wix.api_key_file)");
        return -1;
    }
    http_wire *w = calloc(1, sizeof *w);
    if (!w || asprintf(&w->auth, "Authorization: %s", s->api_key) < 0) {
        free(w);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->s = s;
    w->sched = sched;
    *out = (wix_wire){.kind = TRANSPORT_HTTP, .self = w, .send = http_send, .admin = NULL, .close = http_close};
    return 0;
}
