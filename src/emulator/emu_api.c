/*
 * emu_api.c -- the Resellers API endpoints and their business rules.
 *
 * Each handler runs inside the request's transaction (emu_core.c): it
 * validates input (collecting fieldViolations -> 400), checks the rules in
 * the order Wix documents them (-> 404/428 applicationError), and only then
 * writes. Any answer but 200 rolls the transaction back.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

#define MAX_PRODUCTS 1000

static int in_set(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (!strcmp(s, *set))
            return 1;
    return 0;
}

/* ---- input validation ---- */

/* Optional (or required) string field; NULL out when absent. 0 ok, -1 violation. */
static int v_str(emu_ctx *c, const json_value *obj, const char *key, const char *field, size_t maxlen, int required,
                 const char **out)
{
    json_value *v = json_get(obj, key);
    *out = NULL;
    if (!v || v->type == JSON_NULL) {
        if (required)
            emu_violation(c, field, "REQUIRED_FIELD", "%s is required", field);
        return required ? -1 : 0;
    }
    if (v->type != JSON_STRING) {
        emu_violation(c, field, "TYPE", "must be a string, not %s", json_type_name(v->type));
        return -1;
    }
    if (maxlen && v->u.str.len > maxlen) {
        emu_violation(c, field, "MAX_LENGTH", "must be at most %zu characters (got %zu)", maxlen, v->u.str.len);
        return -1;
    }
    if (memchr(v->u.str.s, 0, v->u.str.len)) {
        emu_violation(c, field, "FORMAT", "must not contain NUL characters");
        return -1;
    }
    *out = v->u.str.s;
    return 0;
}

static int v_guid(emu_ctx *c, const json_value *obj, const char *key, const char *field, int required,
                  const char **out)
{
    if (v_str(c, obj, key, field, 0, required, out) < 0)
        return -1;
    if (*out && !emu_is_guid(*out)) {
        emu_violation(c, field, "FORMAT", "must be a GUID (lowercase 8-4-4-4-12 hex), got '%.60s'", *out);
        *out = NULL;
        return -1;
    }
    return 0;
}

static int path_guid(emu_ctx *c, const char *value, const char *field)
{
    if (emu_is_guid(value))
        return 0;
    emu_violation(c, field, "FORMAT", "must be a GUID (lowercase 8-4-4-4-12 hex), got '%.60s'", value);
    return -1;
}

typedef struct req_cycle {
    int present;
    emu_cycle cy;          /* unit "" when cycleDuration.unit absent */
    int has_duration;
} req_cycle;

static int v_cycle(emu_ctx *c, const json_value *obj, const char *key, const char *field, req_cycle *out)
{
    static const char *const types[] = {"UNKNOWN", "ONE_TIME", "RECURRING", NULL};
    static const char *const units[] = {"UNKNOWN", "DAY", "WEEK", "MONTH", "YEAR", NULL};
    char f[96];
    memset(out, 0, sizeof *out);
    json_value *v = json_get(obj, key);
    if (!v || v->type == JSON_NULL)
        return 0;
    if (v->type != JSON_OBJECT) {
        emu_violation(c, field, "TYPE", "must be an object, not %s", json_type_name(v->type));
        return -1;
    }
    out->present = 1;
    const char *t;
    snprintf(f, sizeof f, "%s.type", field);
    if (v_str(c, v, "type", f, 0, 0, &t) < 0)
        return -1;
    if (t && !in_set(t, types)) {
        emu_violation(c, f, "ENUM", "must be one of UNKNOWN, ONE_TIME, RECURRING (got '%.40s')", t);
        return -1;
    }
    snprintf(out->cy.type, sizeof out->cy.type, "%s", t ? t : "UNKNOWN");
    json_value *d = json_get(v, "cycleDuration");
    if (d && d->type != JSON_NULL) {
        snprintf(f, sizeof f, "%s.cycleDuration", field);
        if (d->type != JSON_OBJECT) {
            emu_violation(c, f, "TYPE", "must be an object, not %s", json_type_name(d->type));
            return -1;
        }
        const char *u;
        snprintf(f, sizeof f, "%s.cycleDuration.unit", field);
        if (v_str(c, d, "unit", f, 0, 0, &u) < 0)
            return -1;
        if (u && !in_set(u, units)) {
            emu_violation(c, f, "ENUM", "must be one of UNKNOWN, DAY, WEEK, MONTH, YEAR (got '%.40s')", u);
            return -1;
        }
        if (u && strcmp(u, "UNKNOWN") != 0) {
            snprintf(out->cy.unit, sizeof out->cy.unit, "%s", u);
            out->has_duration = 1;
        }
        json_value *n = json_get(d, "count");
        out->cy.count = 1;
        if (n && n->type != JSON_NULL) {
            snprintf(f, sizeof f, "%s.cycleDuration.count", field);
            if (n->type != JSON_NUMBER || !n->is_int || n->u.number < 1 || n->u.number > 1000) {
                emu_violation(c, f, "TYPE", "must be a whole number from 1 to 1000");
                return -1;
            }
            out->cy.count = (int)n->u.number;
        }
    }
    return 0;
}

