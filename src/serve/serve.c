/*
 * serve.c -- `wixr serve` (see serve.h).
 */
#define _GNU_SOURCE
#include "serve.h"

#include <arpa/inet.h>
#include <poll.h>
#include <errno.h>
#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../json/json.h"
#include "../json/wix_error.h"
#include "../journal/journal.h"
#include "../journal/journal_json.h"
#include "../runtime/host.h"
#include "../util/backoff.h"
#include "../util/isotime.h"
#include "../wix/client.h"
#include "workers.h"
#include "setup.h"

#define SERVE_MAX_INFLIGHT_KEYS 4096
#define SNAPSHOT_EVERY_MS 250
#define RELOAD_DEBOUNCE_MS 150
#define INTAKE_MAX_DEPTH 64

static const double buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
#define NBUCKETS (sizeof buckets / sizeof buckets[0])

typedef struct intake {
    journal_new item;
    pthread_cond_t wake;          /* signalled (under s->lock) once done is set: only its own waiter wakes */
    int done;
    int status;                   /* 0 inserted, 1 existed, -1 failed */
    char err[256];
    struct intake *next;
} intake;

/* An ended run's outcome, written with the others of the same loop turn. */
typedef struct run_change {
    char *id;
    int kind;                     /* 0 done, 1 retry, 2 dead, 3 running, 4 lost (charged), 5 lost (a bystander) */
    long long next_attempt_ms;
    char *error, *results;
    struct run_change *next;
} run_change;

typedef struct running {
    char *id;
    char *key;
    char *name;
    int attempt;
    int worker_deaths;            /* charged to it before this run */
    long long started_ms;
    struct serve *s;
} running;

/* Counts of one event name, or of one hook of it, for /metrics. */
typedef struct label_row {
    char *event;
    char *hook;                   /* NULL: the event's own row */
    long long n[4];
} label_row;

/* A hook's state rebuilds (after its memory cap broke), as the snapshots saw
 * them: the times of the last BREAKING_REBUILDS, to tell a hook that keeps
 * breaking from one that broke once. */
#define BREAKING_REBUILDS 3
#define BREAKING_WINDOW_MS 60000
typedef struct breaking {
    long long seen;               /* rt->rebuilds at the last snapshot */
    long long at[BREAKING_REBUILDS]; /* monotonic ms of the latest rebuilds, newest first (0: none) */
} breaking;

/* An open connection, for the request deadline (see cut_slow_requests). */
typedef struct watched {
    int fd;                       /* -1: the slot is free */
    long long since_ms;           /* when its current request began (opened, or the last one completed) */
    int cut;
} watched;

typedef struct serve {
    const serve_options *opt;
    wixr_config *boot_cfg;        /* the configuration at start (wix settings, state dir) */
    wixr_config *cfg;             /* the rules in force (the workers' configuration) */
    wixr_config *next_cfg;        /* a reload's, while its workers load it */
    char reload_why[64];
    int reload_again;             /* asked for while one was loading: starts when that one ends */
    char reload_again_why[64];
    double reload_t0;
    worker_pool *pool;                   /* the worker processes: every hook runs there */
    worker_setup ws;              /* their arguments, environment, and the emulator they share */
    long long poison_total;
    long rules_version;
    wix_transport boot_transport; /* wix.transport as configured (boot_cfg holds it resolved) */
    journal *jmain, *jwrite, *jread;
    char journal_path[PATH_MAX];
    dev_t journal_dev;            /* the journal file opened at start */
    ino_t journal_ino;
    /* Journal failures (under lock): set by whoever saw a write fail, cleared
     * by the main loop's probe; a deleted or replaced file stays failed. */
    int journal_broken;           /* 0 ok, 1 failing (probed again), 2 failing until a restart */
    char journal_error[512];
    long long journal_probe_at;   /* monotonic ms of the next probe */
    char pid_path[PATH_MAX];

    pthread_mutex_t lock;         /* guards everything below that threads share */
    pthread_cond_t queued;
    intake *qhead, *qtail;
    int writer_stop;
    pthread_t writer;
    int writer_started;
    char **names;                 /* event names with hooks (for 404s) */
    int nnames;
    int accept_unknown;
    int draining;
    char *health;                 /* snapshots served by the HTTP threads */
    int health_503;               /* the health snapshot was taken while draining or with the journal failing */
    char *metrics;
    long long accepted_total, duplicates_total;
    pthread_mutex_t conns_lock;   /* guards conns */
    watched *conns;               /* serve.max_connections slots */
    int nconns;
    long long slow_cut_total;     /* connections cut off at the request deadline */

    struct MHD_Daemon *mhd;
    int evfd;
    int inotify_fd;
    char token[512];
    int have_token;
    long max_body;

    running **inflight;
    int ninflight;
    long long done_total, dead_total, failed_runs_total, event_retries_total, permanent_total;
    label_row *rows;              /* counts by event and hook (main thread) */
    breaking *breaks;             /* per hook of the current table: its recent rebuilds */
    int nbreaks;
    long breaks_version;          /* the table they belong to */
    int nrows, caprows;
    long long reloads_total, reload_failures_total;
    int last_reload_ok;
    long long last_reload_ms;
    char last_reload_error[2048];
    char restart_needed[512];     /* settings changed by a reload that wait for a restart ("" none) */
    double last_swap_ms;
    long long hist[NBUCKETS + 1];
    double hist_sum;
    long long hist_count;
    long long reload_at;          /* debounced reload due (0 = none) */
    long long last_snapshot;
    long long snapshots;
    run_change *outcomes;            /* state changes of this loop turn, for the writer */
    run_change *wops_head, *wops_tail; /* handed to the writer thread (under lock) */
    char **settled;               /* ids whose outcome the writer committed (under lock) */
    int nsettled, capsettled;
    char **pending;               /* ids with an outcome not committed yet (main thread) */
    char **pending_keys;          /* and their order keys (NULL: none): still held */
    int npending, cappending;
    int polling;                  /* a poll is running */
    long long next_poll;          /* monotonic ms */
    long long polls_total, poll_failures_total, poll_events_total;
} serve;

static volatile sig_atomic_t got_term, got_hup;
static int signal_fd = -1; /* the eventfd the handlers poke (set before they are installed) */

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        got_hup = 1;
    else
        got_term = 1;
    uint64_t one = 1;
    if (signal_fd >= 0 && write(signal_fd, &one, sizeof one) < 0) {
        /* nothing to do: the main loop also wakes every 200 ms */
    }
}

void serve_journal_path(const void *cfgp, char *out, unsigned long n)
{
    const wixr_config *cfg = cfgp;
    if (cfg->serve.journal)
        snprintf(out, n, "%s", cfg->serve.journal);
    else
        snprintf(out, n, "%s/journal.db", cfg->state_dir);
}

/* ---- logs ----
 *
 * Every line on stderr is one JSON object {"ts","level","msg","fields":{...}}
 * written by the JSON writer (never by a format string): an event id or a
 * hook's error, whatever bytes it holds, stays a string inside its line.
 * A caller opens a line (host_log_begin, one writer with host.c's lines), writes its fields, and ends it. */


/* A URL without the user:password@ a base URL may carry: secrets stay out of logs. */
static void log_url(json_writer *w, const char *key, const char *url)
{
    if (!url)
        return;
    buf_t b;
    buf_init(&b, 0);
    wix_shown_url(&b, url, NULL);
    jw_kstr(w, key, buf_cstr(&b));
    buf_free(&b);
}

/* A line with no fields, or with one integer field (key != NULL). */
static void log_line(const char *level, const char *msg, const char *key, long long value)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, level, msg);
    if (key) {
        jw_key(w, key);
        jw_int(w, value);
    }
    host_log_end(&l);
}

/* ---- journal failures ----
 *
 * A write the journal refused (disk full, I/O error, a corrupted file) or a
 * journal file deleted or replaced under the service: intake answers 503
 * JOURNAL, no new run starts (a run whose outcome cannot be written would run
 * again and again), /healthz answers 503 with the reason. The main loop probes
 * the journal every JOURNAL_PROBE_MS and resumes once a write goes through; a
 * deleted or replaced file (fatal) needs a restart. */
#define JOURNAL_PROBE_MS 2000

static long long mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void journal_failed(struct serve *s, const char *why, int fatal)
{
    pthread_mutex_lock(&s->lock);
    int was = s->journal_broken;
    if (!was || (fatal && was != 2)) {
        s->journal_broken = fatal ? 2 : 1;
        snprintf(s->journal_error, sizeof s->journal_error, "%s", why);
    }
    s->journal_probe_at = mono_now_ms() + JOURNAL_PROBE_MS;
    pthread_mutex_unlock(&s->lock);
    if (!was || (fatal && was != 2)) {
        host_logline l;
        json_writer *w = host_log_begin(&l, "error", "the journal cannot be written: intake answers 503, no run starts");
        jw_kstr(w, "error", why);
        host_log_end(&l);
    }
}

/* Why the service cannot start, as a log line like every other (level error). */
static void log_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void log_fatal(const char *fmt, ...)
{
    buf_t m;
    buf_init(&m, 0);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&m, fmt, ap);
    va_end(ap);
    log_line("error", buf_cstr(&m), NULL, 0);
    buf_free(&m);
}

/* ---- names and order keys ---- */

static void publish_names(serve *s)
{
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < s->nnames; i++)
        free(s->names[i]);
    free(s->names);
    s->names = calloc((size_t)s->cfg->nhooks + 1, sizeof *s->names);
    s->nnames = 0;
    for (int i = 0; i < s->cfg->nhooks && s->names; i++) {
        if (!s->cfg->hooks[i].enabled)
            continue;
        const char *ev = s->cfg->hooks[i].event;
        int dup = 0;
        for (int k = 0; k < s->nnames && !dup; k++)
            dup = !strcmp(s->names[k], ev);
        if (!dup)
            s->names[s->nnames++] = strdup(ev);
    }
    s->accept_unknown = s->cfg->serve.accept_unknown_events;
    pthread_mutex_unlock(&s->lock);
}

