/*
 * dispatch.c -- running events: the runs in flight and the order keys they
 * hold, handing runnable events to the workers, and what became of each run
 * (done, a retry with backoff, dead, or lost with its worker), queued for the
 * writer thread.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"
#include "../runtime/host.h"
#include "../runtime/sched.h"
#include "../util/backoff.h"
#include "../util/isotime.h"
#include "serve_internal.h"

static int key_busy(serve *s, const char *key)
{
    if (!key)
        return 0;
    for (int i = 0; i < s->ninflight; i++)
        if (s->inflight[i]->key && !strcmp(s->inflight[i]->key, key))
            return 1;
    /* an outcome not in the journal yet holds its key too (it may be a retry) */
    for (int i = 0; i < s->npending; i++)
        if (s->pending_keys[i] && !strcmp(s->pending_keys[i], key))
            return 1;
    return 0;
}

static int is_inflight(serve *s, const char *id)
{
    for (int i = 0; i < s->ninflight; i++)
        if (!strcmp(s->inflight[i]->id, id))
            return 1;
    return 0;
}

static void remove_inflight(serve *s, running *r)
{
    for (int i = 0; i < s->ninflight; i++) {
        if (s->inflight[i] == r) {
            s->inflight[i] = s->inflight[--s->ninflight];
            return;
        }
    }
}

static void queue_outcome(serve *s, const char *id, const char *key, int kind, long long next, const char *error,
                          const char *results)
{
    run_change *o = calloc(1, sizeof *o);
    if (!o)
        return; /* the event stays 'running' and runs again at the next start */
    o->id = strdup(id);
    o->kind = kind;
    o->next_attempt_ms = next;
    o->error = error ? strdup(error) : NULL;
    o->results = results ? strdup(results) : NULL;
    run_change **tail = &s->outcomes;
    while (*tail)
        tail = &(*tail)->next;
    *tail = o;
    if (kind != 3) {
        /* until the writer commits it, the journal still says 'running' */
        if (s->npending == s->cappending) {
            int cap = s->cappending ? s->cappending * 2 : 64;
            char **np = realloc(s->pending, (size_t)cap * sizeof *np);
            if (np)
                s->pending = np;
            char **nk = realloc(s->pending_keys, (size_t)cap * sizeof *nk);
            if (nk)
                s->pending_keys = nk;
            if (!np || !nk)
                return;
            s->cappending = cap;
        }
        s->pending_keys[s->npending] = key ? strdup(key) : NULL;
        s->pending[s->npending++] = strdup(id);
    }
}

static int is_pending(serve *s, const char *id)
{
    for (int i = 0; i < s->npending; i++)
        if (!strcmp(s->pending[i], id))
            return 1;
    return 0;
}

/* Forgets the ids the writer has committed. */
void take_settled(serve *s)
{
    pthread_mutex_lock(&s->lock);
    char **list = s->settled;
    int n = s->nsettled;
    s->settled = NULL;
    s->nsettled = s->capsettled = 0;
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < s->npending; k++) {
            if (!strcmp(s->pending[k], list[i])) {
                free(s->pending[k]);
                free(s->pending_keys[k]);
                s->npending--;
                s->pending[k] = s->pending[s->npending];
                s->pending_keys[k] = s->pending_keys[s->npending];
                break;
            }
        }
        free(list[i]);
    }
    free(list);
}

/* Hands this loop turn's state changes to the writer thread, which commits
 * them in one transaction with the next intake batch's: one writer, so intake
 * never waits for the run loop's commits. A crash before the commit only
 * means those events run again (same idempotency keys). */
void flush_outcomes(serve *s)
{
    if (!s->outcomes)
        return;
    run_change *last = s->outcomes;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&s->lock);
    if (s->wops_tail)
        s->wops_tail->next = s->outcomes;
    else
        s->wops_head = s->outcomes;
    s->wops_tail = last;
    pthread_cond_signal(&s->queued);
    pthread_mutex_unlock(&s->lock);
    s->outcomes = NULL;
}
/* One log line per failed attempt: which event, which hook, the attempt, the
 * error's code and message, and what happens next. */
typedef struct attempt_failure {
    const char *event, *chained_event, *hook, *code, *error;
    int permanent;
} attempt_failure;

static void log_failed_attempt(const running *r, const attempt_failure *f, int max_attempts, long long retry_in_ms)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, retry_in_ms >= 0 ? "warn" : "error", "event attempt failed");
    jw_kstr(w, "id", r->id);
    jw_kstr(w, "event", f->event);
    if (f->chained_event && *f->chained_event)
        jw_kstr(w, "chained_event", f->chained_event);
    jw_kstr(w, "hook", f->hook);
    jw_key(w, "attempt");
    jw_int(w, r->attempt);
    jw_key(w, "max_attempts");
    jw_int(w, max_attempts);
    jw_kstr(w, "code", f->code);
    jw_kstr(w, "error", f->error);
    jw_key(w, "permanent");
    jw_bool(w, f->permanent);
    jw_key(w, "will_retry");
    jw_bool(w, retry_in_ms >= 0);
    if (retry_in_ms >= 0) {
        jw_key(w, "retry_in_ms");
        jw_int(w, retry_in_ms);
    }
    host_log_end(&l);
}

