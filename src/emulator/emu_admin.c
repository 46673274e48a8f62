/*
 * emu_admin.c -- the emulator's own API under /__admin/ (never a Wix path):
 * seeding accounts and sites, forcing instance statuses, fault injection,
 * the rate limit, delivery delay, the request log, stats and reset.
 * Also the fault and rate-limit machinery the core consults per request.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../util/nearest.h"
#include "emu_internal.h"

/* ---- request log ---- */

void emu_log_add(emu_t *e, const emu_request *req, const char *account, const char *idem, int status,
                 const char *fault, const char *warning)
{
    emu_log_entry *l = &e->log[e->log_seq % EMU_LOG_SIZE];
    memset(l, 0, sizeof *l);
    l->seq = ++e->log_seq;
    l->ts_ms = emu_now_ms();
    snprintf(l->method, sizeof l->method, "%s", req->method);
    snprintf(l->path, sizeof l->path, "%s", req->path);
    snprintf(l->account, sizeof l->account, "%s", account ? account : "");
    snprintf(l->idem, sizeof l->idem, "%s", idem ? idem : "");
    snprintf(l->fault, sizeof l->fault, "%s", fault ? fault : "");
    snprintf(l->warning, sizeof l->warning, "%s", warning ? warning : "");
    l->status = status;
}

/* ---- faults ---- */

int emu_fault_pick(emu_t *e, const char *method, const char *path, emu_response *resp, int *after)
{
    *after = 0;
    for (int i = 0; i < e->nfaults; i++) {
        emu_fault *f = &e->faults[i];
        if (f->remaining == 0)
            continue;
        if (f->method[0] && strcmp(f->method, method))
            continue;
        if (f->path_prefix[0] && strncmp(path, f->path_prefix, strlen(f->path_prefix)))
            continue;
        int status = 0;
        if (f->latency_ms || f->jitter_ms)
            resp->latency_ms += f->latency_ms + (f->jitter_ms ? (int)(emu_rand(e) % (uint64_t)(f->jitter_ms + 1)) : 0);
        double r = emu_rand01(e);
        if (r < f->drop_rate) {
            resp->drop = 1;
            status = 599;
        } else if (r < f->drop_rate + f->throttle_rate) {
            status = 429;
        } else if (r < f->drop_rate + f->throttle_rate + f->error_rate) {
            status = f->error_status;
        }
        if (!status)
            continue;
        if (f->remaining > 0)
            f->remaining--;
        *after = f->after && status != 429;
        if (status == 429) {
            emu_error_response(resp, 429, "RESOURCE_EXHAUSTED", "Too many requests (injected)");
            resp->retry_after = f->retry_after;
        } else if (!resp->drop && !*after) {
            free(resp->body);
            resp->body = strdup("");
            resp->body_len = 0;
            resp->status = status;
        }
        return status;
    }
    return 0;
}

/* ---- rate limit: sliding one-minute window per account ---- */

int emu_ratelimit_check(emu_t *e, const char *account, long long now, int *retry_after)
{
    emu_ratelimit_bucket *b = NULL;
    for (int i = 0; i < e->nrl; i++)
        if (!strcmp(e->rl[i].account, account))
            b = &e->rl[i];
    if (!b) {
        void *p = realloc(e->rl, (size_t)(e->nrl + 1) * sizeof *e->rl);
        if (!p)
            return 0;
        e->rl = p;
        b = &e->rl[e->nrl++];
        memset(b, 0, sizeof *b);
        snprintf(b->account, sizeof b->account, "%s", account);
        b->stamps = calloc((size_t)e->rl_per_minute, sizeof *b->stamps);
        if (!b->stamps) {
            e->nrl--;
            return 0;
        }
    }
    int cap = e->rl_per_minute;
    while (b->count && b->stamps[b->head] <= now - 60000) {
        b->head = (b->head + 1) % cap;
        b->count--;
    }
    if (b->count >= cap) {
        long long wait = b->stamps[b->head] + 60000 - now;
        *retry_after = (int)((wait + 999) / 1000);
        if (*retry_after < 1)
            *retry_after = 1;
        return -1;
    }
    b->stamps[(b->head + b->count) % cap] = now;
    b->count++;
    return 0;
}