static int known_name(serve *s, const char *name)
{
    pthread_mutex_lock(&s->lock);
    int ok = s->accept_unknown;
    for (int i = 0; i < s->nnames && !ok; i++)
        ok = !strcmp(s->names[i], name);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* ---- the writer thread: group commit ---- */

static int apply_ops(serve *s, run_change *ops);

static void *writer_main(void *arg)
{
    serve *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->qhead && !s->wops_head && !s->writer_stop)
            pthread_cond_wait(&s->queued, &s->lock);
        if (!s->qhead && !s->wops_head && s->writer_stop)
            break;
        intake *batch = s->qhead;
        s->qhead = s->qtail = NULL;
        run_change *ops = s->wops_head;
        s->wops_head = s->wops_tail = NULL;
        pthread_mutex_unlock(&s->lock);
        if (ops) {
            apply_ops(s, ops);
            pthread_mutex_lock(&s->lock);
            for (run_change *o = ops, *next; o; o = next) {
                next = o->next;
                if (o->kind != 3) {
                    if (s->nsettled == s->capsettled) {
                        s->capsettled = s->capsettled ? s->capsettled * 2 : 64;
                        char **ns = realloc(s->settled, (size_t)s->capsettled * sizeof *ns);
                        if (ns)
                            s->settled = ns;
                    }
                    if (s->nsettled < s->capsettled) {
                        s->settled[s->nsettled++] = o->id;
                        o->id = NULL;
                    }
                }
                free(o->id);
                free(o->error);
                free(o->results);
                free(o);
            }
            pthread_mutex_unlock(&s->lock);
            uint64_t one = 1;
            if (write(s->evfd, &one, sizeof one) < 0) {
                /* the main loop polls anyway */
            }
        }
        if (!batch) {
            pthread_mutex_lock(&s->lock);
            continue;
        }

        int n = 0;
        for (intake *q = batch; q; q = q->next)
            n++;
        journal_new *items = calloc((size_t)n, sizeof *items);
        char err[256] = "";
        int rc = -1;
        if (items) {
            int i = 0;
            for (intake *q = batch; q; q = q->next)
                items[i++] = q->item;
            rc = journal_accept_many(s->jwrite, items, n, err, sizeof err);
            if (rc < 0)
                journal_failed(s, err, 0);
        }
        pthread_mutex_lock(&s->lock);
        int i = 0;
        for (intake *q = batch; q; q = q->next, i++) {
            q->done = 1;
            if (rc < 0) {
                q->status = -1;
                snprintf(q->err, sizeof q->err, "%s", err[0] ? err : "out of memory");
            } else {
                q->status = items[i].result;
                q->item.existing = items[i].existing;
                if (q->status == 0)
                    s->accepted_total++;
                else if (q->status == 1)
                    s->duplicates_total++;
                else
                    snprintf(q->err, sizeof q->err, "refused by the journal");
            }
        }
        free(items);
        for (intake *q = batch, *next; q; q = next) {
            next = q->next; /* q may be gone once its waiter runs */
            pthread_cond_signal(&q->wake);
        }
        uint64_t one = 1;
        if (write(s->evfd, &one, sizeof one) < 0) {
            /* the main loop polls anyway */
        }
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---- HTTP front ---- */

typedef struct conn {
    buf_t body;
    int too_big;
} conn;

/* A JSON answer; allow is the Allow header of a 405 (else NULL). */
static enum MHD_Result reply_allow(struct MHD_Connection *c, unsigned status, buf_t *b, const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(b->len, b->data ? b->data : (void *)"",
                                                             MHD_RESPMEM_MUST_COPY);
    buf_free(b);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, buf_t *b)
{
    return reply_allow(c, status, b, NULL);
}

static enum MHD_Result reply_text(struct MHD_Connection *c, unsigned status, const char *text, const char *type)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), (void *)text, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

/* Errors answer in the Wix shape (resellers-api.md §4.0), like the API wixr fronts:
 * an applicationError with a code, or for bad input a validationError naming the field. */
static enum MHD_Result reply_error_v(struct MHD_Connection *c, unsigned status, const char *allow, const char *code,
                                     const char *fmt, va_list ap) __attribute__((format(printf, 5, 0)));
static enum MHD_Result reply_error_v(struct MHD_Connection *c, unsigned status, const char *allow, const char *code,
                                     const char *fmt, va_list ap)
{
    buf_t b;
    buf_init(&b, 0);
    wix_error_body(&b, code, fmt, ap);
    return reply_allow(c, status, &b, allow);
}

static enum MHD_Result reply_error_allow(struct MHD_Connection *c, unsigned status, const char *allow,
                                         const char *code, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result reply_error_allow(struct MHD_Connection *c, unsigned status, const char *allow,
                                         const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result r = reply_error_v(c, status, allow, code, fmt, ap);
    va_end(ap);
    return r;
}

static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    enum MHD_Result r = reply_error_v(c, status, NULL, code, fmt, ap);
    va_end(ap);
    return r;
}

/* 405, with the methods the route takes in Allow (RFC 9110 15.5.6). */
static enum MHD_Result reply_405(struct MHD_Connection *c, const char *allow)
{
    return reply_error_allow(c, 405, allow, "METHOD_NOT_ALLOWED", "this route takes %s", allow);
}

static enum MHD_Result reply_invalid(struct MHD_Connection *c, const char *field, const char *rule, const char *fmt,
                                     ...) __attribute__((format(printf, 4, 5)));
static enum MHD_Result reply_invalid(struct MHD_Connection *c, const char *field, const char *rule, const char *fmt,
                                     ...)
{
    buf_t item, b;
    buf_init(&item, 0);
    buf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    wix_violation_item(&item, field, rule, fmt, ap);
    va_end(ap);
    wix_validation_body(&b, field, 0, item.data, item.len);
    buf_free(&item);
    return reply(c, 400, &b);
}

static int authorized(serve *s, struct MHD_Connection *c)
{
    if (!s->have_token)
        return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    size_t n = strlen(h), m = strlen(s->token);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < m; i++)
        diff |= (unsigned char)(s->token[i] ^ (i < n ? h[i] : 0));
    return diff == 0;
}

/* The request's headers, as libmicrohttpd parsed them: how many
 * Content-Length and Transfer-Encoding lines, and where each key and value
 * lies (for the NUL check below). */
#define MAX_HEADERS_SEEN 256
typedef struct header_count {
    int content_length, transfer_encoding, n, total;
    const char *key[MAX_HEADERS_SEEN], *value[MAX_HEADERS_SEEN];
    size_t value_size[MAX_HEADERS_SEEN];
} header_count;

static enum MHD_Result count_header(void *cls, enum MHD_ValueKind kind, const char *key, size_t key_size,
                                    const char *value, size_t value_size)
{
    header_count *hc = cls;
    (void)kind;
    (void)key_size;
    if (key && !strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH))
        hc->content_length++;
    if (key && !strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING))
        hc->transfer_encoding++;
    hc->total++;
    if (hc->n < MAX_HEADERS_SEEN) {
        hc->key[hc->n] = key;
        hc->value[hc->n] = value;
        hc->value_size[hc->n] = value_size;
        hc->n++;
    }
    return MHD_YES;
}

/* A NUL inside a header value: libmicrohttpd 0.9.75 parses the header block
 * in place (each line end becomes NUL bytes) and hands out the value up to
 * the first NUL, so "X-Event-Id: ab<NUL>cd" reads as "ab" -- one id silently
 * another. What follows a value's end in that block tells: a well-formed line
 * has (after any trailing blanks) its line end there, a NUL again, or the next
 * header's name (a bare LF); anything else was hidden behind a NUL. */
static int nul_in_a_value(const header_count *hc)
{
    for (int i = 0; i < hc->n; i++) {
        const char *v = hc->value[i];
        if (!v || !hc->value_size[i])
            continue; /* an empty value hides nothing (an empty id is refused anyway) */
        if (strlen(v) != hc->value_size[i])
            return 1;
        const char *p = v + hc->value_size[i] + 1; /* past the NUL that ends the value */
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            continue;
        int next_key = 0;
        for (int k = 0; k < hc->n && !next_key; k++)
            next_key = hc->key[k] == p;
        if (!next_key)
            return 1;
    }
    return 0;
}

/* A request whose framing is ambiguous (two Content-Length, Content-Length
 * with Transfer-Encoding) or whose headers hide bytes behind a NUL: a proxy in
 * front may have read it otherwise (request smuggling). NULL when it is sound. */
static const char *ambiguous_request(struct MHD_Connection *c)
{
    header_count hc;
    hc.content_length = hc.transfer_encoding = hc.n = hc.total = 0;
    MHD_get_connection_values_n(c, MHD_HEADER_KIND, count_header, &hc);
    if (hc.total > MAX_HEADERS_SEEN)
        return "more than 256 headers";
    if (hc.content_length > 1)
        return "more than one Content-Length header";
    if (hc.transfer_encoding > 1)
        return "more than one Transfer-Encoding header";
    if (hc.content_length && hc.transfer_encoding)
        return "both Content-Length and Transfer-Encoding";
    if (nul_in_a_value(&hc))
        return "a header value holds a NUL byte";
    return NULL;
}

static int valid_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 100)
        return 0;
    return strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:") == len;
}

static enum MHD_Result post_event(serve *s, struct MHD_Connection *c, const char *name, conn *st)
{
    if (!valid_name(name))
        return reply_invalid(c, "name", "EVENT_NAME_FORMAT", "event names are 1-100 of A-Z a-z 0-9 . _ - :");
    if (!known_name(s, name))
        return reply_error(c, 404, "UNKNOWN_EVENT", "no hook is configured for event '%s'", name);
    json_doc *doc = NULL;
    json_error e;
    json_value *v = st->body.len ? json_parse(st->body.data, st->body.len, INTAKE_MAX_DEPTH, &doc, &e) : NULL;
    if (!st->body.len) {
        json_doc_free(doc);
        return reply_invalid(c, "body", "VALID_JSON", "the body must be a JSON object (the event's data)");
    }
    if (!v) {
        json_doc_free(doc);
        return reply_invalid(c, "body", "VALID_JSON", "malformed JSON at line %d, column %d: %s", e.line, e.col,
                             e.msg);
    }
    if (v->type != JSON_OBJECT) {
        const char *what = json_type_name(v->type);
        json_doc_free(doc);
        return reply_invalid(c, "body", "VALID_JSON", "the body must be a JSON object, not %s", what);
    }
    const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Event-Id");
    json_value *idv = json_get(v, "event_id");
    char idbuf[64];
    const char *id_field = "X-Event-Id";
    size_t idlen = id ? strlen(id) : 0;
    if (!id && idv && idv->type == JSON_STRING) {
        id = idv->u.str.s;
        idlen = idv->u.str.len; /* a \u0000 inside makes it differ from strlen: refused below */
        id_field = "event_id";
    }
    else if (!id && idv && idv->type != JSON_NULL) {
        json_doc_free(doc);
        return reply_invalid(c, "event_id", "EVENT_ID_FORMAT", "event_id must be a string");
    }
    if (id && !journal_valid_id(id, idlen)) {
        json_doc_free(doc);
        return reply_invalid(c, id_field, "EVENT_ID_FORMAT", "an event id is %s", JOURNAL_ID_RULE);
    }
    if (!id) {
        unsigned char r[16];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
            json_doc_free(doc);
            return reply_error(c, 500, "INTERNAL", "no randomness for an event id");
        }
        r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);
        r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);
        snprintf(idbuf, sizeof idbuf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
                 r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
        id = idbuf;
    }
    /* The order key: the first configured data field present. */
    char key[256] = "";
    const serve_settings *ss = &s->boot_cfg->serve;
    for (int i = 0; i < ss->norder_key && !key[0]; i++) {
        json_value *k = json_get(v, ss->order_key[i]);
        if (k && k->type == JSON_STRING && k->u.str.len)
            snprintf(key, sizeof key, "%s=%.*s", ss->order_key[i], (int)(k->u.str.len > 200 ? 200 : k->u.str.len),
                     k->u.str.s);
        else if (k && k->type == JSON_NUMBER)
            snprintf(key, sizeof key, "%s=%.17g", ss->order_key[i], k->u.number);
    }
    buf_t data;
    buf_init(&data, 0);
    json_writer w;
    jw_init(&w, &data);
    jw_value(&w, v);
    intake q = {0};
    pthread_cond_init(&q.wake, NULL);
    char *idcopy = strdup(id);
    q.item.id = idcopy;
    q.item.name = name;
    q.item.data_json = buf_cstr(&data);
    q.item.order_key = key[0] ? key : NULL;
    json_doc_free(doc);
    pthread_mutex_lock(&s->lock);
    if (s->draining || s->journal_broken) {
        int draining = s->draining;
        char why[sizeof s->journal_error];
        snprintf(why, sizeof why, "%s", s->journal_error);
        pthread_mutex_unlock(&s->lock);
        pthread_cond_destroy(&q.wake);
        buf_free(&data);
        free(idcopy);
        if (draining)
            return reply_error(c, 503, "SHUTTING_DOWN", "the service is stopping; send the event again later");
        return reply_error(c, 503, "JOURNAL", "the event was not stored (%s); send it again later", why);
    }
    if (s->qtail)
        s->qtail->next = &q;
    else
        s->qhead = &q;
    s->qtail = &q;
    pthread_cond_signal(&s->queued);
    while (!q.done)
        pthread_cond_wait(&q.wake, &s->lock);
    pthread_mutex_unlock(&s->lock);
    pthread_cond_destroy(&q.wake);
    buf_free(&data);
    buf_t out;
    buf_init(&out, 0);
    enum MHD_Result rc;
    if (q.status < 0) {
        rc = reply_error(c, 503, "JOURNAL", "the event was not stored (%s); send it again later", q.err);
    } else {
        json_writer ow;
        jw_init(&ow, &out);
        jw_obj(&ow);
        if (q.status == 0) {
            jw_kstr(&ow, "id", idcopy);
            jw_kstr(&ow, "state", "accepted");
        } else {
            jw_key(&ow, "duplicate");
            jw_bool(&ow, 1);
            jw_key(&ow, "event");
            journal_event_jw(&ow, &q.item.existing);
            journal_event_free(&q.item.existing);
        }
        jw_obj_end(&ow);
        rc = reply(c, q.status == 0 ? 202 : 200, &out);
    }
    buf_free(&out);
    free(idcopy);
    return rc;
}

