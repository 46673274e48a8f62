/*
 * outcome.c -- what a finished task ended with, as C text (see outcome.h).
 */
#include "outcome.h"

#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/buf.h"
#include "host.h"
#include "../json/luajson.h"

/* Lua's own message for a memory error (a caught one raised again is a string) */
static const char memory_text[] = LUAJSON_NO_MEMORY;

const char *outcome_kind_name(outcome_kind k)
{
    switch (k) {
    case OUTCOME_OK: return "ok";
    case OUTCOME_ERROR: return "error";
    case OUTCOME_MEMORY: return "memory";
    case OUTCOME_LIMIT: return "limit";
    }
    return "error";
}

/* Copies n bytes of s into dst (size cap), cut on a UTF-8 boundary. */
static void copy_text(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--; /* do not split a character */
    }
    memcpy(dst, s, n);
    dst[n] = '\0';
}

void outcome_set(task_outcome *o, outcome_kind kind, const char *text)
{
    memset(o, 0, sizeof *o);
    o->kind = kind;
    if (text)
        copy_text(o->text, sizeof o->text, text, strlen(text));
}

void outcome_clear(task_outcome *o)
{
    free(o->json);
    free(o->trace);
    o->json = NULL;
    o->trace = NULL;
}

static lua_State *main_thread(lua_State *co)
{
    lua_State *M = NULL;
    if (lua_checkstack(co, 1)) {
        lua_rawgeti(co, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
        M = lua_tothread(co, -1);
        lua_pop(co, 1);
    }
    return M && M != co && lua_checkstack(M, 4) ? M : NULL;
}

static int traceback_call(lua_State *L)
{
    luaL_traceback(L, lua_touserdata(L, 1), NULL, 0);
    return 1;
}

/* A traceback of co (ended in error), made under protection on M. */
static void traceback(lua_State *co, task_outcome *o)
{
    lua_State *M = main_thread(co);
    if (!M)
        return;
    int top = lua_gettop(M);
    lua_pushcfunction(M, traceback_call);
    lua_pushlightuserdata(M, co);
    if (lua_pcall(M, 1, 1, 0) == LUA_OK && lua_type(M, -1) == LUA_TSTRING)
        o->trace = strdup(lua_tostring(M, -1));
    lua_settop(M, top);
}

/* Once the bound is reached every instruction raises, so a pcall inside
 * __tostring cannot swallow it. */
static void bound_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    lua_sethook(L, bound_hook, LUA_MASKCOUNT, 1);
    luaL_error(L, "its __tostring ran for more than %d instructions", OUTCOME_TOSTRING_STEPS);
}

/* (value, outcome): the value's text into o->text; its code and retryable
 * fields. Script code (__tostring) runs here, and only here. */
static int describe(lua_State *L)
{
    task_outcome *o = lua_touserdata(L, 2);
    lua_settop(L, 1);
    int t = lua_type(L, 1);
    if (t == LUA_TTABLE) {
        lua_pushliteral(L, "retryable");
        if (lua_rawget(L, 1) == LUA_TBOOLEAN && !lua_toboolean(L, -1))
            o->permanent = 1;
        lua_pushliteral(L, "code");
        if (lua_rawget(L, 1) == LUA_TSTRING) {
            size_t n;
            const char *c = lua_tolstring(L, -1, &n);
            copy_text(o->code, sizeof o->code, c, n);
        }
        lua_settop(L, 1);
    }
    if (luaL_callmeta(L, 1, "__tostring")) {
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_error(L, "its __tostring returned a %s value", luaL_typename(L, -1));
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        copy_text(o->text, sizeof o->text, s, n);
        return 0;
    }
    if (t == LUA_TTABLE) {
        buf_t b;
        char err[128];
        buf_init(&b, 64 * 1024); /* the text is then cut to OUTCOME_TEXT_MAX */
        int rc = luajson_encode(L, 1, &b, 0, err, sizeof err);
        if (rc == 0 && !b.failed)
            copy_text(o->text, sizeof o->text, b.data, b.len);
        buf_free(&b);
        if (rc == 0 && o->text[0])
            return 0;
    }
    snprintf(o->text, sizeof o->text, "(error object is a %s value)", lua_typename(L, t));
    return 0;
}