static void log_dead(const char *id, const char *event, int attempts, const char *why, const char *code,
                     const char *error)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, "error", "event is dead");
    jw_kstr(w, "id", id);
    jw_kstr(w, "event", event);
    jw_key(w, "attempts");
    jw_int(w, attempts);
    jw_kstr(w, "why", why);
    jw_kstr(w, "code", code);
    jw_kstr(w, "last_error", error);
    host_log_end(&l);
}

static void running_free(serve *s, running *r)
{
    remove_inflight(s, r);
    free(r->id);
    free(r->key);
    free(r->name);
    free(r);
}

/* The delay before attempt + 1: exponential from retry.base_ms, capped at
 * retry.max_ms, jittered in its upper half. */
static long long retry_delay(const serve_settings *ss, int attempt)
{
    return backoff_ms(ss->retry_base_ms, ss->retry_max_ms, attempt, NULL);
}

/* An attempt failed (a hook failed, or its worker died under it alone):
 * retried with backoff, or dead when final or out of attempts. */
static void attempt_failed(serve *s, running *r, const attempt_failure *f, int final, const char *results)
{
    const serve_settings *ss = &s->cfg->serve;
    s->failed_runs_total++;
    if (final || r->attempt >= ss->retry_attempts) {
        log_failed_attempt(r, f, ss->retry_attempts, -1);
        const char *why = final && f->permanent ? "a permanent failure: trying again cannot succeed"
                          : final               ? "the hook's retry is never"
                                                : "its last attempt failed";
        buf_t dead;
        buf_init(&dead, 0);
        if (final)
            buf_adds(&dead, "permanent: ");
        buf_adds(&dead, f->error);
        queue_outcome(s, r->id, r->key, 2, 0, buf_cstr(&dead), results);
        s->dead_total++;
        if (final)
            s->permanent_total++;
        count_event(s, r->name, EVC_DEAD);
        log_dead(r->id, r->name, r->attempt, why, f->code, f->error);
        buf_free(&dead);
    } else {
        long long d = retry_delay(ss, r->attempt);
        log_failed_attempt(r, f, ss->retry_attempts, d);
        queue_outcome(s, r->id, r->key, 1, iso_now_ms() + d, f->error, results);
        s->event_retries_total++;
        count_event(s, r->name, EVC_RETRY);
    }
}

/* A worker's DONE (worker.h has the fields). */
void run_done(void *ctx, void *arg, const wire_msg *m)
{
    serve *s = ctx;
    running *r = arg;
    const char *flags = m->f[1], *results = m->f[2];
    observe(s, (double)(sched_now_ms() - r->started_ms) / 1000.0);
    count_hooks(s, m->f[8]);
    if (flags[0] != '1') {
        queue_outcome(s, r->id, r->key, 0, 0, NULL, results);
        s->done_total++;
        count_event(s, r->name, EVC_DONE);
    } else {
        attempt_failure f = {.event = m->len[7] ? m->f[7] : r->name, .chained_event = m->f[7], .hook = m->f[4],
                             .code = m->f[5], .error = m->len[6] ? m->f[6] : "failed", .permanent = flags[1] == '1'};
        if (m->len[7]) /* the failure was in a chained event: the log names both */
            f.event = r->name;
        attempt_failed(s, r, &f, flags[2] == '1', results);
    }
    running_free(s, r);
}

/* The worker running the event died. Alone in it, the death is the event's:
 * a failed attempt ("worker crashed: SIGSEGV", "hard deadline ..."), and
 * after serve.poison_after of them it is dead (poison). As a bystander it
 * loses nothing: it runs again at once, alone, to see whose the death was. */
