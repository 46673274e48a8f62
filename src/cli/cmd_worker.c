/*
 * cmd_worker.c -- `wixr __worker`: a worker process of `wixr serve` or
 * `wixr fire --batch` (serve/worker.h). Started by them only, with its
 * socket on fd 3; not a command for users (it is in no list or help).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/faults.h"
#include "../serve/worker.h"
#include "cli.h"

int cmd_worker(int argc, char **argv)
{
    worker_options o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--config") && v)
            o.config_path = argv[++i];
        else if (!strcmp(a, "--wix-url") && v)
            o.wix_url = argv[++i];
        else if (!strcmp(a, "--memory-mb") && v)
            o.memory_mb = strtol(argv[++i], NULL, 10);
        else if (!strcmp(a, "--fire-render") && v) {
            o.render = fire_render;
            o.render_flags = atoi(argv[++i]);
        } else if (!strcmp(a, "--dry-run"))
            o.dry_run = 1;
        else if (!strcmp(a, "--rate-gate"))
            o.rate_gate = 1;
        else if (!strcmp(a, "--test-faults"))
            o.test_faults = faults_enabled = 1;
        else if (!strcmp(a, "--log-prints"))
            o.log_prints = 1;
        else if (!strcmp(a, "--lean"))
            o.lean = 1;
        else {
            fprintf(stderr, "wixr __worker: unknown argument '%s' (this command is started by wixr serve and "
                            "wixr fire --batch only)\n", a);
            return EXIT_USAGE;
        }
    }
    return worker_main(&o);
}
