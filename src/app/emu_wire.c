/*
 * emu_wire.c -- the emulator in-process as the wix client's wire (see
 * app.h): emu_handle answers each attempt at once, no socket; the latency
 * a fault rule asks for is waited on the scheduler.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../emulator/emu.h"
#include "../util/buf.h"
#include "app.h"

#ifndef WIXR_HOME
#define WIXR_HOME "."
#endif

typedef struct emu_wire {
    const wix_settings *s;
    sched_t *sched;
    emu_t *emu;                  /* opened at the first attempt */
} emu_wire;

/* Opens the emulator on first use. */
static int wire_open(emu_wire *w, char *err, size_t errlen)
{
    if (w->emu)
        return 0;
    const char *db = w->s->sandbox_db;
    if (strcmp(db, ":memory:") != 0) {
        const char *slash = strrchr(db, '/');
        if (slash && slash != db) {
            char dir[4096];
            snprintf(dir, sizeof dir, "%.*s", (int)(slash - db), db);
            if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                snprintf(err, errlen, "sandbox: cannot create %.200s: %s", dir, strerror(errno));
                return -1;
            }
        }
    }
    /* The catalog named by default (WIXR_HOME's config/catalog.yaml) is the one compiled in:
     * a binary copied elsewhere needs no source tree. A configured wix.sandbox.catalog is read. */
    const char *catalog = w->s->sandbox_catalog, *home = getenv("WIXR_HOME");
    char home_catalog[4200];
    snprintf(home_catalog, sizeof home_catalog, "%s/config/catalog.yaml", home && *home ? home : WIXR_HOME);
    if (catalog && !strcmp(catalog, home_catalog))
        catalog = NULL;
    emu_options o = {.db_path = db, .catalog_path = catalog, .enable_delay_ms = w->s->sandbox_delivery_delay_ms};
    char e[512];
    w->emu = emu_open(&o, e, sizeof e);
    if (!w->emu) {
        snprintf(err, errlen, "sandbox: %.400s%s", e,
                 strstr(e, "locked") ? " (is a 'wixr sandbox serve' using the same file?)" : "");
        return -1;
    }
    return 0;
}

static void wire_done(void *arg)
{
    wix_attempt_done(arg);
}

static void wire_send(void *self, wix_attempt *a)
{
    emu_wire *w = self;
    char err[512];
    if (wire_open(w, err, sizeof err) < 0) {
        a->have_error = 1;
        snprintf(a->error, sizeof a->error, "%.500s", err);
        a->final = 1; /* nothing to retry: the state file is not ours */
        wix_attempt_done(a);
        return;
    }
    emu_request rq = {.method = a->method, .path = a->path, .authorization = "sandbox", .account_id = a->account,
                      .body = a->body, .body_len = a->body_len};
    emu_response rs;
    emu_handle(w->emu, &rq, &rs);
    a->status = rs.drop ? 0 : rs.status;
    if (rs.drop) {
        a->have_error = 1;
        snprintf(a->error, sizeof a->error, "connection closed without an answer (emulated)");
    } else {
        buf_add(a->resp, rs.body, rs.body_len);
    }
    snprintf(a->request_id, sizeof a->request_id, "%s", rs.request_id);
    a->retry_after_ms = rs.retry_after * 1000L;
    int latency = rs.latency_ms;
    emu_response_free(&rs);
    if (latency > 0)
        sched_timer(w->sched, sched_now_ms() + latency, wire_done, a);
    else
        wix_attempt_done(a);
}

static int wire_admin(void *self, const char *method, const char *path, const char *body)
{
    emu_wire *w = self;
    char err[512];
    if (wire_open(w, err, sizeof err) < 0)
        return -1;
    emu_request rq = {.method = method, .path = path, .body = body, .body_len = body ? strlen(body) : 0};
    emu_response rs;
    emu_handle(w->emu, &rq, &rs);
    int st = rs.status;
    emu_response_free(&rs);
    return st;
}

static void wire_close(void *self)
{
    emu_wire *w = self;
    if (!w)
        return;
    if (w->emu)
        emu_close(w->emu);
    free(w);
}

int app_emu_wire(wix_wire *out, const wix_settings *s, sched_t *sched, char *err, size_t errlen)
{
    emu_wire *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    w->s = s;
    w->sched = sched;
    *out = (wix_wire){
        .kind = TRANSPORT_SANDBOX, .self = w, .send = wire_send, .admin = wire_admin, .close = wire_close};
    return 0;
}
