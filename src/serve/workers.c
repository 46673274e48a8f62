/*
 * workers.c -- worker processes, the supervisor's side (see workers.h).
 */
#define _GNU_SOURCE
#include "workers.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../runtime/sched.h"
#include "worker.h"

#define MAX_WORKERS 64
#define YOUNG_MS 2000             /* a worker that dies younger is replaced after a pause */
#define RESPAWN_PAUSE_MS 1000
#define CHECK_EVERY_MS 100        /* memory and progress checks */

typedef struct pev {
    unsigned long long seq;
    void *arg;
    struct pev *next;
} pev;

typedef struct pw {
    pid_t pid;                    /* 0: the slot is free */
    int pfd;                      /* progress pipe (read end) */
    int efd;                      /* its standard error, when the caller takes the lines (cb.log); else -1 */
    buf_t err;                    /* a line of it not ended yet */
    wire w;
    int gen;
    int ready, retiring, failed_load;
    int loading, loaded;          /* a reload's WIRE_LOAD sent, its answer not in yet / in, ok */
    long long started_ms;
    unsigned long progress;
    long long progress_ms;        /* when progress last moved */
    int inflight, solo, polling;
    pev *evs, *evs_tail;
    const char *kill_reason;      /* set when the supervisor killed it */
    char reason[128];
    char *stats;                  /* its last WIRE_STATS JSON */
} pw;

struct worker_pool {
    workers_options o;
    char **args;                  /* the workers' args (owned copies) */
    pw w[MAX_WORKERS * 2];        /* (twice: the replacements of workers still being reaped) */
    int gen, pending_gen;         /* the rules in force, and a reload's (0: none under way) */
    unsigned long long seq;
    long long next_check;
    long long respawn_at;
    long long restarts;
    char reload_errors[8192];
    /* the rate window */
    long long *rl;
    int rl_head, rl_count;
    /* counters of workers gone */
    workers_totals gone;
    int retired_all;
    int kept;                     /* hooks a worker kept at the last reload it loaded */
    int settle_due;               /* a reload to settle at the next workers_service */
};

static char **dup_args(const char *const *a)
{
    int n = 0;
    while (a[n])
        n++;
    char **d = calloc((size_t)n + 1, sizeof *d);
    for (int i = 0; d && i < n; i++)
        if (!(d[i] = strdup(a[i]))) {
            for (int k = 0; k < i; k++)
                free(d[k]);
            free(d);
            return NULL;
        }
    return d;
}

static void free_args(char **a)
{
    for (int i = 0; a && a[i]; i++)
        free(a[i]);
    free(a);
}

const char *workers_signal_name(int sig)
{
    const char *n = sigabbrev_np(sig);
    static char buf[16];
    if (n) {
        snprintf(buf, sizeof buf, "SIG%s", n);
        return buf;
    }
    snprintf(buf, sizeof buf, "signal %d", sig);
    return buf;
}

static int spawn(worker_pool *p, pw *w, int gen, char **args)
{
    int sv[2], pp[2], ep[2] = {-1, -1};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
        return -1;
    if (pipe2(pp, O_CLOEXEC | O_NONBLOCK) < 0) {
        close(sv[0]);
        close(sv[1]);
        return -1;
    }
    if (p->o.cb.log && pipe2(ep, O_CLOEXEC | O_NONBLOCK) < 0) {
        close(sv[0]), close(sv[1]), close(pp[0]), close(pp[1]);
        return -1;
    }
    int n = 0;
    while (args[n])
        n++;
    char **argv = calloc((size_t)n + 3, sizeof *argv);
    if (!argv) {
        close(sv[0]), close(sv[1]), close(pp[0]), close(pp[1]);
        return -1;
    }
    argv[0] = (char *)"wixr";
    argv[1] = (char *)"__worker";
    for (int i = 0; i < n; i++)
        argv[2 + i] = args[i];
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, sv[1], WORKER_FD);
    posix_spawn_file_actions_adddup2(&fa, pp[1], WORKER_PROGRESS_FD);
    if (ep[1] >= 0)
        posix_spawn_file_actions_adddup2(&fa, ep[1], 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, WORKER_PROGRESS_FD + 1);
    posix_spawnattr_t at;
    posix_spawnattr_init(&at);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&at, &none);
    posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK);
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, &at, argv, p->o.env);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&at);
    free(argv);
    close(sv[1]);
    close(pp[1]);
    if (ep[1] >= 0)
        close(ep[1]);
    if (rc != 0) {
        close(sv[0]);
        close(pp[0]);
        if (ep[0] >= 0)
            close(ep[0]);
        errno = rc;
        return -1;
    }
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    memset(w, 0, sizeof *w);
    w->pid = pid;
    w->pfd = pp[0];
    w->efd = ep[0];
    buf_init(&w->err, 0);
    wire_init(&w->w, sv[0]);
    w->gen = gen;
    w->started_ms = w->progress_ms = sched_now_ms();
    return 0;
}

