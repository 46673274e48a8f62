/*
 * run.c -- hook states and hook runs: a state made from the script's text
 * (and made again after a run broke its memory cap), the handler's runs on
 * the scheduler with their context (ctx.log, ctx.emit, ctx.options), how a
 * run ends (ok, error, permanent, memory, limit), the watchdog that ends a
 * run waiting past its deadline, and runs deferred while the state is
 * rebuilt. See sandbox.h.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"
#include "../json/luajson.h"
#include "../wix/wix_core.h"
#include "guard.h"
#include "sandbox_internal.h"

static void finish(hook_run *r, int ok, char *result_json, const char *error);
static void start_run(hook_run *r, const char *event_json);
static void arm_deferred(hook_rt *k);

int sandbox_permit(hook_run *r, unsigned op, int mutating, char *err, size_t errlen)
{
    const hook_def *d = r->hook->def;
    if (!(d->allow & op)) {
        char allowed[256], name[64];
        config_ops_names(d->allow, allowed, sizeof allowed);
        config_ops_names(op, name, sizeof name);
        snprintf(err, errlen, "operation '%s' is not allowed for this hook (allow: %s)", name, allowed);
        return -1;
    }
    if (mutating && d->max_mutations >= 0 && r->mutations >= d->max_mutations) {
        snprintf(err, errlen, "more than %d mutating call%s in one run (max_mutations)", d->max_mutations,
                 d->max_mutations == 1 ? "" : "s");
        return -1;
    }
    if (mutating)
        r->mutations++;
    return 0;
}

/* The script's top level runs once, under the hook's limits (no yields):
 * (chunk, hook_rt) -> the handler, or an error naming what went wrong. */
static int take_handler(lua_State *L)
{
    hook_rt *k = lua_touserdata(L, 2);
    lua_pop(L, 1);
    lua_call(L, 0, 1);
    if (!lua_isfunction(L, -1))
        return luaL_error(L, "%s: the script must return its handler function (got %s)", k->def->script,
                          luaL_typename(L, -1));
    k->handler_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return 0;
}

/* The error a failed protected call left on top of L: a message, or (a
 * memory error's value is not always reachable as text) Lua's memory one. */
static const char *top_error(lua_State *L)
{
    return lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : LUAJSON_NO_MEMORY;
}

/* Makes k's Lua state from its script's text: libraries, the sandboxed
 * environment, the handler. 0, or -1 with "where: message" in err. */
