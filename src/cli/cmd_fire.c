/*
 * cmd_fire.c -- `wixr fire`: pushes one event, or a batch of NDJSON events,
 * through the hooks of the configuration.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../json/json.h"
#include "../runtime/hooks.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr fire NAME [--data FILE.json|-] [--id ID] [options]\n"
    "       wixr fire --batch [FILE.ndjson|-] [options]\n"
    "\n"
    "Runs the hooks configured for event NAME, in order, on one event and prints each\n"
    "hook's outcome and what it returned. With --batch, reads one event per line,\n"
    "{\"event\": NAME, \"id\": ID, \"data\": {...}}, and runs them concurrently; an id seen\n"
    "before (recorded in <state_dir>/events.db) is not run again.\n"
    "\n"
    "Options:\n"
    "  --config FILE       configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  --data FILE.json    the event's data ('-' reads standard input; default {})\n"
    "  --id ID             the event's id (then it runs only once, as in a batch)\n"
    "  --batch [FILE]      NDJSON events from FILE or standard input ('-', the default)\n"
    "  --concurrency N     events in flight at once in a batch (default 64)\n"
    "  --no-dedupe         run events even when their id was seen before\n"
    "  --dry-run           mutating calls are planned, not sent (reads go through)\n"
    "  --json              one JSON report on standard output\n"
    "  --quiet             no progress bar\n"
    "  -h, --help          this help\n"
    "\n"
    "Exit codes: 0 every hook succeeded, 1 a hook failed or a line was malformed,\n"
    "2 usage, 3 bad configuration, script or event data.\n";

/* ---- the dedupe store ---- */

typedef struct seen_db {
    sqlite3 *db;
    sqlite3_stmt *get, *finish;
    const char **set;             /* ids claimed by this run (open addressing; owned by the caller) */
    size_t setcap, setn;
    int pending;
    int was_empty;                /* nothing recorded before this run: no look-ups needed */
} seen_db;

static int seen_open(seen_db *s, const char *dir, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create: %s", dir, strerror(errno));
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/events.db", dir);
    if (sqlite3_open(path, &s->db) != SQLITE_OK ||
        sqlite3_exec(s->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=5000;"
                     "PRAGMA cache_size=-16384;" /* 16 MB: a million ids' b-tree stays in memory */
                     /* WITHOUT ROWID: the ids' b-tree is the table (one b-tree written per event, not two) */
                     "CREATE TABLE IF NOT EXISTS events(id TEXT PRIMARY KEY, name TEXT NOT NULL,"
                     " state TEXT NOT NULL, token TEXT NOT NULL, finished INTEGER) WITHOUT ROWID;",
                     NULL, NULL, NULL) != SQLITE_OK ||
        /* (an OR chain, not IN (...): SQLite builds a temporary b-tree for each IN list) */
        sqlite3_prepare_v2(s->db, "SELECT 1 FROM events WHERE id = ?1 AND (state = 'done' OR state = 'failed')", -1,
                           &s->get, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db,
                           "INSERT OR REPLACE INTO events(id, name, state, token, finished) VALUES(?1, ?2, ?3, '', ?4)",
                           -1, &s->finish, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(s->db));
        return -1;
    }
    sqlite3_stmt *any;
    if (sqlite3_prepare_v2(s->db, "SELECT NOT EXISTS(SELECT 1 FROM events)", -1, &any, NULL) == SQLITE_OK) {
        s->was_empty = sqlite3_step(any) == SQLITE_ROW && sqlite3_column_int(any, 0);
        sqlite3_finalize(any);
    }
    sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL);
    return 0;
}

