/*
 * worker.h -- a worker process of `wixr serve` or `wixr fire --batch`: it
 * loads the hook rules and runs the events its supervisor hands it (workers.h),
 * in its own address space, under a memory ceiling, with no core dumps and no
 * execve. Everything that can crash, loop in C or grow outside the Lua
 * allocator happens here; the supervisor only sees messages (wire.h) and, if
 * the worker dies, its exit status.
 *
 * It is started as `wixr __worker` (never by a user) with the socket on
 * fd 3 and its progress pipe on fd 4.
 *
 * A DONE message's fields, in order:
 *   0 seq  1 flags: three digits (failed, permanent, final)  2 the event's results
 *   (event_job_json)  3 the first error of the event or its chained events ("")
 *   4 the failed hook's name  5 its code (SITE_NOT_FOUND, MEMORY_LIMIT, LIMIT,
 *   ERROR)  6 its error  7 the chained event it ran for ("": the event itself)
 *   8 hook counts, a line "event\tscript\tcategory\n" per hook run (category:
 *   ok, failed, permanent, skipped)  9 text the fire front rendered (see render)
 */
#ifndef WIXR_WORKER_H
#define WIXR_WORKER_H

#include "../hooks/hooks.h"
#include "../util/buf.h"

#define WORKER_FD 3
#define WORKER_PROGRESS_FD 4

typedef struct worker_options {
    const char *config_path;
    int dry_run;
    const char *wix_url;          /* the supervisor's emulator (http), or NULL: wix: as configured */
    int rate_gate;                /* ask the supervisor before every request (its window is the one) */
    long memory_mb;               /* the address-space ceiling (0: none) */
    int test_faults;              /* hooks may require "wixr.fault" (tests only) */
    int log_prints;               /* a hook's print() is a JSON log line (wixr serve) */
    int lean;                     /* DONE without the results and hook counts (nobody reads them) */
    /* wixr fire: appends what the front prints for a finished event (NULL: nothing) */
    void (*render)(const event_job *j, int flags, buf_t *out);
    int render_flags;
} worker_options;

/* Runs until the supervisor retires it or goes away; an exit code. */
int worker_main(const worker_options *o);

/* The process limits of a worker: no core dumps, not dumpable, the memory
 * ceiling (not under the sanitizers, whose shadow memory needs terabytes of
 * address space), and, where the kernel has seccomp, no execve. Returns the
 * number of limits that could not be set (0: all). */
int worker_harden(long memory_mb);

#endif