static int count_gen(const worker_pool *p, int gen, int ready_only)
{
    int n = 0;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++)
        if (p->w[i].pid && p->w[i].gen == gen && (!ready_only || p->w[i].ready))
            n++;
    return n;
}

static pw *free_slot(worker_pool *p)
{
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++)
        if (!p->w[i].pid)
            return &p->w[i];
    return NULL;
}

/* Tops the workers up to o.workers (a new one loads the rules as the files are now). */
static void fill(worker_pool *p)
{
    long long now = sched_now_ms();
    if (p->retired_all || now < p->respawn_at)
        return;
    for (int k = count_gen(p, p->gen, 0); k < p->o.workers; k++) {
        pw *w = free_slot(p);
        if (!w || spawn(p, w, p->gen, p->args) < 0)
            return;
    }
}

static void add_counts(workers_totals *t, const char *stats, int gen_current, int add_rebuilds)
{
    (void)gen_current;
    json_doc *doc = NULL;
    json_value *v = stats ? json_parse(stats, strlen(stats), 0, &doc, NULL) : NULL;
    if (!v || v->type != JSON_OBJECT) {
        json_doc_free(doc);
        return;
    }
    json_value *x;
    if ((x = json_get(v, "retries")) && x->type == JSON_NUMBER)
        t->retries += (long long)x->u.number;
    if ((x = json_get(v, "rate_waits")) && x->type == JSON_NUMBER)
        t->rate_waits += (long long)x->u.number;
    if (add_rebuilds) {
        int i = 0;
        x = json_get(v, "rebuilds");
        for (json_value *k = x && x->type == JSON_ARRAY ? x->u.kids.head : NULL; k && i < WORKERS_MAX_HOOKS;
             k = k->next, i++)
            if (k->type == JSON_NUMBER)
                t->rebuilds[i] += (long long)k->u.number;
        i = 0;
        x = json_get(v, "rebuild_errors");
        for (json_value *k = x && x->type == JSON_ARRAY ? x->u.kids.head : NULL; k && i < WORKERS_MAX_HOOKS;
             k = k->next, i++)
            if (k->type == JSON_STRING && k->u.str.len)
                snprintf(t->rebuild_errors[i], sizeof t->rebuild_errors[i], "%.*s", (int)k->u.str.len, k->u.str.s);
    }
    x = json_get(v, "calls");
    for (json_value *c = x && x->type == JSON_ARRAY ? x->u.kids.head : NULL; c; c = c->next) {
        json_value *e = c->type == JSON_ARRAY ? c->u.kids.head : NULL;
        json_value *st = e ? e->next : NULL, *n = st ? st->next : NULL;
        if (!e || e->type != JSON_STRING || !st || st->type != JSON_NUMBER || !n || n->type != JSON_NUMBER)
            continue;
        int i = 0;
        while (i < t->ncalls && !(t->calls[i].status == (long)st->u.number &&
                                  strlen(t->calls[i].endpoint) == e->u.str.len &&
                                  !memcmp(t->calls[i].endpoint, e->u.str.s, e->u.str.len)))
            i++;
        if (i == t->ncalls) {
            if (t->ncalls == WIX_MAX_CALL_COUNTS)
                continue;
            snprintf(t->calls[i].endpoint, sizeof t->calls[i].endpoint, "%.*s", (int)e->u.str.len, e->u.str.s);
            t->calls[i].status = (long)st->u.number;
            t->calls[i].n = 0;
            t->ncalls++;
        }
        t->calls[i].n += (long long)n->u.number;
    }
    json_doc_free(doc);
}