static int state_open(hook_rt *k, char *err, size_t errlen)
{
    const hook_def *def = k->def;
    wixr_host *h = k->ctx.host;
    k->mem = 0;
    k->handler_ref = LUA_NOREF;
    k->options_ref = LUA_NOREF;
    k->base_ref = LUA_NOREF;
    k->envmeta_ref = LUA_NOREF;
    k->index_ref = LUA_NOREF;
    k->own_globals = 0;
    k->custom_meta = 0;
    k->env = NULL;
    k->L = lua_newstate(limits_alloc, k);
    if (!k->L) {
        snprintf(err, errlen, "%s: cannot create a Lua state", def->where);
        return -1;
    }
    *(wixr_ctx **)lua_getextraspace(k->L) = &k->ctx;
    lua_State *L = k->L;
    lua_pushcfunction(L, env_open_state);
    if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "%s: setting up Lua: %s", def->where,
                 top_error(L));
        return -1;
    }
    char chunk[4096];
    snprintf(chunk, sizeof chunk, "@%s", def->script);
    /* as luaL_loadfile: a UTF-8 BOM and a first line starting with '#' are
     * skipped (the line's end is kept, so line numbers stay true) */
    const char *text = k->source;
    size_t len = k->source_len;
    if (len >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) {
        text += 3;
        len -= 3;
    }
    if (len && text[0] == '#') {
        const char *nl = memchr(text, '\n', len);
        len = nl ? len - (size_t)(nl - text) : 0;
        text = nl ? nl : text + len;
    }
    int st = luaL_loadbufferx(L, text, len, chunk, "t");
    if (st != LUA_OK) {
        snprintf(err, errlen, "%s", top_error(L));
        return -1;
    }
    lua_pushcfunction(L, env_build);
    if (lua_pcall(L, 0, 1, 0) != LUA_OK) {
        snprintf(err, errlen, "%s: building the sandbox: %s", def->where,
                 top_error(L));
        return -1;
    }
    lua_setupvalue(L, -2, 1); /* the chunk's _ENV */
    hook_run probe = {.ctx = {h, k, NULL}, .hook = k, .deadline_ms = sched_now_ms() + def->limits.wall_ms,
                      .idle = 1};
    probe.ctx.run = &probe;
    *(wixr_ctx **)lua_getextraspace(L) = &probe.ctx;
    k->idle_run = &probe;
    lua_sethook(L, limits_count_hook, LUA_MASKCOUNT, LIMITS_HOOK_EVERY);
    lua_pushcfunction(L, take_handler);
    lua_insert(L, -2);
    lua_pushlightuserdata(L, k);
    k->loading = 1; /* the top level defines the shared globals */
    st = lua_pcall(L, 2, 0, 0);
    k->loading = 0;
    k->idle_run = NULL;
    lua_sethook(L, NULL, 0, 0);
    *(wixr_ctx **)lua_getextraspace(L) = &k->ctx;
    if (st != LUA_OK) {
        /* an error object's __tostring is not called: no run's limits apply here */
        if (st == LUA_ERRMEM)
            snprintf(err, errlen, "%s: memory limit exceeded while loading", def->script);
        else if (lua_type(L, -1) == LUA_TSTRING)
            snprintf(err, errlen, "%s", lua_tostring(L, -1));
        else
            snprintf(err, errlen, "%s: the script raised a %s value while loading", def->script,
                     luaL_typename(L, -1));
        return -1;
    }
    return 0;
}

static void state_close(hook_rt *k)
{
    if (k->L) {
        sched_forget_state(k->ctx.host->sched, k->L);
        lua_close(k->L);
        k->L = NULL;
    }
    pool_destroy(&k->pool);
    memset(&k->pool, 0, sizeof k->pool);
}

hook_rt *hook_load(wixr_host *h, const wixr_config *cfg, const hook_def *def, char *err, size_t errlen)
{
    hook_rt *k = calloc(1, sizeof *k);
    if (!k) {
        snprintf(err, errlen, "%s: out of memory", def->where);
        return NULL;
    }
    luajson_charge = sandbox_charge; /* the encoder's walk counts against the run's budget */
    h->guard = &hooks_guard;         /* what wix.core asks of this host's runs */
    k->def = def;
    k->cfg = cfg;
    k->ctx.host = h;
    k->ctx.hook = k;
    const char *base = strrchr(def->script, '/');
    snprintf(k->name, sizeof k->name, "%s (%s)", def->event, base ? base + 1 : def->script);
    k->mem_limit = (size_t)def->limits.memory_mb * 1024 * 1024;
    k->refs = 1;
    /* The text is kept: a state rebuilt after a broken memory cap runs the
     * code that was loaded, whatever the file holds by then. */
    if (!(k->source = hook_read_script(def, &k->source_len, &k->stamp, err, errlen))) {
        free(k);
        return NULL;
    }
    if (state_open(k, err, errlen) < 0) {
        hook_free(k);
        return NULL;
    }
    return k;
}

/* A fresh state for k (no run of it in flight), after a run broke the cap. */
static void state_rebuild(hook_rt *k)
{
    char err[512];
    state_close(k);
    k->broken = 0;
    k->rebuilds++;
    k->last_rebuild_ms = sched_now_ms();
    k->rebuild_error[0] = '\0';
    if (state_open(k, err, sizeof err) < 0) {
        snprintf(k->rebuild_error, sizeof k->rebuild_error, "%s", err);
        state_close(k);
    }
}

