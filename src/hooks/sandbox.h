/*
 * sandbox.h -- hook scripts in their own Lua state, with an allow-listed
 * environment and limits.
 *
 * Each hook gets a Lua state of its own (so memory is counted per hook and no
 * script can reach another's globals), an environment built from allowed
 * names only (no io, os.execute, debug, package, string.dump, bytecode), and
 * per-run globals (what a run assigns to a global is its own, over the
 * script's top-level definitions, and dropped when it ends), and
 * per-run limits: an instruction budget and a wall-clock deadline checked by
 * a count hook that re-arms on every instruction once tripped (so pcall
 * cannot swallow it), and a deadline timer that ends the run even while it
 * waits on the network. Which wix operations a run may call, and how many
 * mutating calls, is checked in C (wix_core.c asks through the host's guard,
 * guard.c) against hook_run.
 *
 * Three files, one concern each: env.c builds the environment (the
 * allow-list, the wrapped functions, the globals); limits.c holds the
 * allocator, the count hook and the library calls charged or bounded; run.c
 * makes states and runs hooks in them. What they share and nothing else
 * uses is in sandbox_internal.h.
 */
#ifndef WIXR_SANDBOX_H
#define WIXR_SANDBOX_H

#include <lua.h>
#include <stddef.h>
#include <sys/stat.h>
#include <time.h>

#include "../config/config.h"
#include "../util/buf.h"
#include "../util/filestamp.h"
#include "../util/pool.h"
#include "../runtime/host.h"


typedef struct hook_rt {
    int refs;                     /* hook tables holding it (a reload keeps an unchanged hook's state) */
    wixr_ctx ctx;                 /* {host, this, NULL}: the state's main thread */
    lua_State *L;
    const hook_def *def;
    const wixr_config *cfg;       /* the configuration def belongs to */
    char name[256];               /* "event[i] (script)" for messages */
    size_t mem, mem_limit, mem_peak;
    pool pool;                    /* the state's small blocks */
    int handler_ref;
    int options_ref;              /* ctx.options, decoded once (copied per run) */
    int runs;                     /* runs in flight */
    char *source;                 /* the script's text as loaded: a rebuilt state runs the same code */
    size_t source_len;
    file_stamp stamp;             /* the file it was read from, as it was then */
    int broken;                   /* a run broke the memory cap: rebuild before the next run */
    long long rebuilds;           /* fresh states made after a broken memory cap */
    long long last_rebuild_ms;    /* when the last one was made (monotonic ms) */
    char rebuild_error[600];      /* why the last rebuild failed ("" when it did not) */
    struct hook_run *idle_run;    /* while no task runs (loading, an error made text): the limits script code answers to */
    struct hook_run *idle_store;  /* idle_run's storage for an error made text */
    struct hook_run *deferred_head, *deferred_tail; /* runs waiting for the state's rebuild */
    int ndeferred;
    int deferred_armed;
    int base_ref;                 /* registry: the script's shared globals (top-level names, libraries) */
    const void *env;              /* the environment proxy every chunk of the script has as _ENV (and _G) */
    int loading;                  /* the script's top level runs: globals written go to the shared table */
    int envmeta_ref, index_ref;   /* registry: the environment's metatable, its C __index */
    int own_globals;              /* runs in flight that have globals of their own */
    int custom_meta;              /* the top level set or fetched _G's metatable */
    long long alloc_fail_at;      /* tests: refuse every allocation from the n-th on (0 = off) */
    long long allocs;             /* allocations counted while alloc_fail_at is set */
} hook_rt;

#define HOOK_RESULT_MAX (16 * 1024 * 1024)  /* a handler's result, as JSON */

typedef struct hook_run hook_run;
typedef void (*hook_done_fn)(hook_run *r, void *arg);

/* How a run ended. PERMANENT: the error value said it cannot succeed by
 * trying again (a wix.Error with retryable = false, or wix.permanent). */
enum run_outcome { RUN_OK, RUN_ERROR, RUN_PERMANENT, RUN_MEMORY, RUN_LIMIT };

