/*
 * emu_catalog.c -- the emulator's product catalog and seed accounts, from YAML.
 *
 * Strict: unknown keys, wrong types, bad GUIDs and unknown enum values are
 * errors reported as file:line:col.
 */
#include <stdlib.h>
#include <string.h>

#include "../yaml/ytree.h"
#include "emu_internal.h"

static const char *const product_keys[] = {"id", "name", "type", "cycles", "one_per_site", "requires_type",
                                           "limit", "resellable", "has_settings", "can_be_reference",
                                           "delivery", "failure_code", "expires_days", NULL};
static const char *const cycle_keys[] = {"type", "unit", "count", NULL};
static const char *const account_keys[] = {"id", "parent", "type", "name", "sites", NULL};
static const char *const site_keys[] = {"id", "name", NULL};
static const char *const top_keys[] = {"products", "accounts", NULL};

static int one_of(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (!strcmp(s, *set))
            return 1;
    return 0;
}

static int get_guid(ydoc *d, ynode *n, const char *field, char out[EMU_ID_LEN + 1], char *err, size_t errlen)
{
    const char *s;
    if (ynode_str(d, n, field, &s, err, errlen) < 0)
        return -1;
    if (!emu_is_guid(s))
        return yerr(d, n, err, errlen, "%s: '%s' is not a lowercase GUID (8-4-4-4-12 hex)", field, s);
    memcpy(out, s, EMU_ID_LEN + 1);
    return 0;
}

static int get_dup(ydoc *d, ynode *n, const char *field, char **out, char *err, size_t errlen)
{
    const char *s;
    if (ynode_str(d, n, field, &s, err, errlen) < 0)
        return -1;
    *out = strdup(s);
    return *out ? 0 : yerr(d, n, err, errlen, "out of memory");
}

static int load_cycle(ydoc *d, ynode *n, emu_cycle *c, char *err, size_t errlen)
{
    static const char *const types[] = {"ONE_TIME", "RECURRING", NULL};
    static const char *const units[] = {"DAY", "WEEK", "MONTH", "YEAR", NULL};
    if (ynode_expect(d, n, Y_MAP, "cycles[]", err, errlen) < 0 ||
        ymap_check_keys(d, n, cycle_keys, "a billing cycle", err, errlen) < 0)
        return -1;
    memset(c, 0, sizeof *c);
    ynode *t = ymap_get(n, "type");
    if (!t)
        return yerr(d, n, err, errlen, "cycles[]: 'type' is required");
    const char *s;
    if (ynode_str(d, t, "type", &s, err, errlen) < 0)
        return -1;
    if (!one_of(s, types))
        return yerr(d, t, err, errlen, "type: '%s' is not ONE_TIME or RECURRING", s);
    strcpy(c->type, s);
    ynode *u = ymap_get(n, "unit");
    ynode *k = ymap_get(n, "count");
    if (!strcmp(s, "RECURRING")) {
        if (!u)
            return yerr(d, n, err, errlen, "cycles[]: a RECURRING cycle needs 'unit'");
        if (ynode_str(d, u, "unit", &s, err, errlen) < 0)
            return -1;
        if (!one_of(s, units))
            return yerr(d, u, err, errlen, "unit: '%s' is not DAY, WEEK, MONTH or YEAR", s);
        strcpy(c->unit, s);
        long long cnt = 1;
        if (k && ynode_int(d, k, "count", 1, 120, &cnt, err, errlen) < 0)
            return -1;
        c->count = (int)cnt;
    } else if (u || k) {
        return yerr(d, u ? u : k, err, errlen, "a ONE_TIME cycle has no unit or count");
    }
    return 0;
}

