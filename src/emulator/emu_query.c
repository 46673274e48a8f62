/*
 * emu_query.c -- Query Packages: the Wix query language subset of
 * resellers-api.md §3.6 (filter validation and evaluation), sorting, and
 * cursor and offset paging.
 *
 * Filters are evaluated on each package's JSON as the API returns it, so the
 * semantics are those a client sees. A cursor is the base64url of
 * {"p": reseller, "f": filter, "s": sort, "o": offset}: it carries the query,
 * which is why a cursor sent with filter or sort is refused.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

#define QUERY_MAX_CURSOR_LIMIT 100
#define QUERY_MAX_OFFSET_LIMIT 1000
#define QUERY_MAX_SORT 2
/* Packages read (the scan) or evaluated (the filter) between two chances for
 * other requests to take the emulator's lock: about 1 ms and 0.5 ms of work. */
#define QUERY_SCAN_CHUNK 4096
#define QUERY_EVAL_CHUNK 64

enum { OP_EQ = 1, OP_NE = 2, OP_IN = 4, OP_EXISTS = 8, OP_CMP = 16, OP_HAS = 32 };

static const struct field_rule {
    const char *name;
    int ops;
    int is_date;
} fields[] = {
    {"id", OP_EQ | OP_NE | OP_IN | OP_EXISTS, 0},
    {"accountId", OP_EQ | OP_NE | OP_IN | OP_EXISTS, 0},
    {"externalId", OP_EQ | OP_NE | OP_IN | OP_EXISTS, 0},
    {"createdDate", OP_EQ | OP_NE | OP_CMP, 1},
    {"updatedDate", OP_EQ | OP_NE | OP_CMP, 1},
    {"productInstances", OP_HAS, 0},
    {"productInstances.instanceId", OP_HAS, 0},
    {"productInstances.siteId", OP_HAS, 0},
    {"productInstances.catalogProductId", OP_HAS, 0},
    {"productInstances.status", OP_HAS, 0},
    {"productInstances.failure", OP_HAS, 0},
    {"productInstances.failure.code", OP_HAS, 0},
    {"productInstances.failure.message", OP_HAS, 0},
    {"productInstances.billingInfo", OP_HAS, 0},
    {"productInstances.billingInfo.type", OP_HAS, 0},
    {"productInstances.billingInfo.cycleDuration", OP_HAS, 0},
    {"productInstances.billingInfo.cycleDuration.unit", OP_HAS, 0},
    {"productInstances.billingInfo.cycleDuration.count", OP_HAS, 0},
    {"productInstances.createdDate", OP_HAS, 1},
    {"productInstances.updatedDate", OP_HAS, 1},
    {"productInstances.countryCode", OP_HAS, 0},
};

static const struct op_name {
    const char *name;
    int op;
} ops[] = {
    {"$eq", OP_EQ}, {"$ne", OP_NE}, {"$in", OP_IN}, {"$exists", OP_EXISTS}, {"$gt", OP_CMP},
    {"$gte", OP_CMP}, {"$lt", OP_CMP}, {"$lte", OP_CMP}, {"$hasSome", OP_HAS}, {"$hasAll", OP_HAS},
};

static const struct field_rule *find_field(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (strlen(fields[i].name) == len && !memcmp(fields[i].name, name, len))
            return &fields[i];
    return NULL;
}

static int op_of(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (strlen(ops[i].name) == len && !memcmp(ops[i].name, name, len))
            return ops[i].op;
    return 0;
}

static void ops_allowed(int mask, char *out, size_t n)
{
    size_t k = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof ops / sizeof ops[0] && k < n; i++)
        if (mask & ops[i].op)
            k += (size_t)snprintf(out + k, n - k, "%s%s", k ? ", " : "", ops[i].name);
}

/* A date operand: an ISO string, or {"$date": "..."}. */
static const json_value *date_operand(const json_value *v)
{
    if (v && v->type == JSON_OBJECT && v->u.kids.n == 1 && json_get(v, "$date"))
        return json_get(v, "$date");
    return v;
}

/* A field's value that is a map of operators ({"$gt": ...}), not a value to equal
 * (a {"$date": ...} operand is a value). */
static int operators_of(const json_value *k)
{
    return k->type == JSON_OBJECT && k->u.kids.n > 0 && k->u.kids.head->keylen && k->u.kids.head->key[0] == '$' &&
           date_operand(k) == k;
}

