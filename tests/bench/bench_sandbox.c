/*
 * bench_sandbox.c -- per-run cost of a sandboxed hook run against a bare
 * lua_pcall of the same handler. Prints one table.
 *   bench_sandbox [RUNS]
 */
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "app/app.h"
#include "hooks/hooks.h"

static const char handler[] = "return function(event, ctx) return { ok = true, n = event.n } end\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

typedef struct counter {
    long done, ok;
} counter;

static void run_done(hook_run *r, void *arg)
{
    counter *c = arg;
    c->done++;
    c->ok += r->ok;
    hook_run_free(r);
}

int main(int argc, char **argv)
{
    long runs = argc > 1 ? atol(argv[1]) : 200000;
    char dir[] = "/tmp/wixr-bench-XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    char script[256], cfgpath[256], err[4096];
    snprintf(script, sizeof script, "%s/h.lua", dir);
    snprintf(cfgpath, sizeof cfgpath, "%s/wixr.yaml", dir);
    FILE *f = fopen(script, "w");
    fputs(handler, f);
    fclose(f);
    f = fopen(cfgpath, "w");
    fputs("wix: {transport: sandbox, sandbox: {db: ':memory:'}}\nhooks:\n  e:\n    - script: h.lua\n", f);
    fclose(f);

    /* Bare: one plain state, the handler called with lua_pcall. */
    lua_State *L = luaL_newstate();
    luaL_openlibs(L);
    luaL_loadstring(L, handler);
    lua_call(L, 0, 1);
    double t0 = now_s();
    for (long i = 0; i < runs; i++) {
        lua_pushvalue(L, 1);
        lua_createtable(L, 0, 1);
        lua_pushinteger(L, i);
        lua_setfield(L, -2, "n");
        lua_createtable(L, 0, 0);
        if (lua_pcall(L, 2, 1, 0) != LUA_OK)
            return 1;
        lua_pop(L, 1);
    }
    double bare = now_s() - t0;
    lua_close(L);

    /* Sandboxed: a hook run each (event JSON in, result JSON out, limits on). */
    wixr_config cfg;
    if (config_load(&cfg, cfgpath, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    wixr_host *h = host_new(&cfg, 0, err, sizeof err);
    buf_t errors;
    buf_init(&errors, 0);
    hook_table *t = h ? hooks_load(h, &cfg, &errors) : NULL;
    if (!t) {
        fprintf(stderr, "%s%s\n", err, buf_cstr(&errors));
        return 1;
    }
    counter c = {0};
    t0 = now_s();
    for (long i = 0; i < runs; i++) {
        char ev[64];
        snprintf(ev, sizeof ev, "{\"n\":%ld}", i);
        hook_start(t->rt[0], "e", NULL, ev, 0, NULL, run_done, &c);
        if ((i & 255) == 255)
            sched_run(h->sched);
    }
    sched_run(h->sched);
    double sandboxed = now_s() - t0;
    if (c.ok != runs) {
        fprintf(stderr, "only %ld of %ld runs succeeded\n", c.ok, runs);
        return 1;
    }
    printf("\nPer-run overhead of the hook sandbox (%ld runs of a trivial handler)\n", runs);
    printf("%-52s %12s %12s %8s\n", "figure", "sandboxed", "bare pcall", "ratio");
    printf("%-52s %12.2f %12.2f %7.1fx\n", "microseconds per run", sandboxed * 1e6 / runs, bare * 1e6 / runs,
           sandboxed / bare);
    printf("%-52s %12.0f %12.0f\n", "runs per second", runs / sandboxed, runs / bare);
    hooks_free(t);
    host_free(h);
    config_free(&cfg);
    buf_free(&errors);
    unlink(script);
    unlink(cfgpath);
    rmdir(dir);
    return 0;
}
