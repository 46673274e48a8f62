/*
 * embedded_lua.h -- the Lua half of wixr (lua/wix.lua, lua/wix/ and,
 * lua/wixr/ modules) compiled into the binary by CMake, so the shipped Lua
 * code cannot drift from the C it runs on. The table ends with a NULL name.
 */
#ifndef WIXR_EMBEDDED_LUA_H
#define WIXR_EMBEDDED_LUA_H

#include <stddef.h>

typedef struct embedded_lua {
    const char *name;     /* module name, e.g. "wix" or "wixr.runner" */
    const char *src;
    size_t len;
} embedded_lua;

extern const embedded_lua embedded_lua_modules[];

#endif