static size_t str_hash(const char *p)
{
    size_t h = 1469598103934665603ull;
    for (; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

/* Adds id to the set of this run's ids; 0 when it was there already. */
static int set_add(seen_db *s, const char *id)
{
    if (2 * (s->setn + 1) > s->setcap) {
        size_t cap = s->setcap ? s->setcap * 2 : 1024;
        const char **nset = calloc(cap, sizeof *nset);
        if (!nset)
            return 1;
        for (size_t i = 0; i < s->setcap; i++) {
            if (!s->set[i])
                continue;
            size_t k = str_hash(s->set[i]) & (cap - 1);
            while (nset[k])
                k = (k + 1) & (cap - 1);
            nset[k] = s->set[i];
        }
        free(s->set);
        s->set = nset;
        s->setcap = cap;
    }
    size_t k = str_hash(id) & (s->setcap - 1);
    while (s->set[k]) {
        if (!strcmp(s->set[k], id))
            return 0;
        k = (k + 1) & (s->setcap - 1);
    }
    s->set[k] = id;
    s->setn++;
    return 1;
}

/* 1 when this run may run the event; 0 when it finished before (in an earlier
 * run) or comes twice in this one. An event that was cut short (the process
 * stopped) has no record and runs again, with the same derived idempotency
 * keys. The id must stay valid while the store is open. */
static int seen_claim(seen_db *s, const char *id, const char *name)
{
    (void)name;
    int done_before = 0;
    if (!s->was_empty) { /* (a store empty at open holds only this run's ids: the set has them) */
        sqlite3_reset(s->get);
        sqlite3_bind_text(s->get, 1, id, -1, SQLITE_STATIC);
        done_before = sqlite3_step(s->get) == SQLITE_ROW;
        sqlite3_reset(s->get);
    }
    return !done_before && set_add(s, id);
}

static void seen_finish(seen_db *s, const char *id, const char *name, int ok)
{
    sqlite3_reset(s->finish);
    sqlite3_bind_text(s->finish, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->finish, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s->finish, 3, ok ? "done" : "failed", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s->finish, 4, (long long)time(NULL));
    sqlite3_step(s->finish);
    if (++s->pending >= 5000) {
        sqlite3_exec(s->db, "COMMIT; BEGIN", NULL, NULL, NULL);
        s->pending = 0;
    }
}

static void seen_close(seen_db *s)
{
    if (!s->db)
        return;
    sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
    sqlite3_finalize(s->get);
    sqlite3_finalize(s->finish);
    sqlite3_close(s->db);
    free(s->set);
    s->db = NULL;
}

/* ---- printing ---- */

static void print_job_human(const event_job *j, int indent)
{
    static const char *const st[] = {"ok", "FAILED", "skipped"};
    printf("%*sevent %s%s%s%s\n", indent, "", j->name, j->id ? " (id " : "", j->id ? j->id : "", j->id ? ")" : "");
    if (!j->nidx)
        printf("%*s  no hook is configured for this event\n", indent, "");
    for (int i = 0; i < j->nidx; i++) {
        const hook_result *r = &j->results[i];
        printf("%*s  %-7s %s  %lld ms", indent, "", st[r->status], r->hook, r->ms);
        if (r->status == HOOK_OK)
            printf("  -> %s\n", r->result_json ? r->result_json : "null");
        else if (r->error)
            printf("\n%*s          %s\n", indent, "", r->error);
        else
            printf("\n");
        if (r->plan_json) {
            json_doc *doc;
            json_value *v = json_parse(r->plan_json, strlen(r->plan_json), 0, &doc, NULL);
            for (json_value *k = v ? v->u.kids.head : NULL; k; k = k->next) {
                buf_t b;
                buf_init(&b, 0);
                json_writer w;
                jw_init(&w, &b);
                json_value *body = json_get(k, "body");
                if (body)
                    jw_value(&w, body);
                printf("%*s          planned: %s %s %s\n", indent, "", json_get_str(k, "method"),
                       json_get_str(k, "path"), buf_cstr(&b));
                buf_free(&b);
            }
            json_doc_free(doc);
        }
    }
    for (int i = 0; i < j->nchildren; i++)
        print_job_human(j->children[i], indent + 4);
}

/* ---- one event ---- */

typedef struct single {
    int finished;
} single;

static void single_done(event_job *j, void *arg)
{
    (void)j;
    ((single *)arg)->finished = 1;
}

/* ---- batch ---- */

typedef struct batch_event {
    long line;
    char *name, *id, *data;
} batch_event;

typedef struct batch {
    hook_table *t;
    seen_db seen;
    int dedupe;
    batch_event *ev;
    long nev, next, inflight, concurrency;
    long ok, failed, skipped, duplicates, malformed;
    buf_t failures;               /* JSON items */
    int nfailures;
    double t0;
    int progress;
    double last_draw;
    const char *src;
} batch;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void draw(batch *b, int final)
{
    if (!b->progress)
        return;
    double t = now_s();
    if (!final && t - b->last_draw < 0.1)
        return;
    b->last_draw = t;
    long done = b->ok + b->failed + b->skipped;
    long total = b->nev + b->malformed;
    int width = 30, fill = total ? (int)(width * (done + b->malformed) / total) : width;
    char bar[64];
    for (int i = 0; i < width; i++)
        bar[i] = i < fill ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r[%s] %ld/%ld  ok %ld  failed %ld  skipped %ld  %.1fs%s", bar, done + b->malformed, total, b->ok,
            b->failed, b->skipped + b->malformed, t - b->t0, final ? "\n" : "");
    fflush(stderr);
}

static void start_more(batch *b);

static void batch_done(event_job *j, void *arg)
{
    batch *b = arg;
    b->inflight--;
    if (j->nidx == 0) {
        b->skipped++;
    } else if (j->failed) {
        b->failed++;
        if (b->nfailures < 1000) {
            json_writer w;
            jw_init(&w, &b->failures);
            if (b->nfailures++)
                buf_addc(&b->failures, ',');
            event_job_json(j, &b->failures);
            (void)w;
        }
    } else {
        b->ok++;
    }
    if (b->dedupe && j->id && j->nidx)
        seen_finish(&b->seen, j->id, j->name, !j->failed);
    event_job_free(j);
    draw(b, 0);
    start_more(b);
}

static void start_more(batch *b)
{
    while (b->inflight < b->concurrency && b->next < b->nev) {
        batch_event *e = &b->ev[b->next++];
        if (!hooks_count_for(b->t, e->name)) {
            b->skipped++; /* no hook listens: nothing to run, nothing to remember */
            continue;
        }
        if (b->dedupe && e->id && !seen_claim(&b->seen, e->id, e->name)) {
            b->skipped++;
            b->duplicates++;
            continue;
        }
        b->inflight++;
        if (!event_fire(b->t, e->name, e->id, e->data, batch_done, b)) {
            b->inflight--;
            b->failed++;
        }
    }
}

/* Splits NDJSON into events; malformed lines are reported and counted. */
static void parse_batch(batch *b, char *text, size_t len)
{
    long cap = 1024, line = 0;
    b->ev = malloc((size_t)cap * sizeof *b->ev);
    char *p = text, *end = text + len;
    while (p < end && b->ev) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *le = nl ? nl : end;
        line++;
        size_t n = (size_t)(le - p);
        int blank = 1;
        for (size_t i = 0; i < n; i++)
            if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r')
                blank = 0;
        if (!blank) {
            json_doc *doc;
            json_error e;
            json_value *v = json_parse(p, n, 0, &doc, &e);
            const char *why = NULL;
            char msg[200];
            json_value *name = v ? json_get(v, "event") : NULL, *id = v ? json_get(v, "id") : NULL;
            json_value *data = v ? json_get(v, "data") : NULL;
            if (!v) {
                snprintf(msg, sizeof msg, "column %d: %s", e.col, e.msg);
                why = msg;
            } else if (v->type != JSON_OBJECT) {
                why = "a line must be a JSON object";
            } else if (!name || name->type != JSON_STRING || !name->u.str.len) {
                why = "\"event\" (a non-empty string) is required";
            } else if (id && id->type != JSON_STRING && id->type != JSON_NUMBER && id->type != JSON_NULL) {
                why = "\"id\" must be a string or a number";
            } else if (data && data->type != JSON_OBJECT && data->type != JSON_NULL) {
                why = "\"data\" must be an object";
            }
            if (why) {
                fprintf(stderr, "%s%s:%ld: %s (line skipped)\n", b->progress ? "\r\033[K" : "", b->src, line, why);
                b->malformed++;
            } else {
                if (b->nev == cap) {
                    cap *= 2;
                    batch_event *ne = realloc(b->ev, (size_t)cap * sizeof *ne);
                    if (!ne) {
                        json_doc_free(doc);
                        break;
                    }
                    b->ev = ne;
                }
                batch_event *ev = &b->ev[b->nev++];
                ev->line = line;
                ev->name = strndup(name->u.str.s, name->u.str.len);
                ev->id = NULL;
                if (id && id->type == JSON_STRING)
                    ev->id = strndup(id->u.str.s, id->u.str.len);
                else if (id && id->type == JSON_NUMBER && asprintf(&ev->id, "%.17g", id->u.number) < 0)
                    ev->id = NULL;
                buf_t d;
                buf_init(&d, 0);
                json_writer w;
                jw_init(&w, &d);
                if (data && data->type == JSON_OBJECT)
                    jw_value(&w, data);
                else
                    buf_adds(&d, "{}");
                ev->data = buf_steal(&d, NULL);
            }
            json_doc_free(doc);
        }
        p = nl ? nl + 1 : end;
    }
}

