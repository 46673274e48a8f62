/*
 * cmd_test.c -- `wixr test [PATH...]`: runs *_test.lua files with the
 * wixr.testing runner, on the in-process emulator (in memory; never Wix).
 *
 * A policy under test is loaded the way `wixr fire` and `wixr serve` load a
 * hook: hook_load builds its sandboxed state from a hook_def (made from the
 * test's arguments through the YAML reader, or taken from a configuration
 * file as it is), and each call of the policy is a hook_start run on the
 * scheduler, with the hook's limits, permissions and result checks. The test
 * file itself runs in the host's own state; each case is a task of its own
 * with a time limit (--timeout), so one that never ends fails alone.
 *
 * This file gives the runner (lua/wixr/testing.lua) the module wixr.testrt:
 *   load_text(name, yaml, event)           -> handle: the first hook of event in that configuration text
 *   load_config(path|nil, event, index)    -> handle: the index-th hook of event in a configuration file
 *   info(handle)                           -> {hook, event, script, options (JSON)}
 *   run(handle, event_json, name, id, options_json|nil, fake|nil)
 *                                          -> {ok, result (JSON), error, code, emitted, logs, wix_error}
 *   case(fn, timeout_ms)                   -> ok, error text, timed_out
 *   release()                              frees every loaded hook state
 *   dry(on)                                the host's dry-run switch (fake_wix checks replaced calls)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../app/app.h"
#include "../hooks/sandbox.h"
#include "../util/buf.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr test [PATH...] [--filter TEXT] [--timeout MS] [--quiet]\n"
    "\n"
    "Runs Lua test files: each PATH is a *_test.lua file or a folder searched\n"
    "recursively for them (default: the current folder). A test file declares cases\n"
    "with describe/test and checks them with eq, neq, truthy, falsy, has, raises or\n"
    "assert; policy(path, spec) and hook(event, n, {config = FILE}) load a hook script\n"
    "through the same sandbox, limits and permissions as `wixr fire`, and fake_wix()\n"
    "records the calls a policy makes (see README). The wix module runs on a fresh\n"
    "in-memory emulator, never on Wix.\n"
    "\n"
    "Options:\n"
    "  --filter TEXT   run only the cases whose name contains TEXT\n"
    "  --timeout MS    time limit of each case and of each file's top level (default 5000)\n"
    "  --quiet         print only failures and the totals\n"
    "  -h, --help      this help\n"
    "\n"
    "Prints each case, then 'N passed, N failed'. A test file that declares no case\n"
    "fails. Exit codes: 0 all passed, 1 a case failed, 2 usage (a PATH that is not\n"
    "a *_test.lua file or a folder), 3 no test file found.\n";

typedef struct files {
    char **v;
    int n, cap;
} files;

static int add_file(files *f, const char *p)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 32;
        char **nv = realloc(f->v, (size_t)f->cap * sizeof *nv);
        if (!nv)
            return -1;
        f->v = nv;
    }
    f->v[f->n] = strdup(p);
    return f->v[f->n++] ? 0 : -1;
}

static int is_test_file(const char *name)
{
    size_t n = strlen(name);
    return n > 9 && !strcmp(name + n - 9, "_test.lua");
}

static void walk(files *f, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode) && strcmp(e->d_name, "build") && strncmp(e->d_name, "build-", 6))
            walk(f, path);
        else if (S_ISREG(st.st_mode) && is_test_file(e->d_name))
            add_file(f, path);
    }
    closedir(d);
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- the state of a test run ---- */

typedef struct pol pol;
typedef struct pcall_st pcall_st;

typedef struct tcase {
    int running;
    int timed_out;
    unsigned long group;          /* the case task's group */
    unsigned long runner_id;      /* the task waiting for the case */
    long timeout_ms;
    long long deadline;
    pcall_st *inflight;           /* policy runs the case started and waits for */
} tcase;

typedef struct test_ctx {
    wixr_host *h;
    lua_State *T;                 /* a thread of the test state for calls into it from hook states */
    pol *pols;
    tcase cur;                    /* cases run one at a time */
    long timeout_ms;
} test_ctx;

struct pol {
    pol *next;
    test_ctx *tc;
    wixr_config cfg;
    int have_cfg;
    hook_def *def;                /* in cfg */
    hook_rt *k;                   /* NULL once released */
    char *orig_options;           /* the hook's options as configured (JSON), NULL for none */
    int fake_ref;                 /* the test state's fake_wix of the run going on, or LUA_NOREF */
    pcall_st *run;                /* the run going on (notes of its wrapper go there) */
};

