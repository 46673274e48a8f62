/*
 * cli.h -- subcommands of the wixr binary and what they share.
 *
 * Exit codes (every subcommand): 0 success, 1 the work failed,
 * 2 usage error (bad flags or arguments), 3 configuration or input error.
 */
#ifndef WIXR_CLI_H
#define WIXR_CLI_H

#include <stddef.h>

#include "../util/buf.h"

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
int cmd_worker(int argc, char **argv);   /* `wixr __worker` (serve/worker.h): not for users */

/* wixr fire's text for a finished event run in a worker (cmd_fire.c): flags
 * FIRE_RENDER_*; appended to out. */
struct event_job;
#define FIRE_RENDER_VERBOSE 1
#define FIRE_RENDER_FAILURES 2
void fire_render(const struct event_job *j, int flags, buf_t *out);

/* Where shipped files (config/, lua/) live: $WIXR_HOME, else the source
 * tree the binary was built from. */
const char *cli_home(void);
/* Reads a whole file ("-": standard input). NULL with errno set on failure. */
char *cli_read_file(const char *path, size_t *len);

/* Writes home + "/" + rel into out. */
void cli_home_path(char *out, unsigned long n, const char *rel);

#endif