static int valid_operand(const struct field_rule *f, int op, const json_value *v, char *msg, size_t msglen)
{
    if (op == OP_EXISTS) {
        if (v->type != JSON_BOOL)
            return snprintf(msg, msglen, "$exists takes true or false"), -1;
        return 0;
    }
    if (op == OP_IN || op == OP_HAS) {
        if (v->type != JSON_ARRAY)
            return snprintf(msg, msglen, "this operator takes an array"), -1;
        if (v->u.kids.n > 1000)
            return snprintf(msg, msglen, "at most 1000 values"), -1;
        for (json_value *k = v->u.kids.head; k; k = k->next) {
            long long ms;
            const json_value *d = date_operand(k);
            if (f->is_date && (d->type != JSON_STRING || emu_parse_date(d->u.str.s, &ms) < 0))
                return snprintf(msg, msglen, "values must be ISO-8601 dates such as 2024-05-01T10:00:00.000Z"), -1;
        }
        return 0;
    }
    if (v->type == JSON_ARRAY || (v->type == JSON_OBJECT && date_operand(v) == v))
        return snprintf(msg, msglen, "this operator takes a single value, not %s", json_type_name(v->type)), -1;
    if (f->is_date) {
        long long ms;
        const json_value *d = date_operand(v);
        if (d->type != JSON_STRING || emu_parse_date(d->u.str.s, &ms) < 0)
            return snprintf(msg, msglen, "the value must be an ISO-8601 date such as 2024-05-01T10:00:00.000Z"), -1;
    }
    return 0;
}

static int validate(const json_value *filter, int depth, char *field, size_t fieldlen, char *msg, size_t msglen)
{
    if (filter->type != JSON_OBJECT) {
        snprintf(field, fieldlen, "query.filter");
        return snprintf(msg, msglen, "a filter must be an object, not %s", json_type_name(filter->type)), -1;
    }
    if (depth > 16) {
        snprintf(field, fieldlen, "query.filter");
        return snprintf(msg, msglen, "filter nesting is too deep"), -1;
    }
    for (json_value *k = filter->u.kids.head; k; k = k->next) {
        snprintf(field, fieldlen, "query.filter.%.*s", (int)(k->keylen > 100 ? 100 : k->keylen), k->key);
        if (k->keylen && k->key[0] == '$') {
            if ((k->keylen == 4 && !memcmp(k->key, "$and", 4)) || (k->keylen == 3 && !memcmp(k->key, "$or", 3))) {
                if (k->type != JSON_ARRAY || k->u.kids.n == 0)
                    return snprintf(msg, msglen, "takes a non-empty array of filters"), -1;
                for (json_value *s = k->u.kids.head; s; s = s->next)
                    if (validate(s, depth + 1, field, fieldlen, msg, msglen) < 0)
                        return -1;
                continue;
            }
            if (k->keylen == 4 && !memcmp(k->key, "$not", 4)) {
                if (validate(k, depth + 1, field, fieldlen, msg, msglen) < 0)
                    return -1;
                continue;
            }
            return snprintf(msg, msglen, "unknown logical operator (use $and, $or or $not)"), -1;
        }
        const struct field_rule *f = find_field(k->key, k->keylen);
        if (!f)
            return snprintf(msg, msglen, "this field cannot be filtered on (see the supported filters)"), -1;
        char allowed[128];
        ops_allowed(f->ops, allowed, sizeof allowed);
        int is_ops = operators_of(k);
        if (!is_ops) {
            if (!(f->ops & OP_EQ))
                return snprintf(msg, msglen, "an implicit $eq is not supported here (supported: %s)", allowed), -1;
            if (valid_operand(f, OP_EQ, k, msg, msglen) < 0)
                return -1;
            continue;
        }
        for (json_value *o = k->u.kids.head; o; o = o->next) {
            int op = op_of(o->key, o->keylen);
            if (!op || !(f->ops & op))
                return snprintf(msg, msglen, "operator %.*s is not supported on this field (supported: %s)",
                                (int)(o->keylen > 20 ? 20 : o->keylen), o->key, allowed),
                       -1;
            if (valid_operand(f, op, o, msg, msglen) < 0)
                return -1;
        }
    }
    return 0;
}

int emu_filter_validate(const json_value *filter, char *field, size_t fieldlen, char *msg, size_t msglen)
{
    return validate(filter, 0, field, fieldlen, msg, msglen);
}

/* ---- evaluation ---- */

static int json_equal(const json_value *a, const json_value *b)
{
    if (a->type != b->type)
        return 0;
    switch (a->type) {
    case JSON_NULL: return 1;
    case JSON_BOOL: return a->u.boolean == b->u.boolean;
    case JSON_NUMBER: return a->u.number == b->u.number;
    case JSON_STRING: return a->u.str.len == b->u.str.len && !memcmp(a->u.str.s, b->u.str.s, a->u.str.len);
    case JSON_ARRAY: {
        if (a->u.kids.n != b->u.kids.n)
            return 0;
        for (json_value *x = a->u.kids.head, *y = b->u.kids.head; x; x = x->next, y = y->next)
            if (!json_equal(x, y))
                return 0;
        return 1;
    }
    case JSON_OBJECT: {
        if (a->u.kids.n != b->u.kids.n)
            return 0;
        for (json_value *x = a->u.kids.head; x; x = x->next) {
            json_value *y = NULL;
            for (json_value *z = b->u.kids.head; z && !y; z = z->next)
                if (z->keylen == x->keylen && !memcmp(z->key, x->key, x->keylen))
                    y = z;
            if (!y || !json_equal(x, y))
                return 0;
        }
        return 1;
    }
    }
    return 0;
}