/* ---- rule helpers ---- */

static void cycle_str(const emu_cycle *cy, char *out, size_t n)
{
    if (!strcmp(cy->type, "RECURRING"))
        snprintf(out, n, "RECURRING/%s/%d", cy->unit[0] ? cy->unit : "?", cy->count);
    else
        snprintf(out, n, "%s", cy->type[0] ? cy->type : "UNKNOWN");
}

static void cycles_str(const emu_product *p, char *out, size_t n)
{
    size_t k = 0;
    out[0] = '\0';
    for (int i = 0; i < p->ncycles && k < n; i++) {
        char one[48];
        cycle_str(&p->cycles[i], one, sizeof one);
        k += (size_t)snprintf(out + k, n - k, "%s%s", i ? ", " : "", one);
    }
}

static int cycle_eq(const emu_cycle *a, const emu_cycle *b)
{
    if (strcmp(a->type, b->type))
        return 0;
    if (!strcmp(a->type, "RECURRING"))
        return !strcmp(a->unit, b->unit) && a->count == b->count;
    return 1;
}

static int product_supports(const emu_product *p, const emu_cycle *cy)
{
    for (int i = 0; i < p->ncycles; i++)
        if (cycle_eq(&p->cycles[i], cy))
            return 1;
    return 0;
}

/* Picks the cycle a new or adjusted instance gets. 0, or -1 with a response. */
static int choose_cycle(emu_ctx *c, const emu_product *p, const req_cycle *rc, emu_cycle *out)
{
    char have[256], want[64];
    if (!rc->present) {
        if (p->ncycles > 1) {
            emu_error_response(c->resp, 428, "MISSING_BILLING_CYCLE", "Product %s must receive a cycle upon creating.",
                               p->id);
            return -1;
        }
        *out = p->cycles[0];
        return 0;
    }
    cycles_str(p, have, sizeof have);
    cycle_str(&rc->cy, want, sizeof want);
    int type_known = 0;
    for (int i = 0; i < p->ncycles; i++)
        if (!strcmp(p->cycles[i].type, rc->cy.type))
            type_known = 1;
    if (!type_known || (!strcmp(rc->cy.type, "RECURRING") && !rc->has_duration)) {
        emu_error_response(c->resp, 428, "INVALID_BILLING_CYCLE",
                           "Product %s is allowed for those cycles: [%s] and the request had this contract details: %s",
                           p->id, have, want);
        return -1;
    }
    if (!product_supports(p, &rc->cy)) {
        emu_error_response(c->resp, 428, "INCOMPATIBLE_BILLING_CYCLE",
                           "Product %s cannot be used with cycle: %s, it is not one of [%s]", p->id, want, have);
        return -1;
    }
    *out = rc->cy;
    if (strcmp(out->type, "RECURRING") != 0) {
        out->unit[0] = '\0';
        out->count = 0;
    }
    return 0;
}

/* Site must exist and belong to owner. 0, or -1 with SITE_NOT_FOUND. */
static int check_site(emu_ctx *c, const char *site, const char *owner)
{
    sqlite3_stmt *s = emu_stmt(c->e, ST_SITE_GET);
    sqlite3_bind_text(s, 1, site, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW) {
        emu_error_response(c->resp, 404, "SITE_NOT_FOUND", "Site %s was not found.", site);
        return -1;
    }
    const char *actual = (const char *)sqlite3_column_text(s, 0);
    int mine = !strcmp(actual, owner);
    sqlite3_reset(s);
    if (!mine) {
        /* Wix's message goes on ", but by <owner>": another reseller's account id is not ours to show. */
        emu_error_response(c->resp, 404, "SITE_NOT_FOUND", "Site %s is not owned by %s.", site, owner);
        return -1;
    }
    return 0;
}