struct pcall_st {
    pcall_st *next;               /* in the case's inflight list */
    pol *p;
    test_ctx *tc;
    hook_run *r;
    unsigned long task_id;        /* the waiting task */
    int in_start, finished, abandoned, in_case;
    int fake_ref;                 /* the run's fake_wix, released by the continuation */
    char *name, *id;              /* the event, alive as long as the run */
    /* the outcome, as C data (the continuation turns it into Lua values) */
    int ok;
    char *result_json, *error, *emitted_json, *wix_error_json;
    char code[64];
    buf_t logs;                   /* ctx.log calls: JSON items */
    int nlogs;
};

static const char key_tc = 0; /* registry key of the test_ctx (for the count hook) */

static test_ctx *tc_up(lua_State *L)
{
    return lua_touserdata(L, lua_upvalueindex(1));
}

/* ---- plain data from one Lua state to another ---- */

/* Pushes on `to` a copy of the value at idx of `from`: nil, booleans,
 * numbers, strings, light userdata (wix.null) and tables of them; any other
 * value becomes its type name. Tables deeper than 32 levels are cut. */
static void xcopy(lua_State *from, int idx, lua_State *to, int depth)
{
    idx = lua_absindex(from, idx);
    luaL_checkstack(to, 3, "copying a value");
    switch (lua_type(from, idx)) {
    case LUA_TNIL:
    case LUA_TNONE:
        lua_pushnil(to);
        break;
    case LUA_TBOOLEAN:
        lua_pushboolean(to, lua_toboolean(from, idx));
        break;
    case LUA_TNUMBER:
        if (lua_isinteger(from, idx))
            lua_pushinteger(to, lua_tointeger(from, idx));
        else
            lua_pushnumber(to, lua_tonumber(from, idx));
        break;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(from, idx, &n);
        lua_pushlstring(to, s, n);
        break;
    }
    case LUA_TLIGHTUSERDATA:
        lua_pushlightuserdata(to, lua_touserdata(from, idx));
        break;
    case LUA_TTABLE:
        lua_newtable(to);
        if (depth >= 32 || !lua_checkstack(from, 3))
            break;
        lua_pushnil(from);
        while (lua_next(from, idx)) {
            xcopy(from, -2, to, depth + 1);
            xcopy(from, -1, to, depth + 1);
            if (lua_isnil(to, -2))
                lua_pop(to, 2);
            else
                lua_rawset(to, -3);
            lua_pop(from, 1);
        }
        break;
    default:
        lua_pushstring(to, lua_typename(from, lua_type(from, idx)));
        break;
    }
}

/* ---- what runs inside a hook state under test ---- */

/* The recorder and the handler's wrapper, run once in each loaded hook state
 * (with its full globals, not the script's environment). Every call of
 * wix.packages.* and wix.instances.* asks the fake_wix of the run (rec) whether
 * to fail it or to answer it instead, and is recorded there; calls the wix
 * module makes inside one of them are not recorded again. The wrapper keeps
 * the run's ctx.log calls and the wix.Error that ends a run. */
static const char setup_lua[] =
    "local rec, note, dry = ...\n"
    "local wix = require 'wix'\n"
    "local core = require 'wix.core'\n"
    "local running, pack, unpack, pcall, xpcall, error, type = coroutine.running, table.pack, table.unpack,\n"
    "  pcall, xpcall, error, type\n"
    "local inside = setmetatable({}, { __mode = 'k' })\n"
    "-- a replaced call is still made under dry-run, which sends no write: what the wix module\n"
    "-- refuses (arguments) and what the hook may not do (allow, max_mutations) fail as they would\n"
    "local function checked(fn, ...)\n"
    "  dry(true)\n"
    "  local ok, e = pcall(fn, ...)\n"
    "  dry(false)\n"
    "  if ok then return end\n"
    "  if wix.is_error(e) then\n"
    "    if e.client_side then error(e, 0) end\n"
    "  elseif not tostring(e):find('dry run: a mutating call', 1, true) then\n"
    "    error(e, 0)\n"
    "  end\n"
    "end\n"
    "for _, group in ipairs { 'packages', 'instances' } do\n"
    "  local t, names = wix[group], {}\n"
    "  for name, fn in pairs(t) do if type(fn) == 'function' then names[#names + 1] = name end end\n"
    "  for _, name in ipairs(names) do\n"
    "    local fn, op = t[name], group .. '.' .. name\n"
    "    t[name] = function(...)\n"
    "      local co = running()\n"
    "      if inside[co] then return fn(...) end\n"
    "      local kind, v = rec(op, ...)\n"
    "      inside[co] = true\n"
    "      if kind ~= 'pass' then\n"
    "        local ok, e = pcall(checked, fn, ...)\n"
    "        inside[co] = nil\n"
    "        if not ok then error(e, 0) end\n"
    "        if kind == 'fail' then wix.raise(v) end\n"
    "        return v\n"
    "      end\n"
    "      local r = pack(pcall(fn, ...))\n"
    "      inside[co] = nil\n"
    "      if not r[1] then error(r[2], 0) end\n"
    "      return unpack(r, 2, r.n)\n"
    "    end\n"
    "  end\n"
    "end\n"
    "local function keep_error(e)\n"
    "  if wix.is_error(e) then\n"
    "    local ok, json = pcall(core.encode, e)\n"
    "    if ok then note('error', json) end\n"
    "  end\n"
    "  return e\n"
    "end\n"
    "return function(handler)\n"
    "  return function(event, ctx)\n"
    "    ctx.log = function(level, msg, fields)\n"
    "      local ok, json = pcall(core.encode, { level = level, msg = msg, fields = fields })\n"
    "      if not ok then error('ctx.log: ' .. tostring(json), 2) end\n"
    "      note('log', json)\n"
    "    end\n"
    "    local r = pack(xpcall(handler, keep_error, event, ctx))\n"
    "    if not r[1] then error(r[2], 0) end\n"
    "    return unpack(r, 2, r.n)\n"
    "  end\n"
    "end\n";

