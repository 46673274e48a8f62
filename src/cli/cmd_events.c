/*
 * cmd_events.c -- `wixr events`: looks into and acts on the event journal
 * that `wixr serve` keeps in <state_dir>/journal.db (list, show, retry,
 * purge). It opens the journal alongside a running serve; SQLite's WAL
 * lets both read and write at once.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../config/config.h"
#include "../journal/journal.h"
#include "../journal/journal_json.h"
#include "../json/json.h"
#include "../util/isotime.h"
#include "cli.h"
#include "opts.h"

#define DEFAULT_LIMIT 50
#define ERROR_COLUMN 60 /* characters of last_error shown in the table */
#define NAME_COLUMN 32

static const char usage[] =
    "usage: wixr events list [--state S] [--limit N] [--json] [--config FILE]\n"
    "       wixr events show ID [--json] [--config FILE]\n"
    "       wixr events retry ID | --dead [--config FILE]\n"
    "       wixr events purge --older-than D [--config FILE]\n"
    "\n"
    "Looks into the journal of events that wixr serve accepted: serve.journal of the\n"
    "configuration, else <state_dir>/journal.db (runtime.state_dir, default .wixr). An event is\n"
    "accepted, running, retrying (waiting for its next attempt), done, or dead (out of\n"
    "attempts). 'wixr events COMMAND --help' tells more.\n"
    "\n"
    "Exit codes: 0 ok, 1 no such event, no journal, or the journal failed, 2 usage,\n"
    "3 bad configuration.\n";

static const char usage_list[] =
    "usage: wixr events list [--state S] [--limit N] [--json] [--config FILE]\n"
    "\n"
    "Lists events, newest first: seq, id, name, state, attempts, last update (UTC) and\n"
    "the start of the last error; then how many events the journal holds in each state.\n"
    "\n"
    "Options:\n"
    "  --state S       only events in state S: accepted, running, retrying, done, dead\n"
    "  --limit N       at most N events (default 50; 0 = all)\n"
    "  --json          one JSON object per line (every field, data and results included)\n"
    "  --config FILE   configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  -h, --help      this help\n";

static const char usage_show[] =
    "usage: wixr events show ID [--json] [--config FILE]\n"
    "\n"
    "Prints every field of event ID: its state and attempts, times, last error, data,\n"
    "and the per-hook results of its last run.\n"
    "\n"
    "Options:\n"
    "  --json          one JSON object\n"
    "  --config FILE   configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  -h, --help      this help\n";

static const char usage_retry[] =
    "usage: wixr events retry ID | --dead [--config FILE]\n"
    "\n"
    "Sets a dead (or retrying) event back to accepted with its attempts reset, so that\n"
    "wixr serve runs it again; --dead does so for every dead event. Retried events keep\n"
    "their id, so their idempotency keys make sure nothing is provisioned twice.\n"
    "\n"
    "Options:\n"
    "  --dead          retry every dead event\n"
    "  --config FILE   configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  -h, --help      this help\n";

static const char usage_purge[] =
    "usage: wixr events purge --older-than D [--config FILE]\n"
    "\n"
    "Deletes finished events (done or dead) last updated more than D ago; D is a number\n"
    "and a unit: 30s, 15m, 12h, 7d. Events not finished are never purged.\n"
    "\n"
    "Options:\n"
    "  --older-than D  age of the events to delete\n"
    "  --config FILE   configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  -h, --help      this help\n";

/* ---- helpers ---- */

static void format_time(long long ms, char out[64])
{
    if (ms < 0)
        snprintf(out, 64, "-");
    else
        iso_format_ms(ms, out);
}

/* Copies s for one table cell or line: control characters become '?' (no
 * terminal escapes from event ids or errors), and at most max characters
 * (UTF-8 aware; 0 = no cap), "..." marking a cut. */