/* Passes on the whole lines a worker wrote (all of it at its end). */
static void take_log(worker_pool *p, pw *w, int all)
{
    if (w->efd < 0)
        return;
    char chunk[65536];
    ssize_t k;
    while ((k = read(w->efd, chunk, sizeof chunk)) > 0)
        buf_add(&w->err, chunk, (size_t)k);
    const char *last = w->err.len ? memrchr(w->err.data, '\n', w->err.len) : NULL;
    size_t n = all ? w->err.len : last ? (size_t)(last - w->err.data) + 1 : 0;
    if (!n)
        return;
    p->o.cb.log(p->o.cb.ctx, w->err.data, n);
    memmove(w->err.data, w->err.data + n, w->err.len - n);
    w->err.len -= n;
}

/* Passes on a gone worker's last log lines and lets go of its fds and buffers. */
static void release(worker_pool *p, pw *w)
{
    take_log(p, w, 1);
    if (w->efd >= 0)
        close(w->efd);
    buf_free(&w->err);
    close(w->pfd);
    close(w->w.fd);
    wire_free(&w->w);
    free(w->stats);
    w->stats = NULL;
}

/* A worker is gone (reaped): its events are lost, its counters kept. */
static void on_message(worker_pool *p, pw *w, const wire_msg *m);
static void reload_settle(worker_pool *p);

static void bury(worker_pool *p, pw *w, int status)
{
    /* what it wrote before it ended counts: an answer may still wait in the socket */
    wire_msg m;
    while (wire_fill(&w->w) > 0) {
    }
    while (w->pid && wire_next(&w->w, &m) == 1)
        on_message(p, w, &m);
    if (w->kill_reason)
        ; /* w->reason says why it was killed */
    else if (WIFSIGNALED(status))
        snprintf(w->reason, sizeof w->reason, "worker crashed: %s", workers_signal_name(WTERMSIG(status)));
    else if (WIFEXITED(status) && WEXITSTATUS(status) != 0)
        snprintf(w->reason, sizeof w->reason, "worker exited with status %d", WEXITSTATUS(status));
    else
        snprintf(w->reason, sizeof w->reason, "worker exited");
    /* the answers it sent before it died count */
    add_counts(&p->gone, w->stats, 0, w->gen == p->gen);
    int charged = w->inflight == 1;
    pev *e = w->evs;
    w->evs = w->evs_tail = NULL;
    int had_poll = w->polling;
    int young = sched_now_ms() - w->started_ms < YOUNG_MS;
    int expected = w->retiring && !w->inflight && WIFEXITED(status) && WEXITSTATUS(status) == 0;
    int was_loading = p->pending_gen && w->loading;
    int failed_load = w->failed_load;
    release(p, w);
    char reason[sizeof w->reason];
    snprintf(reason, sizeof reason, "%s", w->reason);
    pid_t pid = w->pid;
    memset(w, 0, sizeof *w);
    if (!expected && !failed_load) {
        p->restarts++;
        if (young)
            p->respawn_at = sched_now_ms() + RESPAWN_PAUSE_MS;
        fprintf(stderr, "{\"level\":\"error\",\"msg\":\"worker process ended\",\"fields\":{\"pid\":%ld,\"reason\":\"%s\"}}\n",
                (long)pid, reason);
    }
    if (was_loading && !p->reload_errors[0])
        snprintf(p->reload_errors, sizeof p->reload_errors, "a worker loading the new rules ended: %s", reason);
    for (pev *n; e; e = n) {
        n = e->next;
        if (p->o.cb.lost)
            p->o.cb.lost(p->o.cb.ctx, e->arg, reason, charged);
        free(e);
    }
    if (had_poll && p->o.cb.polled)
        p->o.cb.polled(p->o.cb.ctx, 0, reason);
    if (was_loading)
        reload_settle(p);
}

