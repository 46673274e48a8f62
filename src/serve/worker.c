/*
 * worker.c -- a worker process (see worker.h).
 */
#define _GNU_SOURCE
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "../app/app.h"
#include "../json/json.h"
#include "../wix/client.h"
#include "wire.h"

#if defined(__SANITIZE_ADDRESS__)
#define UNDER_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define UNDER_SANITIZER 1
#endif
#endif
#ifndef UNDER_SANITIZER
#define UNDER_SANITIZER 0
#endif

/* ---- process limits ---- */

static int no_exec_filter(void)
{
#if defined(__x86_64__)
#define WORKER_AUDIT_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define WORKER_AUDIT_ARCH AUDIT_ARCH_AARCH64
#endif
#ifdef WORKER_AUDIT_ARCH
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, WORKER_AUDIT_ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS), /* another ABI: no */
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execve, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_execveat, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
    };
    struct sock_fprog prog = {.len = (unsigned short)(sizeof f / sizeof f[0]), .filter = f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        return -1;
    return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0 ? -1 : 0;
#else
    return -1;
#endif
}

int worker_harden(long memory_mb)
{
    int missed = 0;
    struct rlimit none = {0, 0};
    if (setrlimit(RLIMIT_CORE, &none) < 0)
        missed++;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) < 0)
        missed++;
    if (memory_mb > 0 && !UNDER_SANITIZER) {
        struct rlimit as = {(rlim_t)memory_mb << 20, (rlim_t)memory_mb << 20};
        if (setrlimit(RLIMIT_AS, &as) < 0)
            missed++;
    }
    if (no_exec_filter() < 0)
        missed++;
    return missed;
}

/* ---- log lines ----
 *
 * Every worker writes to the one standard error its supervisor has. Lines
 * are gathered and written at the end of each loop turn in writes that end
 * at a line's end and hold at most PIPE_BUF bytes (a line longer than that
 * goes alone): on a pipe such a write is atomic, so the lines of two workers
 * never mix, and a busy worker makes one write per batch of lines, not per
 * line. */

static buf_t log_lines;
static int log_fd = 2;

