/*
 * cli.h -- subcommands of the wixr binary and what they share.
 *
 * Exit codes (every subcommand): 0 success, 1 the work failed,
 * 2 usage error (bad flags or arguments), 3 configuration or input error.
 */
#ifndef WIXR_CLI_H
#define WIXR_CLI_H

#include <stddef.h>

#define EXIT_WORK_FAILED 1
#define EXIT_USAGE 2
#define EXIT_BAD_INPUT 3

int cmd_sandbox(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_fire(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_test(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_reload(int argc, char **argv);
int cmd_events(int argc, char **argv);

/* Where shipped files (config/, lua/) live: $WIXR_HOME, else the source
 * tree the binary was built from. */
const char *cli_home(void);
/* Reads a whole file ("-": standard input). NULL with errno set on failure. */
char *cli_read_file(const char *path, size_t *len);

/* Writes home + "/" + rel into out. */
void cli_home_path(char *out, unsigned long n, const char *rel);

#endif
