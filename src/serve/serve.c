/*
 * serve.c -- `wixr serve` (see serve.h): the start (configuration, state
 * folder lock, journal, workers, writer thread, HTTP front), the main loop
 * that runs the supervisor, signals, and the stop. The supervisor's other
 * parts are in the files serve_internal.h lists.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../json/json.h"
#include "../runtime/host.h"
#include "../wix/client.h"
#include "serve_internal.h"

#define SERVE_MAX_INFLIGHT_KEYS 4096
#define SNAPSHOT_EVERY_MS 250
#define RELOAD_DEBOUNCE_MS 150

static volatile sig_atomic_t got_term, got_hup;
static int signal_fd = -1; /* the eventfd the handlers poke (set before they are installed) */

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        got_hup = 1;
    else
        got_term = 1;
    uint64_t one = 1;
    if (signal_fd >= 0 && write(signal_fd, &one, sizeof one) < 0) {
        /* nothing to do: the main loop also wakes every 200 ms */
    }
}

void serve_journal_path(const void *cfgp, char *out, unsigned long n)
{
    const wixr_config *cfg = cfgp;
    if (cfg->serve.journal)
        snprintf(out, n, "%s", cfg->serve.journal);
    else
        snprintf(out, n, "%s/journal.db", cfg->state_dir);
}

/* ---- logs ----
 *
 * Every line on stderr is one JSON object {"ts","level","msg","fields":{...}}
 * written by the JSON writer (never by a format string): an event id or a
 * hook's error, whatever bytes it holds, stays a string inside its line.
 * A caller opens a line (host_log_begin, one writer with host.c's lines), writes its fields, and ends it. */

/* A URL without the user:password@ a base URL may carry: secrets stay out of logs. */
static void log_url(json_writer *w, const char *key, const char *url)
{
    if (!url)
        return;
    buf_t b;
    buf_init(&b, 0);
    wix_shown_url(&b, url, NULL);
    jw_kstr(w, key, buf_cstr(&b));
    buf_free(&b);
}

/* A line with no fields, or with one integer field (key != NULL). */
void log_line(const char *level, const char *msg, const char *key, long long value)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, level, msg);
    if (key) {
        jw_key(w, key);
        jw_int(w, value);
    }
    host_log_end(&l);
}

/* Why the service cannot start, as a log line like every other (level error). */
static void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_fatal(const char *fmt, ...)
{
    buf_t m;
    buf_init(&m, 0);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&m, fmt, ap);
    va_end(ap);
    log_line("error", buf_cstr(&m), NULL, 0);
    buf_free(&m);
}

/* ---- start and stop ---- */

/* A state file (serve.port, serve.pid) for writing: 0600, also when it was
 * left from an earlier start with another mode. */
FILE *fopen_private(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    FILE *f = fchmod(fd, 0600) == 0 ? fdopen(fd, "w") : NULL;
    if (!f)
        close(fd);
    return f;
}

static void drain_fd(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0) {
    }
}

static int inotify_pending(int fd)
{
    char buf[8192];
    int any = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        any = 1;
    return any;
}

/* ---- the worker processes ---- */

static int start_workers(serve *s, char *err, size_t errlen)
{
    const wixr_config *c = s->boot_cfg;
    const char *extra[4];
    int n = 0;
    extra[n++] = "--log-prints";
    if (s->opt->test_faults)
        extra[n++] = "--test-faults";
    extra[n] = NULL;
    if (worker_setup_make(&s->ws, c, extra, err, errlen) < 0)
        return -1;
    int workers = c->serve.workers;
    workers_options po = {.args = (const char *const *)s->ws.args,
                       .env = s->ws.env,
                       .workers = workers,
                       .per_worker = (c->serve.concurrency + workers - 1) / workers,
                       .memory_mb = s->ws.memory_mb,
                       .hard_ms = s->ws.hard_ms,
                       .rate_limit = c->wix.rate_limit,
                       .rate_window_ms = c->wix.rate_window_ms,
                       .cb = {.ctx = s, .done = run_done, .lost = run_lost, .polled = poll_done, .reloaded = reloaded}};
    s->pool = workers_start(&po, 60000, err, errlen);
    return s->pool ? 0 : -1;
}

/* Waits (at most max_ms) for the workers, a signal, intake or a file change,
 * then serves the workers' messages. */
static void wait_and_serve(serve *s, long max_ms)
{
    struct pollfd fds[2 + 130];
    int n = 0;
    fds[n++] = (struct pollfd){.fd = s->evfd, .events = POLLIN};
    if (s->inotify_fd >= 0)
        fds[n++] = (struct pollfd){.fd = s->inotify_fd, .events = POLLIN};
    n += workers_fds(s->pool, fds + n, (int)(sizeof fds / sizeof fds[0]) - n);
    long long wait = workers_next_ms(s->pool) - sched_now_ms();
    if (wait > max_ms)
        wait = max_ms;
    if (wait < 0)
        wait = 0;
    poll(fds, (nfds_t)n, (int)wait);
    workers_service(s->pool);
}

