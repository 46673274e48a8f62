/*
 * sandbox.c -- hook scripts: their own state, an allow-listed environment,
 * and the limits of each run (see sandbox.h).
 */
#define _GNU_SOURCE
#include "../runtime/faults.h"
#include "sandbox.h"

#include <ctype.h>
#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lualib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../json/json.h"
#include "../json/luajson.h"
#include "../wix/wix_core.h"
#include "guard.h"

#define HOOK_EVERY 1000       /* instructions between limit checks */

static void finish(hook_run *r, int ok, char *result_json, const char *error);
static void start_run(hook_run *r, const char *event_json);
static void arm_deferred(hook_rt *k);
enum { GLOBALS_NONE, GLOBALS_RUN, GLOBALS_SHARED }; /* see push_globals */
static int push_globals(lua_State *L, hook_rt *k, int make);
static void env_route(hook_rt *k, lua_State *L);
static int is_env(lua_State *L, int idx);

/* ---- memory: an allocator with an exact cap per hook state ---- */

static void *hook_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    hook_rt *k = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        pool_free(&k->pool, ptr, old);
        k->mem -= old;
        return NULL;
    }
    if (nsize > old && k->mem + (nsize - old) > k->mem_limit)
        return NULL; /* Lua raises "not enough memory" in the running code */
    if (k->alloc_fail_at && nsize > old && ++k->allocs >= k->alloc_fail_at)
        return NULL; /* tests: an allocation point refused, as at the cap */
    void *p = pool_realloc(&k->pool, ptr, old, nsize);
    if (!p)
        return NULL;
    k->mem = k->mem - old + nsize;
    if (k->mem > k->mem_peak)
        k->mem_peak = k->mem;
    return p;
}

/* ---- instructions and wall time ---- */

hook_run *sandbox_current_run(lua_State *L)
{
    wixr_ctx *c = ctx_of(L);
    if (!c || !c->hook)
        return NULL;
    /* The run is the one whose task the scheduler is resuming: a coroutine
     * made in another run, or while the script loaded, counts for this one. */
    sched_task *t = sched_current(c->host->sched);
    if (t) {
        hook_run *r = ctx_of(sched_task_thread(t))->run;
        return r && r->hook == c->hook ? r : NULL;
    }
    /* No task runs: the script loading, or an error value being made text.
     * Script code then still has a run whose limits it answers to (the
     * coroutines it makes carry the hook's context, not a run's). */
    return c->run ? c->run : c->hook->idle_run;
}

/* Counts n instructions (or work of a C call, see sandbox_charge) against the
 * run's budget and checks its deadline; 1 when a limit has struck. */
static int over_limit(hook_run *r, long long n)
{
    if (!r->tripped) {
        r->instructions += n;
        if (r->instructions > r->hook->def->limits.instructions)
            snprintf(r->trip, sizeof r->trip, "instruction limit exceeded (%lld)", r->hook->def->limits.instructions);
        else if (sched_now_ms() > r->deadline_ms)
            snprintf(r->trip, sizeof r->trip, "wall time limit exceeded (%ld ms)", r->hook->def->limits.wall_ms);
        else
            return 0;
        r->tripped = 1;
    }
    return 1;
}

static void limit_hook(lua_State *L, lua_Debug *ar)
{
    sched_progress++; /* a run in Lua is progress (a worker stuck in C makes none) */
    hook_run *r = sandbox_current_run(L);
    if (!r || !over_limit(r, HOOK_EVERY))
        return;
    /* From now on every instruction raises: a pcall in the script cannot swallow it. */
    lua_sethook(L, limit_hook, LUA_MASKCOUNT, 1);
    if (!r->trip_placed) {
        /* the message says where the limit struck; later raises repeat it */
        r->trip_placed = 1;
        if (lua_getinfo(L, "Sl", ar) && ar->currentline > 0) {
            char msg[sizeof r->trip];
            snprintf(msg, sizeof msg, "%.200s:%d: %.90s", ar->short_src, ar->currentline, r->trip);
            snprintf(r->trip, sizeof r->trip, "%s", msg);
        }
    }
    lua_pushstring(L, r->trip);
    lua_error(L);
}

/* The count hook never runs inside a C function: a library call that loops
 * in C (over a range of a table, a repetition) escapes both limits. Such a
 * call charges its work to the instruction budget before it starts, and does
 * not start past the deadline; once a limit has struck it raises, as the
 * hook does. */
void sandbox_charge(lua_State *L, double units)
{
    hook_run *r = sandbox_current_run(L);
    if (!r || !over_limit(r, units < 0 ? 0 : units > 1e15 ? (long long)1e15 : (long long)units))
        return;
    lua_sethook(L, limit_hook, LUA_MASKCOUNT, 1);
    lua_Debug ar;
    if (!r->trip_placed) {
        r->trip_placed = 1;
        /* the nearest script line: the charge may come from C called by C
         * (the JSON encoder inside its protected call) */
        for (int level = 1; lua_getstack(L, level, &ar); level++) {
            if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
                char msg[sizeof r->trip];
                snprintf(msg, sizeof msg, "%.200s:%d: %.90s", ar.short_src, ar.currentline, r->trip);
                snprintf(r->trip, sizeof r->trip, "%s", msg);
                break;
            }
        }
    }
    lua_pushstring(L, r->trip);
    lua_error(L);
}

void sandbox_adopt_thread(lua_State *parent, lua_State *child)
{
    wixr_ctx *c = ctx_of(parent);
    if (c && c->hook) {
        /* The task works for the run going on, wherever it was started from:
         * a coroutine of the script carries the hook's context (no run), and
         * a task left with it would run outside every limit and permission. */
        hook_run *r = sandbox_current_run(parent);
        *(wixr_ctx **)lua_getextraspace(child) = r ? &r->ctx : c;
        lua_sethook(child, limit_hook, LUA_MASKCOUNT, r && r->tripped ? 1 : HOOK_EVERY);
        return;
    }
    *(wixr_ctx **)lua_getextraspace(child) = c;
    lua_Hook h = lua_gethook(parent);
    if (h)
        lua_sethook(child, h, lua_gethookmask(parent), lua_gethookcount(parent));
}

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

/* ---- the environment ---- */

static int sbx_print(lua_State *L)
{
    hook_rt *k = ctx_of(L)->hook;
    int n = lua_gettop(L);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (int i = 1; i <= n; i++) {
        if (i > 1)
            luaL_addchar(&b, '\t');
        luaL_tolstring(L, i, NULL);
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    wixr_ctx *c = ctx_of(L);
    if (c->host && c->host->print_as_log) {
        /* Under wixr serve every line of the stream is JSON: the print is one, naming its run. */
        hook_run *r = c->run;
        const char *extra[] = {"source", "print", "hook", k ? k->name : "script", "event_id",
                               r ? r->event_id : NULL, NULL};
        lua_pushliteral(L, "info");
        lua_insert(L, -2);
        lua_pushnil(L);
        int top = lua_gettop(L);
        wix_log_write(L, top - 2, top - 1, top, extra);
        return 0;
    }
    /* One print, one line: control characters are written escaped, so what a
     * script prints cannot pass for a log line of its own (wixr serve writes
     * JSON lines to the same stream). */
    size_t len, full;
    const char *s = lua_tolstring(L, -1, &full);
    len = full;
    if (len > WIX_LOG_MSG_MAX) { /* cut at a character's start, as log lines are */
        len = WIX_LOG_MSG_MAX;
        while (len > 0 && ((unsigned char)s[len] & 0xC0) == 0x80)
            len--;
    }
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n') {
            luaL_addstring(&b, "\\n");
        } else if (ch == '\r') {
            luaL_addstring(&b, "\\r");
        } else if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            char e[8];
            snprintf(e, sizeof e, "\\x%02x", ch);
            luaL_addstring(&b, e);
        } else {
            luaL_addchar(&b, (char)ch);
        }
    }
    if (len < full) {
        lua_pushfstring(L, " [... %I bytes cut]", (lua_Integer)(full - len));
        luaL_addvalue(&b);
    }
    luaL_pushresult(&b);
    fprintf(stderr, "[%s] %s\n", k ? k->name : "script", lua_tostring(L, -1));
    return 0;
}

