/*
 * sandbox_internal.h -- what the sandbox's three files share, and nothing
 * outside them uses: limits.c (the allocator, the count hook, the charged
 * and bounded library calls), env.c (the environment a state is built with)
 * and run.c (states and runs).
 */
#ifndef WIXR_SANDBOX_INTERNAL_H
#define WIXR_SANDBOX_INTERNAL_H

#include <lua.h>
#include <stddef.h>

#include "sandbox.h"

#define LIMITS_HOOK_EVERY 1000  /* instructions between limit checks */

/* limits.c */

/* The state's allocator (lua_newstate's): the hook_rt is ud. */
void *limits_alloc(void *ud, void *ptr, size_t osize, size_t nsize);
/* The count hook every thread of a hook state runs with (every
 * LIMITS_HOOK_EVERY instructions; every one once a limit struck). */
void limits_count_hook(lua_State *L, lua_Debug *ar);
/* The library calls env.c puts in the environment in place of Lua's (each
 * with the original as upvalue 1, where it has one): string.find, match
 * and gsub (limits_match), gmatch and rep; table.move, insert, remove and
 * sort; table.concat and unpack (limits_checked). */
int limits_find(lua_State *L);
int limits_match(lua_State *L);
int limits_gmatch(lua_State *L);
int limits_rep(lua_State *L);
int limits_tmove(lua_State *L);
int limits_tinsert(lua_State *L);
int limits_tremove(lua_State *L);
int limits_sort(lua_State *L);
int limits_checked(lua_State *L);

/* env.c */

/* A new state's setup, in a protected call: the libraries, the host's
 * preloads, wix loaded. */
int env_open_state(lua_State *L);
/* Builds the script's environment (a protected call: (hook_rt) -> the
 * environment table). */
int env_build(lua_State *L);
/* The run's own globals go (the run ended). */
void env_drop_globals(hook_run *r);

#endif
