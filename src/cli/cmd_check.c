/*
 * cmd_check.c -- `wixr check`: validates the configuration and compiles
 * every hook script, listing every problem of the first class that has any.
 * When the file sets serve.listen, the address is bound and released again: a
 * failure is a problem, but for "in use" (a running wixr serve may hold it) and
 * "permission denied" (wixr serve may run with the right to bind it), which are
 * warnings that do not fail the check.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../app/app.h"
#include "../hooks/hooks.h"
#include "../hooks/keys.h"
#include "../json/json.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr check [--config FILE] [--json]\n"
    "\n"
    "Validates the configuration (unknown keys, types, ${ENV} references, script paths,\n"
    "options against the ---@option lines of their scripts) and, when it is valid, loads\n"
    "and compiles every enabled hook script in its sandbox.\n"
    "Then a serve.listen set in the file is bound and released: an address that cannot\n"
    "be bound is a problem, one in use or needing privileges only a warning. An\n"
    "<state_dir>/installation.key that hook runs could not use (open to group or others,\n"
    "another user's, not 32 bytes) is a problem.\n"
    "Every problem is listed as file:line:col: message.\n"
    "\n"
    "Options:\n"
    "  --config FILE   configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  --json          one JSON document on standard output: {ok, config, hooks, enabled,\n"
    "                  transport} or {ok: false, config, problems}, with warnings when there\n"
    "                  are any; each problem or warning is {file, line, col, message}\n"
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

/* A "key": [...] of one object per line of list; nothing when list is empty and
 * optional is set. */
static void lines_json(json_writer *w, const char *key, const char *list, int optional)
{
    if (optional && (!list || !*list))
        return;
    jw_key(w, key);
    jw_arr(w);
    for (const char *p = list ? list : ""; *p;) {
        size_t n = strcspn(p, "\n");
        if (n)
            problem_json(w, p, n);
        p += n + (p[n] == '\n');
    }
    jw_arr_end(w);
}

/* The --json answer for problems: one per line of list; warnings likewise. */
static int problems_json(const char *config, const char *list, const char *warnings)
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
    lines_json(&w, "problems", list, 0);
    lines_json(&w, "warnings", warnings, 1);
    verdict_print(&b, &w);
    return EXIT_BAD_INPUT;
}

/* serve.listen (HOST:PORT, checked by the loader) bound and released: a problem line
 * in problems, or a warning line in warnings, each starting with where. */
static void check_listen(const char *listen, const char *where, buf_t *problems, buf_t *warnings)
{
    char host[64];
    const char *colon = strrchr(listen, ':');
    if (!colon || (size_t)(colon - listen) >= sizeof host)
        return; /* the loader refuses these */
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, strcmp(host, "localhost") ? host : "127.0.0.1", &addr.sin_addr) != 1)
        return;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return; /* nothing learnt about the address */
    int one = 1, eno = 0;
    /* as wixr serve binds it: an address in TIME_WAIT is no obstacle */
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        eno = errno;
    close(fd);
    if (!eno)
        return;
    if (eno == EADDRINUSE || eno == EACCES) {
        if (warnings->len)
            buf_addc(warnings, '\n');
        buf_printf(warnings, "%s: warning: serve.listen %s cannot be bound now: %s (%s; not counted as a problem)",
                   where, listen, strerror(eno),
                   eno == EADDRINUSE ? "a running wixr serve may be holding it"
                                     : "wixr serve may run with the right to bind it");
        return;
    }
    if (problems->len)
        buf_addc(problems, '\n');
    buf_printf(problems, "%s: serve.listen %s cannot be bound: %s", where, listen, strerror(eno));
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
            return problems_json(config, err, NULL);
        fprintf(stderr, "%s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (!cfg.path) {
        const char *none = "wixr check: no configuration found (give --config, set WIXR_CONFIG, or create wixr.yaml)";
        config_free(&cfg);
        if (json)
            return problems_json(NULL, none + strlen("wixr check: "), NULL);
        fprintf(stderr, "%s\n", none);
        return EXIT_BAD_INPUT;
    }
    buf_t problems, warnings;
    buf_init(&problems, 0);
    buf_init(&warnings, 0);
    if (cfg.serve.listen_where)
        check_listen(cfg.serve.listen, cfg.serve.listen_where, &problems, &warnings);
    /* The installation key as a run would read it: a bad one fails every
     * event's first mutating call, so it fails the check instead. */
    if (hooks_install_key_check(cfg.state_dir, err, sizeof err) < 0) {
        if (problems.len)
            buf_addc(&problems, '\n');
        buf_adds(&problems, err);
    }
    if (!json && warnings.len)
        fprintf(stderr, "%s\n", buf_cstr(&warnings));
    int rc = 0;
    hook_table *t = NULL;
    wixr_host *h = host_new(&cfg, 0, err, sizeof err);
    if (!h) {
        if (problems.len)
            buf_addc(&problems, '\n');
        buf_printf(&problems, "%s%s", json ? "" : "wixr check: ", err);
    } else {
        buf_t errors;
        buf_init(&errors, 0);
        t = hooks_load(h, &cfg, &errors);
        if (!t) {
            if (problems.len)
                buf_addc(&problems, '\n');
            buf_adds(&problems, buf_cstr(&errors));
        }
        buf_free(&errors);
    }
    if (problems.len || !t) {
        if (!problems.len)
            buf_adds(&problems, "wixr check: the hooks could not be loaded");
        if (json)
            problems_json(cfg.path, buf_cstr(&problems), buf_cstr(&warnings));
        else
            fprintf(stderr, "%s\n", buf_cstr(&problems));
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
            lines_json(&w, "warnings", buf_cstr(&warnings), 1);
            verdict_print(&b, &w);
        } else {
            printf("%s: ok (%d hook%s, %d enabled, transport %s%s)\n", cfg.path, cfg.nhooks,
                   cfg.nhooks == 1 ? "" : "s", enabled, transport, warnings.len ? "; see the warning above" : "");
        }
    }
    buf_free(&problems);
    buf_free(&warnings);
    hooks_free(t);
    host_free(h);
    config_free(&cfg);
    return rc;
}
