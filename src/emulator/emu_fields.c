/*
 * emu_fields.c -- the request fields of each endpoint, read the way Wix
 * parses request JSON (protobuf JSON): a field may be sent under its
 * lowerCamelCase name (`siteId`) or its original proto name (`site_id`).
 *
 * emu_fields_normalize walks a parsed body against the endpoint's schema
 * and renames every proto-named key to its lowerCamelCase name in place, so
 * the handlers read one spelling. Sending both spellings of one field is a
 * 400. A key that is no field of the endpoint is ignored, as Wix does, but
 * named: in the response's warning (the HTTP front sends it as
 * x-wixr-warning) and in the request log; a strict emulator answers 400.
 * Free-form values (a query's filter) are not walked: their keys are data.
 */
#include <stdio.h>
#include <string.h>

#include "../util/nearest.h"
#include "emu_internal.h"

typedef struct emu_schema emu_schema;

typedef struct emu_field {
    const char *name;              /* lowerCamelCase, as Wix documents it; first member for nearest_name */
    const char *proto;             /* the original proto name; NULL when it is the same word */
    const emu_schema *sub;         /* members of an object, or of each object of an array; NULL: a leaf */
} emu_field;

struct emu_schema {
    const emu_field *f;
    size_t n;
};

#define SCHEMA(arr) {arr, sizeof arr / sizeof arr[0]}

static const emu_field cycle_duration_f[] = {{"unit", NULL, NULL}, {"count", NULL, NULL}};
static const emu_schema cycle_duration = SCHEMA(cycle_duration_f);

static const emu_field billing_info_f[] = {
    {"type", NULL, NULL},
    {"cycleDuration", "cycle_duration", &cycle_duration},
};
static const emu_schema billing_info = SCHEMA(billing_info_f);

static const emu_field product_f[] = {
    {"catalogProductId", "catalog_product_id", NULL},
    {"countryCode", "country_code", NULL},
    {"siteId", "site_id", NULL},
    {"discountCode", "discount_code", NULL},
    {"referenceProductInstanceId", "reference_product_instance_id", NULL},
    {"billingInfo", "billing_info", &billing_info},
};
static const emu_schema product = SCHEMA(product_f);

static const emu_field create_f[] = {
    {"products", NULL, &product},
    {"externalId", "external_id", NULL},
    {"idempotencyKey", "idempotency_key", NULL},
};

static const emu_field adjust_f[] = {
    {"catalogProductId", "catalog_product_id", NULL},
    {"discountCode", "discount_code", NULL},
    {"billingInfo", "billing_info", &billing_info},
    {"idempotencyKey", "idempotency_key", NULL},
};

/* Endpoints whose only body field is the idempotency key. */
static const emu_field key_only_f[] = {{"idempotencyKey", "idempotency_key", NULL}};

static const emu_field sort_f[] = {{"fieldName", "field_name", NULL}, {"order", NULL, NULL}};
static const emu_schema sort = SCHEMA(sort_f);
static const emu_field paging_f[] = {{"limit", NULL, NULL}, {"offset", NULL, NULL}};
static const emu_schema paging = SCHEMA(paging_f);
static const emu_field cursor_paging_f[] = {{"limit", NULL, NULL}, {"cursor", NULL, NULL}};
static const emu_schema cursor_paging = SCHEMA(cursor_paging_f);
static const emu_field query_f[] = {
    {"filter", NULL, NULL},        /* free-form: its keys are field paths, not request fields */
    {"sort", NULL, &sort},
    {"paging", NULL, &paging},
    {"cursorPaging", "cursor_paging", &cursor_paging},
    {"fields", NULL, NULL},
    {"fieldsets", NULL, NULL},
};
static const emu_schema query = SCHEMA(query_f);
static const emu_field query_body_f[] = {{"query", NULL, &query}};

static const emu_schema schemas[] = {
    [R_CREATE_V2] = SCHEMA(create_f),
    [R_CREATE_V1] = SCHEMA(create_f),
    [R_QUERY] = SCHEMA(query_body_f),
    [R_CANCEL_PKG] = SCHEMA(key_only_f),
    [R_SET_EXT] = SCHEMA(key_only_f),
    [R_UNASSIGN] = SCHEMA(key_only_f),
    [R_ASSIGN] = SCHEMA(key_only_f),
    [R_ADJUST] = SCHEMA(adjust_f),
    [R_CANCEL_INST] = SCHEMA(key_only_f),
};

