/*
 * cmd_check.c -- `wixr check`: validates the configuration and compiles
 * every hook script, listing every problem of the first class that has any.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"
#include "../runtime/hooks.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr check [--config FILE] [--json]\n"
    "\n"
    "Validates the configuration (unknown keys, types, ${ENV} references, script paths)\n"
    "and, when it is valid, loads and compiles every enabled hook script in its sandbox.\n"
    "Every problem is listed as file:line:col: message.\n"
    "\n"
    "Options:\n"
    "  --config FILE   configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  --json          one JSON document on standard output: {ok, config, hooks, enabled,\n"
    "                  transport} or {ok: false, config, problems: [{file, line, col, message}]}\n"
    "  -h, --help      this help\n"
    "Exit codes: 0 all good, 2 usage, 3 problems found.\n";

/* Splits "FILE:LINE:COL: message" (or FILE:LINE: message) in place: *file and
 * *msg point into text (file NULL for a bare message). */
static void split_problem(char *text, const char **file, const char **msg, long *ln, long *col)
{
    *file = NULL;
    *msg = text;
    *ln = *col = 0;
    for (char *p = text; (p = strchr(p, ':')) != NULL; p++) {
        char *q = p + 1, *end;
        if (!isdigit((unsigned char)*q))
            continue;
        *ln = strtol(q, &end, 10);
        if (*end == ':' && isdigit((unsigned char)end[1]))
            *col = strtol(end + 1, &end, 10);
        if (end[0] != ':' || end[1] != ' ') {
            *ln = *col = 0;
            continue;
        }
        *p = '\0';
        *file = text;
        *msg = end + 2;
        return;
    }
}

/* One line of the problem list as a JSON object. */
static void problem_json(json_writer *w, const char *line, size_t n)
{
    char *text = strndup(line, n);
    if (!text)
        return;
    const char *file, *msg;
    long ln, col;
    split_problem(text, &file, &msg, &ln, &col);
    jw_obj(w);
    if (file) {
        jw_kstr(w, "file", file);
        jw_key(w, "line");
        jw_int(w, ln);
        jw_key(w, "col");
        if (col)
            jw_int(w, col);
        else
            jw_null(w);
    }
    jw_kstr(w, "message", msg);
    jw_obj_end(w);
    free(text);
}

/* The --json document: opened with its verdict, then printed on one line. */
static void verdict_open(buf_t *b, json_writer *w, int ok)
{
    buf_init(b, 0);
    jw_init(w, b);
    jw_obj(w);
    jw_key(w, "ok");
    jw_bool(w, ok);
}

static void verdict_print(buf_t *b, json_writer *w)
{
    jw_obj_end(w);
    printf("%s\n", buf_cstr(b));
    buf_free(b);
}

/* The --json answer for problems: one per line of list. */
static int problems_json(const char *config, const char *list)
{
    buf_t b;
    json_writer w;
    verdict_open(&b, &w, 0);
    /* Without --config the file searched for is the one the problems name. */
    char *first = config ? NULL : strndup(list, strcspn(list, "\n"));
    const char *file = config, *msg;
    long ln, col;
    if (first)
        split_problem(first, &file, &msg, &ln, &col);
    jw_key(&w, "config");
    if (file)
        jw_str(&w, file);
    else
        jw_null(&w);
    free(first);
    jw_key(&w, "problems");
    jw_arr(&w);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, "\n");
        if (n)
            problem_json(&w, p, n);
        p += n + (p[n] == '\n');
    }
    jw_arr_end(&w);
    verdict_print(&b, &w);
    return EXIT_BAD_INPUT;
}

int cmd_check(int argc, char **argv)
{
    const char *config = NULL;
    int json = 0;
    const cli_opt opts[] = {
        {"--config", OPT_VALUE, &config, 0, 0, NULL},
        {"--json", OPT_FLAG, &json, 1, 0, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr check", usage, opts, NULL, 0, NULL};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    char err[16384];
    wixr_config cfg;
    if (config_load(&cfg, config, err, sizeof err) < 0) {
        if (json)
            return problems_json(config, err);
        fprintf(stderr, "%s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (!cfg.path) {
        const char *none = "wixr check: no configuration found (give --config, set WIXR_CONFIG, or create wixr.yaml)";
        config_free(&cfg);
        if (json)
            return problems_json(NULL, none + strlen("wixr check: "));
        fprintf(stderr, "%s\n", none);
        return EXIT_BAD_INPUT;
    }
    wixr_host *h = host_new(&cfg, 0, err, sizeof err);
    if (!h) {
        int rc = json ? problems_json(cfg.path, err) : (fprintf(stderr, "wixr check: %s\n", err), EXIT_BAD_INPUT);
        config_free(&cfg);
        return rc;
    }
    buf_t errors;
    buf_init(&errors, 0);
    hook_table *t = hooks_load(h, &cfg, &errors);
    int rc = 0;
    if (!t) {
        if (json)
            problems_json(cfg.path, buf_cstr(&errors));
        else
            fprintf(stderr, "%s\n", buf_cstr(&errors));
        rc = EXIT_BAD_INPUT;
    } else {
        int enabled = 0;
        for (int i = 0; i < t->n; i++)
            enabled += t->rt[i] != NULL;
        const char *transport = config_transport_name(wix_client_transport(h->client));
        if (json) {
            buf_t b;
            json_writer w;
            verdict_open(&b, &w, 1);
            jw_kstr(&w, "config", cfg.path);
            jw_key(&w, "hooks");
            jw_int(&w, cfg.nhooks);
            jw_key(&w, "enabled");
            jw_int(&w, enabled);
            jw_kstr(&w, "transport", transport);
            verdict_print(&b, &w);
        } else {
            printf("%s: ok (%d hook%s, %d enabled, transport %s)\n", cfg.path, cfg.nhooks,
                   cfg.nhooks == 1 ? "" : "s", enabled, transport);
        }
    }
    buf_free(&errors);
    hooks_free(t);
    host_free(h);
    config_free(&cfg);
    return rc;
}