typedef struct live_inst {
    char id[EMU_ID_LEN + 1];
    char product[EMU_ID_LEN + 1];
    char type[64];
} live_inst;

/* Lists live instances on a site (at most max). Returns the count. */
static int live_on_site(emu_ctx *c, const char *site, live_inst *out, int max)
{
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_LIVE_ON_SITE);
    sqlite3_bind_text(s, 1, site, -1, SQLITE_STATIC);
    int n = 0;
    while (n < max && sqlite3_step(s) == SQLITE_ROW) {
        snprintf(out[n].id, sizeof out[n].id, "%s", (const char *)sqlite3_column_text(s, 0));
        snprintf(out[n].product, sizeof out[n].product, "%s", (const char *)sqlite3_column_text(s, 1));
        snprintf(out[n].type, sizeof out[n].type, "%s", (const char *)sqlite3_column_text(s, 2));
        n++;
    }
    sqlite3_reset(s);
    return n;
}

#define MAX_LIVE 256

static int site_has_type(emu_ctx *c, const char *site, const char *type, const char *except_instance)
{
    live_inst live[MAX_LIVE];
    int n = live_on_site(c, site, live, MAX_LIVE);
    for (int i = 0; i < n; i++)
        if (!strcmp(live[i].type, type) && (!except_instance || strcmp(live[i].id, except_instance)))
            return 1;
    return 0;
}

static long long count_live_product(emu_ctx *c, const char *product)
{
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_COUNT_PRODUCT);
    sqlite3_bind_text(s, 1, product, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, c->parent, -1, SQLITE_STATIC);
    long long n = sqlite3_step(s) == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_reset(s);
    return n;
}

static void touch_package(emu_ctx *c, long long seq)
{
    sqlite3_stmt *s = emu_stmt(c->e, ST_PKG_TOUCH);
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_int64(s, 2, c->now);
    sqlite3_step(s);
}

static void set_site(emu_ctx *c, const char *instance, const char *site)
{
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_SET_SITE);
    sqlite3_bind_text(s, 1, instance, -1, SQLITE_STATIC);
    if (site)
        sqlite3_bind_text(s, 2, site, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, c->now);
    sqlite3_step(s);
}

/* A product that needs another on its site (a domain needs a Premium plan)
 * stops when the last one leaves: it is disconnected (becomes floating). */
static void release_dependents(emu_ctx *c, const char *site)
{
    if (!site || !*site)
        return;
    live_inst live[MAX_LIVE];
    int n = live_on_site(c, site, live, MAX_LIVE);
    for (int i = 0; i < n; i++) {
        const emu_product *p = emu_product_find(&c->e->cat, live[i].product);
        if (!p || !p->requires_type)
            continue;
        int found = 0;
        for (int j = 0; j < n && !found; j++)
            found = !strcmp(live[j].type, p->requires_type);
        if (found)
            continue;
        emu_instance dep;
        if (emu_instance_get(c->e, live[i].id, &dep) < 0)
            continue;
        set_site(c, dep.instance_id, NULL);
        touch_package(c, dep.package_seq);
    }
}

static void reply_package(emu_ctx *c, long long seq, const char *key)
{
    buf_t b;
    buf_init(&b, 0);
    json_writer w;
    jw_init(&w, &b);
    jw_obj(&w);
    if (c->idem_key)
        jw_kstr(&w, "idempotencyKey", c->idem_key);
    jw_key(&w, key);
    if (emu_render_package(c->e, seq, &w) < 0) {
        buf_free(&b);
        emu_error_response(c->resp, 500, "INTERNAL", "package vanished");
        return;
    }
    jw_obj_end(&w);
    emu_set_json(c->resp, 200, &b);
}

static int visible(emu_ctx *c, const char *account, const char *parent)
{
    return !strcmp(account, c->account) || !strcmp(parent, c->account);
}

/* ---- Create Package (V1 and V2) ---- */

typedef struct new_inst {
    const emu_product *p;
    const char *site, *country, *discount, *reference;
    req_cycle rc;
    emu_cycle cy;
} new_inst;

