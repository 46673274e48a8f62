/*
 * status.c -- the service's health: journal failures and the probe that
 * clears them, the counts behind /metrics (run times, outcomes by event and
 * hook), and the /healthz and /metrics snapshots the HTTP threads serve.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../json/json.h"
#include "../runtime/host.h"
#include "../runtime/sched.h"
#include "../util/isotime.h"
#include "serve_internal.h"

static const double buckets[NBUCKETS] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};

/* ---- journal failures ----
 *
 * A write the journal refused (disk full, I/O error, a corrupted file) or a
 * journal file deleted or replaced under the service: intake answers 503
 * JOURNAL, no new run starts (a run whose outcome cannot be written would run
 * again and again), /healthz answers 503 with the reason. The main loop probes
 * the journal every JOURNAL_PROBE_MS and resumes once a write goes through; a
 * deleted or replaced file (fatal) needs a restart. */
#define JOURNAL_PROBE_MS 2000

static long long mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void journal_failed(struct serve *s, const char *why, int fatal)
{
    pthread_mutex_lock(&s->lock);
    int was = s->journal_broken;
    if (!was || (fatal && was != 2)) {
        s->journal_broken = fatal ? 2 : 1;
        snprintf(s->journal_error, sizeof s->journal_error, "%s", why);
    }
    s->journal_probe_at = mono_now_ms() + JOURNAL_PROBE_MS;
    pthread_mutex_unlock(&s->lock);
    if (!was || (fatal && was != 2)) {
        host_logline l;
        json_writer *w = host_log_begin(&l, "error", "the journal cannot be written: intake answers 503, no run starts");
        jw_kstr(w, "error", why);
        host_log_end(&l);
    }
}

void observe(serve *s, double secs)
{
    size_t b = 0;
    while (b < NBUCKETS && secs > buckets[b])
        b++;
    s->hist[b]++;
    s->hist_sum += secs;
    s->hist_count++;
}

/* ---- per event and per hook counts, for /metrics ----
 *
 * Labels come from the configuration only (event names with hooks, hook script
 * names), so the number of series is bounded by it; an event no hook listens
 * to (serve.accept_unknown_events) counts as event="_other". */

static const char *const evc_names[EVC__N] = {"done", "retry", "dead"};
enum { HC_OK, HC_FAILED, HC_PERMANENT, HC_SKIPPED, HC__N };
static const char *const hc_names[HC__N] = {"ok", "failed", "permanent", "skipped"};
#define MAX_LABEL_ROWS 1024

/* (the main thread swaps s->names: it reads them without the lock) */
static int configured_event(const serve *s, const char *name)
{
    int n;
    return name_index_find(&s->names, name, &n) != NULL;
}

static label_row *label_row_of(serve *s, const char *event, const char *hook, size_t hooklen)
{
    for (int i = 0; i < s->nrows; i++) {
        label_row *r = &s->rows[i];
        if (!strcmp(r->event, event) && (hook ? r->hook && strlen(r->hook) == hooklen &&
                                                    !memcmp(r->hook, hook, hooklen)
                                              : !r->hook))
            return r;
    }
    if (s->nrows >= MAX_LABEL_ROWS)
        return NULL;
    if (s->nrows == s->caprows) {
        int cap = s->caprows ? s->caprows * 2 : 32;
        label_row *nr = realloc(s->rows, (size_t)cap * sizeof *nr);
        if (!nr)
            return NULL;
        s->rows = nr;
        s->caprows = cap;
    }
    label_row *r = &s->rows[s->nrows];
    memset(r, 0, sizeof *r);
    r->event = strdup(event);
    r->hook = hook ? strndup(hook, hooklen) : NULL;
    if (!r->event || (hook && !r->hook)) {
        free(r->event);
        free(r->hook);
        return NULL;
    }
    s->nrows++;
    return r;
}

void count_event(serve *s, const char *event, int what)
{
    label_row *r = label_row_of(s, configured_event(s, event) ? event : "_other", NULL, 0);
    if (r)
        r->n[what]++;
}

/* The hook runs of an ended event, from its DONE message: a line
 * "event\tscript\tcategory\n" per hook run (worker.h). */