int serve_main(const serve_options *o)
{
    serve S = {0}, *s = &S;
    s->opt = o;
    s->evfd = -1;
    s->inotify_fd = -1;
    s->last_reload_ok = 1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->queued, NULL);
    int rc = 1;
    char err[8192];
    s->boot_cfg = calloc(1, sizeof *s->boot_cfg);
    if (!s->boot_cfg || config_load(s->boot_cfg, o->config_path, err, sizeof err) < 0) {
        log_fatal("%s", s->boot_cfg ? err : "out of memory");
        free(s->boot_cfg);
        return 3;
    }
    if (!s->boot_cfg->path) {
        log_fatal("wixr serve: no configuration found (give --config, set WIXR_CONFIG, or create wixr.yaml)");
        config_free(s->boot_cfg);
        free(s->boot_cfg);
        return 3;
    }
    const char *tok = getenv("WIXR_TOKEN");
    if (tok && *tok) {
        snprintf(s->token, sizeof s->token, "%s", tok);
        s->have_token = 1;
    }
    s->max_body = s->boot_cfg->serve.max_body_kb * 1024;
    if (mkdir(s->boot_cfg->state_dir, 0700) < 0 && errno != EEXIST) {
        log_fatal("wixr serve: cannot create %s: %s", s->boot_cfg->state_dir, strerror(errno));
        goto out;
    }
    /* One service per state folder: a second one would run every event twice. */
    char lockpath[PATH_MAX];
    snprintf(lockpath, sizeof lockpath, "%s/serve.lock", s->boot_cfg->state_dir);
    int lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) < 0) {
        log_fatal("wixr serve: another wixr serve is running with the state folder %s",
                s->boot_cfg->state_dir);
        if (lockfd >= 0)
            close(lockfd);
        goto out;
    }
    serve_journal_path(s->boot_cfg, s->journal_path, sizeof s->journal_path);
    if (!(s->jmain = journal_open(s->journal_path, err, sizeof err)) ||
        !(s->jwrite = journal_open(s->journal_path, err, sizeof err)) ||
        !(s->jread = journal_open(s->journal_path, err, sizeof err))) {
        log_fatal("wixr serve: %s", err);
        goto out;
    }
    journal_set_durable(s->jmain, 0); /* run state changes: see journal_set_durable */
    struct stat jst;
    if (stat(s->journal_path, &jst) == 0) {
        s->journal_dev = jst.st_dev;
        s->journal_ino = jst.st_ino;
    }
    /* Intake commits never wait for a checkpoint: the main loop runs them. */
    journal_set_manual_checkpoints(s->jwrite);
    journal_set_manual_checkpoints(s->jmain);
    journal_set_manual_checkpoints(s->jread);
    int recovered = journal_recover(s->jmain);
    /* transport auto is resolved here, as the client would (http with an API key), so
     * the start line below says which one runs and nothing else is printed */
    s->boot_transport = s->boot_cfg->wix.transport;
    if (s->boot_cfg->wix.transport == TRANSPORT_AUTO)
        s->boot_cfg->wix.transport = s->boot_cfg->wix.api_key ? TRANSPORT_HTTP : TRANSPORT_SANDBOX;
    s->cfg = s->boot_cfg;
    {
        const wix_settings *ws = &s->boot_cfg->wix;
        int http = ws->transport == TRANSPORT_HTTP;
        host_logline l;
        json_writer *w = host_log_begin(&l, "info", "wixr serve starting");
        jw_kstr(w, "config", s->boot_cfg->path);
        jw_kstr(w, "transport", http ? "http" : "sandbox");
        jw_kstr(w, "chosen_by", s->boot_transport == TRANSPORT_AUTO
                                    ? (http ? "auto: an API key is set" : "auto: no API key (WIX_API_KEY) is set")
                                    : "wix.transport");
        if (http)
            log_url(w, "base_url", ws->base_url);
        else
            jw_kstr(w, "sandbox_db", ws->sandbox_db);
        jw_kstr(w, "account_id", ws->account_id);
        jw_kstr(w, "journal", s->journal_path);
        jw_key(w, "workers");
        jw_int(w, s->boot_cfg->serve.workers);
        host_log_end(&l);
    }
    if (start_workers(s, err, sizeof err) < 0) {
        log_fatal("%s", err);
        rc = 3;
        goto out;
    }
    s->rules_version = 1;
    s->inflight = calloc(SERVE_MAX_INFLIGHT_KEYS, sizeof *s->inflight);
    if (s->boot_cfg->serve.concurrency > SERVE_MAX_INFLIGHT_KEYS)
        s->boot_cfg->serve.concurrency = SERVE_MAX_INFLIGHT_KEYS;
    publish_names(s);

    s->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (s->evfd < 0) {
        log_fatal("wixr serve: eventfd: %s", strerror(errno));
        goto out;
    }
    if (s->inotify_fd >= 0)
        watch_dirs(s, s->boot_cfg);
    signal_fd = s->evfd;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        log_fatal("wixr serve: cannot start the journal writer");
        goto out;
    }
    s->writer_started = 1;
    snapshot(s);
    if (start_http(s, o->listen ? o->listen : s->boot_cfg->serve.listen, err, sizeof err) < 0) {
        log_fatal("wixr serve: %s", err);
        rc = strstr(err, "WIXR_TOKEN") || strstr(err, "insecure") ? 3 : 1;
        goto out;
    }
    snprintf(s->pid_path, sizeof s->pid_path, "%s/serve.pid", s->boot_cfg->state_dir);
    FILE *pf = fopen_private(s->pid_path);
    if (pf) {
        fprintf(pf, "%ld\n", (long)getpid());
        fclose(pf);
    }
    if (recovered > 0) {
        log_line("warn", "events interrupted by the last stop run again", "events", recovered);
    }

    long long drain_deadline = 0;
    for (;;) {
        poll_start(s);
        dispatch(s);
        wait_and_serve(s, 200);
        reload_next(s);
        flush_outcomes(s);
        drain_fd(s->evfd);
        take_settled(s);
        if (got_hup) {
            got_hup = 0;
            reload(s, "SIGHUP");
            snapshot(s);
        }
        if (s->inotify_fd >= 0 && inotify_pending(s->inotify_fd))
            s->reload_at = sched_now_ms() + RELOAD_DEBOUNCE_MS;
        if (s->reload_at && sched_now_ms() >= s->reload_at) {
            s->reload_at = 0;
            reload(s, "files changed");
            snapshot(s);
        }
        if (got_term && !s->draining) {
            pthread_mutex_lock(&s->lock);
            s->draining = 1;
            pthread_mutex_unlock(&s->lock);
            drain_deadline = sched_now_ms() + s->boot_cfg->serve.drain_ms;
            log_line("info", "stopping: intake closed, letting runs in flight finish", "in_flight", s->ninflight);
            snapshot(s);
        }
        if (s->draining && (s->ninflight == 0 || sched_now_ms() >= drain_deadline))
            break;
        if (sched_now_ms() - s->last_snapshot >= SNAPSHOT_EVERY_MS) {
            s->last_snapshot = sched_now_ms();
            cut_slow_requests(s);
            check_journal(s);
            snapshot(s);
            if (++s->snapshots % 4 == 0)
                journal_checkpoint(s->jmain); /* about once a second, off the intake path */
        }
    }
    flush_outcomes(s);
    if (s->ninflight) {
        log_line("warn", "drain deadline reached; unfinished events run again at the next start", "events",
                 s->ninflight);
        /* Runs are cut short on purpose: their events stay 'running' in the
         * journal and are recovered by the next start. Leave at once. */
        unlink(s->pid_path);
        log_line("info", "wixr serve stopped", NULL, 0);
        fflush(stderr);
        _exit(0);
    }
    flush_outcomes(s);
    rc = 0;
