/*
 * reload.c -- reloading the rules: the folders watched for changes, the
 * workers loading the new configuration beside the rules in force (keeping
 * every unchanged hook's state), the swap when all have, and the notice of
 * changed settings that wait for a restart.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "../json/json.h"
#include "../runtime/host.h"
#include "../util/isotime.h"
#include "../util/strset.h"
#include "serve_internal.h"

void watch_dirs(serve *s, const wixr_config *cfg)
{
    if (s->inotify_fd < 0)
        return;
    char dir[PATH_MAX];
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM;
    if (cfg->path) {
        snprintf(dir, sizeof dir, "%s", cfg->dir ? cfg->dir : ".");
        inotify_add_watch(s->inotify_fd, dir, mask);
    }
    strset seen = {0}; /* (thousands of scripts share a few folders: each is added once) */
    for (int i = 0; i < cfg->nhooks; i++) {
        const char *script = cfg->hooks[i].script, *slash = strrchr(script, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - script) : 1, slash ? script : ".");
        if (strset_has(&seen, dir))
            continue;
        inotify_add_watch(s->inotify_fd, dir, mask);
        char *kept = strdup(dir);
        if (kept && strset_add(&seen, kept) <= 0)
            free(kept);
    }
    for (size_t i = 0; i < seen.cap; i++)
        free((char *)seen.slot[i]);
    strset_free(&seen);
    for (int i = 0; i < cfg->nlua_paths; i++)
        inotify_add_watch(s->inotify_fd, cfg->lua_paths[i], mask);
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* The settings a reload does not apply: the wix: section (the client is built
 * at start) and the serve: keys the service reads at start only (the rest of
 * serve: -- concurrency, retry, accept_unknown_events -- comes with the new
 * rules). A reload that changes one says so, naming the keys (never a value). */
static void restart_notice(serve *s, const wixr_config *nc)
{
    const wix_settings *a = &s->boot_cfg->wix, *b = &nc->wix;
    const serve_settings *p = &s->boot_cfg->serve, *q = &nc->serve;
    const char *changed[32];
    int n = 0;
    s->restart_needed[0] = '\0';
#define CHANGED(cond, name) do { if ((cond) && n < 32) changed[n++] = (name); } while (0)
    CHANGED(s->boot_transport != b->transport, "wix.transport");
    CHANGED(!same_str(a->base_url, b->base_url), "wix.base_url");
    CHANGED(!same_str(a->api_key, b->api_key) || !same_str(a->api_key_file, b->api_key_file), "wix.api_key_file");
    CHANGED(!same_str(a->account_id, b->account_id), "wix.account_id");
    CHANGED(a->timeout_ms != b->timeout_ms || a->connect_timeout_ms != b->connect_timeout_ms, "wix.timeout_ms");
    CHANGED(a->retry_attempts != b->retry_attempts || a->retry_base_ms != b->retry_base_ms ||
                a->retry_max_ms != b->retry_max_ms || a->retry_total_ms != b->retry_total_ms, "wix.retry");
    CHANGED(a->rate_limit != b->rate_limit || a->rate_window_ms != b->rate_window_ms, "wix.rate_limit");
    CHANGED(a->concurrency != b->concurrency, "wix.concurrency");
    CHANGED(!same_str(a->sandbox_db, b->sandbox_db) || !same_str(a->sandbox_catalog, b->sandbox_catalog) ||
                a->sandbox_delivery_delay_ms != b->sandbox_delivery_delay_ms, "wix.sandbox");
    CHANGED(!same_str(a->audit, b->audit), "wix.audit");
    CHANGED(!same_str(p->listen, q->listen), "serve.listen");
    CHANGED(!same_str(p->journal, q->journal), "serve.journal");
    int keys_same = p->norder_key == q->norder_key;
    for (int i = 0; keys_same && i < p->norder_key; i++)
        keys_same = !strcmp(p->order_key[i], q->order_key[i]);
    CHANGED(!keys_same, "serve.order_key");
    CHANGED(p->max_body_kb != q->max_body_kb, "serve.max_body_kb");
    CHANGED(p->request_timeout_ms != q->request_timeout_ms, "serve.request_timeout_ms");
    CHANGED(p->idle_timeout_ms != q->idle_timeout_ms, "serve.idle_timeout_ms");
    CHANGED(p->max_connections != q->max_connections || p->max_connections_per_ip != q->max_connections_per_ip,
            "serve.max_connections");
    CHANGED(p->drain_ms != q->drain_ms, "serve.drain_ms");
    CHANGED(p->poller_enabled != q->poller_enabled || p->poller_interval_ms != q->poller_interval_ms ||
                !same_str(p->poller_account_id, q->poller_account_id), "poller");
    CHANGED(!same_str(s->boot_cfg->state_dir, nc->state_dir), "runtime.state_dir");
#undef CHANGED
    if (!n)
        return;
    host_logline l;
    json_writer *w = host_log_begin(&l, "warn", "the rules were reloaded, but changes to these settings need a restart");
    jw_key(w, "restart_needed");
    jw_arr(w);
    for (int i = 0; i < n; i++)
        jw_str(w, changed[i]);
    jw_arr_end(w);
    host_log_end(&l);
    snprintf(s->restart_needed, sizeof s->restart_needed, "%s", changed[0]);
    for (int i = 1; i < n; i++) {
        size_t len = strlen(s->restart_needed);
        snprintf(s->restart_needed + len, sizeof s->restart_needed - len, ", %s", changed[i]);
    }
}

