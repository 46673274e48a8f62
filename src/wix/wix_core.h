/*
 * wix_core.h -- the C half of the wix Lua module ("wix.core", what
 * lua/wix.lua is built on), and the log line every script writes through.
 *
 * wix.core knows hook runs only through the host's guard (runtime/host.h):
 * the hooks layer, above this one, answers what a run may call, derives its
 * keys and records its plan.
 */
#ifndef WIXR_WIX_CORE_H
#define WIXR_WIX_CORE_H

#include <lua.h>
#include <stddef.h>

/* A log message (ctx.log, wix.log, print) longer than this is cut at a
 * character's start, with a marker saying how many bytes were left out. */
#define WIX_LOG_MSG_MAX (64 * 1024)

/* Opens the wix.core C module: the host's preload entry for "wix.core". */
int luaopen_wix_core(lua_State *L);

/* wix.core.log(level, message, fields?): one JSON log line on stderr. */
int wix_core_log(lua_State *L);
/* The line itself, from the level, message and fields table at those stack
 * slots; extra is NULL or {key, value, ..., NULL}: string pairs added to the
 * fields (the fields table is left as it was). */
void wix_log_write(lua_State *L, int level_idx, int msg_idx, int fields_idx, const char *const *extra);

/* The script's own position ("policy.lua:12: "), skipping the wix module's
 * frames; "" when no script frame is on L's stack. */
void wix_script_where(lua_State *L, char *out, size_t n);

#endif