void run_lost(void *ctx, void *arg, const char *reason, int charged)
{
    serve *s = ctx;
    running *r = arg;
    if (!charged) {
        queue_outcome(s, r->id, r->key, 5, 0, reason, NULL);
        host_logline l;
        json_writer *w = host_log_begin(&l, "warn", "event run again alone: its worker died");
        jw_kstr(w, "id", r->id);
        jw_kstr(w, "event", r->name);
        jw_kstr(w, "reason", reason);
        host_log_end(&l);
        running_free(s, r);
        return;
    }
    int deaths = r->worker_deaths + 1;
    const serve_settings *ss = &s->cfg->serve;
    char err[256];
    snprintf(err, sizeof err, "%s", reason);
    if (deaths >= ss->poison_after) {
        /* quarantined: its runs keep killing workers */
        snprintf(err, sizeof err, "poison: %s (%d worker%s died running it)", reason, deaths, deaths == 1 ? "" : "s");
        queue_outcome(s, r->id, NULL, 4, 0, reason, NULL);
        queue_outcome(s, r->id, r->key, 2, 0, err, NULL);
        s->failed_runs_total++;
        s->dead_total++;
        s->poison_total++;
        count_event(s, r->name, EVC_DEAD);
        log_dead(r->id, r->name, r->attempt, "poison: its runs keep killing worker processes", "WORKER", err);
        running_free(s, r);
        return;
    }
    attempt_failure f = {.event = r->name, .hook = "-", .code = "WORKER", .error = err};
    if (r->attempt >= ss->retry_attempts) {
        queue_outcome(s, r->id, NULL, 4, 0, reason, NULL);
        attempt_failed(s, r, &f, 0, NULL);
    } else {
        long long d = retry_delay(ss, r->attempt);
        log_failed_attempt(r, &f, ss->retry_attempts, d);
        queue_outcome(s, r->id, r->key, 4, iso_now_ms() + d, reason, NULL);
        s->failed_runs_total++;
        s->event_retries_total++;
        count_event(s, r->name, EVC_RETRY);
    }
    running_free(s, r);
}

static void dispatch_marks(serve *s)
{
    int cap = s->cfg->serve.concurrency;
    if (s->ninflight >= cap)
        return;
    pthread_mutex_lock(&s->lock);
    int broken = s->journal_broken;
    pthread_mutex_unlock(&s->lock);
    if (broken)
        return; /* an outcome could not be written: no run starts until the journal takes writes */
    long long now = iso_now_ms();
    journal_event *ev = NULL;
    int n = 0;
    char **waiting = NULL;
    int nwaiting = 0;
    if (journal_waiting_keys(s->jmain, now, &waiting, &nwaiting) < 0 ||
        journal_runnable(s->jmain, now, cap + s->ninflight + 1000, &ev, &n) < 0) {
        journal_failed(s, journal_errmsg(s->jmain), 0);
        for (int i = 0; i < nwaiting; i++)
            free(waiting[i]);
        free(waiting);
        return;
    }
    /* Keys already taken in this pass (an earlier event of the key waits or runs). */
    char **blocked = calloc((size_t)n + 1, sizeof *blocked);
    int nblocked = 0;
    int max_attempts = s->cfg->serve.retry_attempts;
    for (int i = 0; i < n && s->ninflight < cap; i++) {
        journal_event *e = &ev[i];
        int is_blocked = 0;
        for (int k = 0; e->order_key && k < nblocked && !is_blocked; k++)
            is_blocked = !strcmp(blocked[k], e->order_key);
        for (int k = 0; e->order_key && k < nwaiting && !is_blocked; k++)
            is_blocked = !strcmp(waiting[k], e->order_key);
        if (is_blocked || is_inflight(s, e->id) || is_pending(s, e->id) || key_busy(s, e->order_key) ||
            !workers_has_room(s->pool, e->solo)) {
            if (e->order_key && blocked)
                blocked[nblocked++] = e->order_key; /* later events of this key wait their turn */
            continue;
        }
        if (e->attempts >= max_attempts) {
            /* every attempt was used, the last ones cut short by a stop of the service;
             * the error of the last run that ended is kept */
            char why[2048];
            snprintf(why, sizeof why, "its attempts were used up (the service stopped during a run)%s%.1900s",
                     e->last_error && *e->last_error ? "; the last error: " : "",
                     e->last_error ? e->last_error : "");
            if (journal_mark_dead(s->jmain, e->id, why, e->results_json) < 0) {
                journal_failed(s, journal_errmsg(s->jmain), 0);
                break;
            }
            s->dead_total++;
            log_dead(e->id, e->name, e->attempts, "its attempts were used up (the service stopped during a run)",
                     NULL, e->last_error ? e->last_error : "");
            continue;
        }
        running *r = calloc(1, sizeof *r);
        if (!r || !(r->id = strdup(e->id))) {
            free(r);
            break;
        }
        r->key = e->order_key ? strdup(e->order_key) : NULL;
        r->name = strdup(e->name);
        r->worker_deaths = e->worker_deaths;
        r->attempt = e->attempts + 1;
        r->started_ms = sched_now_ms();
        r->s = s;
        queue_outcome(s, e->id, NULL, 3, 0, NULL, NULL); /* running, attempts + 1 */
        s->inflight[s->ninflight++] = r;
        if (!r->name || workers_run(s->pool, e->id, e->name, e->data_json, e->solo, r) < 0) {
            queue_outcome(s, e->id, e->order_key, 1, iso_now_ms() + 1000, "out of memory", NULL);
            running_free(s, r);
        }
        if (e->order_key && blocked)
            blocked[nblocked++] = e->order_key;
    }
    free(blocked);
    for (int i = 0; i < nwaiting; i++)
        free(waiting[i]);
    free(waiting);
    journal_events_free(ev, n);
}

void dispatch(serve *s)
{
    take_settled(s);
    if (!s->draining)
        dispatch_marks(s);
    flush_outcomes(s);
}