/* Compares for equality or order; dates by instant. Returns -2 when not comparable. */
static int compare(const json_value *a, const json_value *b, int is_date)
{
    b = date_operand(b);
    if (is_date && a->type == JSON_STRING && b->type == JSON_STRING) {
        long long x, y;
        if (emu_parse_date(a->u.str.s, &x) == 0 && emu_parse_date(b->u.str.s, &y) == 0)
            return x < y ? -1 : x > y;
    }
    if (a->type == JSON_NUMBER && b->type == JSON_NUMBER)
        return a->u.number < b->u.number ? -1 : a->u.number > b->u.number;
    if (a->type == JSON_STRING && b->type == JSON_STRING) {
        size_t n = a->u.str.len < b->u.str.len ? a->u.str.len : b->u.str.len;
        int r = memcmp(a->u.str.s, b->u.str.s, n);
        if (r)
            return r < 0 ? -1 : 1;
        return a->u.str.len < b->u.str.len ? -1 : a->u.str.len > b->u.str.len;
    }
    return json_equal(a, b) ? 0 : -2;
}

/* Follows a dotted path inside one instance. */
static const json_value *dig(const json_value *v, const char *path)
{
    while (v && *path) {
        size_t n = strcspn(path, ".");
        char key[64];
        if (n >= sizeof key)
            return NULL;
        memcpy(key, path, n);
        key[n] = '\0';
        v = json_get(v, key);
        path += n;
        if (*path == '.')
            path++;
    }
    return v;
}

static int has_value(const json_value *pkg, const char *sub, const json_value *want, int is_date, long long *work)
{
    json_value *insts = json_get(pkg, "productInstances");
    if (!insts || insts->type != JSON_ARRAY)
        return 0;
    for (json_value *in = insts->u.kids.head; in; in = in->next) {
        ++*work;
        const json_value *v = *sub ? dig(in, sub) : in;
        if (v && compare(v, want, is_date) == 0)
            return 1;
    }
    return 0;
}

static int match_op(const struct field_rule *f, const json_value *pkg, const char *opname, size_t oplen,
                    const json_value *arg, long long *work)
{
    ++*work;
    if (f->ops & OP_HAS) {
        const char *sub = f->name + strlen("productInstances");
        if (*sub == '.')
            sub++;
        int all = oplen == 7 && !memcmp(opname, "$hasAll", 7);
        for (json_value *w = arg->u.kids.head; w; w = w->next) {
            int h = has_value(pkg, sub, w, f->is_date, work);
            if (all && !h)
                return 0;
            if (!all && h)
                return 1;
        }
        return all;
    }
    const json_value *v = json_get(pkg, f->name);
    if (v && v->type == JSON_NULL)
        v = NULL;
    if (!strncmp(opname, "$exists", oplen))
        return (v != NULL) == arg->u.boolean;
    if (!strncmp(opname, "$in", oplen)) {
        for (json_value *w = arg->u.kids.head; v && w; w = w->next, ++*work)
            if (compare(v, w, f->is_date) == 0)
                return 1;
        return 0;
    }
    int eq = v ? compare(v, arg, f->is_date) == 0 : arg->type == JSON_NULL;
    if (!strncmp(opname, "$eq", oplen))
        return eq;
    if (!strncmp(opname, "$ne", oplen))
        return !eq;
    if (!v)
        return 0;
    int r = compare(v, arg, f->is_date);
    if (r == -2)
        return 0;
    if (oplen == 3 && !memcmp(opname, "$gt", 3))
        return r > 0;
    if (oplen == 4 && !memcmp(opname, "$gte", 4))
        return r >= 0;
    if (oplen == 3 && !memcmp(opname, "$lt", 3))
        return r < 0;
    if (oplen == 4 && !memcmp(opname, "$lte", 4))
        return r <= 0;
    return 0;
}