static void log_flush(void)
{
    size_t at = 0;
    while (at < log_lines.len) {
        size_t end = at, n;
        for (;;) {
            const char *nl = memchr(log_lines.data + end, '\n', log_lines.len - end);
            size_t next = nl ? (size_t)(nl - log_lines.data) + 1 : log_lines.len;
            if (end > at && next - at > PIPE_BUF)
                break;
            end = next;
            if (end == log_lines.len || end - at >= PIPE_BUF)
                break;
        }
        n = end - at;
        ssize_t k = write(log_fd, log_lines.data + at, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            break;
        at += (size_t)k;
    }
    log_lines.len = 0;
}

static ssize_t log_write(void *cookie, const char *p, size_t n)
{
    (void)cookie;
    if (buf_add(&log_lines, p, n) < 0) {
        log_flush();
        log_lines.failed = 0;
        if (buf_add(&log_lines, p, n) < 0)
            return (ssize_t)n; /* no memory for a log line: it is dropped, the run goes on */
    }
    if (log_lines.len > (1u << 20))
        log_flush();
    return (ssize_t)n;
}

static void log_gather(void)
{
    buf_init(&log_lines, 0);
    cookie_io_functions_t io = {.write = log_write};
    FILE *f = fopencookie(NULL, "w", io);
    if (f) {
        setvbuf(f, NULL, _IONBF, 0);
        stderr = f;
    }
}

/* ---- the worker ---- */

typedef struct wk {
    const worker_options *o;
    wixr_config cfg;
    wixr_host *h;
    hook_table *t;
    hook_table *next_t;           /* a reload's rules, loaded and not yet in force (WIRE_LOAD) */
    char next_gen[24];
    wire w;
    int inflight;
    int retiring;
    int gone;                     /* the supervisor went away */
    long long next_stats;
    long ended;                   /* events ended since the last stats */
} wk;

typedef struct slot {
    wk *k;
    char seq[24];
} slot;

static void send_or_die(wk *k)
{
    while (wire_pending(&k->w)) {
        if (wire_flush(&k->w) < 0) {
            k->gone = 1;
            return;
        }
        if (wire_pending(&k->w)) {
            struct pollfd p = {.fd = k->w.fd, .events = POLLOUT};
            poll(&p, 1, 1000);
        }
    }
}

/* The first failed hook of the event or of its chained events. */
static const hook_result *first_failed(const event_job *j, const event_job **in, const hook_def **def)
{
    for (int i = 0; i < j->nidx; i++)
        if (j->results[i].status == HOOK_FAILED) {
            *in = j;
            *def = &j->t->cfg->hooks[j->idx[i]];
            return &j->results[i];
        }
    for (int i = 0; i < j->nchildren; i++) {
        const hook_result *r = j->children[i] ? first_failed(j->children[i], in, def) : NULL;
        if (r)
            return r;
    }
    return NULL;
}

static void first_error(const event_job *j, buf_t *out)
{
    for (int i = 0; i < j->nidx && !out->len; i++)
        if (j->results[i].error)
            buf_adds(out, j->results[i].error);
    for (int i = 0; i < j->nchildren && !out->len; i++)
        if (j->children[i])
            first_error(j->children[i], out);
}

/* The script of a hook named "event (script)" (the whole name otherwise). */
static void hook_script(const char *name, buf_t *out)
{
    const char *open = strrchr(name ? name : "", '(');
    size_t n = open ? strlen(open) : 0;
    if (n < 3 || open[n - 1] != ')')
        buf_adds(out, name ? name : "");
    else
        buf_add(out, open + 1, n - 2);
}

static void hook_counts(const event_job *j, buf_t *out)
{
    for (int i = 0; i < j->nidx; i++) {
        const hook_result *hr = &j->results[i];
        buf_adds(out, j->name);
        buf_addc(out, '\t');
        hook_script(hr->hook, out);
        buf_addc(out, '\t');
        buf_adds(out, hr->status == HOOK_SKIPPED        ? "skipped"
                      : hr->status != HOOK_FAILED       ? "ok"
                      : hr->outcome == RUN_PERMANENT    ? "permanent"
                                                        : "failed");
        buf_addc(out, '\n');
    }
    for (int i = 0; i < j->nchildren; i++)
        if (j->children[i])
            hook_counts(j->children[i], out);
}

static void event_done(event_job *j, void *arg)
{
    slot *sl = arg;
    wk *k = sl->k;
    buf_t res, ferr, counts, text;
    buf_init(&res, 0);
    buf_init(&ferr, 0);
    buf_init(&counts, 0);
    buf_init(&text, 0);
    if (k->o->lean) {
        buf_adds(&res, "{}");
    } else {
        event_job_json(j, &res);
        hook_counts(j, &counts);
    }
    first_error(j, &ferr);
    if (k->o->render)
        k->o->render(j, k->o->render_flags, &text);
    const event_job *in = j;
    const hook_def *def = NULL;
    const hook_result *f = j->failed ? first_failed(j, &in, &def) : NULL;
    char code[64] = "", flags[4] = "000";
    int permanent = 0, final = 0;
    if (j->failed) {
        flags[0] = '1';
        if (f) {
            snprintf(code, sizeof code, "%s", f->code[0] ? f->code : f->outcome == RUN_MEMORY ? "MEMORY_LIMIT"
                                                                : f->outcome == RUN_LIMIT  ? "LIMIT"
                                                                                           : "ERROR");
            permanent = f->outcome == RUN_PERMANENT;
        } else {
            snprintf(code, sizeof code, "ERROR");
        }
        int mode = def ? def->retry : HOOK_RETRY_TRANSIENT;
        final = mode == HOOK_RETRY_NEVER || (mode == HOOK_RETRY_TRANSIENT && permanent);
        flags[1] = permanent ? '1' : '0';
        flags[2] = final ? '1' : '0';
    }
    const char *fields[10] = {sl->seq, flags, buf_cstr(&res), buf_cstr(&ferr), f ? f->hook : "-", code,
                              f && f->error ? f->error : j->failed ? "failed" : "", in != j ? in->name : "",
                              buf_cstr(&counts), buf_cstr(&text)};
    size_t lens[10] = {(size_t)-1, 3, res.len, ferr.len, (size_t)-1, (size_t)-1, (size_t)-1, (size_t)-1, counts.len,
                       text.len};
    if (res.failed || wire_put(&k->w, WIRE_DONE, 10, fields, lens) < 0) {
        /* no memory for the answer: the supervisor sees the worker end and runs the event again */
        fprintf(stderr, "wixr worker: out of memory for an event's outcome\n");
        log_flush();
        _exit(70);
    }
    buf_free(&res);
    buf_free(&ferr);
    buf_free(&counts);
    buf_free(&text);
    event_job_free(j);
    free(sl);
    k->inflight--;
    k->ended++;
}

/* ---- the poller (wixr serve): its Lua runs here, its result goes back as JSON ---- */

typedef struct poll_slot {
    wk *k;
    char seq[24];
} poll_slot;

static void poll_done(sched_task *t, lua_State *co, const task_outcome *o, void *arg)
{
    (void)t;
    (void)co;
    poll_slot *p = arg;
    int ok = o->kind == OUTCOME_OK && o->json;
    const char *f[3] = {p->seq, ok ? "1" : "0", ok ? o->json : o->text};
    wire_put(&p->k->w, WIRE_POLL_DONE, 3, f, NULL);
    p->k->inflight--;
    free(p);
}

static void poll_start(wk *k, const wire_msg *m)
{
    lua_State *L = k->h->L;
    poll_slot *p = calloc(1, sizeof *p);
    if (!p)
        return;
    p->k = k;
    snprintf(p->seq, sizeof p->seq, "%s", m->f[0]);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "wixr.poller");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        const char *f[3] = {p->seq, "0", "the poller cannot start"};
        wire_put(&k->w, WIRE_POLL_DONE, 3, f, NULL);
        lua_pop(L, 1);
        free(p);
        return;
    }
    if (m->len[1])
        lua_pushstring(L, m->f[1]);
    else
        lua_pushnil(L);
    if (m->len[2])
        lua_pushstring(L, m->f[2]);
    else
        lua_pushnil(L);
    k->inflight++;
    if (!sched_spawn(k->h->sched, L, 2, poll_done, p)) {
        k->inflight--;
        const char *f[3] = {p->seq, "0", "the poller cannot start (out of memory)"};
        wire_put(&k->w, WIRE_POLL_DONE, 3, f, NULL);
        free(p);
    }
}