int sandbox_idle_begin(lua_State *L)
{
    wixr_ctx *c = ctx_of(L);
    hook_rt *k = c ? c->hook : NULL;
    if (!k || k->idle_run)
        return 0;
    if (!k->idle_store && !(k->idle_store = malloc(sizeof *k->idle_store)))
        return 0;
    hook_run *r = k->idle_store;
    memset(r, 0, sizeof *r);
    r->ctx.host = k->ctx.host;
    r->ctx.hook = k;
    r->ctx.run = r;
    r->hook = k;
    r->finished = 1; /* not a run anything waits for: nothing may end it */
    r->idle = 1;
    r->started_ms = sched_now_ms();
    r->deadline_ms = r->started_ms + k->def->limits.wall_ms;
    k->idle_run = r;
    return 1;
}

void sandbox_idle_end(lua_State *L)
{
    wixr_ctx *c = ctx_of(L);
    if (c && c->hook && c->hook->idle_run) {
        env_drop_globals(c->hook->idle_run);
        c->hook->idle_run = NULL;
    }
}

void sandbox_fail_allocations(hook_rt *k, long long n)
{
    k->alloc_fail_at = n;
    k->allocs = 0;
}

void sandbox_run_abort(hook_run *r, const char *msg)
{
    finish(r, 0, NULL, msg);
}

char *hook_read_script(const hook_def *def, size_t *len, file_stamp *stamp, char *err, size_t errlen)
{
    FILE *f = fopen(def->script, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", def->script, strerror(errno));
        return NULL;
    }
    if (stamp) {
        struct stat st;
        if (fstat(fileno(f), &st) == 0)
            file_stamp_of(&st, stamp);
        else
            memset(stamp, 0, sizeof *stamp);
    }
    int too_large;
    char *text = buf_read_stream(f, 64 * 1024 * 1024, len, &too_large);
    fclose(f);
    if (!text)
        snprintf(err, errlen, "%s: %s", def->script, too_large ? "larger than 64 MB" : "cannot be read");
    return text;
}

void hook_free(hook_rt *k)
{
    if (!k || --k->refs > 0)
        return;
    state_close(k);
    free(k->source);
    free(k->idle_store);
    free(k);
}

/* ---- runs ---- */

static void active_remove(hook_run *r)
{
    wixr_host *h = r->ctx.host;
    if (r->prev_active)
        r->prev_active->next_active = r->next_active;
    else if (h->active_runs == r)
        h->active_runs = r->next_active;
    else
        return; /* (never started) */
    if (r->next_active)
        r->next_active->prev_active = r->prev_active;
    r->next_active = r->prev_active = NULL;
}

/* Ends the run (once): every task of the run stops, the outcome is recorded,
 * and done is called last (it may free r). */
static void finish_as(hook_run *r, enum run_outcome kind, const char *code, char *result_json, const char *error)
{
    if (r->finished) {
        free(result_json);
        return;
    }
    r->finished = 1;
    if (!r->task_id) { /* ended before it started: off the list of runs waiting for a rebuild */
        hook_run *prev = NULL;
        for (hook_run **p = &r->hook->deferred_head; *p; prev = *p, p = &(*p)->next_deferred) {
            if (*p == r) {
                *p = r->next_deferred;
                if (r->hook->deferred_tail == r)
                    r->hook->deferred_tail = prev;
                r->hook->ndeferred--;
                break;
            }
        }
    }
    active_remove(r);
    sched_kill_group(r->ctx.host->sched, r->group, "the run has ended");
    env_drop_globals(r); /* what the run set in globals ends with it */
    r->ok = kind == RUN_OK;
    r->outcome = kind;
    snprintf(r->error_code, sizeof r->error_code, "%s", code ? code : "");
    r->result_json = result_json;
    if (error) {
        if (asprintf(&r->error, "%s: %s", r->hook->name, error) < 0)
            r->error = NULL;
    }
    /* A state that broke its memory cap may hold anything (a half-built
     * table, globals grown by earlier runs): the next run gets a fresh one. */
    if (kind == RUN_MEMORY)
        r->hook->broken = 1;
    r->hook->runs--;
    if (r->hook->ndeferred && r->hook->runs == r->hook->ndeferred)
        arm_deferred(r->hook);
    r->done(r, r->done_arg);
}