typedef struct rec_call {
    pol *p;
    lua_State *hook;              /* the hook thread: op, then the call's n arguments */
    int n;
} rec_call;

/* On the test state's thread, protected: fake._intercept(op, {args..., n = n}) -> kind, value. */
static int rec_in_test(lua_State *T)
{
    rec_call *rc = lua_touserdata(T, 1);
    lua_settop(T, 0);
    luaL_checkstack(T, 8, "fake_wix");
    lua_rawgeti(T, LUA_REGISTRYINDEX, rc->p->fake_ref);
    lua_getfield(T, -1, "_intercept");
    lua_pushstring(T, lua_tostring(rc->hook, 1));
    lua_createtable(T, rc->n, 1);
    for (int i = 1; i <= rc->n; i++) {
        xcopy(rc->hook, i + 1, T, 0);
        lua_rawseti(T, -2, i);
    }
    lua_pushinteger(T, rc->n);
    lua_setfield(T, -2, "n");
    lua_call(T, 2, 2);
    return 2;
}

/* rec(op, ...) in a hook state: records the call with the run's fake_wix and
 * returns "pass", "fail", fields or "value", v (what the fake says). */
static int hk_rec(lua_State *L)
{
    pol *p = lua_touserdata(L, lua_upvalueindex(1));
    if (p->fake_ref == LUA_NOREF) {
        lua_pushliteral(L, "pass");
        return 1;
    }
    lua_State *T = p->tc->T;
    rec_call rc = {p, L, lua_gettop(L) - 1};
    lua_settop(T, 0);
    lua_pushcfunction(T, rec_in_test);
    lua_pushlightuserdata(T, &rc);
    if (lua_pcall(T, 1, 2, 0) != LUA_OK) {
        const char *m = lua_tostring(T, -1);
        lua_pushfstring(L, "fake_wix: %s", m ? m : "an error that is not a string");
        lua_settop(T, 0);
        return lua_error(L);
    }
    /* into the hook's state: a memory error here ends the run, as any would */
    xcopy(T, -2, L, 0);
    xcopy(T, -1, L, 0);
    lua_settop(T, 0);
    return 2;
}

/* note(kind, json) in a hook state: keeps a ctx.log call or the wix.Error of the run. */
static int hk_note(lua_State *L)
{
    pol *p = lua_touserdata(L, lua_upvalueindex(1));
    const char *kind = luaL_checkstring(L, 1);
    size_t n;
    const char *json = luaL_checklstring(L, 2, &n);
    pcall_st *pc = p->run;
    if (!pc)
        return 0;
    if (!strcmp(kind, "log")) {
        if (pc->nlogs++)
            buf_addc(&pc->logs, ',');
        buf_add(&pc->logs, json, n);
    } else {
        free(pc->wix_error_json);
        pc->wix_error_json = strndup(json, n);
    }
    return 0;
}

/* dry(on): the host's dry-run switch, around the check of a replaced call. */
static int hk_dry(lua_State *L)
{
    test_ctx *tc = lua_touserdata(L, lua_upvalueindex(1));
    tc->h->dry_run = lua_toboolean(L, 1);
    return 0;
}

/* Runs setup_lua in k's state and puts the wrapper in place of the handler. */
static int setup_hook(lua_State *L)
{
    pol *p = lua_touserdata(L, 1);
    if (luaL_loadbufferx(L, setup_lua, sizeof setup_lua - 1, "=wixr test", "t") != LUA_OK)
        return lua_error(L);
    lua_pushlightuserdata(L, p);
    lua_pushcclosure(L, hk_rec, 1);
    lua_pushlightuserdata(L, p);
    lua_pushcclosure(L, hk_note, 1);
    lua_pushlightuserdata(L, p->tc);
    lua_pushcclosure(L, hk_dry, 1);
    lua_call(L, 3, 1);
    lua_rawgeti(L, LUA_REGISTRYINDEX, p->k->handler_ref);
    lua_call(L, 1, 1);
    lua_rawseti(L, LUA_REGISTRYINDEX, p->k->handler_ref);
    return 0;
}

