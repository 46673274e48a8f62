/*
 * serve_internal.h -- shared between the files of the supervisor (src/serve/)
 * only: the service's state (struct serve) and what one file calls in another.
 *
 *   serve.c     serve_main: start, the main loop, signals, stop
 *   front.c     the HTTP front: routes, authentication, sound requests, Wix-shaped
 *               error answers, the request deadline, the listening socket
 *   intake.c    POST and GET /v1/events/..., the event names taken
 *   writer.c    the journal writer thread: group commit of intake and of run outcomes
 *   dispatch.c  runs: handing events to the workers, outcomes, retries, lost runs
 *   poller.c    polling the API for changes Wix does not push
 *   reload.c    reloads: watched folders, the workers' reload, restart notices
 *   status.c    journal failures and the probe, counts, /healthz and /metrics snapshots
 */
#ifndef WIXR_SERVE_INTERNAL_H
#define WIXR_SERVE_INTERNAL_H

#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/types.h>

#include "../http/http.h"
#include "../journal/journal.h"
#include "../util/buf.h"
#include "serve.h"
#include "setup.h"
#include "workers.h"

/* The buckets of the run time histogram (status.c has their bounds). */
#define NBUCKETS 12

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
    name_index names;             /* event names with hooks (for 404s) */
    int accept_unknown;
    int draining;
    char *health;                 /* snapshots served by the HTTP threads */
    int health_503;               /* the health snapshot was taken while draining or with the journal failing */
    char *metrics;
    long long accepted_total, duplicates_total;
    http_watch *watch;            /* the open connections, for the request deadline */
    long long slow_cut_total;     /* connections cut off at the request deadline (main thread) */
    long long wal_truncations;    /* the writer truncated the WAL past serve.journal_wal_mb (under lock) */
    long long purged_total;       /* finished events the writer's retention deleted (under lock) */

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

/* How an event run ended, for its row of counts. */
enum { EVC_DONE, EVC_RETRY, EVC_DEAD, EVC__N };

/* serve.c */
void log_line(const char *level, const char *msg, const char *key, long long value);
FILE *fopen_private(const char *path);

/* front.c */
int start_http(serve *s, const char *listen, char *err, size_t errlen);
void cut_slow_requests(serve *s);
enum MHD_Result reply(struct MHD_Connection *c, unsigned status, buf_t *b);
enum MHD_Result reply_error(struct MHD_Connection *c, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result reply_invalid(struct MHD_Connection *c, const char *field, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* intake.c */
void publish_names(serve *s);
int known_name(serve *s, const char *name);
enum MHD_Result post_event(serve *s, struct MHD_Connection *c, const char *name, const buf_t *body);
enum MHD_Result get_event(serve *s, struct MHD_Connection *c, const char *id);

/* writer.c */
void *writer_main(void *arg);

/* dispatch.c */
void dispatch(serve *s);
void take_settled(serve *s);
void flush_outcomes(serve *s);
void run_done(void *ctx, void *arg, const wire_msg *m);
void run_lost(void *ctx, void *arg, const char *reason, int charged);

/* poller.c */
void poll_start(serve *s);
void poll_done(void *ctx, int ok, const char *text);

/* reload.c */
void watch_dirs(serve *s, const wixr_config *cfg);
void reload(serve *s, const char *why);
void reloaded(void *ctx, int ok, const char *errors);
void reload_next(serve *s);

/* status.c */
void journal_failed(serve *s, const char *why, int fatal);
void check_journal(serve *s);
void observe(serve *s, double secs);
void count_event(serve *s, const char *event, int what);
void count_hooks(serve *s, const char *lines);
void snapshot(serve *s);

#endif
