/*
 * fuzz_emu.h -- what the emulator's fuzz targets share: an in-process
 * emulator on a :memory: state with the repository's catalog, a fixed dice
 * seed, and a way back to its seeded state between inputs.
 */
#ifndef WIXR_FUZZ_EMU_H
#define WIXR_FUZZ_EMU_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emulator/emu.h"

#define FUZZ_CATALOG WIXR_SOURCE_DIR "/config/catalog.yaml"
#define FUZZ_RESELLER "11111111-2222-4333-8444-555555555555"
#define FUZZ_TEAM "22222222-3333-4444-8555-666666666666"
#define FUZZ_JANE "33333333-4444-4555-8666-777777777777"
#define FUZZ_BOB "44444444-5555-4666-8777-888888888888"

static inline void fuzz_die(const char *target, const char *what, const char *detail)
{
    fprintf(stderr, "%s: %s%s%s\n", target, what, detail ? ": " : "", detail ? detail : "");
    abort();
}

static inline emu_t *fuzz_emu_open(const char *target)
{
    char err[1024];
    emu_options o = {.db_path = ":memory:", .catalog_path = FUZZ_CATALOG, .enable_delay_ms = 0, .seed = 42};
    emu_t *e = emu_open(&o, err, sizeof err);
    if (!e)
        fuzz_die(target, "cannot open the emulator", err);
    return e;
}

/* One request; returns the status, the body in *body (malloc'd) when asked. */
static inline int fuzz_emu_call(emu_t *e, const char *method, const char *path, const char *account, const char *body,
                                char **out)
{
    emu_request rq = {.method = method, .path = path, .authorization = "fuzz-key", .account_id = account,
                      .body = body, .body_len = body ? strlen(body) : 0};
    emu_response rs;
    emu_handle(e, &rq, &rs);
    int st = rs.status;
    if (out) {
        *out = rs.body;
        rs.body = NULL;
    }
    emu_response_free(&rs);
    return st;
}

/* Back to the seeded state: packages, faults, log, limits, settings, dice. */
static inline void fuzz_emu_reset(const char *target, emu_t *e)
{
    if (fuzz_emu_call(e, "POST", "/__admin/reset", NULL, NULL, NULL) != 200 ||
        fuzz_emu_call(e, "POST", "/__admin/settings", NULL,
                      "{\"rateLimit\":false,\"requestsPerMinute\":200,\"deliveryDelayMs\":0,\"seed\":42}", NULL) != 200)
        fuzz_die(target, "the emulator did not reset", NULL);
}

#endif
