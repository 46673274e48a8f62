/*
 * hooks.h -- the hook table built from the configuration, and events pushed
 * through it: each event's hooks run in order (a failed hook stops the rest
 * unless its on_error is continue), then the events its hooks emitted run,
 * one after another, as children of the event.
 */
#ifndef WIXR_HOOKS_H
#define WIXR_HOOKS_H

#include "../util/buf.h"
#include "../util/name_index.h"
#include "../runtime/host.h"
#include "sandbox.h"

typedef struct hook_table {
    wixr_host *h;
    const wixr_config *cfg;
    hook_rt **rt;                 /* one per cfg->hooks[i]; NULL when disabled */
    int n;
    name_index by_event;          /* an event name -> its enabled hooks, in order */
    long long *rebuilt_before;    /* per hook: its state's rebuilds when this table took it (a reload keeps states) */
    int refs;                     /* event jobs using this table, plus one while it is current */
    wixr_config *owned_cfg;       /* freed with the table (tables built by a reload) */
    long version;
} hook_table;

/* Loads every enabled hook's script. On errors, NULL, with one line per
 * problem appended to errors (every script is tried). */
hook_table *hooks_load(wixr_host *h, const wixr_config *cfg, buf_t *errors);
/* The same for a reload: a hook of `from` whose definition (event, id or
 * place among its event's hooks, script, options, limits, permissions) and
 * script text are unchanged keeps its state -- only what changed is built.
 * *kept (may be NULL) counts them. Until hooks_adopt, the kept states still
 * answer to from's definitions, so the new table may be dropped (hooks_free)
 * and nothing changes. */
hook_table *hooks_load_from(wixr_host *h, const wixr_config *cfg, const hook_table *from, buf_t *errors,
                            int *kept);
/* t takes over from the table it was loaded from: its kept states answer to
 * t's definitions from now on. */
void hooks_adopt(hook_table *t);
void hooks_free(hook_table *t);
/* Reference counting for atomic reloads: a job holds its table until it ends. */
void hooks_ref(hook_table *t);
void hooks_unref(hook_table *t);
int hooks_count_for(const hook_table *t, const char *event);

enum { HOOK_OK, HOOK_FAILED, HOOK_SKIPPED };

typedef struct hook_result {
    const char *hook;             /* the hook's name */
    int status;                   /* HOOK_* */
    int outcome;                  /* enum run_outcome (sandbox.h): RUN_OK, RUN_ERROR, RUN_PERMANENT, ... */
    char code[64];                /* the error value's code (e.g. SITE_NOT_FOUND), or "" */
    char *result_json;
    char *error;
    char *plan_json;              /* dry-run: a JSON array */
    long long ms;
} hook_result;

typedef struct event_job event_job;
typedef void (*event_done_fn)(event_job *j, void *arg);

struct event_job {
    hook_table *t;
    char *name, *id, *data_json, *chain;
    int depth;
    int idx[64], nidx, pos;
    hook_result *results;
    event_job **children;
    int nchildren, child_pos;
    char *emitted_json;           /* the array of {"event","data"} the hooks emitted */
    int failed;                   /* a hook here or in a child failed */
    event_done_fn done;
    void *arg;
};

/* Starts an event (its hooks run on the scheduler); done runs when it and
 * its chained events have finished. With no hook for the event, done runs
 * at once with nidx == 0. */
event_job *event_fire(hook_table *t, const char *name, const char *id, const char *data_json, event_done_fn done,
                      void *arg);
void event_job_free(event_job *j);
/* {"event","id","ok","hooks":[{"hook","status","result"|"error","planned"?,"ms"}],"chained":[...]} */
void event_job_json(const event_job *j, buf_t *b);

#endif