static int sbx_collectgarbage(lua_State *L)
{
    const char *opt = luaL_optstring(L, 1, "count");
    if (strcmp(opt, "count") != 0)
        return luaL_error(L, "collectgarbage: only \"count\" is available to scripts");
    lua_pushnumber(L, (lua_Number)lua_gc(L, LUA_GCCOUNT, 0) + lua_gc(L, LUA_GCCOUNTB, 0) / 1024.0);
    return 1;
}

/* load(chunk [, name [, mode [, env]]]): text only; env defaults to the script's. */
static int sbx_load(lua_State *L)
{
    size_t len;
    const char *s = lua_tolstring(L, 1, &len);
    const char *name = luaL_optstring(L, 2, s ? s : "=(load)");
    const char *mode = luaL_optstring(L, 3, "t");
    if (strcmp(mode, "t") != 0)
        return luaL_error(L, "load: only text chunks (mode \"t\") are allowed");
    if (!s)
        return luaL_error(L, "load: only strings can be loaded by scripts");
    int has_env = !lua_isnone(L, 4);
    if (luaL_loadbufferx(L, s, len, name, "t") != LUA_OK) {
        lua_pushnil(L);
        lua_insert(L, -2);
        return 2;
    }
    lua_pushvalue(L, has_env ? 4 : lua_upvalueindex(1));
    if (!lua_setupvalue(L, -2, 1))
        lua_pop(L, 1);
    return 1;
}

static int sbx_cocreate(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TFUNCTION);
    lua_State *co = lua_newthread(L);
    /* The hook's own context (it outlives every run): limits and permissions
     * are looked up from the running task when the coroutine runs. */
    hook_rt *k = ctx_of(L)->hook;
    *(wixr_ctx **)lua_getextraspace(co) = &k->ctx;
    lua_sethook(co, limit_hook, LUA_MASKCOUNT, HOOK_EVERY);
    lua_pushvalue(L, 1);
    lua_xmove(L, co, 1);
    return 1;
}

/* cjson for hooks: lua-cjson's encode and decode, through wixr's own
 * encoder (luajson) with its caps, and no setters. lua-cjson itself is not
 * reachable from a hook: its encode depth is settable (a deep table then
 * recurses in C as deep as Lua's stack allows), its buffers grow outside the hook's
 * memory cap, and past 2 GiB its size arithmetic loops. Here the text is
 * capped by the hook's free memory (over it, the run ends as a memory
 * failure), and so is the document a text to decode parses into, nesting by
 * LUAJSON_MAX_DEPTH, the walk is charged per value and
 * the text per byte to the instruction budget. */
#define CJSON_BYTES_PER_UNIT 16   /* bytes encoded or decoded per instruction charged */

static int push_text(lua_State *L)
{
    buf_t *b = lua_touserdata(L, 1);
    lua_pushlstring(L, b->len ? b->data : "", b->len);
    return 1;
}

static int cjson_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    lua_settop(L, 1);
    hook_rt *k = ctx_of(L)->hook;
    size_t room = k && k->mem_limit > k->mem ? k->mem_limit - k->mem : 0;
    sandbox_charge(L, 0);
    buf_t b;
    buf_init(&b, room ? room : 1);
    char err[300];
    if (luajson_encode(L, 1, &b, 0, err, sizeof err) < 0) {
        int too_large = b.failed;
        buf_free(&b);
        if (too_large) /* the text would not fit in the hook's memory */
            return luajson_raise(L, "", LUAJSON_NO_MEMORY);
        return luajson_raise(L, "cjson.encode: ", err);
    }
    /* the string is made in a protected call: a memory error there frees b first */
    lua_pushcfunction(L, push_text);
    lua_pushlightuserdata(L, &b);
    int st = lua_pcall(L, 1, 1, 0);
    buf_free(&b);
    if (st != LUA_OK)
        return lua_error(L);
    sandbox_charge(L, (double)lua_rawlen(L, -1) / CJSON_BYTES_PER_UNIT);
    return 1;
}

int sandbox_json_fits(lua_State *L, const char *s, size_t len)
{
    wixr_ctx *c = ctx_of(L);
    hook_rt *k = c ? c->hook : NULL;
    if (!k)
        return 1;
    double nodes = 1;
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (in_string) {
            if (ch == '\\')
                i++;
            else if (ch == '"')
                in_string = 0;
        } else if (ch == '"') {
            in_string = 1;
        } else if (ch == ',' || ch == '[' || ch == '{') {
            nodes++;
        }
    }
    size_t room = k->mem_limit > k->mem ? k->mem_limit - k->mem : 0;
    return nodes * (double)sizeof(json_value) + (double)len <= (double)room;
}

static int cjson_decode(lua_State *L)
{
    size_t len;
    const char *s = luaL_checklstring(L, 1, &len);
    sandbox_charge(L, (double)len / CJSON_BYTES_PER_UNIT);
    if (!sandbox_json_fits(L, s, len))
        return luajson_raise(L, "", LUAJSON_NO_MEMORY);
    char err[300];
    if (luajson_decode(L, s, len, 0, err, sizeof err) < 0)
        return luajson_raise(L, "cjson.decode: ", err);
    return 1;
}

static int cjson_open(lua_State *L)
{
    static const luaL_Reg fns[] = {{"encode", cjson_encode}, {"decode", cjson_decode}, {NULL, NULL}};
    luaL_newlib(L, fns);
    lua_pushlightuserdata(L, NULL); /* as wix.null */
    lua_setfield(L, -2, "null");
    return 1;
}

/* require(name): "wix" (this state's module), or a .lua file on the
 * configured runtime.lua_paths, loaded as text into the script's env. */