static enum MHD_Result get_event(serve *s, struct MHD_Connection *c, const char *id)
{
    journal_event e;
    pthread_mutex_lock(&s->lock);
    int rc = journal_get(s->jread, id, &e);
    pthread_mutex_unlock(&s->lock);
    if (rc == 1)
        return reply_error(c, 404, "NOT_FOUND", "no event with id '%s'", id);
    if (rc < 0)
        return reply_error(c, 500, "JOURNAL", "cannot read the journal");
    buf_t b;
    buf_init(&b, 0);
    journal_event_json(&b, &e);
    journal_event_free(&e);
    return reply(c, 200, &b);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls)
{
    (void)version;
    serve *s = cls;
    conn *st = *con_cls;
    /* HEAD is GET without the body (libmicrohttpd leaves the body out). */
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (!st) {
        /* Headers are in, the body (if any) is not: everything that can be
         * answered without the body is answered now, so no body is read
         * before the request is known to be sound and authenticated (an
         * answer queued now makes libmicrohttpd close the connection
         * without reading the body). */
        const char *why = ambiguous_request(c);
        if (why)
            return reply_error(c, 400, "BAD_REQUEST", "malformed request: %s", why);
        int healthz = !strcmp(url, "/healthz");
        if (!healthz && !authorized(s, c))
            return reply_error(c, 401, "UNAUTHENTICATED", "send Authorization: Bearer <WIXR_TOKEN>");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!healthz && cl && strtoull(cl, NULL, 10) > (unsigned long long)s->max_body)
            return reply_error(c, 413, "PAYLOAD_TOO_LARGE", "the body is larger than %ld bytes", s->max_body);
        if (!healthz && (strncmp(url, "/v1/events/", 11) != 0 || strcmp(method, "POST") != 0)) {
            /* the routes that take no body */
        } else if (!healthz) {
            st = calloc(1, sizeof *st);
            if (!st)
                return MHD_NO;
            buf_init(&st->body, (size_t)s->max_body);
            *con_cls = st;
            return MHD_YES;
        }
    } else if (*upload_size) {
        if (!st->too_big && buf_add(&st->body, upload, *upload_size) < 0)
            st->too_big = 1;
        *upload_size = 0;
        return MHD_YES;
    }
    if (!strcmp(url, "/healthz")) {
        if (!get)
            return reply_405(c, "GET, HEAD");
        /* 503 once SIGTERM closed intake: a load balancer stops sending here */
        pthread_mutex_lock(&s->lock);
        char *h = strdup(s->health ? s->health : "{}");
        int unavailable = s->health_503; /* the body says why */
        pthread_mutex_unlock(&s->lock);
        enum MHD_Result r = reply_text(c, unavailable ? 503 : 200, h ? h : "{}", "application/json");
        free(h);
        return r;
    }
    if (!authorized(s, c))
        return reply_error(c, 401, "UNAUTHENTICATED", "send Authorization: Bearer <WIXR_TOKEN>");
    if (st && st->too_big)
        return reply_error(c, 413, "PAYLOAD_TOO_LARGE", "the body is larger than %ld bytes", s->max_body);
    if (!strcmp(url, "/metrics")) {
        if (!get)
            return reply_405(c, "GET, HEAD");
        pthread_mutex_lock(&s->lock);
        char *m = strdup(s->metrics ? s->metrics : "");
        pthread_mutex_unlock(&s->lock);
        enum MHD_Result r = reply_text(c, 200, m ? m : "", "text/plain; version=0.0.4");
        free(m);
        return r;
    }
    if (!strncmp(url, "/v1/events/", 11) && url[11] && !strchr(url + 11, '/')) {
        if (!strcmp(method, "POST"))
            return post_event(s, c, url + 11, st);
        if (get)
            return get_event(s, c, url + 11);
        return reply_405(c, "GET, HEAD, POST");
    }
    return reply_error(c, 404, "NOT_FOUND", "no route %s %.200s (POST /v1/events/NAME, GET /v1/events/ID, "
                                            "/healthz, /metrics)", method, url);
}

/* ---- slow clients ----
 *
 * libmicrohttpd's timeout counts idle time only: a client sending one header
 * line every few seconds keeps its connection (and its thread) for ever, and
 * a thousand such clients fill every slot. Each connection is watched from the
 * moment it opens: its request must be complete within
 * serve.request_timeout_ms of the connection opening or of its previous request
 * completing, or the main loop shuts the socket down (the connection's thread
 * then sees it closed and ends it). The slot is freed in the CLOSED
 * notification, which libmicrohttpd sends before it closes the socket, under
 * the same lock: a shutdown never reaches a descriptor already reused. */
static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode code)
{
    serve *s = cls;
    pthread_mutex_lock(&s->conns_lock);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (int i = 0; ci && i < s->nconns; i++) {
            if (s->conns[i].fd < 0) {
                s->conns[i] = (watched){.fd = ci->connect_fd, .since_ms = iso_now_ms(), .cut = 0};
                *socket_context = &s->conns[i];
                break;
            }
        }
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        ((watched *)*socket_context)->fd = -1;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&s->conns_lock);
}

static void cut_slow_requests(serve *s)
{
    long long now = iso_now_ms(), limit = s->boot_cfg->serve.request_timeout_ms;
    pthread_mutex_lock(&s->conns_lock);
    for (int i = 0; i < s->nconns; i++) {
        watched *w = &s->conns[i];
        if (w->fd >= 0 && !w->cut && now - w->since_ms > limit) {
            shutdown(w->fd, SHUT_RDWR);
            w->cut = 1;
            s->slow_cut_total++;
        }
    }
    pthread_mutex_unlock(&s->conns_lock);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe)
{
    serve *s = cls;
    (void)toe;
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci && ci->socket_context) {
        pthread_mutex_lock(&s->conns_lock);
        ((watched *)ci->socket_context)->since_ms = iso_now_ms(); /* the next request's time starts now */
        pthread_mutex_unlock(&s->conns_lock);
    }
    conn *st = *con_cls;
    if (st) {
        buf_free(&st->body);
        free(st);
        *con_cls = NULL;
    }
}

/* ---- running events ---- */

static int key_busy(serve *s, const char *key)
{
    if (!key)
        return 0;
    for (int i = 0; i < s->ninflight; i++)
        if (s->inflight[i]->key && !strcmp(s->inflight[i]->key, key))
            return 1;
    /* an outcome not in the journal yet holds its key too (it may be a retry) */
    for (int i = 0; i < s->npending; i++)
        if (s->pending_keys[i] && !strcmp(s->pending_keys[i], key))
            return 1;
    return 0;
}

static int is_inflight(serve *s, const char *id)
{
    for (int i = 0; i < s->ninflight; i++)
        if (!strcmp(s->inflight[i]->id, id))
            return 1;
    return 0;
}

static void remove_inflight(serve *s, running *r)
{
    for (int i = 0; i < s->ninflight; i++) {
        if (s->inflight[i] == r) {
            s->inflight[i] = s->inflight[--s->ninflight];
            return;
        }
    }
}

static void observe(serve *s, double secs)
{
    size_t b = 0;
    while (b < NBUCKETS && secs > buckets[b])
        b++;
    s->hist[b]++;
    s->hist_sum += secs;
    s->hist_count++;
}

static void queue_outcome(serve *s, const char *id, const char *key, int kind, long long next, const char *error,
                          const char *results)
{
    run_change *o = calloc(1, sizeof *o);
    if (!o)
        return; /* the event stays 'running' and runs again at the next start */
    o->id = strdup(id);
    o->kind = kind;
    o->next_attempt_ms = next;
    o->error = error ? strdup(error) : NULL;
    o->results = results ? strdup(results) : NULL;
    run_change **tail = &s->outcomes;
    while (*tail)
        tail = &(*tail)->next;
    *tail = o;
    if (kind != 3) {
        /* until the writer commits it, the journal still says 'running' */
        if (s->npending == s->cappending) {
            int cap = s->cappending ? s->cappending * 2 : 64;
            char **np = realloc(s->pending, (size_t)cap * sizeof *np);
            if (np)
                s->pending = np;
            char **nk = realloc(s->pending_keys, (size_t)cap * sizeof *nk);
            if (nk)
                s->pending_keys = nk;
            if (!np || !nk)
                return;
            s->cappending = cap;
        }
        s->pending_keys[s->npending] = key ? strdup(key) : NULL;
        s->pending[s->npending++] = strdup(id);
    }
}

static int is_pending(serve *s, const char *id)
{
    for (int i = 0; i < s->npending; i++)
        if (!strcmp(s->pending[i], id))
            return 1;
    return 0;
}

/* Forgets the ids the writer has committed. */
static void take_settled(serve *s)
{
    pthread_mutex_lock(&s->lock);
    char **list = s->settled;
    int n = s->nsettled;
    s->settled = NULL;
    s->nsettled = s->capsettled = 0;
    pthread_mutex_unlock(&s->lock);
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < s->npending; k++) {
            if (!strcmp(s->pending[k], list[i])) {
                free(s->pending[k]);
                free(s->pending_keys[k]);
                s->npending--;
                s->pending[k] = s->pending[s->npending];
                s->pending_keys[k] = s->pending_keys[s->npending];
                break;
            }
        }
        free(list[i]);
    }
    free(list);
}

/* Hands this loop turn's state changes to the writer thread, which commits
 * them in one transaction with the next intake batch's: one writer, so intake
 * never waits for the run loop's commits. A crash before the commit only
 * means those events run again (same idempotency keys). */
static void flush_outcomes(serve *s)
{
    if (!s->outcomes)
        return;
    run_change *last = s->outcomes;
    while (last->next)
        last = last->next;
    pthread_mutex_lock(&s->lock);
    if (s->wops_tail)
        s->wops_tail->next = s->outcomes;
    else
        s->wops_head = s->outcomes;
    s->wops_tail = last;
    pthread_cond_signal(&s->queued);
    pthread_mutex_unlock(&s->lock);
    s->outcomes = NULL;
}

/* Writer thread: applies state changes (one transaction, no fsync needed:
 * see journal_set_durable). Returns the list of ids settled. */
