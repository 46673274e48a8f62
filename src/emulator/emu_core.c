/*
 * emu_core.c -- the emulator's front door: open/close, routing, auth,
 * rate limit, faults, idempotency, transactions and the shared helpers.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "../util/isotime.h"
#include "../json/wix_error.h"
#include "emu_internal.h"

/* ---- helpers ---- */

long long emu_now_ms(void)
{
    return iso_now_ms();
}

uint64_t emu_rand(emu_t *e)
{
    /* splitmix64: small, fast, good enough for ids and fault dice */
    uint64_t z = (e->rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double emu_rand01(emu_t *e)
{
    return (double)(emu_rand(e) >> 11) / (double)(1ull << 53);
}

void emu_uuid(emu_t *e, char out[EMU_ID_LEN + 1])
{
    uint64_t a = emu_rand(e), b = emu_rand(e);
    a = (a & ~0xF000ull) | 0x4000ull;                       /* version 4 */
    b = (b & 0x3FFFFFFFFFFFFFFFull) | 0x8000000000000000ull; /* variant 10 */
    snprintf(out, EMU_ID_LEN + 1, "%08llx-%04llx-%04llx-%04llx-%012llx", (unsigned long long)(a >> 32),
             (unsigned long long)((a >> 16) & 0xFFFF), (unsigned long long)(a & 0xFFFF),
             (unsigned long long)(b >> 48), (unsigned long long)(b & 0xFFFFFFFFFFFFull));
}

int emu_is_guid(const char *s)
{
    if (!s || strlen(s) != EMU_ID_LEN)
        return 0;
    for (int i = 0; i < EMU_ID_LEN; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-')
                return 0;
        } else if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f')) {
            return 0;
        }
    }
    return 1;
}

void emu_format_date(long long ms, char out[64])
{
    iso_format_ms(ms, out);
}

int emu_parse_date(const char *s, long long *ms)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
        return -1;
    const char *p = s + 19;
    int frac = 0;
    if (*p == '.') {
        int digits = 0;
        p++;
        while (isdigit((unsigned char)*p)) {
            if (digits < 3)
                frac = frac * 10 + (*p - '0');
            digits++;
            p++;
        }
        if (!digits)
            return -1;
        while (digits < 3) {
            frac *= 10;
            digits++;
        }
    }
    if (strcmp(p, "Z") != 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h, .tm_min = mi, .tm_sec = sec};
    *ms = (long long)timegm(&tm) * 1000 + frac;
    return 0;
}

void emu_set_json(emu_response *resp, int status, buf_t *b)
{
    free(resp->body);
    resp->status = status;
    if (b->failed) {
        buf_free(b);
        resp->status = 500;
        resp->body = strdup("");
        resp->body_len = 0;
        return;
    }
    resp->body = buf_steal(b, &resp->body_len);
}

void emu_error_response(emu_response *resp, int status, const char *code, const char *fmt, ...)
{
    buf_t b;
    buf_init(&b, 0);
    va_list ap;
    va_start(ap, fmt);
    wix_error_body(&b, code, fmt, ap);
    va_end(ap);
    emu_set_json(resp, status, &b);
}