static void ratelimit_clear(emu_t *e)
{
    for (int i = 0; i < e->nrl; i++)
        free(e->rl[i].stamps);
    free(e->rl);
    e->rl = NULL;
    e->nrl = 0;
}

/* ---- admin endpoints ---- */

static void reply(emu_ctx *c, buf_t *b)
{
    emu_set_json(c->resp, 200, b);
}

static void bad(emu_ctx *c, const char *field, const char *msg)
{
    emu_violation(c, field, "ADMIN", "%s", msg);
    emu_finish_violations(c);
}

/* Refuses a member of obj that is none of the NULL-terminated allowed keys,
 * as strictly as the YAML is read: a 400 naming it (at.key), with the
 * nearest allowed key when one is near. obj may be NULL. 0, or -1 with a 400. */
static int check_keys(emu_ctx *c, const json_value *obj, const char *const *allowed, const char *at)
{
    if (!obj || obj->type != JSON_OBJECT)
        return 0;
    size_t n = 0;
    while (allowed[n])
        n++;
    for (const json_value *m = obj->u.kids.head; m; m = m->next) {
        int known = 0;
        for (size_t i = 0; i < n && !known; i++)
            known = strlen(allowed[i]) == m->keylen && !memcmp(allowed[i], m->key, m->keylen);
        if (known)
            continue;
        char key[64], field[96];
        snprintf(key, sizeof key, "%.*s", (int)(m->keylen < 60 ? m->keylen : 60), m->key);
        snprintf(field, sizeof field, "%s%s%s", at, *at ? "." : "", key);
        const char *near = nearest_name(key, allowed, n, sizeof *allowed);
        if (near)
            emu_violation(c, field, "UNKNOWN_FIELD", "unknown key %s (did you mean %s?)", field, near);
        else if (n)
            emu_violation(c, field, "UNKNOWN_FIELD", "unknown key %s", field);
        else
            emu_violation(c, field, "UNKNOWN_FIELD", "unknown key %s: this endpoint takes no body", field);
        emu_finish_violations(c);
        return -1;
    }
    return 0;
}

/* A string member: *out is NULL when absent (or null). 0, or -1 with a 400 when it is another type. */
static int str_field(emu_ctx *c, const json_value *o, const char *k, const char *field, const char **out)
{
    json_value *v = o ? json_get(o, k) : NULL;
    *out = NULL;
    if (!v || v->type == JSON_NULL)
        return 0;
    if (v->type != JSON_STRING) {
        char msg[64];
        snprintf(msg, sizeof msg, "must be a string, not %s", json_type_name(v->type));
        bad(c, field, msg);
        return -1;
    }
    *out = v->u.str.s;
    return 0;
}

static int num_field(emu_ctx *c, const json_value *o, const char *k, double lo, double hi, double def, double *out)
{
    json_value *v = json_get(o, k);
    *out = def;
    if (!v)
        return 0;
    if (v->type != JSON_NUMBER || v->u.number < lo || v->u.number > hi) {
        char msg[96];
        snprintf(msg, sizeof msg, "must be a number from %g to %g", lo, hi);
        bad(c, k, msg);
        return -1;
    }
    *out = v->u.number;
    return 0;
}