static int sbx_require(lua_State *L)
{
    const char *name = luaL_checkstring(L, 1);
    lua_getfield(L, lua_upvalueindex(2), name); /* the script's own cache */
    if (!lua_isnil(L, -1))
        return 1;
    lua_pop(L, 1);
    if (!strcmp(name, "cjson")) {
        cjson_open(L);
    } else if (faults_enabled && !strcmp(name, "wixr.fault")) {
        faults_open(L); /* (the isolation tests only: faults.h) */
    } else if (!strcmp(name, "wix")) {
        lua_getglobal(L, "require"); /* the real one, in the hidden _G */
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
    } else {
        hook_rt *k = ctx_of(L)->hook;
        const wixr_config *cfg = k->cfg;
        if (strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.") != strlen(name))
            return luaL_error(L, "require: bad module name '%s'", name);
        char rel[512], path[4096];
        snprintf(rel, sizeof rel, "%s", name);
        for (char *p = rel; *p; p++)
            if (*p == '.')
                *p = '/';
        int found = 0;
        for (int i = 0; i < cfg->nlua_paths && !found; i++) {
            snprintf(path, sizeof path, "%s/%s.lua", cfg->lua_paths[i], rel);
            FILE *f = fopen(path, "r");
            if (f) {
                fclose(f);
                found = 1;
            }
        }
        if (!found)
            return luaL_error(L, "require: module '%s' not found (scripts may require \"wix\" and modules on "
                                 "runtime.lua_paths)", name);
        if (luaL_loadfilex(L, path, "t") != LUA_OK)
            return lua_error(L);
        lua_pushvalue(L, lua_upvalueindex(1));
        lua_setupvalue(L, -2, 1);
        lua_pushstring(L, name);
        lua_call(L, 1, 1);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_pushboolean(L, 1);
        }
    }
    lua_pushvalue(L, -1);
    lua_setfield(L, lua_upvalueindex(2), name);
    return 1;
}

/* Copies the listed fields of table src (at -1) into a new table set as env[field]. */
static void copy_lib(lua_State *L, int env, const char *lib, const char *const *names)
{
    lua_getglobal(L, lib);
    lua_createtable(L, 0, 16);
    for (const char *const *n = names; *n; n++) {
        lua_getfield(L, -2, *n);
        lua_setfield(L, -2, *n);
    }
    lua_setfield(L, env, lib);
    lua_pop(L, 1);
}

static const char *const base_names[] = {"assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber",
                                         "tostring", "type", "xpcall", "rawequal", "rawget", "rawset", "rawlen",
                                         "setmetatable", "getmetatable", "_VERSION", NULL};
static const char *const string_names[] = {"byte", "char", "find", "format", "gmatch", "gsub", "len", "lower",
                                           "match", "rep", "reverse", "sub", "upper", "pack", "packsize", "unpack",
                                           NULL};
static const char *const table_names[] = {"concat", "insert", "move", "pack", "remove", "sort", "unpack", NULL};
static const char *const math_names[] = {"abs", "ceil", "cos", "deg", "exp", "floor", "fmod", "huge", "log",
                                         "max", "maxinteger", "min", "mininteger", "modf", "pi", "rad", "random",
                                         "randomseed", "sin", "sqrt", "tan", "tointeger", "type", "ult", "atan",
                                         NULL};
static const char *const utf8_names[] = {"char", "charpattern", "codes", "codepoint", "len", "offset", NULL};
static const char *const coroutine_names[] = {"resume", "yield", "status", "isyieldable", "running", "close", NULL};
static const char *const os_names[] = {"time", "clock", "date", "difftime", NULL};

/* A coroutine the script made (coroutine.create/wrap) carries the hook's own
 * context; the scheduler's threads (a run, its wix.spawn tasks) carry their
 * run's. A script resumes, closes and yields only its own coroutines:
 * resuming a task parked on an API call would hand it made-up values for the
 * answer, and a yield from the run's thread would park it where nothing
 * wakes it. */
static int script_coroutine(lua_State *L, lua_State *co)
{
    hook_rt *k = ctx_of(L)->hook;
    return k && co != k->L && ctx_of(co) == &k->ctx;
}

static const char not_own[] = "a coroutine wixr runs (only those made with coroutine.create or wrap)";

/* coroutine.resume: as Lua's, but a limit tripped inside the coroutine ends
 * the run instead of coming back as (false, message). */
static int sbx_coresume(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    if (!script_coroutine(L, co)) {
        lua_pushboolean(L, 0);
        lua_pushfstring(L, "cannot resume %s", not_own);
        return 2;
    }
    int narg = lua_gettop(L) - 1, nres;
    if (!lua_checkstack(co, narg))
        return luaL_error(L, "too many arguments to resume");
    int st = lua_status(co);
    if (st != LUA_YIELD && (st != LUA_OK || lua_gettop(co) == 0)) {
        lua_pushboolean(L, 0);
        lua_pushliteral(L, "cannot resume dead coroutine");
        return 2;
    }
    lua_xmove(L, co, narg);
    st = lua_resume(co, L, narg, &nres);
    hook_run *r = sandbox_current_run(L);
    if (r && r->tripped) {
        lua_pushstring(L, r->trip);
        return lua_error(L);
    }
    if (st == LUA_OK || st == LUA_YIELD) {
        if (!lua_checkstack(L, nres + 1))
            return luaL_error(L, "too many results to resume");
        lua_pushboolean(L, 1);
        lua_xmove(co, L, nres);
        return nres + 1;
    }
    lua_pushboolean(L, 0);
    lua_xmove(co, L, 1);
    return 2;
}

static int sbx_coclose(lua_State *L)
{
    lua_State *co = lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    if (!script_coroutine(L, co))
        return luaL_error(L, "cannot close %s", not_own);
    lua_pushvalue(L, lua_upvalueindex(1)); /* Lua's coroutine.close */
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
    return lua_gettop(L);
}

static int sbx_coyield(lua_State *L)
{
    if (!script_coroutine(L, L))
        return luaL_error(L, "attempt to yield from outside a coroutine");
    return lua_yield(L, lua_gettop(L));
}

static int sbx_coisyieldable(lua_State *L)
{
    lua_State *co = lua_isnone(L, 1) ? L : lua_tothread(L, 1);
    luaL_argexpected(L, co, 1, "coroutine");
    lua_pushboolean(L, script_coroutine(L, co) && lua_isyieldable(co));
    return 1;
}

/* xpcall: as Lua's, but the script's message handler is not called once a
 * limit has struck. Lua calls a message handler where the error is raised:
 * for the limit's error that is inside the count hook, where hooks are off,
 * so a handler that loops would run out of reach of every limit. */
static int xpcall_handler(lua_State *L)
{
    hook_run *r = sandbox_current_run(L);
    if (r && r->tripped)
        return 1; /* the error as it is */
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 1);
    return 1;
}

static int xpcall_finish(lua_State *L, int status, lua_KContext extra)
{
    if (status != LUA_OK && status != LUA_YIELD) {
        lua_pushboolean(L, 0);
        lua_pushvalue(L, -2);
        return 2;
    }
    return lua_gettop(L) - (int)extra;
}

static int sbx_xpcall(lua_State *L)
{
    int n = lua_gettop(L);
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_pushvalue(L, 2);
    lua_pushcclosure(L, xpcall_handler, 1);
    lua_replace(L, 2);
    lua_pushboolean(L, 1); /* as lbaselib's: true, then f below its arguments */
    lua_pushvalue(L, 1);
    lua_rotate(L, 3, 2);
    int status = lua_pcallk(L, n - 2, LUA_MULTRET, 2, 2, xpcall_finish);
    return xpcall_finish(L, status, 2);
}

/* setmetatable: as Lua's, but no __gc: finalizers run with hooks off, out of
 * reach of every limit. The second argument is checked as Lua's own does:
 * lua_setmetatable takes any other value for a table (memory corruption). */