static void api_create(emu_ctx *c, int v2)
{
    const json_value *b = c->body;
    new_inst *items = NULL;
    if (!b) {
        emu_violation(c, "products", "REQUIRED_FIELD", "products is required");
        emu_finish_violations(c);
        return;
    }
    const char *external;
    v_str(c, b, "externalId", "externalId", 100, 0, &external);
    json_value *prods = json_get(b, "products");
    if (!prods || prods->type == JSON_NULL) {
        emu_violation(c, "products", "REQUIRED_FIELD", "products is required");
    } else if (prods->type != JSON_ARRAY) {
        emu_violation(c, "products", "TYPE", "must be an array, not %s", json_type_name(prods->type));
    } else if (prods->u.kids.n == 0 || prods->u.kids.n > MAX_PRODUCTS) {
        emu_violation(c, "products", "SIZE", "must hold 1 to %d products (got %zu)", MAX_PRODUCTS, prods->u.kids.n);
    }
    if (!prods || prods->type != JSON_ARRAY || prods->u.kids.n == 0 || prods->u.kids.n > MAX_PRODUCTS) {
        emu_finish_violations(c);
        return;
    }
    size_t n = prods->u.kids.n;
    items = calloc(n, sizeof *items);
    if (!items) {
        emu_error_response(c->resp, 500, "INTERNAL", "out of memory");
        return;
    }
    const char **ids = calloc(n, sizeof *ids);
    if (!ids) {
        free(items);
        emu_error_response(c->resp, 500, "INTERNAL", "out of memory");
        return;
    }
    size_t i = 0;
    for (json_value *pv = prods->u.kids.head; pv; pv = pv->next, i++) {
        char f[96];
        if (pv->type != JSON_OBJECT) {
            snprintf(f, sizeof f, "products[%zu]", i);
            emu_violation(c, f, "TYPE", "must be an object, not %s", json_type_name(pv->type));
            continue;
        }
        new_inst *it = &items[i];
        snprintf(f, sizeof f, "products[%zu].catalogProductId", i);
        v_guid(c, pv, "catalogProductId", f, 1, &ids[i]);
        snprintf(f, sizeof f, "products[%zu].countryCode", i);
        if (v_str(c, pv, "countryCode", f, 0, v2, &it->country) == 0 && it->country &&
            (strlen(it->country) != 2 || !isalpha((unsigned char)it->country[0]) ||
             !isalpha((unsigned char)it->country[1]))) {
            emu_violation(c, f, "FORMAT", "must be a two-letter ISO-3166 country code, got '%.20s'", it->country);
        }
        snprintf(f, sizeof f, "products[%zu].siteId", i);
        v_guid(c, pv, "siteId", f, 0, &it->site);
        snprintf(f, sizeof f, "products[%zu].discountCode", i);
        v_str(c, pv, "discountCode", f, 25, 0, &it->discount);
        snprintf(f, sizeof f, "products[%zu].referenceProductInstanceId", i);
        v_guid(c, pv, "referenceProductInstanceId", f, 0, &it->reference);
        snprintf(f, sizeof f, "products[%zu].billingInfo", i);
        v_cycle(c, pv, "billingInfo", f, &it->rc);
    }
    if (emu_finish_violations(c))
        goto done;

    /* Catalog checks, in the order Wix lists them. */
    for (i = 0; i < n; i++) {
        items[i].p = emu_product_find(&c->e->cat, ids[i]);
        if (!items[i].p) {
            emu_error_response(c->resp, 404, "PRODUCT_NOT_FOUND", "Product id %s not found in catalog.", ids[i]);
            goto done;
        }
    }
    char bad[1024] = "";
    size_t k = 0;
    for (i = 0; i < n; i++)
        if (!items[i].p->resellable && k < sizeof bad)
            k += (size_t)snprintf(bad + k, sizeof bad - k, "%s%s", k ? ", " : "", ids[i]);
    if (k) {
        emu_error_response(c->resp, 428, "INVALID_PRODUCTS", "Invalid products: [%s]", bad);
        goto done;
    }
    for (i = 0; i < n; i++) {
        if (!items[i].p->has_settings) {
            emu_error_response(c->resp, 428, "PRODUCT_SETTINGS_NOT_FOUND", "Product doesn't have any settings %s",
                               ids[i]);
            goto done;
        }
        if (choose_cycle(c, items[i].p, &items[i].rc, &items[i].cy) < 0)
            goto done;
    }
    for (i = 0; i < n; i++) {
        new_inst *it = &items[i];
        if (!it->site)
            continue;
        if (check_site(c, it->site, c->account) < 0)
            goto done;
        for (size_t j = 0; j < i; j++) {
            if (items[j].site && !strcmp(items[j].site, it->site) && items[j].p == it->p) {
                emu_error_response(c->resp, 428, "MULTIPLE_PRODUCT_ASSIGNMENTS",
                                   "Trying to assign products: [%s] that cannot be assigned simultaneously to the "
                                   "same site %s",
                                   it->p->id, it->site);
                goto done;
            }
        }
    }
    for (i = 0; i < n; i++) {
        new_inst *it = &items[i];
        if (!it->site || !it->p->one_per_site)
            continue;
        int taken = site_has_type(c, it->site, it->p->type, NULL);
        for (size_t j = 0; j < i && !taken; j++)
            taken = items[j].site && !strcmp(items[j].site, it->site) && !strcmp(items[j].p->type, it->p->type);
        if (taken) {
            emu_error_response(c->resp, 428, "PRODUCT_TYPE_ALREADY_ASSIGNED",
                               "Product type: %s is allowed only as one instance per site and site %s already has one "
                               "product of that type",
                               it->p->type, it->site);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        new_inst *it = &items[i];
        if (it->site && it->p->requires_type && !site_has_type(c, it->site, it->p->requires_type, NULL)) {
            emu_error_response(c->resp, 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "Site %s is not compatible with product %s",
                               it->site, it->p->id);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        const emu_product *p = items[i].p;
        if (!p->limit)
            continue;
        long long current = count_live_product(c, p->id), adding = 0;
        for (size_t j = 0; j < n; j++)
            adding += items[j].p == p;
        if (current + adding > p->limit) {
            emu_error_response(c->resp, 428, "PRODUCT_LIMIT_EXCEEDED",
                               "Limit for product %s exceeded, number of current subscriptions %lld", p->id, current);
            goto done;
        }
    }
    for (i = 0; i < n; i++) {
        const char *ref = items[i].reference;
        if (!ref)
            continue;
        emu_instance ri;
        if (emu_instance_get(c->e, ref, &ri) < 0 || !visible(c, ri.pkg_account, ri.pkg_parent)) {
            emu_error_response(c->resp, 428, "PRODUCT_INSTANCE_NOT_FOUND", "Product instance with id %s was not found.",
                               ref);
            goto done;
        }
        if (strcmp(ri.status, "PENDING") && strcmp(ri.status, "ENABLED")) {
            emu_error_response(c->resp, 428, "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS",
                               "Product instance with id %s is with incompatible status %s.", ref, ri.status);
            goto done;
        }
        const emu_product *rp = emu_product_find(&c->e->cat, ri.product_id);
        if (!rp || !rp->can_be_reference) {
            emu_error_response(c->resp, 428, "INVALID_REFERENCE_PRODUCT",
                               "Product instance %s (product %s) cannot serve as a reference product.", ref,
                               ri.product_id);
            goto done;
        }
        int reused = ri.used_as_reference;
        for (size_t j = 0; j < i && !reused; j++)
            reused = items[j].reference && !strcmp(items[j].reference, ref);
        if (reused) {
            emu_error_response(c->resp, 428, "REFERENCE_PRODUCT_INSTANCE_ALREADY_USED",
                               "Product instance %s was already used as a reference.", ref);
            goto done;
        }
    }

    /* All rules passed: write. */
    char pkg_id[EMU_ID_LEN + 1];
    emu_uuid(c->e, pkg_id);
    sqlite3_stmt *s = emu_stmt(c->e, ST_PKG_INSERT);
    sqlite3_bind_text(s, 1, pkg_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, c->account, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, c->parent, -1, SQLITE_STATIC);
    if (external)
        sqlite3_bind_text(s, 4, external, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, c->now);
    if (sqlite3_step(s) != SQLITE_DONE)
        goto dberr;
    long long seq = sqlite3_last_insert_rowid(c->e->db);
    for (i = 0; i < n; i++) {
        new_inst *it = &items[i];
        char iid[EMU_ID_LEN + 1], cc[3] = "";
        emu_uuid(c->e, iid);
        s = emu_stmt(c->e, ST_INST_INSERT);
        sqlite3_bind_text(s, 1, iid, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(s, 2, seq);
        sqlite3_bind_int64(s, 3, (long long)i);
        if (it->site)
            sqlite3_bind_text(s, 4, it->site, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 5, it->p->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 6, it->p->type, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 7, it->cy.type, -1, SQLITE_TRANSIENT);
        if (it->cy.unit[0]) {
            sqlite3_bind_text(s, 8, it->cy.unit, -1, SQLITE_TRANSIENT);
            sqlite3_bind_int(s, 9, it->cy.count);
        }
        if (it->country) {
            cc[0] = (char)toupper((unsigned char)it->country[0]);
            cc[1] = (char)toupper((unsigned char)it->country[1]);
            sqlite3_bind_text(s, 10, cc, -1, SQLITE_TRANSIENT);
        }
        if (it->discount)
            sqlite3_bind_text(s, 11, it->discount, -1, SQLITE_STATIC);
        if (it->reference)
            sqlite3_bind_text(s, 12, it->reference, -1, SQLITE_STATIC);
        if (it->p->expires_days)
            sqlite3_bind_int64(s, 13, c->now + (long long)it->p->expires_days * 86400000LL);
        sqlite3_bind_int64(s, 14, c->now);
        if (c->e->enable_delay_ms >= 0) {
            sqlite3_bind_int64(s, 15, c->now + c->e->enable_delay_ms);
            emu_store_schedule(c->e, c->now + c->e->enable_delay_ms);
        }
        sqlite3_bind_text(s, 16, it->p->delivery, -1, SQLITE_STATIC);
        if (!strcmp(it->p->delivery, "FAILED"))
            sqlite3_bind_text(s, 17, it->p->failure_code, -1, SQLITE_STATIC);
        if (sqlite3_step(s) != SQLITE_DONE)
            goto dberr;
        if (it->reference) {
            s = emu_stmt(c->e, ST_INST_MARK_REF);
            sqlite3_bind_text(s, 1, it->reference, -1, SQLITE_STATIC);
            if (sqlite3_step(s) != SQLITE_DONE)
                goto dberr;
        }
    }
    reply_package(c, seq, "package");
    goto done;
dberr:
    emu_error_response(c->resp, 500, "INTERNAL", "database error: %s", sqlite3_errmsg(c->e->db));
done:
    free(ids);
    free(items);
}

/* ---- package endpoints ---- */

static int find_package(emu_ctx *c, const char *id, const char *field, long long *seq)
{
    char account[EMU_ID_LEN + 1], parent[EMU_ID_LEN + 1];
    if (path_guid(c, id, field) < 0) {
        emu_finish_violations(c);
        return -1;
    }
    if (emu_package_lookup(c->e, id, seq, account, parent) < 0 || !visible(c, account, parent)) {
        emu_error_response(c->resp, 404, "PACKAGE_NOT_FOUND", "Package with id %s was not found.", id);
        return -1;
    }
    return 0;
}

static void api_get(emu_ctx *c)
{
    long long seq;
    if (find_package(c, c->seg[3], "id", &seq) == 0)
        reply_package(c, seq, "package");
}

static void set_status(emu_ctx *c, const char *instance, const char *status)
{
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_SET_STATUS);
    sqlite3_bind_text(s, 1, instance, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, status, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, c->now);
    sqlite3_step(s);
}

/* Cancels one instance (no-op when already canceled); releases dependents. */
static void cancel_instance(emu_ctx *c, const emu_instance *in)
{
    if (!strcmp(in->status, "CANCELED"))
        return;
    set_status(c, in->instance_id, "CANCELED");
    touch_package(c, in->package_seq);
    release_dependents(c, in->site_id);
}

static void api_cancel_package(emu_ctx *c)
{
    long long seq;
    if (find_package(c, c->seg[3], "id", &seq) < 0)
        return;
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_OF_PKG);
    sqlite3_bind_int64(s, 1, seq);
    char (*ids)[EMU_ID_LEN + 1] = NULL;
    size_t n = 0, cap = 0;
    while (sqlite3_step(s) == SQLITE_ROW) {
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            void *p = realloc(ids, cap * sizeof *ids);
            if (!p) {
                free(ids);
                emu_error_response(c->resp, 500, "INTERNAL", "out of memory");
                return;
            }
            ids = p;
        }
        snprintf(ids[n++], EMU_ID_LEN + 1, "%s", (const char *)sqlite3_column_text(s, 0));
    }
    sqlite3_reset(s);
    for (size_t i = 0; i < n; i++) {
        emu_instance in;
        if (emu_instance_get(c->e, ids[i], &in) == 0)
            cancel_instance(c, &in);
    }
    free(ids);
    reply_package(c, seq, "package");
}