static void admin_add_account(emu_ctx *c)
{
    static const char *const keys[] = {"id", "parentAccountId", "type", "name", NULL};
    const json_value *b = c->body;
    const char *id, *parent, *type, *name;
    char gen[EMU_ID_LEN + 1];
    if (check_keys(c, b, keys, "") < 0 || str_field(c, b, "id", "id", &id) < 0 ||
        str_field(c, b, "parentAccountId", "parentAccountId", &parent) < 0 ||
        str_field(c, b, "type", "type", &type) < 0 || str_field(c, b, "name", "name", &name) < 0)
        return;
    if (id && !emu_is_guid(id))
        return bad(c, "id", "must be a lowercase GUID");
    if (parent && !emu_is_guid(parent))
        return bad(c, "parentAccountId", "must be a lowercase GUID");
    if (!type)
        type = parent ? "SUB_ACCOUNT" : "RESELLER";
    if (strcmp(type, "RESELLER") && strcmp(type, "SUB_ACCOUNT") && strcmp(type, "TEAM"))
        return bad(c, "type", "must be RESELLER, SUB_ACCOUNT or TEAM");
    if (parent) {
        sqlite3_stmt *s = emu_stmt(c->e, ST_ACCOUNT_GET);
        sqlite3_bind_text(s, 1, parent, -1, SQLITE_STATIC);
        int found = sqlite3_step(s) == SQLITE_ROW;
        int nested = found && sqlite3_column_type(s, 1) != SQLITE_NULL;
        sqlite3_reset(s);
        if (!found)
            return bad(c, "parentAccountId", "no such account");
        if (nested)
            return bad(c, "parentAccountId", "the parent must be a top-level (reseller) account");
    }
    if (!id) {
        emu_uuid(c->e, gen);
        id = gen;
    }
    sqlite3_stmt *s = emu_stmt(c->e, ST_ACCOUNT_PUT);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (parent)
        sqlite3_bind_text(s, 2, parent, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, name ? name : "", -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE)
        return emu_error_response(c->resp, 500, "INTERNAL", "%s", sqlite3_errmsg(c->e->db));
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "account");
    jw_obj(&w);
    jw_kstr(&w, "id", id);
    jw_kstr(&w, "parentAccountId", parent);
    jw_kstr(&w, "type", type);
    jw_kstr(&w, "name", name ? name : "");
    jw_obj_end(&w);
    jw_obj_end(&w);
    reply(c, &out);
}

static void admin_add_site(emu_ctx *c)
{
    static const char *const keys[] = {"id", "accountId", "name", NULL};
    const json_value *b = c->body;
    const char *id, *account, *name;
    char gen[EMU_ID_LEN + 1];
    if (check_keys(c, b, keys, "") < 0 || str_field(c, b, "id", "id", &id) < 0 ||
        str_field(c, b, "accountId", "accountId", &account) < 0 || str_field(c, b, "name", "name", &name) < 0)
        return;
    if (id && !emu_is_guid(id))
        return bad(c, "id", "must be a lowercase GUID");
    if (!account || !emu_is_guid(account))
        return bad(c, "accountId", "is required and must be a lowercase GUID");
    sqlite3_stmt *s = emu_stmt(c->e, ST_ACCOUNT_GET);
    sqlite3_bind_text(s, 1, account, -1, SQLITE_STATIC);
    int found = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_reset(s);
    if (!found)
        return bad(c, "accountId", "no such account");
    if (!id) {
        emu_uuid(c->e, gen);
        id = gen;
    }
    s = emu_stmt(c->e, ST_SITE_PUT);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, account, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, name ? name : "", -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_DONE)
        return emu_error_response(c->resp, 500, "INTERNAL", "%s", sqlite3_errmsg(c->e->db));
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "site");
    jw_obj(&w);
    jw_kstr(&w, "id", id);
    jw_kstr(&w, "accountId", account);
    jw_kstr(&w, "name", name ? name : "");
    jw_obj_end(&w);
    jw_obj_end(&w);
    reply(c, &out);
}

