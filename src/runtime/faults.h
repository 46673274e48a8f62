/*
 * faults.h -- require "wixr.fault": C functions that misbehave on purpose
 * (a SIGSEGV, an endless C loop, memory taken outside the Lua allocator, an
 * execve), for the tests of the worker processes' isolation. Hooks reach it
 * only when the process was started with --test-faults (a hidden option of
 * `wixr serve` and `wixr fire`, never set in production).
 */
#ifndef WIXR_FAULTS_H
#define WIXR_FAULTS_H

#include <lua.h>

extern int faults_enabled;

/* Pushes the wixr.fault table. */
int faults_open(lua_State *L);

#endif