#define MAX_WARNING 480

/* Appends one unknown field's path to the warning list (a header value: printable ASCII only, capped). */
static void note_unknown(buf_t *w, const char *path)
{
    if (w->len >= MAX_WARNING)
        return;
    if (w->len)
        buf_adds(w, ", ");
    for (const char *p = path; *p && w->len < MAX_WARNING; p++)
        buf_addc(w, *p >= 0x20 && *p < 0x7f ? *p : '?');
    if (w->len >= MAX_WARNING)
        buf_adds(w, "...");
}

static const emu_field *field_of(const emu_schema *s, const char *key, size_t keylen, int *by_proto)
{
    for (size_t i = 0; i < s->n; i++) {
        const emu_field *f = &s->f[i];
        if (strlen(f->name) == keylen && !memcmp(f->name, key, keylen)) {
            *by_proto = 0;
            return f;
        }
        if (f->proto && strlen(f->proto) == keylen && !memcmp(f->proto, key, keylen)) {
            *by_proto = 1;
            return f;
        }
    }
    return NULL;
}

static void walk(emu_ctx *c, json_value *obj, const emu_schema *s, const char *at, buf_t *warn);

static void walk_member(emu_ctx *c, json_value *v, const emu_field *f, const char *path, buf_t *warn)
{
    if (!f->sub)
        return;
    if (v->type == JSON_OBJECT) {
        walk(c, v, f->sub, path, warn);
    } else if (v->type == JSON_ARRAY) {
        size_t i = 0;
        for (json_value *item = v->u.kids.head; item; item = item->next, i++) {
            char p[160];
            snprintf(p, sizeof p, "%.120s[%zu]", path, i);
            if (item->type == JSON_OBJECT)
                walk(c, item, f->sub, p, warn);
        }
    }
}

/* Renames proto-named keys of obj to their lowerCamelCase names; notes unknown and doubled ones. */
static void walk(emu_ctx *c, json_value *obj, const emu_schema *s, const char *at, buf_t *warn)
{
    const char *seen[16] = {0};   /* how each field was first named (schemas hold fewer fields) */
    size_t seenlen[16] = {0};
    for (json_value *m = obj->u.kids.head; m; m = m->next) {
        int by_proto = 0;
        const emu_field *f = field_of(s, m->key, m->keylen, &by_proto);
        char path[160];
        if (!f) {
            char key[64];
            snprintf(key, sizeof key, "%.*s", (int)(m->keylen < 60 ? m->keylen : 60), m->key);
            snprintf(path, sizeof path, "%.90s%s%s", at, *at ? "." : "", key);
            if (!c->e->strict) {
                note_unknown(warn, path);
            } else if (c->nviol < 50) {
                const char *near = nearest_name(key, s->f, s->n, sizeof *s->f);
                emu_violation(c, path, "UNKNOWN_FIELD", "%s is not a field of this request%s%s%s", path,
                              near ? " (did you mean " : "", near ? near : "", near ? "?)" : "");
            }
            continue;
        }
        snprintf(path, sizeof path, "%.90s%s%s", at, *at ? "." : "", f->name);
        size_t idx = (size_t)(f - s->f);
        if (seen[idx]) {
            /* protobuf JSON refuses a field set twice, under either name */
            emu_violation(c, path, "DUPLICATE_FIELD", "%s is sent twice (as %.*s and %.*s); send it once", path,
                          (int)seenlen[idx], seen[idx], (int)(m->keylen < 60 ? m->keylen : 60), m->key);
            continue;
        }
        seen[idx] = m->key;
        seenlen[idx] = m->keylen;
        if (by_proto) {
            m->key = f->name;
            m->keylen = strlen(f->name);
        }
        walk_member(c, m, f, path, warn);
    }
}

int emu_fields_normalize(emu_ctx *c, int route)
{
    if (!c->body || route < 0 || (size_t)route >= sizeof schemas / sizeof schemas[0] || !schemas[route].f)
        return 0;
    buf_t warn;
    buf_init(&warn, 0);
    walk(c, c->body, &schemas[route], "", &warn);
    if (warn.len && !warn.failed) {
        snprintf(c->resp->warning, sizeof c->resp->warning, "unknown fields ignored: %.*s", (int)warn.len,
                 warn.data);
    }
    buf_free(&warn);
    return emu_finish_violations(c) ? -1 : 0;
}