static char *cell(const char *s, int max)
{
    if (!s)
        return strdup("");
    size_t n = strlen(s);
    char *out = malloc(n + 4);
    if (!out)
        return NULL;
    int total = 0;
    for (size_t i = 0; i < n; i++)
        total += ((unsigned char)s[i] & 0xC0) != 0x80;
    int keep = max && total > max ? (max > 3 ? max - 3 : 0) : total, chars = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) != 0x80 && chars++ == keep)
            break;
        out[o++] = c < 0x20 || c == 0x7f ? '?' : (char)c;
    }
    if (keep < total) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = 0;
    return out;
}

/* An id as messages show it: control characters as '?', at most 200
 * characters (the returned text lives until the next call). */
static const char *shown(const char *id)
{
    static char out[1024];
    char *c = cell(id, 200);
    snprintf(out, sizeof out, "%s", c ? c : "?");
    free(c);
    return out;
}

/* Display width of s (UTF-8 characters). */
static int width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

static void print_padded(const char *s, int w, const char *after)
{
    fputs(s, stdout);
    for (int i = width(s); i < w; i++)
        putchar(' ');
    fputs(after, stdout);
}

/* Loads the configuration and opens its journal. Returns 0, or the exit
 * code after printing why not. */
static int open_journal(const char *config, journal **out, char *path, size_t pathlen)
{
    char err[8192];
    wixr_config cfg;
    *out = NULL;
    if (config_load(&cfg, config, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (cfg.serve.journal) /* serve.journal overrides the default place */
        snprintf(path, pathlen, "%s", cfg.serve.journal);
    else
        snprintf(path, pathlen, "%s/journal.db", cfg.state_dir ? cfg.state_dir : ".wixr");
    config_free(&cfg);
    if (access(path, F_OK) != 0) {
        fprintf(stderr, "wixr events: no journal at %s (has wixr serve run here?)\n", path);
        return EXIT_WORK_FAILED;
    }
    *out = journal_open(path, err, sizeof err);
    if (!*out) {
        fprintf(stderr, "wixr events: %s\n", err);
        return EXIT_WORK_FAILED;
    }
    return 0;
}

static int journal_failed(journal *j)
{
    fprintf(stderr, "wixr events: %s\n", journal_errmsg(j));
    journal_close(j);
    return EXIT_WORK_FAILED;
}

/* Parses "30s", "15m", "12h", "7d" into ms; -1 when it is not one. */
static long long parse_duration(const char *s)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || v < 0 || s[0] == '-' || s[0] == '+')
        return -1;
    long long unit;
    if (!strcmp(end, "s"))
        unit = 1000;
    else if (!strcmp(end, "m"))
        unit = 60 * 1000;
    else if (!strcmp(end, "h"))
        unit = 3600 * 1000;
    else if (!strcmp(end, "d"))
        unit = 86400LL * 1000;
    else
        return -1;
    if (v > 100LL * 366 * 86400 * 1000 / unit)  /* a century is plenty */
        return -1;
    return v * unit;
}

/* ---- list ---- */

