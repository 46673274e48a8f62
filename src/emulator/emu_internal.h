/*
 * emu_internal.h -- shared between the emulator's source files only.
 */
#ifndef WIXR_EMU_INTERNAL_H
#define WIXR_EMU_INTERNAL_H

#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdint.h>

#include "../json/json.h"
#include "../util/buf.h"
#include "emu.h"

#define EMU_ID_LEN 36
#define EMU_MAX_CYCLES 8
#define EMU_LOG_SIZE 4096
#define EMU_MAX_FAULTS 32

typedef struct emu_cycle {
    char type[12];                /* ONE_TIME | RECURRING */
    char unit[8];                 /* DAY WEEK MONTH YEAR (RECURRING only) */
    int count;
} emu_cycle;

typedef struct emu_product {
    char id[EMU_ID_LEN + 1];
    char *name;
    char *type;                   /* product type id */
    emu_cycle cycles[EMU_MAX_CYCLES];
    int ncycles;
    int one_per_site;
    char *requires_type;          /* the site must hold an active product of this type */
    int limit;                    /* max live instances per reseller; 0 = none */
    int resellable;
    int has_settings;
    int can_be_reference;         /* may serve as a voucher's referenced instance */
    char *delivery;               /* status after the delivery delay */
    char *failure_code;           /* when delivery is FAILED */
    int expires_days;             /* > 0: expirationDate = created + days */
} emu_product;

typedef struct emu_seed_account {
    char id[EMU_ID_LEN + 1];
    char parent[EMU_ID_LEN + 1];  /* "" for a top-level account */
    char *type;                   /* RESELLER | SUB_ACCOUNT | TEAM */
    char *name;
    int nsites;
    struct { char id[EMU_ID_LEN + 1]; char *name; } *sites;
} emu_seed_account;

typedef struct emu_catalog {
    emu_product *products;
    int nproducts;
    emu_seed_account *accounts;
    int naccounts;
} emu_catalog;

typedef struct emu_fault {
    int id;
    char method[8];               /* "" = any */
    char path_prefix[128];        /* "" = any Wix path */
    int latency_ms, jitter_ms;
    double error_rate;            /* share answered with error_status */
    int error_status;
    double throttle_rate;         /* share answered 429 */
    int retry_after;
    double drop_rate;             /* share of connections dropped */
    int after;                    /* 1: apply the request, then fail/drop the answer */
    long long remaining;          /* < 0 = unlimited */
} emu_fault;

typedef struct emu_log_entry {
    long long seq;
    long long ts_ms;
    char method[8];
    char path[160];
    char account[EMU_ID_LEN + 1];
    char idem[101];
    int status;
    char fault[16];
    char warning[200];            /* unknown fields ignored, "" when none */
} emu_log_entry;

typedef struct emu_ratelimit_bucket {
    char account[EMU_ID_LEN + 1];
    long long *stamps;            /* ring of request times (ms) in the window */
    int head, count;
} emu_ratelimit_bucket;

struct emu {
    pthread_mutex_t lock;         /* one request at a time: emu_lock, emu_unlock, emu_let_others_in */
    atomic_int waiting;           /* threads waiting for lock */
    atomic_uint turns;            /* times lock was taken (a hand-over is seen by its change) */
    sqlite3 *db;
    int owner_fd;                 /* the state file's lock file (emu_owner.c), -1 when none */
    emu_catalog cat;
    char *api_keys;               /* comma-separated, or NULL */
    long long enable_delay_ms;
    int strict;                   /* unknown request fields are a 400 (else a warning) */
    int strict_option;            /* what emu_open was given (an admin reset goes back to it) */
    long long query_budget;       /* work units one Query Packages may spend (emu_query.c) */
    long long next_due;           /* earliest pending delivery (LLONG_MAX: none) */
    uint64_t rng;

    emu_fault faults[EMU_MAX_FAULTS];
    int nfaults, next_fault_id;

    int rl_enabled, rl_per_minute;
    emu_ratelimit_bucket *rl;
    int nrl;