/* Installs the recorder and the handler's wrapper in p's hook state. */
static int prepare(pol *p, char *err, size_t errlen)
{
    lua_State *K = p->k->L;
    lua_pushcfunction(K, setup_hook);
    lua_pushlightuserdata(K, p);
    if (lua_pcall(K, 1, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "%s: preparing the hook for tests: %s", p->def->where,
                 lua_type(K, -1) == LUA_TSTRING ? lua_tostring(K, -1) : "error");
        lua_pop(K, 1);
        return -1;
    }
    return 0;
}

/* After a run broke the memory cap, the next run gets a fresh state, as under
 * `wixr fire`; here it is loaded again, and prepared. */
static int reload(pol *p, char *err, size_t errlen)
{
    hook_free(p->k);
    p->k = hook_load(p->tc->h, &p->cfg, p->def, err, errlen);
    if (!p->k)
        return -1;
    if (prepare(p, err, errlen) < 0) {
        hook_free(p->k);
        p->k = NULL;
        return -1;
    }
    return 0;
}

static void pol_release(pol *p)
{
    if (p->k && p->k->runs == 0) {
        hook_free(p->k);
        p->k = NULL;
    }
    if (!p->k && p->have_cfg) {
        config_free(&p->cfg);
        p->have_cfg = 0;
        p->def = NULL;
    }
}

/* Loads the index-th hook (1-based) of event in p->cfg; pushes the handle or raises. */
static int load_hook(lua_State *L, test_ctx *tc, pol *p, const char *event, lua_Integer index)
{
    char err[1024];
    int idx[64];
    int n = config_hooks_for(&p->cfg, event, idx, 64);
    if (index < 1 || index > n) {
        char where[600];
        snprintf(where, sizeof where, "%s", p->cfg.path ? p->cfg.path : "the configuration");
        config_free(&p->cfg);
        free(p);
        if (n == 0)
            return luaL_error(L, "%s: no hook for event '%s'", where, event);
        return luaL_error(L, "%s: event '%s' has %d hook%s, not %d", where, event, n, n == 1 ? "" : "s",
                          (int)index);
    }
    p->def = &p->cfg.hooks[idx[index - 1]];
    p->k = hook_load(tc->h, &p->cfg, p->def, err, sizeof err);
    if (!p->k) {
        config_free(&p->cfg);
        free(p);
        return luaL_error(L, "%s", err);
    }
    p->tc = tc;
    p->have_cfg = 1;
    p->fake_ref = LUA_NOREF;
    if (prepare(p, err, sizeof err) < 0) {
        hook_free(p->k);
        config_free(&p->cfg);
        free(p);
        return luaL_error(L, "%s", err);
    }
    if (p->def->options_json && !(p->orig_options = strdup(p->def->options_json))) {
        pol_release(p);
        free(p);
        return luaL_error(L, "out of memory");
    }
    p->next = tc->pols;
    tc->pols = p;
    pol **u = lua_newuserdatauv(L, sizeof *u, 0);
    *u = p;
    luaL_setmetatable(L, "wixr.testrt.hook");
    return 1;
}

/* load_text(name, yaml, event): name stands for the text in messages; its
 * folder is where the script path starts. */
static int rt_load_text(lua_State *L)
{
    test_ctx *tc = tc_up(L);
    const char *name = luaL_checkstring(L, 1);
    size_t len;
    const char *text = luaL_checklstring(L, 2, &len);
    const char *event = luaL_checkstring(L, 3);
    pol *p = calloc(1, sizeof *p);
    if (!p)
        return luaL_error(L, "out of memory");
    char err[1024];
    if (config_load_string(&p->cfg, name, text, len, err, sizeof err) < 0) {
        free(p);
        return luaL_error(L, "%s", err);
    }
    return load_hook(L, tc, p, event, 1);
}

/* load_config(path|nil, event, index): path nil searches as every command does. */
static int rt_load_config(lua_State *L)
{
    test_ctx *tc = tc_up(L);
    const char *path = luaL_optstring(L, 1, NULL);
    const char *event = luaL_checkstring(L, 2);
    lua_Integer index = luaL_optinteger(L, 3, 1);
    pol *p = calloc(1, sizeof *p);
    if (!p)
        return luaL_error(L, "out of memory");
    char err[1024];
    if (config_load(&p->cfg, path, err, sizeof err) < 0) {
        free(p);
        return luaL_error(L, "%s", err);
    }
    if (!p->cfg.path) {
        config_free(&p->cfg);
        free(p);
        return luaL_error(L, "no configuration file found (give config = FILE)");
    }
    return load_hook(L, tc, p, event, index);
}

static pol *check_pol(lua_State *L, int idx)
{
    pol **u = luaL_checkudata(L, idx, "wixr.testrt.hook");
    if (!(*u)->k)
        luaL_error(L, "this policy was released (its test file has ended)");
    return *u;
}