static int run_batch(wixr_host *h, hook_table *t, const char *src, int dedupe, long concurrency, int json,
                     int quiet)
{
    batch b = {.t = t, .dedupe = dedupe, .concurrency = concurrency, .src = strcmp(src, "-") ? src : "<stdin>"};
    b.progress = !quiet && !json && isatty(2);
    buf_init(&b.failures, 0);
    size_t len;
    char *text = cli_read_file(src, &len);
    if (!text) {
        fprintf(stderr, "wixr fire: %s: %s\n", src, strerror(errno));
        return EXIT_BAD_INPUT;
    }
    char err[1024];
    if (dedupe && seen_open(&b.seen, h->cfg->state_dir, err, sizeof err) < 0) {
        fprintf(stderr, "wixr fire: %s\n", err);
        free(text);
        return EXIT_WORK_FAILED;
    }
    /* Policies log a JSON line per event: buffer stderr for the batch (flushed
     * with the progress bar and at the end) instead of a write per line. */
    static char errbuf[1 << 16];
    setvbuf(stderr, errbuf, _IOFBF, sizeof errbuf);
    b.t0 = now_s();
    parse_batch(&b, text, len);
    free(text);
    start_more(&b);
    sched_run(h->sched);
    draw(&b, 1);
    fflush(stderr);
    double secs = now_s() - b.t0;
    long total = b.ok + b.failed + b.skipped;
    if (json) {
        printf("{\"events\":%ld,\"ok\":%ld,\"failed\":%ld,\"skipped\":%ld,\"duplicates\":%ld,\"malformed\":%ld,"
               "\"seconds\":%.3f,\"failures\":[%s]}\n",
               total, b.ok, b.failed, b.skipped, b.duplicates, b.malformed, secs, buf_cstr(&b.failures));
    } else {
        fprintf(stderr, "%ld events: %ld ok, %ld failed, %ld skipped (%ld seen before, %ld without hooks), "
                        "%ld malformed lines; %.2f s, %.0f events/s\n",
                total, b.ok, b.failed, b.skipped, b.duplicates, b.skipped - b.duplicates, b.malformed, secs,
                secs > 0 ? (double)total / secs : 0.0);
        if (b.failed) {
            json_doc *doc;
            buf_t arr;
            buf_init(&arr, 0);
            buf_printf(&arr, "[%s]", buf_cstr(&b.failures));
            json_value *v = json_parse(arr.data, arr.len, 0, &doc, NULL);
            int shown = 0;
            for (json_value *k = v ? v->u.kids.head : NULL; k && shown < 20; k = k->next, shown++) {
                json_value *hooks = json_get(k, "hooks");
                for (json_value *hk = hooks ? hooks->u.kids.head : NULL; hk; hk = hk->next)
                    if (json_get_str(hk, "error"))
                        fprintf(stderr, "  %s %s: %s\n", json_get_str(k, "event"),
                                json_get_str(k, "id") ? json_get_str(k, "id") : "", json_get_str(hk, "error"));
            }
            json_doc_free(doc);
            buf_free(&arr);
        }
    }
    for (long i = 0; i < b.nev; i++) {
        free(b.ev[i].name);
        free(b.ev[i].id);
        free(b.ev[i].data);
    }
    free(b.ev);
    buf_free(&b.failures);
    seen_close(&b.seen);
    return b.failed || b.malformed ? EXIT_WORK_FAILED : 0;
}

