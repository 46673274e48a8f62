/*
 * client.c -- transports, retries, rate limit, audit (see client.h).
 */
#define _GNU_SOURCE
#include "client.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../emulator/emu.h"
#include "../json/json.h"
#include "../util/buf.h"
#include "../util/isotime.h"

#define CLIENT_MAX_BODY (16 * 1024 * 1024)
#define CLIENT_POOL_MAX 256

typedef struct call call;
struct call {
    sched_transfer xfer;         /* first: CURLOPT_PRIVATE points here */
    wix_client *c;
    char method[8];
    char *path, *body, *account, *idem;
    size_t body_len;
    wix_done_fn done;
    void *arg;
    int attempt;
    long long t_start, t_attempt;
    /* the current attempt */
    CURL *easy;
    struct curl_slist *hdrs;
    buf_t resp;
    long status;
    char request_id[64];
    long retry_after_ms;
    char error[600];
    int have_error;
    int final;                    /* an error that trying again cannot mend: no more attempts */
    call *next_queued;
};

struct wix_client {
    const wix_settings *s;
    sched_t *sched;
    wix_transport transport;
    emu_t *emu;
    long long (*rate_gate)(void *arg, long long now); /* NULL: the window below */
    void *rate_gate_arg;
    CURL *pool[CLIENT_POOL_MAX];
    int npool;
    int inflight;
    call *queue_head, *queue_tail;
    long long *rl;               /* ring of send times within the window */
    int rl_head, rl_count;
    FILE *audit;
    int audit_owned;
    char *auth;                  /* "Authorization: <key>" (secret) */
    uint64_t rng;
    wix_stats stats;
    wix_call_count counts[WIX_MAX_CALL_COUNTS];
    int ncounts;
};

static void start_attempt(void *arg);
static void finish_attempt(call *q);

/* ---- setup ---- */

/* The audit file, for appending: made 0600 when it does not exist (its lines
 * name accounts, paths and idempotency keys); an existing one keeps its mode. */
static FILE *audit_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "a");
    if (!f) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return f;
}

wix_client *wix_client_new(const wix_settings *s, sched_t *sched, char *err, size_t errlen)
{
    wix_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    c->s = s;
    c->sched = sched;
    c->transport = s->transport;
    if (c->transport == TRANSPORT_AUTO)
        c->transport = s->api_key ? TRANSPORT_HTTP : TRANSPORT_SANDBOX;
    if (c->transport == TRANSPORT_HTTP) {
        if (!s->api_key) {
            snprintf(err, errlen, "wix.transport is http but no API key is set (WIX_API_KEY or wix.api_key_file)");
            free(c);
            return NULL;
        }
        if (asprintf(&c->auth, "Authorization: %s", s->api_key) < 0) {
            c->auth = NULL;
            snprintf(err, errlen, "out of memory");
            free(c);
            return NULL;
        }
    }
    if (s->rate_limit > 0 && !(c->rl = calloc((size_t)s->rate_limit, sizeof *c->rl))) {
        snprintf(err, errlen, "out of memory");
        wix_client_free(c);
        return NULL;
    }
    if (s->audit) {
        if (!strcmp(s->audit, "-")) {
            c->audit = stderr;
        } else if (!(c->audit = audit_open(s->audit))) {
            snprintf(err, errlen, "wix.audit: cannot open %s: %s", s->audit, strerror(errno));
            wix_client_free(c);
            return NULL;
        } else {
            c->audit_owned = 1;
        }
    }
    if (getrandom(&c->rng, sizeof c->rng, 0) != sizeof c->rng)
        c->rng = (uint64_t)sched_now_ms() * 2654435761u;
    return c;
}

void wix_client_free(wix_client *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->npool; i++)
        curl_easy_cleanup(c->pool[i]);
    if (c->emu)
        emu_close(c->emu);
    if (c->audit_owned)
        fclose(c->audit);
    if (c->auth) {
        volatile char *p = c->auth;
        while (*p)
            *p++ = 0;
        free(c->auth);
    }
    free(c->rl);
    free(c);
}