/* ---- the rate limit: one window for all workers, kept by the supervisor ---- */

static long long rate_gate(void *arg, long long now)
{
    (void)now;
    wk *k = arg;
    if (k->gone || wire_put(&k->w, WIRE_RATE_ASK, 0, NULL, NULL) < 0)
        return 1000;
    send_or_die(k);
    wire_msg m;
    if (k->gone || wire_wait_for(&k->w, WIRE_RATE_ANSWER, &m) < 0) {
        k->gone = 1;
        return 1000;
    }
    return strtoll(m.f[0], NULL, 10);
}

/* ---- counters for the supervisor's /metrics and /healthz ---- */

static void send_stats(wk *k)
{
    buf_t b;
    buf_init(&b, 0);
    json_writer w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_key(&w, "rebuilds");
    jw_arr(&w);
    for (int i = 0; i < k->t->n; i++)
        jw_int(&w, k->t->rt[i] ? k->t->rt[i]->rebuilds - k->t->rebuilt_before[i] : 0); /* (since these rules) */
    jw_arr_end(&w);
    jw_key(&w, "rebuild_errors");
    jw_arr(&w);
    for (int i = 0; i < k->t->n; i++)
        jw_str(&w, k->t->rt[i] ? k->t->rt[i]->rebuild_error : "");
    jw_arr_end(&w);
    const wix_stats *st = wix_client_stats(k->h->client);
    jw_key(&w, "retries");
    jw_int(&w, st->retries);
    jw_key(&w, "rate_waits");
    jw_int(&w, st->rate_waits);
    jw_key(&w, "calls");
    jw_arr(&w);
    int nc;
    const wix_call_count *cc = wix_client_call_counts(k->h->client, &nc);
    for (int i = 0; i < nc; i++) {
        jw_arr(&w);
        jw_str(&w, cc[i].endpoint);
        jw_int(&w, cc[i].status);
        jw_int(&w, cc[i].n);
        jw_arr_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    const char *f[1] = {buf_cstr(&b)};
    wire_put(&k->w, WIRE_STATS, 1, f, NULL);
    buf_free(&b);
}

/* ---- progress: a thread copies the main thread's progress counter to the
 * supervisor every 100 ms; a main thread stuck in a C call stops it moving
 * (the thread goes on), and the supervisor ends the worker at its hard
 * deadline. ---- */

static void *progress_main(void *arg)
{
    (void)arg;
    for (;;) {
        unsigned long v = sched_progress;
        if (write(WORKER_PROGRESS_FD, &v, sizeof v) < 0 && errno != EAGAIN && errno != EINTR)
            return NULL; /* the supervisor is gone: the main thread sees it too */
        struct timespec ts = {0, 100 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

/* A reload: the configuration read again and its rules loaded beside those
 * in force, keeping the state of every hook that did not change; they take
 * over at WIRE_SWAP (every worker loaded them) or go at WIRE_DROP. */
static void load_rules(wk *k, const char *gen)
{
    char err[8192], kept_n[16] = "0";
    buf_t errors;
    buf_init(&errors, 64 * 1024);
    hooks_unref(k->next_t); /* (one overtaken by this one) */
    k->next_t = NULL;
    wixr_config *nc = calloc(1, sizeof *nc);
    if (!nc || config_load(nc, k->o->config_path, err, sizeof err) < 0) {
        buf_adds(&errors, nc ? err : "out of memory");
        free(nc);
    } else {
        int kept = 0;
        if ((k->next_t = hooks_load_from(k->h, nc, k->t, &errors, &kept))) {
            k->next_t->owned_cfg = nc; /* freed with the table */
            snprintf(k->next_gen, sizeof k->next_gen, "%s", gen);
            snprintf(kept_n, sizeof kept_n, "%d", kept);
        } else {
            config_free(nc);
            free(nc);
        }
    }
    const char *f[4] = {gen, k->next_t ? "1" : "0", buf_cstr(&errors), kept_n};
    wire_put(&k->w, WIRE_LOADED, 4, f, NULL);
    buf_free(&errors);
}

static void handle(wk *k, const wire_msg *m)
{
    if (m->type == WIRE_RUN) {
        /* seq, id, name, data */
        slot *sl = calloc(1, sizeof *sl);
        if (!sl) {
            fprintf(stderr, "wixr worker: out of memory\n");
            log_flush();
            _exit(70);
        }
        sl->k = k;
        snprintf(sl->seq, sizeof sl->seq, "%s", m->f[0]);
        k->inflight++;
        if (!event_fire(k->t, m->f[2], m->len[1] ? m->f[1] : NULL, m->f[3], event_done, sl)) {
            fprintf(stderr, "wixr worker: out of memory\n");
            log_flush();
            _exit(70);
        }
    } else if (m->type == WIRE_POLL) {
        poll_start(k, m);
    } else if (m->type == WIRE_RETIRE) {
        k->retiring = 1;
    } else if (m->type == WIRE_LOAD) {
        load_rules(k, m->f[0]);
    } else if (m->type == WIRE_SWAP || m->type == WIRE_DROP) {
        if (!k->next_t || strcmp(k->next_gen, m->f[0]))
            return; /* (a worker started during the reload loaded the files itself) */
        hook_table *t = k->next_t;
        k->next_t = NULL;
        if (m->type == WIRE_DROP) {
            hooks_unref(t);
            return;
        }
        hooks_adopt(t);
        hooks_unref(k->t); /* runs in flight finish with it; it goes with the last */
        k->t = t;
    }
}

int worker_main(const worker_options *o)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* the supervisor's death ends its workers */
    if (getppid() == 1)
        return 1;
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, SIG_IGN); /* the supervisor decides: it drains, then retires or kills */
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    wk K = {0}, *k = &K;
    k->o = o;
    wire_init(&k->w, WORKER_FD);
    fcntl(WORKER_FD, F_SETFL, fcntl(WORKER_FD, F_GETFL) | O_NONBLOCK);
    fcntl(WORKER_PROGRESS_FD, F_SETFL, fcntl(WORKER_PROGRESS_FD, F_GETFL) | O_NONBLOCK);
    worker_harden(o->memory_mb);
    log_gather();

    char err[8192];
    buf_t errors;
    buf_init(&errors, 64 * 1024);
    int loaded = config_load(&k->cfg, o->config_path, err, sizeof err) == 0;
    if (!loaded) {
        buf_adds(&errors, err);
    } else {
        if (o->wix_url) {
            /* the supervisor's emulator, over HTTP: one state for every worker */
            free(k->cfg.wix.base_url);
            k->cfg.wix.base_url = strdup(o->wix_url);
            k->cfg.wix.transport = TRANSPORT_HTTP;
            /* the sandbox's default account (lua/wix.lua's SANDBOX_ACCOUNT), as the in-process sandbox has it */
            if (!k->cfg.wix.account_id)
                k->cfg.wix.account_id = strdup("11111111-2222-4333-8444-555555555555");
        } else if (k->cfg.wix.transport == TRANSPORT_AUTO) {
            k->cfg.wix.transport = k->cfg.wix.api_key ? TRANSPORT_HTTP : TRANSPORT_SANDBOX;
        }
        k->h = host_new(&k->cfg, o->dry_run, err, sizeof err);
        if (!k->h)
            buf_adds(&errors, err);
        else if (!(k->t = hooks_load(k->h, &k->cfg, &errors)))
            loaded = 0;
        loaded = loaded && k->h && k->t;
    }
    if (k->h)
        k->h->print_as_log = o->log_prints;
    const char *hello[2] = {loaded ? "1" : "0", buf_cstr(&errors)};
    wire_put(&k->w, WIRE_HELLO, 2, hello, NULL);
    send_or_die(k);
    buf_free(&errors);
    log_flush();
    if (!loaded || k->gone) {
        if (k->t)
            hooks_free(k->t);
        if (k->h)
            host_free(k->h);
        if (loaded || k->cfg.path)
            config_free(&k->cfg);
        wire_free(&k->w);
        return 3;
    }
    if (o->rate_gate && !o->dry_run)
        wix_client_set_rate_gate(k->h->client, rate_gate, k);
    pthread_t progress;
    if (pthread_create(&progress, NULL, progress_main, NULL) == 0)
        pthread_detach(progress);
    sched_watch_fd(k->h->sched, WORKER_FD);

    for (;;) {
        int r = wire_fill(&k->w);
        wire_msg m;
        int got;
        while ((got = wire_next(&k->w, &m)) == 1)
            handle(k, &m);
        if (got < 0 || r < 0)
            k->gone = 1;
        /* what is runnable runs, its answers go out, and only then the loop waits */
        sched_run_for(k->h->sched, 0);
        long long now = sched_now_ms();
        /* counters go out every 500 ms, and at once when events ended and the worker is idle or 100 ms passed */
        if (now >= k->next_stats || (k->ended && (!k->inflight || now >= k->next_stats - 400))) {
            k->next_stats = now + 500;
            k->ended = 0;
            send_stats(k);
        }
        log_flush(); /* (the lines of an event before its answer: the answer may end the batch) */
        send_or_die(k);
        if (k->retiring && !k->inflight)
            break;
        sched_run_for(k->h->sched, 200);
        sched_progress++;
        log_flush();
        send_or_die(k);
        if (k->gone)
            _exit(0); /* nobody to answer to: the supervisor runs our events again */
        if (k->retiring && !k->inflight)
            break;
    }
    send_stats(k);
    send_or_die(k);
    sched_run_for(k->h->sched, 0);
    log_flush();
    hooks_unref(k->next_t);
    hooks_unref(k->t);
    host_free(k->h);
    config_free(&k->cfg);
    wire_free(&k->w);
    return 0;
}
