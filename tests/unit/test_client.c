/*
 * test_client.c -- the wix client over a wire of the test's own (client.h):
 * the client's retries, Retry-After, the bound in flight and the wire's
 * lifetime, with neither libcurl nor the emulator behind it.
 */
#include <lauxlib.h>
#include <stdlib.h>

#include "check.h"
#include "runtime/sched.h"
#include "wix/client.h"

/* A wire answering from a script: status[i] for the i-th attempt, at once
 * or (later_ms > 0) from a scheduler timer. */
typedef struct fake_wire {
    sched_t *sched;
    const long *status;
    int nstatus;
    long retry_after_ms;          /* sent with every 429 */
    int later_ms;
    int attempts, inflight, max_inflight, closed;
    long long sent_at[16];
    wix_attempt *pending[16];
    int npending;
} fake_wire;

static void answer(fake_wire *w, wix_attempt *a)
{
    int i = w->attempts - 1;
    a->status = i < w->nstatus ? w->status[i] : 200;
    if (a->status == 429)
        a->retry_after_ms = w->retry_after_ms;
    buf_adds(a->resp, "{}");
    w->inflight--;
    wix_attempt_done(a);
}

static void answer_later(void *arg)
{
    fake_wire *w = arg;
    wix_attempt *a = w->pending[0];
    for (int i = 1; i < w->npending; i++)
        w->pending[i - 1] = w->pending[i];
    w->npending--;
    answer(w, a);
}

static void fake_send(void *self, wix_attempt *a)
{
    fake_wire *w = self;
    if (w->attempts < 16)
        w->sent_at[w->attempts] = sched_now_ms();
    w->attempts++;
    if (++w->inflight > w->max_inflight)
        w->max_inflight = w->inflight;
    if (w->later_ms > 0 && w->npending < 16) {
        w->pending[w->npending++] = a;
        sched_timer(w->sched, sched_now_ms() + w->later_ms, answer_later, w);
        return;
    }
    answer(w, a);
}

static void fake_close(void *self) { ((fake_wire *)self)->closed++; }

typedef struct outcome {
    int calls;
    long status;
    int attempts;
} outcome;

static void on_done(void *arg, const wix_result *r)
{
    outcome *o = arg;
    o->calls++;
    o->status = r->status;
    o->attempts = r->attempts;
}

static wix_settings settings(void)
{
    wix_settings s = {.transport = TRANSPORT_SANDBOX, .base_url = "http://test", .retry_attempts = 4,
                      .retry_base_ms = 20, .retry_max_ms = 40, .retry_total_ms = 10000, .concurrency = 8};
    return s;
}

/* 503, 503, then 200: three attempts, each wait within backoff_ms's bounds
 * ([base/2, base] after the first, [base, 2 base] after the second). */
static void test_retries_over_a_wire(void)
{
    lua_State *L = luaL_newstate();
    sched_t *sched = sched_new(L);
    static const long script[] = {503, 503, 200};
    fake_wire f = {.sched = sched, .status = script, .nstatus = 3};
    wix_wire w = {.kind = TRANSPORT_SANDBOX, .self = &f, .send = fake_send, .close = fake_close};
    wix_settings s = settings();
    char err[256];
    wix_client *c = wix_client_new(&s, sched, &w, err, sizeof err);
    CHECK(c != NULL);
    outcome o = {0};
    wix_client_call(c, "GET", "/resellers/v1/packages/x", NULL, 0, NULL, NULL, on_done, &o);
    sched_run(sched);
    CHECK_INT(o.calls, 1);
    CHECK_INT(o.status, 200);
    CHECK_INT(o.attempts, 3);
    CHECK_INT(f.attempts, 3);
    long long w1 = f.sent_at[1] - f.sent_at[0], w2 = f.sent_at[2] - f.sent_at[1];
    CHECK(w1 >= 10 && w1 <= 20 + 15);
    CHECK(w2 >= 20 && w2 <= 40 + 15);
    CHECK_INT(wix_client_stats(c)->retries, 2);
    /* no admin API on this wire */
    CHECK_INT(wix_client_sandbox_admin(c, "POST", "/__admin/reset", NULL), -1);
    CHECK_INT(wix_client_transport(c), TRANSPORT_SANDBOX);
    CHECK_INT(f.closed, 0);
    wix_client_free(c);
    CHECK_INT(f.closed, 1); /* the client owns its wire */
    sched_free(sched);
    lua_close(L);
}

/* A 429's Retry-After is waited even when the backoff would be shorter; a
 * 4xx other than 429 is not retried. */
static void test_retry_after_and_final_answers(void)
{
    lua_State *L = luaL_newstate();
    sched_t *sched = sched_new(L);
    static const long script[] = {429, 404};
    fake_wire f = {.sched = sched, .status = script, .nstatus = 2, .retry_after_ms = 120};
    wix_wire w = {.kind = TRANSPORT_SANDBOX, .self = &f, .send = fake_send, .close = fake_close};
    wix_settings s = settings();
    char err[256];
    wix_client *c = wix_client_new(&s, sched, &w, err, sizeof err);
    outcome o = {0};
    wix_client_call(c, "POST", "/resellers/v2/packages", "{}", 2, "acc", "key", on_done, &o);
    sched_run(sched);
    CHECK_INT(o.status, 404);
    CHECK_INT(o.attempts, 2);
    CHECK(f.sent_at[1] - f.sent_at[0] >= 120);
    wix_client_free(c);
    sched_free(sched);
    lua_close(L);
}

/* Answers that come later: never more attempts in flight than concurrency. */
static void test_bound_in_flight(void)
{
    lua_State *L = luaL_newstate();
    sched_t *sched = sched_new(L);
    fake_wire f = {.sched = sched, .later_ms = 5};
    wix_wire w = {.kind = TRANSPORT_SANDBOX, .self = &f, .send = fake_send, .close = fake_close};
    wix_settings s = settings();
    s.concurrency = 2;
    char err[256];
    wix_client *c = wix_client_new(&s, sched, &w, err, sizeof err);
    outcome o = {0};
    for (int i = 0; i < 6; i++)
        wix_client_call(c, "GET", "/resellers/v1/packages/x", NULL, 0, NULL, NULL, on_done, &o);
    sched_run(sched);
    CHECK_INT(o.calls, 6);
    CHECK_INT(f.attempts, 6);
    CHECK_INT(f.max_inflight, 2);
    wix_client_free(c);
    sched_free(sched);
    lua_close(L);
}

/* The http wire refuses to be made without an API key, with the setting to fix. */
static void test_http_wire_needs_a_key(void)
{
    wix_settings s = settings();
    s.transport = TRANSPORT_HTTP;
    wix_wire w;
    char err[256];
    CHECK_INT(wix_http_wire(&w, &s, NULL, err, sizeof err), -1);
    CHECK(strstr(err, "no API key is set (WIX_API_KEY or wix.api_key_file)") != NULL);
    CHECK_INT(wix_resolve_transport(&s), TRANSPORT_HTTP);
    s.transport = TRANSPORT_AUTO;
    CHECK_INT(wix_resolve_transport(&s), TRANSPORT_SANDBOX);
    s.api_key = "k";
    CHECK_INT(wix_resolve_transport(&s), TRANSPORT_HTTP);
}

int main(void)
{
    test_retries_over_a_wire();
    test_retry_after_and_final_answers();
    test_bound_in_flight();
    test_http_wire_needs_a_key();
    return check_report();
}