static void kill_worker(pw *w, const char *reason)
{
    if (!w->kill_reason) {
        snprintf(w->reason, sizeof w->reason, "%s", reason);
        w->kill_reason = w->reason;
    }
    kill(w->pid, SIGKILL);
}

static void reap(worker_pool *p)
{
    for (;;) {
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0)
            return;
        for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++)
            if (p->w[i].pid == pid) {
                bury(p, &p->w[i], status);
                break;
            }
    }
}

static long long rate_wait(worker_pool *p, long long now)
{
    int cap = p->o.rate_limit;
    if (cap <= 0 || !p->rl)
        return 0;
    while (p->rl_count && p->rl[p->rl_head] <= now - p->o.rate_window_ms) {
        p->rl_head = (p->rl_head + 1) % cap;
        p->rl_count--;
    }
    if (p->rl_count >= cap)
        return p->rl[p->rl_head] + p->o.rate_window_ms - now;
    p->rl[(p->rl_head + p->rl_count) % cap] = now;
    p->rl_count++;
    return 0;
}

/* A reload ends: the rules every worker loaded take over in all of them at
 * once (WIRE_SWAP: events handed out from now on run under them), or, when
 * one could not load them, are dropped in all (WIRE_DROP). */
static void finish_reload(worker_pool *p, int ok)
{
    char gen[24];
    snprintf(gen, sizeof gen, "%d", p->pending_gen);
    const char *f[1] = {gen};
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid)
            continue;
        if (w->loading || w->loaded)
            wire_put(&w->w, ok ? WIRE_SWAP : WIRE_DROP, 1, f, NULL);
        if (ok)
            w->gen = p->pending_gen; /* (one started meanwhile loaded the files itself) */
        w->loading = w->loaded = 0;
    }
    if (ok) {
        p->gen = p->pending_gen;
        memset(p->gone.rebuilds, 0, sizeof p->gone.rebuilds);
        memset(p->gone.rebuild_errors, 0, sizeof p->gone.rebuild_errors);
    }
    p->pending_gen = 0;
    if (p->o.cb.reloaded)
        p->o.cb.reloaded(p->o.cb.ctx, ok, p->reload_errors);
    p->reload_errors[0] = '\0';
}

/* A reload ends once no worker is still loading: failed when one could not load the rules (or died). */
static void reload_settle(worker_pool *p)
{
    if (!p->pending_gen)
        return;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++)
        if (p->w[i].pid && p->w[i].loading && !p->reload_errors[0])
            return;
    finish_reload(p, !p->reload_errors[0]);
}

static void on_message(worker_pool *p, pw *w, const wire_msg *m)
{
    switch (m->type) {
    case WIRE_HELLO:
        if (m->f[0][0] == '1') {
            w->ready = 1;
        } else {
            /* a worker could not load the rules in force (files changed on disk since they were taken) */
            w->failed_load = 1;
            p->respawn_at = sched_now_ms() + RESPAWN_PAUSE_MS;
            fprintf(stderr, "{\"level\":\"error\",\"msg\":\"a worker could not load the rules; trying again\"}\n");
        }
        break;
    case WIRE_LOADED:
        if (!p->pending_gen || !w->loading || atoi(m->f[0]) != p->pending_gen)
            break; /* (an answer to a reload that ended or was overtaken) */
        w->loading = 0;
        if (m->f[1][0] == '1') {
            w->loaded = 1;
            p->kept = atoi(m->f[3]);
        } else if (!p->reload_errors[0]) {
            snprintf(p->reload_errors, sizeof p->reload_errors, "%s", m->f[2]);
        }
        reload_settle(p);
        break;
    case WIRE_DONE: {
        unsigned long long seq = strtoull(m->f[0], NULL, 10);
        for (pev **pp = &w->evs; *pp; pp = &(*pp)->next) {
            if ((*pp)->seq == seq) {
                pev *e = *pp;
                *pp = e->next;
                if (w->evs_tail == e)
                    w->evs_tail = *pp ? NULL : (pp == &w->evs ? NULL : (pev *)((char *)pp - offsetof(pev, next)));
                w->inflight--;
                if (!w->inflight)
                    w->solo = 0;
                if (p->o.cb.done)
                    p->o.cb.done(p->o.cb.ctx, e->arg, m);
                free(e);
                break;
            }
        }
        break;
    }
    case WIRE_POLL_DONE:
        w->polling = 0;
        if (p->o.cb.polled)
            p->o.cb.polled(p->o.cb.ctx, m->f[1][0] == '1', m->f[2]);
        break;
    case WIRE_RATE_ASK: {
        char v[32];
        snprintf(v, sizeof v, "%lld", rate_wait(p, sched_now_ms()));
        const char *f[1] = {v};
        wire_put(&w->w, WIRE_RATE_ANSWER, 1, f, NULL);
        break;
    }
    case WIRE_STATS:
        free(w->stats);
        w->stats = strdup(m->f[0]);
        break;
    default:
        break;
    }
}