out:
    if (s->mhd)
        MHD_stop_daemon(s->mhd);
    if (s->writer_started) {
        pthread_mutex_lock(&s->lock);
        s->writer_stop = 1;
        pthread_cond_signal(&s->queued);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->writer, NULL);
    }
    signal_fd = -1;
    /* Runs still in flight are abandoned: their events stay 'running' and are
     * recovered by the next start. Their jobs are not freed here: the host
     * (and every Lua state) goes away with the process. */
    if (s->pid_path[0])
        unlink(s->pid_path);
    workers_free(s->pool); /* (kills what is left: their events run again at the next start) */
    worker_setup_free(&s->ws);
    if (s->next_cfg) {
        config_free(s->next_cfg);
        free(s->next_cfg);
    }
    if (s->cfg && s->cfg != s->boot_cfg) {
        config_free(s->cfg);
        free(s->cfg);
    }
    journal_close(s->jmain);
    journal_close(s->jwrite);
    journal_close(s->jread);
    if (s->evfd >= 0)
        close(s->evfd);
    if (s->inotify_fd >= 0)
        close(s->inotify_fd);
    name_index_free(&s->names);
    free(s->health);
    free(s->metrics);
    free(s->inflight);
    free(s->breaks);
    for (int i = 0; i < s->nrows; i++) {
        free(s->rows[i].event);
        free(s->rows[i].hook);
    }
    free(s->rows);
    for (int i = 0; i < s->npending; i++) {
        free(s->pending[i]);
        free(s->pending_keys[i]);
    }
    free(s->pending);
    free(s->pending_keys);
    for (int i = 0; i < s->nsettled; i++)
        free(s->settled[i]);
    free(s->settled);
    http_watch_free(s->watch);
    if (!s->ninflight) {
        config_free(s->boot_cfg);
        free(s->boot_cfg);
    }
    log_line("info", "wixr serve stopped", NULL, 0);
    return rc;
}