static int apply_ops(serve *s, run_change *ops)
{
    journal_set_durable(s->jwrite, 0);
    int rc = journal_begin(s->jwrite);
    for (run_change *o = ops; o && rc == 0; o = o->next) {
        if (o->kind == 0)
            rc = journal_mark_done(s->jwrite, o->id, o->results);
        else if (o->kind == 1)
            rc = journal_mark_retry(s->jwrite, o->id, o->next_attempt_ms, o->error, o->results);
        else if (o->kind == 2)
            rc = journal_mark_dead(s->jwrite, o->id, o->error, o->results);
        else if (o->kind == 4 || o->kind == 5)
            rc = journal_mark_lost(s->jwrite, o->id, o->kind == 4, o->next_attempt_ms, o->error);
        else
            rc = journal_mark_running(s->jwrite, o->id);
        if (rc > 0)
            rc = 0; /* the event is gone (purged by `wixr events`): nothing to mark */
    }
    if (rc == 0) {
        rc = journal_commit(s->jwrite);
        if (rc < 0)
            journal_failed(s, journal_errmsg(s->jwrite), 0);
    } else {
        char why[512];
        snprintf(why, sizeof why, "%s", journal_errmsg(s->jwrite));
        journal_commit(s->jwrite); /* ends the transaction; the error kept is the write's */
        journal_failed(s, why, 0);
    }
    journal_set_durable(s->jwrite, 1);
    return rc;
}

/* ---- per event and per hook counts, for /metrics ----
 *
 * Labels come from the configuration only (event names with hooks, hook script
 * names), so the number of series is bounded by it; an event no hook listens
 * to (serve.accept_unknown_events) counts as event="_other". */

enum { EVC_DONE, EVC_RETRY, EVC_DEAD, EVC__N };
static const char *const evc_names[EVC__N] = {"done", "retry", "dead"};
enum { HC_OK, HC_FAILED, HC_PERMANENT, HC_SKIPPED, HC__N };
static const char *const hc_names[HC__N] = {"ok", "failed", "permanent", "skipped"};
#define MAX_LABEL_ROWS 1024

static int configured_event(const serve *s, const char *name)
{
    const wixr_config *c = s->cfg;
    for (int i = 0; i < c->nhooks; i++)
        if (!strcmp(c->hooks[i].event, name))
            return 1;
    return 0;
}

static label_row *label_row_of(serve *s, const char *event, const char *hook, size_t hooklen)
{
    for (int i = 0; i < s->nrows; i++) {
        label_row *r = &s->rows[i];
        if (!strcmp(r->event, event) && (hook ? r->hook && strlen(r->hook) == hooklen &&
                                                    !memcmp(r->hook, hook, hooklen)
                                              : !r->hook))
            return r;
    }
    if (s->nrows >= MAX_LABEL_ROWS)
        return NULL;
    if (s->nrows == s->caprows) {
        int cap = s->caprows ? s->caprows * 2 : 32;
        label_row *nr = realloc(s->rows, (size_t)cap * sizeof *nr);
        if (!nr)
            return NULL;
        s->rows = nr;
        s->caprows = cap;
    }
    label_row *r = &s->rows[s->nrows];
    memset(r, 0, sizeof *r);
    r->event = strdup(event);
    r->hook = hook ? strndup(hook, hooklen) : NULL;
    if (!r->event || (hook && !r->hook)) {
        free(r->event);
        free(r->hook);
        return NULL;
    }
    s->nrows++;
    return r;
}

static void count_event(serve *s, const char *event, int what)
{
    label_row *r = label_row_of(s, configured_event(s, event) ? event : "_other", NULL, 0);
    if (r)
        r->n[what]++;
}

/* The hook runs of an ended event, from its DONE message: a line
 * "event\tscript\tcategory\n" per hook run (worker.h). */
static void count_hooks(serve *s, const char *lines)
{
    static const char *const cats[HC__N] = {"ok", "failed", "permanent", "skipped"};
    for (const char *p = lines; *p;) {
        const char *nl = strchr(p, '\n'), *t1 = strchr(p, '\t');
        if (!nl)
            break;
        const char *t2 = t1 && t1 < nl ? memchr(t1 + 1, '\t', (size_t)(nl - t1 - 1)) : NULL;
        if (t2) {
            char event[256];
            snprintf(event, sizeof event, "%.*s", (int)(t1 - p), p);
            int cat = -1;
            for (int k = 0; k < HC__N; k++)
                if ((size_t)(nl - t2 - 1) == strlen(cats[k]) && !memcmp(t2 + 1, cats[k], strlen(cats[k])))
                    cat = k;
            label_row *r = cat >= 0 && configured_event(s, event)
                               ? label_row_of(s, event, t1 + 1, (size_t)(t2 - t1 - 1))
                               : NULL;
            if (r)
                r->n[cat]++;
        }
        p = nl + 1;
    }
}

/* One log line per failed attempt: which event, which hook, the attempt, the
 * error's code and message, and what happens next. */
typedef struct attempt_failure {
    const char *event, *chained_event, *hook, *code, *error;
    int permanent;
} attempt_failure;

static void log_failed_attempt(const running *r, const attempt_failure *f, int max_attempts, long long retry_in_ms)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, retry_in_ms >= 0 ? "warn" : "error", "event attempt failed");
    jw_kstr(w, "id", r->id);
    jw_kstr(w, "event", f->event);
    if (f->chained_event && *f->chained_event)
        jw_kstr(w, "chained_event", f->chained_event);
    jw_kstr(w, "hook", f->hook);
    jw_key(w, "attempt");
    jw_int(w, r->attempt);
    jw_key(w, "max_attempts");
    jw_int(w, max_attempts);
    jw_kstr(w, "code", f->code);
    jw_kstr(w, "error", f->error);
    jw_key(w, "permanent");
    jw_bool(w, f->permanent);
    jw_key(w, "will_retry");
    jw_bool(w, retry_in_ms >= 0);
    if (retry_in_ms >= 0) {
        jw_key(w, "retry_in_ms");
        jw_int(w, retry_in_ms);
    }
    host_log_end(&l);
}

static void log_dead(const char *id, const char *event, int attempts, const char *why, const char *code,
                     const char *error)
{
    host_logline l;
    json_writer *w = host_log_begin(&l, "error", "event is dead");
    jw_kstr(w, "id", id);
    jw_kstr(w, "event", event);
    jw_key(w, "attempts");
    jw_int(w, attempts);
    jw_kstr(w, "why", why);
    jw_kstr(w, "code", code);
    jw_kstr(w, "last_error", error);
    host_log_end(&l);
}

static void running_free(serve *s, running *r)
{
    remove_inflight(s, r);
    free(r->id);
    free(r->key);
    free(r->name);
    free(r);
}

/* The delay before attempt + 1: exponential from retry.base_ms, capped at
 * retry.max_ms, jittered in its upper half. */
static long long retry_delay(const serve_settings *ss, int attempt)
{
    return backoff_ms(ss->retry_base_ms, ss->retry_max_ms, attempt, NULL);
}

/* An attempt failed (a hook failed, or its worker died under it alone):
 * retried with backoff, or dead when final or out of attempts. */
static void attempt_failed(serve *s, running *r, const attempt_failure *f, int final, const char *results)
{
    const serve_settings *ss = &s->cfg->serve;
    s->failed_runs_total++;
    if (final || r->attempt >= ss->retry_attempts) {
        log_failed_attempt(r, f, ss->retry_attempts, -1);
        const char *why = final && f->permanent ? "a permanent failure: trying again cannot succeed"
                          : final               ? "the hook's retry is never"
                                                : "its last attempt failed";
        buf_t dead;
        buf_init(&dead, 0);
        if (final)
            buf_adds(&dead, "permanent: ");
        buf_adds(&dead, f->error);
        queue_outcome(s, r->id, r->key, 2, 0, buf_cstr(&dead), results);
        s->dead_total++;
        if (final)
            s->permanent_total++;
        count_event(s, r->name, EVC_DEAD);
        log_dead(r->id, r->name, r->attempt, why, f->code, f->error);
        buf_free(&dead);
    } else {
        long long d = retry_delay(ss, r->attempt);
        log_failed_attempt(r, f, ss->retry_attempts, d);
        queue_outcome(s, r->id, r->key, 1, iso_now_ms() + d, f->error, results);
        s->event_retries_total++;
        count_event(s, r->name, EVC_RETRY);
    }
}

/* A worker's DONE (worker.h has the fields). */
static void run_done(void *ctx, void *arg, const wire_msg *m)
{
    serve *s = ctx;
    running *r = arg;
    const char *flags = m->f[1], *results = m->f[2];
    observe(s, (double)(sched_now_ms() - r->started_ms) / 1000.0);
    count_hooks(s, m->f[8]);
    if (flags[0] != '1') {
        queue_outcome(s, r->id, r->key, 0, 0, NULL, results);
        s->done_total++;
        count_event(s, r->name, EVC_DONE);
    } else {
        attempt_failure f = {.event = m->len[7] ? m->f[7] : r->name, .chained_event = m->f[7], .hook = m->f[4],
                             .code = m->f[5], .error = m->len[6] ? m->f[6] : "failed", .permanent = flags[1] == '1'};
        if (m->len[7]) /* the failure was in a chained event: the log names both */
            f.event = r->name;
        attempt_failed(s, r, &f, flags[2] == '1', results);
    }
    running_free(s, r);
}

/* The worker running the event died. Alone in it, the death is the event's:
 * a failed attempt ("worker crashed: SIGSEGV", "hard deadline ..."), and
 * after serve.poison_after of them it is dead (poison). As a bystander it
 * loses nothing: it runs again at once, alone, to see whose the death was. */
static void run_lost(void *ctx, void *arg, const char *reason, int charged)
{
    serve *s = ctx;
    running *r = arg;
    if (!charged) {
        queue_outcome(s, r->id, r->key, 5, 0, reason, NULL);
        host_logline l;
        json_writer *w = host_log_begin(&l, "warn", "event run again alone: its worker died");
        jw_kstr(w, "id", r->id);
        jw_kstr(w, "event", r->name);
        jw_kstr(w, "reason", reason);
        host_log_end(&l);
        running_free(s, r);
        return;
    }
    int deaths = r->worker_deaths + 1;
    const serve_settings *ss = &s->cfg->serve;
    char err[256];
    snprintf(err, sizeof err, "%s", reason);
    if (deaths >= ss->poison_after) {
        /* quarantined: its runs keep killing workers */
        snprintf(err, sizeof err, "poison: %s (%d worker%s died running it)", reason, deaths, deaths == 1 ? "" : "s");
        queue_outcome(s, r->id, NULL, 4, 0, reason, NULL);
        queue_outcome(s, r->id, r->key, 2, 0, err, NULL);
        s->failed_runs_total++;
        s->dead_total++;
        s->poison_total++;
        count_event(s, r->name, EVC_DEAD);
        log_dead(r->id, r->name, r->attempt, "poison: its runs keep killing worker processes", "WORKER", err);
        running_free(s, r);
        return;
    }
    attempt_failure f = {.event = r->name, .hook = "-", .code = "WORKER", .error = err};
    if (r->attempt >= ss->retry_attempts) {
        queue_outcome(s, r->id, NULL, 4, 0, reason, NULL);
        attempt_failed(s, r, &f, 0, NULL);
    } else {
        long long d = retry_delay(ss, r->attempt);
        log_failed_attempt(r, &f, ss->retry_attempts, d);
        queue_outcome(s, r->id, r->key, 4, iso_now_ms() + d, reason, NULL);
        s->failed_runs_total++;
        s->event_retries_total++;
        count_event(s, r->name, EVC_RETRY);
    }
    running_free(s, r);
}

static void dispatch_marks(serve *s);
static void dispatch_marks(serve *s);

static void dispatch(serve *s)
{
    take_settled(s);
    if (!s->draining)
        dispatch_marks(s);
    flush_outcomes(s);
}

