/*
 * config.h -- wixr's configuration: the YAML file (strict; errors are
 * file:line:col) overlaid by the environment.
 *
 * Precedence for the wix connection: environment (WIX_API_KEY,
 * WIX_ACCOUNT_ID, WIX_BASE_URL) > config file > built-in defaults.
 * The API key is held here and handed only to the HTTP transport; it is
 * never printed, logged or stored.
 *
 * Every problem of the file is listed (one "file:line:col: message" a line), from
 * every section. `defaults:` gives every hook its base (options merged deeply under
 * the hook's own; allow, limits, on_error, max_mutations, retry unless the hook sets
 * them). A script that opens with "---@option NAME TYPE" lines has its hook's options
 * checked against them (undeclared keys and wrong types are problems).
 */
#ifndef WIXR_CONFIG_H
#define WIXR_CONFIG_H

#include <stddef.h>

#include "../util/filestamp.h"
#include "../util/name_index.h"

typedef enum { TRANSPORT_AUTO, TRANSPORT_HTTP, TRANSPORT_SANDBOX } wix_transport;

typedef struct wix_settings {
    wix_transport transport;
    char *base_url;               /* default https://www.wixapis.com */
    char *api_key;                /* secret */
    char *api_key_file;
    char *account_id;             /* default wix-account-id */
    long timeout_ms;              /* whole request */
    long connect_timeout_ms;
    int retry_attempts;           /* attempts in all, >= 1 */
    long retry_base_ms, retry_max_ms, retry_total_ms;
    int rate_limit;               /* requests per window; 0 = off */
    long rate_window_ms;
    int concurrency;              /* requests in flight at once */
    char *sandbox_db;             /* default <state_dir>/sandbox.db; ":memory:" for none */
    char *sandbox_catalog;
    long long sandbox_delivery_delay_ms;
    char *audit;                  /* NULL off, "-" stderr, else a file (appended) */
} wix_settings;

/* Operations a hook may call (hooks' `allow:` list). */
enum {
    WIX_OP_GET = 1 << 0,
    WIX_OP_QUERY = 1 << 1,
    WIX_OP_CREATE = 1 << 2,
    WIX_OP_CANCEL_PACKAGE = 1 << 3,
    WIX_OP_SET_EXTERNAL_ID = 1 << 4,
    WIX_OP_ASSIGN = 1 << 5,
    WIX_OP_UNASSIGN = 1 << 6,
    WIX_OP_ADJUST = 1 << 7,
    WIX_OP_CANCEL_INSTANCE = 1 << 8,
};
#define WIX_OP_READ (WIX_OP_GET | WIX_OP_QUERY)
#define WIX_OP_MUTATE (WIX_OP_CREATE | WIX_OP_CANCEL_PACKAGE | WIX_OP_SET_EXTERNAL_ID | WIX_OP_ASSIGN | \
                       WIX_OP_UNASSIGN | WIX_OP_ADJUST | WIX_OP_CANCEL_INSTANCE)
#define WIX_OP_ALL (WIX_OP_READ | WIX_OP_MUTATE)

typedef struct hook_limits {
    long long instructions;       /* Lua VM instructions per run */
    long memory_mb;               /* the hook's Lua state, all runs together */
    long wall_ms;                 /* per run, network waits included */
} hook_limits;

typedef struct hook_def {
    char *event;
    char *id;                     /* `id:`: the hook's name in its derived idempotency keys (NULL: its position) */
    char *script;                 /* resolved path */
    file_stamp seen;              /* the script file as the loader saw it (a reload keeps a hook whose file it is) */
    char *where;                  /* "file:line:col" of the entry, for messages */
    char *options_json;           /* ctx.options, as JSON: the hook's options merged over defaults.options */
    hook_limits limits;
    int on_error_continue;
    int enabled;
    unsigned allow;               /* WIX_OP_* */
    int max_mutations;            /* per run; -1 = no cap */
    int retry;                    /* HOOK_RETRY_*: which failures of this hook wixr serve runs again */
} hook_def;