void count_hooks(serve *s, const char *lines)
{
    static const char *const cats[HC__N] = {"ok", "failed", "permanent", "skipped"};
    for (const char *p = lines; *p;) {
        const char *nl = strchr(p, '\n'), *t1 = strchr(p, '\t');
        if (!nl)
            break;
        const char *t2 = t1 && t1 < nl ? memchr(t1 + 1, '\t', (size_t)(nl - t1 - 1)) : NULL;
        if (t2) {
            char event[256];
            snprintf(event, sizeof event, "%.*s", (int)(t1 - p), p);
            int cat = -1;
            for (int k = 0; k < HC__N; k++)
                if ((size_t)(nl - t2 - 1) == strlen(cats[k]) && !memcmp(t2 + 1, cats[k], strlen(cats[k])))
                    cat = k;
            label_row *r = cat >= 0 && configured_event(s, event)
                               ? label_row_of(s, event, t1 + 1, (size_t)(t2 - t1 - 1))
                               : NULL;
            if (r)
                r->n[cat]++;
        }
        p = nl + 1;
    }
}

/* ---- snapshots for /healthz and /metrics ---- */

/* A Prometheus label value: backslash, double quote and newline escaped
 * (the exposition format's rules); other control bytes and bytes that are
 * not UTF-8 become '?'. */
static void prom_label(buf_t *m, const char *v)
{
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '\\' || c == '"')
            buf_addc(m, '\\'), buf_addc(m, (char)c);
        else if (c == '\n')
            buf_adds(m, "\\n");
        else if (c < 0x20 || c == 0x7f)
            buf_addc(m, '?');
        else if (c >= 0x80) {
            size_t l = 1;
            while (l < 4 && i + l < n && ((unsigned char)v[i + l] & 0xC0) == 0x80)
                l++;
            if (json_utf8_valid(v + i, l))
                buf_add(m, v + i, l);
            else
                buf_addc(m, '?');
            i += l - 1;
        } else
            buf_addc(m, (char)c);
    }
}

static void metric_line(buf_t *m, const char *metric, const char *event, const char *hook, const char *what,
                        long long n)
{
    buf_adds(m, metric);
    buf_adds(m, "{event=\"");
    prom_label(m, event);
    if (hook) {
        buf_adds(m, "\",hook=\"");
        prom_label(m, hook);
    }
    buf_printf(m, "\",outcome=\"%s\"} %lld\n", what, n);
}

/* Follows the rebuild counts of the current rules' hooks (summed over the
 * workers); returns how many hooks keep breaking (BREAKING_REBUILDS rebuilds
 * within BREAKING_WINDOW_MS). */
static int track_rebuilds(serve *s, const workers_totals *t, long long now)
{
    int nh = s->cfg->nhooks < WORKERS_MAX_HOOKS ? s->cfg->nhooks : WORKERS_MAX_HOOKS;
    if (s->breaks_version != s->rules_version || s->nbreaks != nh) {
        free(s->breaks);
        s->breaks = calloc((size_t)nh + 1, sizeof *s->breaks);
        s->nbreaks = s->breaks ? nh : 0;
        s->breaks_version = s->rules_version;
        /* counted from what the first snapshot of these rules sees (a worker's counters may still
         * be those of the rules before, until its next report) */
        for (int i = 0; i < s->nbreaks; i++)
            s->breaks[i].seen = -1;
    }
    int n = 0;
    for (int i = 0; i < s->nbreaks; i++) {
        breaking *b = &s->breaks[i];
        for (long long d = b->seen < 0 ? 0 : t->rebuilds[i] - b->seen; d > 0; d--) {
            memmove(b->at + 1, b->at, sizeof b->at - sizeof b->at[0]);
            b->at[0] = now;
        }
        b->seen = t->rebuilds[i];
        if (b->at[BREAKING_REBUILDS - 1] && now - b->at[BREAKING_REBUILDS - 1] <= BREAKING_WINDOW_MS)
            n++;
    }
    return n;
}

/* "event (script)", as the hooks name themselves in messages. */
static void hook_name(const wixr_config *c, int i, char *out, size_t n)
{
    const char *script = strrchr(c->hooks[i].script, '/');
    snprintf(out, n, "%s (%s)", c->hooks[i].event, script ? script + 1 : c->hooks[i].script);
}