int emu_filter_match_counted(const json_value *filter, const json_value *pkg, long long *work)
{
    for (json_value *k = filter->u.kids.head; k; k = k->next) {
        if (k->keylen == 4 && !memcmp(k->key, "$and", 4)) {
            for (json_value *s = k->u.kids.head; s; s = s->next)
                if (!emu_filter_match_counted(s, pkg, work))
                    return 0;
            continue;
        }
        if (k->keylen == 3 && !memcmp(k->key, "$or", 3)) {
            int any = 0;
            for (json_value *s = k->u.kids.head; s && !any; s = s->next)
                any = emu_filter_match_counted(s, pkg, work);
            if (!any)
                return 0;
            continue;
        }
        if (k->keylen == 4 && !memcmp(k->key, "$not", 4)) {
            if (emu_filter_match_counted(k, pkg, work))
                return 0;
            continue;
        }
        const struct field_rule *f = find_field(k->key, k->keylen);
        if (!f)
            return 0;
        int is_ops = operators_of(k);
        if (!is_ops) {
            if (!match_op(f, pkg, "$eq", 3, k, work))
                return 0;
            continue;
        }
        for (json_value *o = k->u.kids.head; o; o = o->next)
            if (!match_op(f, pkg, o->key, o->keylen, o, work))
                return 0;
    }
    return 1;
}

int emu_filter_match(const json_value *filter, const json_value *pkg)
{
    long long work = 0;
    return emu_filter_match_counted(filter, pkg, &work);
}

/* Every clause evaluated, every array value compared once (as on a package
 * with one instance): what a package that matches none of an $or costs. */
long long emu_filter_weight(const json_value *filter)
{
    long long w = 0;
    for (json_value *k = filter->u.kids.head; k; k = k->next) {
        if ((k->keylen == 4 && !memcmp(k->key, "$and", 4)) || (k->keylen == 3 && !memcmp(k->key, "$or", 3))) {
            for (json_value *s = k->u.kids.head; s; s = s->next)
                w += s->type == JSON_OBJECT ? emu_filter_weight(s) : 1;
            continue;
        }
        if (k->keylen == 4 && !memcmp(k->key, "$not", 4)) {
            w += k->type == JSON_OBJECT ? emu_filter_weight(k) : 1;
            continue;
        }
        if (!operators_of(k)) {
            w++;
            continue;
        }
        for (json_value *o = k->u.kids.head; o; o = o->next)
            w += 1 + (o->type == JSON_ARRAY ? (long long)o->u.kids.n : 0);
    }
    return w;
}

/* ---- a prefilter on the stored columns ----
 *
 * The filter's top level is an AND: from it, bounds on createdDate and
 * updatedDate and values to equal for id, accountId and externalId are read;
 * a package outside them cannot match and is skipped before it is rendered
 * (the cost of a filtered query). Whatever passes is still evaluated in full
 * by emu_filter_match. */

#define PRE_TEXTS 3               /* id, accountId, externalId: columns 3, 4, 5 of ST_PKG_SCOPE */
static const char *const pre_text_fields[PRE_TEXTS] = {"id", "accountId", "externalId"};

typedef struct prefilter {
    long long lo[2], hi[2];       /* [0] createdDate, [1] updatedDate, in ms */
    const char *eq[PRE_TEXTS];    /* a value to equal, or NULL */
    size_t eqlen[PRE_TEXTS];
} prefilter;

static void bound(prefilter *pf, int which, const char *op, size_t oplen, const json_value *arg)
{
    long long ms;
    const json_value *d = date_operand(arg);
    if (d->type != JSON_STRING || emu_parse_date(d->u.str.s, &ms) < 0)
        return;
    int eq = oplen == 3 && !memcmp(op, "$eq", 3);
    if (eq || (oplen == 4 && !memcmp(op, "$gte", 4)))
        pf->lo[which] = ms > pf->lo[which] ? ms : pf->lo[which];
    if (oplen == 3 && !memcmp(op, "$gt", 3) && ms + 1 > pf->lo[which])
        pf->lo[which] = ms + 1;
    if (eq || (oplen == 4 && !memcmp(op, "$lte", 4)))
        pf->hi[which] = ms < pf->hi[which] ? ms : pf->hi[which];
    if (oplen == 3 && !memcmp(op, "$lt", 3) && ms - 1 < pf->hi[which])
        pf->hi[which] = ms - 1;
}

static int field_is(const json_value *k, const char *name)
{
    return k->keylen == strlen(name) && !memcmp(k->key, name, k->keylen);
}

static void prefilter_read(prefilter *pf, const json_value *filter)
{
    memset(pf, 0, sizeof *pf);
    pf->lo[0] = pf->lo[1] = LLONG_MIN;
    pf->hi[0] = pf->hi[1] = LLONG_MAX;
    for (const json_value *k = filter ? filter->u.kids.head : NULL; k; k = k->next) {
        int which = field_is(k, "createdDate") ? 0 : field_is(k, "updatedDate") ? 1 : -1;
        for (int t = 0; t < PRE_TEXTS && which < 0; t++)
            if (field_is(k, pre_text_fields[t]))
                which = 2 + t;
        if (which < 0)
            continue;
        int is_ops = operators_of(k);
        for (const json_value *o = is_ops ? k->u.kids.head : k; o; o = is_ops ? o->next : NULL) {
            const char *op = is_ops ? o->key : "$eq";
            size_t oplen = is_ops ? o->keylen : 3;
            if (which < 2) {
                bound(pf, which, op, oplen, o);
            } else if (oplen == 3 && !memcmp(op, "$eq", 3) && o->type == JSON_STRING) {
                pf->eq[which - 2] = o->u.str.s;
                pf->eqlen[which - 2] = o->u.str.len;
            }
        }
    }
}

