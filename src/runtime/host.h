/*
 * host.h -- one embedded Lua 5.4 host: the state, the scheduler, and the
 * per-state context every C function reaches through lua_getextraspace
 * (never a C global).
 *
 * The host is the bottom of the Lua side and knows nothing above it: the
 * modules its states preload (wix.core) are handed to host_open, the wix
 * client is an opaque pointer the layer that wires the host sets
 * (app/app.h), and what hook runs must answer (permissions, memory, limits)
 * is asked through a guard the hooks layer installs (host_guard).
 */
#ifndef WIXR_HOST_H
#define WIXR_HOST_H

#include <lauxlib.h>
#include <lua.h>
#include <stdint.h>

#include "../config/config.h"
#include "../json/json.h"
#include "outcome.h"
#include "sched.h"

struct wixr_host;
struct hook_rt;
struct hook_run;
struct wix_client;

/* What lua_getextraspace points to in every thread: the host, and inside a
 * hook, its loaded script and the run being executed. */
typedef struct wixr_ctx {
    struct wixr_host *host;
    struct hook_rt *hook;          /* NULL outside hook scripts */
    struct hook_run *run;          /* NULL outside a hook run */
} wixr_ctx;

static inline wixr_ctx *ctx_of(lua_State *L)
{
    return *(wixr_ctx **)lua_getextraspace(L);
}

/* What the layers under the hooks ask of a hook run, answered by the layer
 * that runs hooks (src/hooks/) once it has loaded one. Each takes a thread
 * and answers for the run that thread works for; outside hook runs (and
 * while no guard is installed) every call is allowed and nothing is
 * derived: see the host_* wrappers below, which callers use. */
typedef struct host_guard {
    /* 0 when the run may make this call (op: WIX_OP_*), else -1 with err */
    int (*permit)(lua_State *L, unsigned op, int mutating, char *err, size_t errlen);
    /* 1 when a JSON text of len bytes parsed (C memory) fits the state's free memory */
    int (*json_fits)(lua_State *L, const char *s, size_t len);
    /* child, a new thread of L's run, gets the run's limits */
    void (*adopt_thread)(lua_State *parent, lua_State *child);
    /* a task of a run (not its handler) failed with o: 1 when the guard
     * dealt with it (ended the run, or logged it naming the run) */
    int (*task_failed)(lua_State *co, const task_outcome *o);
    /* pushes the idempotency key the run derives for its next mutating call
     * and returns 1; 0 (nothing pushed) outside a run with an event id */
    int (*next_key)(lua_State *L);
    /* records the call at idx that a dry run did not send; 1 when recorded
     * in the run, 0 outside runs; may raise (not in a handler run, memory) */
    int (*plan)(lua_State *L, int idx);
    /* the run's hook name and event id (either may be NULL); 0 outside runs */
    int (*names)(lua_State *L, const char **hook, const char **event_id);
    /* around script code run with no task (an error value made text): the
     * hook's limits apply; begin returns 1 when end must be called */
    int (*idle_begin)(lua_State *L);
    void (*idle_end)(lua_State *L);
} host_guard;

typedef struct wixr_host {
    wixr_ctx ctx;                 /* the main state's context */
    lua_State *L;
    sched_t *sched;
    struct wix_client *client;    /* the wix module's client (wix/client.h): set by app/app.c */
    const luaL_Reg *preload;      /* modules every state of the host preloads ({NULL, NULL} ends it) */
    const host_guard *guard;      /* hook runs' answers (set by the hooks layer), or NULL */
    const wixr_config *cfg;
    int dry_run;
    int print_as_log;             /* a hook's print() writes a JSON log line (wixr serve) */
    int plan_ref;                 /* registry: list of planned calls (dry-run) */
    struct hook_run *active_runs; /* hook runs in flight (hooks/: the watchdog's list) */
    uint64_t rng[4];          /* wix.uuid's generator (wix_core.c) */
    int rng_seeded;
    int watchdog_armed;
    long long watchdog_at;
} wixr_host;

/* Creates the host: a Lua state with the standard libraries, cjson, the
 * embedded Lua modules and preload (kept, not copied: a static table) in
 * package.preload, and its scheduler. NULL with err. The commands make
 * their host with host_new (app/app.h), which preloads wix.core and sets
 * the client. */
wixr_host *host_open(const wixr_config *cfg, int dry_run, const luaL_Reg *preload, char *err, size_t errlen);
/* Frees the scheduler (its tasks hold Lua references) and then the state;
 * not the client (app/app.c frees it). */
void host_close(wixr_host *h);
wixr_host *host_of(lua_State *L);

/* The guard's answers, or what they are outside hook runs. */
int host_permit(lua_State *L, unsigned op, int mutating, char *err, size_t errlen);
int host_json_fits(lua_State *L, const char *s, size_t len);
void host_adopt_thread(lua_State *parent, lua_State *child);
int host_task_failed(lua_State *co, const task_outcome *o);
int host_next_key(lua_State *L);
int host_plan(lua_State *L, int idx);
int host_run_names(lua_State *L, const char **hook, const char **event_id);
int host_idle_begin(lua_State *L);
void host_idle_end(lua_State *L);

/* Loads a script (text only, never bytecode). Returns LUA_OK and pushes the
 * chunk, or an error status with the message pushed. */
int host_load_script(wixr_host *h, const char *path);

/* Registers the host's preloads, cjson and the embedded modules in
 * package.preload of L (a state whose context is the host's: its own, or a
 * hook's). */
void host_register_modules(lua_State *L);

/* A JSON log line {"ts","level","msg","fields":{...}} on stderr, from C alone
 * (never touches Lua): begin opens it, the caller writes its fields with the
 * writer begin returns, end writes the line. */
typedef struct host_logline {
    buf_t b;
    json_writer w;
} host_logline;
json_writer *host_log_begin(host_logline *l, const char *level, const char *msg);
void host_log_end(host_logline *l);

/* One JSON log line on stderr from C text alone (never touches Lua):
 * {"ts","level","msg","fields":{...}} with fields = {key, value, ..., NULL}
 * (a NULL value leaves its key out). */
void host_log(const char *level, const char *msg, const char *const *fields);

#endif