static int sbx_setmetatable(lua_State *L)
{
    int t = lua_type(L, 2);
    luaL_argexpected(L, t == LUA_TNIL || t == LUA_TTABLE, 2, "nil or table");
    if (t == LUA_TTABLE && lua_getfield(L, 2, "__gc") != LUA_TNIL)
        return luaL_error(L, "setmetatable: __gc finalizers are not allowed in scripts");
    lua_settop(L, 2);
    luaL_checktype(L, 1, LUA_TTABLE);
    int target = 1;
    if (is_env(L, 1)) { /* _G: the table globals are written to now */
        hook_rt *k = ctx_of(L)->hook;
        if (push_globals(L, k, 1) == GLOBALS_SHARED && !k->custom_meta) {
            k->custom_meta = 1; /* env_index calls the script's metamethods with _G */
            env_route(k, L);
        }
        target = 3;
    }
    if (luaL_getmetafield(L, target, "__metatable") != LUA_TNIL)
        return luaL_error(L, "cannot change a protected metatable");
    lua_pushvalue(L, 2);
    lua_setmetatable(L, target);
    lua_settop(L, 1);
    return 1;
}

/* Patterns: Lua's matcher backtracks inside C, where no limit can stop it
 * (the count hook only runs between Lua instructions). Its work on a subject
 * of n bytes is bounded by the product of the choices of the pattern's items:
 * for a repeated single-character class ('a*', '.-', '%d+', '[%w_]*') one
 * more than the longest run of subject characters it matches, two for an
 * optional one ('x?'), a scan of the subject for a balance ('%b()') or a
 * back-reference ('%1'); times n + 1 start positions unless the pattern is
 * anchored with '^' (find, match and gsub honour it; gmatch does not). A
 * repetition that ends the pattern never backtracks (nothing after it can
 * fail) and counts once. A call whose bound is over 1e9 steps (seconds of C)
 * is refused. Every path also compares the pattern's single (unrepeated)
 * items one by one: their number multiplies the bound, so a long literal
 * pattern over a long subject counts too. The bound is an upper one: it refuses '.-' before a character
 * over a subject of more than about 30 kB, which a character class avoids
 * ('[^\n]*\n' rather than '.-\n'). */
#define PATTERN_MAX_STEPS 1e9
#define PLAIN_BYTES_PER_STEP 32.0

static size_t set_end(const char *p, size_t plen, size_t i) /* p[i] == '[' */
{
    i++;
    if (i < plen && p[i] == '^')
        i++;
    do { /* as lstrlib's classEnd: the first character may be a ']' */
        if (i >= plen)
            return plen;
        if (p[i++] == '%' && i < plen)
            i++;
    } while (i < plen && p[i] != ']');
    return i < plen ? i + 1 : plen;
}

/* As lstrlib's match_class, matchbracketclass and singlematch. */
static int class_match(int c, int cl)
{
    int res;
    switch (tolower(cl)) {
    case 'a': res = isalpha(c); break;
    case 'c': res = iscntrl(c); break;
    case 'd': res = isdigit(c); break;
    case 'g': res = isgraph(c); break;
    case 'l': res = islower(c); break;
    case 'p': res = ispunct(c); break;
    case 's': res = isspace(c); break;
    case 'u': res = isupper(c); break;
    case 'w': res = isalnum(c); break;
    case 'x': res = isxdigit(c); break;
    default: return cl == c;
    }
    return isupper(cl) ? !res : res != 0;
}

static int set_match(int c, const char *p, const char *ec) /* p at '[', ec at its ']' */
{
    int sig = 1;
    if (p[1] == '^') {
        sig = 0;
        p++;
    }
    while (++p < ec) {
        if (*p == '%' && p + 1 < ec) {
            p++;
            if (class_match(c, (unsigned char)*p))
                return sig;
        } else if (p + 2 < ec && p[1] == '-') {
            p += 2;
            if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p)
                return sig;
        } else if ((unsigned char)*p == c) {
            return sig;
        }
    }
    return !sig;
}

static int single_match(int c, const char *p, const char *ep) /* the class is p..ep */
{
    switch (*p) {
    case '.': return 1;
    case '%': return class_match(c, (unsigned char)p[1]);
    case '[': return set_match(c, p, ep - 1);
    default: return (unsigned char)*p == c;
    }
}

/* The longest run of subject characters the class p..ep matches. */
static size_t longest_run(const char *s, size_t n, const char *p, const char *ep)
{
    if (*p == '.')
        return n;
    size_t best = 0, run = 0;
    for (size_t i = 0; i < n; i++) {
        run = single_match((unsigned char)s[i], p, ep) ? run + 1 : 0;
        if (run > best)
            best = run;
    }
    return best;
}

/* With s NULL every repetition counts n + 1 choices (a quick first bound);
 * with the subject, the longest run its class matches. */
static double pattern_steps(const char *p, size_t plen, const char *s, size_t n, int honours_anchor)
{
    double len = (double)n + 1, steps = 1, single = 0;
    size_t i = 0;
    int anchored = honours_anchor && plen && p[0] == '^';
    if (anchored)
        i = 1;
    while (i < plen) {
        char c = p[i];
        size_t end;
        if (c == '(' || c == ')') {
            i++;
            continue;
        }
        if (c == '%' && i + 1 < plen) {
            char d = p[i + 1];
            if (d == 'b') { /* %bxy: a scan of the subject */
                steps *= len;
                i += 4;
                continue;
            }
            if (d == 'f') { /* %f[set]: one test */
                i += 2;
                if (i < plen && p[i] == '[')
                    i = set_end(p, plen, i);
                continue;
            }
            if (d >= '0' && d <= '9') { /* a back-reference: a comparison over the subject */
                steps *= len;
                i += 2;
                continue;
            }
            end = i + 2;
        } else if (c == '[') {
            end = set_end(p, plen, i);
        } else {
            end = i + 1;
        }
        if (end < plen && (p[end] == '*' || p[end] == '+' || p[end] == '-')) {
            size_t after = end + 1;
            while (after < plen && p[after] == ')')
                after++;
            if (after < plen) /* something after it can fail: it backtracks */
                steps *= s ? (double)longest_run(s, n, p + i, p + end) + 1 : len;
            end++;
        } else if (end < plen && p[end] == '?') {
            steps *= 2;
            end++;
        } else {
            single++; /* one comparison on every path that gets here */
        }
        i = end;
    }
    /* Each path through the choices also compares the pattern's single
     * items, one by one: a long literal pattern ('aaaa...b') costs its
     * length at every start position. */
    if (single > 1)
        steps *= single;
    return anchored ? steps : steps * len;
}

static int pattern_too_costly(const char *p, size_t plen, const char *s, size_t n, int honours_anchor)
{
    return pattern_steps(p, plen, NULL, n, honours_anchor) > PATTERN_MAX_STEPS &&
           pattern_steps(p, plen, s, n, honours_anchor) > PATTERN_MAX_STEPS;
}

/* "src:line: ..." */
static int has_position(const char *m)
{
    const char *c = strchr(m, ':');
    if (!c || c == m || c[1] < '0' || c[1] > '9')
        return 0;
    for (c++; *c >= '0' && *c <= '9'; c++)
        ;
    return *c == ':';
}

/* Calls the library function in upvalue 1 with the arguments as they are.
 * An error it raises itself gets the script's position, as when the script
 * calls it directly (luaL_error places it at the caller: here, this C
 * function, which has none). A memory error is passed on as its message. */
static int call_placed(lua_State *L);