static void finish(hook_run *r, int ok, char *result_json, const char *error)
{
    finish_as(r, ok ? RUN_OK : RUN_ERROR, NULL, result_json, error);
}

/* where: "script.lua:12" where the cap broke, or "" */
static void fail_memory(hook_run *r, const char *where, const char *what)
{
    char msg[400];
    snprintf(msg, sizeof msg, "%s%smemory limit exceeded (%ld MB)%s", where, where[0] ? ": " : "",
             r->hook->def->limits.memory_mb, what);
    finish_as(r, RUN_MEMORY, NULL, NULL, msg);
}

int sandbox_task_failed(hook_run *r, const task_outcome *o)
{
    if (r->finished)
        return 0;
    if (r->tripped) {
        finish_as(r, RUN_LIMIT, NULL, NULL, r->trip); /* a limit struck in a task the run started */
        return 1;
    }
    if (o->kind == OUTCOME_MEMORY) {
        fail_memory(r, o->where, " in a task started with wix.spawn");
        return 1;
    }
    return 0;
}

/* The handler's task ended: o says how, in C text (the scheduler made it
 * under protection; nothing here touches the hook's state). */
static void run_done(sched_task *t, lua_State *co, const task_outcome *o, void *arg)
{
    (void)t;
    (void)co;
    hook_run *r = arg;
    if (r->finished)
        return;
    if (o->kind == OUTCOME_MEMORY) {
        fail_memory(r, o->where, strstr(o->text, "encoding the result") ? " encoding the handler's result" : "");
        return;
    }
    if (r->tripped) {
        /* whatever the script raised after the limit struck, or it caught the
         * limit's error (coroutine.resume, pcall) and returned */
        finish_as(r, RUN_LIMIT, NULL, NULL, r->trip);
        return;
    }
    if (o->kind != OUTCOME_OK) {
        finish_as(r, o->permanent ? RUN_PERMANENT : RUN_ERROR, o->code, NULL, o->text);
        return;
    }
    if (!o->json) {
        char msg[600];
        snprintf(msg, sizeof msg, "the handler returned a value that is not data: %.500s", o->text);
        finish_as(r, RUN_ERROR, NULL, NULL, msg);
        return;
    }
    if (strlen(o->json) > HOOK_RESULT_MAX) {
        char msg[200];
        snprintf(msg, sizeof msg, "the handler returned a value that is not data: larger than %d MB as JSON",
                 HOOK_RESULT_MAX >> 20);
        finish_as(r, RUN_ERROR, NULL, NULL, msg);
        return;
    }
    if (sched_now_ms() > r->deadline_ms) {
        /* The handler returned, but past its deadline: the time went inside
         * one C call (a pattern, a sort), where neither the count hook nor
         * the watchdog could end it. Not an ok run. */
        char msg[200];
        snprintf(msg, sizeof msg, "wall time limit exceeded (%ld ms) inside one call", r->hook->def->limits.wall_ms);
        r->tripped = 1;
        snprintf(r->trip, sizeof r->trip, "%s", msg);
        finish_as(r, RUN_LIMIT, NULL, NULL, msg);
        return;
    }
    char *json = strdup(o->json);
    if (!json) {
        fail_memory(r, "", " keeping the handler's result");
        return;
    }
    /* Tasks the handler spawned and left running end with it (finish). */
    finish_as(r, RUN_OK, NULL, json, NULL);
}

/* Where a run's handler task stands now ("script.lua:12"), for a limit that
 * ends it while it waits (its thread is suspended: its stack can be read). */
