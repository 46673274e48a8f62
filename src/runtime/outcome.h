/*
 * outcome.h -- how a task ended, as C text: the one protected, bounded
 * routine between a finished Lua coroutine and the C code that waits for it.
 *
 * Nothing outside a protected call may push into, or call into, a Lua state
 * whose allocator can refuse (a hook's state at its memory cap) or whose
 * values run script code (an error object's __tostring). The scheduler calls
 * outcome_of() once a task has ended and hands its done callback the kind and
 * the text; done callbacks never touch the task's Lua state.
 */
#ifndef WIXR_OUTCOME_H
#define WIXR_OUTCOME_H

#include <lua.h>
#include <stddef.h>

typedef enum {
    OUTCOME_OK,     /* returned; text is its first result as JSON when asked for */
    OUTCOME_ERROR,  /* raised an error; text is its one line */
    OUTCOME_MEMORY, /* ran out of memory (its state's cap); text says so */
    OUTCOME_LIMIT   /* ended by a limit (set by the code that ended it) */
} outcome_kind;

#define OUTCOME_TEXT_MAX 1024   /* error text is cut (on a UTF-8 boundary) past this */
#define OUTCOME_TOSTRING_STEPS 1000000  /* instructions an error's __tostring may run */

typedef struct task_outcome {
    outcome_kind kind;
    /* OK, asked for: the first result as JSON ("null" when none), malloc'd and
     * owned by the outcome (outcome_clear); NULL when it is not plain data,
     * and then text says why. */
    char *json;
    char text[OUTCOME_TEXT_MAX];  /* not OK: the error's text */
    int permanent;       /* the error value is a table whose retryable field is false */
    char code[64];       /* the error value's string field `code`, or "" */
    char *trace;         /* not OK, asked for: a Lua traceback of the task (malloc'd), or NULL */
    char where[256];     /* not OK: "script.lua:12" of the innermost script frame when it ended, or "" */
} task_outcome;

#define OUTCOME_WANT_JSON 1      /* encode the first result */
#define OUTCOME_WANT_TRACE 2     /* with an error, a traceback */

/* Describes the end of coroutine co (status from lua_resume: LUA_OK or an
 * error status, the results or the error value on its stack). Runs script
 * code (__tostring) only inside a protected call, on the state's main thread,
 * bounded to OUTCOME_TOSTRING_STEPS instructions and the state's memory cap;
 * never raises. want: OUTCOME_WANT_JSON (the first result, up to json_cap
 * bytes) and OUTCOME_WANT_TRACE. */
void outcome_of(lua_State *co, int status, int want, size_t json_cap, task_outcome *o);
/* An outcome from C text alone (a killed task, a refused start). */
void outcome_set(task_outcome *o, outcome_kind kind, const char *text);
void outcome_clear(task_outcome *o);
const char *outcome_kind_name(outcome_kind k);

#endif