static int events_list(int argc, char **argv)
{
    const char *config = NULL, *state_name = NULL;
    int state = -1, json = 0;
    long long limit = DEFAULT_LIMIT;
    const cli_opt opts[] = {
        {"--json", OPT_FLAG, &json, 1, 0, NULL},
        {"--config", OPT_VALUE, &config, 0, 0, NULL},
        {"--state", OPT_VALUE, &state_name, 0, 0, NULL},
        {"--limit", OPT_NUMBER, &limit, 0, 10000000, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr events list", usage_list, opts, NULL, 0, NULL};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    if (state_name) {
        ev_state st;
        if (journal_state_parse(state_name, &st) < 0)
            return cli_usage_error(&cmd, "--state: '%s' is not accepted, running, retrying, done or dead", state_name);
        state = (int)st;
    }
    journal *j;
    char path[4200];
    int rc = open_journal(config, &j, path, sizeof path);
    if (rc)
        return rc;
    journal_event *list;
    int n;
    long long counts[5];
    if (journal_list(j, state, (int)limit, &list, &n) < 0 || journal_counts(j, counts) < 0)
        return journal_failed(j);
    journal_close(j);

    if (json) {
        buf_t b;
        buf_init(&b, 0);
        for (int i = 0; i < n; i++) {
            buf_reset(&b);
            journal_event_json(&b, &list[i]);
            printf("%s\n", buf_cstr(&b));
        }
        buf_free(&b);
        journal_events_free(list, n);
        return 0;
    }

    /* the table: every cell prepared first, to size the columns */
    enum { C_SEQ, C_ID, C_NAME, C_STATE, C_ATT, C_UPD, C_ERR, NCOL };
    static const char *const head[NCOL] = {"SEQ", "ID", "NAME", "STATE", "ATTEMPTS", "UPDATED", "LAST ERROR"};
    int w[NCOL];
    for (int c = 0; c < NCOL; c++)
        w[c] = width(head[c]);
    char *(*cells)[NCOL] = calloc(n ? (size_t)n : 1, sizeof *cells);
    if (!cells) {
        journal_events_free(list, n);
        fprintf(stderr, "wixr events: out of memory\n");
        return EXIT_WORK_FAILED;
    }
    for (int i = 0; i < n; i++) {
        const journal_event *e = &list[i];
        char num[32], t[64];
        snprintf(num, sizeof num, "%lld", e->seq);
        cells[i][C_SEQ] = strdup(num);
        cells[i][C_ID] = cell(e->id, 0);
        cells[i][C_NAME] = cell(e->name, NAME_COLUMN);
        cells[i][C_STATE] = strdup(journal_state_name(e->state));
        snprintf(num, sizeof num, "%d", e->attempts);
        cells[i][C_ATT] = strdup(num);
        format_time(e->updated_ms, t);
        cells[i][C_UPD] = strdup(t);
        cells[i][C_ERR] = cell(e->last_error, ERROR_COLUMN);
        for (int c = 0; c < NCOL; c++) {
            if (!cells[i][c])
                cells[i][c] = strdup("?");
            if (cells[i][c] && width(cells[i][c]) > w[c])
                w[c] = width(cells[i][c]);
        }
    }
    if (n) {
        for (int c = 0; c < NCOL; c++)
            print_padded(head[c], c == NCOL - 1 ? 0 : w[c], c == NCOL - 1 ? "\n" : "  ");
        for (int i = 0; i < n; i++)
            for (int c = 0; c < NCOL; c++)
                print_padded(cells[i][c] ? cells[i][c] : "?", c == NCOL - 1 ? 0 : w[c], c == NCOL - 1 ? "\n" : "  ");
        printf("\n");
    }
    long long total = 0;
    for (int s = 0; s < 5; s++)
        total += counts[s];
    if (state < 0)
        printf("%d of %lld event%s shown, newest first.", n, total, total == 1 ? "" : "s");
    else
        printf("%d of %lld %s event%s shown, newest first.", n, counts[state], journal_state_name((ev_state)state),
               counts[state] == 1 ? "" : "s");
    printf(" In the journal: %lld accepted, %lld running, %lld retrying, %lld done, %lld dead.\n",
           counts[EV_ACCEPTED], counts[EV_RUNNING], counts[EV_RETRYING], counts[EV_DONE], counts[EV_DEAD]);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < NCOL; c++)
            free(cells[i][c]);
    free(cells);
    journal_events_free(list, n);
    return 0;
}

/* ---- show ---- */

/* Prints stored JSON text pretty, indented by two spaces, or as it is when
 * it does not parse. */
static void print_json_block(const char *label, const char *text)
{
    if (!text) {
        printf("%-12s-\n", label);
        return;
    }
    printf("%s\n  ", label);
    json_doc *doc;
    json_value *v = json_parse(text, strlen(text), 0, &doc, NULL);
    if (v) {
        buf_t b;
        buf_init(&b, 0);
        json_pretty(&b, v, 1);
        printf("%s\n", buf_cstr(&b));
        buf_free(&b);
    } else {
        char *c = cell(text, 0);
        printf("%s (not JSON)\n", c ? c : "?");
        free(c);
    }
    json_doc_free(doc);
}