static int load_product(ydoc *d, ynode *n, emu_product *p, char *err, size_t errlen)
{
    static const char *const deliveries[] = {"ENABLED", "AWAITING_ACTION", "FAILED", NULL};
    static const char *const failures[] = {"UNKNOWN", "DELIVERY_TIMEOUT", "EXTERNAL_FAILURE", NULL};
    if (ynode_expect(d, n, Y_MAP, "products[]", err, errlen) < 0 ||
        ymap_check_keys(d, n, product_keys, "a product", err, errlen) < 0)
        return -1;
    p->resellable = 1;
    p->has_settings = 1;
    ynode *v;
    if (!(v = ymap_get(n, "id")))
        return yerr(d, n, err, errlen, "products[]: 'id' is required");
    if (get_guid(d, v, "id", p->id, err, errlen) < 0)
        return -1;
    if (!(v = ymap_get(n, "name")))
        return yerr(d, n, err, errlen, "products[]: 'name' is required");
    if (get_dup(d, v, "name", &p->name, err, errlen) < 0)
        return -1;
    if (!(v = ymap_get(n, "type")))
        return yerr(d, n, err, errlen, "products[]: 'type' is required");
    if (get_dup(d, v, "type", &p->type, err, errlen) < 0)
        return -1;
    if (!(v = ymap_get(n, "cycles")))
        return yerr(d, n, err, errlen, "products[]: 'cycles' is required");
    if (ynode_expect(d, v, Y_SEQ, "cycles", err, errlen) < 0)
        return -1;
    if (v->n == 0 || v->n > EMU_MAX_CYCLES)
        return yerr(d, v, err, errlen, "cycles: between 1 and %d cycles", EMU_MAX_CYCLES);
    for (ynode *c = v->head; c; c = c->next)
        if (load_cycle(d, c, &p->cycles[p->ncycles++], err, errlen) < 0)
            return -1;
    if ((v = ymap_get(n, "one_per_site")) && ynode_bool(d, v, "one_per_site", &p->one_per_site, err, errlen) < 0)
        return -1;
    if ((v = ymap_get(n, "requires_type")) && get_dup(d, v, "requires_type", &p->requires_type, err, errlen) < 0)
        return -1;
    long long num;
    if ((v = ymap_get(n, "limit"))) {
        if (ynode_int(d, v, "limit", 0, 1000000, &num, err, errlen) < 0)
            return -1;
        p->limit = (int)num;
    }
    if ((v = ymap_get(n, "expires_days"))) {
        if (ynode_int(d, v, "expires_days", 0, 36500, &num, err, errlen) < 0)
            return -1;
        p->expires_days = (int)num;
    }
    if ((v = ymap_get(n, "resellable")) && ynode_bool(d, v, "resellable", &p->resellable, err, errlen) < 0)
        return -1;
    if ((v = ymap_get(n, "has_settings")) && ynode_bool(d, v, "has_settings", &p->has_settings, err, errlen) < 0)
        return -1;
    if ((v = ymap_get(n, "can_be_reference")) &&
        ynode_bool(d, v, "can_be_reference", &p->can_be_reference, err, errlen) < 0)
        return -1;
    const char *s = "ENABLED";
    if ((v = ymap_get(n, "delivery"))) {
        if (ynode_str(d, v, "delivery", &s, err, errlen) < 0)
            return -1;
        if (!one_of(s, deliveries))
            return yerr(d, v, err, errlen, "delivery: '%s' is not ENABLED, AWAITING_ACTION or FAILED", s);
    }
    p->delivery = strdup(s);
    if ((v = ymap_get(n, "failure_code"))) {
        if (ynode_str(d, v, "failure_code", &s, err, errlen) < 0)
            return -1;
        if (!one_of(s, failures))
            return yerr(d, v, err, errlen, "failure_code: '%s' is not UNKNOWN, DELIVERY_TIMEOUT or EXTERNAL_FAILURE", s);
        p->failure_code = strdup(s);
    } else if (!strcmp(p->delivery, "FAILED")) {
        p->failure_code = strdup("DELIVERY_TIMEOUT");
    }
    return 0;
}