static void admin_list(emu_ctx *c)
{
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "accounts");
    jw_arr(&w);
    sqlite3_stmt *s = emu_stmt(c->e, ST_ACCOUNT_LIST);
    while (sqlite3_step(s) == SQLITE_ROW) {
        jw_obj(&w);
        jw_kstr(&w, "id", (const char *)sqlite3_column_text(s, 0));
        jw_kstr(&w, "parentAccountId", (const char *)sqlite3_column_text(s, 1));
        jw_kstr(&w, "type", (const char *)sqlite3_column_text(s, 2));
        jw_kstr(&w, "name", (const char *)sqlite3_column_text(s, 3));
        jw_obj_end(&w);
    }
    sqlite3_reset(s);
    jw_arr_end(&w);
    jw_key(&w, "sites");
    jw_arr(&w);
    s = emu_stmt(c->e, ST_SITE_LIST);
    while (sqlite3_step(s) == SQLITE_ROW) {
        jw_obj(&w);
        jw_kstr(&w, "id", (const char *)sqlite3_column_text(s, 0));
        jw_kstr(&w, "accountId", (const char *)sqlite3_column_text(s, 1));
        jw_kstr(&w, "name", (const char *)sqlite3_column_text(s, 2));
        jw_obj_end(&w);
    }
    sqlite3_reset(s);
    jw_arr_end(&w);
    jw_key(&w, "products");
    jw_arr(&w);
    for (int i = 0; i < c->e->cat.nproducts; i++) {
        const emu_product *p = &c->e->cat.products[i];
        jw_obj(&w);
        jw_kstr(&w, "id", p->id);
        jw_kstr(&w, "name", p->name);
        jw_kstr(&w, "type", p->type);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    reply(c, &out);
}

static void admin_set_status(emu_ctx *c, const char *instance)
{
    static const char *const statuses[] = {"PENDING", "ENABLED", "CANCELED", "FAILED", "AWAITING_ACTION", NULL};
    static const char *const failures[] = {"UNKNOWN", "DELIVERY_TIMEOUT", "EXTERNAL_FAILURE", NULL};
    static const char *const keys[] = {"status", "failure", NULL};
    static const char *const failure_keys[] = {"code", "message", NULL};
    const char *status;
    if (check_keys(c, c->body, keys, "") < 0 || str_field(c, c->body, "status", "status", &status) < 0)
        return;
    int ok = 0;
    for (const char *const *s = statuses; status && *s; s++)
        ok |= !strcmp(*s, status);
    if (!ok)
        return bad(c, "status", "must be PENDING, ENABLED, CANCELED, FAILED or AWAITING_ACTION");
    const json_value *fail = json_get(c->body, "failure");
    const char *code = NULL, *msg = NULL;
    if (fail && fail->type != JSON_NULL && fail->type != JSON_OBJECT)
        return bad(c, "failure", "must be an object {code, message}");
    if (check_keys(c, fail, failure_keys, "failure") < 0)
        return;
    if (!strcmp(status, "FAILED")) {
        if (str_field(c, fail, "code", "failure.code", &code) < 0 ||
            str_field(c, fail, "message", "failure.message", &msg) < 0)
            return;
        if (!code)
            code = "EXTERNAL_FAILURE";
        ok = 0;
        for (const char *const *s = failures; *s; s++)
            ok |= !strcmp(*s, code);
        if (!ok)
            return bad(c, "failure.code", "must be UNKNOWN, DELIVERY_TIMEOUT or EXTERNAL_FAILURE");
        if (!msg)
            msg = "Delivery failed (set through the emulator's admin API)";
    }
    emu_instance in;
    if (!emu_is_guid(instance) || emu_instance_get(c->e, instance, &in) < 0)
        return emu_error_response(c->resp, 404, "NOT_FOUND", "No product instance %.40s", instance);
    long long now = emu_now_ms();
    if (emu_begin(c->e) < 0)
        return emu_error_response(c->resp, 500, "INTERNAL", "database busy");
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_SET_STATUS);
    sqlite3_bind_text(s, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, status, -1, SQLITE_STATIC);
    if (code) {
        sqlite3_bind_text(s, 3, code, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, msg, -1, SQLITE_STATIC);
    }
    sqlite3_bind_int64(s, 5, now);
    sqlite3_step(s);
    s = emu_stmt(c->e, ST_PKG_TOUCH);
    sqlite3_bind_int64(s, 1, in.package_seq);
    sqlite3_bind_int64(s, 2, now);
    sqlite3_step(s);
    if (emu_commit(c->e) < 0) {
        emu_rollback(c->e);
        return emu_error_response(c->resp, 500, "INTERNAL", "%s", sqlite3_errmsg(c->e->db));
    }
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "package");
    emu_render_package(c->e, in.package_seq, &w);
    jw_obj_end(&w);
    reply(c, &out);
}

