/*
 * cmd_sandbox.c -- `wixr sandbox serve`: the Resellers API emulator over HTTP.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../emulator/emu.h"
#include "../emulator/emu_http.h"
#include "../http/http.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr sandbox serve [options]\n"
    "\n"
    "Serves the Wix Resellers API emulator over HTTP/1.1 (keep-alive).\n"
    "\n"
    "Options:\n"
    "  --listen HOST:PORT     address to listen on (default 127.0.0.1:8470; port 0 picks a free one)\n"
    "  --db FILE|:memory:     SQLite state file (default .wixr/sandbox.db in this folder)\n"
    "  --catalog FILE         product catalog and seed accounts (default: the built-in one,\n"
    "                         config/catalog.yaml as it was when wixr was built)\n"
    "  --keys K1,K2           accept only these API keys (default: any non-empty key)\n"
    "  --delivery-delay MS    PENDING instances are delivered after MS milliseconds\n"
    "                         (default 0 = on the next request; -1 = never, use the admin API)\n"
    "  --seed N               seed for injected faults' dice (default: random)\n"
    "  --strict               answer 400 to request fields an endpoint does not have (default:\n"
    "                         ignore them, as Wix does, and name them in x-wixr-warning)\n"
    "  --port-file FILE       write the port actually bound to FILE once listening\n"
    "  --request-timeout MS   a request must arrive whole within MS of its connection opening\n"
    "                         (or of its previous answer), else the connection is closed (default 10000)\n"
    "  --max-connections N    connections open at once, in all (default 512)\n"
    "  --max-connections-per-ip N\n"
    "                         connections from one address at once (default 256)\n"
    "  --query-budget N       work units one Query Packages may spend under the emulator's lock\n"
    "                         before it is refused 400 (default 2000000; see README)\n"
    "  -h, --help             this help\n"
    "\n"
    "The admin API lives under /__admin/ (see README). Stop with Ctrl-C or SIGTERM.\n";

static int serve(int argc, char **argv)
{
    char host[64] = "127.0.0.1", err[1024];
    int port = 8470;
    const char *db = NULL, *port_file = NULL;
    emu_options o = {0};
    const char *listen = NULL, *seed = NULL;
    long long delay = 0, req_timeout = EMU_HTTP_REQUEST_TIMEOUT_MS, per_ip = EMU_HTTP_MAX_PER_IP;
    long long total = EMU_HTTP_MAX_CONNECTIONS;
    long long budget = EMU_QUERY_BUDGET;
    const cli_opt opts[] = {
        {"--listen", OPT_VALUE, &listen, 0, 0, NULL},
        {"--db", OPT_VALUE, &db, 0, 0, NULL},
        {"--catalog", OPT_VALUE, &o.catalog_path, 0, 0, NULL},
        {"--keys", OPT_VALUE, &o.api_keys, 0, 0, NULL},
        {"--delivery-delay", OPT_NUMBER, &delay, -1, LLONG_MAX, NULL},
        {"--seed", OPT_VALUE, &seed, 0, 0, NULL},
        {"--port-file", OPT_VALUE, &port_file, 0, 0, NULL},
        {"--strict", OPT_FLAG, &o.strict, 1, 0, NULL},
        {"--request-timeout", OPT_NUMBER, &req_timeout, 100, 3600000, NULL},
        {"--max-connections", OPT_NUMBER, &total, 1, 65536, NULL},
        {"--max-connections-per-ip", OPT_NUMBER, &per_ip, 1, 65536, NULL},
        {"--query-budget", OPT_NUMBER, &budget, 1, LLONG_MAX / 4, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr sandbox serve", usage, opts, NULL, 0, NULL};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    if (listen && http_listen_parse(listen, host, sizeof host, &port) < 0)
        return cli_usage_error(&cmd, "--listen: expected HOST:PORT, got '%s'", listen);
    o.enable_delay_ms = delay;
    o.query_budget = budget;
    if (seed) {
        char *end;
        errno = 0;
        o.seed = strtoull(seed, &end, 10);
        if (end == seed || *end || errno || seed[0] == '-')
            return cli_usage_error(&cmd, "--seed: expected a whole number, got '%s'", seed);
    }
    if (!db) {
        if (mkdir(".wixr", 0700) < 0 && errno != EEXIST) {
            fprintf(stderr, "wixr sandbox serve: cannot create .wixr/: %s\n", strerror(errno));
            return EXIT_WORK_FAILED;
        }
        db = ".wixr/sandbox.db";
    }
    o.db_path = db;

    /* Block the stop signals before any thread starts, then wait for one. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    emu_t *e = emu_open(&o, err, sizeof err);
    if (!e) {
        fprintf(stderr, "wixr sandbox serve: %s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (per_ip > total)
        per_ip = total; /* (one address cannot have more than there are) */
    emu_http_limits lim = {.request_timeout_ms = req_timeout, .max_connections_per_ip = (int)per_ip,
                           .max_connections = (int)total};
    emu_server *srv = emu_http_start_limits(e, host, port, &lim, err, sizeof err);
    if (!srv) {
        fprintf(stderr, "wixr sandbox serve: %s\n", err);
        emu_close(e);
        return EXIT_WORK_FAILED;
    }
    port = emu_http_port(srv);
    char url[96];
    snprintf(url, sizeof url, "http://%s:%d", host, port);
    emu_note_url(e, url);
    if (port_file) {
        FILE *f = fopen(port_file, "w");
        if (!f || fprintf(f, "%d\n", port) < 0 || fclose(f) != 0) {
            fprintf(stderr, "wixr sandbox serve: cannot write --port-file %s\n", port_file);
            emu_http_stop(srv);
            emu_close(e);
            return EXIT_WORK_FAILED;
        }
    }
    fprintf(stderr, "wixr sandbox: Resellers API emulator on %s (state: %s%s)%s\n", url, db,
            o.catalog_path ? "" : ", built-in catalog", o.strict ? ", strict" : "");
    int sig = 0;
    sigwait(&stop, &sig);
    fprintf(stderr, "wixr sandbox: stopping (%s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    emu_http_stop(srv);
    emu_close(e);
    return 0;
}

int cmd_sandbox(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    if (!strcmp(argv[1], "serve"))
        return serve(argc - 1, argv + 1);
    const cli_command cmd = {"wixr sandbox", usage, NULL, NULL, 0, NULL};
    return cli_usage_error(&cmd, "unknown subcommand '%s' (try 'wixr sandbox serve')", argv[1]);
}