wix_transport wix_client_transport(const wix_client *c) { return c->transport; }
const char *wix_client_default_account(const wix_client *c) { return c->s->account_id; }
const wix_stats *wix_client_stats(const wix_client *c) { return &c->stats; }

const wix_call_count *wix_client_call_counts(const wix_client *c, int *n)
{
    *n = c->ncounts;
    return c->counts;
}

void wix_endpoint_template(const char *method, const char *path, char *out, size_t n)
{
    static const char inst[] = "/resellers/v1/packages/product-instances/";
    const char *t = path;
    if (!strncmp(path, inst, sizeof inst - 1)) {
        const char *rest = path + sizeof inst - 1, *slash = strchr(rest, '/');
        t = !slash ? "/resellers/v1/packages/product-instances/{instanceId}"
            : !strcmp(slash + 1, "unassign") ? "/resellers/v1/packages/product-instances/{instanceId}/unassign"
                                               : "/resellers/v1/packages/product-instances/{instanceId}/{siteId}";
    } else if (!strncmp(path, "/resellers/v1/packages/update/", 30)) {
        t = "/resellers/v1/packages/update/{packageId}/{externalId}";
    } else if (!strncmp(path, "/resellers/v1/packages/", 23) && strcmp(path, "/resellers/v1/packages/query")) {
        t = "/resellers/v1/packages/{id}";
    }
    snprintf(out, n, "%s %s", method, t);
}

static void count_call(wix_client *c, const char *method, const char *path, long status)
{
    char ep[96];
    wix_endpoint_template(method, path, ep, sizeof ep);
    for (int i = 0; i < c->ncounts; i++) {
        if (c->counts[i].status == status && !strcmp(c->counts[i].endpoint, ep)) {
            c->counts[i].n++;
            return;
        }
    }
    if (c->ncounts < WIX_MAX_CALL_COUNTS) {
        wix_call_count *k = &c->counts[c->ncounts++];
        snprintf(k->endpoint, sizeof k->endpoint, "%s", ep);
        k->status = status;
        k->n = 1;
    }
}

static uint64_t rnd(wix_client *c)
{
    uint64_t z = (c->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Opens the in-process emulator on first use. */
static int sandbox_open(wix_client *c, char *err, size_t errlen)
{
    if (c->emu)
        return 0;
    const char *db = c->s->sandbox_db;
    if (strcmp(db, ":memory:") != 0) {
        const char *slash = strrchr(db, '/');
        if (slash && slash != db) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - db), db);
            if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                snprintf(err, errlen, "sandbox: cannot create %.200s: %s", dir, strerror(errno));
                return -1;
            }
        }
    }
    /* The catalog named by default (WIXR_HOME's config/catalog.yaml) is the one compiled in:
     * a binary copied elsewhere needs no source tree. A configured wix.sandbox.catalog is read. */
    const char *catalog = c->s->sandbox_catalog, *home = getenv("WIXR_HOME");
    char home_catalog[4200];
    snprintf(home_catalog, sizeof home_catalog, "%s/config/catalog.yaml", home && *home ? home : WIXR_HOME);
    if (catalog && !strcmp(catalog, home_catalog))
        catalog = NULL;
    emu_options o = {.db_path = db, .catalog_path = catalog, .enable_delay_ms = c->s->sandbox_delivery_delay_ms};
    char e[512];
    c->emu = emu_open(&o, e, sizeof e);
    if (!c->emu) {
        snprintf(err, errlen, "sandbox: %.400s%s", e,
                 strstr(e, "locked") ? " (is a 'wixr sandbox serve' using the same file?)" : "");
        return -1;
    }
    return 0;
}

/* ---- audit ---- */