/* Memory: resident set from /proc/PID/statm. */
static long rss_mb(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/statm", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    long size = 0, res = 0;
    if (fscanf(f, "%ld %ld", &size, &res) != 2)
        res = 0;
    fclose(f);
    return (long)((long long)res * sysconf(_SC_PAGESIZE) >> 20);
}

static void check(worker_pool *p)
{
    long long now = sched_now_ms();
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid || w->kill_reason)
            continue;
        unsigned long v;
        while (read(w->pfd, &v, sizeof v) == (ssize_t)sizeof v) {
            if (v != w->progress) {
                w->progress = v;
                w->progress_ms = now;
            }
        }
        char why[128];
        if (p->o.memory_mb > 0 && rss_mb(w->pid) > p->o.memory_mb) {
            snprintf(why, sizeof why, "memory ceiling (%ld MB)", p->o.memory_mb);
            kill_worker(w, why);
        } else if (w->ready && (w->inflight || w->polling) && now - w->progress_ms > p->o.hard_ms) {
            snprintf(why, sizeof why, "hard deadline (no progress for %lld ms)", p->o.hard_ms);
            kill_worker(w, why);
        } else if (!w->ready && !w->failed_load && now - w->started_ms > 60000) {
            kill_worker(w, "a worker took over 60 s to load the rules");
        }
    }
}

worker_pool *workers_start(const workers_options *o, long long startup_ms, char *err, size_t errlen)
{
    worker_pool *p = calloc(1, sizeof *p);
    if (!p || !(p->args = dup_args(o->args))) {
        free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->o = *o;
    if (p->o.workers < 1)
        p->o.workers = 1;
    if (p->o.workers > MAX_WORKERS)
        p->o.workers = MAX_WORKERS;
    if (p->o.per_worker < 1)
        p->o.per_worker = 1;
    if (o->rate_limit > 0 && !(p->rl = calloc((size_t)o->rate_limit, sizeof *p->rl))) {
        workers_free(p);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    p->gen = 1;
    if (spawn(p, &p->w[0], 1, p->args) < 0) {
        snprintf(err, errlen, "cannot start a worker process: %s", strerror(errno));
        workers_free(p);
        return NULL;
    }
    /* the first worker's HELLO says whether the rules load */
    long long deadline = sched_now_ms() + startup_ms;
    pw *w = &p->w[0];
    while (!w->ready) {
        struct pollfd pfd = {.fd = w->w.fd, .events = POLLIN};
        long long left = deadline - sched_now_ms();
        if (left <= 0) {
            snprintf(err, errlen, "the first worker did not load the rules within %lld ms", startup_ms);
            workers_free(p);
            return NULL;
        }
        poll(&pfd, 1, (int)(left < 1000 ? left : 1000));
        int r = wire_fill(&w->w);
        wire_msg m;
        if (wire_next(&w->w, &m) == 1 && m.type == WIRE_HELLO) {
            if (m.f[0][0] != '1') {
                snprintf(err, errlen, "%s", m.f[1]);
                workers_free(p);
                return NULL;
            }
            w->ready = 1;
        } else if (r < 0) {
            int status = 0;
            waitpid(w->pid, &status, 0);
            snprintf(err, errlen, "the worker process ended before it loaded the rules (%s)",
                     WIFSIGNALED(status) ? workers_signal_name(WTERMSIG(status)) : "exit status");
            w->pid = 0;
            workers_free(p);
            return NULL;
        }
    }
    fill(p);
    return p;
}

void workers_free(worker_pool *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid)
            continue;
        kill(w->pid, SIGKILL);
        waitpid(w->pid, NULL, 0);
        release(p, w);
        for (pev *e = w->evs, *n; e; e = n) {
            n = e->next;
            free(e);
        }
    }
    free_args(p->args);
    free(p->rl);
    free(p);
}

static pw *pick(worker_pool *p, int solo)
{
    pw *best = NULL;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid || !w->ready || w->retiring || w->kill_reason || w->gen != p->gen || w->solo)
            continue;
        if (solo ? w->inflight > 0 : w->inflight >= p->o.per_worker)
            continue;
        if (!best || w->inflight < best->inflight)
            best = w;
    }
    return best;
}

int workers_has_room(const worker_pool *p, int solo)
{
    return pick((worker_pool *)p, solo) != NULL;
}

int workers_run(worker_pool *p, const char *id, const char *name, const char *data, int solo, void *arg)
{
    pw *w = pick(p, solo);
    pev *e = w ? calloc(1, sizeof *e) : NULL;
    if (!e)
        return -1;
    e->seq = ++p->seq;
    e->arg = arg;
    char seq[24];
    snprintf(seq, sizeof seq, "%llu", e->seq);
    const char *f[4] = {seq, id ? id : "", name, data};
    if (wire_put(&w->w, WIRE_RUN, 4, f, NULL) < 0) {
        free(e);
        return -1;
    }
    /* in order: answers come back mostly in the order the events went out */
    pev **tail = w->evs_tail ? &w->evs_tail->next : &w->evs;
    *tail = e;
    w->evs_tail = e;
    w->inflight++;
    if (solo)
        w->solo = 1;
    if (w->inflight == 1)
        w->progress_ms = sched_now_ms(); /* (an idle worker's clock starts now) */
    return 0;
}

int workers_poll(worker_pool *p, const char *watermark, const char *account)
{
    pw *w = pick(p, 0);
    if (!w)
        return -1;
    const char *f[3] = {"0", watermark ? watermark : "", account ? account : ""};
    if (wire_put(&w->w, WIRE_POLL, 3, f, NULL) < 0)
        return -1;
    w->polling = 1;
    return 0;
}

int workers_inflight(const worker_pool *p)
{
    int n = 0;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++)
        if (p->w[i].pid)
            n += p->w[i].inflight;
    return n;
}

int workers_fds(worker_pool *p, struct pollfd *fds, int max)
{
    int n = 0;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0] && n < max; i++) {
        pw *w = &p->w[i];
        if (!w->pid)
            continue;
        fds[n].fd = w->w.fd;
        fds[n].events = (short)(POLLIN | (wire_pending(&w->w) ? POLLOUT : 0));
        fds[n].revents = 0;
        n++;
        if (w->efd >= 0 && n < max)
            fds[n++] = (struct pollfd){.fd = w->efd, .events = POLLIN};
    }
    return n;
}

long long workers_next_ms(const worker_pool *p)
{
    long long t = p->next_check;
    if (p->respawn_at && p->respawn_at < t)
        t = p->respawn_at;
    return t;
}