static int rt_info(lua_State *L)
{
    pol *p = check_pol(L, 1);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, p->k->name);
    lua_setfield(L, -2, "hook");
    lua_pushstring(L, p->def->event);
    lua_setfield(L, -2, "event");
    lua_pushstring(L, p->def->script);
    lua_setfield(L, -2, "script");
    if (p->orig_options) {
        lua_pushstring(L, p->orig_options);
        lua_setfield(L, -2, "options");
    }
    return 1;
}

static void pc_free(void *arg)
{
    pcall_st *pc = arg;
    free(pc->name);
    free(pc->id);
    free(pc->result_json);
    free(pc->error);
    free(pc->emitted_json);
    free(pc->wix_error_json);
    buf_free(&pc->logs);
    free(pc);
}

static void inflight_remove(pcall_st *pc)
{
    for (pcall_st **q = &pc->tc->cur.inflight; *q; q = &(*q)->next) {
        if (*q == pc) {
            *q = pc->next;
            break;
        }
    }
}

/* The outcome as a table: {ok, result, error, code, emitted, logs, wix_error} (JSON text). */
static void push_outcome(lua_State *L, pcall_st *pc)
{
    lua_createtable(L, 0, 8);
    lua_pushboolean(L, pc->ok);
    lua_setfield(L, -2, "ok");
    if (pc->result_json) {
        lua_pushstring(L, pc->result_json);
        lua_setfield(L, -2, "result");
    }
    if (pc->error) {
        lua_pushstring(L, pc->error);
        lua_setfield(L, -2, "error");
    }
    if (pc->code[0]) {
        lua_pushstring(L, pc->code);
        lua_setfield(L, -2, "code");
    }
    lua_pushstring(L, pc->emitted_json ? pc->emitted_json : "[]");
    lua_setfield(L, -2, "emitted");
    lua_pushliteral(L, "[");
    lua_pushlstring(L, pc->logs.data ? pc->logs.data : "", pc->logs.len);
    lua_pushliteral(L, "]");
    lua_concat(L, 3);
    lua_setfield(L, -2, "logs");
    if (pc->wix_error_json && !pc->ok) {
        lua_pushstring(L, pc->wix_error_json);
        lua_setfield(L, -2, "wix_error");
    }
}

/* The run has ended (hook_done_fn): its outcome is kept as C data and the
 * waiting task is made ready; it never touches a Lua state. */
static void run_over(hook_run *r, void *arg)
{
    pcall_st *pc = arg;
    test_ctx *tc = pc->tc;
    pol *p = pc->p;
    pc->finished = 1;
    pc->r = NULL;
    tc->h->dry_run = 0; /* a limit may strike inside the check of a replaced call */
    if (p->run == pc)
        p->run = NULL;
    /* (the reference itself is dropped by the continuation: no Lua here) */
    pc->fake_ref = p->fake_ref;
    p->fake_ref = LUA_NOREF;
    pc->ok = r->ok;
    pc->result_json = r->result_json;
    r->result_json = NULL;
    pc->error = r->error;
    r->error = NULL;
    snprintf(pc->code, sizeof pc->code, "%s", r->error_code);
    if (asprintf(&pc->emitted_json, "[%.*s]", (int)r->emitted.len, r->emitted.data ? r->emitted.data : "") < 0)
        pc->emitted_json = NULL;
    hook_run_free(r);
    if (pc->in_start)
        return; /* hook_start has not returned yet: rt_run takes it from here */
    if (pc->in_case)
        inflight_remove(pc);
    if (pc->abandoned) {
        pc_free(pc);
        return;
    }
    tcase *c = &tc->cur;
    if (pc->in_case && c->running && sched_now_ms() >= c->deadline) {
        /* the case's time is up while its policy ran: the case fails as timed out */
        char msg[1200];
        snprintf(msg, sizeof msg, "timed out after %ld ms (while the policy %s ran)", c->timeout_ms,
                 p->k ? p->k->name : "");
        c->timed_out = 1;
        pc_free(pc);
        sched_kill_group(tc->h->sched, c->group, msg);
        return;
    }
    sched_task *t = sched_task_by_id(tc->h->sched, pc->task_id);
    if (!t) {
        pc_free(pc);
        return;
    }
    sched_set_payload(t, pc, pc_free);
    sched_ready(tc->h->sched, t, 0);
}

/* The continuation of run: the outcome (the task's payload) as a table. */
static int run_finish(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    test_ctx *tc = (test_ctx *)ctx;
    pcall_st *pc = sched_payload(tc->h->sched);
    if (!pc)
        return luaL_error(L, "the outcome of a policy run was lost");
    luaL_unref(L, LUA_REGISTRYINDEX, pc->fake_ref);
    pc->fake_ref = LUA_NOREF;
    push_outcome(L, pc);
    sched_drop_payload(tc->h->sched);
    return 1;
}