static void audit_line(wix_client *c, const call *q, long long now)
{
    if (!c->audit)
        return;
    buf_t b;
    json_writer w;
    buf_init(&b, 1024 * 1024);
    jw_init(&w, &b);
    char when[ISO_TIME_LEN];
    iso_format_ms(iso_now_ms(), when);
    jw_obj(&w);
    jw_kstr(&w, "ts", when);
    jw_kstr(&w, "transport", c->transport == TRANSPORT_HTTP ? "http" : "sandbox");
    jw_kstr(&w, "method", q->method);
    jw_kstr(&w, "path", q->path);
    jw_key(&w, "status");
    jw_int(&w, q->status);
    jw_key(&w, "duration_ms");
    jw_int(&w, now - q->t_attempt);
    jw_key(&w, "attempt");
    jw_int(&w, q->attempt);
    if (q->account)
        jw_kstr(&w, "account_id", q->account);
    if (q->idem)
        jw_kstr(&w, "idempotency_key", q->idem);
    if (q->request_id[0])
        jw_kstr(&w, "request_id", q->request_id);
    if (q->have_error)
        jw_kstr(&w, "error", q->error);
    jw_obj_end(&w);
    buf_addc(&b, '\n');
    if (!b.failed) {
        fwrite(b.data, 1, b.len, c->audit);
        fflush(c->audit);
    }
    buf_free(&b);
}

void wix_shown_url(buf_t *out, const char *base, const char *path)
{
    const char *host = strstr(base, "://");
    host = host ? host + 3 : base;
    const char *at = memchr(host, '@', strcspn(host, "/?#"));
    if (at) {
        buf_add(out, base, (size_t)(host - base));
        buf_adds(out, at + 1);
    } else {
        buf_adds(out, base);
    }
    if (path)
        buf_adds(out, path);
}

/* ---- completion ---- */

static void call_free(call *q)
{
    buf_free(&q->resp);
    free(q->path);
    free(q->body);
    free(q->account);
    free(q->idem);
    free(q);
}

static void complete(call *q)
{
    count_call(q->c, q->method, q->path, q->status);
    wix_result r = {
        .status = q->status,
        .body = q->resp.data ? q->resp.data : "",
        .body_len = q->resp.len,
        .request_id = q->request_id,
        .attempts = q->attempt,
        .error = q->have_error ? q->error : NULL,
    };
    q->done(q->arg, &r);
    call_free(q);
}

static int retryable(const call *q)
{
    return !q->final && (q->have_error || q->status == 429 || q->status >= 500);
}

static void release_slot(wix_client *c)
{
    c->inflight--;
    if (c->queue_head) {
        call *n = c->queue_head;
        c->queue_head = n->next_queued;
        if (!c->queue_head)
            c->queue_tail = NULL;
        start_attempt(n);
    }
}

static void finish_attempt(call *q)
{
    wix_client *c = q->c;
    long long now = sched_now_ms();
    audit_line(c, q, now);
    if (q->have_error)
        c->stats.transport_errors++;
    if (retryable(q) && q->attempt < c->s->retry_attempts) {
        long long cap = c->s->retry_base_ms << (q->attempt - 1 < 20 ? q->attempt - 1 : 20);
        if (cap > c->s->retry_max_ms)
            cap = c->s->retry_max_ms;
        long long delay = cap / 2 + (cap > 1 ? (long long)(rnd(c) % (uint64_t)(cap - cap / 2 + 1)) : 0);
        if (q->retry_after_ms > delay)
            delay = q->retry_after_ms;
        if (now + delay - q->t_start <= c->s->retry_total_ms) {
            c->stats.retries++;
            sched_timer(c->sched, now + delay, start_attempt, q);
            return;
        }
    }
    complete(q);
}

/* ---- http transport ---- */

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    call *q = arg;
    return buf_add(&q->resp, p, size * n) < 0 ? 0 : size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    call *q = arg;
    size_t len = size * n;
    if (len > 17 && !strncasecmp(p, "x-wix-request-id:", 17)) {
        const char *v = p + 17;
        while (*v == ' ')
            v++;
        size_t k = 0;
        while (v + k < p + len && v[k] != '\r' && v[k] != '\n' && k < sizeof q->request_id - 1)
            k++;
        memcpy(q->request_id, v, k);
        q->request_id[k] = '\0';
    } else if (len > 12 && !strncasecmp(p, "retry-after:", 12)) {
        const char *v = p + 12;
        while (*v == ' ')
            v++;
        if (isdigit((unsigned char)*v))
            q->retry_after_ms = strtol(v, NULL, 10) * 1000;
    }
    return len;
}