static void run_position(hook_run *r, char *out, size_t n)
{
    out[0] = '\0';
    sched_task *t = r->task_id ? sched_task_by_id(r->ctx.host->sched, r->task_id) : NULL;
    if (!t)
        return;
    lua_State *co = sched_task_thread(t);
    lua_Debug ar;
    for (int level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0 && ar.source[0] == '@') {
            snprintf(out, n, "%.200s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
}

/* The watchdog: ends runs past their deadline, even while they wait on the
 * network (the count hook only sees time spent running Lua). One timer for
 * all runs, armed while any run is active. */
static void watchdog(void *arg)
{
    wixr_host *h = arg;
    h->watchdog_armed = 0;
    long long now = sched_now_ms(), next = 0;
    for (;;) {
        hook_run *late = NULL;
        for (hook_run *r = h->active_runs; r; r = r->next_active) {
            if (r->deadline_ms <= now) {
                late = r;
                break;
            }
        }
        if (!late)
            break;
        char msg[sizeof late->trip], where[220];
        run_position(late, where, sizeof where);
        snprintf(msg, sizeof msg, "%.210swall time limit exceeded (%ld ms)%s", where, late->hook->def->limits.wall_ms,
                 where[0] ? " while waiting" : "");
        late->tripped = 1;
        snprintf(late->trip, sizeof late->trip, "%s", msg);
        finish_as(late, RUN_LIMIT, NULL, NULL, msg);
    }
    for (hook_run *r = h->active_runs; r; r = r->next_active)
        if (!next || r->deadline_ms < next)
            next = r->deadline_ms;
    if (next) {
        h->watchdog_armed = 1;
        sched_timer_weak(h->sched, next, watchdog, h);
    }
}

static void arm_watchdog(wixr_host *h, long long at)
{
    if (h->watchdog_armed && h->watchdog_at <= at)
        return;
    h->watchdog_armed = 1;
    h->watchdog_at = at;
    sched_timer_weak(h->sched, at, watchdog, h);
}

/* ctx.log(level, message, fields): wix.core.log's line, its fields naming the hook and the event. */
static int ctx_log(lua_State *L)
{
    hook_run *r = sandbox_current_run(L);
    lua_settop(L, 3);
    if (r && lua_istable(L, 3) &&
        (lua_getfield(L, 3, "hook") != LUA_TNIL || lua_getfield(L, 3, "event_id") != LUA_TNIL)) {
        /* the run's own hook and event_id win: log a copy without the script's */
        lua_settop(L, 3);
        lua_newtable(L);
        lua_pushnil(L);
        while (lua_next(L, 3)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, 4);
        }
        lua_pushnil(L);
        lua_setfield(L, 4, "hook");
        lua_pushnil(L);
        lua_setfield(L, 4, "event_id");
        lua_replace(L, 3);
    }
    lua_settop(L, 3);
    const char *extra[] = {"hook", r ? r->hook->name : NULL, "event_id", r ? r->event_id : NULL, NULL};
    wix_log_write(L, 1, 2, 3, r ? extra : NULL);
    return 0;
}

/* ctx.emit(name, data): chains an event (run after this one; depth-limited, no cycles). */
static int ctx_emit(lua_State *L)
{
    hook_run *r = sandbox_current_run(L);
    const char *name = luaL_checkstring(L, 1);
    if (!r || r->idle)
        return luaL_error(L, "ctx.emit: not inside a hook run");
    int maxd = r->hook->cfg->max_chain_depth;
    if (r->depth + 1 > maxd)
        return luaL_error(L, "ctx.emit: chain depth limit reached (%d): %s>%s", maxd, r->chain, name);
    char pat[512];
    snprintf(pat, sizeof pat, ">%s>", name);
    char chain[1024];
    snprintf(chain, sizeof chain, ">%s>", r->chain);
    if (strstr(chain, pat))
        return luaL_error(L, "ctx.emit: cycle: %s>%s", r->chain, name);
    buf_t b;
    char err[256];
    buf_init(&b, 1024 * 1024);
    buf_adds(&b, "{\"event\":");
    json_quote(&b, name, strlen(name));
    buf_adds(&b, ",\"data\":");
    if (lua_isnoneornil(L, 2)) {
        buf_adds(&b, "{}");
    } else if (luajson_encode(L, 2, &b, 0, err, sizeof err) < 0) {
        buf_free(&b);
        return luajson_raise(L, "ctx.emit: ", err);
    }
    buf_addc(&b, '}');
    /* Over the cap, the run fails: a cut list would lose every emitted event. */
    if (b.failed) {
        buf_free(&b);
        return luaL_error(L, "ctx.emit: an emitted event is limited to %d MB", (int)(b.limit >> 20));
    }
    if (r->emitted.limit && r->emitted.len + b.len + 1 > r->emitted.limit) {
        buf_free(&b);
        return luaL_error(L, "ctx.emit: the events emitted by one run are limited to %d MB",
                          (int)(r->emitted.limit >> 20));
    }
    if (r->nemitted++)
        buf_addc(&r->emitted, ',');
    buf_add(&r->emitted, b.data, b.len);
    buf_free(&b);
    return 0;
}

/* Pushes a deep copy of the plain-data table at idx (options hold no cycles). */
static void copy_table(lua_State *L, int idx, int depth)
{
    luaL_checkstack(L, 4, "options");
    if (depth > 64)
        luaL_error(L, "options nested too deep");
    int narr = (int)lua_rawlen(L, idx), nrec = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        nrec++;
    }
    lua_createtable(L, narr, nrec - narr); /* sized once: no rehash while filling */
    int out = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pushvalue(L, -2);
        if (lua_type(L, -2) == LUA_TTABLE)
            copy_table(L, lua_gettop(L) - 1, depth + 1);
        else
            lua_pushvalue(L, -2);
        lua_rawset(L, out);
        lua_pop(L, 1);
    }
}