    emu_log_entry *log;           /* ring of EMU_LOG_SIZE */
    long long log_seq;

    sqlite3_stmt *st[48];         /* prepared statements, see emu_store.c */
    long long query_vm_steps;     /* SQLite's steps in the last Query Packages' walks (tests bound a page by them) */
    long long query_fullscan_steps; /* ...of them, steps of a full table scan */
};

enum emu_route {
    R_NONE, R_BAD_METHOD, R_CREATE_V2, R_CREATE_V1, R_QUERY, R_GET, R_CANCEL_PKG, R_SET_EXT,
    R_UNASSIGN, R_ASSIGN, R_ADJUST, R_CANCEL_INST
};

/* A parsed request plus the pieces the handlers share. */
typedef struct emu_ctx {
    emu_t *e;
    const emu_request *req;
    emu_response *resp;
    char account[EMU_ID_LEN + 1];  /* caller (wix-account-id) */
    char parent[EMU_ID_LEN + 1];   /* caller's reseller (itself when top level) */
    json_doc *doc;
    json_value *body;              /* NULL when the request had none */
    char *seg[8];                  /* decoded path segments */
    int nseg;
    long long now;
    buf_t viol;                    /* fieldViolations being collected */
    char first_viol[160];          /* the field of the first, for the message */
    int nviol;
    const char *idem_key;          /* body idempotencyKey, if any */
    long long newest;              /* Query Packages: the last package seq when it began */
} emu_ctx;

/* emu_core.c */
void emu_lock(emu_t *e);
void emu_unlock(emu_t *e);
/* Called by a long request between chunks of its work, lock held and its
 * transaction open: when other requests wait for the emulator, ends the
 * transaction, hands them the lock, takes it back after them and begins a new
 * read transaction. The state may have changed meanwhile (even every package
 * gone, after an admin reset). 0, or -1 when no transaction could begin again
 * (the request should answer 500). */
