/*
 * main.c -- the wixr command line: dispatches to one subcommand.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/buf.h"
#include "../util/nearest.h"
#include "cli.h"
#include "wixr_version.h" /* WIXR_COMMIT, WIXR_BUILD_DATE: written at build time by cmake/version.cmake */

#ifndef WIXR_VERSION
#define WIXR_VERSION "0.1.0"
#endif
#ifndef WIXR_HOME
#define WIXR_HOME "."
#endif

static const char usage[] =
    "usage: wixr COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  run SCRIPT      run a Lua script with the wix module\n"
    "  fire NAME       push an event (or --batch of events) through the configured hooks\n"
    "  check           validate the configuration and compile every hook script\n"
    "  serve           run the durable, hot-reloading provisioning service\n"
    "  reload          ask the running service to reload its rules\n"
    "  test [PATH...]  run *_test.lua files (policy tests) on the in-process emulator\n"
    "  events          list, show, retry and purge the events in the serve journal\n"
    "  sandbox serve   run the Resellers API emulator over HTTP\n"
    "  version         print the version, the commit and the build date\n"
    "  help [COMMAND]  print this help, or a command's (as 'wixr COMMAND --help')\n"
    "\n"
    "Run 'wixr COMMAND --help' for a command's options.\n"
    "Exit codes: 0 ok, 1 the work failed, 2 usage error, 3 bad configuration or input.\n";

const char *cli_home(void)
{
    const char *h = getenv("WIXR_HOME");
    return h && *h ? h : WIXR_HOME;
}

void cli_home_path(char *out, unsigned long n, const char *rel)
{
    snprintf(out, n, "%s/%s", cli_home(), rel);
}

char *cli_read_file(const char *path, size_t *len)
{
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f)
        return NULL;
    int too_large;
    char *text = buf_read_stream(f, 512 * 1024 * 1024, len, &too_large);
    if (f != stdin)
        fclose(f);
    if (!text)
        errno = EIO;
    return text;
}

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
} commands[] = {
    {"run", cmd_run},     {"fire", cmd_fire},     {"check", cmd_check},     {"serve", cmd_serve},
    {"reload", cmd_reload}, {"test", cmd_test},   {"events", cmd_events},   {"sandbox", cmd_sandbox},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static int find_command(const char *name)
{
    for (size_t i = 0; i < NCOMMANDS; i++)
        if (!strcmp(commands[i].name, name))
            return (int)i;
    return -1;
}

static int unknown_command(const char *name)
{
    const char *best = nearest_name(name, commands, NCOMMANDS, sizeof commands[0]);
    if (best)
        fprintf(stderr, "wixr: unknown command '%s' (did you mean '%s'?) (see 'wixr help')\n", name, best);
    else
        fprintf(stderr, "wixr: unknown command '%s' (see 'wixr help')\n", name);
    return EXIT_USAGE;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "help") || !strcmp(cmd, "--help") || !strcmp(cmd, "-h")) {
        if (argc < 3 || strcmp(cmd, "help")) {
            fputs(usage, stdout);
            return 0;
        }
        /* wixr help COMMAND [SUBCOMMAND]: that command's --help */
        int k = find_command(argv[2]);
        if (k < 0)
            return unknown_command(argv[2]);
        static char help_flag[] = "--help";
        char *args[4] = {argv[2], argc > 3 ? argv[3] : help_flag, help_flag, NULL};
        return commands[k].fn(argc > 3 ? 3 : 2, args);
    }
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("wixr %s (commit %s, built %s)\n", WIXR_VERSION, WIXR_COMMIT, WIXR_BUILD_DATE);
        return 0;
    }
    if (!strcmp(cmd, "__worker")) /* started by serve and fire --batch only: in no list */
        return cmd_worker(argc - 1, argv + 1);
    int k = find_command(cmd);
    if (k < 0)
        return unknown_command(cmd);
    return commands[k].fn(argc - 1, argv + 1);
}