static void dispatch_marks(serve *s)
{
    int cap = s->cfg->serve.concurrency;
    if (s->ninflight >= cap)
        return;
    pthread_mutex_lock(&s->lock);
    int broken = s->journal_broken;
    pthread_mutex_unlock(&s->lock);
    if (broken)
        return; /* an outcome could not be written: no run starts until the journal takes writes */
    long long now = iso_now_ms();
    journal_event *ev = NULL;
    int n = 0;
    char **waiting = NULL;
    int nwaiting = 0;
    if (journal_waiting_keys(s->jmain, now, &waiting, &nwaiting) < 0 ||
        journal_runnable(s->jmain, now, cap + s->ninflight + 1000, &ev, &n) < 0) {
        journal_failed(s, journal_errmsg(s->jmain), 0);
        for (int i = 0; i < nwaiting; i++)
            free(waiting[i]);
        free(waiting);
        return;
    }
    /* Keys already taken in this pass (an earlier event of the key waits or runs). */
    char **blocked = calloc((size_t)n + 1, sizeof *blocked);
    int nblocked = 0;
    int max_attempts = s->cfg->serve.retry_attempts;
    for (int i = 0; i < n && s->ninflight < cap; i++) {
        journal_event *e = &ev[i];
        int is_blocked = 0;
        for (int k = 0; e->order_key && k < nblocked && !is_blocked; k++)
            is_blocked = !strcmp(blocked[k], e->order_key);
        for (int k = 0; e->order_key && k < nwaiting && !is_blocked; k++)
            is_blocked = !strcmp(waiting[k], e->order_key);
        if (is_blocked || is_inflight(s, e->id) || is_pending(s, e->id) || key_busy(s, e->order_key) ||
            !workers_has_room(s->pool, e->solo)) {
            if (e->order_key && blocked)
                blocked[nblocked++] = e->order_key; /* later events of this key wait their turn */
            continue;
        }
        if (e->attempts >= max_attempts) {
            /* every attempt was used, the last ones cut short by a stop of the service;
             * the error of the last run that ended is kept */
            char why[2048];
            snprintf(why, sizeof why, "its attempts were used up (the service stopped during a run)%s%.1900s",
                     e->last_error && *e->last_error ? "; the last error: " : "",
                     e->last_error ? e->last_error : "");
            if (journal_mark_dead(s->jmain, e->id, why, e->results_json) < 0) {
                journal_failed(s, journal_errmsg(s->jmain), 0);
                break;
            }
            s->dead_total++;
            log_dead(e->id, e->name, e->attempts, "its attempts were used up (the service stopped during a run)",
                     NULL, e->last_error ? e->last_error : "");
            continue;
        }
        running *r = calloc(1, sizeof *r);
        if (!r || !(r->id = strdup(e->id))) {
            free(r);
            break;
        }
        r->key = e->order_key ? strdup(e->order_key) : NULL;
        r->name = strdup(e->name);
        r->worker_deaths = e->worker_deaths;
        r->attempt = e->attempts + 1;
        r->started_ms = sched_now_ms();
        r->s = s;
        queue_outcome(s, e->id, NULL, 3, 0, NULL, NULL); /* running, attempts + 1 */
        s->inflight[s->ninflight++] = r;
        if (!r->name || workers_run(s->pool, e->id, e->name, e->data_json, e->solo, r) < 0) {
            queue_outcome(s, e->id, e->order_key, 1, iso_now_ms() + 1000, "out of memory", NULL);
            running_free(s, r);
        }
        if (e->order_key && blocked)
            blocked[nblocked++] = e->order_key;
    }
    free(blocked);
    for (int i = 0; i < nwaiting; i++)
        free(waiting[i]);
    free(waiting);
    journal_events_free(ev, n);
}

/* ---- the poller: changes Wix does not push ---- */

/* A poll's task ended: each changed instance becomes a journaled event. The
 * task's result, {instances = {{instance_id, status, name, id, data}...},
 * watermark}, arrives as JSON (the scheduler encoded it; nothing here touches
 * the poller's Lua state). */
static void poll_done(void *ctx, int ok, const char *text)
{
    serve *s = ctx;
    s->polling = 0;
    s->polls_total++;
    json_doc *doc = NULL;
    json_value *res = ok ? json_parse(text, strlen(text), 0, &doc, NULL) : NULL;
    if (!res || res->type != JSON_OBJECT) {
        s->poll_failures_total++;
        host_logline l;
        json_writer *w = host_log_begin(&l, "warn", "poll failed");
        jw_kstr(w, "error", !ok ? text : "the poller's result is not an object");
        host_log_end(&l);
        json_doc_free(doc);
        return;
    }
    json_value *list = json_get(res, "instances");
    for (json_value *item = list && list->type == JSON_ARRAY ? list->u.kids.head : NULL; item; item = item->next) {
        if (item->type != JSON_OBJECT)
            continue;
        const char *iid = json_get_str(item, "instance_id"), *st = json_get_str(item, "status"),
                   *name = json_get_str(item, "name"), *id = json_get_str(item, "id");
        char prev[32];
        int seen = iid && st ? journal_observe(s->jmain, iid, st, prev) : -1;
        /* A change, or a failure seen for the first time, is an event. */
        if ((seen == 1 || (seen == 0 && !strcmp(st, "FAILED"))) && name && id && known_name(s, name)) {
            json_value *dv = json_get(item, "data");
            buf_t data;
            buf_init(&data, 4 * 1024 * 1024);
            json_writer w;
            jw_init(&w, &data);
            jw_obj(&w);
            for (json_value *k = dv && dv->type == JSON_OBJECT ? dv->u.kids.head : NULL; k; k = k->next) {
                if (seen == 1 && k->keylen == 15 && !memcmp(k->key, "previous_status", 15))
                    continue;
                jw_key(&w, k->key);
                jw_value(&w, k);
            }
            if (seen == 1)
                jw_kstr(&w, "previous_status", prev);
            jw_obj_end(&w);
            if (!data.failed) {
                journal_new q = {.id = id, .name = name, .data_json = buf_cstr(&data), .order_key = NULL};
                char e2[256];
                if (journal_accept_many(s->jmain, &q, 1, e2, sizeof e2) == 0 && q.result == 0)
                    s->poll_events_total++;
                if (q.result == 1)
                    journal_event_free(&q.existing);
            }
            buf_free(&data);
        }
    }
    const char *wm = json_get_str(res, "watermark");
    if (wm)
        journal_meta_set(s->jmain, "poller.watermark", wm);
    json_doc_free(doc);
}

static void poll_start(serve *s)
{
    const serve_settings *ss = &s->boot_cfg->serve;
    if (!ss->poller_enabled || s->polling || s->draining || sched_now_ms() < s->next_poll)
        return;
    s->next_poll = sched_now_ms() + ss->poller_interval_ms;
    char wm[64];
    int have_wm = journal_meta_get(s->jmain, "poller.watermark", wm, sizeof wm) == 0;
    const char *acct = ss->poller_account_id ? ss->poller_account_id : s->boot_cfg->wix.account_id;
    if (workers_poll(s->pool, have_wm ? wm : NULL, acct) == 0)
        s->polling = 1;
}

/* ---- reload ---- */

static void watch_dirs(serve *s, const wixr_config *cfg)
{
    if (s->inotify_fd < 0)
        return;
    char dir[PATH_MAX];
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_MOVED_FROM;
    if (cfg->path) {
        snprintf(dir, sizeof dir, "%s", cfg->dir ? cfg->dir : ".");
        inotify_add_watch(s->inotify_fd, dir, mask);
    }
    for (int i = 0; i < cfg->nhooks; i++) {
        snprintf(dir, sizeof dir, "%s", cfg->hooks[i].script);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        else
            snprintf(dir, sizeof dir, ".");
        inotify_add_watch(s->inotify_fd, dir, mask);
    }
    for (int i = 0; i < cfg->nlua_paths; i++)
        inotify_add_watch(s->inotify_fd, cfg->lua_paths[i], mask);
}

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int same_str(const char *a, const char *b)
{
    return a == b || (a && b && !strcmp(a, b));
}

/* The settings a reload does not apply: the wix: section (the client is built
 * at start) and the serve: keys the service reads at start only (the rest of
 * serve: -- concurrency, retry, accept_unknown_events -- comes with the new
 * rules). A reload that changes one says so, naming the keys (never a value). */
static void restart_notice(serve *s, const wixr_config *nc)
{
    const wix_settings *a = &s->boot_cfg->wix, *b = &nc->wix;
    const serve_settings *p = &s->boot_cfg->serve, *q = &nc->serve;
    const char *changed[32];
    int n = 0;
    s->restart_needed[0] = '\0';
#define CHANGED(cond, name) do { if ((cond) && n < 32) changed[n++] = (name); } while (0)
    CHANGED(s->boot_transport != b->transport, "wix.transport");
    CHANGED(!same_str(a->base_url, b->base_url), "wix.base_url");
    CHANGED(!same_str(a->api_key, b->api_key) || !same_str(a->api_key_file, b->api_key_file), "wix.api_key_file");
    CHANGED(!same_str(a->account_id, b->account_id), "wix.account_id");
    CHANGED(a->timeout_ms != b->timeout_ms || a->connect_timeout_ms != b->connect_timeout_ms, "wix.timeout_ms");
    CHANGED(a->retry_attempts != b->retry_attempts || a->retry_base_ms != b->retry_base_ms ||
                a->retry_max_ms != b->retry_max_ms || a->retry_total_ms != b->retry_total_ms, "wix.retry");
    CHANGED(a->rate_limit != b->rate_limit || a->rate_window_ms != b->rate_window_ms, "wix.rate_limit");
    CHANGED(a->concurrency != b->concurrency, "wix.concurrency");
    CHANGED(!same_str(a->sandbox_db, b->sandbox_db) || !same_str(a->sandbox_catalog, b->sandbox_catalog) ||
                a->sandbox_delivery_delay_ms != b->sandbox_delivery_delay_ms, "wix.sandbox");
    CHANGED(!same_str(a->audit, b->audit), "wix.audit");
    CHANGED(!same_str(p->listen, q->listen), "serve.listen");
    CHANGED(!same_str(p->journal, q->journal), "serve.journal");
    int keys_same = p->norder_key == q->norder_key;
    for (int i = 0; keys_same && i < p->norder_key; i++)
        keys_same = !strcmp(p->order_key[i], q->order_key[i]);
    CHANGED(!keys_same, "serve.order_key");
    CHANGED(p->max_body_kb != q->max_body_kb, "serve.max_body_kb");
    CHANGED(p->request_timeout_ms != q->request_timeout_ms, "serve.request_timeout_ms");
    CHANGED(p->idle_timeout_ms != q->idle_timeout_ms, "serve.idle_timeout_ms");
    CHANGED(p->max_connections != q->max_connections || p->max_connections_per_ip != q->max_connections_per_ip,
            "serve.max_connections");
    CHANGED(p->drain_ms != q->drain_ms, "serve.drain_ms");
    CHANGED(p->poller_enabled != q->poller_enabled || p->poller_interval_ms != q->poller_interval_ms ||
                !same_str(p->poller_account_id, q->poller_account_id), "poller");
    CHANGED(!same_str(s->boot_cfg->state_dir, nc->state_dir), "runtime.state_dir");
#undef CHANGED
    if (!n)
        return;
    host_logline l;
    json_writer *w = host_log_begin(&l, "warn", "the rules were reloaded, but changes to these settings need a restart");
    jw_key(w, "restart_needed");
    jw_arr(w);
    for (int i = 0; i < n; i++)
        jw_str(w, changed[i]);
    jw_arr_end(w);
    host_log_end(&l);
    snprintf(s->restart_needed, sizeof s->restart_needed, "%s", changed[0]);
    for (int i = 1; i < n; i++) {
        size_t len = strlen(s->restart_needed);
        snprintf(s->restart_needed + len, sizeof s->restart_needed - len, ", %s", changed[i]);
    }
}