static void reload_failed(serve *s, const char *why, const char *errors)
{
    s->reload_failures_total++;
    s->last_reload_ok = 0;
    snprintf(s->last_reload_error, sizeof s->last_reload_error, "%s", errors);
    host_logline l;
    json_writer *w = host_log_begin(&l, "error", "reload failed; the previous rules stay in force");
    jw_kstr(w, "why", why);
    jw_kstr(w, "error", errors);
    jw_key(w, "rules_version");
    jw_int(w, s->rules_version);
    host_log_end(&l);
}

/* A reload: the workers load the configuration's rules beside those in
 * force, building only the hooks that changed (workers_reload), while the
 * configuration is read here too (C only); the new rules take over in every
 * worker at once when all have loaded them (reloaded, below: never before
 * this returns). Runs in flight finish with the rules they started with. */
void reload(serve *s, const char *why)
{
    if (s->next_cfg) {
        /* one is loading: this request is taken by the next one, started when it ends
         * (with the files as they are then), so a stream of requests cannot starve reloads */
        s->reload_again = 1;
        snprintf(s->reload_again_why, sizeof s->reload_again_why, "%s", why);
        return;
    }
    char err[8192];
    s->last_reload_ms = iso_now_ms();
    s->reload_t0 = mono_ms();
    if (workers_reload(s->pool, (const char *const *)s->ws.args) < 0) {
        reload_failed(s, why, "out of memory");
        return;
    }
    wixr_config *nc = calloc(1, sizeof *nc);
    if (!nc || config_load(nc, s->boot_cfg->path, err, sizeof err) < 0) {
        workers_reload_abort(s->pool); /* (they found the same errors, or the file changed meanwhile) */
        reload_failed(s, why, nc ? err : "out of memory");
        free(nc);
        return;
    }
    s->next_cfg = nc;
    snprintf(s->reload_why, sizeof s->reload_why, "%s", why);
}

void reloaded(void *ctx, int ok, const char *errors)
{
    serve *s = ctx;
    wixr_config *nc = s->next_cfg;
    s->next_cfg = NULL;
    if (!nc)
        return;
    if (!ok) {
        reload_failed(s, s->reload_why, errors);
        config_free(nc);
        free(nc);
        return;
    }
    double t1 = mono_ms();
    wixr_config *old = s->cfg;
    s->cfg = nc;
    s->rules_version++;
    publish_names(s);
    s->last_swap_ms = mono_ms() - t1; /* (the new rules are in force: the old ones are freed after) */
    if (old != s->boot_cfg) {
        config_free(old);
        free(old);
    }
    watch_dirs(s, nc);
    s->reloads_total++;
    s->last_reload_ok = 1;
    s->last_reload_error[0] = '\0';
    host_logline l;
    json_writer *w = host_log_begin(&l, "info", "rules reloaded");
    jw_kstr(w, "why", s->reload_why);
    jw_key(w, "rules_version");
    jw_int(w, s->rules_version);
    jw_key(w, "hooks");
    jw_int(w, nc->nhooks);
    jw_key(w, "build_ms");
    jw_num(w, (double)(long long)((t1 - s->reload_t0) * 100) / 100);
    jw_key(w, "swap_ms");
    jw_num(w, (double)(long long)(s->last_swap_ms * 10000) / 10000);
    jw_key(w, "kept");
    jw_int(w, workers_reload_kept(s->pool));
    host_log_end(&l);
    restart_notice(s, nc);
}

/* A reload ended (either way): one asked for meanwhile starts now. */
void reload_next(serve *s)
{
    if (s->reload_again && !s->next_cfg) {
        s->reload_again = 0;
        reload(s, s->reload_again_why);
    }
}