struct hook_run {
    wixr_ctx ctx;                 /* {host, hook, this}: every thread of the run */
    hook_rt *hook;
    unsigned long group;          /* scheduler group of the run's tasks */
    long long started_ms, deadline_ms;
    long long instructions;
    int tripped;
    int trip_placed;              /* trip already says script:line */
    char trip[300];
    int mutations;
    int idle;                     /* not a run of the handler (loading, an error made text): limits only */
    int keyseq;                   /* mutating calls that got a derived idempotency key */
    int globals_ref;              /* registry: the globals this run wrote (0 until its first), dropped at its end */
    int finished;
    int ok;
    enum run_outcome outcome;    /* RUN_OK when ok */
    char error_code[64];          /* the error value's code field (e.g. SITE_NOT_FOUND), or "" */
    char *result_json;            /* what the handler returned, as JSON ("null" when nothing) */
    char *error;                  /* one line: hook, script:line, message */
    buf_t plan;                   /* dry-run: planned calls, a JSON array's items */
    int nplan;
    buf_t emitted;                /* ctx.emit: {"event","data"} items */
    int nemitted;
    hook_done_fn done;
    void *done_arg;
    unsigned long task_id;        /* the handler's task */
    char *event_copy;             /* the event's data, kept for a run that starts later */
    hook_run *next_deferred;
    const char *event_name;       /* for ctx.event */
    const char *event_id;
    int depth;                    /* chain depth of the event */
    hook_run *next_active, *prev_active; /* the host's list of runs in flight */
    const char *chain;            /* "a>b>c": the events that led here */
};

/* Loads def's script into a new sandboxed state; the chunk must return the
 * handler function. NULL with "where: message" in err. */
hook_rt *hook_load(wixr_host *h, const wixr_config *cfg, const hook_def *def, char *err, size_t errlen);
/* Drops a table's hold on k: freed with the last. */
void hook_free(hook_rt *k);
/* The script's text, read as hook_load reads it: NULL with err filled. stamp
 * (may be NULL) is filled with the stamp of the file as it was read. */
char *hook_read_script(const hook_def *def, size_t *len, file_stamp *stamp, char *err, size_t errlen);

/* Starts handler(event, ctx) on the scheduler. event_json is the event's data.
 * done is called exactly once; then free the run with hook_run_free. */
hook_run *hook_start(hook_rt *k, const char *event_name, const char *event_id, const char *event_json, int depth,
                     const char *chain, hook_done_fn done, void *arg);
void hook_run_free(hook_run *r);

/* The run a thread of a hook state is working for now (NULL outside runs). */
hook_run *sandbox_current_run(lua_State *L);
/* Ends a run as failed with msg (its tasks stop). */
void sandbox_run_abort(hook_run *r, const char *msg);
/* A task of run r other than its handler ended with o: when that was a limit
 * or the memory cap, the whole run ends (returns 1); otherwise 0. */
int sandbox_task_failed(hook_run *r, const task_outcome *o);
/* Around script code that runs with no task (outcome.c making an error
 * value text): the hook's limits apply, through an idle run with a fresh
 * budget. begin returns 1 when it set one up (then call end). */
int sandbox_idle_begin(lua_State *L);
void sandbox_idle_end(lua_State *L);
/* In a hook's state: 1 when the document a JSON text parses into (C memory,
 * outside the hook's cap: a 2-byte value "0," is a node of sizeof(json_value))
 * would fit in the hook's free memory, so that its values could too; 0 when it
 * would not (the caller fails with a memory error before parsing). Elsewhere 1. */
int sandbox_json_fits(lua_State *L, const char *s, size_t len);
/* Tests: every allocation of k's state from the n-th on is refused (0: off). */
void sandbox_fail_allocations(hook_rt *k, long long n);

/* Charges units of work a C call is about to do (or has done) to the
 * running hook's instruction budget, and checks its deadline: once a limit
 * has struck it raises the limit's error, as the count hook does. Outside a
 * hook run it does nothing. */
void sandbox_charge(lua_State *L, double units);

/* Installs the run's limits on a new thread of the run (used by wix.spawn). */
void sandbox_adopt_thread(lua_State *parent, lua_State *child);

/* Lua-side checks for wix_core.c: may this run call op? 0 or -1 with err. */
int sandbox_permit(hook_run *r, unsigned op, int mutating, char *err, size_t errlen);

#endif
