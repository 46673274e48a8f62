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

typedef struct http_wire {
    const wix_settings *s;
    sched_t *sched;
    char *auth;                  /* "Authorization: <key>" (secret) */
    CURL *pool[HTTP_POOL_MAX];
    int npool;
} http_wire;

/* One attempt on the wire. */
typedef struct http_xfer {
    sched_transfer xfer;         /* first: CURLOPT_PRIVATE points here */
    http_wire *w;
    wix_attempt *a;
    CURL *easy;
    struct curl_slist *hdrs;
} http_xfer;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    wix_attempt *a = arg;
    return buf_add(a->resp, p, size * n) < 0 ? 0 : size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    wix_attempt *a = arg;
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

/* The handle goes back to the pool (or away), and the attempt to the client. */
static void xfer_end(http_xfer *x)
{
    http_wire *w = x->w;
    wix_attempt *a = x->a;
    curl_slist_free_all(x->hdrs);
    if (x->easy) {
        if (w->npool < HTTP_POOL_MAX)
            w->pool[w->npool++] = x->easy;
        else
            curl_easy_cleanup(x->easy);
    }
    free(x);
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
    xfer_end(x);
}

/* Sets up x's easy handle and hands it to the scheduler; -1 when it could not. */
static int xfer_start(http_xfer *x)
{
    http_wire *w = x->w;
    wix_attempt *a = x->a;
    CURL *e = w->npool ? w->pool[--w->npool] : curl_easy_init();
    if (!e)
        return -1;
    curl_easy_reset(e);
    x->easy = e;
    x->xfer.done = http_done;
    char *url = NULL;
    if (asprintf(&url, "%s%s", w->s->base_url, a->path) < 0)
        return -1;
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url); /* libcurl keeps its own copy */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)&x->xfer);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, w->s->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, w->s->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "wixr/0.1");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, w->auth);
    if (a->account) {
        char acc[160];
        snprintf(acc, sizeof acc, "wix-account-id: %s", a->account);
        h = curl_slist_append(h, acc);
    }
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    if (a->body)
        h = curl_slist_append(h, "Content-Type: application/json");
    x->hdrs = h;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    if (!strcmp(a->method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(a->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, a->method);
        if (a->body || strcmp(a->method, "DELETE") != 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(a->body ? a->body_len : 0));
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, a->body ? a->body : "");
        }
    }
    return sched_add_transfer(w->sched, e);
}

static void http_send(void *self, wix_attempt *a)
{
    http_wire *w = self;
    http_xfer *x = calloc(1, sizeof *x);
    if (!x) {
        a->have_error = 1;
        snprintf(a->error, sizeof a->error, "out of memory starting the HTTP request");
        wix_attempt_done(a);
        return;
    }
    x->w = w;
    x->a = a;
    if (xfer_start(x) < 0) {
        a->have_error = 1;
        snprintf(a->error, sizeof a->error, "could not start the HTTP request");
        if (x->easy) { /* a handle in an unknown state is not pooled */
            curl_easy_cleanup(x->easy);
            x->easy = NULL;
        }
        xfer_end(x);
    }
}

static void http_close(void *self)
{
    http_wire *w = self;
    if (!w)
        return;
    for (int i = 0; i < w->npool; i++)
        curl_easy_cleanup(w->pool[i]);
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