static int call_original(lua_State *L)
{
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    return call_placed(L);
}

/* Calls the function at 1 with the values above it, as call_original. */
static int call_placed(lua_State *L)
{
    int st = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (st == LUA_OK)
        return lua_gettop(L);
    hook_run *r = sandbox_current_run(L);
    if (st == LUA_ERRRUN && !(r && r->tripped) && lua_type(L, -1) == LUA_TSTRING &&
        !has_position(lua_tostring(L, -1))) {
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
    }
    return lua_error(L);
}

static int guarded(lua_State *L, int plain_arg, int honours_anchor)
{
    size_t n, plen;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &plen);
    int plain = plain_arg && lua_toboolean(L, plain_arg);
    sandbox_charge(L, 0);
    /* a plain find compares the text at each start position (memcmp: a step
     * per PLAIN_BYTES_PER_STEP bytes) */
    if (plain && plen > 1 && ((double)n + 1) * (double)plen / PLAIN_BYTES_PER_STEP > PATTERN_MAX_STEPS)
        return luaL_error(L, "pattern too costly for a %d-byte string (a %d-byte plain text at every position); "
                             "split the work", (int)n, (int)plen);
    if (!plain && pattern_too_costly(p, plen, s, n, honours_anchor))
        return luaL_error(L, "pattern too costly for a %d-byte string (repetitions that can backtrack); split "
                             "the work, anchor the pattern or use plain find", (int)n);
    return call_original(L);
}

static int guarded_find(lua_State *L) { return guarded(L, 4, 1); }
static int guarded_other(lua_State *L) { return guarded(L, 0, 1); }
static int guarded_gmatch(lua_State *L) { return guarded(L, 0, 0); }

/* string.rep: Lua's copies an empty string n times, one empty memcpy at a
 * time (string.rep("", math.maxinteger) never ends). */
static int sbx_rep(lua_State *L)
{
    size_t l, lsep;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (n > 0 && l + lsep == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    sandbox_charge(L, 0);
    return call_original(L);
}

/* table.move(a1, f, e, t [, a2]): e - f + 1 elements, charged. */
static int sbx_tmove(lua_State *L)
{
    lua_Integer f = luaL_checkinteger(L, 2), e = luaL_checkinteger(L, 3);
    sandbox_charge(L, e >= f ? (double)e - (double)f + 1 : 0);
    return call_original(L);
}

/* The length of the table at 1, asked once: its __len could answer another
 * length to a second asking. */
static lua_Integer table_len(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    return luaL_len(L, 1);
}

/* table.insert and table.remove as Lua 5.4's, with the elements they shift
 * charged (a __len answering 1e15 made them loop in C for ever). */
static int sbx_tinsert(lua_State *L)
{
    lua_Integer e = table_len(L);
    e = (lua_Integer)((lua_Unsigned)e + 1u); /* first empty element */
    lua_Integer pos;
    switch (lua_gettop(L)) {
    case 2:
        pos = e;
        break;
    case 3:
        pos = luaL_checkinteger(L, 2);
        luaL_argcheck(L, (lua_Unsigned)pos - 1u < (lua_Unsigned)e, 2, "position out of bounds");
        sandbox_charge(L, (double)e - (double)pos);
        for (lua_Integer i = e; i > pos; i--) {
            lua_geti(L, 1, i - 1);
            lua_seti(L, 1, i);
        }
        break;
    default:
        return luaL_error(L, "wrong number of arguments to 'insert'");
    }
    lua_seti(L, 1, pos);
    return 0;
}

static int sbx_tremove(lua_State *L)
{
    lua_Integer size = table_len(L);
    lua_Integer pos = luaL_optinteger(L, 2, size);
    if (pos != size)
        luaL_argcheck(L, (lua_Unsigned)pos - 1u <= (lua_Unsigned)size, 2, "position out of bounds");
    lua_geti(L, 1, pos);
    sandbox_charge(L, (double)size - (double)pos);
    for (; pos < size; pos++) {
        lua_geti(L, 1, pos + 1);
        lua_seti(L, 1, pos);
    }
    lua_pushnil(L);
    lua_seti(L, 1, pos);
    return 1;
}

/* a < b, for the values at a and b: the comparator at 2, or Lua's '<'. */
static int sort_less(lua_State *L, int a, int b)
{
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (lua_isnoneornil(L, 2))
        return lua_compare(L, a, b, LUA_OPLT);
    lua_pushvalue(L, 2);
    lua_pushvalue(L, a);
    lua_pushvalue(L, b);
    lua_call(L, 2, 1);
    int less = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return less;
}

/* t[i] sinks to its place in the heap t[1..n]. */
static void sort_sift(lua_State *L, lua_Integer i, lua_Integer n)
{
    lua_geti(L, 1, i);
    int v = lua_gettop(L);
    for (;;) {
        lua_Integer c = 2 * i;
        if (c > n)
            break;
        lua_geti(L, 1, c);
        if (c < n) {
            lua_geti(L, 1, c + 1);
            if (sort_less(L, -2, -1)) {
                lua_remove(L, -2);
                c++;
            } else {
                lua_pop(L, 1);
            }
        }
        if (!sort_less(L, v, -1)) {
            lua_pop(L, 1);
            break;
        }
        lua_seti(L, 1, i); /* the larger child moves up */
        i = c;
    }
    lua_seti(L, 1, i);
}

/* (t, comp, n): a heap sort of t[1..n], n as asked once. */
static int sort_heap(lua_State *L)
{
    lua_Integer n = lua_tointeger(L, 3);
    lua_settop(L, 2);
    luaL_checkstack(L, 8, "sort");
    for (lua_Integer i = n / 2; i >= 1; i--)
        sort_sift(L, i, n);
    for (lua_Integer e = n; e > 1; e--) {
        lua_geti(L, 1, 1);
        lua_geti(L, 1, e);
        lua_seti(L, 1, 1);
        lua_seti(L, 1, e);
        sort_sift(L, 1, e - 1);
    }
    return 0;
}

/* table.sort: the comparisons run in C, and each may be a C metamethod
 * (__lt, __index, __newindex) that no count hook sees: the sort is charged
 * up front, n (log2 n + 1) comparisons, an instruction each (100,000
 * elements: 1.8 million), for the length asked once. A table with
 * a metatable could answer another length to Lua's own sort, which asks
 * again: it is sorted here (a heap sort, n log n in the worst case) with the
 * length that was charged. */
static int sbx_sort(lua_State *L)
{
    lua_Integer n = table_len(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    if (n > 1) {
        luaL_argcheck(L, n < INT_MAX, 1, "array too big");
        sandbox_charge(L, (double)n * (log2((double)n) + 1));
    } else {
        sandbox_charge(L, 0);
    }
    if (!lua_getmetatable(L, 1))
        return call_original(L); /* a plain table: Lua's sort asks the same length */
    lua_pop(L, 1);
    lua_settop(L, 2);
    lua_pushinteger(L, n);
    lua_pushcfunction(L, sort_heap);
    lua_insert(L, 1);
    return call_placed(L);
}

/* table.concat, table.unpack: their loops end at the first
 * missing value (or at the stack's size), so the memory cap bounds them; they
 * do not start past the deadline. */
static int sbx_checked(lua_State *L)
{
    sandbox_charge(L, 0);
    return call_original(L);
}

/* Replaces table[name] (at idx) by fn with the old value as upvalue 1. */
static void wrap_field(lua_State *L, int idx, const char *name, lua_CFunction fn)
{
    idx = lua_absindex(L, idx);
    lua_getfield(L, idx, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, idx, name);
}

static const char wrap_glue[] =
    "local create, resume, error = ...\n"
    "return function(f)\n"
    "  local co = create(f)\n"
    "  return function(...)\n"
    "    local r = table.pack(resume(co, ...))\n"
    "    if not r[1] then error(r[2], 0) end\n"
    "    return table.unpack(r, 2, r.n)\n"
    "  end\n"
    "end\n";

/* What the sandbox leaves out, so that reaching for it says so instead of
 * "attempt to index a nil value". */
static const char *const forbidden_globals[] = {"io", "debug", "package", "dofile", "loadfile", "loadstring",
                                                "module", "setfenv", "getfenv", "newproxy", NULL};
static const char *const forbidden_os[] = {"execute", "exit", "getenv", "remove", "rename", "tmpname",
                                           "setlocale", NULL};
static const char *const forbidden_string[] = {"dump", NULL};

/* Pushes "script.lua:12: " for the nearest script line calling this C
 * function (a metamethod may be called from C: the environment's own
 * __index), or "" when there is none. */
static void where_in_script(lua_State *L)
{
    lua_Debug ar;
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.currentline > 0) {
            lua_pushfstring(L, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
    lua_pushliteral(L, "");
}

/* __index of the environment and of its os and string tables: (t, key);
 * upvalue 1 is the prefix ("", "os.", "string."), 2.. the names. */
static int sbx_forbidden(lua_State *L)
{
    const char *key = lua_tostring(L, 2);
    if (key && lua_type(L, 2) == LUA_TSTRING) {
        for (int i = 2; lua_type(L, lua_upvalueindex(i)) == LUA_TSTRING; i++) {
            if (!strcmp(key, lua_tostring(L, lua_upvalueindex(i)))) {
                where_in_script(L); /* the script code that reached for it */
                lua_pushfstring(L, "%s%s%s is not available to hooks (see docs/SECURITY.md)", lua_tostring(L, -1),
                                lua_tostring(L, lua_upvalueindex(1)), key);
                return lua_error(L);
            }
        }
    }
    return 0; /* any other missing name is nil, as usual */
}

static void mark_forbidden(lua_State *L, int idx, const char *prefix, const char *const *names)
{
    idx = lua_absindex(L, idx);
    lua_createtable(L, 0, 2);
    lua_pushstring(L, prefix);
    int n = 1;
    for (const char *const *p = names; *p; p++, n++)
        lua_pushstring(L, *p);
    lua_pushcclosure(L, sbx_forbidden, n);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, idx); /* a script may replace it (strict globals): its own table, its own business */
}

/* ---- globals: the script's shared ones, and each run's own ----
 *
 * Runs of one hook share its Lua state and are in flight together (each
 * waits on API calls while others go on). The script's chunk, and every
 * function its top level defines, has one _ENV: an empty proxy whose
 * __index and __newindex route by the run going on now (the scheduler's
 * current task, as for the limits). A run reads its own globals first, then
 * the shared table (the libraries and what the top level defined); a run
 * writes to its own table only, made on its first write and dropped when the
 * run ends. So a forgotten `local` stays within its run, and nothing a run
 * leaves reaches the next one. While the top level runs (loading), writes
 * go to the shared table. _G is the proxy too; rawset, rawget, setmetatable
 * and getmetatable on it route the same way (its real metatable is locked).
 * A metatable the script sets on _G is the run's own during a run, the
 * shared one (what runs fall back to) at the top level.
 */

/* How the environment reads. While no run in flight has globals of its own
 * and the script's top level left _G's metatable alone, every run sees just
 * the shared table: __index is that table, and a read takes no C call (a
 * loop reading a global 2 million times: 70 ms this way, 121 ms through
 * env_index). Otherwise env_index routes each read. Sets an existing field:
 * allocates nothing, so it may run outside a protected call. */
static void env_route(hook_rt *k, lua_State *L)
{
    int direct = !k->own_globals && !k->custom_meta;
    lua_rawgeti(L, LUA_REGISTRYINDEX, k->envmeta_ref);
    lua_pushliteral(L, "__index");
    lua_rawgeti(L, LUA_REGISTRYINDEX, direct ? k->base_ref : k->index_ref);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* Pushes the table globals are written to now and says which: the run's own
 * (made when make is set and it has none yet), or while the script loads the
 * shared one. GLOBALS_NONE (nothing pushed) when the run has none and make
 * is 0, or no run is going on (make: raises). */
static int push_globals(lua_State *L, hook_rt *k, int make)
{
    if (k->loading) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, k->base_ref);
        return GLOBALS_SHARED;
    }
    hook_run *r = sandbox_current_run(L);
    if (r && !r->finished && r->globals_ref > 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->globals_ref);
        return GLOBALS_RUN;
    }
    if (!make)
        return GLOBALS_NONE;
    if (!r || r->finished)
        return luaL_error(L, "a global cannot be set once the hook run has ended");
    lua_newtable(L);
    lua_pushvalue(L, -1);
    r->globals_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    if (k->own_globals++ == 0)
        env_route(k, L); /* reads now go through env_index */
    return GLOBALS_RUN;
}