/* (run, event JSON as a light C string) -> handler, event, ctx for a run.
 * Runs in protected mode. */
static int push_call(lua_State *L)
{
    hook_run *r = lua_touserdata(L, 1);
    const char *event_json = lua_touserdata(L, 2);
    lua_settop(L, 0);
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->hook->handler_ref);
    char err[256];
    if (luajson_decode(L, event_json, strlen(event_json), 0, err, sizeof err) < 0)
        return luaL_error(L, "event data: %s", err);
    lua_createtable(L, 0, 8);
    /* ctx.options: a fresh copy each run of the table decoded once, so what a
     * run changes in it does not reach the next run. */
    if (r->hook->options_ref == LUA_NOREF) {
        const hook_def *d = r->hook->def;
        if (d->options_json) {
            if (luajson_decode(L, d->options_json, strlen(d->options_json), 0, err, sizeof err) < 0)
                return luaL_error(L, "options: %s", err);
        } else {
            lua_newtable(L);
        }
        r->hook->options_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, r->hook->options_ref);
    copy_table(L, lua_gettop(L), 0);
    lua_remove(L, -2);
    lua_setfield(L, -2, "options");
    lua_pushboolean(L, r->ctx.host->dry_run);
    lua_setfield(L, -2, "dry_run");
    lua_createtable(L, 0, 3);
    lua_pushstring(L, r->event_name);
    lua_setfield(L, -2, "name");
    if (r->event_id) {
        lua_pushstring(L, r->event_id);
        lua_setfield(L, -2, "id");
    }
    lua_pushinteger(L, r->depth);
    lua_setfield(L, -2, "depth");
    lua_setfield(L, -2, "event");
    lua_pushstring(L, r->hook->name);
    lua_setfield(L, -2, "hook");
    lua_pushcfunction(L, ctx_log);
    lua_setfield(L, -2, "log");
    lua_pushcfunction(L, ctx_emit);
    lua_setfield(L, -2, "emit");
    return 3;
}

hook_run *hook_start(hook_rt *k, const char *event_name, const char *event_id, const char *event_json, int depth,
                     const char *chain, hook_done_fn done, void *arg)
{
    wixr_host *h = k->ctx.host;
    hook_run *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->ctx.host = h;
    r->ctx.hook = k;
    r->ctx.run = r;
    r->hook = k;
    r->done = done;
    r->done_arg = arg;
    r->event_name = event_name;
    r->event_id = event_id;
    r->depth = depth;
    r->chain = chain ? chain : event_name;
    buf_init(&r->plan, 64 * 1024 * 1024);
    buf_init(&r->emitted, 16 * 1024 * 1024);
    r->started_ms = sched_now_ms();
    r->deadline_ms = r->started_ms + k->def->limits.wall_ms;
    r->group = sched_new_group(h->sched);
    k->runs++;
    if (k->broken || k->ndeferred) {
        /* The state is rebuilt first, from the scheduler's top level: here we
         * may be inside a callback of a task of that very state. */
        r->event_copy = strdup(event_json ? event_json : "{}");
        if (!r->event_copy) {
            finish(r, 0, NULL, "out of memory");
            return r;
        }
        if (k->deferred_tail)
            k->deferred_tail->next_deferred = r;
        else
            k->deferred_head = r;
        k->deferred_tail = r;
        k->ndeferred++;
        arm_deferred(k);
        return r;
    }
    start_run(r, event_json);
    return r;
}