static void api_set_external_id(emu_ctx *c)
{
    const char *ext = c->seg[5];
    long long seq;
    size_t len = strlen(ext);
    if (len == 0 || len > 100) {
        emu_violation(c, "externalId", "MAX_LENGTH", "must be 1 to 100 characters (got %zu)", len);
        emu_finish_violations(c);
        return;
    }
    if (find_package(c, c->seg[4], "packageId", &seq) < 0)
        return;
    sqlite3_stmt *s = emu_stmt(c->e, ST_PKG_SET_EXT);
    sqlite3_bind_int64(s, 1, seq);
    sqlite3_bind_text(s, 2, ext, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 3, c->now);
    sqlite3_step(s);
    c->idem_key = NULL; /* this endpoint takes no body and echoes no key */
    reply_package(c, seq, "updatedPackage");
}

/* ---- instance endpoints ---- */

static int find_instance(emu_ctx *c, emu_instance *in)
{
    const char *id = c->seg[4];
    if (path_guid(c, id, "instanceId") < 0) {
        emu_finish_violations(c);
        return -1;
    }
    if (emu_instance_get(c->e, id, in) < 0 || !visible(c, in->pkg_account, in->pkg_parent)) {
        emu_error_response(c->resp, 428, "PRODUCT_INSTANCE_NOT_FOUND", "Product instance with id %s was not found.", id);
        return -1;
    }
    return 0;
}

