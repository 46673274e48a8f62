/*
 * host.h -- one embedded Lua 5.4 host: the state, the scheduler, the wix
 * client, and the per-state context every C function reaches through
 * lua_getextraspace (never a C global).
 */
#ifndef WIXR_HOST_H
#define WIXR_HOST_H

#include <lua.h>
#include <stdint.h>

#include "../config/config.h"
#include "../json/json.h"
#include "../wix/client.h"
#include "sched.h"

struct wixr_host;
struct hook_rt;
struct hook_run;

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

typedef struct wixr_host {
    wixr_ctx ctx;                 /* the main state's context */
    lua_State *L;
    sched_t *sched;
    wix_client *client;
    const wixr_config *cfg;
    int dry_run;
    int print_as_log;             /* a hook's print() writes a JSON log line (wixr serve) */
    int plan_ref;                 /* registry: list of planned calls (dry-run) */
    struct hook_run *active_runs; /* hook runs in flight (sandbox.c) */
    uint64_t rng[4];          /* wix.uuid's generator (wix_core.c) */
    int rng_seeded;
    int watchdog_armed;
    long long watchdog_at;
} wixr_host;

/* Creates the host. Says once on stderr when the sandbox is used because no
 * API key is configured. */
wixr_host *host_new(const wixr_config *cfg, int dry_run, char *err, size_t errlen);
void host_free(wixr_host *h);
wixr_host *host_of(lua_State *L);

/* Loads a script (text only, never bytecode). Returns LUA_OK and pushes the
 * chunk, or an error status with the message pushed. */
int host_load_script(wixr_host *h, const char *path);

/* Registers wix.core, cjson and the embedded modules (package.preload). */
void host_register_modules(lua_State *L);

/* wix.core.log(level, message, fields?): one JSON log line on stderr. */
int wix_core_log(lua_State *L);
/* The line itself, from the level, message and fields table at those stack
 * slots; extra is NULL or {key, value, ..., NULL}: string pairs added to the
 * fields (the fields table is left as it was). */
void wix_log_write(lua_State *L, int level_idx, int msg_idx, int fields_idx, const char *const *extra);

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

/* Checks <state_dir>/installation.key (the secret of the derived idempotency
 * keys) as a hook run reads it: 0 when it is sound or absent (the first real
 * run makes it), -1 with one line in err naming the file and the fix when it
 * is open to group or others, another user's, not a regular file or not 32
 * bytes. wixr check and wixr serve call it at start. */
int wix_install_key_check(const char *state_dir, char *err, size_t errlen);

/* Opens the wix.core C module (what lua/wix.lua is built on). */
int luaopen_wix_core(lua_State *L);

#endif