/* run(handle, event_json, event_name, event_id, options_json|nil, fake|nil) -> outcome table */
static int rt_run(lua_State *L)
{
    test_ctx *tc = tc_up(L);
    pol *p = check_pol(L, 1);
    const char *event_json = luaL_checkstring(L, 2);
    const char *name = luaL_checkstring(L, 3);
    const char *id = luaL_checkstring(L, 4);
    const char *options = luaL_optstring(L, 5, NULL);
    sched_task *me = sched_current(tc->h->sched);
    if (!me)
        return luaL_error(L, "a policy runs only inside a test");
    if (p->run)
        return luaL_error(L, "this policy is already running (one call at a time)");
    if (p->k->broken && p->k->runs == 0) {
        char err[1024];
        if (reload(p, err, sizeof err) < 0)
            return luaL_error(L, "the hook's state could not be rebuilt after a broken memory limit: %s", err);
    }
    int fake_ref = LUA_NOREF;
    if (!lua_isnoneornil(L, 6)) {
        lua_pushvalue(L, 6);
        fake_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    pcall_st *pc = calloc(1, sizeof *pc);
    if (!pc) {
        luaL_unref(L, LUA_REGISTRYINDEX, fake_ref);
        return luaL_error(L, "out of memory");
    }
    pc->p = p;
    pc->tc = tc;
    pc->fake_ref = LUA_NOREF;
    pc->name = strdup(name);
    pc->id = strdup(id);
    buf_init(&pc->logs, 16 * 1024 * 1024);
    char *opt = options ? strdup(options) : p->orig_options ? strdup(p->orig_options) : NULL;
    if (!pc->name || !pc->id || ((options || p->orig_options) && !opt)) {
        free(opt);
        pc_free(pc);
        luaL_unref(L, LUA_REGISTRYINDEX, fake_ref);
        return luaL_error(L, "out of memory");
    }
    /* ctx.options of this run: the hook's are decoded again from the new text */
    free(p->def->options_json);
    p->def->options_json = opt;
    if (p->k->options_ref != LUA_NOREF) {
        luaL_unref(p->k->L, LUA_REGISTRYINDEX, p->k->options_ref);
        p->k->options_ref = LUA_NOREF;
    }
    p->fake_ref = fake_ref;
    p->run = pc;
    pc->task_id = sched_task_id(me);
    pc->in_start = 1;
    hook_run *r = hook_start(p->k, pc->name, pc->id, event_json, 0, NULL, run_over, pc);
    pc->in_start = 0;
    if (!r) {
        p->run = NULL;
        if (p->fake_ref != LUA_NOREF) {
            luaL_unref(L, LUA_REGISTRYINDEX, p->fake_ref);
            p->fake_ref = LUA_NOREF;
        }
        pc_free(pc);
        return luaL_error(L, "out of memory starting the policy");
    }
    if (pc->finished) { /* refused before it started */
        luaL_unref(L, LUA_REGISTRYINDEX, pc->fake_ref);
        push_outcome(L, pc);
        pc_free(pc);
        return 1;
    }
    pc->r = r;
    tcase *c = &tc->cur;
    if (c->running) {
        pc->in_case = 1;
        pc->next = c->inflight;
        c->inflight = pc;
        /* the case's time limit is a wall limit of the run too: a policy
         * whose own limits are larger still ends with the case */
        if (r->deadline_ms > c->deadline)
            r->deadline_ms = c->deadline;
    }
    return lua_yieldk(L, 0, (lua_KContext)tc, run_finish);
}

/* ---- cases and their time limit ---- */

typedef struct case_end {
    int ok, timed_out;
    char *text;
} case_end;

static void case_end_free(void *arg)
{
    case_end *e = arg;
    free(e->text);
    free(e);
}

/* Ends the runs a case left in flight (they no longer report to anyone). */
static void abandon_runs(tcase *c, const char *why)
{
    while (c->inflight) {
        pcall_st *pc = c->inflight;
        c->inflight = pc->next;
        pc->in_case = 0;
        pc->abandoned = 1;
        if (pc->r)
            sandbox_run_abort(pc->r, why); /* run_over frees pc */
    }
}

static void case_done(sched_task *t, lua_State *co, const task_outcome *o, void *arg)
{
    (void)t;
    (void)co;
    test_ctx *tc = arg;
    tcase *c = &tc->cur;
    if (!c->running)
        return;
    c->running = 0;
    tc->h->dry_run = 0;
    abandon_runs(c, "the test case has ended");
    case_end *e = calloc(1, sizeof *e);
    sched_task *runner = sched_task_by_id(tc->h->sched, c->runner_id);
    if (!e || !runner) {
        free(e);
        return;
    }
    e->ok = o->kind == OUTCOME_OK;
    e->timed_out = c->timed_out;
    if (!e->ok)
        e->text = strdup(o->text);
    sched_set_payload(runner, e, case_end_free);
    sched_task_set_parked(runner, 0);
    sched_ready(tc->h->sched, runner, 0);
}

/* Test code running past the case's deadline: from then on every
 * instruction raises, so a pcall in the test cannot swallow it. */
static void case_hook(lua_State *L, lua_Debug *ar)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_tc);
    test_ctx *tc = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (!tc || !tc->cur.running || sched_now_ms() < tc->cur.deadline)
        return;
    tc->cur.timed_out = 1;
    lua_sethook(L, case_hook, LUA_MASKCOUNT, 1);
    /* where the test code was when its time ran out */
    if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0)
        lua_pushfstring(L, "%s:%d: timed out after %d ms", ar->short_src, ar->currentline, (int)tc->cur.timeout_ms);
    else
        lua_pushfstring(L, "timed out after %d ms", (int)tc->cur.timeout_ms);
    lua_error(L);
}