void snapshot(serve *s)
{
    long long counts[5] = {0};
    journal_counts(s->jmain, counts);
    static workers_totals T; /* (snapshots run on the main thread only) */
    workers_totals_get(s->pool, &T);
    const workers_totals *st = &T;
    char lr[80] = "";
    if (s->last_reload_ms)
        iso_format_ms(s->last_reload_ms, lr);
    buf_t h;
    buf_init(&h, 0);
    json_writer w;
    jw_init(&w, &h);
    jw_obj(&w);
    long long now = sched_now_ms();
    int nbreaking = track_rebuilds(s, st, now);
    int stalled = workers_stalled(s->pool);
    pthread_mutex_lock(&s->lock);
    int broken = s->journal_broken;
    char journal_error[sizeof s->journal_error];
    snprintf(journal_error, sizeof journal_error, "%s", s->journal_error);
    pthread_mutex_unlock(&s->lock);
    jw_kstr(&w, "status", s->draining          ? "draining"
                          : broken             ? "journal_failing"
                          : s->last_reload_ok && !nbreaking && !stalled ? "ok"
                                               : "degraded");
    jw_key(&w, "rules_version");
    jw_int(&w, s->rules_version);
    jw_key(&w, "draining");
    jw_bool(&w, s->draining);
    jw_key(&w, "last_reload");
    jw_obj(&w);
    jw_key(&w, "ok");
    jw_bool(&w, s->last_reload_ok);
    if (lr[0])
        jw_kstr(&w, "at", lr);
    if (!s->last_reload_ok)
        jw_kstr(&w, "error", s->last_reload_error);
    jw_obj_end(&w);
    if (s->restart_needed[0])
        jw_kstr(&w, "restart_needed", s->restart_needed);
    if (nbreaking) {
        /* hooks whose state broke its memory cap BREAKING_REBUILDS times within the window */
        jw_key(&w, "breaking_hooks");
        jw_arr(&w);
        for (int i = 0; i < s->nbreaks; i++) {
            const breaking *b = &s->breaks[i];
            if (!b->at[BREAKING_REBUILDS - 1] || now - b->at[BREAKING_REBUILDS - 1] > BREAKING_WINDOW_MS)
                continue;
            char name[300];
            hook_name(s->cfg, i, name, sizeof name);
            jw_obj(&w);
            jw_kstr(&w, "hook", name);
            jw_key(&w, "rebuilds");
            jw_int(&w, st->rebuilds[i]);
            if (st->rebuild_errors[i][0])
                jw_kstr(&w, "rebuild_error", st->rebuild_errors[i]);
            jw_obj_end(&w);
        }
        jw_arr_end(&w);
    }
    jw_key(&w, "reloads");
    jw_int(&w, s->reloads_total);
    jw_key(&w, "reload_failures");
    jw_int(&w, s->reload_failures_total);
    jw_key(&w, "in_flight");
    jw_int(&w, s->ninflight);
    if (stalled)
        jw_kstr(&w, "workers_stalled", "no worker process is ready, or none with work made progress in 2 s");
    jw_key(&w, "workers");
    workers_health_json(s->pool, &w);
    jw_key(&w, "worker_restarts");
    jw_int(&w, workers_restarts(s->pool));
    jw_key(&w, "poisoned");
    jw_int(&w, s->poison_total);
    if (broken) {
        jw_key(&w, "journal_failure");
        jw_obj(&w);
        jw_kstr(&w, "error", journal_error);
        jw_key(&w, "restart_needed");
        jw_bool(&w, broken == 2);
        jw_obj_end(&w);
    }
    jw_key(&w, "journal");
    jw_obj(&w);
    long long depth = 0;
    for (int i = 0; i < 5; i++) {
        jw_key(&w, journal_state_name((ev_state)i));
        jw_int(&w, counts[i]);
        if (i != EV_DONE && i != EV_DEAD)
            depth += counts[i];
    }
    jw_key(&w, "depth");
    jw_int(&w, depth);
    jw_obj_end(&w);
    jw_obj_end(&w);

    buf_t m;
    buf_init(&m, 0);
    buf_adds(&m, "# HELP wixr_events Events in the journal by state.\n# TYPE wixr_events gauge\n");
    for (int i = 0; i < 5; i++)
        buf_printf(&m, "wixr_events{state=\"%s\"} %lld\n", journal_state_name((ev_state)i), counts[i]);
    pthread_mutex_lock(&s->lock);
    long long acc = s->accepted_total, dup = s->duplicates_total, truncations = s->wal_truncations;
    long long purged = s->purged_total;
    pthread_mutex_unlock(&s->lock);
    buf_printf(&m, "# HELP wixr_events_purged_total Finished events deleted by the journal's retention.\n"
                   "# TYPE wixr_events_purged_total counter\nwixr_events_purged_total %lld\n", purged);
    buf_printf(&m, "# HELP wixr_journal_wal_bytes The journal's write-ahead log (bounded by serve.journal_wal_mb).\n"
                   "# TYPE wixr_journal_wal_bytes gauge\nwixr_journal_wal_bytes %lld\n"
                   "# HELP wixr_journal_wal_truncations_total Times the writer truncated the WAL past its bound.\n"
                   "# TYPE wixr_journal_wal_truncations_total counter\nwixr_journal_wal_truncations_total %lld\n",
               journal_wal_size(s->jmain), truncations);
    buf_printf(&m, "# HELP wixr_events_accepted_total Events accepted over HTTP.\n# TYPE wixr_events_accepted_total counter\n"
                   "wixr_events_accepted_total %lld\n"
                   "# HELP wixr_events_duplicate_total Events sent again with a known id.\n# TYPE wixr_events_duplicate_total counter\n"
                   "wixr_events_duplicate_total %lld\n",
               acc, dup);
    buf_printf(&m, "# HELP wixr_http_slow_requests_cut_total Connections cut off because their request took longer than "
                   "serve.request_timeout_ms.\n# TYPE wixr_http_slow_requests_cut_total counter\n"
                   "wixr_http_slow_requests_cut_total %lld\n",
               s->slow_cut_total);
    buf_printf(&m, "# HELP wixr_event_runs_failed_total Event runs in which a hook failed.\n# TYPE wixr_event_runs_failed_total counter\n"
                   "wixr_event_runs_failed_total %lld\n"
                   "# HELP wixr_event_retries_total Event runs scheduled again after a failure.\n# TYPE wixr_event_retries_total counter\n"
                   "wixr_event_retries_total %lld\n"
                   "# HELP wixr_events_dead_total Events that failed their last attempt.\n# TYPE wixr_events_dead_total counter\n"
                   "wixr_events_dead_total %lld\n",
               s->failed_runs_total, s->event_retries_total, s->dead_total);
    buf_adds(&m, "# HELP wixr_event_run_seconds Time to run an event's hooks.\n# TYPE wixr_event_run_seconds histogram\n");
    long long cum = 0;
    for (size_t b = 0; b < NBUCKETS; b++) {
        cum += s->hist[b];
        buf_printf(&m, "wixr_event_run_seconds_bucket{le=\"%g\"} %lld\n", buckets[b], cum);
    }
    cum += s->hist[NBUCKETS];
    buf_printf(&m, "wixr_event_run_seconds_bucket{le=\"+Inf\"} %lld\nwixr_event_run_seconds_sum %.6f\n"
                   "wixr_event_run_seconds_count %lld\n",
               cum, s->hist_sum, s->hist_count);
    buf_adds(&m, "# HELP wixr_api_calls_total Resellers API calls by endpoint and final status.\n# TYPE wixr_api_calls_total counter\n");
    int nc = st->ncalls;
    const wix_call_count *cc = st->calls;
    for (int i = 0; i < nc; i++)
        buf_printf(&m, "wixr_api_calls_total{endpoint=\"%s\",status=\"%ld\"} %lld\n", cc[i].endpoint, cc[i].status,
                   cc[i].n);
    buf_printf(&m, "# HELP wixr_api_retries_total API attempts made again (transport error, 429, 5xx).\n# TYPE wixr_api_retries_total counter\n"
                   "wixr_api_retries_total %lld\n"
                   "# HELP wixr_rate_limit_waits_total Calls held back by the client-side rate limit.\n# TYPE wixr_rate_limit_waits_total counter\n"
                   "wixr_rate_limit_waits_total %lld\n",
               st->retries, st->rate_waits);
    buf_printf(&m, "# HELP wixr_reloads_total Rule reloads that took effect.\n# TYPE wixr_reloads_total counter\n"
                   "wixr_reloads_total %lld\n"
                   "# HELP wixr_reload_failures_total Reloads refused because a file did not load.\n# TYPE wixr_reload_failures_total counter\n"
                   "wixr_reload_failures_total %lld\n"
                   "# HELP wixr_rules_version The rules in force.\n# TYPE wixr_rules_version gauge\nwixr_rules_version %ld\n"
                   "# HELP wixr_events_in_flight Events running now.\n# TYPE wixr_events_in_flight gauge\n"
                   "wixr_events_in_flight %d\n",
               s->reloads_total, s->reload_failures_total, s->rules_version, s->ninflight);
    buf_adds(&m, "# HELP wixr_event_outcomes_total Event runs by event name and how they ended (done, retry, dead).\n"
                 "# TYPE wixr_event_outcomes_total counter\n");
    for (int i = 0; i < s->nrows; i++)
        for (int k = 0; k < EVC__N && !s->rows[i].hook; k++)
            metric_line(&m, "wixr_event_outcomes_total", s->rows[i].event, NULL, evc_names[k], s->rows[i].n[k]);
    buf_adds(&m, "# HELP wixr_hook_runs_total Hook runs by event, hook (its script) and outcome (ok, failed, "
                 "permanent, skipped).\n# TYPE wixr_hook_runs_total counter\n");
    for (int i = 0; i < s->nrows; i++)
        for (int k = 0; k < HC__N && s->rows[i].hook; k++)
            metric_line(&m, "wixr_hook_runs_total", s->rows[i].event, s->rows[i].hook, hc_names[k], s->rows[i].n[k]);
    buf_adds(&m, "# HELP wixr_hook_rebuilds_total Fresh Lua states made for a hook after a run broke its memory "
                 "cap (the current rules' hooks).\n# TYPE wixr_hook_rebuilds_total counter\n");
    for (int i = 0; i < s->cfg->nhooks && i < WORKERS_MAX_HOOKS; i++) {
        const hook_def *k = &s->cfg->hooks[i];
        if (!k->enabled)
            continue;
        const char *script = strrchr(k->script, '/');
        buf_adds(&m, "wixr_hook_rebuilds_total{event=\"");
        prom_label(&m, k->event);
        buf_adds(&m, "\",hook=\"");
        prom_label(&m, script ? script + 1 : k->script);
        buf_printf(&m, "\"} %lld\n", st->rebuilds[i]);
    }
    buf_printf(&m, "# HELP wixr_worker_restarts_total Worker processes replaced after they died.\n"
                   "# TYPE wixr_worker_restarts_total counter\nwixr_worker_restarts_total %lld\n"
                   "# HELP wixr_events_poisoned_total Events quarantined because their runs kept killing workers.\n"
                   "# TYPE wixr_events_poisoned_total counter\nwixr_events_poisoned_total %lld\n",
               workers_restarts(s->pool), s->poison_total);
    buf_printf(&m, "# HELP wixr_events_permanent_total Events ended dead at once by a permanent failure.\n"
                   "# TYPE wixr_events_permanent_total counter\nwixr_events_permanent_total %lld\n",
               s->permanent_total);
    buf_printf(&m, "# HELP wixr_polls_total Polls of the API for status changes.\n# TYPE wixr_polls_total counter\n"
                   "wixr_polls_total %lld\n"
                   "# HELP wixr_poll_failures_total Polls that failed.\n# TYPE wixr_poll_failures_total counter\n"
                   "wixr_poll_failures_total %lld\n"
                   "# HELP wixr_poll_events_total Events made from observed changes.\n# TYPE wixr_poll_events_total counter\n"
                   "wixr_poll_events_total %lld\n",
               s->polls_total, s->poll_failures_total, s->poll_events_total);
    pthread_mutex_lock(&s->lock);
    free(s->health);
    free(s->metrics);
    s->health = buf_steal(&h, NULL);
    s->health_503 = s->draining || broken || stalled;
    s->metrics = buf_steal(&m, NULL);
    pthread_mutex_unlock(&s->lock);
    buf_free(&h);
    buf_free(&m);
}

