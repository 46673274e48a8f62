/*
 * host.c -- the Lua state wixr runs scripts in (see host.h).
 */
#include "host.h"

#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/buf.h"
#include "../wix/luajson.h"
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

/* Registers wix.core, cjson and the embedded Lua modules in package.preload
 * and puts the shipped lua/ folder first on package.path. */
void host_register_modules(lua_State *L)
{
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_wix_core);
    lua_setfield(L, -2, "wix.core");
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

wixr_host *host_new(const wixr_config *cfg, int dry_run, char *err, size_t errlen)
{
    wixr_host *h = calloc(1, sizeof *h);
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->cfg = cfg;
    h->dry_run = dry_run;
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
        host_free(h);
        return NULL;
    }
    lua_newtable(h->L);
    h->plan_ref = luaL_ref(h->L, LUA_REGISTRYINDEX);
    h->sched = sched_new(h->L);
    if (!h->sched) {
        snprintf(err, errlen, "cannot start the scheduler");
        host_free(h);
        return NULL;
    }
    h->client = wix_client_new(&cfg->wix, h->sched, err, errlen);
    if (!h->client) {
        host_free(h);
        return NULL;
    }
    if (cfg->wix.transport == TRANSPORT_AUTO && wix_client_transport(h->client) == TRANSPORT_SANDBOX)
        fprintf(stderr, "wixr: no Wix API key configured (WIX_API_KEY); using the embedded sandbox emulator (%s)\n",
                cfg->wix.sandbox_db);
    return h;
}

void host_free(wixr_host *h)
{
    if (!h)
        return;
    /* Tasks hold Lua references: the scheduler goes before the state. */
    sched_free(h->sched);
    wix_client_free(h->client);
    if (h->L)
        lua_close(h->L);
    free(h);
}

int host_load_script(wixr_host *h, const char *path)
{
    return luaL_loadfilex(h->L, path, "t");
}

const char *host_error_text(lua_State *L, int idx)
{
    idx = lua_absindex(L, idx);
    if (luaL_callmeta(L, idx, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
        return lua_tostring(L, -1);
    if (lua_type(L, idx) == LUA_TSTRING || lua_type(L, idx) == LUA_TNUMBER) {
        lua_pushvalue(L, idx);
        return lua_tostring(L, -1);
    }
    if (lua_type(L, idx) == LUA_TTABLE) {
        buf_t b;
        char e[128];
        buf_init(&b, 4096);
        if (luajson_encode(L, idx, &b, 0, e, sizeof e) == 0) {
            lua_pushlstring(L, b.data, b.len);
            buf_free(&b);
            return lua_tostring(L, -1);
        }
        buf_free(&b);
    }
    return lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, idx));
}