/* The row of ST_PKG_SCOPE: seq, created, updated, id, account_id, external_id. */
static int prefilter_pass(const prefilter *pf, sqlite3_stmt *row, long long created, long long updated)
{
    if (created < pf->lo[0] || created > pf->hi[0] || updated < pf->lo[1] || updated > pf->hi[1])
        return 0;
    for (int t = 0; t < PRE_TEXTS; t++) {
        if (!pf->eq[t])
            continue;
        const char *v = (const char *)sqlite3_column_text(row, 3 + t);
        if (!v || (size_t)sqlite3_column_bytes(row, 3 + t) != pf->eqlen[t] || memcmp(v, pf->eq[t], pf->eqlen[t]))
            return 0;
    }
    return 1;
}

/* ---- base64url for cursors ---- */

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void b64_encode(buf_t *out, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16 | (i + 1 < n ? (unsigned)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
        buf_addc(out, b64[(v >> 18) & 63]);
        buf_addc(out, b64[(v >> 12) & 63]);
        if (i + 1 < n)
            buf_addc(out, b64[(v >> 6) & 63]);
        if (i + 2 < n)
            buf_addc(out, b64[v & 63]);
    }
}

static int b64_decode(buf_t *out, const char *s, size_t n)
{
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        const char *q = memchr(b64, s[i], 64);
        if (!q || !s[i])
            return -1;
        v = (v << 6) | (unsigned)(q - b64);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf_addc(out, (char)((v >> bits) & 0xFF));
        }
    }
    return out->failed ? -1 : 0;
}

/* ---- the endpoint ---- */

typedef struct hit {
    long long seq, created, updated;
} hit;

typedef struct sortkey {
    int updated;   /* 0 = createdDate, 1 = updatedDate */
    int desc;
} sortkey;

static int cmp_hits(const hit *a, const hit *b, const sortkey *keys, int nkeys)
{
    for (int i = 0; i < nkeys; i++) {
        long long x = keys[i].updated ? a->updated : a->created;
        long long y = keys[i].updated ? b->updated : b->created;
        if (x != y)
            return (x < y ? -1 : 1) * (keys[i].desc ? -1 : 1);
    }
    int desc = nkeys ? keys[0].desc : 1;
    if (a->seq != b->seq)
        return (a->seq < b->seq ? -1 : 1) * (desc ? -1 : 1);
    return 0;
}

/* Merge sort (stable, no global state for the comparator). */
static void sort_hits(hit *h, hit *tmp, size_t n, const sortkey *keys, int nkeys)
{
    if (n < 2)
        return;
    size_t m = n / 2;
    sort_hits(h, tmp, m, keys, nkeys);
    sort_hits(h + m, tmp, n - m, keys, nkeys);
    size_t i = 0, j = m, k = 0;
    while (i < m && j < n)
        tmp[k++] = cmp_hits(&h[j], &h[i], keys, nkeys) < 0 ? h[j++] : h[i++];
    while (i < m)
        tmp[k++] = h[i++];
    while (j < n)
        tmp[k++] = h[j++];
    memcpy(h, tmp, n * sizeof *h);
}

static int read_sort(emu_ctx *c, const json_value *sort, sortkey *keys, int *nkeys)
{
    *nkeys = 0;
    if (!sort || sort->type == JSON_NULL)
        return 0;
    if (sort->type != JSON_ARRAY) {
        emu_violation(c, "query.sort", "TYPE", "must be an array of {fieldName, order}");
        return -1;
    }
    int i = 0;
    for (json_value *s = sort->u.kids.head; s; s = s->next, i++) {
        char f[64];
        snprintf(f, sizeof f, "query.sort[%d]", i);
        if (s->type != JSON_OBJECT) {
            emu_violation(c, f, "TYPE", "must be an object with fieldName and order");
            return -1;
        }
        if (i >= QUERY_MAX_SORT) {
            emu_violation(c, f, "SIZE", "at most %d sort fields", QUERY_MAX_SORT);
            return -1;
        }
        const char *name = json_get_str(s, "fieldName");
        json_value *ord = json_get(s, "order");
        snprintf(f, sizeof f, "query.sort[%d].fieldName", i);
        if (!name || (strcmp(name, "createdDate") && strcmp(name, "updatedDate"))) {
            emu_violation(c, f, "ENUM", "only createdDate and updatedDate are sortable");
            return -1;
        }
        snprintf(f, sizeof f, "query.sort[%d].order", i);
        const char *o = ord && ord->type == JSON_STRING ? ord->u.str.s : NULL;
        if (ord && ord->type != JSON_NULL && (!o || (strcmp(o, "ASC") && strcmp(o, "DESC")))) {
            emu_violation(c, f, "ENUM", "must be ASC or DESC");
            return -1;
        }
        keys[i].updated = !strcmp(name, "updatedDate");
        keys[i].desc = o && !strcmp(o, "DESC");
        (*nkeys)++;
    }
    return 0;
}