static int require_changeable(emu_ctx *c, const emu_instance *in)
{
    if (!strcmp(in->status, "CANCELED") || !strcmp(in->status, "FAILED")) {
        emu_error_response(c->resp, 428, "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS",
                           "Product instance with id %s is with incompatible status %s.", in->instance_id, in->status);
        return -1;
    }
    return 0;
}

static void api_assign(emu_ctx *c)
{
    emu_instance in;
    const char *site = c->seg[5];
    if (path_guid(c, site, "siteId") < 0) {
        emu_finish_violations(c);
        return;
    }
    if (find_instance(c, &in) < 0 || require_changeable(c, &in) < 0)
        return;
    if (!strcmp(in.site_id, site)) {
        reply_package(c, in.package_seq, "package");
        return;
    }
    const emu_product *p = emu_product_find(&c->e->cat, in.product_id);
    if (check_site(c, site, in.pkg_account) < 0)
        return;
    if (p && p->one_per_site && site_has_type(c, site, p->type, in.instance_id)) {
        emu_error_response(c->resp, 428, "PRODUCT_TYPE_ALREADY_ASSIGNED",
                           "Product type: %s is allowed only as one instance per site and site %s already has one "
                           "product of that type",
                           p->type, site);
        return;
    }
    if (p && p->requires_type && !site_has_type(c, site, p->requires_type, NULL)) {
        emu_error_response(c->resp, 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "Site %s is not compatible with product %s",
                           site, p->id);
        return;
    }
    set_site(c, in.instance_id, site);
    touch_package(c, in.package_seq);
    release_dependents(c, in.site_id);
    reply_package(c, in.package_seq, "package");
}

