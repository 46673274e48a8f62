/*
 * client.h -- the wire under the wix module: one call = one API request,
 * retried with backoff on transport errors, 429 and 5xx (honouring
 * Retry-After) within a number of attempts and a time budget, throttled by a
 * client-side sliding-window rate limit and a bound on requests in flight.
 *
 * The attempts go over a wire (wix_wire: send one attempt, close), given to
 * the client by whoever makes it: "http" (http.c: libcurl multi on the
 * scheduler, keep-alive connections reused) lives here; "sandbox" (the
 * emulator in-process, no socket) is plugged in from above (app/), so the
 * client never links the emulator. Every attempt writes one audit line when
 * an audit sink is configured. The API key goes into the Authorization
 * header and nowhere else.
 */
#ifndef WIXR_CLIENT_H
#define WIXR_CLIENT_H

#include <stddef.h>

#include "../util/buf.h"

#include "../config/config.h"
#include "../runtime/sched.h"

typedef struct wix_client wix_client;

/* One attempt of a call as a wire sees it: the request, and the answer the
 * wire fills in before it calls wix_attempt_done. */
typedef struct wix_attempt {
    const char *method, *path;
    const char *body;            /* NULL: no body */
    size_t body_len;
    const char *account;         /* wix-account-id, or NULL */
    buf_t *resp;                 /* the answer's body goes here (capped: failed when too large) */
    long status;                 /* HTTP status; 0 when no answer came */
    char request_id[64];         /* x-wix-request-id, or "" */
    long retry_after_ms;         /* Retry-After, or 0 */
    int have_error;              /* no answer: error says why */
    char error[600];             /* (never a secret: URLs as wix_shown_url shows them) */
    int final;                   /* an error that trying again cannot mend: no more attempts */
} wix_attempt;

/* A transport: what carries attempts. send fills in a's answer and calls
 * wix_attempt_done(a) exactly once, before it returns or later from the
 * scheduler; it never fails otherwise. admin (NULL when the wire has none)
 * is the emulator's /__admin/ API: its status, or -1. close frees self. */
typedef struct wix_wire {
    wix_transport kind;          /* TRANSPORT_HTTP or TRANSPORT_SANDBOX: audit lines, wix.settings() */
    void *self;
    void (*send)(void *self, wix_attempt *a);
    int (*admin)(void *self, const char *method, const char *path, const char *body);
    void (*close)(void *self);
} wix_wire;

/* The wire has filled in a's answer: the client retries or completes the call. */
void wix_attempt_done(wix_attempt *a);

/* The transport s names: auto is http with an API key, else sandbox. */
wix_transport wix_resolve_transport(const wix_settings *s);

/* The http wire: libcurl easy handles on the scheduler's multi handle, reused.
 * 0, or -1 with err (no API key). */
int wix_http_wire(wix_wire *w, const wix_settings *s, sched_t *sched, char *err, size_t errlen);

typedef struct wix_result {
    long status;                 /* HTTP status; 0 when no answer came */
    const char *body;            /* answer body (valid during the callback) */
    size_t body_len;
    const char *request_id;      /* x-wix-request-id, or "" */
    int attempts;
    const char *error;           /* transport error text, or NULL */
} wix_result;

typedef void (*wix_done_fn)(void *arg, const wix_result *r);

typedef struct wix_stats {
    long long calls, attempts, retries, rate_waits, transport_errors;
} wix_stats;

/* Finished calls by endpoint (method + path template) and final status. */
typedef struct wix_call_count {
    char endpoint[96];            /* e.g. "POST /resellers/v2/packages" */
    long status;                  /* 0: no answer */
    long long n;
} wix_call_count;
#define WIX_MAX_CALL_COUNTS 96

/* A client whose attempts go over wire (which it owns from now on, and
 * closes with the client, or at once when this fails). NULL with err. */
wix_client *wix_client_new(const wix_settings *s, sched_t *sched, const wix_wire *wire, char *err, size_t errlen);
void wix_client_free(wix_client *c);
wix_transport wix_client_transport(const wix_client *c);
const char *wix_client_default_account(const wix_client *c);
const wix_stats *wix_client_stats(const wix_client *c);
const wix_call_count *wix_client_call_counts(const wix_client *c, int *n);
/* "GET /resellers/v1/packages/{id}" for a concrete method and path. */
void wix_endpoint_template(const char *method, const char *path, char *out, size_t n);

/* Puts gate in front of every attempt instead of the client's own window
 * (a worker process asks its supervisor, which keeps one window for all
 * workers): it returns the ms to wait, 0 = go (the send is counted). */
void wix_client_set_rate_gate(wix_client *c, long long (*gate)(void *arg, long long now), void *arg);

/* In-process emulator only: sends an admin request (e.g. POST /__admin/reset)
 * and returns its status (-1 when the wire has no admin API). */
int wix_client_sandbox_admin(wix_client *c, const char *method, const char *path, const char *body);

/* Starts one call; done is called exactly once, possibly before this
 * returns. body may be NULL. idem_key is only for the audit line. */
void wix_client_call(wix_client *c, const char *method, const char *path, const char *body, size_t body_len,
                     const char *account_id, const char *idem_key, wix_done_fn done, void *arg);

/* Appends the URL of base + path (path may be NULL) as it may be shown: without
 * any user:password@ the base URL carries (secrets stay out of messages and logs). */
void wix_shown_url(buf_t *out, const char *base, const char *path);

#endif
