/*
 * faults.c -- deliberate faults for the isolation tests (see faults.h).
 */
#include "faults.h"

#include <errno.h>
#include <lauxlib.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int faults_enabled;

/* fault.segv(): the process dies of SIGSEGV, as a bug in C would end it. */
static int l_segv(lua_State *L)
{
    (void)L;
    raise(SIGSEGV);
    return 0;
}

/* fault.spin(): a C loop that never ends (no instruction count, no timer reaches it). */
static int l_spin(lua_State *L)
{
    (void)L;
    volatile unsigned long n = 0;
    for (;;)
        n++;
    return 0;
}

/* fault.leak(mb): takes mb megabytes outside the Lua allocator, touching every page. */
static int l_leak(lua_State *L)
{
    lua_Integer mb = luaL_checkinteger(L, 1);
    for (lua_Integer i = 0; i < mb; i++) {
        char *p = malloc(1 << 20);
        if (!p)
            abort();
        memset(p, (int)(i & 0xff) | 1, 1 << 20);
    }
    lua_pushinteger(L, mb);
    return 1;
}

/* fault.exec(): tries to run /bin/true; returns the errno text when it could not. */
static int l_exec(lua_State *L)
{
    char *const argv[] = {(char *)"true", NULL};
    char *const envp[] = {NULL};
    execve("/bin/true", argv, envp);
    lua_pushstring(L, strerror(errno));
    return 1;
}

int faults_open(lua_State *L)
{
    static const luaL_Reg fns[] = {{"segv", l_segv}, {"spin", l_spin}, {"leak", l_leak}, {"exec", l_exec}, {NULL, NULL}};
    luaL_newlib(L, fns);
    return 1;
}