/* The text of the error value on top of co, which has ended. */
static void error_text(lua_State *co, task_outcome *o)
{
    int t = lua_type(co, -1);
    if (t == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(co, -1, &n);
        if (n == sizeof memory_text - 1 && !memcmp(s, memory_text, n))
            o->kind = OUTCOME_MEMORY; /* a memory error caught and raised again */
        copy_text(o->text, sizeof o->text, s, n);
        return;
    }
    if (t == LUA_TNUMBER) { /* formatted here: lua_tostring would allocate a string */
        if (lua_isinteger(co, -1))
            snprintf(o->text, sizeof o->text, "%lld", (long long)lua_tointeger(co, -1));
        else
            snprintf(o->text, sizeof o->text, "%.14g", (double)lua_tonumber(co, -1));
        return;
    }
    /* Anything else may run script code: protected, on the state's main
     * thread (co has ended in error and cannot be called into), bounded. */
    lua_State *M = main_thread(co);
    if (!M) {
        snprintf(o->text, sizeof o->text, "(error object is a %s value)", lua_typename(co, t));
        return;
    }
    int top = lua_gettop(M);
    lua_Hook saved = lua_gethook(M);
    int saved_mask = lua_gethookmask(M), saved_count = lua_gethookcount(M);
    lua_sethook(M, bound_hook, LUA_MASKCOUNT, OUTCOME_TOSTRING_STEPS);
    /* a hook's state: the coroutines and library calls of __tostring answer to the hook's limits */
    int idle = host_idle_begin(M);
    lua_pushcfunction(M, describe);
    lua_xmove(co, M, 1);
    lua_pushlightuserdata(M, o);
    int st = lua_pcall(M, 2, 0, 0);
    if (idle)
        host_idle_end(M);
    lua_sethook(M, saved, saved_mask, saved_count);
    if (st != LUA_OK) {
        const char *why = st == LUA_ERRMEM ? "it ran out of memory"
                          : lua_type(M, -1) == LUA_TSTRING ? lua_tostring(M, -1)
                                                            : "it raised an error";
        snprintf(o->text, sizeof o->text, "(error object is a %s value; its text cannot be had: %.200s)",
                 lua_typename(M, t), why);
    }
    lua_settop(M, top);
}

static void result_json(lua_State *co, size_t cap, task_outcome *o)
{
    buf_t b;
    buf_init(&b, cap);
    if (lua_gettop(co) == 0 || lua_isnil(co, 1)) {
        buf_adds(&b, "null");
        o->json = buf_steal(&b, NULL);
        return;
    }
    char err[256];
    int rc = luajson_encode(co, 1, &b, 0, err, sizeof err); /* protected: never raises */
    if (rc < 0 && !strcmp(err, LUAJSON_NO_MEMORY)) {
        buf_free(&b);
        o->kind = OUTCOME_MEMORY;
        snprintf(o->text, sizeof o->text, "%s encoding the result", memory_text);
        return;
    }
    if (rc < 0 || b.failed) {
        if (rc == 0)
            snprintf(err, sizeof err, "larger than %zu MB as JSON", cap >> 20);
        copy_text(o->text, sizeof o->text, err, strlen(err));
        buf_free(&b);
        return;
    }
    o->json = buf_steal(&b, NULL);
}

/* The innermost frame of a script file (chunk "@path") on co's stack: an
 * ended coroutine keeps its frames; reading them allocates nothing. */
static void where_of(lua_State *co, task_outcome *o)
{
    lua_Debug ar;
    for (int level = 0; lua_getstack(co, level, &ar); level++) {
        if (lua_getinfo(co, "Sl", &ar) && ar.currentline > 0 && ar.source[0] == '@') {
            snprintf(o->where, sizeof o->where, "%.200s:%d", ar.short_src, ar.currentline);
            return;
        }
    }
}

void outcome_of(lua_State *co, int status, int want, size_t json_cap, task_outcome *o)
{
    memset(o, 0, sizeof *o);
    if (status == LUA_OK) {
        o->kind = OUTCOME_OK;
        if (want & OUTCOME_WANT_JSON)
            result_json(co, json_cap, o);
        return;
    }
    where_of(co, o);
    if (want & OUTCOME_WANT_TRACE)
        traceback(co, o);
    o->kind = status == LUA_ERRMEM ? OUTCOME_MEMORY : OUTCOME_ERROR;
    if (lua_gettop(co) == 0) {
        snprintf(o->text, sizeof o->text, "%s", status == LUA_ERRMEM ? memory_text : "(no error value)");
        return;
    }
    error_text(co, o);
}