/* Drops r's own globals (the run has ended). */
static void drop_globals(hook_run *r)
{
    hook_rt *k = r->hook;
    if (r->globals_ref > 0 && k->L) {
        luaL_unref(k->L, LUA_REGISTRYINDEX, r->globals_ref);
        if (--k->own_globals == 0)
            env_route(k, k->L);
    }
    r->globals_ref = 0;
}

static int is_env(lua_State *L, int idx)
{
    hook_rt *k = ctx_of(L)->hook;
    return k && k->env && lua_topointer(L, idx) == k->env;
}

/* Pushes the metatable that governs the globals now: the run's own if it
 * set one on _G (its table at idx, 0 for none), else the shared table's. 0
 * when there is none. */
static int globals_meta(lua_State *L, int idx)
{
    if (idx && lua_getmetatable(L, idx))
        return 1;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ctx_of(L)->hook->base_ref);
    if (lua_getmetatable(L, -1)) {
        lua_remove(L, -2);
        return 1;
    }
    lua_pop(L, 1);
    return 0;
}

/* __index of the environment: (proxy, key); upvalue 1 the shared table. */
static int env_index(lua_State *L)
{
    hook_rt *k = ctx_of(L)->hook;
    lua_settop(L, 2);
    int own = push_globals(L, k, 0) == GLOBALS_RUN ? 3 : 0;
    if (own) {
        lua_pushvalue(L, 2);
        if (lua_rawget(L, own) != LUA_TNIL)
            return 1;
        lua_pop(L, 1);
    }
    lua_pushvalue(L, 2);
    if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL)
        return 1;
    lua_pop(L, 1);
    if (!globals_meta(L, own))
        return 0;
    /* as Lua's own lookup: __index a function called with the table the
     * script knows (_G), or a table indexed in turn */
    lua_pushliteral(L, "__index");
    int t = lua_rawget(L, -2);
    if (t == LUA_TNIL)
        return 0;
    if (t == LUA_TFUNCTION) {
        lua_pushvalue(L, 1);
        lua_pushvalue(L, 2);
        lua_call(L, 2, 1);
        return 1;
    }
    lua_pushvalue(L, 2);
    lua_gettable(L, -2);
    return 1;
}

