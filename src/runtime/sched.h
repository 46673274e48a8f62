/*
 * sched.h -- the event loop: Lua coroutines ("tasks") resumed when what they
 * wait for is done: a libcurl transfer (curl multi interface), a timer, or
 * another task waking them.
 *
 * A C function called from a task starts some work, keeps the task's id
 * (sched_current, sched_task_id), and yields with a continuation
 * (lua_yieldk). When the work completes, the code that finished it -- a curl
 * or timer callback, outside any protected call -- never touches Lua: it
 * hands the task a C payload (sched_set_payload) and makes it ready; the
 * continuation, running inside the task's resume, turns the payload into Lua
 * values. A task's end reaches its done callback as C text (outcome.h).
 * Nothing is ever resumed from inside another resume.
 */
#ifndef WIXR_SCHED_H
#define WIXR_SCHED_H

#include <curl/curl.h>
#include <lua.h>

#include "outcome.h"

typedef struct sched sched_t;
typedef struct sched_task sched_task;
typedef void (*sched_fn)(void *arg);
/* Called when a task ends, with how it ended (outcome.h). It must not call
 * the Lua API on the task's thread: everything it needs is in o (co is
 * passed for lua_getextraspace alone). */
typedef void (*sched_done_fn)(sched_task *t, lua_State *co, const task_outcome *o, void *arg);

/* sched_spawn_in flags */
#define SCHED_RESULT_JSON OUTCOME_WANT_JSON   /* the outcome carries the first result as JSON */
#define SCHED_TRACEBACK OUTCOME_WANT_TRACE    /* and, with an error, a traceback */
#define SCHED_RESULT_JSON_CAP (64u * 1024 * 1024)

/* A transfer's owner: CURLOPT_PRIVATE must point to one of these. */
typedef struct sched_transfer {
    void (*done)(struct sched_transfer *x, CURLcode rc);
} sched_transfer;

sched_t *sched_new(lua_State *L);
void sched_free(sched_t *s);

/* Starts a task running the function below its nargs arguments on L's
 * stack (all popped, also on failure); L may belong to any Lua state. The
 * task's thread is made in a protected call, so this never raises (NULL when
 * L's memory is exhausted). done (may be NULL) is called when it ends, with
 * the first result as JSON (sched_spawn). The task joins group (0 = none). */
sched_task *sched_spawn(sched_t *s, lua_State *L, int nargs, sched_done_fn done, void *arg);
sched_task *sched_spawn_in(sched_t *s, lua_State *L, int nargs, unsigned long group, int flags, sched_done_fn done,
                           void *arg);
unsigned long sched_task_group(const sched_task *t);
/* Ends every task of a group now: each unfinished task's done callback runs
 * with an OUTCOME_ERROR of msg; none of them runs again (work they were
 * waiting for is dropped when it completes). */
void sched_kill_group(sched_t *s, unsigned long group, const char *msg);
/* A fresh group id. */
unsigned long sched_new_group(sched_t *s);
/* Marks a waiting task runnable; nvalues were pushed on its thread (only from
 * code running inside a resume of the same state, e.g. wix.core.wake). */
void sched_ready(sched_t *s, sched_task *t, int nvalues);
/* Gives t a C payload for its continuation (replacing, and freeing, any it
 * had). The task owns it: free_fn(p) runs when the task drops it or ends. */
void sched_set_payload(sched_task *t, void *p, void (*free_fn)(void *));
/* The current task's payload (still owned by the task), and its release. */
void *sched_payload(sched_t *s);
void sched_drop_payload(sched_t *s);
sched_task *sched_current(sched_t *s);
lua_State *sched_task_thread(sched_task *t);
unsigned long sched_task_id(sched_task *t);
sched_task *sched_task_by_id(sched_t *s, unsigned long id);
/* A parked task waits for sched_ready from another task (wix.core.suspend). */
void sched_task_set_parked(sched_task *t, int parked);
int sched_task_parked(const sched_task *t);
/* Calls fn(arg) at (monotonic) ms. */
int sched_timer(sched_t *s, long long at_ms, sched_fn fn, void *arg);
/* The same, but a weak timer alone does not keep sched_run going. */
int sched_timer_weak(sched_t *s, long long at_ms, sched_fn fn, void *arg);
/* A timer that wakes task: when the task's group is killed it stops keeping
 * sched_run going (it still fires, harmlessly). */
int sched_timer_for(sched_t *s, long long at_ms, sched_fn fn, void *arg, sched_task *task);
/* As sched_timer_for; arg was malloc'd and is freed by sched_free if the timer never fires. */
int sched_timer_owning(sched_t *s, long long at_ms, sched_fn fn, void *arg, sched_task *task);
/* Frees every task of a Lua state about to be closed (without touching it). */
void sched_forget_state(sched_t *s, lua_State *L);
/* Adds an easy handle (whose CURLOPT_PRIVATE is a sched_transfer). */
int sched_add_transfer(sched_t *s, CURL *easy);
/* Runs until no task, timer or transfer is left. */
void sched_run(sched_t *s);
/* Runs what is runnable, then waits at most max_wait_ms for a transfer, a
 * timer, a watched fd or sched_wakeup; returns after that one wait. For
 * long-running services. */
void sched_run_for(sched_t *s, long max_wait_ms);
/* Makes sched_run_for's wait also end when fd becomes readable (at most 4). */
int sched_watch_fd(sched_t *s, int fd);
/* Ends a sched_run_for wait from any thread. */
void sched_wakeup(sched_t *s);
long long sched_now_ms(void);
/* Bumped at every resume of a task (and by the hooks' instruction count
 * hook): a worker process reports it, so its supervisor tells a worker that
 * runs Lua or waits from one stuck in a C call. */
extern volatile unsigned long sched_progress;
int sched_tasks_alive(sched_t *s);

#endif
