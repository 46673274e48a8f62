/*
 * opts.h -- the option parser every wixr subcommand uses: a table of
 * options, positional arguments, --help, and one-line usage errors.
 *
 *   --flag            OPT_FLAG: stores `min` in an int (1, or 0 for --no-x)
 *   --name VALUE      OPT_VALUE: stores the argument (also --name=VALUE)
 *   --name [VALUE]    OPT_OPTIONAL: the next argument when it is not an
 *                     option ("-" counts as a value), else `fallback`
 *   --name N          OPT_NUMBER: a whole number in [min, max]
 *   --                the rest are positional arguments
 *
 * Errors name the command and the option: "wixr fire: unknown option
 * '--bacth' (did you mean '--batch'?)", "wixr check: --config needs a value",
 * "wixr fire: --concurrency: expected 1 to 100000, got 'x'".
 */
#ifndef WIXR_CLI_OPTS_H
#define WIXR_CLI_OPTS_H

typedef enum { OPT_FLAG, OPT_VALUE, OPT_OPTIONAL, OPT_NUMBER } cli_opt_kind;

typedef struct cli_opt {
    const char *name;     /* "--config"; NULL ends the table */
    cli_opt_kind kind;
    void *out;            /* int * (FLAG), const char ** (VALUE, OPTIONAL), long long * (NUMBER) */
    long long min, max;   /* NUMBER: the range; FLAG: min is the value stored */
    const char *fallback; /* OPTIONAL: the value when none follows */
} cli_opt;

typedef struct cli_command {
    const char *name;     /* "wixr fire", the prefix of every error */
    const char *usage;    /* --help prints it on stdout; errors point to --help */
    const cli_opt *opts;
    const char **pos;     /* positional arguments, in order */
    int max_pos;          /* how many pos holds */
    const char *pos_name; /* what one is, for "one event NAME at a time" */
} cli_command;

/* Returned by cli_parse when the command should go on. */
#define CLI_GO (-1)

/* Parses argv[1..argc-1]. Returns CLI_GO with *npos positionals stored, 0
 * after printing the usage for -h/--help, or EXIT_USAGE after printing one
 * line on stderr. */
int cli_parse(const cli_command *c, int argc, char **argv, int *npos);

/* A usage error of the command: one line on stderr; returns EXIT_USAGE. */
int cli_usage_error(const cli_command *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif
