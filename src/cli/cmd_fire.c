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
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <poll.h>
#include <unistd.h>

#include "../app/app.h"
#include "../hooks/hooks.h"
#include "../journal/journal.h"
#include "../json/json.h"
#include "../serve/workers.h"
#include "../serve/setup.h"
#include "../serve/serve.h"
#include "../util/strset.h"
#include "batch_input.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr fire NAME [--data FILE.json|-] [--id ID] [options]\n"
    "       wixr fire --batch [FILE.ndjson|-] [options]\n"
    "\n"
    "Runs the hooks configured for event NAME, in order, on one event and prints each\n"
    "hook's outcome and what it returned. With --batch, reads one event per line,\n"
    "{\"event\": NAME, \"id\": ID, \"data\": {...}}, and runs them concurrently.\n"
    "\n"
    "Every real run is recorded in the journal wixr serve uses (serve.journal, else\n"
    "<state_dir>/journal.db), so 'wixr events list|show' sees it; an event without an id\n"
    "gets a new one. An id whose event is done there is not run again; one that failed\n"
    "runs again. A dry run records nothing.\n"
    "\n"
    "Options:\n"
    "  --config FILE       configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  --data FILE.json    the event's data ('-' reads standard input; default {})\n"
    "  --id ID             the event's id (an id that is done is not run again)\n"
    "  --batch [FILE]      NDJSON events from FILE or standard input ('-', the default), run\n"
    "                      as they are read (a line over serve.max_body_kb is skipped)\n"
    "  --concurrency N     events in flight at once in a batch (default 64)\n"
    "  --workers N         with --batch: worker processes that run the hooks (default:\n"
    "                      serve.workers, the number of cores)\n"
    "  --no-dedupe         run events even when their id is done (or queued for wixr serve)\n"
    "  --dry-run           mutating calls are planned, not sent (reads go through); nothing recorded\n"
    "  --json              JSON on standard output: the event's report; with --batch one line\n"
    "                      per event, then a summary line\n"
    "  --verbose           with --batch: one line per event (per hook) on standard output\n"
    "  --quiet             no progress bar\n"
    "  -h, --help          this help\n"
    "\n"
    "Exit codes: 0 every hook succeeded, 1 a hook failed, a line was malformed or the\n"
    "journal could not be written, 2 usage, 3 bad configuration, script or event data.\n";

/* Results and planned calls come in a stable order already: the wix module
 * writes every object's keys sorted (luajson.c), so reports, the journal and
 * golden files do not change from run to run. */

/* The first error of the event or its chained events ("" when none). */
static void first_error(const event_job *j, char *out, size_t n)
{
    out[0] = '\0';
    for (int i = 0; i < j->nidx && !out[0]; i++)
        if (j->results[i].error)
            snprintf(out, n, "%s", j->results[i].error);
    for (int i = 0; i < j->nchildren && !out[0]; i++)
        first_error(j->children[i], out, n);
}

/* ---- the event store: the journal wixr serve uses ----
 *
 * Before an event runs, its id is looked up: done -> skipped; accepted,
 * running or retrying -> skipped (the service holds it: running it here too
 * would run it twice); dead or unknown -> it runs. A real run is recorded
 * when it ends, in one statement, as done or dead (journal_record_runs):
 * never in a pending state, which a service on the same file would pick up
 * and run a second time. Finished runs are written in groups (at most
 * RECORD_GROUP events or RECORD_MS apart, each group one short transaction),
 * so a batch never holds the journal's write lock while hooks run. Like the
 * service's run state changes, they are committed without waiting for the
 * disk (journal_set_durable 0): a record lost to a power cut, like an event
 * cut short by a stop of the process, only means the event runs again, with
 * the same derived idempotency keys. */

#define RECORD_GROUP 1024
#define RECORD_MS 200

enum { CLAIM_RUN, CLAIM_DONE, CLAIM_QUEUED, CLAIM_REPEAT };

typedef struct pending_run {
    journal_run r;
    char *id, *name, *data, *error, *results;
} pending_run;

typedef struct store {
    journal *j;                   /* NULL: a dry run with no journal yet */
    int record, dedupe;
    char path[4096];
    strset ids_seen;              /* ids claimed by this run, copied into ... */
    struct id_block *ids;         /* ... these blocks: a batch's memory grows by its ids' bytes, no more */
    long keep_days, keep_events;  /* the journal's retention (serve.journal_keep_*), applied at close */
    pending_run *pend;
    int npend;
    double last_flush;
    long unrecorded;              /* runs the journal refused */
    char queued_state[16];        /* the state of the last CLAIM_QUEUED */
} store;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Ids recorded by earlier versions in <state_dir>/events.db: the finished
 * ones are imported once (as done, without their data, which that file did
 * not keep) and the file renamed to events.db.imported. Failed ones are
 * not imported: they run again, as failed events do now. */
static void import_events_db(store *s, const char *state_dir)
{
    char old[4096], moved[4200];
    snprintf(old, sizeof old, "%s/events.db", state_dir);
    if (access(old, F_OK) != 0)
        return;
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    long imported = 0;
    int ok = sqlite3_open_v2(old, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK &&
             sqlite3_busy_timeout(db, 5000) == SQLITE_OK &&
             sqlite3_prepare_v2(db, "SELECT id, name FROM events WHERE state = 'done'", -1, &q, NULL) == SQLITE_OK;
    char err[512] = "";
    if (!ok)
        snprintf(err, sizeof err, "%s", db ? sqlite3_errmsg(db) : "out of memory");
    enum { GROUP = 1000 };
    journal_run *runs = ok ? calloc(GROUP, sizeof *runs) : NULL;
    if (ok && !runs) {
        ok = 0;
        snprintf(err, sizeof err, "out of memory");
    }
    int n = 0, rc = SQLITE_ROW;
    while (ok && rc == SQLITE_ROW) {
        rc = sqlite3_step(q);
        if (rc == SQLITE_ROW) {
            const char *id = (const char *)sqlite3_column_text(q, 0), *name = (const char *)sqlite3_column_text(q, 1);
            if (id && *id && name && *name) {
                runs[n] = (journal_run){.id = strdup(id), .name = strdup(name), .data_json = "{}", .ok = 1};
                n++;
            }
        } else if (rc != SQLITE_DONE) {
            ok = 0;
            snprintf(err, sizeof err, "%s", sqlite3_errmsg(db));
        }
        if (n == GROUP || (rc != SQLITE_ROW && n)) {
            for (int i = 0; i < n; i++)
                if (!runs[i].id || !runs[i].name)
                    ok = 0;
            if (!ok && !err[0])
                snprintf(err, sizeof err, "out of memory");
            if (ok && journal_record_runs(s->j, runs, n, 1, err, sizeof err) < 0)
                ok = 0;
            for (int i = 0; i < n; i++) {
                imported += ok && runs[i].result == 0;
                free((char *)runs[i].id);
                free((char *)runs[i].name);
            }
            n = 0;
        }
    }
    free(runs);
    sqlite3_finalize(q);
    sqlite3_close(db);
    snprintf(moved, sizeof moved, "%s.imported", old);
    if (ok && rename(old, moved) < 0) {
        ok = 0;
        snprintf(err, sizeof err, "renaming it: %s", strerror(errno));
    }
    if (ok)
        fprintf(stderr, "wixr fire: %ld finished event ids imported from %s into %s (the old file is now %s)\n",
                imported, old, s->path, moved);
    else
        fprintf(stderr, "wixr fire: %s: not imported (%s); its ids are not deduplicated\n", old, err);
}

static int store_open(store *s, const wixr_config *cfg, int dry, int dedupe, char *err, size_t errlen)
{
    memset(s, 0, sizeof *s);
    s->record = !dry;
    s->dedupe = dedupe;
    s->last_flush = now_s();
    serve_journal_path(cfg, s->path, sizeof s->path);
    if (dry && access(s->path, F_OK) != 0)
        return 0; /* nothing recorded yet, and a dry run creates nothing */
    if (!dry && !cfg->serve.journal && mkdir(cfg->state_dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create: %s", cfg->state_dir, strerror(errno));
        return -1;
    }
    if (!(s->j = journal_open(s->path, err, errlen)))
        return -1;
    journal_set_durable(s->j, 0);
    if (!dry)
        import_events_db(s, cfg->state_dir);
    s->keep_days = cfg->serve.journal_keep_days;
    s->keep_events = cfg->serve.journal_keep_events;
    return 0;
}

#define ID_BLOCK (64 * 1024)
typedef struct id_block {
    struct id_block *next;
    size_t used;
    char text[ID_BLOCK];
} id_block;

/* (every id is at most JOURNAL_ID_MAX bytes: parse_line and new_event_id see to it) */
static char *keep_id(store *s, const char *id)
{
    size_t n = strnlen(id, JOURNAL_ID_MAX) + 1;
    if (!s->ids || ID_BLOCK - s->ids->used < n) {
        id_block *b = malloc(sizeof *b);
        if (!b)
            return NULL;
        b->next = s->ids;
        b->used = 0;
        s->ids = b;
    }
    char *p = memcpy(s->ids->text + s->ids->used, id, n - 1);
    p[n - 1] = '\0';
    s->ids->used += n;
    return p;
}

/* Adds id to the set of this run's ids; 0 when it was there already. */
static int set_add(store *s, const char *id)
{
    if (strset_has(&s->ids_seen, id))
        return 0;
    const char *kept = keep_id(s, id);
    if (kept && strset_add(&s->ids_seen, kept) < 0)
        kept = NULL;
    return 1; /* (no memory to keep it: it runs, as the first of its id would) */
}

/* May this run run the event? CLAIM_*. state is the id's state in the
 * journal (-1: not there; see store_states). */
static int store_claim(store *s, const char *id, int state)
{
    if (!s->dedupe || !id)
        return CLAIM_RUN;
    if (!set_add(s, id))
        return CLAIM_REPEAT;
    if (state == EV_DONE)
        return CLAIM_DONE;
    if (state >= 0 && state != EV_DEAD) {
        snprintf(s->queued_state, sizeof s->queued_state, "%s", journal_state_name((ev_state)state));
        return CLAIM_QUEUED;
    }
    return CLAIM_RUN;
}

static void store_flush(store *s)
{
    if (!s->npend)
        return;
    char err[1024];
    journal_run *runs = malloc((size_t)s->npend * sizeof *runs);
    int bad = !runs;
    if (runs) {
        for (int i = 0; i < s->npend; i++)
            runs[i] = s->pend[i].r;
        bad = journal_record_runs(s->j, runs, s->npend, 0, err, sizeof err) < 0;
    } else {
        snprintf(err, sizeof err, "out of memory");
    }
    if (bad) {
        fprintf(stderr, "wixr fire: %s: %d finished event%s not recorded: %s\n", s->path, s->npend,
                s->npend == 1 ? "" : "s", err);
        s->unrecorded += s->npend;
    }
    for (int i = 0; !bad && i < s->npend; i++)
        if (runs[i].result) /* (--no-dedupe ran an event the service holds: its record is the service's) */
            fprintf(stderr, "wixr fire: event %s is queued for wixr serve in %s: this run was not recorded\n",
                    runs[i].id, s->path);
    free(runs);
    for (int i = 0; i < s->npend; i++) {
        pending_run *p = &s->pend[i];
        free(p->id);
        free(p->name);
        free(p->data);
        free(p->error);
        free(p->results);
    }
    s->npend = 0;
    s->last_flush = now_s();
}

/* Records a finished real run (in the next group): error NULL when it succeeded. */
static void store_finish_raw(store *s, const char *id, const char *name, const char *data, const char *error,
                             const char *results)
{
    if (!s->record || !s->j || !id)
        return;
    if (!s->pend && !(s->pend = calloc(RECORD_GROUP, sizeof *s->pend))) {
        s->unrecorded++;
        return;
    }
    pending_run *p = &s->pend[s->npend];
    *p = (pending_run){.id = strdup(id), .name = strdup(name), .data = strdup(data),
                       .error = error ? strdup(error) : NULL, .results = strdup(results)};
    if (!p->id || !p->name || !p->data || !p->results || (error && !p->error)) {
        free(p->id);
        free(p->name);
        free(p->data);
        free(p->error);
        free(p->results);
        s->unrecorded++;
        return;
    }
    p->r = (journal_run){.id = p->id, .name = p->name, .data_json = p->data, .ok = !error,
                         .error = p->error, .results_json = p->results};
    s->npend++;
    if (s->npend >= RECORD_GROUP || (now_s() - s->last_flush) * 1000 >= RECORD_MS)
        store_flush(s);
}

static void store_finish(store *s, const event_job *j)
{
    if (!s->record || !s->j || !j->id)
        return;
    char err[2048];
    first_error(j, err, sizeof err);
    buf_t res;
    buf_init(&res, 0);
    event_job_json(j, &res);
    store_finish_raw(s, j->id, j->name, j->data_json, j->failed ? err : NULL, buf_cstr(&res));
    buf_free(&res);
}

static void store_close(store *s)
{
    if (s->j)
        store_flush(s);
    /* the retention wixr serve keeps in the background, for a journal only fire writes (a bounded
     * amount a run: what is left goes next time) */
    long long cut = s->keep_days ? journal_now_ms() - s->keep_days * 86400000LL : 0;
    for (int i = 0; s->j && s->record && (cut || s->keep_events) && i < 20; i++)
        if (journal_retain(s->j, cut, s->keep_events, 500) < 500)
            break;
    free(s->pend);
    strset_free(&s->ids_seen);
    while (s->ids) {
        id_block *b = s->ids->next;
        free(s->ids);
        s->ids = b;
    }
    journal_close(s->j);
    s->j = NULL;
}

/* A new event id (a UUID, as wixr serve gives an event posted without one). */
static char *new_event_id(void)
{
    unsigned char r[16];
    if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r)
        return NULL;
    r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);
    char *id = NULL;
    if (asprintf(&id, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3],
                 r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]) < 0)
        return NULL;
    return id;
}

/* ---- reports ---- */

/* The event's report: event_job_json's (the one wixr serve keeps in the
 * journal: {"event","id","ok","hooks":[{"hook","status","result"?,"error"?,
 * "planned"?,"ms"}],"chained"?}), with "dry_run": true first in a dry run. */
static void write_report(json_writer *w, const char *report, size_t len, int dry)
{
    if (dry && len > 1 && report[0] == '{') { /* the report's own '{' goes: the object is open already */
        buf_t b;
        buf_init(&b, 0);
        buf_adds(&b, "{\"dry_run\":true,");
        buf_add(&b, report + 1, len - 1);
        jw_raw(w, b.data, b.len);
        buf_free(&b);
    } else {
        jw_raw(w, report, len);
    }
}

static void write_job(json_writer *w, const event_job *j, int dry)
{
    buf_t b;
    buf_init(&b, 0);
    event_job_json(j, &b);
    write_report(w, b.data ? b.data : "{}", b.data ? b.len : 2, dry);
    buf_free(&b);
}

/* An event that did not run: {"event","id","ok":true,"dry_run"?,"skipped":why} */
static void write_skipped(json_writer *w, const char *name, const char *id, const char *why, int dry)
{
    jw_obj(w);
    jw_kstr(w, "event", name);
    jw_kstr(w, "id", id);
    jw_key(w, "ok");
    jw_bool(w, 1);
    if (dry) {
        jw_key(w, "dry_run");
        jw_bool(w, 1);
    }
    jw_kstr(w, "skipped", why);
    jw_obj_end(w);
}

/* Writes what the writer built as one line of standard output. */
static void put_line(buf_t *b)
{
    buf_addc(b, '\n');
    fwrite(b->data, 1, b->len, stdout);
    buf_free(b);
}

static void print_job_human(const event_job *j, int indent, int dry)
{
    static const char *const st[] = {"ok", "FAILED", "skipped"};
    printf("%*sevent %s%s%s%s%s\n", indent, "", j->name, j->id ? " (id " : "", j->id ? j->id : "", j->id ? ")" : "",
           dry ? "  [dry run: nothing sent or recorded]" : "");
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
        print_job_human(j->children[i], indent + 4, 0);
}

/* The hook's script for a --verbose line: "order (ev.lua)" of event order -> "ev.lua". */
static void hook_label(const char *hook, const char *event, char *out, size_t n)
{
    size_t el = strlen(event), hl = strlen(hook);
    if (hl > el + 3 && !strncmp(hook, event, el) && hook[el] == ' ' && hook[el + 1] == '(' && hook[hl - 1] == ')')
        snprintf(out, n, "%.*s", (int)(hl - el - 3), hook + el + 2);
    else
        snprintf(out, n, "%s", hook);
}

/* --verbose: one line per hook run (an event with one hook: one line). */
static void job_lines(const event_job *j, buf_t *out)
{
    for (int i = 0; i < j->nidx; i++) {
        const hook_result *r = &j->results[i];
        char label[256];
        hook_label(r->hook, j->name, label, sizeof label);
        buf_printf(out, "  %-9s %-22s %-24s ", j->id ? j->id : "-", j->name, label);
        if (r->status == HOOK_OK)
            buf_adds(out, r->result_json ? r->result_json : "null");
        else
            buf_printf(out, "%s: %s", r->status == HOOK_FAILED ? "FAILED" : "SKIPPED",
                       r->error ? r->error : "an earlier hook failed");
        if (r->plan_json) {
            json_doc *doc;
            json_value *v = json_parse(r->plan_json, strlen(r->plan_json), 0, &doc, NULL);
            const char *sep = "  (dry run, planned: ";
            for (json_value *k = v ? v->u.kids.head : NULL; k; k = k->next, sep = ", ")
                buf_printf(out, "%s%s %s", sep, json_get_str(k, "method"), json_get_str(k, "path"));
            if (v && v->u.kids.head)
                buf_addc(out, ')');
            json_doc_free(doc);
        }
        buf_addc(out, '\n');
    }
    for (int i = 0; i < j->nchildren; i++)
        job_lines(j->children[i], out);
}

/* What a worker sends back for the front to print (cli.h): the --verbose lines
 * and the failure notes ("  event id: error" per hook error). */
static void note_lines(const event_job *j, buf_t *out, int *n);

void fire_render(const event_job *j, int flags, buf_t *out)
{
    if (flags & FIRE_RENDER_VERBOSE)
        job_lines(j, out);
    buf_addc(out, '\x1e'); /* then the failure notes */
    int n = 0;
    if (j->failed)
        note_lines(j, out, &n);
}

static void note_lines(const event_job *j, buf_t *out, int *n)
{
    for (int i = 0; i < j->nidx && *n < 20; i++)
        if (j->results[i].error) {
            buf_printf(out, "  %s %s: %s\n", j->name, j->id ? j->id : "", j->results[i].error);
            (*n)++;
        }
    for (int i = 0; i < j->nchildren; i++)
        note_lines(j->children[i], out, n);
}

/* ---- the progress bar ----
 *
 * On a terminal, standard error is swapped for a stream that erases the bar
 * before anything else is written (ctx.log lines, messages), so the bar never
 * shares a line with them; it is drawn again at the next tick. */

typedef struct bar {
    int on, shown, at_line_start;
    FILE *orig, *stream;
    double last_draw;
} bar;

static void write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static ssize_t bar_stream_write(void *cookie, const char *p, size_t n)
{
    bar *b = cookie;
    if (b->shown) {
        write_all(2, "\r\033[K", 4);
        b->shown = 0;
    }
    write_all(2, p, n);
    if (n)
        b->at_line_start = p[n - 1] == '\n';
    return (ssize_t)n;
}

static void bar_start(bar *b)
{
    b->at_line_start = 1;
    fflush(stderr);
    cookie_io_functions_t io = {.write = bar_stream_write};
    FILE *f = fopencookie(b, "w", io);
    if (!f) {
        b->on = 0;
        return;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 16);
    b->orig = stderr;
    b->stream = f;
    stderr = f;
}

static void bar_stop(bar *b)
{
    if (!b->stream)
        return;
    fflush(b->stream);
    stderr = b->orig;
    fclose(b->stream);
    b->stream = NULL;
}

/* ---- running events ---- */

/* Events are read a window at a time (at most LOOKUP_GROUP): their ids are
 * looked up in the journal together, and each leaves the window when it
 * starts or is skipped. A batch frees an event when it ends. */
#define LOOKUP_GROUP 4096

typedef struct run {
    hook_table *t;                /* one event: in this process */
    const wixr_config *cfg;
    name_index events;            /* a batch: the event names with an enabled hook */
    worker_pool *pool;                   /* a batch: the worker processes */
    batch_input *in;              /* a batch's events, read as they are needed */
    batch_event **again;          /* bystanders of a worker's death, to run again alone */
    long nagain;
    store st;
    int batch, dry, json, verbose;
    batch_event *ev[LOOKUP_GROUP]; /* the window: events read, not started yet */
    long nev, next, inflight, concurrency;
    long ok, failed, skipped, duplicates, queued, malformed;
    buf_t failures;               /* text: "  event id: error" lines; JSON: the reports, comma-separated */
    int nfailures;
    double t0;
    bar bar;
    event_job *single;            /* one event: its job, kept for the report */
    const char *single_skip;      /* one event: why it did not run */
} run;

static void draw(run *r, int final)
{
    bar *b = &r->bar;
    if (!b->on)
        return;
    double t = now_s();
    if (!final && t - b->last_draw < 0.1)
        return;
    b->last_draw = t;
    fflush(stderr); /* what waits goes first (it erases the bar) */
    if (!b->at_line_start && !final)
        return;
    long done = r->ok + r->failed + r->skipped + batch_input_malformed(r->in);
    /* how far: the share of the file read (a pipe's end is not known: no bar) */
    double read = final ? 1 : batch_input_done(r->in);
    char line[256], barc[64] = "";
    if (read >= 0) {
        int width = 30, fill = (int)(width * read);
        barc[0] = '[';
        for (int i = 0; i < width; i++)
            barc[1 + i] = i < fill ? '#' : '.';
        memcpy(barc + 1 + width, "] ", 3);
    }
    int n = snprintf(line, sizeof line, "%s\r\033[K%s%ld events  ok %ld  failed %ld  skipped %ld  %.1fs%s",
                     b->at_line_start ? "" : "\n", barc, done, r->ok, r->failed,
                     r->skipped + batch_input_malformed(r->in), t - r->t0, final ? "\n" : "");
    write_all(2, line, (size_t)n);
    b->shown = !final;
    b->at_line_start = final;
}

/* An event of a batch is done with (one event is its caller's). */
static void event_end(run *r, batch_event *e)
{
    if (r->batch)
        batch_event_free(e);
}

static void skip_event(run *r, batch_event *e, const char *why)
{
    r->skipped++;
    if (!r->batch) {
        r->single_skip = why;
        return;
    }
    if (r->json) {
        buf_t b;
        buf_init(&b, 0);
        json_writer w;
        jw_init(&w, &b);
        write_skipped(&w, e->name, e->id, why, r->dry);
        put_line(&b);
    } else if (r->verbose) {
        printf("  %-9s %-22s %-24s skipped: %s\n", e->id ? e->id : "-", e->name, "-", why);
    }
    event_end(r, e);
}

static void start_more(run *r);

/* One event, run in this process (a batch runs in workers: batch_done). */
static void event_done(event_job *j, void *arg)
{
    run *r = arg;
    r->inflight--;
    store_finish(&r->st, j);
    if (j->failed)
        r->failed++;
    else
        r->ok++;
    r->single = j;
}

/* Reads the journal states of the window's ids: one read transaction per
 * window, not one per event. */
static void look_up(run *r)
{
    if (!r->st.j || !r->st.dedupe)
        return; /* (each event's state is -1 already) */
    const char *ids[LOOKUP_GROUP];
    int states[LOOKUP_GROUP];
    for (long i = 0; i < r->nev; i++)
        ids[i] = r->ev[i]->id;
    char err[1024];
    if (journal_states(r->st.j, ids, (int)r->nev, states, err, sizeof err) < 0) {
        fprintf(stderr, "wixr fire: %s: %s (these events run without a look-up)\n", r->st.path, err);
        return;
    }
    for (long i = 0; i < r->nev; i++)
        r->ev[i]->state = states[i];
}

/* The next event to start, or NULL when none is read yet (or the input ended). */
static batch_event *next_event(run *r)
{
    if (r->next == r->nev && r->in) {
        r->next = r->nev = 0;
        batch_event *e;
        /* (no more than the free places at a time: reading is the loop's work, and a long read keeps
         * the workers' answers waiting) */
        long want = r->concurrency - r->inflight < 64 ? 64 : r->concurrency - r->inflight;
        while (r->nev < LOOKUP_GROUP && r->nev < want && batch_input_next(r->in, &e) == 1)
            r->ev[r->nev++] = e;
        look_up(r);
    }
    if (r->next == r->nev)
        return NULL;
    batch_event *e = r->ev[r->next];
    r->ev[r->next++] = NULL;
    return e;
}

static int hooks_for(const run *r, const char *name)
{
    if (r->t)
        return hooks_count_for(r->t, name);
    int n;
    name_index_find(&r->events, name, &n);
    return n;
}

static void start_more(run *r)
{
    while (r->pool && r->nagain && workers_has_room(r->pool, 1)) {
        batch_event *e = r->again[--r->nagain];
        if (workers_run(r->pool, e->id, e->name, e->data, 1, e) == 0)
            r->inflight++;
        else
            r->again[r->nagain++] = e;
        if (!r->inflight)
            break;
    }
    batch_event *e;
    while (r->inflight < r->concurrency && (!r->pool || workers_has_room(r->pool, 0)) && (e = next_event(r))) {
        if (!hooks_for(r, e->name)) {
            skip_event(r, e, "no hook"); /* nothing to run, nothing to remember */
            continue;
        }
        int claim = store_claim(&r->st, e->id, e->state);
        if (claim == CLAIM_DONE || claim == CLAIM_REPEAT) {
            r->duplicates++;
            skip_event(r, e, claim == CLAIM_DONE ? "done before" : "repeated in this batch");
            continue;
        }
        if (claim == CLAIM_QUEUED) {
            r->queued++;
            skip_event(r, e, !strcmp(r->st.queued_state, "running") ? "running in wixr serve"
                                                                      : "queued for wixr serve");
            continue;
        }
        if (!e->id && r->st.record && !(e->id = new_event_id())) {
            r->failed++;
            fprintf(stderr, "wixr fire: no randomness for an event id\n");
            event_end(r, e);
            continue;
        }
        r->inflight++;
        if (r->pool ? workers_run(r->pool, e->id, e->name, e->data, 0, e) < 0
                    : !event_fire(r->t, e->name, e->id, e->data, event_done, r)) {
            r->inflight--;
            r->failed++;
            event_end(r, e);
        }
    }
}

/* ---- a batch in worker processes ---- */

static void add_failure_notes(run *r, const char *notes)
{
    for (const char *p = notes; *p && r->nfailures < 20;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p + 1) : strlen(p);
        buf_add(&r->failures, p, n);
        r->nfailures++;
        p += n;
    }
}

/* Log lines of the workers go through this process's standard error (the
 * progress bar's stream, which erases the bar first). */
static void batch_log(void *ctx, const char *lines, size_t len)
{
    (void)ctx;
    fwrite(lines, 1, len, stderr);
}

/* An event ended in a worker: m is its DONE (serve/worker.h). */
static void batch_done(void *ctx, void *arg, const wire_msg *m)
{
    run *r = ctx;
    batch_event *e = arg;
    r->inflight--;
    int failed = m->f[1][0] == '1';
    store_finish_raw(&r->st, e->id, e->name, e->data, failed ? m->f[3] : NULL, m->f[2]);
    if (failed)
        r->failed++;
    else
        r->ok++;
    const char *text = m->f[9], *sep = memchr(text, '\x1e', m->len[9]);
    if (r->json) {
        buf_t b;
        buf_init(&b, 0);
        json_writer w;
        jw_init(&w, &b);
        write_report(&w, m->f[2], m->len[2], r->dry);
        if (failed && r->nfailures < 1000) {
            if (r->nfailures++)
                buf_addc(&r->failures, ',');
            buf_add(&r->failures, b.data, b.len);
        }
        put_line(&b);
    } else {
        if (r->verbose)
            fwrite(text, 1, sep ? (size_t)(sep - text) : m->len[9], stdout);
        if (failed && sep)
            add_failure_notes(r, sep + 1);
    }
    batch_event_free(e);
    draw(r, 0);
}

/* An event's worker died. A bystander runs again, alone; an event that was
 * alone in it failed, with the reason ("worker crashed: SIGSEGV"). */
static void batch_lost(void *ctx, void *arg, const char *reason, int charged)
{
    run *r = ctx;
    batch_event *e = arg;
    r->inflight--;
    if (!charged) {
        batch_event **na = realloc(r->again, (size_t)(r->nagain + 1) * sizeof *na);
        if (na) {
            r->again = na;
            r->again[r->nagain++] = e;
            return;
        }
    }
    r->failed++;
    buf_t b;
    buf_init(&b, 0);
    json_writer w;
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "event", e->name);
    jw_kstr(&w, "id", e->id);
    jw_key(&w, "ok");
    jw_bool(&w, 0);
    if (r->dry) {
        jw_key(&w, "dry_run");
        jw_bool(&w, 1);
    }
    jw_kstr(&w, "error", reason);
    jw_obj_end(&w);
    store_finish_raw(&r->st, e->id, e->name, e->data, reason, buf_cstr(&b));
    if (r->json) {
        if (r->nfailures < 1000) {
            if (r->nfailures++)
                buf_addc(&r->failures, ',');
            buf_add(&r->failures, b.data, b.len);
        }
        put_line(&b);
    } else {
        if (r->nfailures < 20) {
            buf_printf(&r->failures, "  %s %s: %s\n", e->name, e->id ? e->id : "", reason);
            r->nfailures++;
        }
        buf_free(&b);
    }
    batch_event_free(e);
    draw(r, 0);
}

static void run_free(run *r)
{
    for (long i = r->next; i < r->nev; i++)
        event_end(r, r->ev[i]);
    for (long i = 0; i < r->nagain; i++)
        event_end(r, r->again[i]);
    free(r->again);
    batch_input_close(r->in);
    name_index_free(&r->events);
    buf_free(&r->failures);
    store_close(&r->st);
}

static void print_summary(run *r, double secs)
{
    long total = r->ok + r->failed + r->skipped;
    if (r->json) {
        buf_t b;
        buf_init(&b, 0);
        json_writer w;
        jw_init(&w, &b);
        jw_obj(&w);
        jw_key(&w, "summary");
        jw_bool(&w, 1);
        if (r->dry) {
            jw_key(&w, "dry_run");
            jw_bool(&w, 1);
        }
        const struct {
            const char *k;
            long v;
        } counts[] = {{"events", total},          {"ok", r->ok},         {"failed", r->failed},
                      {"skipped", r->skipped},     {"duplicates", r->duplicates}, {"queued", r->queued},
                      {"malformed", r->malformed}, {"unrecorded", r->st.unrecorded}};
        for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++) {
            jw_key(&w, counts[i].k);
            jw_int(&w, counts[i].v);
        }
        char num[32]; /* (three decimals: %.17g would print 0.137 as 0.13700000000000001) */
        int nl = snprintf(num, sizeof num, "%.3f", secs);
        jw_key(&w, "seconds");
        jw_raw(&w, num, (size_t)nl);
        jw_key(&w, "failures");
        jw_arr(&w);
        if (r->failures.len)
            jw_raw(&w, r->failures.data, r->failures.len);
        jw_arr_end(&w);
        jw_obj_end(&w);
        put_line(&b);
        return;
    }
    char queued[64] = "";
    if (r->queued)
        snprintf(queued, sizeof queued, ", %ld queued for wixr serve", r->queued);
    fprintf(stderr, "%s%ld events: %ld ok, %ld failed, %ld skipped (%ld seen before, %ld without hooks%s), "
                    "%ld malformed lines; %.2f s, %.0f events/s\n",
            r->dry ? "dry run (nothing sent or recorded): " : "", total, r->ok, r->failed, r->skipped,
            r->duplicates, r->skipped - r->duplicates - r->queued, queued, r->malformed, secs,
            secs > 0 ? (double)total / secs : 0.0);
    fputs(buf_cstr(&r->failures), stderr);
}

