/*
 * workers.h -- the supervisor's side of the worker processes (worker.h): it
 * starts them, hands them events, reads their answers, and replaces the ones
 * that die. Nothing here runs Lua.
 *
 * A worker dies by a crash (a signal), by the supervisor at its hard deadline
 * (its progress counter did not move for hard_ms: stuck in a C call) or at
 * its memory ceiling (resident memory over memory_mb; the address space is
 * capped too). Each event it had in flight is reported lost: "charged" when
 * it was the worker's only event (the death is its doing), else not (it was a
 * bystander: the caller runs it again, alone, to find out). A worker that dies
 * is replaced at once (after a pause when it died young).
 *
 * A reload has every worker load the new rules beside those in force,
 * keeping the state of each hook that did not change; the new rules take
 * over in all workers at once when every one has loaded them. Events in
 * flight finish under the rules they started with.
 */
#ifndef WIXR_WORKERS_H
#define WIXR_WORKERS_H

#include <poll.h>

#include "../json/json.h"
#include "../wix/client.h"
#include "wire.h"

typedef struct worker_pool worker_pool;

typedef struct workers_callbacks {
    void *ctx;
    /* An event ended: m is its DONE message (worker.h), valid during the call. */
    void (*done)(void *ctx, void *arg, const wire_msg *m);
    /* An event's worker died: reason ("worker crashed: SIGSEGV", "hard deadline ...",
     * "memory ceiling ..."), and whether the death is charged to it. */
    void (*lost)(void *ctx, void *arg, const char *reason, int charged);
    /* A poll ended: ok, and the result JSON or the error. */
    void (*polled)(void *ctx, int ok, const char *text);
    /* A reload's rules were loaded by every worker and took over (ok), or were not (errors). */
    void (*reloaded)(void *ctx, int ok, const char *errors);
    /* Whole lines a worker wrote to its standard error (NULL: they go to
     * this process's standard error directly). */
    void (*log)(void *ctx, const char *lines, size_t len);
} workers_callbacks;

typedef struct workers_options {
    const char *const *args;      /* the worker's arguments after "wixr __worker" (NULL-terminated) */
    char *const *env;             /* its whole environment (NULL-terminated) */
    int workers;                  /* processes */
    int per_worker;               /* events in flight in one worker */
    long memory_mb;               /* ceiling per worker (0: none) */
    long long hard_ms;            /* a worker whose progress stops this long is killed */
    int rate_limit;               /* the one window of API requests for all workers (0: none) */
    long long rate_window_ms;
    workers_callbacks cb;
} workers_options;

/* Starts the workers; waits (at most startup_ms) until the first one has
 * loaded the rules. NULL with err (the load errors) when it could not. */
worker_pool *workers_start(const workers_options *o, long long startup_ms, char *err, size_t errlen);
/* Kills every worker (at once) and frees the pool. */
void workers_free(worker_pool *p);

/* Room for one more event (solo: a worker with nothing in flight, kept for it alone). */
int workers_has_room(const worker_pool *p, int solo);
/* Hands an event to a worker; -1 when no worker has room. */
int workers_run(worker_pool *p, const char *id, const char *name, const char *data, int solo, void *arg);
/* Starts a poll in a worker (the poller's Lua runs there); -1 when none is ready. */
int workers_poll(worker_pool *p, const char *watermark, const char *account);
int workers_inflight(const worker_pool *p);

/* The fds to wait on (at most max), and the wait's deadline in ms (-1: none). */
int workers_fds(worker_pool *p, struct pollfd *fds, int max);
long long workers_next_ms(const worker_pool *p);
/* Reads answers, reaps and replaces dead workers, enforces the deadlines and
 * ceilings, sends queued messages. Calls the callbacks. */
void workers_service(worker_pool *p);

/* A reload: every worker loads the configuration's rules again beside those
 * in force, keeping the state of each hook that did not change; the new rules
 * take over in all workers at once when all have loaded them, else they are
 * dropped in all (cb.reloaded says which, from workers_service, never from
 * here). args: what replacements start with. */
int workers_reload(worker_pool *p, const char *const *args);
/* The reload under way is given up: the workers drop what they loaded (no
 * callback). */
void workers_reload_abort(worker_pool *p);
/* Hooks whose state the last reload a worker loaded kept. */
int workers_reload_kept(const worker_pool *p);
/* Takes no more work; workers leave when their events are done. */
void workers_retire(worker_pool *p);

/* For /healthz and /metrics. */
void workers_health_json(worker_pool *p, json_writer *w);
int workers_stalled(worker_pool *p);            /* no worker is ready, or none with work makes progress */
long long workers_restarts(const worker_pool *p);
/* The latest counters of the workers running plus those of workers gone. */
#define WORKERS_MAX_HOOKS 256
typedef struct workers_totals {
    long long retries, rate_waits;
    long long rebuilds[WORKERS_MAX_HOOKS]; /* per hook of the current rules */
    char rebuild_errors[WORKERS_MAX_HOOKS][160];
    wix_call_count calls[WIX_MAX_CALL_COUNTS];
    int ncalls;
} workers_totals;
void workers_totals_get(worker_pool *p, workers_totals *t);

/* "SIGSEGV" for 11 (the signal's abbreviation). */
const char *workers_signal_name(int sig);

#endif
