/*
 * host.c -- the Lua state wixr runs scripts in (see host.h).
 */
#include "host.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"
#include "../util/buf.h"
#include "../util/isotime.h"
#include "embedded_lua.h"

#ifndef WIXR_HOME
#define WIXR_HOME "."
#endif

int luaopen_cjson(lua_State *L);

wixr_host *host_of(lua_State *L)
{
    return ctx_of(L)->host;
}

static int load_embedded(lua_State *L)
{
    const char *name = lua_tostring(L, 1);
    for (const embedded_lua *m = embedded_lua_modules; m->name; m++) {
        if (!strcmp(m->name, name)) {
            char chunk[128];
            snprintf(chunk, sizeof chunk, "=[%s]", m->name);
            if (luaL_loadbufferx(L, m->src, m->len, chunk, "t") != LUA_OK)
                return lua_error(L);
            lua_pushstring(L, name);
            lua_call(L, 1, 1);
            return 1;
        }
    }
    return luaL_error(L, "no embedded module %s", name);
}

/* Registers the host's preloads, cjson and the embedded Lua modules in
 * package.preload and puts the shipped lua/ folder first on package.path. */
void host_register_modules(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    for (const luaL_Reg *m = host_of(L)->preload; m && m->name; m++) {
        lua_pushcfunction(L, m->func);
        lua_setfield(L, -2, m->name);
    }
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    for (const embedded_lua *m = embedded_lua_modules; m->name; m++) {
        lua_pushcfunction(L, load_embedded);
        lua_setfield(L, -2, m->name);
    }
    lua_pop(L, 1);
    /* package.path: the shipped lua/ folder first, then Lua's defaults. */
    const char *home = getenv("WIXR_HOME");
    if (!home || !*home)
        home = WIXR_HOME;
    lua_getfield(L, -1, "path");
    lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua;%s", home, home, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
}

/* Runs in protected mode: libraries, embedded modules, search path. */
static int setup(lua_State *L)
{
    luaL_openlibs(L);
    host_register_modules(L);
    return 0;
}

wixr_host *host_open(const wixr_config *cfg, int dry_run, const luaL_Reg *preload, char *err, size_t errlen)
{
    wixr_host *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = cfg;
    h->dry_run = dry_run;
    h->preload = preload;
    h->L = luaL_newstate();
    if (!h->L) {
        snprintf(err, errlen, "cannot create a Lua state");
        free(h);
        return NULL;
    }
    h->ctx.host = h;
    *(wixr_ctx **)lua_getextraspace(h->L) = &h->ctx;
    lua_pushcfunction(h->L, setup);
    if (lua_pcall(h->L, 0, 0, 0) != LUA_OK) {
        snprintf(err, errlen, "setting up Lua: %s", lua_tostring(h->L, -1));
        host_close(h);
        return NULL;
    }
    lua_newtable(h->L);
    h->plan_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
    h->sched = sched_new(h->L);
    if (!h->sched) {
        snprintf(err, errlen, "cannot start the scheduler");
        host_close(h);
        return NULL;
    }
    return h;
}

void host_close(wixr_host *h)
{
    if (!h)
        return;
    /* Tasks hold Lua references: the scheduler goes before the state. */
    sched_free(h->sched);
    if (h->L)
        lua_close(h->L);
    free(h);
}

/* ---- the guard: what hook runs answer, and the answers outside them ---- */

static const host_guard *guard_of(lua_State *L)
{
    wixr_ctx *c = ctx_of(L);
    return c && c->host ? c->host->guard : NULL;
}

int host_permit(lua_State *L, unsigned op, int mutating, char *err, size_t errlen)
{
    const host_guard *g = guard_of(L);
    return g ? g->permit(L, op, mutating, err, errlen) : 0;
}

int host_json_fits(lua_State *L, const char *s, size_t len)
{
    const host_guard *g = guard_of(L);
    return g ? g->json_fits(L, s, len) : 1;
}

void host_adopt_thread(lua_State *parent, lua_State *child)
{
    const host_guard *g = guard_of(parent);
    if (g)
        g->adopt_thread(parent, child);
}

int host_task_failed(lua_State *co, const task_outcome *o)
{
    const host_guard *g = guard_of(co);
    return g ? g->task_failed(co, o) : 0;
}

int host_next_key(lua_State *L)
{
    const host_guard *g = guard_of(L);
    return g ? g->next_key(L) : 0;
}

int host_plan(lua_State *L, int idx)
{
    const host_guard *g = guard_of(L);
    return g ? g->plan(L, idx) : 0;
}

int host_run_names(lua_State *L, const char **hook, const char **event_id)
{
    const host_guard *g = guard_of(L);
    *hook = *event_id = NULL;
    return g ? g->names(L, hook, event_id) : 0;
}

int host_idle_begin(lua_State *L)
{
    const host_guard *g = guard_of(L);
    return g ? g->idle_begin(L) : 0;
}

void host_idle_end(lua_State *L)
{
    const host_guard *g = guard_of(L);
    if (g)
        g->idle_end(L);
}

int host_load_script(wixr_host *h, const char *path)
{
    return luaL_loadfilex(h->L, path, "t");
}

json_writer *host_log_begin(host_logline *l, const char *level, const char *msg)
{
    char ts[ISO_TIME_LEN];
    iso_format_ms(iso_now_ms(), ts);
    buf_init(&l->b, 1024 * 1024);
    jw_init(&l->w, &l->b);
    jw_obj(&l->w);
    jw_kstr(&l->w, "ts", ts);
    jw_kstr(&l->w, "level", level);
    jw_kstr(&l->w, "msg", msg);
    jw_key(&l->w, "fields");
    jw_obj(&l->w);
    return &l->w;
}

void host_log_end(host_logline *l)
{
    jw_obj_end(&l->w);
    jw_obj_end(&l->w);
    buf_addc(&l->b, '\n');
    if (!l->b.failed)
        fwrite(l->b.data, 1, l->b.len, stderr);
    buf_free(&l->b);
}

void host_log(const char *level, const char *msg, const char *const *fields)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, level, msg);
    for (int i = 0; fields && fields[i]; i += 2)
        if (fields[i + 1])
            jw_kstr(w, fields[i], fields[i + 1]);
    host_log_end(&l);
}
