/*
 * Unit tests of the one protected boundary between Lua and C.
 *
 * A hook run with API answers in flight (a query in the handler and one in a
 * wix.spawn task), run again and again with every allocation point of the
 * hook's state refused in turn -- from the n-th allocation on, as at the
 * memory cap -- over both transports (the in-process emulator, and HTTP to
 * the emulator served from this process). Whatever point fails, the host
 * survives, the run ends exactly once, as ok or as a memory failure, and a
 * run after it (on the state rebuilt after the broken cap) succeeds.
 *
 * And error values that fight back: a task nobody waits for fails with an
 * error whose __tostring raises (an error whose __tostring raises), loops,
 * or allocates without end: each becomes text, the run goes on.
 *
 * WIXR_BOUNDARY_STRIDE=N tries every N-th allocation point only (valgrind).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <unistd.h>

#include "check.h"
#include "config/config.h"
#include "emulator/emu.h"
#include "emulator/emu_http.h"
#include "app/app.h"
#include "hooks/sandbox.h"

static char dir[] = "/tmp/wixr-boundary-XXXXXX";

static void write_file(const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static const char answers_lua[] =
    "local wix = require \"wix\"\n"
    "return function(event, ctx)\n"
    "  local t = wix.spawn(function() return wix.packages.query{limit = 3} end)\n"
    "  local page = wix.packages.query{limit = 3}\n"
    "  local keep = {}\n"
    "  for i = 1, 50 do keep[i] = {i = i, s = string.rep(\"x\", i)} end\n"
    "  local other = t:wait()\n"
    "  return {n = #page.packages, m = #other.packages, kept = #keep}\n"
    "end\n";

/* error values whose __tostring fights back, in tasks nobody waits for */
static const char hostile_lua[] =
    "local wix = require \"wix\"\n"
    "local function raises() error(setmetatable({}, {__tostring = function() error(\"again\") end})) end\n"
    "return function(event, ctx)\n"
    "  local kind = event.kind\n"
    "  local mt\n"
    "  if kind == \"raise\" then mt = {__tostring = raises}\n"
    "  elseif kind == \"loop\" then mt = {__tostring = function() while true do end end}\n"
    "  elseif kind == \"pcall_loop\" then mt = {__tostring = function() while true do pcall(error, 1) end end}\n"
    "  elseif kind == \"alloc\" then mt = {__tostring = function() local t = {} for i = 1, 1e9 do t[i] = {i} end end}\n"
    "  elseif kind == \"yield\" then mt = {__tostring = function() wix.sleep(1) return \"slept\" end}\n"
    "  else mt = {__tostring = function() return \"plain text\" end} end\n"
    "  wix.spawn(function() error(setmetatable({}, mt)) end)\n"
    "  wix.sleep(5)\n"
    "  if event.handler_too then error(setmetatable({}, mt)) end\n"
    "  return {kind = kind}\n"
    "end\n";

typedef struct seen {
    int calls;
    int ok;
    enum run_outcome outcome;
    char error[512];
} seen;

static void run_done(hook_run *r, void *arg)
{
    seen *s = arg;
    s->calls++;
    s->ok = r->ok;
    s->outcome = r->outcome;
    snprintf(s->error, sizeof s->error, "%s", r->error ? r->error : "");
}

/* One run of k on event data; the scheduler runs until everything ends. */
static seen run_once(wixr_host *h, hook_rt *k, const char *data)
{
    seen s = {0};
    hook_run *r = hook_start(k, "t.ev", "ev-1", data, 0, NULL, run_done, &s);
    sched_run(h->sched);
    CHECK(r != NULL);
    hook_run_free(r);
    return s;
}

static int stride(void)
{
    const char *v = getenv("WIXR_BOUNDARY_STRIDE");
    int n = v ? atoi(v) : 1;
    return n > 0 ? n : 1;
}

/* Writes the config, loads it, makes a host and loads its first hook;
 * NULL (a failed check, everything freed) when any step fails. */
static hook_rt *open_hook(const char *name, const char *yaml, wixr_config *cfg, wixr_host **h)
{
    char path[512], err[1024];
    write_file(name, yaml);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *h = NULL;
    if (config_load(cfg, path, err, sizeof err) < 0) {
        fprintf(stderr, "config: %s\n", err);
        CHECK(0);
        return NULL;
    }
    *h = host_new(cfg, 0, err, sizeof err);
    hook_rt *k = *h ? hook_load(*h, cfg, &cfg->hooks[0], err, sizeof err) : NULL;
    CHECK(k != NULL);
    if (!k) {
        fprintf(stderr, "%s\n", err);
        host_free(*h);
        config_free(cfg);
    }
    return k;
}