/* __newindex of the environment: (proxy, key, value); upvalue 1 the shared
 * table. A name the run or the script has already is set in the run's table
 * (a top-level name is shadowed for this run); another goes through the
 * governing metatable's __newindex if it has one (strict globals), else is
 * set in the run's table. */
static int env_newindex(lua_State *L)
{
    hook_rt *k = ctx_of(L)->hook;
    lua_settop(L, 3);
    int where = push_globals(L, k, 1); /* 4 */
    lua_pushvalue(L, 2);
    int known = lua_rawget(L, 4) != LUA_TNIL;
    lua_pop(L, 1);
    if (!known && where == GLOBALS_RUN) {
        lua_pushvalue(L, 2);
        known = lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL;
        lua_pop(L, 1);
    }
    if (!known && globals_meta(L, where == GLOBALS_RUN ? 4 : 0)) {
        lua_pushliteral(L, "__newindex");
        int t = lua_rawget(L, -2);
        if (t == LUA_TFUNCTION) {
            lua_pushvalue(L, 1);
            lua_pushvalue(L, 2);
            lua_pushvalue(L, 3);
            lua_call(L, 3, 0);
            return 0;
        }
        if (t != LUA_TNIL) {
            lua_pushvalue(L, 2);
            lua_pushvalue(L, 3);
            lua_settable(L, -3);
            return 0;
        }
        lua_pop(L, 2);
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, 3);
    lua_rawset(L, 4);
    return 0;
}

/* rawset(t, k, v): on _G (or _ENV), in the table the environment writes to now. */
static int sbx_rawset(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    luaL_checkany(L, 3);
    lua_settop(L, 3);
    if (!is_env(L, 1)) {
        lua_rawset(L, 1);
        return 1;
    }
    push_globals(L, ctx_of(L)->hook, 1);
    lua_insert(L, 2);
    lua_rawset(L, 2);
    lua_settop(L, 1);
    return 1;
}

/* rawget(t, k): on _G (or _ENV), the run's own value, else the shared one. */
static int sbx_rawget(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checkany(L, 2);
    lua_settop(L, 2);
    if (!is_env(L, 1)) {
        lua_rawget(L, 1);
        return 1;
    }
    hook_rt *k = ctx_of(L)->hook;
    if (push_globals(L, k, 0) == GLOBALS_RUN) {
        lua_pushvalue(L, 2);
        if (lua_rawget(L, 3) != LUA_TNIL)
            return 1;
    }
    lua_settop(L, 2);
    lua_rawgeti(L, LUA_REGISTRYINDEX, k->base_ref);
    lua_insert(L, 2);
    lua_rawget(L, 2);
    return 1;
}

/* next(t [, k]): on _G (or _ENV), the globals the code running now sees:
 * the run's own, then the shared ones it does not shadow. */
static int sbx_next(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (!is_env(L, 1)) {
        if (lua_next(L, 1))
            return 2;
        lua_pushnil(L);
        return 1;
    }
    hook_rt *k = ctx_of(L)->hook;
    int own = push_globals(L, k, 0) == GLOBALS_RUN ? 3 : 0;
    if (!own)
        lua_pushnil(L); /* keeps slot 3 */
    lua_rawgeti(L, LUA_REGISTRYINDEX, k->base_ref); /* 4 */
    int in_own = 0;
    if (own) {
        in_own = lua_isnil(L, 2);
        if (!in_own) {
            lua_pushvalue(L, 2);
            in_own = lua_rawget(L, own) != LUA_TNIL;
            lua_pop(L, 1);
        }
    }
    if (in_own) {
        lua_pushvalue(L, 2);
        if (lua_next(L, own))
            return 2;
        lua_pushnil(L); /* the run's own are done: the shared ones from their start */
    } else {
        lua_pushvalue(L, 2);
    }
    while (lua_next(L, 4)) {
        if (own) {
            lua_pushvalue(L, -2);
            if (lua_rawget(L, own) != LUA_TNIL) { /* shadowed: the run's value was given */
                lua_pop(L, 2);
                continue;
            }
            lua_pop(L, 1);
        }
        return 2;
    }
    lua_pushnil(L);
    return 1;
}

/* __pairs of the environment: next over what it sees, as above. */
static int env_pairs(lua_State *L)
{
    lua_pushcfunction(L, sbx_next);
    lua_pushvalue(L, 1);
    lua_pushnil(L);
    return 3;
}

/* getmetatable(v): on _G (or _ENV), the one the script set on it (during a
 * run, the run's own: the shared one is not a run's to change). */
static int sbx_getmetatable(lua_State *L)
{
    luaL_checkany(L, 1);
    if (is_env(L, 1)) {
        hook_rt *k = ctx_of(L)->hook;
        lua_settop(L, 1);
        int where = push_globals(L, k, 0);
        if (where == GLOBALS_NONE)
            return 0;
        if (where == GLOBALS_SHARED && !k->custom_meta) {
            k->custom_meta = 1; /* the script may change the shared metatable: env_index calls it with _G */
            env_route(k, L);
        }
        lua_replace(L, 1);
    }
    if (!lua_getmetatable(L, 1)) {
        lua_pushnil(L);
        return 1;
    }
    luaL_getmetafield(L, 1, "__metatable");
    return 1;
}