static void reload_failed(serve *s, const char *why, const char *errors)
{
    s->reload_failures_total++;
    s->last_reload_ok = 0;
    snprintf(s->last_reload_error, sizeof s->last_reload_error, "%s", errors);
    host_logline l;
    json_writer *w = host_log_begin(&l, "error", "reload failed; the previous rules stay in force");
    jw_kstr(w, "why", why);
    jw_kstr(w, "error", errors);
    jw_key(w, "rules_version");
    jw_int(w, s->rules_version);
    host_log_end(&l);
}

/* A reload: the configuration is read here (C only); the rules are loaded
 * by a new generation of workers (workers_reload), which takes over only when
 * every one of them loaded them all (reloaded, below). Runs in flight finish
 * in the old generation, with the rules they started with. */
static void reload(serve *s, const char *why)
{
    if (s->next_cfg) {
        /* one is loading: this request is taken by the next one, started when it ends
         * (with the files as they are then), so a stream of requests cannot starve reloads */
        s->reload_again = 1;
        snprintf(s->reload_again_why, sizeof s->reload_again_why, "%s", why);
        return;
    }
    char err[8192];
    s->last_reload_ms = iso_now_ms();
    s->reload_t0 = mono_ms();
    wixr_config *nc = calloc(1, sizeof *nc);
    if (!nc || config_load(nc, s->boot_cfg->path, err, sizeof err) < 0) {
        reload_failed(s, why, nc ? err : "out of memory");
        free(nc);
        return;
    }
    s->next_cfg = nc;
    snprintf(s->reload_why, sizeof s->reload_why, "%s", why);
    if (workers_reload(s->pool, (const char *const *)s->ws.args) < 0) {
        reload_failed(s, why, "out of memory");
        config_free(nc);
        free(nc);
        s->next_cfg = NULL;
    }
}

static void reloaded(void *ctx, int ok, const char *errors)
{
    serve *s = ctx;
    wixr_config *nc = s->next_cfg;
    s->next_cfg = NULL;
    if (!nc)
        return;
    if (!ok) {
        reload_failed(s, s->reload_why, errors);
        config_free(nc);
        free(nc);
        return;
    }
    double t1 = mono_ms();
    wixr_config *old = s->cfg;
    s->cfg = nc;
    s->rules_version++;
    publish_names(s);
    if (old != s->boot_cfg) {
        config_free(old);
        free(old);
    }
    s->last_swap_ms = mono_ms() - t1;
    watch_dirs(s, nc);
    s->reloads_total++;
    s->last_reload_ok = 1;
    s->last_reload_error[0] = '\0';
    host_logline l;
    json_writer *w = host_log_begin(&l, "info", "rules reloaded");
    jw_kstr(w, "why", s->reload_why);
    jw_key(w, "rules_version");
    jw_int(w, s->rules_version);
    jw_key(w, "hooks");
    jw_int(w, nc->nhooks);
    jw_key(w, "build_ms");
    jw_num(w, (double)(long long)((t1 - s->reload_t0) * 100) / 100);
    jw_key(w, "swap_ms");
    jw_num(w, (double)(long long)(s->last_swap_ms * 10000) / 10000);
    host_log_end(&l);
    restart_notice(s, nc);
}

/* A reload ended (either way): one asked for meanwhile starts now. */
static void reload_next(serve *s)
{
    if (s->reload_again && !s->next_cfg) {
        s->reload_again = 0;
        reload(s, s->reload_again_why);
    }
}

/* ---- snapshots for /healthz and /metrics ---- */

/* A Prometheus label value: backslash, double quote and newline escaped
 * (the exposition format's rules); other control bytes and bytes that are
 * not UTF-8 become '?'. */
static void prom_label(buf_t *m, const char *v)
{
    size_t n = strlen(v);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == '\\' || c == '"')
            buf_addc(m, '\\'), buf_addc(m, (char)c);
        else if (c == '\n')
            buf_adds(m, "\\n");
        else if (c < 0x20 || c == 0x7f)
            buf_addc(m, '?');
        else if (c >= 0x80) {
            size_t l = 1;
            while (l < 4 && i + l < n && ((unsigned char)v[i + l] & 0xC0) == 0x80)
                l++;
            if (json_utf8_valid(v + i, l))
                buf_add(m, v + i, l);
            else
                buf_addc(m, '?');
            i += l - 1;
        } else
            buf_addc(m, (char)c);
    }
}

static void metric_line(buf_t *m, const char *metric, const char *event, const char *hook, const char *what,
                        long long n)
{
    buf_adds(m, metric);
    buf_adds(m, "{event=\"");
    prom_label(m, event);
    if (hook) {
        buf_adds(m, "\",hook=\"");
        prom_label(m, hook);
    }
    buf_printf(m, "\",outcome=\"%s\"} %lld\n", what, n);
}

/* Follows the rebuild counts of the current rules' hooks (summed over the
 * workers); returns how many hooks keep breaking (BREAKING_REBUILDS rebuilds
 * within BREAKING_WINDOW_MS). */
static int track_rebuilds(serve *s, const workers_totals *t, long long now)
{
    int nh = s->cfg->nhooks < WORKERS_MAX_HOOKS ? s->cfg->nhooks : WORKERS_MAX_HOOKS;
    if (s->breaks_version != s->rules_version || s->nbreaks != nh) {
        free(s->breaks);
        s->breaks = calloc((size_t)nh + 1, sizeof *s->breaks);
        s->nbreaks = s->breaks ? nh : 0;
        s->breaks_version = s->rules_version;
    }
    int n = 0;
    for (int i = 0; i < s->nbreaks; i++) {
        breaking *b = &s->breaks[i];
        for (long long d = t->rebuilds[i] - b->seen; d > 0; d--) {
            memmove(b->at + 1, b->at, sizeof b->at - sizeof b->at[0]);
            b->at[0] = now;
        }
        b->seen = t->rebuilds[i];
        if (b->at[BREAKING_REBUILDS - 1] && now - b->at[BREAKING_REBUILDS - 1] <= BREAKING_WINDOW_MS)
            n++;
    }
    return n;
}

/* "event (script)", as the hooks name themselves in messages. */
static void hook_name(const wixr_config *c, int i, char *out, size_t n)
{
    const char *script = strrchr(c->hooks[i].script, '/');
    snprintf(out, n, "%s (%s)", c->hooks[i].event, script ? script + 1 : c->hooks[i].script);
}

