/*
 * setup.h -- what the worker processes of `wixr serve` and `wixr fire
 * --batch` are started with: their arguments, their environment, their
 * memory ceiling and hard deadline, and, with wix.transport sandbox, the one
 * emulator they all reach over a loopback port (so every worker sees the same
 * state, as they would with Wix).
 */
#ifndef WIXR_SETUP_H
#define WIXR_SETUP_H

#include <stddef.h>

#include "../config/config.h"
#include "../emulator/emu.h"
#include "../emulator/emu_http.h"

typedef struct worker_setup {
    char **args;                  /* after "wixr __worker", NULL-terminated */
    char **env;                   /* NULL-terminated */
    long memory_mb;               /* the resident ceiling (serve.worker_memory_mb, or 256 + the hooks' memory_mb) */
    long long hard_ms;            /* serve.hard_deadline_ms, or 2 x the largest wall_ms (at least 1 s) */
    emu_t *emu;
    emu_server *srv;
    char url[64];
} worker_setup;

/* extra: more worker arguments (NULL-terminated). -1 with err on failure. */
int worker_setup_make(worker_setup *ws, const wixr_config *c, const char *const *extra, char *err, size_t errlen);
void worker_setup_free(worker_setup *ws);

#endif