/* Every allocation point of a run with answers in flight, refused in turn. */
static void every_allocation_point(const char *transport, const char *base_url)
{
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "wix:\n  transport: %s\n  rate_limit: {requests: 0}\n%s%s%s  sandbox:\n    db: \":memory:\"\n"
             "hooks:\n  t.ev:\n    - script: answers.lua\n      limits: {memory_mb: 8}\n",
             transport, base_url ? "  base_url: \"" : "", base_url ? base_url : "", base_url ? "\"\n" : "");
    wixr_config cfg;
    wixr_host *h;
    hook_rt *k = open_hook("answers.yaml", yaml, &cfg, &h);
    if (!k)
        return;
    /* a clean run first: it works, and says how many allocations a run makes */
    sandbox_fail_allocations(k, (long long)1 << 60);
    seen s = run_once(h, k, "{}");
    long long total = k->allocs;
    CHECK_INT(s.calls, 1);
    CHECK(s.ok);
    CHECK(total > 50);
    int memory_failures = 0, oks = 0, others = 0, step = stride();
    for (long long n = 1; n <= total + 1; n += step) {
        sandbox_fail_allocations(k, n);
        s = run_once(h, k, "{}");
        if (s.calls != 1) {
            fprintf(stderr, "%s: refusing allocation %lld on: the run ended %d times\n", transport, n, s.calls);
            CHECK_INT(s.calls, 1);
        }
        if (s.ok)
            oks++;
        else if (s.outcome == RUN_MEMORY)
            memory_failures++;
        else {
            /* a memory error the script itself caught and turned into another (wix.lua's pcall in a task) */
            others++;
            if (!strstr(s.error, "memory"))
                fprintf(stderr, "%s: refusing allocation %lld on: %s\n", transport, n, s.error);
            CHECK(strstr(s.error, "memory") != NULL);
        }
        /* and the next run, without refusals, works (on a rebuilt state when the cap broke) */
        sandbox_fail_allocations(k, 0);
        seen again = run_once(h, k, "{}");
        if (!again.ok)
            fprintf(stderr, "%s: the run after refusing allocation %lld on failed: %s\n", transport, n, again.error);
        CHECK(again.ok);
    }
    printf("%s: %lld allocation points, every %d refused in turn: %d memory failures, %d other failures naming "
           "memory, %d ok; %lld states rebuilt\n",
           transport, total, step, memory_failures, others, oks, k->rebuilds);
    CHECK(memory_failures > 0);
    CHECK(k->rebuilds >= memory_failures);
    hook_free(k);
    host_free(h);
    config_free(&cfg);
}

static void hostile_error_values(void)
{
    wixr_config cfg;
    wixr_host *h;
    hook_rt *k = open_hook("hostile.yaml",
                           "wix:\n  transport: sandbox\n  rate_limit: {requests: 0}\n  sandbox:\n    db: \":memory:\"\n"
                           "hooks:\n  t.ev:\n    - script: hostile.lua\n      limits: {memory_mb: 16}\n",
                           &cfg, &h);
    if (!k)
        return;
    static const char *const kinds[] = {"raise", "loop", "pcall_loop", "alloc", "yield", "plain", NULL};
    for (int i = 0; kinds[i]; i++) {
        char data[128];
        /* the spawned task's error alone: the run itself succeeds */
        snprintf(data, sizeof data, "{\"kind\":\"%s\"}", kinds[i]);
        seen s = run_once(h, k, data);
        CHECK_INT(s.calls, 1);
        if (!s.ok)
            fprintf(stderr, "hostile %s: %s\n", kinds[i], s.error);
        CHECK(s.ok);
        /* the handler's own error: the run fails with text, never aborts */
        snprintf(data, sizeof data, "{\"kind\":\"%s\",\"handler_too\":true}", kinds[i]);
        s = run_once(h, k, data);
        CHECK_INT(s.calls, 1);
        CHECK(!s.ok);
        CHECK(s.error[0] != '\0');
        if (!strcmp(kinds[i], "plain"))
            CHECK(strstr(s.error, "plain text") != NULL);
        else if (!strcmp(kinds[i], "alloc"))
            CHECK(strstr(s.error, "table value") != NULL || strstr(s.error, "memory") != NULL);
        else
            CHECK(strstr(s.error, "error object is a table value") != NULL);
    }
    hook_free(k);
    host_free(h);
    config_free(&cfg);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 2;
    }
    write_file("answers.lua", answers_lua);
    write_file("hostile.lua", hostile_lua);
    unsetenv("WIX_API_KEY");
    unsetenv("WIX_BASE_URL");
    unsetenv("WIX_ACCOUNT_ID");
    /* the runs' log lines (hundreds of stopped tasks) go to a file; failed checks are counted all the same */
    char logpath[600];
    snprintf(logpath, sizeof logpath, "%s/runs.log", dir);
    int saved_err = dup(2), logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (logfd >= 0) {
        dup2(logfd, 2);
        close(logfd);
    }

    long long t0 = sched_now_ms();
    hostile_error_values();
    printf("hostile error values: %lld ms\n", sched_now_ms() - t0);
    t0 = sched_now_ms();
    every_allocation_point("sandbox", NULL);
    printf("sandbox: %lld ms\n", sched_now_ms() - t0);
    t0 = sched_now_ms();

    /* HTTP: the emulator served by this process on a free port */
    char err[512];
    emu_options eo = {.db_path = ":memory:", .enable_delay_ms = -1, .seed = 1};
    emu_t *e = emu_open(&eo, err, sizeof err);
    CHECK(e != NULL);
    emu_server *srv = e ? emu_http_start(e, "127.0.0.1", 0, err, sizeof err) : NULL;
    CHECK(srv != NULL);
    if (srv) {
        char url[64];
        snprintf(url, sizeof url, "http://127.0.0.1:%d", emu_http_port(srv));
        setenv("WIX_API_KEY", "boundary-test-key", 1);
        setenv("WIX_ACCOUNT_ID", "11111111-2222-4333-8444-555555555555", 1); /* the emulator's seeded reseller */
        every_allocation_point("http", url);
        unsetenv("WIX_API_KEY");
        unsetenv("WIX_ACCOUNT_ID");
        emu_http_stop(srv);
    } else {
        fprintf(stderr, "emulator: %s\n", err);
    }
    emu_close(e);
    printf("http: %lld ms\n", sched_now_ms() - t0);

    fflush(stderr);
    if (saved_err >= 0) {
        dup2(saved_err, 2);
        close(saved_err);
    }
    if (check_failed) { /* what the runs said, to see why */
        char show[700];
        snprintf(show, sizeof show, "tail -n 40 %s >&2", logpath);
        if (system(show) != 0)
            fprintf(stderr, "(no log)\n");
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_report();
}