/* The case is waiting (on a policy run, wix.sleep, an API call) past its deadline. */
static void case_timer(void *arg)
{
    test_ctx *tc = arg;
    tcase *c = &tc->cur;
    if (!c->running || sched_now_ms() < c->deadline)
        return; /* another case's timer, or this one ended */
    char msg[1200];
    if (c->inflight && c->inflight->p->k)
        snprintf(msg, sizeof msg, "timed out after %ld ms (while the policy %s ran)", c->timeout_ms,
                 c->inflight->p->k->name);
    else
        snprintf(msg, sizeof msg, "timed out after %ld ms", c->timeout_ms);
    c->timed_out = 1;
    sched_kill_group(tc->h->sched, c->group, msg);
}

static int case_finish(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    test_ctx *tc = (test_ctx *)ctx;
    case_end *e = sched_payload(tc->h->sched);
    if (!e)
        return luaL_error(L, "the end of a test case was lost");
    lua_pushboolean(L, e->ok);
    if (e->text)
        lua_pushstring(L, e->text);
    else
        lua_pushnil(L);
    lua_pushboolean(L, e->timed_out);
    sched_drop_payload(tc->h->sched);
    return 3;
}

/* case(fn, timeout_ms?) -> ok, error text|nil, timed_out */
static int rt_case(lua_State *L)
{
    test_ctx *tc = tc_up(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_Integer ms = luaL_optinteger(L, 2, tc->timeout_ms);
    sched_t *s = tc->h->sched;
    sched_task *me = sched_current(s);
    if (!me)
        return luaL_error(L, "case: not inside a task");
    tcase *c = &tc->cur;
    if (c->running)
        return luaL_error(L, "case: a test case is already running");
    memset(c, 0, sizeof *c);
    c->timeout_ms = ms > 0 ? (long)ms : 1;
    c->deadline = sched_now_ms() + c->timeout_ms;
    c->runner_id = sched_task_id(me);
    c->group = sched_new_group(s);
    lua_settop(L, 1);
    sched_task *t = sched_spawn_in(s, L, 0, c->group, 0, case_done, tc);
    if (!t)
        return luaL_error(L, "out of memory starting a test case");
    c->running = 1;
    lua_sethook(sched_task_thread(t), case_hook, LUA_MASKCOUNT, 1000);
    sched_timer_weak(s, c->deadline, case_timer, tc);
    sched_task_set_parked(me, 1);
    return lua_yieldk(L, 0, (lua_KContext)tc, case_finish);
}

static int rt_release(lua_State *L)
{
    test_ctx *tc = tc_up(L);
    for (pol *p = tc->pols; p; p = p->next)
        pol_release(p);
    return 0;
}

static int open_testrt(lua_State *L, test_ctx *tc)
{
    static const luaL_Reg fns[] = {{"load_text", rt_load_text}, {"load_config", rt_load_config},
                                   {"info", rt_info},           {"run", rt_run},
                                   {"case", rt_case},           {"release", rt_release},
                                   {"dry", hk_dry},
                                   {NULL, NULL}};
    luaL_newmetatable(L, "wixr.testrt.hook");
    lua_pop(L, 1);
    lua_pushlightuserdata(L, tc);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &key_tc);
    tc->T = lua_newthread(L);
    luaL_ref(L, LUA_REGISTRYINDEX);
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
    lua_newtable(L);
    lua_pushlightuserdata(L, tc);
    luaL_setfuncs(L, fns, 1);
    lua_setfield(L, -2, "wixr.testrt");
    lua_pop(L, 1);
    return 0;
}

typedef struct run_end {
    int finished, failed, error;
} run_end;

static void done(sched_task *t, lua_State *co, const task_outcome *o, void *arg)
{
    (void)t;
    (void)co;
    run_end *e = arg;
    e->finished = 1;
    if (o->kind != OUTCOME_OK) {
        fprintf(stderr, "wixr test: %s\n", o->text);
        e->error = 1;
        return;
    }
    e->failed = o->json ? atoi(o->json) : 1;
}

