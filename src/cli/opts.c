#include "opts.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/nearest.h"
#include "cli.h"

int cli_usage_error(const cli_command *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", c->name);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see '%s --help')\n", c->name);
    return EXIT_USAGE;
}

static const cli_opt *find(const cli_command *c, const char *name, size_t len)
{
    for (const cli_opt *o = c->opts; o && o->name; o++)
        if (strlen(o->name) == len && !strncmp(o->name, name, len))
            return o;
    return NULL;
}

static int unknown(const cli_command *c, const char *a)
{
    char name[65];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(a, "="), a); /* --limt=3: compare --limt */
    size_t n = 0;
    while (c->opts && c->opts[n].name)
        n++;
    const char *best = nearest_name(name, c->opts, n, sizeof *c->opts);
    if (best)
        return cli_usage_error(c, "unknown option '%s' (did you mean '%s'?)", name, best);
    return cli_usage_error(c, "unknown option '%s'", name);
}

static int store(const cli_command *c, const cli_opt *o, const char *v)
{
    if (o->kind != OPT_NUMBER) {
        *(const char **)o->out = v;
        return 0;
    }
    char *end;
    errno = 0;
    long long n = strtoll(v, &end, 10);
    if (end == v || *end || errno || n < o->min || n > o->max) {
        if (o->max == LLONG_MAX)
            return cli_usage_error(c, "%s: expected a whole number from %lld, got '%s'", o->name, o->min, v);
        return cli_usage_error(c, "%s: expected %lld to %lld, got '%s'", o->name, o->min, o->max, v);
    }
    *(long long *)o->out = n;
    return 0;
}

int cli_parse(const cli_command *c, int argc, char **argv, int *npos)
{
    int n = 0, options = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (options && (!strcmp(a, "-h") || !strcmp(a, "--help"))) {
            fputs(c->usage, stdout);
            return 0;
        }
        if (options && !strcmp(a, "--")) {
            options = 0;
            continue;
        }
        if (!options || a[0] != '-' || !a[1]) { /* "-" alone is a value: standard input */
            if (n >= c->max_pos) {
                if (c->max_pos == 0)
                    return cli_usage_error(c, "unexpected argument '%s'", a);
                return cli_usage_error(c, "one %s at a time (got '%s' and '%s')", c->pos_name, c->pos[n - 1], a);
            }
            c->pos[n++] = a;
            continue;
        }
        const char *eq = a[1] == '-' ? strchr(a, '=') : NULL;
        const cli_opt *o = find(c, a, eq ? (size_t)(eq - a) : strlen(a));
        if (!o)
            return unknown(c, a);
        if (o->kind == OPT_FLAG) {
            if (eq)
                return cli_usage_error(c, "%s takes no value", o->name);
            *(int *)o->out = (int)o->min;
            continue;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (!v && i + 1 < argc) {
            const char *next = argv[i + 1];
            /* A value may start with '-' (a negative number, "-" for standard input),
             * but an option of this command is never taken for one. */
            int is_option = next[0] == '-' && next[1] == '-' && find(c, next, strcspn(next, "="));
            if (!is_option && (o->kind != OPT_OPTIONAL || next[0] != '-' || !strcmp(next, "-")))
                v = argv[++i];
        }
        if (!v && o->kind == OPT_OPTIONAL)
            v = o->fallback;
        if (!v)
            return cli_usage_error(c, "%s needs a value", o->name);
        if (store(c, o, v))
            return EXIT_USAGE;
    }
    if (npos)
        *npos = n;
    return CLI_GO;
}