void workers_service(worker_pool *p)
{
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid)
            continue;
        take_log(p, w, 0);
        int r = wire_fill(&w->w);
        wire_msg m;
        int got = 0;
        while (w->pid && (got = wire_next(&w->w, &m)) == 1)
            on_message(p, w, &m);
        if (!w->pid)
            continue;
        if (got < 0)
            kill_worker(w, "worker sent a malformed message");
        if (wire_flush(&w->w) < 0 || r < 0) {
            /* its end of the socket closed: it is ending (reap it below) */
            if (!w->kill_reason)
                kill(w->pid, SIGKILL);
        }
    }
    long long now = sched_now_ms();
    if (now >= p->next_check) {
        p->next_check = now + CHECK_EVERY_MS;
        check(p);
    }
    reap(p);
    if (p->settle_due) {
        p->settle_due = 0;
        reload_settle(p);
    }
    if (p->respawn_at && now >= p->respawn_at)
        p->respawn_at = 0;
    fill(p);
}

/* Each worker loads the rules again beside those in force, keeping the
 * state of every hook that did not change (worker.c, load_rules); they take
 * over when all have (finish_reload). A reload under way is overtaken: the
 * workers load again and their answers to it are ignored. */
int workers_reload(worker_pool *p, const char *const *args)
{
    char **na = dup_args(args);
    if (!na)
        return -1;
    free_args(p->args);
    p->args = na;
    p->pending_gen = (p->gen > p->pending_gen ? p->gen : p->pending_gen) + 1;
    p->reload_errors[0] = '\0';
    char gen[24];
    snprintf(gen, sizeof gen, "%d", p->pending_gen);
    const char *f[1] = {gen};
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        w->loading = w->loaded = 0;
        if (!w->pid || w->retiring || w->kill_reason || w->failed_load)
            continue;
        if (wire_put(&w->w, WIRE_LOAD, 1, f, NULL) == 0)
            w->loading = 1;
    }
    p->settle_due = 1; /* (with no worker loading, it ends at the next service: the caller is ready then) */
    return 0;
}

void workers_reload_abort(worker_pool *p)
{
    if (!p->pending_gen)
        return;
    char gen[24];
    snprintf(gen, sizeof gen, "%d", p->pending_gen);
    const char *f[1] = {gen};
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (w->pid && (w->loading || w->loaded))
            wire_put(&w->w, WIRE_DROP, 1, f, NULL);
        w->loading = w->loaded = 0;
    }
    p->pending_gen = 0;
    p->settle_due = 0;
    p->reload_errors[0] = '\0';
}

int workers_reload_kept(const worker_pool *p)
{
    return p->kept;
}

void workers_retire(worker_pool *p)
{
    p->retired_all = 1;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (w->pid && !w->retiring) {
            w->retiring = 1;
            wire_put(&w->w, WIRE_RETIRE, 0, NULL, NULL);
            wire_flush(&w->w);
        }
    }
}

int workers_stalled(worker_pool *p)
{
    long long now = sched_now_ms();
    int ready = 0, moving = 0;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid || !w->ready || w->gen != p->gen)
            continue;
        ready++;
        if (now - w->progress_ms <= 2000 || (!w->inflight && !w->polling))
            moving++;
    }
    return !ready || !moving;
}

long long workers_restarts(const worker_pool *p)
{
    return p->restarts;
}

void workers_health_json(worker_pool *p, json_writer *jw)
{
    long long now = sched_now_ms();
    jw_arr(jw);
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++) {
        pw *w = &p->w[i];
        if (!w->pid)
            continue;
        jw_obj(jw);
        jw_key(jw, "pid");
        jw_int(jw, w->pid);
        jw_kstr(jw, "state", !w->ready ? "starting" : w->retiring ? "retiring" : w->loading ? "loading_rules"
                                                                                                 : "ready");
        jw_key(jw, "in_flight");
        jw_int(jw, w->inflight);
        jw_key(jw, "last_progress_ms_ago");
        jw_int(jw, now - w->progress_ms);
        jw_key(jw, "uptime_ms");
        jw_int(jw, now - w->started_ms);
        jw_obj_end(jw);
    }
    jw_arr_end(jw);
}

void workers_totals_get(worker_pool *p, workers_totals *t)
{
    *t = p->gone;
    for (size_t i = 0; i < sizeof p->w / sizeof p->w[0]; i++)
        if (p->w[i].pid)
            add_counts(t, p->w[i].stats, 0, p->w[i].gen == p->gen);
}