/* A hook's retry: transient (the default: a permanent failure -- a wix.Error with
 * retryable = false, wix.permanent -- ends the event as dead at once, others are
 * retried), always (every failure is retried), never (every failure is final). */
enum { HOOK_RETRY_TRANSIENT, HOOK_RETRY_ALWAYS, HOOK_RETRY_NEVER };

typedef struct serve_settings {
    char *listen;                 /* HOST:PORT */
    char *listen_where;           /* "file:line:col" of serve.listen; NULL when the file sets none */
    char *journal;                /* SQLite file; default <state_dir>/journal.db */
    int concurrency;              /* events in flight */
    char **order_key;             /* data fields whose value orders events; first present wins */
    int norder_key;
    int retry_attempts;           /* runs in all before an event is dead */
    long retry_base_ms, retry_max_ms;
    int accept_unknown_events;    /* accept names no hook listens to (else 404) */
    long max_body_kb;
    long request_timeout_ms;      /* a request's headers and body arrive within it (slow clients are cut off) */
    long idle_timeout_ms;         /* a connection without a byte for this long is closed */
    int max_connections;          /* open at once, in all */
    int max_connections_per_ip;   /* open at once from one address (0: no limit) */
    long drain_ms;                /* SIGTERM: how long in-flight runs may finish */
    int workers;                  /* worker processes that run the hooks (default: the cores) */
    long worker_memory_mb;        /* a worker's memory ceiling (0: 256 + the hooks' memory_mb) */
    long hard_deadline_ms;        /* a worker making no progress this long is killed (0: 2 x the largest wall_ms) */
    int poison_after;             /* worker deaths charged to an event before it is dead (poison) */
    long journal_wal_mb;          /* past this, the writer checkpoints the journal's WAL and truncates it */
    long journal_keep_days;       /* finished events older than this are purged in the background (0: kept) */
    long journal_keep_events;     /* and the oldest beyond this many finished ones (0: no cap) */
    int poller_enabled;
    long poller_interval_ms;
    char *poller_account_id;      /* default wix.account_id */
} serve_settings;

typedef struct wixr_config {
    char *path;                   /* NULL when no file was read */
    char *dir;                    /* the file's folder (scripts are relative to it) */
    wix_settings wix;
    char **lua_paths;             /* runtime.lua_paths, resolved */
    int nlua_paths;
    hook_limits limits;           /* runtime.limits: defaults for every hook */
    int max_chain_depth;          /* runtime.max_chain_depth: ctx.emit depth */
    char *state_dir;              /* runtime.state_dir: journal, installation key, serve's files; default .wixr
                                   * beside the file (of the working folder when none was read) */
    hook_def *hooks;
    int nhooks;
    serve_settings serve;
} wixr_config;

/* Names of WIX_OP_* bits, for messages ("create, adjust"). */
void config_ops_names(unsigned ops, char *out, size_t n);
/* The hooks for an event, in order: fills idx[] (at most max); returns the count. */
int config_hooks_for(const wixr_config *c, const char *event, int *idx, int max);

/* Fills defaults, reads path (NULL: the first of $WIXR_CONFIG, ./wixr.yaml,
 * ./config/wixr.yaml that exists, or none), then the environment.
 * Returns 0, or -1 with "file:line:col: message" in err. */
int config_load(wixr_config *c, const char *path, char *err, size_t errlen);
/* The same from text in memory: name stands for the file in messages, and its
 * folder is where relative paths start (no search, no file read). */
int config_load_string(wixr_config *c, const char *name, const char *text, size_t len, char *err, size_t errlen);
void config_free(wixr_config *c);
const char *config_transport_name(wix_transport t);
/* Indexes the events of c's enabled hooks (position i: c->hooks[i]); 0, or -1 out of memory. */
int config_index_events(const wixr_config *c, name_index *x);

#endif