static void write_fault(json_writer *w, const emu_fault *f)
{
    jw_obj(w);
    jw_key(w, "id");
    jw_int(w, f->id);
    if (f->method[0])
        jw_kstr(w, "method", f->method);
    if (f->path_prefix[0])
        jw_kstr(w, "pathPrefix", f->path_prefix);
    jw_key(w, "latencyMs");
    jw_int(w, f->latency_ms);
    jw_key(w, "jitterMs");
    jw_int(w, f->jitter_ms);
    jw_key(w, "errorRate");
    jw_num(w, f->error_rate);
    jw_key(w, "errorStatus");
    jw_int(w, f->error_status);
    jw_key(w, "throttleRate");
    jw_num(w, f->throttle_rate);
    jw_key(w, "retryAfter");
    jw_int(w, f->retry_after);
    jw_key(w, "dropRate");
    jw_num(w, f->drop_rate);
    jw_key(w, "after");
    jw_bool(w, f->after);
    jw_key(w, "remaining");
    jw_int(w, f->remaining);
    jw_obj_end(w);
}

static void admin_add_fault(emu_ctx *c)
{
    const json_value *b = c->body;
    if (!b)
        return bad(c, "body", "a fault rule object is required");
    if (c->e->nfaults >= EMU_MAX_FAULTS)
        return bad(c, "body", "too many fault rules; DELETE /__admin/faults first");
    static const char *const keys[] = {"method", "pathPrefix", "latencyMs", "jitterMs", "errorRate", "errorStatus",
                                       "throttleRate", "retryAfter", "dropRate", "after", "count", NULL};
    emu_fault f = {0};
    const char *m, *p;
    if (check_keys(c, b, keys, "") < 0 || str_field(c, b, "method", "method", &m) < 0 ||
        str_field(c, b, "pathPrefix", "pathPrefix", &p) < 0)
        return;
    if (m && strlen(m) >= sizeof f.method)
        return bad(c, "method", "not an HTTP method");
    if (p && strlen(p) >= sizeof f.path_prefix)
        return bad(c, "pathPrefix", "too long");
    snprintf(f.method, sizeof f.method, "%s", m ? m : "");
    snprintf(f.path_prefix, sizeof f.path_prefix, "%s", p ? p : "");
    double v;
    if (num_field(c, b, "latencyMs", 0, 60000, 0, &v) < 0)
        return;
    f.latency_ms = (int)v;
    if (num_field(c, b, "jitterMs", 0, 60000, 0, &v) < 0)
        return;
    f.jitter_ms = (int)v;
    if (num_field(c, b, "errorRate", 0, 1, 0, &f.error_rate) < 0 ||
        num_field(c, b, "throttleRate", 0, 1, 0, &f.throttle_rate) < 0 ||
        num_field(c, b, "dropRate", 0, 1, 0, &f.drop_rate) < 0)
        return;
    if (f.error_rate + f.throttle_rate + f.drop_rate > 1.0 + 1e-9)
        return bad(c, "errorRate", "errorRate + throttleRate + dropRate must not exceed 1");
    if (num_field(c, b, "errorStatus", 500, 599, 503, &v) < 0)
        return;
    f.error_status = (int)v;
    if (num_field(c, b, "retryAfter", 0, 3600, 1, &v) < 0)
        return;
    f.retry_after = (int)v;
    if (num_field(c, b, "count", -1, 1e12, -1, &v) < 0)
        return;
    f.remaining = (long long)v;
    json_value *after = json_get(b, "after");
    if (after && after->type != JSON_BOOL && after->type != JSON_NULL)
        return bad(c, "after", "must be true or false");
    f.after = after && after->type == JSON_BOOL && after->u.boolean;
    f.id = c->e->next_fault_id++;
    c->e->faults[c->e->nfaults++] = f;
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "fault");
    write_fault(&w, &f);
    jw_obj_end(&w);
    reply(c, &out);
}