/* A batch runs in worker processes (serve/workers.h), the same as wixr serve's:
 * events in parallel across cores, each worker under the same limits. */
static int run_batch(const wixr_config *cfg, const char *src, int dry, int dedupe, long concurrency, int json,
                     int verbose, int quiet, int workers, int test_faults)
{
    run r = {.cfg = cfg, .batch = 1, .dry = dry, .json = json, .verbose = verbose, .concurrency = concurrency};
    buf_init(&r.failures, 0);
    char err[8192];
    /* a line is an event: the cap of an event posted to wixr serve holds for it too */
    if (!(r.in = batch_input_open(src, (size_t)cfg->serve.max_body_kb * 1024, err, sizeof err))) {
        fprintf(stderr, "wixr fire: %s\n", err);
        return EXIT_BAD_INPUT;
    }
    if (config_index_events(cfg, &r.events) < 0) {
        fprintf(stderr, "wixr fire: out of memory\n");
        run_free(&r);
        return EXIT_WORK_FAILED;
    }
    if (store_open(&r.st, cfg, dry, dedupe, err, sizeof err) < 0) {
        fprintf(stderr, "wixr fire: %s\n", err);
        run_free(&r);
        return EXIT_WORK_FAILED;
    }
    char render[16];
    snprintf(render, sizeof render, "%d", verbose ? FIRE_RENDER_VERBOSE : 0);
    const char *extra[6] = {"--fire-render", render};
    int nx = 2;
    if (dry)
        extra[nx++] = "--dry-run";
    if (test_faults)
        extra[nx++] = "--test-faults";
    if (dry && !json)
        extra[nx++] = "--lean"; /* the reports are neither printed nor recorded */
    extra[nx] = NULL;
    worker_setup ws;
    if (worker_setup_make(&ws, cfg, extra, err, sizeof err) < 0) {
        fprintf(stderr, "wixr fire: %s\n", err);
        run_free(&r);
        return EXIT_WORK_FAILED;
    }
    workers_options po = {.args = (const char *const *)ws.args,
                       .env = ws.env,
                       .workers = workers,
                       .per_worker = (int)((concurrency + workers - 1) / workers),
                       .memory_mb = ws.memory_mb,
                       .hard_ms = ws.hard_ms,
                       .rate_limit = cfg->wix.rate_limit,
                       .rate_window_ms = cfg->wix.rate_window_ms,
                       .cb = {.ctx = &r, .done = batch_done, .lost = batch_lost}};
    /* With a progress bar, the workers' log lines come through here (the bar is erased before
     * them); without one, they write to standard error themselves, each line whole. */
    r.bar.on = !quiet && !json && !verbose && isatty(2);
    if (r.bar.on)
        po.cb.log = batch_log;
    r.pool = workers_start(&po, 60000, err, sizeof err);
    if (!r.pool) {
        fprintf(stderr, "%s\n", err);
        worker_setup_free(&ws);
        run_free(&r);
        return EXIT_BAD_INPUT;
    }
    static char errbuf[1 << 16];
    if (r.bar.on)
        bar_start(&r.bar);
    else
        setvbuf(stderr, errbuf, _IOFBF, sizeof errbuf);
    r.t0 = now_s();
    start_more(&r);
    long long stalled_since = 0;
    while (r.inflight || r.nagain || r.next < r.nev || batch_input_fd(r.in) >= 0) {
        struct pollfd fds[131];
        int n = workers_fds(r.pool, fds, 130), in = batch_input_fd(r.in);
        if (in >= 0 && r.inflight < r.concurrency)
            fds[n++] = (struct pollfd){.fd = in, .events = POLLIN};
        long long wait = workers_next_ms(r.pool) - sched_now_ms();
        poll(fds, (nfds_t)n, (int)(wait < 0 ? 0 : wait > 200 ? 200 : wait));
        if (in >= 0 && fds[n - 1].fd == in && fds[n - 1].revents)
            batch_input_readable(r.in);
        workers_service(r.pool);
        start_more(&r);
        /* what this turn ended is out now (a reader of a pipe sees each event as it ends), in one
         * write however many ended */
        fflush(stdout);
        fflush(stderr);
        if (!workers_stalled(r.pool))
            stalled_since = 0;
        else if (!stalled_since)
            stalled_since = sched_now_ms();
        else if (sched_now_ms() - stalled_since > 60000) {
            fprintf(stderr, "wixr fire: no worker process could run events for 60 s; %ld events not run, "
                    "the rest of %s not read\n", r.nev - r.next + r.inflight + r.nagain, batch_input_name(r.in));
            r.failed += r.nev - r.next + r.inflight + r.nagain;
            break;
        }
    }
    workers_free(r.pool);
    worker_setup_free(&ws);
    r.malformed = batch_input_malformed(r.in);
    if (*batch_input_error(r.in)) {
        fprintf(stderr, "wixr fire: %s: %s (the rest of it not read)\n", batch_input_name(r.in),
                batch_input_error(r.in));
        r.failed++;
    }
    store_flush(&r.st);
    draw(&r, 1);
    bar_stop(&r.bar);
    print_summary(&r, now_s() - r.t0);
    fflush(stdout);
    fflush(stderr);
    int rc = r.failed || r.malformed || r.st.unrecorded ? EXIT_WORK_FAILED : 0;
    run_free(&r);
    return rc;
}