static void snapshot(serve *s)
{
    long long counts[5] = {0};
    journal_counts(s->jmain, counts);
    static workers_totals T; /* (snapshots run on the main thread only) */
    workers_totals_get(s->pool, &T);
    const workers_totals *st = &T;
    char lr[80] = "";
    if (s->last_reload_ms)
        iso_format_ms(s->last_reload_ms, lr);
    buf_t h;
    buf_init(&h, 0);
    json_writer w;
    jw_init(&w, &h);
    jw_obj(&w);
    long long now = sched_now_ms();
    int nbreaking = track_rebuilds(s, st, now);
    int stalled = workers_stalled(s->pool);
    pthread_mutex_lock(&s->lock);
    int broken = s->journal_broken;
    char journal_error[sizeof s->journal_error];
    snprintf(journal_error, sizeof journal_error, "%s", s->journal_error);
    pthread_mutex_unlock(&s->lock);
    jw_kstr(&w, "status", s->draining          ? "draining"
                          : broken             ? "journal_failing"
                          : s->last_reload_ok && !nbreaking && !stalled ? "ok"
                                               : "degraded");
    jw_key(&w, "rules_version");
    jw_int(&w, s->rules_version);
    jw_key(&w, "draining");
    jw_bool(&w, s->draining);
    jw_key(&w, "last_reload");
    jw_obj(&w);
    jw_key(&w, "ok");
    jw_bool(&w, s->last_reload_ok);
    if (lr[0])
        jw_kstr(&w, "at", lr);
    if (!s->last_reload_ok)
        jw_kstr(&w, "error", s->last_reload_error);
    jw_obj_end(&w);
    if (s->restart_needed[0])
        jw_kstr(&w, "restart_needed", s->restart_needed);
    if (nbreaking) {
        /* hooks whose state broke its memory cap BREAKING_REBUILDS times within the window */
        jw_key(&w, "breaking_hooks");
        jw_arr(&w);
        for (int i = 0; i < s->nbreaks; i++) {
            const breaking *b = &s->breaks[i];
            if (!b->at[BREAKING_REBUILDS - 1] || now - b->at[BREAKING_REBUILDS - 1] > BREAKING_WINDOW_MS)
                continue;
            char name[300];
            hook_name(s->cfg, i, name, sizeof name);
            jw_obj(&w);
            jw_kstr(&w, "hook", name);
            jw_key(&w, "rebuilds");
            jw_int(&w, st->rebuilds[i]);
            if (st->rebuild_errors[i][0])
                jw_kstr(&w, "rebuild_error", st->rebuild_errors[i]);
            jw_obj_end(&w);
        }
        jw_arr_end(&w);
    }
    jw_key(&w, "reloads");
    jw_int(&w, s->reloads_total);
    jw_key(&w, "reload_failures");
    jw_int(&w, s->reload_failures_total);
    jw_key(&w, "in_flight");
    jw_int(&w, s->ninflight);
    if (stalled)
        jw_kstr(&w, "workers_stalled", "no worker process is ready, or none with work made progress in 2 s");
    jw_key(&w, "workers");
    workers_health_json(s->pool, &w);
    jw_key(&w, "worker_restarts");
    jw_int(&w, workers_restarts(s->pool));
    jw_key(&w, "poisoned");
    jw_int(&w, s->poison_total);
    if (broken) {
        jw_key(&w, "journal_failure");
        jw_obj(&w);
        jw_kstr(&w, "error", journal_error);
        jw_key(&w, "restart_needed");
        jw_bool(&w, broken == 2);
        jw_obj_end(&w);
    }
    jw_key(&w, "journal");
    jw_obj(&w);
    long long depth = 0;
    for (int i = 0; i < 5; i++) {
        jw_key(&w, journal_state_name((ev_state)i));
        jw_int(&w, counts[i]);
        if (i != EV_DONE && i != EV_DEAD)
            depth += counts[i];
    }
    jw_key(&w, "depth");
    jw_int(&w, depth);
    jw_obj_end(&w);
    jw_obj_end(&w);

    buf_t m;
    buf_init(&m, 0);
    buf_adds(&m, "# HELP wixr_events Events in the journal by state.\n# TYPE wixr_events gauge\n");
    for (int i = 0; i < 5; i++)
        buf_printf(&m, "wixr_events{state=\"%s\"} %lld\n", journal_state_name((ev_state)i), counts[i]);
    pthread_mutex_lock(&s->lock);
    long long acc = s->accepted_total, dup = s->duplicates_total;
    pthread_mutex_unlock(&s->lock);
    buf_printf(&m, "# HELP wixr_events_accepted_total Events accepted over HTTP.\n# TYPE wixr_events_accepted_total counter\n"
                   "wixr_events_accepted_total %lld\n"
                   "# HELP wixr_events_duplicate_total Events sent again with a known id.\n# TYPE wixr_events_duplicate_total counter\n"
                   "wixr_events_duplicate_total %lld\n",
               acc, dup);
    pthread_mutex_lock(&s->conns_lock);
    long long cut = s->slow_cut_total;
    pthread_mutex_unlock(&s->conns_lock);
    buf_printf(&m, "# HELP wixr_http_slow_requests_cut_total Connections cut off because their request took longer than "
                   "serve.request_timeout_ms.\n# TYPE wixr_http_slow_requests_cut_total counter\n"
                   "wixr_http_slow_requests_cut_total %lld\n",
               cut);
    buf_printf(&m, "# HELP wixr_event_runs_failed_total Event runs in which a hook failed.\n# TYPE wixr_event_runs_failed_total counter\n"
                   "wixr_event_runs_failed_total %lld\n"
                   "# HELP wixr_event_retries_total Event runs scheduled again after a failure.\n# TYPE wixr_event_retries_total counter\n"
                   "wixr_event_retries_total %lld\n"
                   "# HELP wixr_events_dead_total Events that failed their last attempt.\n# TYPE wixr_events_dead_total counter\n"
                   "wixr_events_dead_total %lld\n",
               s->failed_runs_total, s->event_retries_total, s->dead_total);
    buf_adds(&m, "# HELP wixr_event_run_seconds Time to run an event's hooks.\n# TYPE wixr_event_run_seconds histogram\n");
    long long cum = 0;
    for (size_t b = 0; b < NBUCKETS; b++) {
        cum += s->hist[b];
        buf_printf(&m, "wixr_event_run_seconds_bucket{le=\"%g\"} %lld\n", buckets[b], cum);
    }
    cum += s->hist[NBUCKETS];
    buf_printf(&m, "wixr_event_run_seconds_bucket{le=\"+Inf\"} %lld\nwixr_event_run_seconds_sum %.6f\n"
                   "wixr_event_run_seconds_count %lld\n",
               cum, s->hist_sum, s->hist_count);
    buf_adds(&m, "# HELP wixr_api_calls_total Resellers API calls by endpoint and final status.\n# TYPE wixr_api_calls_total counter\n");
    int nc = st->ncalls;
    const wix_call_count *cc = st->calls;
    for (int i = 0; i < nc; i++)
        buf_printf(&m, "wixr_api_calls_total{endpoint=\"%s\",status=\"%ld\"} %lld\n", cc[i].endpoint, cc[i].status,
                   cc[i].n);
    buf_printf(&m, "# HELP wixr_api_retries_total API attempts made again (transport error, 429, 5xx).\n# TYPE wixr_api_retries_total counter\n"
                   "wixr_api_retries_total %lld\n"
                   "# HELP wixr_rate_limit_waits_total Calls held back by the client-side rate limit.\n# TYPE wixr_rate_limit_waits_total counter\n"
                   "wixr_rate_limit_waits_total %lld\n",
               st->retries, st->rate_waits);
    buf_printf(&m, "# HELP wixr_reloads_total Rule reloads that took effect.\n# TYPE wixr_reloads_total counter\n"
                   "wixr_reloads_total %lld\n"
                   "# HELP wixr_reload_failures_total Reloads refused because a file did not load.\n# TYPE wixr_reload_failures_total counter\n"
                   "wixr_reload_failures_total %lld\n"
                   "# HELP wixr_rules_version The rules in force.\n# TYPE wixr_rules_version gauge\nwixr_rules_version %ld\n"
                   "# HELP wixr_events_in_flight Events running now.\n# TYPE wixr_events_in_flight gauge\n"
                   "wixr_events_in_flight %d\n",
               s->reloads_total, s->reload_failures_total, s->rules_version, s->ninflight);
    buf_adds(&m, "# HELP wixr_event_outcomes_total Event runs by event name and how they ended (done, retry, dead).\n"
                 "# TYPE wixr_event_outcomes_total counter\n");
    for (int i = 0; i < s->nrows; i++)
        for (int k = 0; k < EVC__N && !s->rows[i].hook; k++)
            metric_line(&m, "wixr_event_outcomes_total", s->rows[i].event, NULL, evc_names[k], s->rows[i].n[k]);
    buf_adds(&m, "# HELP wixr_hook_runs_total Hook runs by event, hook (its script) and outcome (ok, failed, "
                 "permanent, skipped).\n# TYPE wixr_hook_runs_total counter\n");
    for (int i = 0; i < s->nrows; i++)
        for (int k = 0; k < HC__N && s->rows[i].hook; k++)
            metric_line(&m, "wixr_hook_runs_total", s->rows[i].event, s->rows[i].hook, hc_names[k], s->rows[i].n[k]);
    buf_adds(&m, "# HELP wixr_hook_rebuilds_total Fresh Lua states made for a hook after a run broke its memory "
                 "cap (the current rules' hooks).\n# TYPE wixr_hook_rebuilds_total counter\n");
    for (int i = 0; i < s->cfg->nhooks && i < WORKERS_MAX_HOOKS; i++) {
        const hook_def *k = &s->cfg->hooks[i];
        if (!k->enabled)
            continue;
        const char *script = strrchr(k->script, '/');
        buf_adds(&m, "wixr_hook_rebuilds_total{event=\"");
        prom_label(&m, k->event);
        buf_adds(&m, "\",hook=\"");
        prom_label(&m, script ? script + 1 : k->script);
        buf_printf(&m, "\"} %lld\n", st->rebuilds[i]);
    }
    buf_printf(&m, "# HELP wixr_worker_restarts_total Worker processes replaced after they died.\n"
                   "# TYPE wixr_worker_restarts_total counter\nwixr_worker_restarts_total %lld\n"
                   "# HELP wixr_events_poisoned_total Events quarantined because their runs kept killing workers.\n"
                   "# TYPE wixr_events_poisoned_total counter\nwixr_events_poisoned_total %lld\n",
               workers_restarts(s->pool), s->poison_total);
    buf_printf(&m, "# HELP wixr_events_permanent_total Events ended dead at once by a permanent failure.\n"
                   "# TYPE wixr_events_permanent_total counter\nwixr_events_permanent_total %lld\n",
               s->permanent_total);
    buf_printf(&m, "# HELP wixr_polls_total Polls of the API for status changes.\n# TYPE wixr_polls_total counter\n"
                   "wixr_polls_total %lld\n"
                   "# HELP wixr_poll_failures_total Polls that failed.\n# TYPE wixr_poll_failures_total counter\n"
                   "wixr_poll_failures_total %lld\n"
                   "# HELP wixr_poll_events_total Events made from observed changes.\n# TYPE wixr_poll_events_total counter\n"
                   "wixr_poll_events_total %lld\n",
               s->polls_total, s->poll_failures_total, s->poll_events_total);
    pthread_mutex_lock(&s->lock);
    free(s->health);
    free(s->metrics);
    s->health = buf_steal(&h, NULL);
    s->health_503 = s->draining || broken || stalled;
    s->metrics = buf_steal(&m, NULL);
    pthread_mutex_unlock(&s->lock);
    buf_free(&h);
    buf_free(&m);
}

/* The main loop's look at the journal (every snapshot): the file it opened is
 * still there and still a SQLite file, and a failing journal takes a write
 * again (the probe). */
static void check_journal(serve *s)
{
    struct stat st;
    if (stat(s->journal_path, &st) < 0 || st.st_dev != s->journal_dev || st.st_ino != s->journal_ino) {
        char why[PATH_MAX + 128];
        snprintf(why, sizeof why, "the journal file %s was %s under the service; restart it", s->journal_path,
                 errno == ENOENT ? "deleted" : "replaced");
        errno = 0;
        journal_failed(s, why, 1);
        return;
    }
    char err[256];
    if (journal_check_file(s->jmain, err, sizeof err) < 0) {
        char why[sizeof err + 32];
        snprintf(why, sizeof why, "%s; restart the service", err);
        journal_failed(s, why, 1);
        return;
    }
    pthread_mutex_lock(&s->lock);
    int probe = s->journal_broken == 1 && mono_now_ms() >= s->journal_probe_at;
    pthread_mutex_unlock(&s->lock);
    if (!probe)
        return;
    char now[32];
    snprintf(now, sizeof now, "%lld", journal_now_ms());
    if (journal_meta_set(s->jmain, "journal_probe", now) < 0) {
        journal_failed(s, journal_errmsg(s->jmain), 0);
        return;
    }
    pthread_mutex_lock(&s->lock);
    int was = s->journal_broken;
    if (was == 1) {
        s->journal_broken = 0;
        s->journal_error[0] = 0;
    }
    pthread_mutex_unlock(&s->lock);
    if (was == 1)
        log_line("info", "the journal takes writes again: intake and runs resume", NULL, 0);
}

/* ---- start and stop ---- */

/* A state file (serve.port, serve.pid) for writing: 0600, also when it was
 * left from an earlier start with another mode. */
static FILE *fopen_private(const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return NULL;
    FILE *f = fchmod(fd, 0600) == 0 ? fdopen(fd, "w") : NULL;
    if (!f)
        close(fd);
    return f;
}

static int is_loopback(const char *host)
{
    return !strcmp(host, "127.0.0.1") || !strncmp(host, "127.", 4) || !strcmp(host, "localhost");
}

static int start_http(serve *s, const char *listen, char *err, size_t errlen)
{
    char host[128];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen || (size_t)(colon - listen) >= sizeof host) {
        snprintf(err, errlen, "listen: expected HOST:PORT, got '%s'", listen);
        return -1;
    }
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) {
        snprintf(err, errlen, "listen: bad port in '%s'", listen);
        return -1;
    }
    if (!s->have_token && !(s->opt->insecure_no_auth && is_loopback(host))) {
        snprintf(err, errlen, "%s", s->opt->insecure_no_auth
                                        ? "--insecure-no-auth is only allowed on a loopback address"
                                        : "WIXR_TOKEN is not set: set it (clients send Authorization: Bearer <token>), "
                                          "or pass --insecure-no-auth to serve unauthenticated on loopback only");
        return -1;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        snprintf(err, errlen, "listen: '%s' is not an IPv4 address", host);
        return -1;
    }
    const serve_settings *ss = &s->boot_cfg->serve;
    s->conns = malloc((size_t)ss->max_connections * sizeof *s->conns);
    if (!s->conns) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->nconns = ss->max_connections;
    for (int i = 0; i < s->nconns; i++)
        s->conns[i].fd = -1;
    s->mhd = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                              (uint16_t)port, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                              MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)((ss->idle_timeout_ms + 999) / 1000),
                              MHD_OPTION_CONNECTION_LIMIT, (unsigned)ss->max_connections,
                              MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)ss->max_connections_per_ip,
                              MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
                              MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U,
                              MHD_OPTION_END);
    if (!s->mhd) {
        snprintf(err, errlen, "cannot listen on %s (in use, or not permitted)", listen);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
    char bound[160];
    snprintf(bound, sizeof bound, "%s:%d", host, info ? info->port : (int)port);
    host_logline l;
    json_writer *w = host_log_begin(&l, "info", "wixr serve listening");
    jw_kstr(w, "address", bound);
    jw_key(w, "auth");
    jw_bool(w, s->have_token);
    jw_kstr(w, "journal", s->journal_path);
    host_log_end(&l);
    if (s->boot_cfg->state_dir) {
        char portfile[PATH_MAX];
        snprintf(portfile, sizeof portfile, "%s/serve.port", s->boot_cfg->state_dir);
        FILE *pf = fopen_private(portfile);
        if (pf) {
            fprintf(pf, "%d\n", info ? info->port : (int)port);
            fclose(pf);
        }
    }
    return 0;
}

static void drain_fd(int fd)
{
    uint64_t v;
    while (read(fd, &v, sizeof v) > 0) {
    }
}

static int inotify_pending(int fd)
{
    char buf[8192];
    int any = 0;
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        any = 1;
    return any;
}

/* ---- the worker processes ---- */