/* The main loop's look at the journal (every snapshot): the file it opened is
 * still there and still a SQLite file, and a failing journal takes a write
 * again (the probe). */
void check_journal(serve *s)
{
    struct stat st;
    if (stat(s->journal_path, &st) < 0 || st.st_dev != s->journal_dev || st.st_ino != s->journal_ino) {
        char why[PATH_MAX + 128];
        snprintf(why, sizeof why, "the journal file %s was %s under the service; restart it", s->journal_path,
                 errno == ENOENT ? "deleted" : "replaced");
        errno = 0;
        journal_failed(s, why, 1);
        return;
    }
    char err[256];
    if (journal_check_file(s->jmain, err, sizeof err) < 0) {
        char why[sizeof err + 32];
        snprintf(why, sizeof why, "%s; restart the service", err);
        journal_failed(s, why, 1);
        return;
    }
    pthread_mutex_lock(&s->lock);
    int probe = s->journal_broken == 1 && mono_now_ms() >= s->journal_probe_at;
    pthread_mutex_unlock(&s->lock);
    if (!probe)
        return;
    char now[32];
    snprintf(now, sizeof now, "%lld", journal_now_ms());
    if (journal_meta_set(s->jmain, "journal_probe", now) < 0) {
        journal_failed(s, journal_errmsg(s->jmain), 0);
        return;
    }
    pthread_mutex_lock(&s->lock);
    int was = s->journal_broken;
    if (was == 1) {
        s->journal_broken = 0;
        s->journal_error[0] = 0;
    }
    pthread_mutex_unlock(&s->lock);
    if (was == 1)
        log_line("info", "the journal takes writes again: intake and runs resume", NULL, 0);
}