static void admin_list_faults(emu_ctx *c)
{
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "faults");
    jw_arr(&w);
    for (int i = 0; i < c->e->nfaults; i++)
        write_fault(&w, &c->e->faults[i]);
    jw_arr_end(&w);
    jw_obj_end(&w);
    reply(c, &out);
}

static void admin_settings(emu_ctx *c)
{
    static const char *const keys[] = {"rateLimit", "requestsPerMinute", "deliveryDelayMs", "seed", "strict", NULL};
    const json_value *b = c->body;
    if (b) {
        if (check_keys(c, b, keys, "") < 0)
            return;
        json_value *rl = json_get(b, "rateLimit");
        if (rl && rl->type != JSON_BOOL)
            return bad(c, "rateLimit", "must be true or false");
        json_value *strict = json_get(b, "strict");
        if (strict && strict->type != JSON_BOOL)
            return bad(c, "strict", "must be true or false");
        json_value *seed = json_get(b, "seed");
        if (seed && (seed->type != JSON_NUMBER || !seed->is_int || seed->u.number < 0 ||
                     seed->u.number > 9007199254740992.0)) /* before the cast */
            return bad(c, "seed", "must be a whole number from 0 to 2^53");
        double per, delay;
        if (num_field(c, b, "requestsPerMinute", 1, 100000, c->e->rl_per_minute, &per) < 0 ||
            num_field(c, b, "deliveryDelayMs", -1, 86400000.0 * 365, (double)c->e->enable_delay_ms, &delay) < 0)
            return;
        if ((rl && rl->u.boolean != c->e->rl_enabled) || (int)per != c->e->rl_per_minute)
            ratelimit_clear(c->e);
        if (rl)
            c->e->rl_enabled = rl->u.boolean;
        if (strict)
            c->e->strict = strict->u.boolean;
        c->e->rl_per_minute = (int)per;
        c->e->enable_delay_ms = (long long)delay;
        if (seed && seed->type == JSON_NUMBER)
            c->e->rng = (uint64_t)seed->u.number;
    }
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "rateLimit");
    jw_bool(&w, c->e->rl_enabled);
    jw_key(&w, "requestsPerMinute");
    jw_int(&w, c->e->rl_per_minute);
    jw_key(&w, "deliveryDelayMs");
    jw_int(&w, c->e->enable_delay_ms);
    jw_key(&w, "strict");
    jw_bool(&w, c->e->strict);
    jw_obj_end(&w);
    reply(c, &out);
}

static long long query_param(const char *q, const char *name, long long def)
{
    size_t n = strlen(name);
    for (const char *p = q; p && *p;) {
        if (!strncmp(p, name, n) && p[n] == '=')
            return strtoll(p + n + 1, NULL, 10);
        p = strchr(p, '&');
        if (p)
            p++;
    }
    return def;
}

static void admin_requests(emu_ctx *c)
{
    long long since = query_param(c->req->query, "since", 0);
    long long limit = query_param(c->req->query, "limit", 1000);
    emu_t *e = c->e;
    /* strtoll saturates: keep since + 1 and limit-- inside long long */
    if (since > e->log_seq)
        since = e->log_seq;
    if (limit < 0)
        limit = 0;
    long long first = e->log_seq - EMU_LOG_SIZE + 1;
    if (first < 1)
        first = 1;
    if (since + 1 > first)
        first = since + 1;
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "last");
    jw_int(&w, e->log_seq);
    jw_key(&w, "requests");
    jw_arr(&w);
    for (long long s = first; s <= e->log_seq && limit-- > 0; s++) {
        const emu_log_entry *l = &e->log[(s - 1) % EMU_LOG_SIZE];
        jw_obj(&w);
        jw_key(&w, "seq");
        jw_int(&w, l->seq);
        char d[64];
        emu_format_date(l->ts_ms, d);
        jw_kstr(&w, "time", d);
        jw_kstr(&w, "method", l->method);
        jw_kstr(&w, "path", l->path);
        jw_kstr(&w, "accountId", l->account);
        if (l->idem[0])
            jw_kstr(&w, "idempotencyKey", l->idem);
        jw_key(&w, "status");
        jw_int(&w, l->status);
        if (l->fault[0])
            jw_kstr(&w, "fault", l->fault);
        if (l->warning[0])
            jw_kstr(&w, "warning", l->warning);
        jw_obj_end(&w);
    }
    jw_arr_end(&w);
    jw_obj_end(&w);
    reply(c, &out);
}