/* Builds the script's environment and pushes it. Runs in protected mode. */
static int build_env(lua_State *L)
{
    hook_rt *k = ctx_of(L)->hook;
    int env = lua_gettop(L) + 1; /* the shared table */
    lua_createtable(L, 0, 32);
    int proxy = env + 1;         /* what the script's chunks have as _ENV */
    lua_createtable(L, 0, 0);
    lua_pushglobaltable(L);
    for (const char *const *n = base_names; *n; n++) {
        lua_getfield(L, -1, *n);
        lua_setfield(L, env, *n);
    }
    lua_pop(L, 1);
    copy_lib(L, env, "string", string_names);
    copy_lib(L, env, "table", table_names);
    copy_lib(L, env, "math", math_names);
    copy_lib(L, env, "utf8", utf8_names);
    copy_lib(L, env, "os", os_names);
    copy_lib(L, env, "coroutine", coroutine_names);
    lua_getfield(L, env, "coroutine");
    lua_pushcfunction(L, sbx_cocreate);
    lua_setfield(L, -2, "create");
    lua_pushcfunction(L, sbx_coresume);
    lua_setfield(L, -2, "resume");
    lua_getfield(L, -1, "close");
    lua_pushcclosure(L, sbx_coclose, 1);
    lua_setfield(L, -2, "close");
    lua_pushcfunction(L, sbx_coyield);
    lua_setfield(L, -2, "yield");
    lua_pushcfunction(L, sbx_coisyieldable);
    lua_setfield(L, -2, "isyieldable");
    if (luaL_loadstring(L, wrap_glue) != LUA_OK)
        return lua_error(L);
    lua_pushcfunction(L, sbx_cocreate);
    lua_pushcfunction(L, sbx_coresume);
    lua_getglobal(L, "error");
    lua_call(L, 3, 1);
    lua_setfield(L, -2, "wrap");
    lua_pop(L, 1);
    lua_getfield(L, env, "table");
    wrap_field(L, -1, "move", sbx_tmove);
    wrap_field(L, -1, "insert", sbx_tinsert);
    wrap_field(L, -1, "remove", sbx_tremove);
    wrap_field(L, -1, "concat", sbx_checked);
    wrap_field(L, -1, "unpack", sbx_checked);
    wrap_field(L, -1, "sort", sbx_sort);
    lua_pop(L, 1);
    lua_pushcfunction(L, sbx_print);
    lua_setfield(L, env, "print");
    lua_pushcfunction(L, sbx_setmetatable);
    lua_setfield(L, env, "setmetatable");
    lua_pushcfunction(L, sbx_getmetatable);
    lua_setfield(L, env, "getmetatable");
    lua_pushcfunction(L, sbx_rawset);
    lua_setfield(L, env, "rawset");
    lua_pushcfunction(L, sbx_rawget);
    lua_setfield(L, env, "rawget");
    lua_pushcfunction(L, sbx_next);
    lua_setfield(L, env, "next");
    lua_pushcfunction(L, sbx_xpcall);
    lua_setfield(L, env, "xpcall");
    /* Guarded pattern functions, for string.x(...) and ("..."):x(...) alike.
     * Method calls use a hidden copy, so a script emptying its own `string`
     * table changes nothing for anyone else (the wix module included). */
    static const char *const pats[] = {"find", "match", "gmatch", "gsub", NULL};
    lua_getfield(L, env, "string");
    int envstr = lua_gettop(L);
    lua_createtable(L, 0, 24);
    int hidden = lua_gettop(L);
    lua_getglobal(L, "string"); /* the allowed names only: ("").dump reached string.dump */
    for (const char *const *n = string_names; *n; n++) {
        lua_getfield(L, -1, *n);
        lua_setfield(L, hidden, *n);
    }
    lua_pop(L, 1);
    for (const char *const *pn = pats; *pn; pn++) {
        lua_getfield(L, hidden, *pn);
        lua_pushcclosure(L, !strcmp(*pn, "find")     ? guarded_find
                            : !strcmp(*pn, "gmatch") ? guarded_gmatch
                                                     : guarded_other,
                         1);
        lua_pushvalue(L, -1);
        lua_setfield(L, envstr, *pn);
        lua_setfield(L, hidden, *pn);
    }
    wrap_field(L, hidden, "rep", sbx_rep);
    lua_getfield(L, hidden, "rep");
    lua_setfield(L, envstr, "rep");
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushvalue(L, hidden);
    lua_setfield(L, -2, "__index");
    lua_settop(L, envstr - 1);
    lua_pushcfunction(L, sbx_collectgarbage);
    lua_setfield(L, env, "collectgarbage");
    lua_pushvalue(L, proxy);
    lua_pushcclosure(L, sbx_load, 1);
    lua_setfield(L, env, "load");
    lua_pushvalue(L, proxy);
    lua_newtable(L); /* the script's module cache */
    lua_pushcclosure(L, sbx_require, 2);
    lua_setfield(L, env, "require");
    lua_pushvalue(L, proxy);
    lua_setfield(L, env, "_G");
    /* Strings: their metatable can no longer be fetched (nor changed). */
    lua_pushliteral(L, "");
    lua_getmetatable(L, -1);
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 2);
    mark_forbidden(L, env, "", forbidden_globals);
    lua_getfield(L, env, "os");
    mark_forbidden(L, -1, "os.", forbidden_os);
    lua_pop(L, 1);
    lua_getfield(L, env, "string");
    mark_forbidden(L, -1, "string.", forbidden_string);
    lua_pop(L, 1);
    /* the proxy routes by the run going on (see push_globals); its own
     * metatable cannot be fetched or changed by the script */
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, env_pairs);
    lua_setfield(L, -2, "__pairs");
    lua_pushvalue(L, env);
    lua_setfield(L, -2, "__index"); /* see env_route */
    lua_pushvalue(L, env);
    lua_pushcclosure(L, env_newindex, 1);
    lua_setfield(L, -2, "__newindex");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
    lua_pushvalue(L, -1);
    k->envmeta_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_setmetatable(L, proxy);
    lua_pushvalue(L, env);
    lua_pushcclosure(L, env_index, 1);
    k->index_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushvalue(L, proxy);
    luaL_ref(L, LUA_REGISTRYINDEX); /* held for the state's life: k->env names it by address */
    lua_pushvalue(L, env);
    k->base_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    k->env = lua_topointer(L, proxy);
    lua_settop(L, proxy);
    return 1;
}

static int open_state(lua_State *L)
{
    static const luaL_Reg libs[] = {{LUA_GNAME, luaopen_base},          {LUA_LOADLIBNAME, luaopen_package},
                                    {LUA_COLIBNAME, luaopen_coroutine}, {LUA_TABLIBNAME, luaopen_table},
                                    {LUA_OSLIBNAME, luaopen_os},        {LUA_STRLIBNAME, luaopen_string},
                                    {LUA_MATHLIBNAME, luaopen_math},    {LUA_UTF8LIBNAME, luaopen_utf8},
                                    {LUA_DBLIBNAME, luaopen_debug},     {NULL, NULL}};
    for (const luaL_Reg *l = libs; l->func; l++) {
        luaL_requiref(L, l->name, l->func, 1);
        lua_pop(L, 1);
    }
    host_register_modules(L);
    /* wix.lua calls setmetatable with tables a script can reach and change
     * (wix.Error, the metatables of tasks and of wix.array): the checked one,
     * so that no object of a hook state ever gets a __gc finalizer. */
    lua_pushcfunction(L, sbx_setmetatable);
    lua_setglobal(L, "setmetatable");
    /* wix.lua is loaded before any script code runs, with the real libraries. */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "wix");
    lua_call(L, 1, 0);
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
    k->L = lua_newstate(hook_alloc, k);
    if (!k->L) {
        snprintf(err, errlen, "%s: cannot create a Lua state", def->where);
        return -1;
    }
    *(wixr_ctx **)lua_getextraspace(k->L) = &k->ctx;
    lua_State *L = k->L;
    lua_pushcfunction(L, open_state);
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
    lua_pushcfunction(L, build_env);
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
    lua_sethook(L, limit_hook, LUA_MASKCOUNT, HOOK_EVERY);
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
    /* The text is kept: a state rebuilt after a broken memory cap runs the
     * code that was loaded, whatever the file holds by then. */
    FILE *f = fopen(def->script, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", def->script, strerror(errno));
        free(k);
        return NULL;
    }
    int too_large;
    k->source = buf_read_stream(f, 64 * 1024 * 1024, &k->source_len, &too_large);
    fclose(f);
    if (!k->source) {
        snprintf(err, errlen, "%s: %s", def->script, too_large ? "larger than 64 MB" : "cannot be read");
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
        drop_globals(c->hook->idle_run);
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

void hook_free(hook_rt *k)
{
    if (!k)
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
    for (hook_run **p = (hook_run **)&h->active_runs; *p; p = &(*p)->next_active) {
        if (*p == r) {
            *p = r->next_active;
            break;
        }
    }
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
    drop_globals(r); /* what the run set in globals ends with it */
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
    lua_sethook(co, limit_hook, LUA_MASKCOUNT, HOOK_EVERY);
    r->next_active = h->active_runs;
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
