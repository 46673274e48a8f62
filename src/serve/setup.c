/*
 * setup.c -- the worker processes' start (see setup.h).
 */
#define _GNU_SOURCE
#include "setup.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "../util/buf.h"

/* A worker's environment: what the wix: settings and the configuration's
 * ${NAME} references need, and the locale and sanitizer settings; never
 * WIXR_TOKEN (the service's own secret). With the supervisor's emulator,
 * WIX_API_KEY is that emulator's key. */
static int env_wanted(const char *entry, const char *config_text)
{
    static const char *const keep[] = {"PATH=", "LANG=", "LC_", "TZ=", "WIXR_HOME=", "WIX_", "ASAN_OPTIONS=",
                                       "UBSAN_OPTIONS=", "LSAN_OPTIONS=", NULL};
    if (!strncmp(entry, "WIXR_TOKEN=", 11))
        return 0;
    for (int i = 0; keep[i]; i++)
        if (!strncmp(entry, keep[i], strlen(keep[i])))
            return 1;
    const char *eq = strchr(entry, '=');
    if (!eq || !config_text)
        return 0;
    size_t n = (size_t)(eq - entry);
    for (const char *p = strstr(config_text, "${"); p; p = strstr(p + 2, "${"))
        if (!strncmp(p + 2, entry, n) && (p[2 + n] == '}' || p[2 + n] == ':'))
            return 1;
    return 0;
}

static char **worker_environment(const wixr_config *c, const char *emu_key)
{
    extern char **environ;
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = calloc(n + 2, sizeof *env);
    if (!env)
        return NULL;
    size_t len = 0;
    FILE *f = c->path ? fopen(c->path, "r") : NULL;
    char *text = f ? buf_read_stream(f, 4 * 1024 * 1024, &len, &(int){0}) : NULL;
    if (f)
        fclose(f);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (emu_key && (!strncmp(environ[i], "WIX_API_KEY=", 12) || !strncmp(environ[i], "WIX_BASE_URL=", 13)))
            continue;
        if (env_wanted(environ[i], text))
            env[k++] = strdup(environ[i]);
    }
    if (emu_key && asprintf(&env[k], "WIX_API_KEY=%s", emu_key) >= 0)
        k++;
    free(text);
    return env;
}

/* wix.transport sandbox: one emulator for every worker, in this process,
 * behind a loopback port and a key made for this start. */
static int start_emulator(worker_setup *st, const wixr_config *c, char *key, size_t keylen, char *err, size_t errlen)
{
    const wix_settings *ws = &c->wix;
    const char *db = ws->sandbox_db;
    if (strcmp(db, ":memory:") != 0) {
        char dir[PATH_MAX];
        snprintf(dir, sizeof dir, "%s", db);
        char *slash = strrchr(dir, '/');
        if (slash && slash != dir) {
            *slash = '\0';
            if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                snprintf(err, errlen, "sandbox: cannot create %s: %s", dir, strerror(errno));
                return -1;
            }
        }
    }
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r || keylen < 2 * sizeof r + 1) {
        snprintf(err, errlen, "no randomness for the emulator's key");
        return -1;
    }
    for (size_t i = 0; i < sizeof r; i++)
        snprintf(key + 2 * i, 3, "%02x", r[i]);
    /* the catalog named by default is the compiled-in one (as the client's sandbox does) */
    const char *catalog = ws->sandbox_catalog, *home = getenv("WIXR_HOME");
    char home_catalog[PATH_MAX + 32];
    snprintf(home_catalog, sizeof home_catalog, "%s/config/catalog.yaml", home && *home ? home : WIXR_HOME);
    if (catalog && !strcmp(catalog, home_catalog))
        catalog = NULL;
    emu_options eo = {.db_path = db, .catalog_path = catalog, .api_keys = key,
                      .enable_delay_ms = ws->sandbox_delivery_delay_ms};
    char e[512];
    if (!(st->emu = emu_open(&eo, e, sizeof e))) {
        snprintf(err, errlen, "sandbox: %s%s", e, strstr(e, "locked") ? " (is a 'wixr sandbox serve' using the same file?)" : "");
        return -1;
    }
    emu_http_limits lim = {.request_timeout_ms = 0, .max_connections_per_ip = 0};
    if (!(st->srv = emu_http_start_limits(st->emu, "127.0.0.1", 0, &lim, e, sizeof e))) {
        snprintf(err, errlen, "sandbox: %s", e);
        return -1;
    }
    snprintf(st->url, sizeof st->url, "http://127.0.0.1:%d", emu_http_port(st->srv));
    return 0;
}

/* The largest wall_ms of the enabled hooks. */
static long largest_wall_ms(const wixr_config *c)
{
    long m = 0;
    for (int i = 0; i < c->nhooks; i++)
        if (c->hooks[i].enabled && c->hooks[i].limits.wall_ms > m)
            m = c->hooks[i].limits.wall_ms;
    return m;
}

static long worker_memory_mb(const wixr_config *c)
{
    if (c->serve.worker_memory_mb)
        return c->serve.worker_memory_mb;
    long mb = 256;
    for (int i = 0; i < c->nhooks; i++)
        if (c->hooks[i].enabled)
            mb += c->hooks[i].limits.memory_mb;
    return mb;
}

int worker_setup_make(worker_setup *st, const wixr_config *c, const char *const *extra, char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    char key[64] = "";
    if (c->wix.transport == TRANSPORT_SANDBOX && start_emulator(st, c, key, sizeof key, err, errlen) < 0)
        return -1;
    st->memory_mb = worker_memory_mb(c);
    st->hard_ms = c->serve.hard_deadline_ms ? c->serve.hard_deadline_ms : 2 * largest_wall_ms(c);
    if (st->hard_ms < 1000)
        st->hard_ms = 1000;
    char memarg[32];
    snprintf(memarg, sizeof memarg, "%ld", st->memory_mb * 2 + 512); /* the address space: the resident ceiling is below */
    const char *args[32];
    int n = 0;
    args[n++] = "--config";
    args[n++] = c->path;
    args[n++] = "--memory-mb";
    args[n++] = memarg;
    if (c->wix.rate_limit > 0)
        args[n++] = "--rate-gate";
    if (st->url[0]) {
        args[n++] = "--wix-url";
        args[n++] = st->url;
    }
    for (int i = 0; extra && extra[i] && n < 31; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    st->args = calloc((size_t)n + 1, sizeof *st->args);
    st->env = worker_environment(c, key[0] ? key : NULL);
    int oom = !st->args || !st->env;
    for (int i = 0; !oom && i < n; i++)
        oom = !(st->args[i] = strdup(args[i]));
    if (oom) {
        snprintf(err, errlen, "out of memory");
        worker_setup_free(st);
        return -1;
    }
    return 0;
}

void worker_setup_free(worker_setup *st)
{
    if (st->srv)
        emu_http_stop(st->srv);
    if (st->emu)
        emu_close(st->emu);
    for (int i = 0; st->args && st->args[i]; i++)
        free(st->args[i]);
    free(st->args);
    for (int i = 0; st->env && st->env[i]; i++)
        free(st->env[i]);
    free(st->env);
    memset(st, 0, sizeof *st);
}