static int load_account(ydoc *d, ynode *n, emu_seed_account *a, char *err, size_t errlen)
{
    static const char *const types[] = {"RESELLER", "SUB_ACCOUNT", "TEAM", NULL};
    if (ynode_expect(d, n, Y_MAP, "accounts[]", err, errlen) < 0 ||
        ymap_check_keys(d, n, account_keys, "an account", err, errlen) < 0)
        return -1;
    ynode *v;
    if (!(v = ymap_get(n, "id")))
        return yerr(d, n, err, errlen, "accounts[]: 'id' is required");
    if (get_guid(d, v, "id", a->id, err, errlen) < 0)
        return -1;
    if ((v = ymap_get(n, "parent")) && get_guid(d, v, "parent", a->parent, err, errlen) < 0)
        return -1;
    const char *s = a->parent[0] ? "SUB_ACCOUNT" : "RESELLER";
    if ((v = ymap_get(n, "type"))) {
        if (ynode_str(d, v, "type", &s, err, errlen) < 0)
            return -1;
        if (!one_of(s, types))
            return yerr(d, v, err, errlen, "type: '%s' is not RESELLER, SUB_ACCOUNT or TEAM", s);
    }
    a->type = strdup(s);
    s = "";
    if ((v = ymap_get(n, "name")) && ynode_str(d, v, "name", &s, err, errlen) < 0)
        return -1;
    a->name = strdup(s);
    if ((v = ymap_get(n, "sites"))) {
        if (ynode_expect(d, v, Y_SEQ, "sites", err, errlen) < 0)
            return -1;
        a->sites = calloc(v->n ? v->n : 1, sizeof *a->sites);
        if (!a->sites)
            return yerr(d, v, err, errlen, "out of memory");
        for (ynode *sn = v->head; sn; sn = sn->next) {
            if (ynode_expect(d, sn, Y_MAP, "sites[]", err, errlen) < 0 ||
                ymap_check_keys(d, sn, site_keys, "a site", err, errlen) < 0)
                return -1;
            ynode *id = ymap_get(sn, "id");
            if (!id)
                return yerr(d, sn, err, errlen, "sites[]: 'id' is required");
            if (get_guid(d, id, "id", a->sites[a->nsites].id, err, errlen) < 0)
                return -1;
            s = "";
            ynode *nm = ymap_get(sn, "name");
            if (nm && ynode_str(d, nm, "name", &s, err, errlen) < 0)
                return -1;
            a->sites[a->nsites++].name = strdup(s);
        }
    }
    return 0;
}

/* An account id, or one of its sites' ids, given before by another account: the
 * store would merge them silently. */
static int account_clash(ydoc *d, ynode *n, const emu_catalog *cat, const emu_seed_account *a, char *err,
                         size_t errlen)
{
    for (int i = 0; i < cat->naccounts - 1; i++)
        if (!strcmp(cat->accounts[i].id, a->id))
            return yerr(d, ymap_get(n, "id"), err, errlen, "id: account %s is listed twice", a->id);
    ynode *sites = ymap_get(n, "sites");
    ynode *sn = sites ? sites->head : NULL;
    for (int k = 0; k < a->nsites && sn; k++, sn = sn->next) {
        const char *id = a->sites[k].id;
        for (int i = 0; i < cat->naccounts; i++) {
            const emu_seed_account *o = &cat->accounts[i];
            for (int j = 0; j < (o == a ? k : o->nsites); j++)
                if (!strcmp(o->sites[j].id, id))
                    return yerr(d, ymap_get(sn, "id"), err, errlen, "id: site %s is listed twice", id);
        }
    }
    return 0;
}

static int catalog_from_doc(emu_catalog *cat, ydoc *d, char *err, size_t errlen);

int emu_catalog_load(emu_catalog *cat, const char *path, char *err, size_t errlen)
{
    memset(cat, 0, sizeof *cat);
    ydoc *d = ytree_load_file(path, err, errlen);
    return d ? catalog_from_doc(cat, d, err, errlen) : -1;
}