/* Runs r (set up by hook_start) on its hook's state now. */
static void start_run(hook_run *r, const char *event_json)
{
    hook_rt *k = r->hook;
    wixr_host *h = k->ctx.host;
    lua_State *L = k->L;
    if (!L) {
        char msg[700];
        snprintf(msg, sizeof msg, "the hook's state could not be rebuilt after a broken memory limit: %s",
                 k->rebuild_error);
        finish(r, 0, NULL, msg);
        return;
    }
    /* Nothing is pushed into the state outside a protected call (it may be
     * at its memory cap): the event's text goes in as a C pointer. */
    if (!lua_checkstack(L, 4)) {
        fail_memory(r, "", " starting the run");
        return;
    }
    lua_pushcfunction(L, push_call);
    lua_pushlightuserdata(L, r);
    lua_pushlightuserdata(L, (void *)(event_json ? event_json : "{}"));
    int st = lua_pcall(L, 2, 3, 0);
    if (st != LUA_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "(error)");
        lua_pop(L, 1);
        if (st == LUA_ERRMEM)
            fail_memory(r, "", " starting the run");
        else
            finish(r, 0, NULL, msg);
        return;
    }
    sched_task *t = sched_spawn_in(h->sched, L, 2, r->group, SCHED_RESULT_JSON, run_done, r);
    if (!t) {
        fail_memory(r, "", " starting the run");
        return;
    }
    r->task_id = sched_task_id(t);
    lua_State *co = sched_task_thread(t);
    *(wixr_ctx **)lua_getextraspace(co) = &r->ctx;
    lua_sethook(co, limits_count_hook, LUA_MASKCOUNT, LIMITS_HOOK_EVERY);
    r->prev_active = NULL;
    r->next_active = h->active_runs;
    if (r->next_active)
        r->next_active->prev_active = r;
    h->active_runs = r;
    arm_watchdog(h, r->deadline_ms);
}

/* The deferred runs of k: once no run of the old state is in flight, the
 * state is rebuilt (when broken) and they start, in order. */
static void deferred_start(void *arg)
{
    hook_rt *k = arg;
    k->deferred_armed = 0;
    while (k->ndeferred) {
        if (k->broken) {
            if (k->runs > k->ndeferred)
                return; /* a run of the broken state is still going: its end arms this again */
            state_rebuild(k);
        }
        hook_run *r = k->deferred_head;
        k->deferred_head = r->next_deferred;
        if (!k->deferred_head)
            k->deferred_tail = NULL;
        k->ndeferred--;
        r->started_ms = sched_now_ms();
        r->deadline_ms = r->started_ms + k->def->limits.wall_ms;
        start_run(r, r->event_copy);
    }
}

static void arm_deferred(hook_rt *k)
{
    if (k->deferred_armed)
        return;
    k->deferred_armed = 1;
    if (sched_timer(k->ctx.host->sched, sched_now_ms(), deferred_start, k) < 0) {
        k->deferred_armed = 0;
        while (k->ndeferred) { /* cannot wait: they fail, as a start that could not allocate does */
            hook_run *r = k->deferred_head;
            k->deferred_head = r->next_deferred;
            if (!k->deferred_head)
                k->deferred_tail = NULL;
            k->ndeferred--;
            finish(r, 0, NULL, "out of memory");
        }
    }
}

void hook_run_free(hook_run *r)
{
    if (!r)
        return;
    free(r->event_copy);
    free(r->result_json);
    free(r->error);
    buf_free(&r->plan);
    buf_free(&r->emitted);
    free(r);
}
