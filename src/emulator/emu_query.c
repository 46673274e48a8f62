/*
 * emu_query.c -- Query Packages: the Wix query language subset of
 * resellers-api.md §3.6 (filter validation and evaluation), sorting, and
 * cursor and offset paging.
 *
 * Filters are evaluated on each package's JSON as the API returns it, so the
 * semantics are those a client sees; SQL on indexed columns only decides
 * which packages are worth evaluating. A page is read from an index in the
 * sort order, from where the cursor says the last one ended (keyset paging),
 * so it costs its own packages, not the store's.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

#define QUERY_MAX_CURSOR_LIMIT 100
#define QUERY_MAX_OFFSET_LIMIT 1000
#define QUERY_MAX_SORT 2
/* Packages read (the walk, an instance probe each when the filter has one),
 * or work units of evaluation (emu.h: 64 packages of a plain filter, fewer of
 * a heavy one), between two chances for other requests to take the
 * emulator's lock: about 1 ms and 0.5 ms of work. */
#define QUERY_SCAN_CHUNK 1024
#define QUERY_EVAL_CHUNK (64 * EMU_QUERY_RENDER_UNITS)

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
 * updatedDate, values to equal for id, accountId and externalId, and the
 * values $hasSome/$hasAll look for among the instance fields stored as
 * columns are read. They become SQL on indexed columns, so a package outside
 * them is not rendered (the cost of a filtered query). Each is only a
 * necessary condition: whatever passes is still evaluated in full by
 * emu_filter_match. */

#define PRE_TEXTS 3
static const char *const pre_text_fields[PRE_TEXTS] = {"id", "accountId", "externalId"};
static const char *const pre_text_cols[PRE_TEXTS] = {"id", "account_id", "external_id"};
#define PRE_INST 8            /* instance terms turned into SQL; further ones are left to the evaluation */
#define PRE_HASALL 4          /* of a $hasAll's values, those SQL requires */
#define PRE_INST_VALUES 4000  /* values bound in all (SQLite allows 32766 parameters) */

static const struct inst_col {
    const char *field, *col;
    int indexed;                  /* the instances with a value are found by index (a walk may be led by them) */
} inst_cols[] = {
    {"productInstances.instanceId", "instance_id", 1},
    {"productInstances.siteId", "site_id", 1},
    {"productInstances.catalogProductId", "catalog_product_id", 0},
    {"productInstances.status", "status", 1},
    {"productInstances.countryCode", "country_code", 0},
};

typedef struct inst_term {
    const char *col;
    int indexed;
    int all;                      /* $hasAll (its first PRE_HASALL values), else $hasSome */
    const json_value *values;     /* a non-empty array of strings */
    int param;                    /* the SQL parameter of its first value */
} inst_term;

