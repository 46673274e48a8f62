/*
 * env.c -- a hook state's environment: the libraries it opens, the names a
 * script sees (an allow-list: no io, os.execute, debug, package,
 * string.dump, bytecode), the wrapped ones (print, load, require, the
 * coroutine functions, xpcall, setmetatable without __gc, cjson through
 * wixr's encoder), and the globals: the script's shared table and each
 * run's own. See sandbox.h.
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/luajson.h"
#include "../runtime/faults.h"
#include "../wix/wix_core.h"
#include "sandbox_internal.h"

enum { GLOBALS_NONE, GLOBALS_RUN, GLOBALS_SHARED }; /* see push_globals */
static int push_globals(lua_State *L, hook_rt *k, int make);
static void env_route(hook_rt *k, lua_State *L);
static int is_env(lua_State *L, int idx);

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
    lua_sethook(co, limits_count_hook, LUA_MASKCOUNT, LIMITS_HOOK_EVERY);
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
void env_drop_globals(hook_run *r)
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
int env_build(lua_State *L)
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
    wrap_field(L, -1, "move", limits_tmove);
    wrap_field(L, -1, "insert", limits_tinsert);
    wrap_field(L, -1, "remove", limits_tremove);
    wrap_field(L, -1, "concat", limits_checked);
    wrap_field(L, -1, "unpack", limits_checked);
    wrap_field(L, -1, "sort", limits_sort);
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
        lua_pushcclosure(L, !strcmp(*pn, "find")     ? limits_find
                            : !strcmp(*pn, "gmatch") ? limits_gmatch
                                                     : limits_match,
                         1);
        lua_pushvalue(L, -1);
        lua_setfield(L, envstr, *pn);
        lua_setfield(L, hidden, *pn);
    }
    wrap_field(L, hidden, "rep", limits_rep);
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

int env_open_state(lua_State *L)
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