int cmd_fire(int argc, char **argv)
{
    const char *name = NULL, *data = NULL, *id = NULL, *config = NULL, *batch_src = NULL;
    int dry = 0, json = 0, quiet = 0, dedupe = 1;
    long long concurrency = 64;
    const cli_opt opts[] = {
        {"--dry-run", OPT_FLAG, &dry, 1, 0, NULL},
        {"--json", OPT_FLAG, &json, 1, 0, NULL},
        {"--quiet", OPT_FLAG, &quiet, 1, 0, NULL},
        {"--no-dedupe", OPT_FLAG, &dedupe, 0, 0, NULL},
        {"--batch", OPT_OPTIONAL, &batch_src, 0, 0, "-"},
        {"--data", OPT_VALUE, &data, 0, 0, NULL},
        {"--id", OPT_VALUE, &id, 0, 0, NULL},
        {"--config", OPT_VALUE, &config, 0, 0, NULL},
        {"--concurrency", OPT_NUMBER, &concurrency, 1, 100000, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr fire", usage, opts, &name, 1, "event NAME"};
    int rc = cli_parse(&cmd, argc, argv, NULL);
    if (rc != CLI_GO)
        return rc;
    if (!name == !batch_src)
        return cli_usage_error(&cmd, "give an event NAME or --batch%s", name ? ", not both" : "");
    char err[8192];
    wixr_config cfg;
    if (config_load(&cfg, config, err, sizeof err) < 0) {
        fprintf(stderr, "%s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (!cfg.path) {
        fprintf(stderr, "wixr fire: no configuration found (give --config, set WIXR_CONFIG, or create wixr.yaml)\n");
        config_free(&cfg);
        return EXIT_BAD_INPUT;
    }
    rc = EXIT_WORK_FAILED;
    wixr_host *h = host_new(&cfg, dry, err, sizeof err);
    if (!h) {
        fprintf(stderr, "wixr fire: %s\n", err);
        config_free(&cfg);
        return EXIT_BAD_INPUT;
    }
    buf_t errors;
    buf_init(&errors, 0);
    hook_table *t = hooks_load(h, &cfg, &errors);
    if (!t) {
        fprintf(stderr, "%s\n", buf_cstr(&errors));
        buf_free(&errors);
        rc = EXIT_BAD_INPUT;
        goto done;
    }
    buf_free(&errors);
    if (batch_src) {
        rc = run_batch(h, t, batch_src, dedupe, (long)concurrency, json, quiet);
        goto done;
    }
    char *event_data = NULL;
    if (data) {
        size_t len;
        event_data = cli_read_file(data, &len);
        if (!event_data) {
            fprintf(stderr, "wixr fire: %s: %s\n", data, strerror(errno));
            rc = EXIT_BAD_INPUT;
            goto done;
        }
        json_doc *doc;
        json_error e;
        json_value *v = json_parse(event_data, len, 0, &doc, &e);
        int not_object = v && v->type != JSON_OBJECT;
        json_doc_free(doc);
        if (!v || not_object) {
            if (v)
                fprintf(stderr, "wixr fire: %s: the event data must be a JSON object\n", data);
            else
                fprintf(stderr, "wixr fire: %s:%d:%d: %s\n", strcmp(data, "-") ? data : "<stdin>", e.line, e.col,
                        e.msg);
            free(event_data);
            rc = EXIT_BAD_INPUT;
            goto done;
        }
    }
    if (!hooks_count_for(t, name)) {
        fprintf(stderr, "wixr fire: no enabled hook is configured for event '%s' in %s\n", name, cfg.path);
        free(event_data);
        rc = EXIT_BAD_INPUT;
        goto done;
    }
    seen_db seen = {0};
    if (id) {
        if (seen_open(&seen, cfg.state_dir, err, sizeof err) < 0) {
            fprintf(stderr, "wixr fire: %s\n", err);
            free(event_data);
            goto done;
        }
        if (!seen_claim(&seen, id, name)) {
            fprintf(stderr, "wixr fire: event %s was seen before; not run again\n", id);
            if (json)
                printf("{\"event\":\"%s\",\"id\":\"%s\",\"ok\":true,\"skipped\":\"seen before\"}\n", name, id);
            seen_close(&seen);
            free(event_data);
            rc = 0;
            goto done;
        }
    }
    single s = {0};
    event_job *j = event_fire(t, name, id, event_data ? event_data : "{}", single_done, &s);
    free(event_data);
    if (j)
        sched_run(h->sched);
    if (!j || !s.finished) {
        fprintf(stderr, "wixr fire: the event did not finish\n");
        event_job_free(j);
        seen_close(&seen);
        goto done;
    }
    if (id)
        seen_finish(&seen, id, name, !j->failed);
    seen_close(&seen);
    if (json) {
        buf_t out;
        buf_init(&out, 0);
        event_job_json(j, &out);
        printf("%s\n", buf_cstr(&out));
        buf_free(&out);
    } else {
        print_job_human(j, 0);
    }
    rc = j->failed ? EXIT_WORK_FAILED : 0;
    event_job_free(j);
done:
    hooks_free(t);
    host_free(h);
    config_free(&cfg);
    return rc;
}