static void http_done(sched_transfer *x, CURLcode rc)
{
    call *q = (call *)x;
    wix_client *c = q->c;
    if (rc != CURLE_OK) {
        q->have_error = 1;
        buf_t url;
        buf_init(&url, 0);
        wix_shown_url(&url, c->s->base_url, q->path);
        snprintf(q->error, sizeof q->error, "%s (%.400s)", curl_easy_strerror(rc), buf_cstr(&url));
        buf_free(&url);
        if (rc == CURLE_WRITE_ERROR && q->resp.failed)
            snprintf(q->error, sizeof q->error, "the answer is larger than %d bytes", CLIENT_MAX_BODY);
        q->status = 0;
    } else {
        curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &q->status);
    }
    curl_slist_free_all(q->hdrs);
    q->hdrs = NULL;
    if (c->npool < CLIENT_POOL_MAX)
        c->pool[c->npool++] = q->easy;
    else
        curl_easy_cleanup(q->easy);
    q->easy = NULL;
    /* Some errors will not go away by trying again. */
    if (rc == CURLE_URL_MALFORMAT || rc == CURLE_UNSUPPORTED_PROTOCOL || rc == CURLE_WRITE_ERROR)
        q->final = 1;
    release_slot(c);
    finish_attempt(q);
}

static int http_send(call *q)
{
    wix_client *c = q->c;
    CURL *e = c->npool ? c->pool[--c->npool] : curl_easy_init();
    if (!e)
        return -1;
    curl_easy_reset(e);
    q->easy = e;
    q->xfer.done = http_done;
    char *url = NULL;
    if (asprintf(&url, "%s%s", c->s->base_url, q->path) < 0)
        return -1;
    curl_easy_setopt(e, CURLOPT_URL, url);
    free(url); /* libcurl keeps its own copy */
    curl_easy_setopt(e, CURLOPT_PRIVATE, (char *)&q->xfer);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, q);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, q);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->s->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->s->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "wixr/0.1");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, c->auth);
    if (q->account) {
        char acc[160];
        snprintf(acc, sizeof acc, "wix-account-id: %s", q->account);
        h = curl_slist_append(h, acc);
    }
    h = curl_slist_append(h, "Accept: application/json");
    h = curl_slist_append(h, "Expect:");
    if (q->body)
        h = curl_slist_append(h, "Content-Type: application/json");
    q->hdrs = h;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    if (!strcmp(q->method, "GET")) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(q->method, "POST") != 0)
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, q->method);
        if (q->body || strcmp(q->method, "DELETE") != 0) {
            curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)(q->body ? q->body_len : 0));
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body ? q->body : "");
        }
    }
    return sched_add_transfer(c->sched, e);
}

/* ---- sandbox transport ---- */

static void sandbox_finish(void *arg)
{
    call *q = arg;
    release_slot(q->c);
    finish_attempt(q);
}

static void sandbox_send(call *q)
{
    wix_client *c = q->c;
    char err[512];
    if (sandbox_open(c, err, sizeof err) < 0) {
        q->have_error = 1;
        snprintf(q->error, sizeof q->error, "%.500s", err);
        q->final = 1; /* nothing to retry: the state file is not ours */
        sandbox_finish(q);
        return;
    }
    emu_request rq = {.method = q->method, .path = q->path, .authorization = "sandbox", .account_id = q->account,
                      .body = q->body, .body_len = q->body_len};
    emu_response rs;
    emu_handle(c->emu, &rq, &rs);
    q->status = rs.drop ? 0 : rs.status;
    if (rs.drop) {
        q->have_error = 1;
        snprintf(q->error, sizeof q->error, "connection closed without an answer (emulated)");
    } else {
        buf_add(&q->resp, rs.body, rs.body_len);
    }
    snprintf(q->request_id, sizeof q->request_id, "%s", rs.request_id);
    q->retry_after_ms = rs.retry_after * 1000L;
    int latency = rs.latency_ms;
    emu_response_free(&rs);
    if (latency > 0)
        sched_timer(c->sched, sched_now_ms() + latency, sandbox_finish, q);
    else
        sandbox_finish(q);
}

