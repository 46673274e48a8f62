/*
 * client.h -- the wire under the wix module: one call = one API request,
 * retried with backoff on transport errors, 429 and 5xx (honouring
 * Retry-After) within a number of attempts and a time budget, throttled by a
 * client-side sliding-window rate limit and a bound on requests in flight.
 *
 * Two transports behind one interface: "http" (libcurl multi on the
 * scheduler, keep-alive connections reused) and "sandbox" (the emulator
 * in-process, no socket). Every attempt writes one audit line when an audit
 * sink is configured. The API key goes into the Authorization header and
 * nowhere else.
 */
#ifndef WIXR_CLIENT_H
#define WIXR_CLIENT_H

#include <stddef.h>

#include "../util/buf.h"

#include "../config/config.h"
#include "../runtime/sched.h"

typedef struct wix_client wix_client;

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

/* Resolves the transport (auto: http with an API key, else sandbox). */
wix_client *wix_client_new(const wix_settings *s, sched_t *sched, char *err, size_t errlen);
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
 * and returns its status (-1 when the transport is not the sandbox). */
int wix_client_sandbox_admin(wix_client *c, const char *method, const char *path, const char *body);

/* Starts one call; done is called exactly once, possibly before this
 * returns. body may be NULL. idem_key is only for the audit line. */
void wix_client_call(wix_client *c, const char *method, const char *path, const char *body, size_t body_len,
                     const char *account_id, const char *idem_key, wix_done_fn done, void *arg);

/* Appends the URL of base + path (path may be NULL) as it may be shown: without
 * any user:password@ the base URL carries (secrets stay out of messages and logs). */
void wix_shown_url(buf_t *out, const char *base, const char *path);

#endif
