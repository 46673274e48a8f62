/*
 * cmd_serve.c -- `wixr serve` and `wixr reload`.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../config/config.h"
#include "../hooks/keys.h"
#include "../runtime/host.h"
#include "../serve/serve.h"
#include "cli.h"
#include "opts.h"

static const char serve_usage[] =
    "usage: wixr serve [--config FILE] [--listen HOST:PORT] [--insecure-no-auth]\n"
    "\n"
    "Runs the provisioning service: POST /v1/events/NAME answers 202 once the event is\n"
    "durably in the journal; events run through their hooks (same order key: one at a\n"
    "time, in order), failures are retried with backoff and end 'dead' after the last\n"
    "attempt -- a permanent one (a 4xx but 408/429, wix.permanent) at once, unless the\n"
    "hook's retry: says otherwise; rules reload when files change, on SIGHUP or 'wixr\n"
    "reload' (wix: and most of serve: need a restart). SIGTERM stops intake, turns\n"
    "/healthz to 503 draining and lets runs in flight finish (serve.drain_ms).\n"
    "Logs: one JSON object per line on stderr.\n"
    "\n"
    "Routes: POST /v1/events/NAME (body: the event's data; id from X-Event-Id or\n"
    "\"event_id\"), GET /v1/events/ID, GET /healthz (no auth), GET /metrics.\n"
    "Auth: Authorization: Bearer $WIXR_TOKEN on every route but /healthz.\n"
    "\n"
    "Options:\n"
    "  --config FILE        configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  --listen HOST:PORT   overrides serve.listen (default 127.0.0.1:8480; port 0 picks one,\n"
    "                       written to <state_dir>/serve.port)\n"
    "  --insecure-no-auth   run without WIXR_TOKEN (loopback addresses only)\n"
    "  -h, --help           this help\n"
    "Exit codes: 0 stopped cleanly, 1 failed, 2 usage, 3 bad configuration.\n";

/* The installation key, checked before the service starts: one it could not
 * use would fail every event's first mutating call, run after run, until it
 * went dead. 1 (and one error log line naming the file) when refused. A
 * configuration that does not load is left to serve_main to report. */
static int installation_key_refused(const char *config_path)
{
    wixr_config cfg;
    char err[4400];
    if (config_load(&cfg, config_path, err, sizeof err) < 0)
        return 0;
    int refused = cfg.path && hooks_install_key_check(cfg.state_dir, err, sizeof err) < 0;
    config_free(&cfg);
    if (refused) {
        char msg[4500];
        snprintf(msg, sizeof msg, "wixr serve: %s", err);
        host_log("error", msg, NULL);
    }
    return refused;
}

int cmd_serve(int argc, char **argv)
{
    serve_options o = {0};
    const cli_opt opts[] = {
        {"--config", OPT_VALUE, &o.config_path, 0, 0, NULL},
        {"--listen", OPT_VALUE, &o.listen, 0, 0, NULL},
        {"--insecure-no-auth", OPT_FLAG, &o.insecure_no_auth, 1, 0, NULL},
        {"--test-faults", OPT_FLAG, &o.test_faults, 1, 0, NULL}, /* (hidden: the isolation tests' faults) */
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr serve", serve_usage, opts, NULL, 0, NULL};
    int rc = cli_parse(&cmd, argc, argv, NULL);
    if (rc != CLI_GO)
        return rc;
    if (installation_key_refused(o.config_path))
        return EXIT_WORK_FAILED;
    return serve_main(&o);
}

static const char reload_usage[] =
    "usage: wixr reload [--config FILE]\n"
    "\n"
    "Asks the running 'wixr serve' of this configuration (its pid is in\n"
    "<state_dir>/serve.pid) to reload its rules, as SIGHUP does. The service keeps\n"
    "the old rules if any file fails to load; see its log or GET /healthz.\n";

int cmd_reload(int argc, char **argv)
{
    const char *config = NULL;
    const cli_opt opts[] = {{"--config", OPT_VALUE, &config, 0, 0, NULL}, {NULL, OPT_FLAG, NULL, 0, 0, NULL}};
    const cli_command cmd = {"wixr reload", reload_usage, opts, NULL, 0, NULL};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    char err[4096];
    wixr_config cfg;
    if (config_load(&cfg, config, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return EXIT_BAD_INPUT;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/serve.pid", cfg.state_dir);
    config_free(&cfg);
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (!f || fscanf(f, "%ld", &pid) != 1 || pid <= 0) {
        if (f)
            fclose(f);
        fprintf(stderr, "wixr reload: no running service found (%s is missing)\n", path);
        return EXIT_WORK_FAILED;
    }
    fclose(f);
    if (kill((pid_t)pid, SIGHUP) < 0) {
        fprintf(stderr, "wixr reload: cannot signal pid %ld: %s\n", pid, strerror(errno));
        return EXIT_WORK_FAILED;
    }
    printf("reload requested (pid %ld)\n", pid);
    return 0;
}