/* ---- one attempt ---- */

/* Sliding window: at most rate_limit sends in any window. Returns the time
 * to wait (0 = go, and the send is counted). */
static long long rate_wait(wix_client *c, long long now)
{
    if (c->rate_gate)
        return c->rate_gate(c->rate_gate_arg, now);
    int cap = c->s->rate_limit;
    if (cap <= 0)
        return 0;
    while (c->rl_count && c->rl[c->rl_head] <= now - c->s->rate_window_ms) {
        c->rl_head = (c->rl_head + 1) % cap;
        c->rl_count--;
    }
    if (c->rl_count >= cap)
        return c->rl[c->rl_head] + c->s->rate_window_ms - now;
    c->rl[(c->rl_head + c->rl_count) % cap] = now;
    c->rl_count++;
    return 0;
}

static void start_attempt(void *arg)
{
    call *q = arg;
    wix_client *c = q->c;
    if (c->inflight >= c->s->concurrency) {
        q->next_queued = NULL;
        if (c->queue_tail)
            c->queue_tail->next_queued = q;
        else
            c->queue_head = q;
        c->queue_tail = q;
        return;
    }
    long long now = sched_now_ms();
    long long wait = rate_wait(c, now);
    if (wait > 0) {
        c->stats.rate_waits++;
        sched_timer(c->sched, now + wait, start_attempt, q);
        return;
    }
    c->inflight++;
    q->attempt++;
    c->stats.attempts++;
    q->t_attempt = now;
    buf_reset(&q->resp);
    q->status = 0;
    q->request_id[0] = '\0';
    q->retry_after_ms = 0;
    q->have_error = 0;
    if (c->transport == TRANSPORT_SANDBOX) {
        sandbox_send(q);
        return;
    }
    if (http_send(q) < 0) {
        q->have_error = 1;
        snprintf(q->error, sizeof q->error, "could not start the HTTP request");
        if (q->easy) {
            curl_slist_free_all(q->hdrs);
            q->hdrs = NULL;
            curl_easy_cleanup(q->easy);
            q->easy = NULL;
        }
        release_slot(c);
        finish_attempt(q);
    }
}

void wix_client_call(wix_client *c, const char *method, const char *path, const char *body, size_t body_len,
                     const char *account_id, const char *idem_key, wix_done_fn done, void *arg)
{
    call *q = calloc(1, sizeof *q);
    if (!q)
        goto oom;
    q->c = c;
    snprintf(q->method, sizeof q->method, "%s", method);
    q->path = strdup(path);
    q->account = account_id ? strdup(account_id) : NULL;
    q->idem = idem_key ? strdup(idem_key) : NULL;
    if (body) {
        q->body = malloc(body_len + 1);
        if (q->body) {
            memcpy(q->body, body, body_len);
            q->body[body_len] = '\0';
        }
        q->body_len = body_len;
    }
    if (!q->path || (account_id && !q->account) || (idem_key && !q->idem) || (body && !q->body)) {
        call_free(q);
        goto oom;
    }
    buf_init(&q->resp, CLIENT_MAX_BODY);
    q->done = done;
    q->arg = arg;
    q->t_start = sched_now_ms();
    c->stats.calls++;
    start_attempt(q);
    return;
oom: {
    wix_result r = {.status = 0, .body = "", .request_id = "", .attempts = 0, .error = "out of memory"};
    done(arg, &r);
}
}

int wix_client_sandbox_admin(wix_client *c, const char *method, const char *path, const char *body)
{
    char err[512];
    if (c->transport != TRANSPORT_SANDBOX || sandbox_open(c, err, sizeof err) < 0)
        return -1;
    emu_request rq = {.method = method, .path = path, .body = body, .body_len = body ? strlen(body) : 0};
    emu_response rs;
    emu_handle(c->emu, &rq, &rs);
    int st = rs.status;
    emu_response_free(&rs);
    return st;
}

void wix_client_set_rate_gate(wix_client *c, long long (*gate)(void *arg, long long now), void *arg)
{
    c->rate_gate = gate;
    c->rate_gate_arg = arg;
}
