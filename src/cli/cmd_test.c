/*
 * cmd_test.c -- `wixr test [PATH...]`: runs *_test.lua files with the
 * wixr.testing runner, on the in-process emulator (in memory; never Wix).
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../runtime/host.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr test [PATH...] [--filter TEXT] [--quiet]\n"
    "\n"
    "Runs Lua test files: each PATH is a *_test.lua file or a folder searched\n"
    "recursively for them (default: the current folder). A test file declares cases\n"
    "with describe/test and checks them with eq, neq, truthy, falsy, has, raises or\n"
    "assert; policy(path) loads a hook script and fake_wix() records its calls (see\n"
    "README). The wix module runs on a fresh in-memory emulator, never on Wix.\n"
    "\n"
    "Options:\n"
    "  --filter TEXT   run only the cases whose name contains TEXT\n"
    "  --quiet         print only failures and the totals\n"
    "  -h, --help      this help\n"
    "\n"
    "Prints each case, then 'N passed, N failed'. Exit codes: 0 all passed, 1 a case\n"
    "failed, 2 usage, 3 no test file found.\n";

typedef struct files {
    char **v;
    int n, cap;
} files;

static int add_file(files *f, const char *p)
{
    if (f->n == f->cap) {
        f->cap = f->cap ? f->cap * 2 : 32;
        char **nv = realloc(f->v, (size_t)f->cap * sizeof *nv);
        if (!nv)
            return -1;
        f->v = nv;
    }
    f->v[f->n] = strdup(p);
    return f->v[f->n++] ? 0 : -1;
}

static int is_test_file(const char *name)
{
    size_t n = strlen(name);
    return n > 9 && !strcmp(name + n - 9, "_test.lua");
}

static void walk(files *f, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) < 0)
            continue;
        if (S_ISDIR(st.st_mode) && strcmp(e->d_name, "build") && strncmp(e->d_name, "build-", 6))
            walk(f, path);
        else if (S_ISREG(st.st_mode) && is_test_file(e->d_name))
            add_file(f, path);
    }
    closedir(d);
}

static int cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

typedef struct outcome {
    int finished, failed, error;
} outcome;

static void done(sched_task *t, lua_State *co, int status, void *arg)
{
    (void)t;
    outcome *o = arg;
    o->finished = 1;
    if (status != LUA_OK) {
        fprintf(stderr, "wixr test: %s\n", host_error_text(co, -1));
        o->error = 1;
        return;
    }
    o->failed = (int)lua_tointeger(co, 1);
}

int cmd_test(int argc, char **argv)
{
    files f = {0};
    const char *filter = NULL;
    int quiet = 0, npaths = 0;
    const cli_opt opts[] = {
        {"--filter", OPT_VALUE, &filter, 0, 0, NULL},
        {"--quiet", OPT_FLAG, &quiet, 1, 0, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const char **paths = calloc((size_t)argc, sizeof *paths);
    if (!paths)
        return EXIT_WORK_FAILED;
    const cli_command cmd = {"wixr test", usage, opts, paths, argc, "PATH"};
    int prc = cli_parse(&cmd, argc, argv, &npaths);
    if (prc != CLI_GO) {
        free(paths);
        return prc;
    }
    for (int i = 0; i < npaths; i++) {
        struct stat st;
        if (stat(paths[i], &st) < 0) {
            fprintf(stderr, "wixr test: %s: no such file or folder\n", paths[i]);
            free(paths);
            free(f.v);
            return EXIT_USAGE;
        }
        if (S_ISDIR(st.st_mode)) {
            size_t before = (size_t)f.n;
            walk(&f, paths[i]);
            qsort(f.v + before, (size_t)f.n - before, sizeof *f.v, cmp);
        } else {
            add_file(&f, paths[i]);
        }
    }
    free(paths);
    int had_paths = npaths > 0;
    if (!had_paths) {
        walk(&f, ".");
        qsort(f.v, (size_t)f.n, sizeof *f.v, cmp);
    }
    if (f.n == 0) {
        fprintf(stderr, "wixr test: no *_test.lua file found\n");
        free(f.v);
        return EXIT_BAD_INPUT;
    }
    /* Tests never reach Wix: the in-process emulator, in memory, no rate limit. */
    char err[1024];
    wixr_config cfg;
    int rc = EXIT_WORK_FAILED;
    if (config_load(&cfg, "/dev/null", err, sizeof err) < 0) {
        fprintf(stderr, "wixr test: %s\n", err);
        goto out;
    }
    cfg.wix.transport = TRANSPORT_SANDBOX;
    free(cfg.wix.sandbox_db);
    cfg.wix.sandbox_db = strdup(":memory:");
    cfg.wix.rate_limit = 0;
    wixr_host *h = host_new(&cfg, 0, err, sizeof err);
    if (!h) {
        fprintf(stderr, "wixr test: %s\n", err);
        config_free(&cfg);
        goto out;
    }
    lua_State *L = h->L;
    outcome o = {0};
    lua_getglobal(L, "require");
    lua_pushliteral(L, "wixr.testing");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "wixr test: %s\n", lua_tostring(L, -1));
    } else {
        lua_getfield(L, -1, "run");
        lua_remove(L, -2);
        lua_createtable(L, f.n, 0);
        for (int i = 0; i < f.n; i++) {
            lua_pushstring(L, f.v[i]);
            lua_rawseti(L, -2, i + 1);
        }
        lua_createtable(L, 0, 2);
        if (filter) {
            lua_pushstring(L, filter);
            lua_setfield(L, -2, "filter");
        }
        lua_pushboolean(L, !quiet);
        lua_setfield(L, -2, "verbose");
        if (sched_spawn(h->sched, L, 2, done, &o))
            sched_run(h->sched);
        if (!o.finished)
            fprintf(stderr, "wixr test: a test is waiting for something that will never happen\n");
        else if (!o.error)
            rc = o.failed ? EXIT_WORK_FAILED : 0;
    }
    host_free(h);
    config_free(&cfg);
out:
    for (int i = 0; i < f.n; i++)
        free(f.v[i]);
    free(f.v);
    return rc;
}
