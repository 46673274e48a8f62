/*
 * cmd_check.c -- `wixr check`: validates the configuration and compiles
 * every hook script, listing every problem of the first class that has any.
 */
#include <stdio.h>
#include <string.h>

#include "../runtime/hooks.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr check [--config FILE]\n"
    "\n"
    "Validates the configuration (unknown keys, types, ${ENV} references, script paths)\n"
    "and, when it is valid, loads and compiles every enabled hook script in its sandbox.\n"
    "Every problem is listed as file:line:col: message.\n"
    "Exit codes: 0 all good, 2 usage, 3 problems found.\n";

int cmd_check(int argc, char **argv)
{
    const char *config = NULL;
    const cli_opt opts[] = {{"--config", OPT_VALUE, &config, 0, 0, NULL}, {NULL, OPT_FLAG, NULL, 0, 0, NULL}};
    const cli_command cmd = {"wixr check", usage, opts, NULL, 0, NULL};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    char err[16384];
    wixr_config cfg;
    if (config_load(&cfg, config, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (!cfg.path) {
        fprintf(stderr, "wixr check: no configuration found (give --config, set WIXR_CONFIG, or create wixr.yaml)\n");
        config_free(&cfg);
        return EXIT_BAD_INPUT;
    }
    wixr_host *h = host_new(&cfg, 0, err, sizeof err);
    if (!h) {
        fprintf(stderr, "wixr check: %s\n", err);
        config_free(&cfg);
        return EXIT_BAD_INPUT;
    }
    buf_t errors;
    buf_init(&errors, 0);
    hook_table *t = hooks_load(h, &cfg, &errors);
    int rc = 0;
    if (!t) {
        fprintf(stderr, "%s\n", buf_cstr(&errors));
        rc = EXIT_BAD_INPUT;
    } else {
        int enabled = 0;
        for (int i = 0; i < t->n; i++)
            enabled += t->rt[i] != NULL;
        printf("%s: ok (%d hook%s, %d enabled, transport %s)\n", cfg.path, cfg.nhooks, cfg.nhooks == 1 ? "" : "s",
               enabled, config_transport_name(wix_client_transport(h->client)));
    }
    buf_free(&errors);
    hooks_free(t);
    host_free(h);
    config_free(&cfg);
    return rc;
}
