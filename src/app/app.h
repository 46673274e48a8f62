/*
 * app.h -- the host every wixr command runs scripts in, wired: the runtime's
 * host (runtime/host.h) with the wix module preloaded and a wix client on
 * the configured transport -- http, or the emulator in-process (the
 * "sandbox" wire, emu_wire.c). This is the one place that knows both the
 * wix client and the emulator: neither includes the other.
 */
#ifndef WIXR_APP_H
#define WIXR_APP_H

#include <stddef.h>

#include "../config/config.h"
#include "../runtime/host.h"
#include "../runtime/sched.h"
#include "../wix/client.h"

/* Makes the host for cfg. Says once on stderr when the sandbox is used
 * because no API key is configured. NULL with err. */
wixr_host *host_new(const wixr_config *cfg, int dry_run, char *err, size_t errlen);
/* Frees the host and its client (NULL is fine). */
void host_free(wixr_host *h);

/* The emulator in-process as a wire: the state file s->sandbox_db (its
 * folder made on first use), the catalog s->sandbox_catalog or the one
 * compiled in; opened at the first attempt, so a command that makes no call
 * never takes the state file's lock. 0, or -1 with err. */
int app_emu_wire(wix_wire *w, const wix_settings *s, sched_t *sched, char *err, size_t errlen);

#endif