static void admin_stats(emu_ctx *c)
{
    buf_t out;
    buf_init(&out, 0);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    sqlite3_stmt *s = emu_stmt(c->e, ST_PKG_COUNT);
    jw_key(&w, "packages");
    jw_int(&w, sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0);
    sqlite3_reset(s);
    jw_key(&w, "instances");
    jw_obj(&w);
    s = emu_stmt(c->e, ST_INST_COUNT_STATUS);
    while (sqlite3_step(s) == SQLITE_ROW) {
        jw_key(&w, (const char *)sqlite3_column_text(s, 0));
        jw_int(&w, sqlite3_column_int64(s, 1));
    }
    sqlite3_reset(s);
    jw_obj_end(&w);
    jw_key(&w, "requests");
    jw_int(&w, c->e->log_seq);
    jw_obj_end(&w);
    reply(c, &out);
}

static void ok_reply(emu_ctx *c)
{
    buf_t out;
    buf_init(&out, 0);
    buf_adds(&out, "{\"ok\":true}");
    reply(c, &out);
}

void emu_admin_dispatch(emu_ctx *c)
{
    static const char *const no_keys[] = {NULL};
    const char *m = c->req->method;
    const char *what = c->nseg > 1 ? c->seg[1] : "";
    int n = c->nseg;
    if (!strcmp(what, "health") && n == 2 && !strcmp(m, "GET"))
        return ok_reply(c);
    if (!strcmp(what, "accounts") && n == 2) {
        if (!strcmp(m, "POST"))
            return admin_add_account(c);
        if (!strcmp(m, "GET"))
            return admin_list(c);
    }
    if (!strcmp(what, "sites") && n == 2 && !strcmp(m, "POST"))
        return admin_add_site(c);
    if (!strcmp(what, "instances") && n == 4 && !strcmp(c->seg[3], "status") && !strcmp(m, "POST"))
        return admin_set_status(c, c->seg[2]);
    if (!strcmp(what, "faults") && n == 2) {
        if (!strcmp(m, "POST"))
            return admin_add_fault(c);
        if (!strcmp(m, "GET"))
            return admin_list_faults(c);
        if (!strcmp(m, "DELETE")) {
            if (check_keys(c, c->body, no_keys, "") < 0)
                return;
            c->e->nfaults = 0;
            return ok_reply(c);
        }
    }
    if (!strcmp(what, "settings") && n == 2 && (!strcmp(m, "GET") || !strcmp(m, "POST")))
        return admin_settings(c);
    if (!strcmp(what, "requests") && n == 2 && !strcmp(m, "GET"))
        return admin_requests(c);
    if (!strcmp(what, "stats") && n == 2 && !strcmp(m, "GET"))
        return admin_stats(c);
    if (!strcmp(what, "reset") && n == 2 && !strcmp(m, "POST")) {
        if (check_keys(c, c->body, no_keys, "") < 0)
            return;
        c->e->nfaults = 0;
        c->e->rl_enabled = 0;
        c->e->strict = c->e->strict_option;
        ratelimit_clear(c->e);
        c->e->log_seq = 0;
        if (emu_store_reset(c->e) < 0)
            return emu_error_response(c->resp, 500, "INTERNAL", "reset failed: %s", sqlite3_errmsg(c->e->db));
        return ok_reply(c);
    }
    emu_error_response(c->resp, 404, "NOT_FOUND", "No admin endpoint %s %.200s", m, c->req->path);
}