int cmd_test(int argc, char **argv)
{
    files f = {0};
    const char *filter = NULL;
    int quiet = 0, npaths = 0;
    long long timeout = 5000;
    const cli_opt opts[] = {
        {"--filter", OPT_VALUE, &filter, 0, 0, NULL},
        {"--timeout", OPT_NUMBER, &timeout, 1, 3600000, NULL},
        {"--quiet", OPT_FLAG, &quiet, 1, 0, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const char **paths = calloc((size_t)argc, sizeof *paths);
    if (!paths)
        return EXIT_WORK_FAILED;
    const cli_command cmd = {"wixr test", usage, opts, paths, argc, "PATH"};
    int prc = cli_parse(&cmd, argc, argv, &npaths);
    if (prc != CLI_GO) {
        free(paths);
        return prc;
    }
    for (int i = 0; i < npaths; i++) {
        struct stat st;
        const char *base = strrchr(paths[i], '/');
        base = base ? base + 1 : paths[i];
        if (stat(paths[i], &st) < 0 || (!S_ISDIR(st.st_mode) && !(S_ISREG(st.st_mode) && is_test_file(base)))) {
            int rc = stat(paths[i], &st) < 0
                         ? cli_usage_error(&cmd, "%s: no such file or folder", paths[i])
                         : cli_usage_error(&cmd, "%s: not a test file (a *_test.lua file or a folder)", paths[i]);
            free(paths);
            for (int j = 0; j < f.n; j++)
                free(f.v[j]);
            free(f.v);
            return rc;
        }
        if (S_ISDIR(st.st_mode)) {
            size_t before = (size_t)f.n;
            walk(&f, paths[i]);
            qsort(f.v + before, (size_t)f.n - before, sizeof *f.v, cmp);
        } else {
            add_file(&f, paths[i]);
        }
    }
    free(paths);
    int had_paths = npaths > 0;
    if (!had_paths) {
        walk(&f, ".");
        qsort(f.v, (size_t)f.n, sizeof *f.v, cmp);
    }
    if (f.n == 0) {
        fprintf(stderr, "wixr test: no *_test.lua file found\n");
        free(f.v);
        return EXIT_BAD_INPUT;
    }
    /* Tests never reach Wix: the in-process emulator, in memory, no rate limit. */
    char err[1024];
    wixr_config cfg;
    int rc = EXIT_WORK_FAILED;
    if (config_load(&cfg, "/dev/null", err, sizeof err) < 0) {
        fprintf(stderr, "wixr test: %s\n", err);
        goto out;
    }
    cfg.wix.transport = TRANSPORT_SANDBOX;
    free(cfg.wix.sandbox_db);
    cfg.wix.sandbox_db = strdup(":memory:");
    cfg.wix.rate_limit = 0;
    wixr_host *h = host_new(&cfg, 0, err, sizeof err);
    if (!h) {
        fprintf(stderr, "wixr test: %s\n", err);
        config_free(&cfg);
        goto out;
    }
    test_ctx tc = {.h = h, .timeout_ms = (long)timeout};
    lua_State *L = h->L;
    run_end o = {0};
    open_testrt(L, &tc);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "wixr.testing");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "wixr test: %s\n", lua_tostring(L, -1));
    } else {
        lua_getfield(L, -1, "run");
        lua_remove(L, -2);
        lua_createtable(L, f.n, 0);
        for (int i = 0; i < f.n; i++) {
            lua_pushstring(L, f.v[i]);
            lua_rawseti(L, -2, i + 1);
        }
        lua_createtable(L, 0, 3);
        if (filter) {
            lua_pushstring(L, filter);
            lua_setfield(L, -2, "filter");
        }
        lua_pushboolean(L, !quiet);
        lua_setfield(L, -2, "verbose");
        lua_pushinteger(L, (lua_Integer)timeout);
        lua_setfield(L, -2, "timeout");
        if (sched_spawn(h->sched, L, 2, done, &o))
            sched_run(h->sched);
        if (!o.finished)
            fprintf(stderr, "wixr test: a test is waiting for something that will never happen\n");
        else if (!o.error)
            rc = o.failed ? EXIT_WORK_FAILED : 0;
    }
    /* hook states go before the scheduler they registered with */
    for (pol *p = tc.pols; p; p = p->next) {
        if (p->k)
            p->k->runs = 0;
        pol_release(p);
    }
    while (tc.pols) {
        pol *p = tc.pols;
        tc.pols = p->next;
        free(p->orig_options);
        free(p);
    }
    host_free(h);
    config_free(&cfg);
out:
    for (int i = 0; i < f.n; i++)
        free(f.v[i]);
    free(f.v);
    return rc;
}
