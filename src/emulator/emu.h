/*
 * emu.h -- the Resellers API emulator as a library: request in, response out.
 *
 * The same core serves `wixr sandbox serve` (emu_http.c puts it behind
 * libmicrohttpd) and, in-process with no socket, the `sandbox` transport of
 * the wix module. One emu_t is safe to share between threads: requests are
 * handled one at a time under its lock, which a long Query hands to waiting
 * requests between chunks of its work.
 */
#ifndef WIXR_EMU_H
#define WIXR_EMU_H

#include <stddef.h>

typedef struct emu emu_t;

typedef struct emu_options {
    const char *db_path;          /* SQLite file, or ":memory:" */
    const char *catalog_path;     /* YAML catalog (products + seed accounts); NULL = the built-in one */
    const char *api_keys;         /* comma-separated accepted keys; NULL = any non-empty key */
    long long enable_delay_ms;    /* PENDING -> delivered after this long; -1 = never */
    unsigned long long seed;      /* fault-injection PRNG seed; 0 = from the clock */
    int strict;                   /* answer 400 to request fields the endpoint does not have */
    long long query_budget;       /* work units a Query Packages may spend (0 = EMU_QUERY_BUDGET) */
} emu_options;

/* A filtered query's work: each package it must render counts EMU_QUERY_RENDER_UNITS, each value
 * compared one; over the budget the query is refused 400 (other clients' requests go between its
 * chunks, but the client waits for all of it and a CPU does it). */
#define EMU_QUERY_BUDGET 2000000LL
#define EMU_QUERY_RENDER_UNITS 100

typedef struct emu_request {
    const char *method;           /* "GET", "POST", ... */
    const char *path;             /* percent-encoded path, no query string */
    const char *query;            /* raw query string or NULL */
    const char *authorization;    /* Authorization header or NULL */
    const char *account_id;       /* wix-account-id header or NULL */
    const char *body;
    size_t body_len;
} emu_request;

typedef struct emu_response {
    int status;
    char *body;                   /* malloc'd; JSON, or "" for 5xx */
    size_t body_len;
    int retry_after;              /* seconds; > 0 means send Retry-After */
    int drop;                     /* close the connection without an answer */
    int latency_ms;               /* wait this long before answering */
    char request_id[40];          /* sent as x-wix-request-id */
    char allow[32];               /* with a 405: the methods the path takes (the Allow header) */
    char warning[528];            /* "" or what was ignored (x-wixr-warning), e.g. unknown fields */
} emu_response;

/* Hard caps the HTTP front enforces before the core sees a request. */
#define EMU_MAX_BODY (1024 * 1024)
#define EMU_MAX_JSON_DEPTH 64

emu_t *emu_open(const emu_options *o, char *err, size_t errlen);
void emu_close(emu_t *e);
void emu_handle(emu_t *e, const emu_request *req, emu_response *resp);
/* Records in the state file's lock file where this emulator answers over
 * HTTP, so a process refused the file can be told to use that instead. */
void emu_note_url(emu_t *e, const char *url);
void emu_response_free(emu_response *resp);
/* Answers a request whose body was over EMU_MAX_BODY (413), logged like any other. */
void emu_reject_too_large(emu_t *e, const emu_request *req, emu_response *resp);

/* Builds a Wix-shaped error body: {"message", "details": {"applicationError": ...}}. */
void emu_error_response(emu_response *resp, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