/* Reads an integer field in [lo, hi]; def when absent. */
static int read_int(emu_ctx *c, const json_value *obj, const char *key, const char *field, long long lo, long long hi,
                    long long def, long long *out)
{
    json_value *v = json_get(obj, key);
    *out = def;
    if (!v || v->type == JSON_NULL)
        return 0;
    if (v->type != JSON_NUMBER || !v->is_int || v->u.number < (double)lo || v->u.number > (double)hi) {
        emu_violation(c, field, "RANGE", "must be a whole number from %lld to %lld", lo, hi);
        return -1;
    }
    *out = (long long)v->u.number;
    return 0;
}

/* Refuses (a violation, returns 1) a filter whose foreseen work over n candidates passes the budget. */
static int over_budget(emu_ctx *c, const json_value *filter, long long n)
{
    long long budget = c->e->query_budget, weight = emu_filter_weight(filter);
    long long per = EMU_QUERY_RENDER_UNITS + weight;
    if (n <= 0 || per <= budget / n)
        return 0;
    emu_violation(c, "query.filter", "QUERY_TOO_COSTLY",
                  "this filter (%lld values to compare per package) over the %lld packages it cannot rule out "
                  "by its top-level createdDate/updatedDate bounds or id/accountId/externalId $eq would cost "
                  "about %lld work units, over the emulator's query budget of %lld (--query-budget); narrow it "
                  "with such a bound, or split it",
                  weight, n, n * per, budget); /* n, per: far below 2^31 each */
    return 1;
}