typedef struct prefilter {
    long long lo[2], hi[2];       /* [0] createdDate, [1] updatedDate, in ms */
    const char *eq[PRE_TEXTS];    /* a value to equal, or NULL */
    size_t eqlen[PRE_TEXTS];
    inst_term inst[PRE_INST];
    int ninst;
    int lead;                     /* the instance term whose packages the walk reads, -1: the reseller's all */
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

static int all_strings(const json_value *a)
{
    for (const json_value *v = a->u.kids.head; v; v = v->next)
        if (v->type != JSON_STRING)
            return 0;
    return 1;
}

static size_t inst_term_values(const inst_term *t)
{
    return t->all && t->values->u.kids.n > PRE_HASALL ? PRE_HASALL : t->values->u.kids.n;
}

/* An instance field's $hasSome/$hasAll of strings only (a string column never
 * equals anything else; a $hasSome of none matches nothing, left as it is). */
static void inst_read(prefilter *pf, const json_value *k, size_t *nvalues)
{
    const struct inst_col *col = NULL;
    for (size_t i = 0; i < sizeof inst_cols / sizeof inst_cols[0] && !col; i++)
        if (field_is(k, inst_cols[i].field))
            col = &inst_cols[i];
    if (!col || !operators_of(k))
        return;
    for (const json_value *o = k->u.kids.head; o && pf->ninst < PRE_INST; o = o->next) {
        int all = field_is(o, "$hasAll");
        if ((!all && !field_is(o, "$hasSome")) || o->type != JSON_ARRAY || !o->u.kids.n || !all_strings(o))
            continue;
        inst_term t = {col->col, col->indexed, all, o, 20 + (int)*nvalues};
        if (*nvalues + inst_term_values(&t) > PRE_INST_VALUES)
            continue;
        *nvalues += inst_term_values(&t);
        pf->inst[pf->ninst++] = t;
    }
}

static void prefilter_read(prefilter *pf, const json_value *filter)
{
    size_t nvalues = 0;
    memset(pf, 0, sizeof *pf);
    pf->lead = -1;
    pf->lo[0] = pf->lo[1] = LLONG_MIN;
    pf->hi[0] = pf->hi[1] = LLONG_MAX;
    for (const json_value *k = filter ? filter->u.kids.head : NULL; k; k = k->next) {
        int which = field_is(k, "createdDate") ? 0 : field_is(k, "updatedDate") ? 1 : -1;
        for (int t = 0; t < PRE_TEXTS && which < 0; t++)
            if (field_is(k, pre_text_fields[t]))
                which = 2 + t;
        if (which < 0) {
            inst_read(pf, k, &nvalues);
            continue;
        }
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

static int bounded(const prefilter *pf, int which)
{
    return pf->lo[which] != LLONG_MIN || pf->hi[which] != LLONG_MAX;
}

/* " IN (?20, ?21)": the values of an instance term in SQL (of a $hasAll, its first). */
static void inst_values_sql(const inst_term *t, buf_t *b)
{
    size_t n = t->all ? 1 : inst_term_values(t);
    buf_adds(b, " IN (");
    for (size_t v = 0; v < n; v++)
        buf_printf(b, "%s?%d", v ? ", " : "", t->param + (int)v);
    buf_adds(b, ")");
}

/* How many instances have one of the term's values, counted by index up to EMU_QUERY_LEAD_MAX. */
static long long instances_with(emu_t *e, const inst_term *t)
{
    buf_t b;
    buf_init(&b, 0);
    buf_printf(&b, "SELECT count(*) FROM (SELECT 1 FROM instances WHERE %s", t->col);
    inst_values_sql(t, &b);
    buf_printf(&b, " LIMIT %d)", EMU_QUERY_LEAD_MAX);
    sqlite3_stmt *s = NULL;
    long long n = EMU_QUERY_LEAD_MAX;
    if (!b.failed && sqlite3_prepare_v2(e->db, b.data, (int)b.len, &s, NULL) == SQLITE_OK) {
        size_t v = 0;
        for (const json_value *x = t->values->u.kids.head; x && v < (t->all ? 1 : inst_term_values(t)); x = x->next)
            sqlite3_bind_text(s, t->param + (int)v++, x->u.str.s, (int)x->u.str.len, SQLITE_STATIC);
        if (sqlite3_step(s) == SQLITE_ROW)
            n = sqlite3_column_int64(s, 0);
        e->query_vm_steps += sqlite3_stmt_status(s, SQLITE_STMTSTATUS_VM_STEP, 0);
    }
    sqlite3_finalize(s);
    buf_free(&b);
    return n;
}

/* Picks the instance term with the fewest instances, when they are few: the
 * walk then reads their packages (by index) and sorts them, rather than
 * reading the reseller's packages in order until enough have one. Not with
 * an id or externalId to equal (fewer still). */
static void prefilter_lead(emu_t *e, prefilter *pf)
{
    long long fewest = EMU_QUERY_LEAD_MAX;
    for (int t = 0; t < pf->ninst && !pf->eq[0] && !pf->eq[2]; t++) {
        long long n = pf->inst[t].indexed ? instances_with(e, &pf->inst[t]) : EMU_QUERY_LEAD_MAX;
        if (n < fewest) {
            fewest = n;
            pf->lead = t;
        }
    }
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

/* ---- the walk ----
 *
 * A page costs what it shows, not what is stored. The reseller's packages are
 * read in the query's order from an index on (reseller, sort key), a chunk at
 * a time, each chunk starting past the last package read -- its sort keys and
 * seq, the position a cursor carries -- so a page, and each chunk of it after
 * other requests had the lock (emu_let_others_in), starts by index where the
 * last one ended. The prefilter's terms an index serves (a bound on the sort
 * key, an id or externalId) narrow the index search; the others come back as
 * a column, so that a chunk reads a bounded number of rows whatever the
 * filter. The packages that pass are rendered, and evaluated when there is a
 * filter. An instance term that few instances match leads instead
 * (prefilter_lead): the packages are those its index gives, sorted. */

typedef struct sortkey {
    int updated;   /* 0 = createdDate, 1 = updatedDate */
    int desc;
} sortkey;

/* Where a package stands in the sort order. */
typedef struct qpos {
    long long key[QUERY_MAX_SORT];
    long long seq;
} qpos;

typedef struct walk {
    emu_ctx *c;
    const json_value *filter;     /* evaluated on each package that passes the prefilter; NULL: none */
    const prefilter *pf;
    const sortkey *keys;
    int nkeys;
    int back;                     /* against the sort order (a prev cursor) */
    int counting;                 /* count the packages that pass the prefilter, render none */
    qpos at;                      /* the last package read: the walk goes on past it */
    long long newest;             /* the last seq when the query began: those after it are left out */
    long long skip, limit;        /* matches passed over (offset paging), then shown */
    int to_end;                   /* read on past the page, counting matches (offset paging's total) */
    int from_cursor;              /* went on from a next cursor: there are packages before the page */
    sqlite3_stmt *st[2];          /* see keyset_sql; [0] NULL with two sort keys */
    long long matched, evaluated, work, shown;
    int more;                     /* a match after the page */
    qpos first, last;             /* of the packages shown, in walk order */
    buf_t page;                   /* the packages shown, one after another */
    size_t *cut;                  /* package i of the page is page.data[cut[i] .. cut[i + 1]) */
    buf_t scratch;
} walk;

static int key_desc(const walk *w, int i)
{
    return w->keys[i < w->nkeys ? i : 0].desc ^ w->back;
}

/* A sort key's column; "+" keeps SQLite from reading its index when the walk is led by instances. */
static const char *key_col(const walk *w, int i)
{
    static const char *const cols[2][2] = {{"created", "updated"}, {"+created", "+updated"}};
    return cols[w->pf->lead >= 0][w->keys[i].updated];
}

/* Past w->at in walk order. With one sort key, in two statements, each an
 * index search that starts there exactly (SQLite seeks a row value on its
 * first column only, and would read again the packages of the same ms
 * before the position): [0] the rest of w->at's key, [1] the keys past it.
 * With two, the lexicographic terms, the first key's bound leading the index
 * search (the second key is sorted within a first key's packages anyway). */
static void keyset_sql(const walk *w, int which, buf_t *b)
{
    const char *lt0 = key_desc(w, 0) ? "<" : ">";
    if (w->nkeys == 1) {
        if (which == 0)
            buf_printf(b, " AND %s = ?10 AND seq %s ?12", key_col(w, 0), lt0);
        else
            buf_printf(b, " AND %s %s ?10", key_col(w, 0), lt0);
        return;
    }
    const char *c0 = key_col(w, 0), *c1 = key_col(w, 1), *lt1 = key_desc(w, 1) ? "<" : ">";
    buf_printf(b, " AND %s %s= ?10 AND (%s %s ?10 OR (%s = ?10 AND (%s %s ?11 OR (%s = ?11 AND seq %s ?12))))", c0,
               lt0, c0, lt0, c0, c1, lt1, c1, lt0);
}

static void inst_sql(const prefilter *pf, buf_t *b)
{
    static const char exists[] = " AND EXISTS(SELECT 1 FROM instances WHERE package_seq = packages.seq AND ";
    for (int t = 0; t < pf->ninst; t++) {
        const inst_term *it = &pf->inst[t];
        size_t n = inst_term_values(it);
        for (size_t v = 0; it->all && v < n; v++)
            buf_printf(b, "%s%s = ?%d)", exists, it->col, it->param + (int)v);
        if (it->all)
            continue;
        buf_printf(b, "%s%s", exists, it->col);
        inst_values_sql(it, b);
        buf_adds(b, ")");
    }
}

/* SELECT seq, the sort keys, passes: what the index holds, so that a walk
 * with nothing else to check reads no table row. The parameters are ?1 the
 * reseller, ?2-?5 the date bounds, ?6-?8 id, accountId, externalId, ?9 the
 * chunk, ?10-?12 the position, ?13 the newest seq, ?20 on the instance values. */
static void walk_sql(const walk *w, int which, buf_t *b)
{
    const prefilter *pf = w->pf;
    int k0 = w->keys[0].updated;
    int by_id = pf->eq[0] || pf->eq[2];          /* one package or a few: their own index, then sorted */
    buf_adds(b, "SELECT seq, ");
    for (int i = 0; i < w->nkeys; i++)
        buf_printf(b, "%s, ", key_col(w, i));
    buf_adds(b, "1");
    if (bounded(pf, !k0))
        buf_printf(b, " AND %s BETWEEN ?%d AND ?%d", k0 ? "created" : "updated", k0 ? 2 : 4, k0 ? 3 : 5);
    if (pf->eq[1])
        buf_adds(b, " AND account_id = ?7");
    inst_sql(pf, b);
    buf_printf(b, " FROM packages WHERE %sparent_account_id = ?1", by_id || pf->lead >= 0 ? "+" : "");
    if (pf->lead >= 0) {
        buf_printf(b, " AND seq IN (SELECT package_seq FROM instances WHERE %s", pf->inst[pf->lead].col);
        inst_values_sql(&pf->inst[pf->lead], b);
        buf_adds(b, ")");
    }
    if (bounded(pf, k0))
        buf_printf(b, " AND %s BETWEEN ?%d AND ?%d", key_col(w, 0), k0 ? 4 : 2, k0 ? 5 : 3);
    for (int t = 0; t < PRE_TEXTS; t += 2)
        if (pf->eq[t])
            buf_printf(b, " AND %s = ?%d", pre_text_cols[t], 6 + t);
    keyset_sql(w, which, b);
    buf_adds(b, " AND seq <= ?13 ORDER BY ");
    for (int i = 0; i < w->nkeys; i++)
        buf_printf(b, "%s %s, ", key_col(w, i), key_desc(w, i) ? "DESC" : "ASC");
    buf_printf(b, "seq %s LIMIT ?9", key_desc(w, 0) ? "DESC" : "ASC");
}

static void walk_bind(walk *w, sqlite3_stmt *s)
{
    const prefilter *pf = w->pf;
    sqlite3_bind_text(s, 1, w->c->parent, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 13, w->newest);
    for (int b = 0; b < 2; b++) {
        sqlite3_bind_int64(s, 2 + 2 * b, pf->lo[b]);
        sqlite3_bind_int64(s, 3 + 2 * b, pf->hi[b]);
    }
    for (int t = 0; t < PRE_TEXTS; t++)
        if (pf->eq[t])
            sqlite3_bind_text(s, 6 + t, pf->eq[t], (int)pf->eqlen[t], SQLITE_STATIC);
    for (int t = 0; t < pf->ninst; t++) {
        size_t n = inst_term_values(&pf->inst[t]), v = 0;
        for (const json_value *x = pf->inst[t].values->u.kids.head; v < n; x = x->next, v++)
            sqlite3_bind_text(s, pf->inst[t].param + (int)v, x->u.str.s, (int)x->u.str.len, SQLITE_STATIC);
    }
}

/* Before the first package of the walk. */
static void walk_start(walk *w)
{
    for (int i = 0; i < w->nkeys; i++)
        w->at.key[i] = key_desc(w, i) ? LLONG_MAX : LLONG_MIN;
    w->at.seq = key_desc(w, 0) ? LLONG_MAX : LLONG_MIN;
}

/* The newest package's seq: a query answers with the packages there were when
 * it began (its walks hand the lock over, and others may create more). */
static long long newest_seq(emu_t *e)
{
    sqlite3_stmt *s = emu_stmt(e, ST_PKG_LAST_SEQ);
    long long last = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return last;
}

static int walk_open(walk *w, emu_ctx *c, const json_value *filter, const prefilter *pf, const sortkey *keys,
                     int nkeys, int back)
{
    memset(w, 0, sizeof *w);
    w->c = c;
    w->newest = c->newest;
    w->filter = filter;
    w->pf = pf;
    w->keys = keys;
    w->nkeys = nkeys;
    w->back = back;
    buf_init(&w->page, 0);
    buf_init(&w->scratch, 0);
    walk_start(w);
    for (int which = nkeys == 1 ? 0 : 1; which < 2; which++) {
        walk_sql(w, which, &w->scratch);
        int rc = w->scratch.failed ? SQLITE_NOMEM
                                   : sqlite3_prepare_v2(c->e->db, w->scratch.data, (int)w->scratch.len,
                                                        &w->st[which], NULL);
        buf_reset(&w->scratch);
        if (rc != SQLITE_OK) {
            emu_error_response(c->resp, 500, "INTERNAL", "preparing the query: %s", sqlite3_errmsg(c->e->db));
            return -1;
        }
        walk_bind(w, w->st[which]);
    }
    return 0;
}

static void walk_close(walk *w)
{
    for (int i = 0; i < 2; i++) {
        sqlite3_finalize(w->st[i]);
        w->st[i] = NULL;
    }
    buf_free(&w->page);
    buf_free(&w->scratch);
    free(w->cut);
    w->cut = NULL;
}

/* Adds the package in scratch (rendered) or with this seq to the page. 0, or -1 out of memory. */
static int walk_show(walk *w, long long seq, int rendered)
{
    if (!w->cut && !(w->cut = calloc((size_t)w->limit + 1, sizeof *w->cut)))
        return -1;
    if (!w->shown++)
        w->first = w->at;
    w->last = w->at;
    if (rendered) {
        buf_add(&w->page, w->scratch.data, w->scratch.len);
    } else {
        json_writer jw;
        jw_init(&jw, &w->page);
        emu_render_package(w->c->e, seq, &jw);
    }
    w->cut[w->shown] = w->page.len;
    return w->page.failed ? -1 : 0;
}

enum { WALK_ON = 1, WALK_DONE = 0, WALK_FAILED = -1, WALK_OVER_BUDGET = -2 };

/* The package the walk is at passed the prefilter: evaluates, counts and shows it. */
static int walk_package(walk *w, long long seq)
{
    if (w->counting)
        return w->matched++, WALK_ON;
    if (w->filter) {
        json_writer jw;
        buf_reset(&w->scratch);
        jw_init(&jw, &w->scratch);
        w->work += EMU_QUERY_RENDER_UNITS;
        w->evaluated++;
        if (emu_render_package(w->c->e, seq, &jw) < 0)
            return WALK_ON;
        json_doc *pd = NULL;
        json_value *pkg = json_parse(w->scratch.data, w->scratch.len, EMU_MAX_JSON_DEPTH, &pd, NULL);
        int ok = pkg && emu_filter_match_counted(w->filter, pkg, &w->work);
        json_doc_free(pd);
        if (w->work > w->c->e->query_budget)
            return WALK_OVER_BUDGET;
        if (!ok)
            return WALK_ON;
    }
    if (++w->matched <= w->skip)
        return WALK_ON;
    if (w->shown == w->limit) {
        w->more = 1;
        return w->to_end ? WALK_ON : WALK_DONE;
    }
    return walk_show(w, seq, w->filter != NULL) < 0 ? WALK_FAILED : WALK_ON;
}

/* Reads one statement's rows from w->at until the chunk is done (*rows read,
 * or QUERY_EVAL_CHUNK units of work since `work`) or *r is not WALK_ON. 1 when
 * the statement ran out of rows. */
static int walk_rows(walk *w, sqlite3_stmt *s, int *rows, long long work, int *r)
{
    sqlite3_reset(s);
    for (int i = 0; i < w->nkeys; i++)
        sqlite3_bind_int64(s, 10 + i, w->at.key[i]);
    sqlite3_bind_int64(s, 12, w->at.seq);
    sqlite3_bind_int(s, 9, QUERY_SCAN_CHUNK - *rows);
    int rc = SQLITE_DONE;
    while (*r == WALK_ON && *rows < QUERY_SCAN_CHUNK && w->work - work < QUERY_EVAL_CHUNK &&
           (rc = sqlite3_step(s)) == SQLITE_ROW) {
        ++*rows;
        w->at.seq = sqlite3_column_int64(s, 0);
        for (int i = 0; i < w->nkeys; i++)
            w->at.key[i] = sqlite3_column_int64(s, 1 + i);
        if (sqlite3_column_int(s, 1 + w->nkeys))
            *r = walk_package(w, w->at.seq);
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        emu_error_response(w->c->resp, 500, "INTERNAL", "reading packages: %s", sqlite3_errmsg(w->c->e->db));
        *r = WALK_FAILED;
    }
    w->c->e->query_vm_steps += sqlite3_stmt_status(s, SQLITE_STMTSTATUS_VM_STEP, 1);
    w->c->e->query_fullscan_steps += sqlite3_stmt_status(s, SQLITE_STMTSTATUS_FULLSCAN_STEP, 1);
    sqlite3_reset(s);
    return *r == WALK_ON && rc == SQLITE_DONE;
}

/* One chunk from w->at: up to QUERY_SCAN_CHUNK rows and QUERY_EVAL_CHUNK units of evaluation. */
static int walk_chunk(walk *w, int *end)
{
    int r = WALK_ON, rows = 0;
    long long work = w->work;
    *end = (!w->st[0] || walk_rows(w, w->st[0], &rows, work, &r)) && walk_rows(w, w->st[1], &rows, work, &r);
    return r;
}

/* Walks until the page is full (or, to_end, the last package), chunk by
 * chunk, letting waiting requests in between. WALK_DONE, WALK_FAILED (the
 * response set) or WALK_OVER_BUDGET. */
static int walk_run(walk *w)
{
    for (;;) {
        int end, r = walk_chunk(w, &end);
        if (r != WALK_ON || end)
            return r == WALK_ON ? WALK_DONE : r;
        if (emu_let_others_in(w->c->e) < 0) {
            emu_error_response(w->c->resp, 500, "INTERNAL", "database busy");
            return WALK_FAILED;
        }
    }
}

/* The packages a filter cannot be ruled out on by its prefilter: what its
 * evaluation over all of them would render. -1 when the walk failed. */
static long long candidates(emu_ctx *c, const prefilter *pf, const sortkey *keys, int nkeys)
{
    walk w;
    long long n = -1;
    if (walk_open(&w, c, NULL, pf, keys, nkeys, 0) == 0) {
        w.counting = 1;
        if (walk_run(&w) == WALK_DONE)
            n = w.matched;
    }
    walk_close(&w);
    return n;
}

/* ---- the endpoint ---- */

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

#define RULED_OUT "by its top-level createdDate/updatedDate bounds, id/accountId/externalId $eq or $hasSome/$hasAll " \
                  "of strings on productInstances ids, status or countryCode"

/* Whether a filter's foreseen work over n candidates passes the budget. */
static int costly(emu_ctx *c, const json_value *filter, long long n)
{
    long long per = EMU_QUERY_RENDER_UNITS + emu_filter_weight(filter);
    return n > 0 && per > c->e->query_budget / n;
}

/* Refuses (a violation, returns 1) a filter whose foreseen work over n candidates passes the budget. */
static int over_budget(emu_ctx *c, const json_value *filter, long long n)
{
    long long budget = c->e->query_budget, weight = emu_filter_weight(filter);
    if (!costly(c, filter, n))
        return 0;
    emu_violation(c, "query.filter", "QUERY_TOO_COSTLY",
                  "this filter (%lld values to compare per package) over the %lld packages it cannot rule out "
                  RULED_OUT " would cost about %lld work units, over the emulator's query budget of %lld "
                  "(--query-budget); narrow it with such a bound, or split it",
                  weight, n, n * (EMU_QUERY_RENDER_UNITS + weight), budget); /* n, per: far below 2^31 each */
    return 1;
}

/* What a filtered query's evaluation will render: offset paging counts every
 * match (so evaluates all the candidates), a cursor page at least one.
 * Refuses (returns 1) what would pass the budget; -1 when the count failed
 * (the response set). */
static int refuse_foreseen(emu_ctx *c, const json_value *filter, const prefilter *pf, const sortkey *keys, int nkeys,
                           int offset_mode)
{
    if (!offset_mode && !costly(c, filter, 1))
        return 0;
    long long n = candidates(c, pf, keys, nkeys);
    return n < 0 ? -1 : over_budget(c, filter, n);
}

/* ---- cursors ----
 *
 * A cursor is the base64url of {"p": reseller, "f": filter, "s": sort, "k":
 * [sort keys..., seq], "b": true}: it carries the query, which is why a cursor
 * sent with filter or sort is refused, and the position of the package the
 * page went on from (b: the page before it), so a page costs the same
 * wherever it is and packages created between pages neither repeat nor shift
 * the rest. */

typedef struct cursor_in {
    json_doc *doc;
    const json_value *filter, *sort, *key;
    int back;
} cursor_in;

/* Decodes a cursor of this reseller. 0, or -1 when it is not one. */
static int cursor_read(emu_ctx *c, const char *s, cursor_in *out, buf_t *scratch)
{
    json_error jerr;
    json_value *cj = NULL;
    buf_reset(scratch);
    if (b64_decode(scratch, s, strlen(s)) == 0)
        cj = json_parse(scratch->data ? scratch->data : "", scratch->len, EMU_MAX_JSON_DEPTH, &out->doc, &jerr);
    const char *p = cj ? json_get_str(cj, "p") : NULL;
    const json_value *b = cj ? json_get(cj, "b") : NULL;
    if (!cj || cj->type != JSON_OBJECT || !p || strcmp(p, c->parent) || (b && b->type != JSON_BOOL))
        return -1;
    out->filter = json_get(cj, "f");
    out->sort = json_get(cj, "s");
    out->key = json_get(cj, "k");
    out->back = b && b->u.boolean;
    if (out->filter && out->filter->type == JSON_NULL)
        out->filter = NULL;
    if (out->sort && out->sort->type == JSON_NULL)
        out->sort = NULL;
    return 0;
}

/* The position a cursor carries: nkeys sort keys and a seq, whole numbers JSON keeps exact. */
static int cursor_position(const json_value *k, int nkeys, qpos *at)
{
    if (!k || k->type != JSON_ARRAY || k->u.kids.n != (size_t)nkeys + 1)
        return -1;
    int i = 0;
    for (const json_value *v = k->u.kids.head; v; v = v->next, i++) {
        if (v->type != JSON_NUMBER || !v->is_int || v->u.number < -9007199254740992.0 ||
            v->u.number > 9007199254740992.0)
            return -1;
        if (i < nkeys)
            at->key[i] = (long long)v->u.number;
        else
            at->seq = (long long)v->u.number;
    }
    return 0;
}

static void cursor_write(json_writer *w, const char *name, emu_ctx *c, const json_value *filter,
                         const json_value *sort, const qpos *at, int nkeys, int back, buf_t *scratch)
{
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
    jw_key(&cw, "k");
    jw_arr(&cw);
    for (int i = 0; i < nkeys; i++)
        jw_int(&cw, at->key[i]);
    jw_int(&cw, at->seq);
    jw_arr_end(&cw);
    if (back) {
        jw_key(&cw, "b");
        jw_bool(&cw, 1);
    }
    jw_obj_end(&cw);
    buf_reset(scratch);
    b64_encode(scratch, (const unsigned char *)cj.data, cj.len);
    buf_free(&cj);
    jw_key(w, name);
    jw_strn(w, scratch->data, scratch->len);
}

/* ---- the answer ---- */

/* The page's packages in the sort order (a walk backwards found them last first). */
static void write_packages(json_writer *jw, const walk *w)
{
    jw_key(jw, "packages");
    jw_arr(jw);
    for (long long i = 0; i < w->shown; i++) {
        long long k = w->back ? w->shown - 1 - i : i;
        jw_raw(jw, w->page.data + w->cut[k], w->cut[k + 1] - w->cut[k]);
    }
    jw_arr_end(jw);
}

/* cursors and hasNext. A page walked from a next cursor has packages before
 * it; one walked backwards from a prev cursor has packages after it. */
static void write_cursors(json_writer *jw, emu_ctx *c, const walk *w, const json_value *filter,
                          const json_value *sort, const qpos *from, buf_t *scratch)
{
    const qpos *head = w->back ? &w->last : &w->first, *tail = w->back ? &w->first : &w->last;
    int next = w->back ? 1 : w->more, prev = w->back ? w->more : w->from_cursor;
    if (!w->shown)
        head = tail = from;
    jw_key(jw, "cursors");
    jw_obj(jw);
    if (next && w->shown)
        cursor_write(jw, "next", c, filter, sort, tail, w->nkeys, 0, scratch);
    if (prev)
        cursor_write(jw, "prev", c, filter, sort, head, w->nkeys, 1, scratch);
    jw_obj_end(jw);
    jw_key(jw, "hasNext");
    jw_bool(jw, next && w->shown);
}

/* Reads the query's paging. 0, or -1 with a violation. */
static int read_paging(emu_ctx *c, const json_value *paging, const json_value *cpaging, long long *limit,
                       long long *offset, const char **cursor)
{
    if (paging) {
        if (read_int(c, paging, "limit", "query.paging.limit", 0, QUERY_MAX_OFFSET_LIMIT, 100, limit) < 0 ||
            read_int(c, paging, "offset", "query.paging.offset", 0, 1000000000, 0, offset) < 0)
            return -1;
    } else {
        if (read_int(c, cpaging, "limit", "query.cursorPaging.limit", 0, QUERY_MAX_CURSOR_LIMIT, 100, limit) < 0)
            return -1;
        json_value *cv = json_get(cpaging, "cursor");
        if (cv && cv->type != JSON_NULL) {
            if (cv->type != JSON_STRING) {
                emu_violation(c, "query.cursorPaging.cursor", "TYPE", "must be a string");
                return -1;
            }
            *cursor = cv->u.str.s;
        }
    }
    if (*limit == 0)
        *limit = 100;
    return 0;
}

static const json_value *non_null(const json_value *v)
{
    return v && v->type == JSON_NULL ? NULL : v;
}

/* Walks the page: offset paging passes over `offset` matches and counts them
 * all; a cursor page goes on from the cursor's position, or back before it
 * (a prev cursor) -- and a walk back that reaches the first package gives the
 * first page instead, as many as the limit, as offset 0 would. */
static int walk_page(walk *w, emu_ctx *c, const json_value *filter, const prefilter *pf, const sortkey *keys,
                     int nkeys, long long limit, long long offset, const qpos *from, int back)
{
    if (walk_open(w, c, filter, pf, keys, nkeys, back) < 0)
        return WALK_FAILED;
    w->limit = limit;
    w->skip = offset;
    w->to_end = offset >= 0;
    w->from_cursor = from && !back;
    if (from)
        w->at = *from;
    int r = walk_run(w);
    if (r != WALK_DONE || !back || w->more)
        return r;
    walk_close(w);
    return walk_page(w, c, filter, pf, keys, nkeys, limit, -1, NULL, 0);
}

void emu_api_query(emu_ctx *c)
{
    json_value *q = c->body ? json_get(c->body, "query") : NULL;
    cursor_in cur = {0};
    walk w = {0};
    buf_t scratch, out;
    buf_init(&scratch, 0);
    buf_init(&out, 0);
    if (!q || q->type != JSON_OBJECT) {
        emu_violation(c, "query", q ? "TYPE" : "REQUIRED_FIELD", "query is required and must be an object");
        emu_finish_violations(c);
        return;
    }
    const json_value *filter = non_null(json_get(q, "filter")), *sort = non_null(json_get(q, "sort"));
    const json_value *paging = non_null(json_get(q, "paging")), *cpaging = non_null(json_get(q, "cursorPaging"));
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
    if (read_paging(c, paging, cpaging, &limit, &offset, &cursor) < 0)
        goto violations;
    if (cursor) {
        if (filter || sort) {
            emu_violation(c, "query.cursorPaging.cursor", "INVALID_CURSOR",
                          "invalid cursor: a cursor already carries the filter and sort; do not send them with it");
            goto violations;
        }
        if (cursor_read(c, cursor, &cur, &scratch) < 0)
            goto bad_cursor;
        filter = cur.filter;
        sort = cur.sort;
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
    qpos from = {{0}, 0};
    if (cursor && cursor_position(cur.key, nkeys, &from) < 0)
        goto bad_cursor;

    c->e->query_vm_steps = c->e->query_fullscan_steps = 0;
    c->newest = newest_seq(c->e);
    prefilter pf;
    prefilter_read(&pf, filter);
    prefilter_lead(c->e, &pf);
    int r = filter ? refuse_foreseen(c, filter, &pf, keys, nkeys, offset_mode) : 0;
    if (r < 0)
        goto done;
    if (r)
        goto violations;
    r = walk_page(&w, c, filter, &pf, keys, nkeys, limit, offset_mode ? offset : -1, cursor ? &from : NULL,
                  cursor && cur.back);
    if (r == WALK_OVER_BUDGET) {
        long long n = candidates(c, &pf, keys, nkeys);
        if (n < 0)
            goto done;
        emu_violation(c, "query.filter", "QUERY_TOO_COSTLY",
                      "this filter passed the emulator's query budget of %lld work units (--query-budget) "
                      "after %lld of the %lld packages it cannot rule out " RULED_OUT "; narrow it with such a "
                      "bound or value, or split it",
                      c->e->query_budget, w.evaluated, n);
        goto violations;
    }
    if (r == WALK_FAILED)
        goto done;

    json_writer jw;
    jw_init(&jw, &out);
    jw_obj(&jw);
    jw_key(&jw, "metadata");
    jw_obj(&jw);
    jw_key(&jw, "count");
    jw_int(&jw, w.shown);
    if (offset_mode) {
        jw_key(&jw, "offset");
        jw_int(&jw, offset);
        jw_key(&jw, "total");
        jw_int(&jw, w.matched);
        jw_key(&jw, "tooManyToCount");
        jw_bool(&jw, 0);
    } else {
        write_cursors(&jw, c, &w, filter, sort, &from, &scratch);
    }
    jw_obj_end(&jw);
    write_packages(&jw, &w);
    jw_obj_end(&jw);
    emu_set_json(c->resp, 200, &out);
    goto done;
bad_cursor:
    emu_violation(c, "query.cursorPaging.cursor", "INVALID_CURSOR", "invalid cursor");
violations:
    emu_finish_violations(c);
done:
    walk_close(&w);
    buf_free(&out);
    buf_free(&scratch);
    json_doc_free(cur.doc);
}