int emu_catalog_load_string(emu_catalog *cat, const char *name, const char *text, size_t len, char *err,
                            size_t errlen)
{
    memset(cat, 0, sizeof *cat);
    ydoc *d = ytree_load_string(name, text, len, err, errlen);
    return d ? catalog_from_doc(cat, d, err, errlen) : -1;
}

/* Reads the catalog out of d (and frees d). */
static int catalog_from_doc(emu_catalog *cat, ydoc *d, char *err, size_t errlen)
{
    int rc = -1;
    ynode *root = d->root;
    if (!root) {
        yerr(d, NULL, err, errlen, "the catalog is empty");
        goto done;
    }
    if (ynode_expect(d, root, Y_MAP, "catalog", err, errlen) < 0 ||
        ymap_check_keys(d, root, top_keys, "the catalog", err, errlen) < 0)
        goto done;
    ynode *prods = ymap_get(root, "products");
    if (!prods) {
        yerr(d, root, err, errlen, "the catalog needs a 'products' list");
        goto done;
    }
    if (ynode_expect(d, prods, Y_SEQ, "products", err, errlen) < 0)
        goto done;
    cat->products = calloc(prods->n ? prods->n : 1, sizeof *cat->products);
    if (!cat->products)
        goto done;
    for (ynode *p = prods->head; p; p = p->next) {
        emu_product *prod = &cat->products[cat->nproducts++];
        if (load_product(d, p, prod, err, errlen) < 0)
            goto done;
        for (int i = 0; i < cat->nproducts - 1; i++)
            if (!strcmp(cat->products[i].id, prod->id)) {
                yerr(d, ymap_get(p, "id"), err, errlen, "id: product %s is listed twice", prod->id);
                goto done;
            }
    }
    ynode *accts = ymap_get(root, "accounts");
    if (accts) {
        if (ynode_expect(d, accts, Y_SEQ, "accounts", err, errlen) < 0)
            goto done;
        cat->accounts = calloc(accts->n ? accts->n : 1, sizeof *cat->accounts);
        if (!cat->accounts)
            goto done;
        for (ynode *a = accts->head; a; a = a->next) {
            emu_seed_account *acc = &cat->accounts[cat->naccounts++];
            if (load_account(d, a, acc, err, errlen) < 0 || account_clash(d, a, cat, acc, err, errlen) < 0)
                goto done;
        }
        /* A parent may be listed after its sub-accounts, so parents are checked once all are read. */
        int i = 0;
        for (ynode *a = accts->head; a; a = a->next, i++) {
            const char *parent = cat->accounts[i].parent;
            int found = 0;
            for (int j = 0; parent[0] && j < cat->naccounts && !found; j++)
                found = j != i && !strcmp(cat->accounts[j].id, parent);
            if (parent[0] && !found) {
                yerr(d, ymap_get(a, "parent"), err, errlen, "parent: account %s is not listed in the catalog%s",
                     parent, strcmp(parent, cat->accounts[i].id) ? "" : " (an account cannot be its own parent)");
                goto done;
            }
        }
    }
    rc = 0;
done:
    ytree_free(d);
    if (rc < 0)
        emu_catalog_free(cat);
    return rc;
}

void emu_catalog_free(emu_catalog *cat)
{
    for (int i = 0; i < cat->nproducts; i++) {
        emu_product *p = &cat->products[i];
        free(p->name);
        free(p->type);
        free(p->requires_type);
        free(p->delivery);
        free(p->failure_code);
    }
    free(cat->products);
    for (int i = 0; i < cat->naccounts; i++) {
        emu_seed_account *a = &cat->accounts[i];
        free(a->type);
        free(a->name);
        for (int j = 0; j < a->nsites; j++)
            free(a->sites[j].name);
        free(a->sites);
    }
    free(cat->accounts);
    memset(cat, 0, sizeof *cat);
}

const emu_product *emu_product_find(const emu_catalog *cat, const char *id)
{
    for (int i = 0; i < cat->nproducts; i++)
        if (!strcmp(cat->products[i].id, id))
            return &cat->products[i];
    return NULL;
}