void emu_violation(emu_ctx *c, const char *field, const char *rule, const char *fmt, ...)
{
    if (c->nviol >= 50)
        return;
    if (c->nviol++)
        buf_addc(&c->viol, ',');
    else
        snprintf(c->first_viol, sizeof c->first_viol, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    wix_violation_item(&c->viol, field, rule, fmt, ap);
    va_end(ap);
}

/* When violations were collected, answers 400 with all of them and returns 1. */
int emu_finish_violations(emu_ctx *c)
{
    if (!c->nviol)
        return 0;
    buf_t b;
    buf_init(&b, 0);
    wix_validation_body(&b, c->first_viol, c->nviol > 1, c->viol.data, c->viol.len);
    emu_set_json(c->resp, 400, &b);
    return 1;
}

void emu_response_free(emu_response *resp)
{
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
}

/* ---- open / close ---- */

emu_t *emu_open(const emu_options *o, char *err, size_t errlen)
{
    emu_t *e = calloc(1, sizeof *e);
    if (!e) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    e->owner_fd = -1;
    pthread_mutex_init(&e->lock, NULL);
    atomic_init(&e->waiting, 0);
    atomic_init(&e->turns, 0u);
    e->enable_delay_ms = o->enable_delay_ms;
    e->strict = e->strict_option = o->strict ? 1 : 0;
    e->query_budget = o->query_budget > 0 ? o->query_budget : EMU_QUERY_BUDGET;
    e->rl_per_minute = 200;
    e->next_fault_id = 1;
    if (o->seed) {
        e->rng = o->seed;
    } else if (getrandom(&e->rng, sizeof e->rng, 0) != sizeof e->rng) {
        e->rng = (uint64_t)emu_now_ms() ^ (uint64_t)(uintptr_t)e;
    }
    if (o->api_keys && *o->api_keys && !(e->api_keys = strdup(o->api_keys)))
        goto oom;
    if (!(e->log = calloc(EMU_LOG_SIZE, sizeof *e->log)))
        goto oom;
    if ((o->catalog_path ? emu_catalog_load(&e->cat, o->catalog_path, err, errlen)
                         : emu_catalog_load_string(&e->cat, EMU_BUILTIN_CATALOG_NAME, emu_builtin_catalog,
                                                   emu_builtin_catalog_len, err, errlen)) < 0)
        goto fail;
    if (emu_owner_claim(e, o->db_path, err, errlen) < 0)
        goto fail;
    if (emu_store_open(e, o->db_path, err, errlen) < 0 || emu_store_seed(e, err, errlen) < 0)
        goto fail;
    return e;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    emu_close(e);
    return NULL;
}

void emu_close(emu_t *e)
{
    if (!e)
        return;
    emu_store_close(e);
    emu_owner_release(e);
    emu_catalog_free(&e->cat);
    for (int i = 0; i < e->nrl; i++)
        free(e->rl[i].stamps);
    free(e->rl);
    free(e->log);
    free(e->api_keys);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* ---- routing ---- */

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Splits "/a/b%2Fc" into decoded segments. Returns the count or -1. */
static int split_path(emu_ctx *c, const char *path)
{
    c->nseg = 0;
    if (*path != '/')
        return -1;
    const char *p = path + 1;
    while (*p) {
        if (c->nseg == (int)(sizeof c->seg / sizeof c->seg[0]))
            return -1;
        size_t n = strcspn(p, "/");
        char *s = malloc(n + 1);
        if (!s)
            return -1;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            if (p[i] == '%' && i + 2 < n + 1 && hexval((unsigned char)p[i + 1]) >= 0 &&
                hexval((unsigned char)p[i + 2]) >= 0) {
                s[k++] = (char)(hexval((unsigned char)p[i + 1]) * 16 + hexval((unsigned char)p[i + 2]));
                i += 2;
            } else {
                s[k++] = p[i];
            }
        }
        s[k] = '\0';
        c->seg[c->nseg++] = s;
        p += n;
        if (*p == '/')
            p++;
    }
    return c->nseg;
}

/* The route of a request, or R_BAD_METHOD with *allow naming the methods
 * the path takes (R_NONE: no such path). */
static int route_of(emu_ctx *c, const char **allow)
{
    const char *m = c->req->method;
    char **s = c->seg;
    int n = c->nseg;
    if (n < 3 || strcmp(s[0], "resellers") || strcmp(s[2], "packages"))
        return R_NONE;
    *allow = "POST";
    if (!strcmp(s[1], "v2"))
        return n == 3 ? (!strcmp(m, "POST") ? R_CREATE_V2 : R_BAD_METHOD) : R_NONE;
    if (strcmp(s[1], "v1"))
        return R_NONE;
    if (n == 3)
        return !strcmp(m, "POST") ? R_CREATE_V1 : R_BAD_METHOD;
    if (n == 4 && !strcmp(s[3], "query")) /* not a package id: ids are GUIDs */
        return !strcmp(m, "POST") ? R_QUERY : R_BAD_METHOD;
    if (n == 4) {
        *allow = "GET, DELETE";
        if (!strcmp(m, "GET"))
            return R_GET;
        if (!strcmp(m, "DELETE"))
            return R_CANCEL_PKG;
        return R_BAD_METHOD;
    }
    *allow = "PATCH";
    if (!strcmp(s[3], "update"))
        return n == 6 ? (!strcmp(m, "PATCH") ? R_SET_EXT : R_BAD_METHOD) : R_NONE;
    if (!strcmp(s[3], "product-instances")) {
        if (n == 5) {
            *allow = "PATCH, DELETE";
            if (!strcmp(m, "PATCH"))
                return R_ADJUST;
            if (!strcmp(m, "DELETE"))
                return R_CANCEL_INST;
            return R_BAD_METHOD;
        }
        if (n == 6)
            return !strcmp(m, "PATCH") ? (!strcmp(s[5], "unassign") ? R_UNASSIGN : R_ASSIGN) : R_BAD_METHOD;
    }
    return R_NONE;
}

static int key_accepted(emu_t *e, const char *key)
{
    if (!key || !*key)
        return 0;
    if (!e->api_keys)
        return 1;
    size_t n = strlen(key);
    for (const char *p = e->api_keys; *p;) {
        size_t k = strcspn(p, ",");
        if (k == n && !memcmp(p, key, n))
            return 1;
        p += k;
        if (*p == ',')
            p++;
    }
    return 0;
}

/* Resolves the caller's account and its reseller. 0, or -1 with a response. */
static int resolve_account(emu_ctx *c)
{
    const char *id = c->req->account_id;
    if (emu_is_guid(id)) {
        sqlite3_stmt *s = emu_stmt(c->e, ST_ACCOUNT_GET);
        sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
        if (sqlite3_step(s) == SQLITE_ROW) {
            const char *parent = (const char *)sqlite3_column_text(s, 1);
            snprintf(c->account, sizeof c->account, "%s", id);
            snprintf(c->parent, sizeof c->parent, "%s", parent ? parent : id);
            sqlite3_reset(s);
            return 0;
        }
        sqlite3_reset(s);
    }
    emu_error_response(c->resp, 404, "ACCOUNT_NOT_FOUND", "Account with id %.64s was not found.", id);
    return -1;
}

static int is_mutating(int route)
{
    return route != R_GET && route != R_QUERY;
}

static const char *route_key(emu_ctx *c, char *out, size_t n)
{
    snprintf(out, n, "%s %s", c->req->method, c->req->path);
    return out;
}

/* Replays a stored response for a repeated idempotencyKey. 1 when handled. */
static int idempotency_replay(emu_ctx *c)
{
    char route[512];
    sqlite3_stmt *s = emu_stmt(c->e, ST_IDEM_GET);
    sqlite3_bind_text(s, 1, c->account, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, c->idem_key, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW)
        return 0;
    route_key(c, route, sizeof route);
    if (strcmp((const char *)sqlite3_column_text(s, 0), route) != 0) {
        char first[512];
        snprintf(first, sizeof first, "%s", (const char *)sqlite3_column_text(s, 0));
        sqlite3_reset(s);
        emu_error_response(c->resp, 409, "IDEMPOTENCY_KEY_REUSED",
                           "idempotencyKey %.100s was already used for %.300s", c->idem_key, first);
        return 1;
    }
    free(c->resp->body);
    c->resp->status = sqlite3_column_int(s, 1);
    c->resp->body_len = (size_t)sqlite3_column_bytes(s, 2);
    c->resp->body = malloc(c->resp->body_len + 1);
    if (c->resp->body)
        memcpy(c->resp->body, sqlite3_column_text(s, 2), c->resp->body_len + 1);
    else
        c->resp->status = 500, c->resp->body_len = 0;
    sqlite3_reset(s);
    return 1;
}

static void idempotency_store(emu_ctx *c)
{
    char route[512];
    sqlite3_stmt *s = emu_stmt(c->e, ST_IDEM_PUT);
    sqlite3_bind_text(s, 1, c->account, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, c->idem_key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, route_key(c, route, sizeof route), -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(s, 4, c->resp->status);
    sqlite3_bind_text(s, 5, c->resp->body, (int)c->resp->body_len, SQLITE_STATIC);
    sqlite3_bind_int64(s, 6, c->now);
    sqlite3_step(s);
}

static int parse_body(emu_ctx *c)
{
    const emu_request *r = c->req;
    size_t i = 0;
    while (i < r->body_len && isspace((unsigned char)r->body[i]))
        i++;
    if (!r->body || i == r->body_len)
        return 0;
    json_error jerr;
    c->body = json_parse(r->body, r->body_len, EMU_MAX_JSON_DEPTH, &c->doc, &jerr);
    if (!c->body) {
        emu_violation(c, "body", "VALID_JSON", "malformed JSON at line %d, column %d: %s", jerr.line, jerr.col,
                      jerr.msg);
        return emu_finish_violations(c), -1;
    }
    if (c->body->type != JSON_OBJECT) {
        emu_violation(c, "body", "TYPE", "the request body must be a JSON object, not %s",
                      json_type_name(c->body->type));
        return emu_finish_violations(c), -1;
    }
    return 0;
}

static void new_request_id(emu_t *e, emu_response *resp)
{
    snprintf(resp->request_id, sizeof resp->request_id, "%016llx.%llx", (unsigned long long)emu_rand(e),
             (unsigned long long)(e->log_seq + 1));
}

/* ---- the lock ----
 *
 * Requests are served one at a time, each in one transaction, so a long one
 * (a Query evaluating its filter on thousands of packages) would hold up every
 * other client for as long as it runs. It gives the lock away between chunks
 * instead (emu_let_others_in): only when someone waits, so an uncontended
 * request costs one atomic increment more. A mutex is not fair -- the thread
 * that unlocks takes it straight back before a sleeping waiter wakes -- so
 * the hand-over waits until a waiter has had it (a change of turns). */
void emu_lock(emu_t *e)
{
    atomic_fetch_add(&e->waiting, 1);
    pthread_mutex_lock(&e->lock);
    atomic_fetch_sub(&e->waiting, 1);
    atomic_fetch_add(&e->turns, 1);
}

void emu_unlock(emu_t *e)
{
    pthread_mutex_unlock(&e->lock);
}

int emu_let_others_in(emu_t *e)
{
    if (atomic_load(&e->waiting) == 0)
        return 0;
    emu_store_quiesce(e);
    if (emu_commit(e) < 0)
        emu_rollback(e);
    unsigned seen = atomic_load(&e->turns);
    emu_unlock(e);
    /* Until a waiter has taken it (or, should it have given up, 20 ms). */
    for (int i = 0; i < 400 && atomic_load(&e->turns) == seen && atomic_load(&e->waiting) > 0; i++) {
        struct timespec ts = {0, 50000};
        nanosleep(&ts, NULL);
    }
    emu_lock(e);
    return emu_begin_read(e);
}

void emu_reject_too_large(emu_t *e, const emu_request *req, emu_response *resp)
{
    memset(resp, 0, sizeof *resp);
    emu_lock(e);
    new_request_id(e, resp);
    emu_error_response(resp, 413, "PAYLOAD_TOO_LARGE", "The request body is larger than %d bytes", EMU_MAX_BODY);
    if (strncmp(req->path, "/__admin", 8) != 0)
        emu_log_add(e, req, req->account_id, NULL, 413, "", "");
    emu_unlock(e);
}

void emu_handle(emu_t *e, const emu_request *req, emu_response *resp)
{
    memset(resp, 0, sizeof *resp);
    emu_ctx c = {.e = e, .req = req, .resp = resp};
    buf_init(&c.viol, 0);
    const char *fault = "";
    int fault_after = 0, fault_status = 0;
    emu_lock(e);
    c.now = emu_now_ms();
    new_request_id(e, resp);

    if (!strncmp(req->path, "/__admin/", 9) || !strcmp(req->path, "/__admin")) {
        if (split_path(&c, req->path) < 0)
            emu_error_response(resp, 404, "NOT_FOUND", "No such admin path");
        else if (parse_body(&c) == 0)
            emu_admin_dispatch(&c);
        goto out;
    }
    const char *allow = "";
    int route = split_path(&c, req->path) < 0 ? R_NONE : route_of(&c, &allow);
    if (route == R_NONE) {
        emu_error_response(resp, 404, "NOT_FOUND", "No Resellers API endpoint at %.200s", req->path);
        goto out;
    }
    if (route == R_BAD_METHOD) {
        emu_error_response(resp, 405, "METHOD_NOT_ALLOWED", "%.16s is not allowed on %.200s (it takes %s)",
                           req->method, req->path, allow);
        snprintf(resp->allow, sizeof resp->allow, "%s", allow);
        goto out;
    }

    fault_status = emu_fault_pick(e, req->method, req->path, resp, &fault_after);
    if (fault_status && !fault_after) {
        fault = resp->drop ? "drop" : fault_status == 429 ? "throttle" : "error";
        goto out;
    }

    if (!req->authorization || !*req->authorization || !key_accepted(e, req->authorization)) {
        emu_error_response(resp, 401, "UNAUTHENTICATED",
                           req->authorization && *req->authorization
                               ? "The API key in the Authorization header is not valid"
                               : "Missing the Authorization header (an account-level API key)");
        goto out;
    }
    if (!req->account_id || !*req->account_id) {
        emu_error_response(resp, 403, "PERMISSION_DENIED", "Missing the wix-account-id header");
        goto out;
    }
    if (e->rl_enabled) {
        int wait;
        if (emu_ratelimit_check(e, req->account_id, c.now, &wait) < 0) {
            emu_error_response(resp, 429, "RESOURCE_EXHAUSTED", "Too many requests: limit is %d per minute",
                               e->rl_per_minute);
            resp->retry_after = wait;
            fault = "ratelimit";
            goto out;
        }
    }
    if (resolve_account(&c) < 0 || parse_body(&c) < 0 || emu_fields_normalize(&c, route) < 0)
        goto out;

    if (is_mutating(route) && c.body) {
        json_value *k = json_get(c.body, "idempotencyKey");
        if (k && k->type != JSON_STRING) {
            emu_violation(&c, "idempotencyKey", "TYPE", "must be a string, not %s", json_type_name(k->type));
        } else if (k && (k->u.str.len == 0 || k->u.str.len > 100 || memchr(k->u.str.s, 0, k->u.str.len))) {
            emu_violation(&c, "idempotencyKey", "LENGTH", "must be 1 to 100 characters");
        } else if (k) {
            c.idem_key = k->u.str.s;
        }
        if (emu_finish_violations(&c))
            goto out;
        if (c.idem_key && idempotency_replay(&c))
            goto out;
    }

    if ((is_mutating(route) ? emu_begin(e) : emu_begin_read(e)) < 0) {
        emu_error_response(resp, 500, "INTERNAL", "database busy");
        goto out;
    }
    /* Deliveries that came due are applied first, so every answer shows
     * them; a failed request rolls them back and the next one applies them. */
    emu_store_deliver_due(e, c.now);
    resp->status = 0;
    emu_api_dispatch(&c, route);
    if (resp->status == 200 && c.idem_key)
        idempotency_store(&c);
    if (resp->status == 200) {
        if (emu_commit(e) < 0) {
            emu_rollback(e);
            emu_error_response(resp, 500, "INTERNAL", "commit failed: %s", sqlite3_errmsg(e->db));
        }
    } else {
        emu_rollback(e);
        emu_store_refresh_due(e); /* forget what the rolled-back request scheduled */
    }
out:
    /* An "after" fault loses the answer of whatever was done, replays included. */
    if (fault_status && fault_after) {
        fault = resp->drop ? "drop-after" : "error-after";
        if (!resp->drop) {
            free(resp->body);
            resp->body = strdup("");
            resp->body_len = 0;
            resp->status = fault_status;
        }
    }
    if (!resp->body && !resp->drop) {
        resp->body = strdup("");
        resp->body_len = 0;
    }
    if (strncmp(req->path, "/__admin", 8) != 0)
        emu_log_add(e, req, req->account_id, c.idem_key, resp->drop ? 0 : resp->status, fault, resp->warning);
    emu_unlock(e);
    for (int i = 0; i < c.nseg; i++)
        free(c.seg[i]);
    json_doc_free(c.doc);
    buf_free(&c.viol);
}