static void api_unassign(emu_ctx *c)
{
    emu_instance in;
    if (find_instance(c, &in) < 0 || require_changeable(c, &in) < 0)
        return;
    if (in.site_id[0]) {
        set_site(c, in.instance_id, NULL);
        touch_package(c, in.package_seq);
        release_dependents(c, in.site_id);
    }
    reply_package(c, in.package_seq, "package");
}

static void api_adjust(emu_ctx *c)
{
    emu_instance in;
    const json_value *b = c->body;
    const char *pid = NULL, *discount = NULL;
    req_cycle rc = {0};
    if (b) {
        v_guid(c, b, "catalogProductId", "catalogProductId", 0, &pid);
        v_str(c, b, "discountCode", "discountCode", 25, 0, &discount);
        v_cycle(c, b, "billingInfo", "billingInfo", &rc);
    }
    if (emu_finish_violations(c) || find_instance(c, &in) < 0)
        return;
    if (!pid && !rc.present) {
        emu_error_response(c->resp, 428, "MISSING_PRODUCT_DETAILS",
                           "catalogProductId not provided; send catalogProductId or billingInfo.");
        return;
    }
    if (require_changeable(c, &in) < 0)
        return;
    if (rc.present && !strcmp(rc.cy.type, "RECURRING") && !rc.has_duration) {
        emu_error_response(c->resp, 428, "MISSING_PRODUCT_DETAILS",
                           "cycleDuration not provided; required for RECURRING billing types.");
        return;
    }
    const emu_product *cur = emu_product_find(&c->e->cat, in.product_id);
    const emu_product *target = cur;
    if (pid) {
        target = emu_product_find(&c->e->cat, pid);
        if (!target) {
            emu_error_response(c->resp, 404, "PRODUCT_NOT_FOUND", "Product id %s not found in catalog.", pid);
            return;
        }
        if (!target->resellable) {
            emu_error_response(c->resp, 428, "INVALID_PRODUCTS", "Invalid products: [%s]", pid);
            return;
        }
        if (!target->has_settings) {
            emu_error_response(c->resp, 428, "PRODUCT_SETTINGS_NOT_FOUND", "Product doesn't have any settings %s", pid);
            return;
        }
        if (!cur || strcmp(cur->type, target->type) != 0) {
            emu_error_response(c->resp, 428, "INCOMPATIBLE_PRODUCT",
                               "Cannot change asset from product of type %s with id %s to product with id: %s",
                               cur ? cur->type : "?", in.product_id, pid);
            return;
        }
    }
    if (!target) {
        emu_error_response(c->resp, 428, "PRODUCT_NOT_FOUND", "Product id %s not found in catalog.", in.product_id);
        return;
    }
    emu_cycle cy;
    if (rc.present) {
        if (choose_cycle(c, target, &rc, &cy) < 0)
            return;
    } else if (in.billing.type[0] && product_supports(target, &in.billing)) {
        cy = in.billing;
    } else if (choose_cycle(c, target, &rc, &cy) < 0) {
        return;
    }
    if (target != cur) {
        if (target->limit && count_live_product(c, target->id) + 1 > target->limit) {
            emu_error_response(c->resp, 428, "PRODUCT_LIMIT_EXCEEDED",
                               "Limit for product %s exceeded, number of current subscriptions %lld", target->id,
                               count_live_product(c, target->id));
            return;
        }
        if (in.site_id[0] && target->requires_type && !site_has_type(c, in.site_id, target->requires_type, NULL)) {
            emu_error_response(c->resp, 428, "PRODUCT_NOT_SUPPORTED_ON_SITE",
                               "Site %s is not compatible with product %s", in.site_id, target->id);
            return;
        }
    }
    if (target == cur && cycle_eq(&cy, &in.billing)) {
        reply_package(c, in.package_seq, "package"); /* already there: nothing changes */
        return;
    }
    sqlite3_stmt *s = emu_stmt(c->e, ST_INST_ADJUST);
    sqlite3_bind_text(s, 1, in.instance_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, target->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, target->type, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, cy.type, -1, SQLITE_TRANSIENT);
    if (cy.unit[0]) {
        sqlite3_bind_text(s, 5, cy.unit, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int(s, 6, cy.count);
    }
    if (discount && pid)
        sqlite3_bind_text(s, 7, discount, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 8, c->now);
    sqlite3_step(s);
    touch_package(c, in.package_seq);
    reply_package(c, in.package_seq, "package");
}

static void api_cancel_instance(emu_ctx *c)
{
    emu_instance in;
    if (find_instance(c, &in) < 0)
        return;
    cancel_instance(c, &in);
    reply_package(c, in.package_seq, "package");
}

void emu_api_dispatch(emu_ctx *c, int route)
{
    switch (route) {
    case R_CREATE_V2: api_create(c, 1); break;
    case R_CREATE_V1: api_create(c, 0); break;
    case R_QUERY: emu_api_query(c); break;
    case R_GET: api_get(c); break;
    case R_CANCEL_PKG: api_cancel_package(c); break;
    case R_SET_EXT: api_set_external_id(c); break;
    case R_ASSIGN: api_assign(c); break;
    case R_UNASSIGN: api_unassign(c); break;
    case R_ADJUST: api_adjust(c); break;
    case R_CANCEL_INST: api_cancel_instance(c); break;
    default: emu_error_response(c->resp, 404, "NOT_FOUND", "no such endpoint");
    }
}
