/*
 * app.c -- a host wired with the wix module and its transport (see app.h).
 */
#include "app.h"

#include <stdio.h>
#include <stdlib.h>

#include "../wix/wix_core.h"

/* What every state of a wired host preloads (besides cjson and lua/). */
static const luaL_Reg app_preload[] = {{"wix.core", luaopen_wix_core}, {NULL, NULL}};

wixr_host *host_new(const wixr_config *cfg, int dry_run, char *err, size_t errlen)
{
    wixr_host *h = host_open(cfg, dry_run, app_preload, err, errlen);
    if (!h)
        return NULL;
    wix_wire wire;
    wix_transport kind = wix_resolve_transport(&cfg->wix);
    int rc = kind == TRANSPORT_HTTP ? wix_http_wire(&wire, &cfg->wix, h->sched, err, errlen)
                                    : app_emu_wire(&wire, &cfg->wix, h->sched, err, errlen);
    if (rc < 0 || !(h->client = wix_client_new(&cfg->wix, h->sched, &wire, err, errlen))) {
        host_close(h);
        return NULL;
    }
    if (cfg->wix.transport == TRANSPORT_AUTO && kind == TRANSPORT_SANDBOX)
        fprintf(stderr, "wixr: no Wix API key configured (WIX_API_KEY); using the embedded sandbox emulator (%s)\n",
                cfg->wix.sandbox_db);
    return h;
}

void host_free(wixr_host *h)
{
    if (!h)
        return;
    struct wix_client *c = h->client;
    /* Tasks hold Lua references and the client's calls: the scheduler and
     * the state go first; the client holds neither. */
    host_close(h);
    wix_client_free(c);
}
