/*
 * serve.h -- `wixr serve`: the durable, hot-reloading provisioning service.
 *
 * Threads: libmicrohttpd serves the HTTP front (a thread per connection);
 * one writer thread commits accepted events to the journal in groups (one
 * fsync for every event waiting at that moment) before their 202 goes out;
 * the main thread is the supervisor: it takes pending events from the
 * journal, hands them to the worker processes (workers.h; events sharing an
 * order key one at a time, in order), records outcomes, retries with backoff,
 * reloads rules (in the workers, only the hooks that changed), and publishes /healthz and
 * /metrics snapshots. No Lua runs in this process: hooks run in the workers.
 */
#ifndef WIXR_SERVE_H
#define WIXR_SERVE_H

typedef struct serve_options {
    const char *config_path;      /* NULL: the usual search */
    const char *listen;           /* overrides serve.listen */
    int insecure_no_auth;         /* allow running without WIXR_TOKEN (loopback only) */
    int test_faults;              /* hooks may require "wixr.fault" (the isolation tests only) */
} serve_options;

/* Runs until SIGTERM/SIGINT; returns an exit code. */
int serve_main(const serve_options *o);

/* The journal path for a configuration: serve.journal or <state_dir>/journal.db. */
void serve_journal_path(const void *cfg, char *out, unsigned long n);

#endif