static int start_workers(serve *s, char *err, size_t errlen)
{
    const wixr_config *c = s->boot_cfg;
    const char *extra[4];
    int n = 0;
    extra[n++] = "--log-prints";
    if (s->opt->test_faults)
        extra[n++] = "--test-faults";
    extra[n] = NULL;
    if (worker_setup_make(&s->ws, c, extra, err, errlen) < 0)
        return -1;
    int workers = c->serve.workers;
    workers_options po = {.args = (const char *const *)s->ws.args,
                       .env = s->ws.env,
                       .workers = workers,
                       .per_worker = (c->serve.concurrency + workers - 1) / workers,
                       .memory_mb = s->ws.memory_mb,
                       .hard_ms = s->ws.hard_ms,
                       .rate_limit = c->wix.rate_limit,
                       .rate_window_ms = c->wix.rate_window_ms,
                       .cb = {.ctx = s, .done = run_done, .lost = run_lost, .polled = poll_done, .reloaded = reloaded}};
    s->pool = workers_start(&po, 60000, err, errlen);
    return s->pool ? 0 : -1;
}

/* Waits (at most max_ms) for the workers, a signal, intake or a file change,
 * then serves the workers' messages. */
static void wait_and_serve(serve *s, long max_ms)
{
    struct pollfd fds[2 + 130];
    int n = 0;
    fds[n++] = (struct pollfd){.fd = s->evfd, .events = POLLIN};
    if (s->inotify_fd >= 0)
        fds[n++] = (struct pollfd){.fd = s->inotify_fd, .events = POLLIN};
    n += workers_fds(s->pool, fds + n, (int)(sizeof fds / sizeof fds[0]) - n);
    long long wait = workers_next_ms(s->pool) - sched_now_ms();
    if (wait > max_ms)
        wait = max_ms;
    if (wait < 0)
        wait = 0;
    poll(fds, (nfds_t)n, (int)wait);
    workers_service(s->pool);
}

int serve_main(const serve_options *o)
{
    serve S = {0}, *s = &S;
    s->opt = o;
    s->evfd = -1;
    s->inotify_fd = -1;
    s->last_reload_ok = 1;
    pthread_mutex_init(&s->lock, NULL);
    pthread_mutex_init(&s->conns_lock, NULL);
    pthread_cond_init(&s->queued, NULL);
    int rc = 1;
    char err[8192];
    s->boot_cfg = calloc(1, sizeof *s->boot_cfg);
    if (!s->boot_cfg || config_load(s->boot_cfg, o->config_path, err, sizeof err) < 0) {
        log_fatal("%s", s->boot_cfg ? err : "out of memory");
        free(s->boot_cfg);
        return 3;
    }
    if (!s->boot_cfg->path) {
        log_fatal("wixr serve: no configuration found (give --config, set WIXR_CONFIG, or create wixr.yaml)");
        config_free(s->boot_cfg);
        free(s->boot_cfg);
        return 3;
    }
    const char *tok = getenv("WIXR_TOKEN");
    if (tok && *tok) {
        snprintf(s->token, sizeof s->token, "%s", tok);
        s->have_token = 1;
    }
    s->max_body = s->boot_cfg->serve.max_body_kb * 1024;
    if (mkdir(s->boot_cfg->state_dir, 0700) < 0 && errno != EEXIST) {
        log_fatal("wixr serve: cannot create %s: %s", s->boot_cfg->state_dir, strerror(errno));
        goto out;
    }
    /* One service per state folder: a second one would run every event twice. */
    char lockpath[PATH_MAX];
    snprintf(lockpath, sizeof lockpath, "%s/serve.lock", s->boot_cfg->state_dir);
    int lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) < 0) {
        log_fatal("wixr serve: another wixr serve is running with the state folder %s",
                s->boot_cfg->state_dir);
        if (lockfd >= 0)
            close(lockfd);
        goto out;
    }
    serve_journal_path(s->boot_cfg, s->journal_path, sizeof s->journal_path);
    if (!(s->jmain = journal_open(s->journal_path, err, sizeof err)) ||
        !(s->jwrite = journal_open(s->journal_path, err, sizeof err)) ||
        !(s->jread = journal_open(s->journal_path, err, sizeof err))) {
        log_fatal("wixr serve: %s", err);
        goto out;
    }
    journal_set_durable(s->jmain, 0); /* run state changes: see journal_set_durable */
    struct stat jst;
    if (stat(s->journal_path, &jst) == 0) {
        s->journal_dev = jst.st_dev;
        s->journal_ino = jst.st_ino;
    }
    /* Intake commits never wait for a checkpoint: the main loop runs them. */
    journal_set_manual_checkpoints(s->jwrite);
    journal_set_manual_checkpoints(s->jmain);
    journal_set_manual_checkpoints(s->jread);
    int recovered = journal_recover(s->jmain);
    /* transport auto is resolved here, as the client would (http with an API key), so
     * the start line below says which one runs and nothing else is printed */
    s->boot_transport = s->boot_cfg->wix.transport;
    if (s->boot_cfg->wix.transport == TRANSPORT_AUTO)
        s->boot_cfg->wix.transport = s->boot_cfg->wix.api_key ? TRANSPORT_HTTP : TRANSPORT_SANDBOX;
    s->cfg = s->boot_cfg;
    {
        const wix_settings *ws = &s->boot_cfg->wix;
        int http = ws->transport == TRANSPORT_HTTP;
        host_logline l;
        json_writer *w = host_log_begin(&l, "info", "wixr serve starting");
        jw_kstr(w, "config", s->boot_cfg->path);
        jw_kstr(w, "transport", http ? "http" : "sandbox");
        jw_kstr(w, "chosen_by", s->boot_transport == TRANSPORT_AUTO
                                    ? (http ? "auto: an API key is set" : "auto: no API key (WIX_API_KEY) is set")
                                    : "wix.transport");
        if (http)
            log_url(w, "base_url", ws->base_url);
        else
            jw_kstr(w, "sandbox_db", ws->sandbox_db);
        jw_kstr(w, "account_id", ws->account_id);
        jw_kstr(w, "journal", s->journal_path);
        jw_key(w, "workers");
        jw_int(w, s->boot_cfg->serve.workers);
        host_log_end(&l);
    }
    if (start_workers(s, err, sizeof err) < 0) {
        log_fatal("%s", err);
        rc = 3;
        goto out;
    }
    s->rules_version = 1;
    s->inflight = calloc(SERVE_MAX_INFLIGHT_KEYS, sizeof *s->inflight);
    if (s->boot_cfg->serve.concurrency > SERVE_MAX_INFLIGHT_KEYS)
        s->boot_cfg->serve.concurrency = SERVE_MAX_INFLIGHT_KEYS;
    publish_names(s);

    s->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    s->inotify_fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (s->evfd < 0) {
        log_fatal("wixr serve: eventfd: %s", strerror(errno));
        goto out;
    }
    if (s->inotify_fd >= 0)
        watch_dirs(s, s->boot_cfg);
    signal_fd = s->evfd;
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (pthread_create(&s->writer, NULL, writer_main, s) != 0) {
        log_fatal("wixr serve: cannot start the journal writer");
        goto out;
    }
    s->writer_started = 1;
    snapshot(s);
    if (start_http(s, o->listen ? o->listen : s->boot_cfg->serve.listen, err, sizeof err) < 0) {
        log_fatal("wixr serve: %s", err);
        rc = strstr(err, "WIXR_TOKEN") || strstr(err, "insecure") ? 3 : 1;
        goto out;
    }
    snprintf(s->pid_path, sizeof s->pid_path, "%s/serve.pid", s->boot_cfg->state_dir);
    FILE *pf = fopen_private(s->pid_path);
    if (pf) {
        fprintf(pf, "%ld\n", (long)getpid());
        fclose(pf);
    }
    if (recovered > 0) {
        log_line("warn", "events interrupted by the last stop run again", "events", recovered);
    }

    long long drain_deadline = 0;
    for (;;) {
        poll_start(s);
        dispatch(s);
        wait_and_serve(s, 200);
        reload_next(s);
        flush_outcomes(s);
        drain_fd(s->evfd);
        take_settled(s);
        if (got_hup) {
            got_hup = 0;
            reload(s, "SIGHUP");
            snapshot(s);
        }
        if (s->inotify_fd >= 0 && inotify_pending(s->inotify_fd))
            s->reload_at = sched_now_ms() + RELOAD_DEBOUNCE_MS;
        if (s->reload_at && sched_now_ms() >= s->reload_at) {
            s->reload_at = 0;
            reload(s, "files changed");
            snapshot(s);
        }
        if (got_term && !s->draining) {
            pthread_mutex_lock(&s->lock);
            s->draining = 1;
            pthread_mutex_unlock(&s->lock);
            drain_deadline = sched_now_ms() + s->boot_cfg->serve.drain_ms;
            log_line("info", "stopping: intake closed, letting runs in flight finish", "in_flight", s->ninflight);
            snapshot(s);
        }
        if (s->draining && (s->ninflight == 0 || sched_now_ms() >= drain_deadline))
            break;
        if (sched_now_ms() - s->last_snapshot >= SNAPSHOT_EVERY_MS) {
            s->last_snapshot = sched_now_ms();
            cut_slow_requests(s);
            check_journal(s);
            snapshot(s);
            if (++s->snapshots % 4 == 0)
                journal_checkpoint(s->jmain); /* about once a second, off the intake path */
        }
    }
    flush_outcomes(s);
    if (s->ninflight) {
        log_line("warn", "drain deadline reached; unfinished events run again at the next start", "events",
                 s->ninflight);
        /* Runs are cut short on purpose: their events stay 'running' in the
         * journal and are recovered by the next start. Leave at once. */
        unlink(s->pid_path);
        log_line("info", "wixr serve stopped", NULL, 0);
        fflush(stderr);
        _exit(0);
    }
    flush_outcomes(s);
    rc = 0;
out:
    if (s->mhd)
        MHD_stop_daemon(s->mhd);
    if (s->writer_started) {
        pthread_mutex_lock(&s->lock);
        s->writer_stop = 1;
        pthread_cond_signal(&s->queued);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->writer, NULL);
    }
    signal_fd = -1;
    /* Runs still in flight are abandoned: their events stay 'running' and are
     * recovered by the next start. Their jobs are not freed here: the host
     * (and every Lua state) goes away with the process. */
    if (s->pid_path[0])
        unlink(s->pid_path);
    workers_free(s->pool); /* (kills what is left: their events run again at the next start) */
    worker_setup_free(&s->ws);
    if (s->next_cfg) {
        config_free(s->next_cfg);
        free(s->next_cfg);
    }
    if (s->cfg && s->cfg != s->boot_cfg) {
        config_free(s->cfg);
        free(s->cfg);
    }
    journal_close(s->jmain);
    journal_close(s->jwrite);
    journal_close(s->jread);
    if (s->evfd >= 0)
        close(s->evfd);
    if (s->inotify_fd >= 0)
        close(s->inotify_fd);
    for (int i = 0; i < s->nnames; i++)
        free(s->names[i]);
    free(s->names);
    free(s->health);
    free(s->metrics);
    free(s->inflight);
    free(s->breaks);
    for (int i = 0; i < s->nrows; i++) {
        free(s->rows[i].event);
        free(s->rows[i].hook);
    }
    free(s->rows);
    for (int i = 0; i < s->npending; i++) {
        free(s->pending[i]);
        free(s->pending_keys[i]);
    }
    free(s->pending);
    free(s->pending_keys);
    for (int i = 0; i < s->nsettled; i++)
        free(s->settled[i]);
    free(s->settled);
    free(s->conns);
    if (!s->ninflight) {
        config_free(s->boot_cfg);
        free(s->boot_cfg);
    }
    log_line("info", "wixr serve stopped", NULL, 0);
    return rc;
}