/* One event: its report (text or JSON). */
static int run_single(wixr_host *h, hook_table *t, const wixr_config *cfg, const char *name, const char *id,
                      char *data, int dry, int dedupe, int json)
{
    run r = {.t = t, .dry = dry, .json = json, .concurrency = 1};
    buf_init(&r.failures, 0);
    batch_event e = {.name = strdup(name), .id = id ? strdup(id) : NULL, .data = data, .state = -1};
    if (!e.name || (id && !e.id)) {
        free(e.name);
        free(e.id);
        free(e.data);
        fprintf(stderr, "wixr fire: out of memory\n");
        return EXIT_WORK_FAILED;
    }
    r.ev[0] = &e;
    r.nev = 1;
    char err[1024];
    if (store_open(&r.st, cfg, dry, dedupe, err, sizeof err) < 0) {
        fprintf(stderr, "wixr fire: %s\n", err);
        free(e.name);
        free(e.id);
        free(e.data);
        run_free(&r);
        return EXIT_WORK_FAILED;
    }
    look_up(&r);
    start_more(&r);
    if (r.inflight)
        sched_run(h->sched);
    store_flush(&r.st);
    int rc;
    if (r.single_skip) {
        int queued = r.queued > 0;
        fprintf(stderr, "wixr fire: event %s %s; not run%s\n", e.id,
                queued ? (strcmp(r.single_skip, "running in wixr serve") ? "is queued in the journal for wixr serve"
                                                                         : "is running in wixr serve")
                       : "is done (recorded in the journal)",
                dedupe ? " (--no-dedupe runs it anyway)" : "");
        if (json) {
            buf_t b;
            buf_init(&b, 0);
            json_writer w;
            jw_init(&w, &b);
            write_skipped(&w, e.name, e.id, r.single_skip, dry);
            put_line(&b);
        }
        rc = queued ? EXIT_WORK_FAILED : 0;
    } else if (!r.single) {
        fprintf(stderr, "wixr fire: the event did not finish\n");
        rc = EXIT_WORK_FAILED;
    } else {
        if (json) {
            buf_t b;
            buf_init(&b, 0);
            json_writer w;
            jw_init(&w, &b);
            write_job(&w, r.single, dry);
            put_line(&b);
        } else {
            print_job_human(r.single, 0, dry);
        }
        rc = r.single->failed || r.st.unrecorded ? EXIT_WORK_FAILED : 0;
        event_job_free(r.single);
    }
    run_free(&r);
    free(e.name);
    free(e.id);
    free(e.data);
    return rc;
}

int cmd_fire(int argc, char **argv)
{
    const char *name = NULL, *data = NULL, *id = NULL, *config = NULL, *batch_src = NULL;
    int dry = 0, json = 0, quiet = 0, dedupe = 1, verbose = 0, test_faults = 0;
    long long concurrency = 64, workers = 0;
    const cli_opt opts[] = {
        {"--dry-run", OPT_FLAG, &dry, 1, 0, NULL},
        {"--json", OPT_FLAG, &json, 1, 0, NULL},
        {"--verbose", OPT_FLAG, &verbose, 1, 0, NULL},
        {"--quiet", OPT_FLAG, &quiet, 1, 0, NULL},
        {"--no-dedupe", OPT_FLAG, &dedupe, 0, 0, NULL},
        {"--batch", OPT_OPTIONAL, &batch_src, 0, 0, "-"},
        {"--data", OPT_VALUE, &data, 0, 0, NULL},
        {"--id", OPT_VALUE, &id, 0, 0, NULL},
        {"--config", OPT_VALUE, &config, 0, 0, NULL},
        {"--concurrency", OPT_NUMBER, &concurrency, 1, 100000, NULL},
        {"--workers", OPT_NUMBER, &workers, 1, 64, NULL},
        {"--test-faults", OPT_FLAG, &test_faults, 1, 0, NULL}, /* (hidden: the isolation tests' faults) */
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr fire", usage, opts, &name, 1, "event NAME"};
    int rc = cli_parse(&cmd, argc, argv, NULL);
    if (rc != CLI_GO)
        return rc;
    if (!name == !batch_src)
        return cli_usage_error(&cmd, "give an event NAME or --batch%s", name ? ", not both" : "");
    if (verbose && !batch_src)
        return cli_usage_error(&cmd, "--verbose is for --batch (one event prints its report anyway)");
    if (verbose && json)
        return cli_usage_error(&cmd, "--verbose and --json do not go together (--json has every event already)");
    if (id && !journal_valid_id(id, strlen(id)))
        return cli_usage_error(&cmd, "--id: must be %s", JOURNAL_ID_RULE);
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
    if (batch_src) {
        if (cfg.wix.transport == TRANSPORT_AUTO)
            cfg.wix.transport = cfg.wix.api_key ? TRANSPORT_HTTP : TRANSPORT_SANDBOX;
        rc = run_batch(&cfg, batch_src, dry, dedupe, (long)concurrency, json, verbose, quiet,
                       workers ? (int)workers : cfg.serve.workers, test_faults);
        config_free(&cfg);
        return rc;
    }
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
    } else if (!(event_data = strdup("{}"))) {
        goto done;
    }
    if (!hooks_count_for(t, name)) {
        fprintf(stderr, "wixr fire: no enabled hook is configured for event '%s' in %s\n", name, cfg.path);
        free(event_data);
        rc = EXIT_BAD_INPUT;
        goto done;
    }
    rc = run_single(h, t, &cfg, name, id, event_data, dry, dedupe, json);
done:
    hooks_free(t);
    host_free(h);
    config_free(&cfg);
    return rc;
}