int emu_let_others_in(emu_t *e);
long long emu_now_ms(void);
void emu_uuid(emu_t *e, char out[EMU_ID_LEN + 1]);
uint64_t emu_rand(emu_t *e);
double emu_rand01(emu_t *e);
int emu_is_guid(const char *s);
void emu_format_date(long long ms, char out[64]);
int emu_parse_date(const char *s, long long *ms);
void emu_violation(emu_ctx *c, const char *field, const char *rule, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int emu_finish_violations(emu_ctx *c);
void emu_set_json(emu_response *resp, int status, buf_t *b);

/* emu_catalog.c */
int emu_catalog_load(emu_catalog *cat, const char *path, char *err, size_t errlen);
/* The same from text in memory; name stands for the file in error positions. */
int emu_catalog_load_string(emu_catalog *cat, const char *name, const char *text, size_t len, char *err,
                            size_t errlen);
void emu_catalog_free(emu_catalog *cat);
const emu_product *emu_product_find(const emu_catalog *cat, const char *id);

/* emu_store.c */
enum {
    ST_ACCOUNT_GET, ST_ACCOUNT_PUT, ST_SITE_GET, ST_SITE_PUT,
    ST_PKG_BY_ID, ST_PKG_BY_SEQ, ST_PKG_INSERT, ST_PKG_TOUCH, ST_PKG_SET_EXT,
    ST_INST_OF_PKG, ST_INST_GET, ST_INST_INSERT, ST_INST_SET_STATUS, ST_INST_SET_SITE,
    ST_INST_ADJUST, ST_INST_MARK_REF, ST_INST_LIVE_ON_SITE, ST_INST_COUNT_PRODUCT,
    ST_DUE_PKG, ST_DUE_INST, ST_IDEM_GET, ST_IDEM_PUT, ST_BEGIN, ST_BEGIN_READ, ST_COMMIT, ST_ROLLBACK,
    ST_PKG_LAST_SEQ, ST_PKG_COUNT, ST_NEXT_DUE, ST_INST_COUNT_STATUS, ST_ACCOUNT_LIST, ST_SITE_LIST,
    ST__COUNT
};
int emu_store_open(emu_t *e, const char *path, char *err, size_t errlen);
void emu_store_close(emu_t *e);
int emu_store_seed(emu_t *e, char *err, size_t errlen);
int emu_store_reset(emu_t *e);
sqlite3_stmt *emu_stmt(emu_t *e, int which);
/* Resets every prepared statement (none is left reading: a transaction can end). */
void emu_store_quiesce(emu_t *e);
int emu_begin(emu_t *e);
int emu_begin_read(emu_t *e);
int emu_commit(emu_t *e);
void emu_rollback(emu_t *e);
/* Moves PENDING instances whose delivery time has come to their delivered
 * status. Costs nothing until e->next_due. */
void emu_store_deliver_due(emu_t *e, long long now);
/* Notes a delivery scheduled at `at` (keeps e->next_due the earliest). */
void emu_store_schedule(emu_t *e, long long at);
/* Recomputes e->next_due from the store. */
void emu_store_refresh_due(emu_t *e);
/* Writes the package with this seq as a JSON object. Returns 0, or -1 when absent. */
int emu_render_package(emu_t *e, long long seq, json_writer *w);
/* Finds a package by id; fills seq/account/parent. Returns 0 or -1. */
int emu_package_lookup(emu_t *e, const char *id, long long *seq, char account[EMU_ID_LEN + 1],
                       char parent[EMU_ID_LEN + 1]);

typedef struct emu_instance {
    char instance_id[EMU_ID_LEN + 1];
    long long package_seq;
    char site_id[EMU_ID_LEN + 1];      /* "" when floating */
    char product_id[EMU_ID_LEN + 1];
    char status[20];
    emu_cycle billing;                 /* type "" when none */
    int used_as_reference;
    char pkg_account[EMU_ID_LEN + 1];
    char pkg_parent[EMU_ID_LEN + 1];
} emu_instance;
int emu_instance_get(emu_t *e, const char *instance_id, emu_instance *out);

/* emu_api.c */
void emu_api_dispatch(emu_ctx *c, int route);
/* emu_query.c */
/* A filter's instance values fewer instances have than this lead its walk:
 * their packages, found by index, are read and sorted (prefilter_lead). */
#define EMU_QUERY_LEAD_MAX 1024
void emu_api_query(emu_ctx *c);
int emu_filter_validate(const json_value *filter, char *field, size_t fieldlen, char *msg, size_t msglen);
int emu_filter_match(const json_value *filter, const json_value *pkg);
/* The same, adding the values compared to *work. */
int emu_filter_match_counted(const json_value *filter, const json_value *pkg, long long *work);
/* What evaluating the filter on one package with one product instance costs, in compared values. */
long long emu_filter_weight(const json_value *filter);
/* emu_owner.c */
/* Takes path's lock file, or fails at once naming the process that holds it
 * and what to do. Nothing to take for ":memory:". 0, or -1 with err. */
int emu_owner_claim(emu_t *e, const char *path, char *err, size_t errlen);
void emu_owner_release(emu_t *e);

/* The catalog compiled into the binary (config/catalog.yaml at build time), NUL-terminated. */
extern const char emu_builtin_catalog[];
extern const size_t emu_builtin_catalog_len;
#define EMU_BUILTIN_CATALOG_NAME "<built-in catalog.yaml>"

/* emu_fields.c */
/* Renames proto-named request fields (site_id) to their lowerCamelCase names
 * (siteId) in c->body, per the route's schema; notes unknown fields in the
 * response's warning (or, strict, as violations). 0, or -1 with a 400. */
int emu_fields_normalize(emu_ctx *c, int route);
/* emu_admin.c */
void emu_admin_dispatch(emu_ctx *c);
int emu_fault_pick(emu_t *e, const char *method, const char *path, emu_response *resp, int *after);
int emu_ratelimit_check(emu_t *e, const char *account, long long now, int *retry_after);
void emu_log_add(emu_t *e, const emu_request *req, const char *account, const char *idem, int status,
                 const char *fault, const char *warning);

#endif
