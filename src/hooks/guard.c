/*
 * guard.c -- hook runs as the layers under the hooks see them (see guard.h):
 * each answer looks up the run the thread works for (sandbox_current_run)
 * and answers as if unguarded outside one.
 */
#include "guard.h"

#include <lauxlib.h>

#include "../json/luajson.h"
#include "keys.h"
#include "sandbox.h"

static int g_permit(lua_State *L, unsigned op, int mutating, char *err, size_t errlen)
{
    hook_run *r = sandbox_current_run(L);
    return r ? sandbox_permit(r, op, mutating, err, errlen) : 0;
}

/* A task of a run other than its handler failed: a limit or the memory cap
 * ends the whole run; anything else is said in a log line naming the run
 * (nobody waits for the task: a waited one reports to its waiter), as a
 * warning that it was stopped when the run ended before it. */
static int g_task_failed(lua_State *co, const task_outcome *o)
{
    hook_run *r = ctx_of(co)->run;
    if (!r)
        return 0;
    if (sandbox_task_failed(r, o))
        return 1;
    const char *fields[] = {"error", o->text, "hook", r->hook->name, "event_id", r->event_id, NULL};
    host_log("warn",
             r->finished ? "a task started with wix.spawn was stopped: the run ended before it"
                         : "a task started with wix.spawn failed",
             fields);
    return 1;
}

/* stack: [.., entry at idx]: the entry joins the run's plan as JSON. */
static int g_plan(lua_State *L, int idx)
{
    hook_run *r = sandbox_current_run(L);
    if (!r)
        return 0;
    if (r->idle)
        return luaL_error(L, "wix: a call can only be planned by a run of the handler");
    char err[256];
    if (r->nplan++)
        buf_addc(&r->plan, ',');
    if (luajson_encode(L, idx, &r->plan, LUAJSON_CAMEL | LUAJSON_SORTED, err, sizeof err) < 0)
        return luajson_raise(L, "plan: ", err);
    return 1;
}

static int g_names(lua_State *L, const char **hook, const char **event_id)
{
    hook_run *r = sandbox_current_run(L);
    if (!r)
        return 0;
    *hook = r->hook->name;
    *event_id = r->event_id;
    return 1;
}

const host_guard hooks_guard = {
    .permit = g_permit,
    .json_fits = sandbox_json_fits,
    .adopt_thread = sandbox_adopt_thread,
    .task_failed = g_task_failed,
    .next_key = hooks_next_key,
    .plan = g_plan,
    .names = g_names,
    .idle_begin = sandbox_idle_begin,
    .idle_end = sandbox_idle_end,
};