void emu_api_query(emu_ctx *c)
{
    json_value *q = c->body ? json_get(c->body, "query") : NULL;
    json_doc *cdoc = NULL;
    hit *hits = NULL, *tmp = NULL;
    buf_t scratch, out, page;
    buf_init(&scratch, 0);
    buf_init(&out, 0);
    buf_init(&page, 0);
    if (!q || q->type != JSON_OBJECT) {
        emu_violation(c, "query", q ? "TYPE" : "REQUIRED_FIELD", "query is required and must be an object");
        emu_finish_violations(c);
        return;
    }
    const json_value *filter = json_get(q, "filter");
    const json_value *sort = json_get(q, "sort");
    json_value *paging = json_get(q, "paging"), *cpaging = json_get(q, "cursorPaging");
    if (filter && filter->type == JSON_NULL)
        filter = NULL;
    if (sort && sort->type == JSON_NULL)
        sort = NULL;
    if (paging && paging->type == JSON_NULL)
        paging = NULL;
    if (cpaging && cpaging->type == JSON_NULL)
        cpaging = NULL;
    if (paging && cpaging) {
        emu_violation(c, "query.paging", "ONE_OF", "send either paging or cursorPaging, not both");
        goto violations;
    }
    if ((paging && paging->type != JSON_OBJECT) || (cpaging && cpaging->type != JSON_OBJECT)) {
        emu_violation(c, paging ? "query.paging" : "query.cursorPaging", "TYPE", "must be an object");
        goto violations;
    }
    long long limit, offset = 0;
    const char *cursor = NULL;
    int offset_mode = paging != NULL;
    if (offset_mode) {
        if (read_int(c, paging, "limit", "query.paging.limit", 0, QUERY_MAX_OFFSET_LIMIT, 100, &limit) < 0 ||
            read_int(c, paging, "offset", "query.paging.offset", 0, 1000000000, 0, &offset) < 0)
            goto violations;
    } else {
        if (read_int(c, cpaging, "limit", "query.cursorPaging.limit", 0, QUERY_MAX_CURSOR_LIMIT, 100, &limit) < 0)
            goto violations;
        json_value *cv = json_get(cpaging, "cursor");
        if (cv && cv->type != JSON_NULL) {
            if (cv->type != JSON_STRING) {
                emu_violation(c, "query.cursorPaging.cursor", "TYPE", "must be a string");
                goto violations;
            }
            cursor = cv->u.str.s;
        }
    }
    if (limit == 0)
        limit = 100;

    if (cursor) {
        if (filter || sort) {
            emu_violation(c, "query.cursorPaging.cursor", "INVALID_CURSOR",
                          "invalid cursor: a cursor already carries the filter and sort; do not send them with it");
            goto violations;
        }
        json_error jerr;
        json_value *cj = NULL;
        if (b64_decode(&scratch, cursor, strlen(cursor)) == 0)
            cj = json_parse(scratch.data ? scratch.data : "", scratch.len, EMU_MAX_JSON_DEPTH, &cdoc, &jerr);
        json_value *o = cj ? json_get(cj, "o") : NULL;
        const char *p = cj ? json_get_str(cj, "p") : NULL;
        if (!cj || cj->type != JSON_OBJECT || !o || o->type != JSON_NUMBER || !o->is_int || o->u.number < 0 ||
            o->u.number > 1000000000 || !p || strcmp(p, c->parent)) { /* the offset's range before the cast */
            emu_violation(c, "query.cursorPaging.cursor", "INVALID_CURSOR", "invalid cursor");
            goto violations;
        }
        offset = (long long)o->u.number;
        filter = json_get(cj, "f");
        sort = json_get(cj, "s");
        if (filter && filter->type == JSON_NULL)
            filter = NULL;
        if (sort && sort->type == JSON_NULL)
            sort = NULL;
    }
    if (filter) {
        char field[160], msg[256];
        if (emu_filter_validate(filter, field, sizeof field, msg, sizeof msg) < 0) {
            emu_violation(c, field, "FILTER", "%s", msg);
            goto violations;
        }
        if (filter->u.kids.n == 0)
            filter = NULL;
    }
    sortkey keys[QUERY_MAX_SORT];
    int nkeys;
    if (read_sort(c, sort, keys, &nkeys) < 0)
        goto violations;
    if (!nkeys) {
        keys[0].updated = 0;
        keys[0].desc = 1;
        nkeys = 1;
    }

    /* Scan the reseller's packages: first the stored columns (the prefilter),
     * then, when there is a filter, each candidate rendered and evaluated.
     * Both go in chunks, and between chunks requests waiting for the emulator
     * go first (emu_let_others_in): a long query delays others by a chunk,
     * not by its length. The state may change in between: the query answers
     * with the packages that existed when it began (up to their last seq),
     * each read as it was at some moment of it (one deleted meanwhile, by an
     * admin reset, is left out). The work is still budgeted, since it
     * holds this client's answer and a CPU: a filter whose cost over its
     * candidates would pass c->e->query_budget is refused before any is
     * rendered, and one that passes it while evaluating (more instances than
     * foreseen) is stopped there. */
    size_t n = 0, cap = 0;
    prefilter pf;
    prefilter_read(&pf, filter);
    if (filter && !pf.eq[0] && !pf.eq[1] && !pf.eq[2]) {
        /* Only date bounds: SQLite counts the candidates faster than the scan reads them (without
         * bounds, from the index alone). */
        int bounded = pf.lo[0] != LLONG_MIN || pf.lo[1] != LLONG_MIN || pf.hi[0] != LLONG_MAX || pf.hi[1] != LLONG_MAX;
        sqlite3_stmt *cs = emu_stmt(c->e, bounded ? ST_PKG_SCOPE_COUNT : ST_PKG_SCOPE_COUNT_ALL);
        sqlite3_bind_text(cs, 1, c->parent, -1, SQLITE_STATIC);
        for (int b = 0; bounded && b < 2; b++) {
            sqlite3_bind_int64(cs, 2 + 2 * b, pf.lo[b]);
            sqlite3_bind_int64(cs, 3 + 2 * b, pf.hi[b]);
        }
        long long count = sqlite3_step(cs) == SQLITE_ROW ? sqlite3_column_int64(cs, 0) : 0;
        sqlite3_reset(cs);
        if (over_budget(c, filter, count))
            goto violations;
    }
    long long after = 0; /* the last seq read: the next chunk starts past it */
    sqlite3_stmt *ls = emu_stmt(c->e, ST_PKG_LAST_SEQ);
    long long last = sqlite3_step(ls) == SQLITE_ROW ? sqlite3_column_int64(ls, 0) : 0;
    sqlite3_reset(ls);
    for (;;) {
        sqlite3_stmt *s = emu_stmt(c->e, ST_PKG_SCOPE);
        sqlite3_bind_text(s, 1, c->parent, -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 2, after);
        sqlite3_bind_int(s, 3, QUERY_SCAN_CHUNK);
        sqlite3_bind_int64(s, 4, last);
        int rows = 0;
        while (sqlite3_step(s) == SQLITE_ROW) {
            hit h = {sqlite3_column_int64(s, 0), sqlite3_column_int64(s, 1), sqlite3_column_int64(s, 2)};
            rows++;
            after = h.seq;
            if (filter && !prefilter_pass(&pf, s, h.created, h.updated))
                continue;
            if (n == cap) {
                cap = cap ? cap * 2 : 256;
                hit *nh = realloc(hits, cap * sizeof *hits);
                if (!nh) {
                    sqlite3_reset(s);
                    emu_error_response(c->resp, 500, "INTERNAL", "out of memory");
                    goto done;
                }
                hits = nh;
            }
            hits[n++] = h;
        }
        sqlite3_reset(s);
        if (rows < QUERY_SCAN_CHUNK)
            break;
        if (emu_let_others_in(c->e) < 0)
            goto busy;
    }
    if (filter) {
        long long budget = c->e->query_budget;
        if (over_budget(c, filter, (long long)n))
            goto violations;
        long long work = 0;
        size_t kept = 0;
        for (size_t i = 0; i < n; i++) {
            if (i % QUERY_EVAL_CHUNK == QUERY_EVAL_CHUNK - 1 && emu_let_others_in(c->e) < 0)
                goto busy;
            json_writer w;
            buf_reset(&scratch);
            jw_init(&w, &scratch);
            work += EMU_QUERY_RENDER_UNITS;
            if (emu_render_package(c->e, hits[i].seq, &w) < 0)
                continue;
            json_doc *pd = NULL;
            json_value *pkg = json_parse(scratch.data, scratch.len, EMU_MAX_JSON_DEPTH, &pd, NULL);
            int ok = pkg && emu_filter_match_counted(filter, pkg, &work);
            json_doc_free(pd);
            if (work > budget) {
                emu_violation(c, "query.filter", "QUERY_TOO_COSTLY",
                              "this filter passed the emulator's query budget of %lld work units (--query-budget) "
                              "after %zu of the %zu packages it cannot rule out by its top-level bounds; narrow it "
                              "with a createdDate/updatedDate bound or an id/accountId/externalId $eq, or split it",
                              budget, i + 1, n);
                goto violations;
            }
            if (ok)
                hits[kept++] = hits[i];
        }
        n = kept;
    }
    if (n > 1) {
        tmp = malloc(n * sizeof *tmp);
        if (!tmp) {
            emu_error_response(c->resp, 500, "INTERNAL", "out of memory");
            goto done;
        }
        sort_hits(hits, tmp, n, keys, nkeys);
    }

    size_t start = (size_t)offset < n ? (size_t)offset : n;
    size_t end = start + (size_t)limit < n ? start + (size_t)limit : n;
    json_writer pw;
    jw_init(&pw, &page);
    jw_arr(&pw);
    long long shown = 0;
    for (size_t i = start; i < end; i++)
        shown += emu_render_package(c->e, hits[i].seq, &pw) == 0;
    jw_arr_end(&pw);
    json_writer w;
    jw_init(&w, &out);
    jw_obj(&w);
    jw_key(&w, "metadata");
    jw_obj(&w);
    jw_key(&w, "count");
    jw_int(&w, shown);
    if (offset_mode) {
        jw_key(&w, "offset");
        jw_int(&w, offset);
        jw_key(&w, "total");
        jw_int(&w, (long long)n);
        jw_key(&w, "tooManyToCount");
        jw_bool(&w, 0);
    } else {
        jw_key(&w, "cursors");
        jw_obj(&w);
        for (int dir = 0; dir < 2; dir++) {
            long long at = dir == 0 ? (long long)end : (long long)start - limit;
            if (dir == 0 && end >= n)
                continue;
            if (dir == 1 && start == 0)
                continue;
            if (at < 0)
                at = 0;
            buf_t cj;
            buf_init(&cj, 0);
            json_writer cw;
            jw_init(&cw, &cj);
            jw_obj(&cw);
            jw_kstr(&cw, "p", c->parent);
            if (filter) {
                jw_key(&cw, "f");
                jw_value(&cw, filter);
            }
            if (sort) {
                jw_key(&cw, "s");
                jw_value(&cw, sort);
            }
            jw_key(&cw, "o");
            jw_int(&cw, at);
            jw_obj_end(&cw);
            buf_reset(&scratch);
            b64_encode(&scratch, (const unsigned char *)cj.data, cj.len);
            buf_free(&cj);
            jw_key(&w, dir == 0 ? "next" : "prev");
            jw_strn(&w, scratch.data, scratch.len);
        }
        jw_obj_end(&w);
        jw_key(&w, "hasNext");
        jw_bool(&w, end < n);
    }
    jw_obj_end(&w);
    jw_key(&w, "packages");
    jw_raw(&w, page.data ? page.data : "[]", page.data ? page.len : 2);
    jw_obj_end(&w);
    emu_set_json(c->resp, 200, &out);
    goto done;
busy:
    emu_error_response(c->resp, 500, "INTERNAL", "database busy");
    goto done;
violations:
    emu_finish_violations(c);
done:
    buf_free(&page);
    buf_free(&out);
    buf_free(&scratch);
    free(hits);
    free(tmp);
    json_doc_free(cdoc);
}
