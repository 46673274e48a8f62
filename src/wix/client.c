/*
 * client.c -- retries, rate limit, the bound in flight, audit (see client.h);
 * the attempts themselves go over the client's wire.
 */
#define _GNU_SOURCE
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../json/json.h"
#include "../util/backoff.h"
#include "../util/buf.h"
#include "../util/isotime.h"

#define CLIENT_MAX_BODY (16 * 1024 * 1024)

typedef struct call call;
struct call {
    wix_attempt a;               /* first: wix_attempt_done finds the call from it */
    wix_client *c;
    char method[8];
    char *path, *body, *account, *idem;
    size_t body_len;
    wix_done_fn done;
    void *arg;
    int attempt;
    long long t_start, t_attempt;
    buf_t resp;                   /* the current attempt's answer */
    call *next_queued;
};

struct wix_client {
    const wix_settings *s;
    sched_t *sched;
    wix_wire wire;
    long long (*rate_gate)(void *arg, long long now); /* NULL: the window below */
    void *rate_gate_arg;
    int inflight;
    call *queue_head, *queue_tail;
    long long *rl;               /* ring of send times within the window */
    int rl_head, rl_count;
    FILE *audit;
    int audit_owned;
    uint64_t rng;                /* the backoff's jitter */
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

wix_transport wix_resolve_transport(const wix_settings *s)
{
    if (s->transport != TRANSPORT_AUTO)
        return s->transport;
    return s->api_key ? TRANSPORT_HTTP : TRANSPORT_SANDBOX;
}

wix_client *wix_client_new(const wix_settings *s, sched_t *sched, const wix_wire *wire, char *err, size_t errlen)
{
    wix_client *c = calloc(1, sizeof *c);
    if (!c) {
        snprintf(err, errlen, "out of memory");
        wire->close(wire->self);
        return NULL;
    }
    c->s = s;
    c->sched = sched;
    c->wire = *wire;
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
    c->rng = backoff_seed();
    return c;
}

void wix_client_free(wix_client *c)
{
    if (!c)
        return;
    if (c->wire.close)
        c->wire.close(c->wire.self);
    if (c->audit_owned)
        fclose(c->audit);
    free(c->rl);
    free(c);
}

wix_transport wix_client_transport(const wix_client *c) { return c->wire.kind; }
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
    jw_kstr(&w, "transport", c->wire.kind == TRANSPORT_HTTP ? "http" : "sandbox");
    jw_kstr(&w, "method", q->method);
    jw_kstr(&w, "path", q->path);
    jw_key(&w, "status");
    jw_int(&w, q->a.status);
    jw_key(&w, "duration_ms");
    jw_int(&w, now - q->t_attempt);
    jw_key(&w, "attempt");
    jw_int(&w, q->attempt);
    if (q->account)
        jw_kstr(&w, "account_id", q->account);
    if (q->idem)
        jw_kstr(&w, "idempotency_key", q->idem);
    if (q->a.request_id[0])
        jw_kstr(&w, "request_id", q->a.request_id);
    if (q->a.have_error)
        jw_kstr(&w, "error", q->a.error);
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
    count_call(q->c, q->method, q->path, q->a.status);
    wix_result r = {
        .status = q->a.status,
        .body = q->resp.data ? q->resp.data : "",
        .body_len = q->resp.len,
        .request_id = q->a.request_id,
        .attempts = q->attempt,
        .error = q->a.have_error ? q->a.error : NULL,
    };
    q->done(q->arg, &r);
    call_free(q);
}

static int retryable(const call *q)
{
    return !q->a.final && (q->a.have_error || q->a.status == 429 || q->a.status >= 500);
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
    if (q->a.have_error)
        c->stats.transport_errors++;
    if (retryable(q) && q->attempt < c->s->retry_attempts) {
        long long delay = backoff_ms(c->s->retry_base_ms, c->s->retry_max_ms, q->attempt, &c->rng);
        if (q->a.retry_after_ms > delay)
            delay = q->a.retry_after_ms;
        if (now + delay - q->t_start <= c->s->retry_total_ms) {
            c->stats.retries++;
            sched_timer(c->sched, now + delay, start_attempt, q);
            return;
        }
    }
    complete(q);
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
    q->a.status = 0;
    q->a.request_id[0] = '\0';
    q->a.retry_after_ms = 0;
    q->a.have_error = 0;
    q->a.final = 0;
    c->wire.send(c->wire.self, &q->a);
}

/* The wire is done with the attempt: its slot is free, and the call is
 * retried or completed. */
void wix_attempt_done(wix_attempt *a)
{
    call *q = (call *)a;
    release_slot(q->c);
    finish_attempt(q);
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
    q->a.method = q->method;
    q->a.path = q->path;
    q->a.body = q->body;
    q->a.body_len = q->body_len;
    q->a.account = q->account;
    q->a.resp = &q->resp;
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
    return c->wire.admin ? c->wire.admin(c->wire.self, method, path, body) : -1;
}

void wix_client_set_rate_gate(wix_client *c, long long (*gate)(void *arg, long long now), void *arg)
{
    c->rate_gate = gate;
    c->rate_gate_arg = arg;
}