static void print_field(const char *label, const char *value)
{
    char *c = cell(value, 0);
    printf("%-12s%s\n", label, c ? c : "?");
    free(c);
}

/* A value that may span lines (a Lua traceback): each line sanitised and
 * indented under the first. */
static void print_lines(const char *label, const char *value)
{
    printf("%-12s", label);
    const char *p = value;
    for (;;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        char *line = strndup(p, n);
        char *c = line ? cell(line, 0) : NULL;
        printf("%s\n", c ? c : "?");
        free(c);
        free(line);
        if (!nl || !nl[1])
            break;
        p = nl + 1;
        printf("%-12s", "");
    }
}

/* The options of `events show` and `events retry`: one event id, --config
 * FILE and one flag. Returns CLI_GO to go on, else the exit code (help, usage). */
static int id_args(int argc, char **argv, const cli_command *cmd, const char *flag, int *flag_set,
                   const char **config, const char **id)
{
    const cli_opt opts[] = {
        {flag, OPT_FLAG, flag_set, 1, 0, NULL},
        {"--config", OPT_VALUE, config, 0, 0, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    cli_command c = *cmd;
    c.opts = opts;
    c.pos = id;
    c.max_pos = 1;
    c.pos_name = "event id";
    return cli_parse(&c, argc, argv, NULL);
}

static int events_show(int argc, char **argv)
{
    const char *config = NULL, *id = NULL;
    int json = 0;
    const cli_command cmd = {"wixr events show", usage_show, NULL, NULL, 0, NULL};
    int rc = id_args(argc, argv, &cmd, "--json", &json, &config, &id);
    if (rc != CLI_GO)
        return rc;
    if (!id)
        return cli_usage_error(&cmd, "give an event ID");
    journal *j;
    char path[4200];
    rc = open_journal(config, &j, path, sizeof path);
    if (rc)
        return rc;
    journal_event e;
    rc = journal_get(j, id, &e);
    if (rc < 0)
        return journal_failed(j);
    journal_close(j);
    if (rc == 1) {
        fprintf(stderr, "wixr events: no event '%s' in %s\n", shown(id), path);
        return EXIT_WORK_FAILED;
    }
    if (json) {
        buf_t b;
        buf_init(&b, 0);
        journal_event_json(&b, &e);
        printf("%s\n", buf_cstr(&b));
        buf_free(&b);
        journal_event_free(&e);
        return 0;
    }
    char t[64], line[160];
    print_field("id", e.id);
    snprintf(line, sizeof line, "%lld", e.seq);
    print_field("seq", line);
    print_field("name", e.name);
    print_field("state", journal_state_name(e.state));
    snprintf(line, sizeof line, "%d", e.attempts);
    print_field("attempts", line);
    print_field("order key", e.order_key ? e.order_key : "-");
    format_time(e.created_ms, t);
    print_field("created", t);
    format_time(e.updated_ms, t);
    print_field("updated", t);
    if (e.next_attempt_ms) {
        long long in = e.next_attempt_ms - journal_now_ms();
        format_time(e.next_attempt_ms, t);
        if (in > 0)
            snprintf(line, sizeof line, "%s (in %lld s)", t, (in + 999) / 1000);
        else
            snprintf(line, sizeof line, "%s (due)", t);
        print_field("next try", line);
    }
    print_lines("last error", e.last_error ? e.last_error : "-");
    print_json_block("data", e.data_json);
    print_json_block("results", e.results_json);
    journal_event_free(&e);
    return 0;
}

/* ---- retry ---- */

static int events_retry(int argc, char **argv)
{
    const char *config = NULL, *id = NULL;
    int dead = 0;
    const cli_command cmd = {"wixr events retry", usage_retry, NULL, NULL, 0, NULL};
    int rc = id_args(argc, argv, &cmd, "--dead", &dead, &config, &id);
    if (rc != CLI_GO)
        return rc;
    if (!id == !dead)
        return cli_usage_error(&cmd, "give an event ID or --dead (not both)");
    journal *j;
    char path[4200];
    rc = open_journal(config, &j, path, sizeof path);
    if (rc)
        return rc;
    if (dead) {
        int n = journal_retry_dead(j);
        if (n < 0)
            return journal_failed(j);
        journal_close(j);
        printf("%d dead event%s set back to accepted (attempts reset); wixr serve runs %s again\n", n,
               n == 1 ? "" : "s", n == 1 ? "it" : "them");
        return 0;
    }
    journal_event e;
    rc = journal_get(j, id, &e);
    if (rc < 0)
        return journal_failed(j);
    if (rc == 1) {
        journal_close(j);
        fprintf(stderr, "wixr events: no event '%s' in %s\n", shown(id), path);
        return EXIT_WORK_FAILED;
    }
    ev_state was = e.state;
    int attempts = e.attempts;
    journal_event_free(&e);
    if (was != EV_DEAD && was != EV_RETRYING) {
        journal_close(j);
        fprintf(stderr, "wixr events: event '%s' is %s; only dead or retrying events can be retried\n", shown(id),
                journal_state_name(was));
        return EXIT_WORK_FAILED;
    }
    rc = journal_retry(j, id);
    if (rc < 0)
        return journal_failed(j);
    journal_close(j);
    if (rc == 1) {
        fprintf(stderr, "wixr events: event '%s' changed state meanwhile (wixr serve took it); not retried\n",
                shown(id));
        return EXIT_WORK_FAILED;
    }
    printf("event %s: %s after %d attempt%s -> accepted (attempts reset); wixr serve runs it again\n", shown(id),
           journal_state_name(was), attempts, attempts == 1 ? "" : "s");
    return 0;
}

/* ---- purge ---- */

static int events_purge(int argc, char **argv)
{
    const char *config = NULL, *older = NULL;
    const cli_opt opts[] = {
        {"--older-than", OPT_VALUE, &older, 0, 0, NULL},
        {"--config", OPT_VALUE, &config, 0, 0, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr events purge", usage_purge, opts, NULL, 0, NULL};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    if (!older)
        return cli_usage_error(&cmd, "--older-than D is required (like 30s, 15m, 12h, 7d)");
    long long age = parse_duration(older);
    if (age < 0)
        return cli_usage_error(&cmd, "--older-than: expected a number and a unit (s, m, h or d) like 7d, got '%s'",
                               older);
    journal *j;
    char path[4200];
    int rc = open_journal(config, &j, path, sizeof path);
    if (rc)
        return rc;
    long long cut = journal_now_ms() - age;
    int n = journal_purge(j, cut);
    if (n < 0)
        return journal_failed(j);
    journal_close(j);
    char t[64];
    format_time(cut, t);
    printf("purged %d finished event%s (done or dead) last updated before %s\n", n, n == 1 ? "" : "s", t);
    return 0;
}

int cmd_events(int argc, char **argv)
{
    if (argc < 2) {
        fputs(usage, stderr);
        return EXIT_USAGE;
    }
    const char *sub = argv[1];
    if (!strcmp(sub, "-h") || !strcmp(sub, "--help") || !strcmp(sub, "help")) {
        fputs(usage, stdout);
        return 0;
    }
    if (!strcmp(sub, "list"))
        return events_list(argc - 1, argv + 1);
    if (!strcmp(sub, "show"))
        return events_show(argc - 1, argv + 1);
    if (!strcmp(sub, "retry"))
        return events_retry(argc - 1, argv + 1);
    if (!strcmp(sub, "purge"))
        return events_purge(argc - 1, argv + 1);
    const cli_command cmd = {"wixr events", usage, NULL, NULL, 0, NULL};
    return cli_usage_error(&cmd, "unknown command '%s' (list, show, retry or purge)", sub);
}
