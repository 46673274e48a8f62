/*
 * config.c -- the YAML configuration (see config.h).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>
#include <pthread.h>
#include <stddef.h>
#include <arpa/inet.h>
#include <sys/stat.h>

#include "../json/json.h"
#include "../util/buf.h"
#include "../util/nearest.h"
#include "../util/strset.h"
#include "../yaml/ytree.h"

#ifndef WIXR_HOME
#define WIXR_HOME "."
#endif

static const char *const top_keys[] = {"wix", "runtime", "defaults", "hooks", "serve", "poller", NULL};
static const char *const wix_keys[] = {"transport", "base_url", "api_key_file", "account_id", "timeout_ms",
                                       "connect_timeout_ms", "retry", "rate_limit", "concurrency", "sandbox",
                                       "audit", NULL};
static const char *const retry_keys[] = {"attempts", "base_ms", "max_ms", "total_ms", NULL};
static const char *const rate_keys[] = {"requests", "per_seconds", NULL};
static const char *const sandbox_keys[] = {"db", "catalog", "delivery_delay_ms", NULL};

int config_index_events(const wixr_config *c, name_index *x)
{
    const char **names = calloc(c->nhooks ? (size_t)c->nhooks : 1, sizeof *names);
    if (!names) {
        memset(x, 0, sizeof *x);
        return -1;
    }
    for (int i = 0; i < c->nhooks; i++)
        names[i] = c->hooks[i].enabled ? c->hooks[i].event : NULL;
    int rc = name_index_build(x, names, c->nhooks);
    free(names);
    return rc;
}

const char *config_transport_name(wix_transport t)
{
    return t == TRANSPORT_HTTP ? "http" : t == TRANSPORT_SANDBOX ? "sandbox" : "auto";
}

static int set_str(char **dst, const char *v)
{
    char *p = strdup(v);
    if (!p)
        return -1;
    free(*dst);
    *dst = p;
    return 0;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Expands ${NAME} and ${NAME:-default} in a scalar: NAME from the environment; with
 * ":-", default stands in when NAME is unset or empty (it is literal text and ends at
 * the first '}'). An unset NAME without a default is an error at the scalar. */
static int expand(const ydoc *d, const ynode *n, char **out, char *err, size_t errlen)
{
    buf_t o;
    buf_init(&o, 0);
    for (const char *p = n->str; *p;) {
        if (p[0] != '$' || p[1] != '{') {
            size_t run = strcspn(p + 1, "$") + 1;
            buf_add(&o, p, run);
            p += run;
            continue;
        }
        const char *end = strchr(p + 2, '}');
        if (!end) {
            buf_free(&o);
            return yerr(d, n, err, errlen, "unterminated ${...} reference");
        }
        const char *dflt = NULL;
        size_t nl = (size_t)(end - p - 2);
        const char *sep = memchr(p + 2, ':', nl);
        if (sep && sep[1] == '-') {
            dflt = sep + 2;
            nl = (size_t)(sep - p - 2);
        }
        char name[128];
        if (nl == 0 || nl >= sizeof name) {
            buf_free(&o);
            return yerr(d, n, err, errlen, "bad ${...} reference: %.*s", (int)(end - p + 1), p);
        }
        memcpy(name, p + 2, nl);
        name[nl] = '\0';
        const char *v = getenv(name);
        if (dflt && (!v || !*v))
            buf_add(&o, dflt, (size_t)(end - dflt));
        else if (v)
            buf_adds(&o, v);
        else {
            buf_free(&o);
            return yerr(d, n, err, errlen, "${%s} is not set in the environment", name);
        }
        p = end + 1;
    }
    char *text = o.failed ? NULL : buf_steal(&o, NULL);
    buf_free(&o);
    if (!text)
        return yerr(d, n, err, errlen, "out of memory");
    *out = text;
    return 0;
}

static int get_string(const ydoc *d, const ynode *n, const char *field, char **dst, char *err, size_t errlen)
{
    if (ynode_expect(d, n, Y_SCALAR, field, err, errlen) < 0)
        return -1;
    char *v = NULL;
    if (expand(d, n, &v, err, errlen) < 0)
        return -1;
    free(*dst);
    *dst = v;
    return 0;
}

static int get_long(const ydoc *d, const ynode *n, const char *field, long long lo, long long hi, long *dst,
                    char *err, size_t errlen)
{
    long long v;
    if (ynode_int(d, n, field, lo, hi, &v, err, errlen) < 0)
        return -1;
    *dst = (long)v;
    return 0;
}

/* Adds one problem line; the same line twice (a defaults value that every hook
 * inherits) is listed once. */
static void add_error(buf_t *errs, int *nerr, const char *e)
{
    size_t el = strlen(e);
    const char *all = errs->len ? buf_cstr(errs) : "";
    for (const char *p = all; *p;) {
        size_t n = strcspn(p, "\n");
        if (n == el && !memcmp(p, e, el))
            return;
        p += n + (p[n] == '\n');
    }
    if ((*nerr)++)
        buf_addc(errs, '\n');
    buf_adds(errs, e);
}

#define NOTE_ERR() add_error(errs, nerr, err)

typedef struct sink {
    buf_t *errs;
    int *nerr;
} sink;

static void sink_report(void *ctx, const char *msg)
{
    sink *k = ctx;
    add_error(k->errs, k->nerr, msg);
}

/* Every key of map not in allowed is a problem (all of them, not the first). */
static void check_keys(const ydoc *d, const ynode *map, const char *const *allowed, const char *where, buf_t *errs,
                       int *nerr)
{
    sink k = {errs, nerr};
    ymap_check_keys_each(d, map, allowed, where, sink_report, &k);
}

/* Copies the n problems (one a line) into err; those that do not fit whole are
 * counted on a last line instead of being cut in the middle (the first one is
 * always shown, cut if it must be). */
static void list_errors(char *err, size_t errlen, const char *path, const char *list, int n)
{
    size_t len = strlen(list);
    if (len < errlen) {
        memcpy(err, list, len + 1);
        return;
    }
    char tail[512];
    size_t keep = 0;
    int shown = 0;
    for (const char *p = list; *p && shown < n;) {
        size_t line = strcspn(p, "\n");
        size_t end = (size_t)(p - list) + line;
        int t = snprintf(tail, sizeof tail, "\n%.400s: %d more problem%s not shown", path, n - shown - 1,
                         n - shown - 1 == 1 ? "" : "s");
        if (shown && end + (size_t)t >= errlen)
            break;
        keep = end;
        shown++;
        p += line + (p[line] == '\n');
    }
    if (shown == n) { /* only the first, and it alone is too long */
        snprintf(err, errlen, "%s", list);
        return;
    }
    snprintf(tail, sizeof tail, "\n%.400s: %d more problem%s not shown", path, n - shown, n - shown == 1 ? "" : "s");
    size_t t = strlen(tail);
    if (keep + t >= errlen) /* the first line alone: cut it to make room */
        keep = errlen > t + 1 ? errlen - t - 1 : 0;
    memcpy(err, list, keep);
    snprintf(err + keep, errlen - keep, "%s", tail);
}

static int resolve_path(const wixr_config *c, const char *p, char **out);
static int resolve_in_place(const wixr_config *c, char **p);
static int read_key_file(const char *path, char **out, char *err, size_t errlen);

static int load_wix(const ydoc *d, const ynode *w, wixr_config *c, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    wix_settings *s = &c->wix;
    if (ynode_expect(d, w, Y_MAP, "wix", err, errlen) < 0)
        return NOTE_ERR(), -1;
    check_keys(d, w, wix_keys, "wix", errs, nerr);
    ynode *n;
    if ((n = ymap_get(w, "transport"))) {
        const char *t;
        if (ynode_str(d, n, "wix.transport", &t, err, errlen) < 0)
            NOTE_ERR();
        else if (!strcmp(t, "auto"))
            s->transport = TRANSPORT_AUTO;
        else if (!strcmp(t, "http"))
            s->transport = TRANSPORT_HTTP;
        else if (!strcmp(t, "sandbox"))
            s->transport = TRANSPORT_SANDBOX;
        else
            yerr(d, n, err, errlen, "wix.transport: '%s' is not auto, http or sandbox", t), NOTE_ERR();
    }
    if ((n = ymap_get(w, "base_url")) && get_string(d, n, "wix.base_url", &s->base_url, err, errlen) < 0)
        NOTE_ERR();
    if ((n = ymap_get(w, "account_id")) && get_string(d, n, "wix.account_id", &s->account_id, err, errlen) < 0)
        NOTE_ERR();
    if ((n = ymap_get(w, "api_key_file"))) {
        char *p = NULL;
        if (get_string(d, n, "wix.api_key_file", &p, err, errlen) < 0) {
            NOTE_ERR();
        } else {
            char *full = NULL;
            resolve_path(c, p, &full);
            free(p);
            free(s->api_key_file);
            s->api_key_file = full;
            const char *env = getenv("WIX_API_KEY");
            char why[1024];
            if (!full || !file_exists(full))
                yerr(d, n, err, errlen, "wix.api_key_file: %s does not exist", full ? full : "?"), NOTE_ERR();
            else if (!(env && *env) && read_key_file(full, &s->api_key, why, sizeof why) < 0)
                yerr(d, n, err, errlen, "wix.api_key_file: %s", why), NOTE_ERR(); /* WIX_API_KEY wins */
        }
    }
    if ((n = ymap_get(w, "timeout_ms")) && get_long(d, n, "wix.timeout_ms", 1, 3600000, &s->timeout_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((n = ymap_get(w, "connect_timeout_ms")) &&
        get_long(d, n, "wix.connect_timeout_ms", 1, 600000, &s->connect_timeout_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((n = ymap_get(w, "concurrency"))) {
        long v;
        if (get_long(d, n, "wix.concurrency", 1, 4096, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            s->concurrency = (int)v;
    }
    if ((n = ymap_get(w, "audit"))) {
        if (get_string(d, n, "wix.audit", &s->audit, err, errlen) < 0)
            NOTE_ERR();
        else if (strcmp(s->audit, "-") != 0 && resolve_in_place(c, &s->audit) < 0)
            yerr(d, n, err, errlen, "wix.audit: out of memory"), NOTE_ERR();
    }
    if ((n = ymap_get(w, "retry"))) {
        if (ynode_expect(d, n, Y_MAP, "wix.retry", err, errlen) < 0)
            NOTE_ERR();
        check_keys(d, n, retry_keys, "wix.retry", errs, nerr);
        ynode *m;
        long v;
        if ((m = ymap_get(n, "attempts"))) {
            if (get_long(d, m, "wix.retry.attempts", 1, 100, &v, err, errlen) < 0)
                NOTE_ERR();
            else
                s->retry_attempts = (int)v;
        }
        if ((m = ymap_get(n, "base_ms")) && get_long(d, m, "wix.retry.base_ms", 0, 600000, &s->retry_base_ms, err, errlen) < 0)
            NOTE_ERR();
        if ((m = ymap_get(n, "max_ms")) && get_long(d, m, "wix.retry.max_ms", 0, 3600000, &s->retry_max_ms, err, errlen) < 0)
            NOTE_ERR();
        if ((m = ymap_get(n, "total_ms")) &&
            get_long(d, m, "wix.retry.total_ms", 0, 86400000, &s->retry_total_ms, err, errlen) < 0)
            NOTE_ERR();
    }
    if ((n = ymap_get(w, "rate_limit"))) {
        if (ynode_expect(d, n, Y_MAP, "wix.rate_limit", err, errlen) < 0)
            NOTE_ERR();
        check_keys(d, n, rate_keys, "wix.rate_limit", errs, nerr);
        ynode *m;
        long v;
        if ((m = ymap_get(n, "requests"))) {
            if (get_long(d, m, "wix.rate_limit.requests", 0, 1000000, &v, err, errlen) < 0)
                NOTE_ERR();
            else
                s->rate_limit = (int)v;
        }
        if ((m = ymap_get(n, "per_seconds"))) {
            if (get_long(d, m, "wix.rate_limit.per_seconds", 1, 86400, &v, err, errlen) < 0)
                NOTE_ERR();
            else
                s->rate_window_ms = v * 1000;
        }
    }
    if ((n = ymap_get(w, "sandbox"))) {
        if (ynode_expect(d, n, Y_MAP, "wix.sandbox", err, errlen) < 0)
            NOTE_ERR();
        check_keys(d, n, sandbox_keys, "wix.sandbox", errs, nerr);
        ynode *m;
        if ((m = ymap_get(n, "db"))) {
            if (get_string(d, m, "wix.sandbox.db", &s->sandbox_db, err, errlen) < 0)
                NOTE_ERR();
            else if (strcmp(s->sandbox_db, ":memory:") != 0 && resolve_in_place(c, &s->sandbox_db) < 0)
                yerr(d, m, err, errlen, "wix.sandbox.db: out of memory"), NOTE_ERR();
        }
        if ((m = ymap_get(n, "catalog"))) {
            char *cat = NULL;
            if (get_string(d, m, "wix.sandbox.catalog", &cat, err, errlen) < 0) {
                NOTE_ERR();
            } else {
                free(s->sandbox_catalog);
                s->sandbox_catalog = NULL;
                resolve_path(c, cat, &s->sandbox_catalog);
                free(cat);
            }
            if (s->sandbox_catalog && !file_exists(s->sandbox_catalog))
                yerr(d, m, err, errlen, "wix.sandbox.catalog: %s does not exist", s->sandbox_catalog), NOTE_ERR();
        }
        if ((m = ymap_get(n, "delivery_delay_ms"))) {
            long long v;
            if (ynode_int(d, m, "wix.sandbox.delivery_delay_ms", -1, 86400000LL * 365, &v, err, errlen) < 0)
                NOTE_ERR();
            else
                s->sandbox_delivery_delay_ms = v;
        }
    }
    return 0;
}

static const char *const runtime_keys[] = {"lua_paths", "limits", "max_chain_depth", "state_dir", NULL};
static const char *const limit_keys[] = {"instructions", "memory_mb", "wall_ms", NULL};
static const char *const hook_keys[] = {"script", "options", "limits", "on_error", "enabled", "allow",
                                        "max_mutations", "retry", "id", NULL};
/* defaults: what every hook starts from (its own keys win). */
static const char *const defaults_keys[] = {"options", "limits", "on_error", "allow", "max_mutations", "retry",
                                            NULL};

static const struct {
    const char *name;
    unsigned ops;
} op_names[] = {
    {"all", WIX_OP_ALL}, {"read", WIX_OP_READ}, {"mutate", WIX_OP_MUTATE}, {"get", WIX_OP_GET},
    {"query", WIX_OP_QUERY}, {"create", WIX_OP_CREATE}, {"cancel_package", WIX_OP_CANCEL_PACKAGE},
    {"set_external_id", WIX_OP_SET_EXTERNAL_ID}, {"assign", WIX_OP_ASSIGN}, {"unassign", WIX_OP_UNASSIGN},
    {"adjust", WIX_OP_ADJUST}, {"cancel_instance", WIX_OP_CANCEL_INSTANCE},
};
#define NOP_NAMES (sizeof op_names / sizeof op_names[0])

void config_ops_names(unsigned ops, char *out, size_t n)
{
    size_t k = 0;
    out[0] = '\0';
    if (ops == WIX_OP_ALL) {
        snprintf(out, n, "all");
        return;
    }
    for (size_t i = 3; i < NOP_NAMES && k < n; i++)
        if (ops & op_names[i].ops)
            k += (size_t)snprintf(out + k, n - k, "%s%s", k ? ", " : "", op_names[i].name);
    if (!k)
        snprintf(out, n, "none");
}

int config_hooks_for(const wixr_config *c, const char *event, int *idx, int max)
{
    int n = 0;
    for (int i = 0; i < c->nhooks && n < max; i++)
        if (!strcmp(c->hooks[i].event, event))
            idx[n++] = i;
    return n;
}

static void load_limits(const ydoc *d, const ynode *n, const char *where, hook_limits *l, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    char f[128];
    snprintf(f, sizeof f, "%s", where);
    if (ynode_expect(d, n, Y_MAP, f, err, errlen) < 0) {
        NOTE_ERR();
        return;
    }
    check_keys(d, n, limit_keys, f, errs, nerr);
    ynode *m;
    long v;
    if ((m = ymap_get(n, "instructions"))) {
        long long iv;
        snprintf(f, sizeof f, "%s.instructions", where);
        if (ynode_int(d, m, f, 1000, 100000000000LL, &iv, err, errlen) < 0)
            NOTE_ERR();
        else
            l->instructions = iv;
    }
    if ((m = ymap_get(n, "memory_mb"))) {
        snprintf(f, sizeof f, "%s.memory_mb", where);
        if (get_long(d, m, f, 1, 65536, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            l->memory_mb = v;
    }
    if ((m = ymap_get(n, "wall_ms"))) {
        snprintf(f, sizeof f, "%s.wall_ms", where);
        if (get_long(d, m, f, 1, 86400000, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            l->wall_ms = v;
    }
}

/* YAML value -> JSON (plain scalars that look like numbers, booleans or null
 * keep that type; ${ENV} is expanded in every scalar). */
static int to_json(const ydoc *d, const ynode *n, buf_t *b, char *err, size_t errlen)
{
    if (n->type == Y_MAP || n->type == Y_SEQ) {
        buf_addc(b, n->type == Y_MAP ? '{' : '[');
        for (ynode *k = n->head; k; k = k->next) {
            if (k != n->head)
                buf_addc(b, ',');
            if (n->type == Y_MAP) {
                json_quote(b, k->key->str, k->key->len);
                buf_addc(b, ':');
            }
            if (to_json(d, k, b, err, errlen) < 0)
                return -1;
        }
        buf_addc(b, n->type == Y_MAP ? '}' : ']');
        return 0;
    }
    char *v = NULL;
    if (expand(d, n, &v, err, errlen) < 0)
        return -1;
    int raw = 0;
    if (n->plain) {
        /* only what JSON itself takes as a number: "1.", "-inf", "012" or "0x1F" stay strings */
        int number = json_is_number(v, strlen(v));
        if (number && !isfinite(strtod(v, NULL))) {
            yerr(d, n, err, errlen, "number out of range: %.40s%s (quote it to keep it as text)", v,
                 strlen(v) > 40 ? "..." : "");
            free(v);
            return -1;
        }
        raw = number || !strcmp(v, "true") || !strcmp(v, "false") || !strcmp(v, "null");
        if (!strcmp(v, "~")) {
            free(v);
            buf_adds(b, "null");
            return 0;
        }
    }
    if (raw)
        buf_adds(b, v);
    else
        json_quote(b, v, strlen(v));
    free(v);
    return 0;
}

static int resolve_path(const wixr_config *c, const char *p, char **out)
{
    char full[PATH_MAX];
    if (p[0] == '/' || !c->dir || !strcmp(c->dir, "."))
        snprintf(full, sizeof full, "%s", p);
    else
        snprintf(full, sizeof full, "%s/%s", c->dir, p);
    *out = strdup(full);
    return *out ? 0 : -1;
}

/* *p made relative to the file's folder (freed and replaced). 0, or -1 out of memory. */
static int resolve_in_place(const wixr_config *c, char **p)
{
    char *full = NULL;
    if (resolve_path(c, *p, &full) < 0)
        return -1;
    free(*p);
    *p = full;
    return 0;
}

/* YAML options over defaults -> JSON: where both are mappings they are merged key by
 * key (deeply; own keys win), otherwise own replaces base. Either may be NULL. */
static int merged_json(const ydoc *d, const ynode *own, const ynode *base, buf_t *b, char *err, size_t errlen)
{
    if (!base || (own && (own->type != Y_MAP || base->type != Y_MAP)))
        return to_json(d, own, b, err, errlen);
    if (!own)
        return to_json(d, base, b, err, errlen);
    buf_addc(b, '{');
    int first = 1;
    for (const ynode *k = base->head; k; k = k->next) {
        if (!first)
            buf_addc(b, ',');
        first = 0;
        json_quote(b, k->key->str, k->key->len);
        buf_addc(b, ':');
        if (merged_json(d, ymap_get(own, k->key->str), k, b, err, errlen) < 0)
            return -1;
    }
    for (const ynode *k = own->head; k; k = k->next) {
        if (ymap_get(base, k->key->str))
            continue;
        if (!first)
            buf_addc(b, ',');
        first = 0;
        json_quote(b, k->key->str, k->key->len);
        buf_addc(b, ':');
        if (to_json(d, k, b, err, errlen) < 0)
            return -1;
    }
    buf_addc(b, '}');
    return 0;
}

/* ---- Option declarations: "---@option NAME TYPE [description]" lines in the
 * comment block a script opens with. ---- */

#define OPT_TYPE_ANY 0x3f
enum { OT_STRING = 1, OT_NUMBER = 2, OT_INTEGER = 4, OT_BOOLEAN = 8, OT_TABLE = 16, OT_NIL = 32 };

typedef struct opt_decl {
    char *name;            /* first member: nearest_name reads the table by it */
    char *type_text;
    unsigned types;        /* OT_* */
} opt_decl;

typedef struct opt_schema {
    int declared;          /* the script declares its options (else nothing is checked) */
    opt_decl *v;
    int n;
    int borrowed;          /* the declarations belong to the cache below */
} opt_schema;

/* A declared type: names joined by '|', each maybe ending in '?' (nil allowed);
 * table<K, V>, T[] and {...} are tables. 0 for a name that is not a type. */
static unsigned parse_type(const char *t, size_t len)
{
    static const struct {
        const char *name;
        unsigned bits;
    } names[] = {{"any", OPT_TYPE_ANY}, {"string", OT_STRING}, {"number", OT_NUMBER | OT_INTEGER},
                 {"integer", OT_INTEGER}, {"boolean", OT_BOOLEAN}, {"table", OT_TABLE}, {"nil", OT_NIL}};
    unsigned bits = 0;
    const char *end = t + len;
    while (t < end) {
        const char *bar = t;
        int angle = 0, brace = 0;
        for (; bar < end && (*bar != '|' || angle || brace); bar++) {
            angle += *bar == '<' ? 1 : *bar == '>' ? -1 : 0;
            brace += *bar == '{' ? 1 : *bar == '}' ? -1 : 0;
        }
        size_t n = (size_t)(bar - t);
        if (n && t[n - 1] == '?') {
            bits |= OT_NIL;
            n--;
        }
        unsigned one = 0;
        if (n > 2 && !memcmp(t + n - 2, "[]", 2))
            one = OT_TABLE;
        else if ((n > 6 && !memcmp(t, "table<", 6)) || (n > 1 && t[0] == '{'))
            one = OT_TABLE;
        for (size_t i = 0; !one && i < sizeof names / sizeof names[0]; i++)
            if (strlen(names[i].name) == n && !memcmp(names[i].name, t, n))
                one = names[i].bits;
        if (!one)
            return 0;
        bits |= one;
        t = bar + (bar < end);
    }
    return bits;
}

/* Reads the declarations of script (shown as shown in messages). A malformed line is
 * a problem at script:line:col. */
static void read_schema(const char *script, const char *shown, opt_schema *sc, buf_t *errs, int *nerr)
{
    memset(sc, 0, sizeof *sc);
    FILE *f = fopen(script, "r");
    if (!f)
        return; /* a missing script is reported on its own */
    char line[1024], err[1400];
    int ln = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        const char *p = line + strspn(line, " \t");
        if (!*p)
            continue;
        if (strncmp(p, "--", 2))
            break; /* the leading comment block ends at the first line of code */
        if (strncmp(p, "---@option", 10) || (p[10] && p[10] != ' ' && p[10] != '\t'))
            continue;
        int col = (int)(p - line) + 1;
        const char *q = p + 10;
        q += strspn(q, " \t");
        size_t nl = strcspn(q, " \t");
        const char *name = q;
        q += nl;
        q += strspn(q, " \t");
        const char *type = q;
        size_t tl = strcspn(q, " \t");
        sc->declared = 1;
        if (!nl || !tl) {
            snprintf(err, sizeof err, "%s:%d:%d: ---@option: expected '---@option NAME TYPE [description]'", shown, ln,
                     col);
            add_error(errs, nerr, err);
            continue;
        }
        unsigned bits = parse_type(type, tl);
        if (!bits || nl > 64 || tl > 64) {
            snprintf(err, sizeof err,
                     "%s:%d:%d: ---@option %.*s: unknown type '%.*s' (any, string, number, integer, boolean, table, "
                     "nil; a|b, T?, T[], table<K, V>)",
                     shown, ln, (int)(type - line) + 1, (int)(nl > 64 ? 64 : nl), name, (int)(tl > 64 ? 64 : tl), type);
            add_error(errs, nerr, err);
            continue;
        }
        int dup = 0;
        for (int i = 0; i < sc->n && !dup; i++)
            dup = strlen(sc->v[i].name) == nl && !memcmp(sc->v[i].name, name, nl);
        if (dup) {
            snprintf(err, sizeof err, "%s:%d:%d: ---@option %.*s is declared twice", shown, ln, (int)(name - line) + 1,
                     (int)nl, name);
            add_error(errs, nerr, err);
            continue;
        }
        opt_decl *v = realloc(sc->v, (size_t)(sc->n + 1) * sizeof *v);
        if (!v)
            break;
        sc->v = v;
        opt_decl *o = &sc->v[sc->n];
        o->name = strndup(name, nl);
        o->type_text = strndup(type, tl);
        o->types = bits;
        if (!o->name || !o->type_text) {
            free(o->name);
            free(o->type_text);
            break;
        }
        sc->n++;
    }
    fclose(f);
}

static void schema_free(opt_schema *sc)
{
    if (sc->borrowed)
        return;
    for (int i = 0; i < sc->n; i++) {
        free(sc->v[i].name);
        free(sc->v[i].type_text);
    }
    free(sc->v);
}

static const opt_decl *schema_find(const opt_schema *sc, const char *name)
{
    for (int i = 0; i < sc->n; i++)
        if (!strcmp(sc->v[i].name, name))
            return &sc->v[i];
    return NULL;
}

/* ---- The declarations of scripts read before, by path and file stamp: a
 * reload of thousands of scripts reads only those that changed. One cache for
 * the process (configurations may load on any thread), used under its lock
 * for the whole of a configuration's hooks; it keeps what the last two loads
 * used. ---- */

typedef struct schema_entry {
    opt_schema sc;
    file_stamp stamp;
    unsigned gen;          /* the last load that used it */
    char path[];           /* the key the index holds */
} schema_entry;

static struct {
    pthread_mutex_t lock;
    schema_entry **v;
    size_t n, cap;
    strset index;          /* v[i]->path */
    unsigned gen;          /* loads so far */
} known = {.lock = PTHREAD_MUTEX_INITIALIZER};

static schema_entry *known_entry(const char *path)
{
    const char *key = strset_get(&known.index, path);
    return key ? (schema_entry *)(void *)(key - offsetof(schema_entry, path)) : NULL;
}

/* h's script's declarations into sc, borrowed from the cache when the loader
 * saw the file as it was read before (h->seen); else read, and kept for the
 * next load when the file had settled and read without a problem. */
static void script_schema(const hook_def *h, opt_schema *sc, buf_t *errs, int *nerr)
{
    schema_entry *e = known_entry(h->script);
    if (e && file_stamp_same(&e->stamp, &h->seen)) {
        e->gen = known.gen;
        *sc = e->sc;
        sc->borrowed = 1;
        return;
    }
    int before = *nerr;
    read_schema(h->script, h->script, sc, errs, nerr);
    if (*nerr > before || !h->seen.settled || (e && e->gen == known.gen))
        return; /* (an entry this load already borrowed stays as it is) */
    if (!e) {
        size_t len = strlen(h->script);
        if (known.n == known.cap) {
            size_t cap = known.cap ? 2 * known.cap : 64;
            schema_entry **v = realloc(known.v, cap * sizeof *v);
            if (!v)
                return;
            known.v = v;
            known.cap = cap;
        }
        if (!(e = calloc(1, sizeof *e + len + 1)))
            return;
        memcpy(e->path, h->script, len + 1);
        if (strset_add(&known.index, e->path) < 0) {
            free(e);
            return;
        }
        known.v[known.n++] = e;
    } else {
        schema_free(&e->sc);
    }
    e->sc = *sc;
    e->stamp = h->seen;
    e->gen = known.gen;
    sc->borrowed = 1;
}

/* Drops the entries neither this load nor the one before used. */
static void schemas_prune(void)
{
    size_t k = 0;
    for (size_t i = 0; i < known.n; i++) {
        schema_entry *e = known.v[i];
        if (known.gen - e->gen <= 1) {
            known.v[k++] = e;
            continue;
        }
        schema_free(&e->sc); /* (the entry's own copy: never marked borrowed) */
        free(e);
    }
    if (k == known.n)
        return;
    known.n = k;
    strset_free(&known.index);
    for (size_t i = 0; i < known.n; i++)
        if (strset_add(&known.index, known.v[i]->path) < 0) {
            known.n = i; /* (out of memory: the rest is forgotten) */
            break;
        }
}

static unsigned json_kind(const json_value *v)
{
    switch (v->type) {
    case JSON_NULL:
        return OT_NIL;
    case JSON_BOOL:
        return OT_BOOLEAN;
    case JSON_NUMBER:
        return v->u.number == floor(v->u.number) ? OT_INTEGER | OT_NUMBER : OT_NUMBER;
    case JSON_STRING:
        return OT_STRING;
    default:
        return OT_TABLE;
    }
}

static const char *kind_word(const json_value *v)
{
    switch (v->type) {
    case JSON_NULL:
        return "null";
    case JSON_BOOL:
        return "a boolean";
    case JSON_NUMBER:
        return "a number";
    case JSON_STRING:
        return "a string";
    case JSON_ARRAY:
        return "a list";
    default:
        return "a mapping";
    }
}

/* The script's file name, for messages. */
static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* One key of a hook's merged options (v its value; mine its node in the hook's own
 * options or NULL, at where it is written): declared, and of a declared type. */
static void check_option(const ydoc *d, const hook_def *h, const opt_schema *sc, const char *key,
                         const json_value *v, const ynode *mine, const ynode *at, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    if (!at)
        return;
    const opt_decl *o = schema_find(sc, key);
    if (!o) {
        if (!mine)
            return;
        const char *best = nearest_name(key, sc->v, (size_t)sc->n, sizeof sc->v[0]);
        if (best)
            yerr(d, mine->key, err, errlen, "options: '%s' is not an option %s declares (did you mean '%s'?)", key,
                 base_name(h->script), best);
        else {
            char names[512];
            size_t k = 0;
            names[0] = '\0';
            for (int i = 0; i < sc->n && k < sizeof names - 1; i++)
                k += (size_t)snprintf(names + k, sizeof names - k, "%s%s", i ? ", " : "", sc->v[i].name);
            yerr(d, mine->key, err, errlen, "options: '%s' is not an option %s declares (%s)", key,
                 base_name(h->script), sc->n ? names : "none");
        }
        NOTE_ERR();
        return;
    }
    if (!(json_kind(v) & o->types))
        yerr(d, at, err, errlen, "options.%s: %s declares it %s, got %s", key, base_name(h->script), o->type_text,
             kind_word(v)),
            NOTE_ERR();
}

/* Checks a hook's options (own: the hook's options node, base: defaults.options,
 * json: the merged result) against its script's declarations: a key of its own that
 * the script does not declare, or a value of the wrong type, is a problem. A key
 * that only comes from defaults is left to check_default_options. */
static void check_options(const ydoc *d, const hook_def *h, const opt_schema *sc, const ynode *own, const ynode *base,
                          buf_t *errs, int *nerr)
{
    if (!sc->declared || !h->options_json)
        return;
    json_doc *doc = NULL;
    json_value *root = json_parse(h->options_json, strlen(h->options_json), 0, &doc, NULL);
    for (const json_value *v = root && root->type == JSON_OBJECT ? root->u.kids.head : NULL; v; v = v->next) {
        char *key = strndup(v->key, v->keylen);
        if (!key)
            break;
        const ynode *mine = ymap_get(own, key);
        const ynode *at = mine ? mine : ymap_get(base, key);
        check_option(d, h, sc, key, v, mine, at, errs, nerr);
        free(key);
    }
    json_doc_free(doc);
}

/* A defaults.options key that no hook's script declares, when every hook's script
 * declares its options, is a typo: nothing reads it. */
static void check_default_options(const ydoc *d, const ynode *base, const opt_schema *schemas, int n, buf_t *errs,
                                  int *nerr)
{
    if (!base || base->type != Y_MAP || n == 0)
        return;
    for (int i = 0; i < n; i++)
        if (!schemas[i].declared)
            return;
    char err[1024];
    for (const ynode *k = base->head; k; k = k->next) {
        const char *best = NULL;
        int found = 0;
        for (int i = 0; i < n && !found; i++) {
            found = schema_find(&schemas[i], k->key->str) != NULL;
            const char *near = nearest_name(k->key->str, schemas[i].v, (size_t)schemas[i].n, sizeof schemas[i].v[0]);
            if (near && !best)
                best = near;
        }
        if (found)
            continue;
        if (best)
            yerr(d, k->key, err, sizeof err, "defaults.options: no hook's script declares '%s' (did you mean '%s'?)",
                 k->key->str, best);
        else
            yerr(d, k->key, err, sizeof err, "defaults.options: no hook's script declares '%s'", k->key->str);
        NOTE_ERR();
    }
}

/* limits, on_error, allow, max_mutations and retry of a hook (or of defaults) over h. */
static void load_hook_fields(const ydoc *d, const ynode *n, const char *where, hook_def *h, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    ynode *m;
    if ((m = ymap_get(n, "limits"))) {
        char f[200];
        snprintf(f, sizeof f, "%s.limits", where);
        load_limits(d, m, f, &h->limits, errs, nerr);
    }
    if ((m = ymap_get(n, "on_error"))) {
        const char *v;
        if (ynode_str(d, m, "on_error", &v, err, errlen) < 0)
            NOTE_ERR();
        else if (strcmp(v, "stop") && strcmp(v, "continue"))
            yerr(d, m, err, errlen, "on_error: '%s' is not stop or continue", v), NOTE_ERR();
        else
            h->on_error_continue = !strcmp(v, "continue");
    }
    if ((m = ymap_get(n, "allow"))) {
        if (ynode_expect(d, m, Y_SEQ, "allow", err, errlen) < 0)
            NOTE_ERR();
        h->allow = 0;
        for (ynode *k = m->type == Y_SEQ ? m->head : NULL; k; k = k->next) {
            const char *v;
            if (ynode_str(d, k, "allow[]", &v, err, errlen) < 0) {
                NOTE_ERR();
                continue;
            }
            unsigned ops = 0;
            for (size_t i = 0; i < NOP_NAMES; i++)
                if (!strcmp(v, op_names[i].name))
                    ops = op_names[i].ops;
            if (!ops) {
                const char *best = nearest_name(v, op_names, NOP_NAMES, sizeof op_names[0]);
                if (best)
                    yerr(d, k, err, errlen, "allow: unknown operation '%s' (did you mean '%s'?)", v, best);
                else
                    yerr(d, k, err, errlen,
                         "allow: unknown operation '%s' (all, read, mutate, get, query, create, cancel_package, "
                         "set_external_id, assign, unassign, adjust, cancel_instance)",
                         v);
                NOTE_ERR();
            }
            h->allow |= ops;
        }
    }
    if ((m = ymap_get(n, "max_mutations"))) {
        long v;
        if (get_long(d, m, "max_mutations", 0, 100000, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            h->max_mutations = (int)v;
    }
    if ((m = ymap_get(n, "retry"))) {
        const char *v;
        if (ynode_str(d, m, "retry", &v, err, errlen) < 0)
            NOTE_ERR();
        else if (strcmp(v, "transient") && strcmp(v, "always") && strcmp(v, "never"))
            yerr(d, m, err, errlen, "retry: '%s' is not transient, always or never", v), NOTE_ERR();
        else
            h->retry = !strcmp(v, "always") ? HOOK_RETRY_ALWAYS
                       : !strcmp(v, "never") ? HOOK_RETRY_NEVER
                                             : HOOK_RETRY_TRANSIENT;
    }
}

/* A hook's `id:` (what its derived idempotency keys are made from instead of its
 * position, so hooks can be added above it): 1 to 64 of A-Z a-z 0-9 . _ -, unique
 * among the event's hooks. h is the index-th hook of its event; the ones before
 * it are h[-index] .. h[-1]. */
static void load_hook_id(const ydoc *d, const ynode *m, const char *where, int index, hook_def *h, buf_t *errs,
                         int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    char *v = NULL;
    if (get_string(d, m, "id", &v, err, errlen) < 0) {
        NOTE_ERR();
        return;
    }
    size_t n = strlen(v);
    int ok = n >= 1 && n <= 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = isalnum((unsigned char)v[i]) || v[i] == '.' || v[i] == '_' || v[i] == '-';
    if (!ok) {
        yerr(d, m, err, errlen, "%s.id: '%.80s' is not 1 to 64 letters, digits, '.', '_' or '-'", where, v);
        NOTE_ERR();
        free(v);
        return;
    }
    for (int j = 1; j <= index; j++) {
        const hook_def *o = h - j;
        if (o->id && !strcmp(o->id, v)) {
            yerr(d, m, err, errlen, "%s.id: '%s' is already the id of the hook at %s", where, v, o->where);
            NOTE_ERR();
            free(v);
            return;
        }
    }
    h->id = v;
}

/* One hook: base holds what defaults: gives (limits, on_error, allow, max_mutations),
 * dopts defaults.options (or NULL); sc gets the script's option declarations. */
static int load_hook(const ydoc *d, const ynode *n, const char *event, int index, wixr_config *c, const hook_def *base,
                     const ynode *dopts, hook_def *h, opt_schema *sc, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    int before = *nerr;
    char where[160];
    snprintf(where, sizeof where, "hooks.%s[%d]", event, index);
    h->event = strdup(event);
    h->enabled = 1;
    h->allow = base->allow;
    h->max_mutations = base->max_mutations;
    h->on_error_continue = base->on_error_continue;
    h->retry = base->retry;
    h->limits = base->limits;
    char pos[512];
    snprintf(pos, sizeof pos, "%s:%d:%d", d->file, n->line, n->col);
    h->where = strdup(pos);
    if (ynode_expect(d, n, Y_MAP, where, err, errlen) < 0)
        return NOTE_ERR(), -1;
    check_keys(d, n, hook_keys, where, errs, nerr);
    ynode *m = ymap_get(n, "script");
    char *script = NULL;
    if (!m) {
        yerr(d, n, err, errlen, "%s: 'script' is required", where), NOTE_ERR();
    } else if (get_string(d, m, "script", &script, err, errlen) < 0) {
        NOTE_ERR();
    } else {
        int rc = resolve_path(c, script, &h->script);
        if (rc < 0) {
            free(script);
            return yerr(d, m, err, errlen, "out of memory"), NOTE_ERR(), -1;
        }
        if (file_stamp_take(h->script, &h->seen) < 0)
            yerr(d, m, err, errlen, "script: %s does not exist", h->script), NOTE_ERR();
        else
            script_schema(h, sc, errs, nerr);
        free(script);
    }
    ynode *own = ymap_get(n, "options");
    if (own && ynode_expect(d, own, Y_MAP, "options", err, errlen) < 0) {
        NOTE_ERR();
    } else if (own || dopts) {
        buf_t b;
        buf_init(&b, 1024 * 1024);
        if (merged_json(d, own, dopts, &b, err, errlen) < 0)
            NOTE_ERR();
        else if (b.failed)
            yerr(d, own ? own : dopts, err, errlen, "options: larger than 1 MiB as JSON"), NOTE_ERR();
        else
            h->options_json = buf_steal(&b, NULL);
        buf_free(&b);
        check_options(d, h, sc, own, dopts, errs, nerr);
    }
    load_hook_fields(d, n, where, h, errs, nerr);
    if ((m = ymap_get(n, "enabled")) && ynode_bool(d, m, "enabled", &h->enabled, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "id")))
        load_hook_id(d, m, where, index, h, errs, nerr);
    return *nerr > before ? -1 : 0;
}

static const char *const serve_keys[] = {"listen", "journal", "concurrency", "order_key", "retry",
                                         "accept_unknown_events", "max_body_kb", "request_timeout_ms",
                                         "idle_timeout_ms", "max_connections", "max_connections_per_ip",
                                         "drain_ms", "workers", "worker_memory_mb", "hard_deadline_ms",
                                         "poison_after", "journal_wal_mb", "journal_keep_days",
                                         "journal_keep_events", NULL};
static const char *const serve_retry_keys[] = {"attempts", "base_ms", "max_ms", NULL};
static const char *const poller_keys[] = {"enabled", "interval_ms", "account_id", NULL};

/* serve.listen: HOST:PORT, HOST an IPv4 address or localhost, PORT 0 to 65535 (what
 * wixr serve takes). Whether it can be bound is for `wixr check` to try. */
static int check_listen(const ydoc *d, const ynode *n, const char *v, char *err, size_t errlen)
{
    const char *colon = strrchr(v, ':');
    if (!colon || colon == v || !colon[1])
        return yerr(d, n, err, errlen, "serve.listen: expected HOST:PORT, got '%s'", v);
    char host[64];
    size_t hl = (size_t)(colon - v);
    if (hl >= sizeof host)
        return yerr(d, n, err, errlen, "serve.listen: '%.*s' is not an IPv4 address", (int)hl, v);
    memcpy(host, v, hl);
    host[hl] = '\0';
    unsigned char a[4];
    if (strcmp(host, "localhost") && inet_pton(AF_INET, host, a) != 1)
        return yerr(d, n, err, errlen, "serve.listen: '%s' is not an IPv4 address (or localhost)", host);
    char *end;
    errno = 0;
    long port = strtol(colon + 1, &end, 10);
    if (*end || errno || port < 0 || port > 65535 || colon[1] == '-' || colon[1] == '+' || colon[1] == ' ')
        return yerr(d, n, err, errlen, "serve.listen: bad port '%s' (0 to 65535)", colon + 1);
    return 0;
}

static void load_serve(const ydoc *d, const ynode *n, wixr_config *c, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    serve_settings *s = &c->serve;
    if (ynode_expect(d, n, Y_MAP, "serve", err, errlen) < 0) {
        NOTE_ERR();
        return;
    }
    check_keys(d, n, serve_keys, "serve", errs, nerr);
    ynode *m;
    long v;
    if ((m = ymap_get(n, "listen"))) {
        char *l = NULL;
        if (get_string(d, m, "serve.listen", &l, err, errlen) < 0 || check_listen(d, m, l, err, errlen) < 0) {
            NOTE_ERR();
            free(l);
        } else {
            free(s->listen);
            s->listen = l;
            char pos[512];
            snprintf(pos, sizeof pos, "%s:%d:%d", d->file, m->line, m->col);
            free(s->listen_where);
            s->listen_where = strdup(pos);
        }
    }
    if ((m = ymap_get(n, "journal"))) {
        char *p = NULL;
        if (get_string(d, m, "serve.journal", &p, err, errlen) < 0) {
            NOTE_ERR();
        } else {
            free(s->journal);
            resolve_path(c, p, &s->journal);
            free(p);
        }
    }
    if ((m = ymap_get(n, "concurrency"))) {
        if (get_long(d, m, "serve.concurrency", 1, 100000, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            s->concurrency = (int)v;
    }
    if ((m = ymap_get(n, "order_key"))) {
        if (ynode_expect(d, m, Y_SEQ, "serve.order_key", err, errlen) < 0) {
            NOTE_ERR();
        } else {
            for (int i = 0; i < s->norder_key; i++)
                free(s->order_key[i]);
            free(s->order_key);
            s->norder_key = 0;
            s->order_key = calloc(m->n ? m->n : 1, sizeof *s->order_key);
            for (ynode *k = m->head; k && s->order_key; k = k->next) {
                char *f = NULL;
                if (get_string(d, k, "serve.order_key[]", &f, err, errlen) < 0)
                    NOTE_ERR();
                else
                    s->order_key[s->norder_key++] = f;
            }
        }
    }
    if ((m = ymap_get(n, "retry"))) {
        if (ynode_expect(d, m, Y_MAP, "serve.retry", err, errlen) < 0)
            NOTE_ERR();
        check_keys(d, m, serve_retry_keys, "serve.retry", errs, nerr);
        ynode *r;
        if ((r = ymap_get(m, "attempts"))) {
            if (get_long(d, r, "serve.retry.attempts", 1, 1000, &v, err, errlen) < 0)
                NOTE_ERR();
            else
                s->retry_attempts = (int)v;
        }
        if ((r = ymap_get(m, "base_ms")) && get_long(d, r, "serve.retry.base_ms", 0, 86400000, &s->retry_base_ms, err, errlen) < 0)
            NOTE_ERR();
        if ((r = ymap_get(m, "max_ms")) && get_long(d, r, "serve.retry.max_ms", 0, 86400000, &s->retry_max_ms, err, errlen) < 0)
            NOTE_ERR();
    }
    if ((m = ymap_get(n, "accept_unknown_events")) &&
        ynode_bool(d, m, "serve.accept_unknown_events", &s->accept_unknown_events, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "max_body_kb")) && get_long(d, m, "serve.max_body_kb", 1, 65536, &s->max_body_kb, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "drain_ms")) && get_long(d, m, "serve.drain_ms", 0, 3600000, &s->drain_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "workers"))) {
        if (get_long(d, m, "serve.workers", 1, 64, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            s->workers = (int)v;
    }
    if ((m = ymap_get(n, "worker_memory_mb")) &&
        get_long(d, m, "serve.worker_memory_mb", 64, 1048576, &s->worker_memory_mb, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "journal_keep_days")) &&
        get_long(d, m, "serve.journal_keep_days", 0, 36500, &s->journal_keep_days, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "journal_keep_events")) &&
        get_long(d, m, "serve.journal_keep_events", 0, 1000000000, &s->journal_keep_events, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "journal_wal_mb")) &&
        get_long(d, m, "serve.journal_wal_mb", 1, 65536, &s->journal_wal_mb, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "hard_deadline_ms")) &&
        get_long(d, m, "serve.hard_deadline_ms", 100, 3600000, &s->hard_deadline_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "poison_after"))) {
        if (get_long(d, m, "serve.poison_after", 1, 100, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            s->poison_after = (int)v;
    }
    if ((m = ymap_get(n, "request_timeout_ms")) &&
        get_long(d, m, "serve.request_timeout_ms", 1000, 3600000, &s->request_timeout_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "idle_timeout_ms")) &&
        get_long(d, m, "serve.idle_timeout_ms", 1000, 3600000, &s->idle_timeout_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "max_connections"))) {
        if (get_long(d, m, "serve.max_connections", 1, 16384, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            s->max_connections = (int)v;
    }
    if ((m = ymap_get(n, "max_connections_per_ip"))) {
        if (get_long(d, m, "serve.max_connections_per_ip", 0, 16384, &v, err, errlen) < 0)
            NOTE_ERR();
        else
            s->max_connections_per_ip = (int)v;
    }
}

static void load_poller(const ydoc *d, const ynode *n, wixr_config *c, buf_t *errs, int *nerr)
{
    char err[1024];
    const size_t errlen = sizeof err;
    serve_settings *s = &c->serve;
    if (ynode_expect(d, n, Y_MAP, "poller", err, errlen) < 0) {
        NOTE_ERR();
        return;
    }
    check_keys(d, n, poller_keys, "poller", errs, nerr);
    ynode *m;
    if ((m = ymap_get(n, "enabled")) && ynode_bool(d, m, "poller.enabled", &s->poller_enabled, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "interval_ms")) &&
        get_long(d, m, "poller.interval_ms", 100, 86400000, &s->poller_interval_ms, err, errlen) < 0)
        NOTE_ERR();
    if ((m = ymap_get(n, "account_id")) && get_string(d, m, "poller.account_id", &s->poller_account_id, err, errlen) < 0)
        NOTE_ERR();
}

static void load_runtime_and_hooks(const ydoc *d, wixr_config *c, buf_t *errs, int *nerr)
{
    char err[1024];
    ynode *rt = ymap_get(d->root, "runtime");
    if (rt) {
        if (ynode_expect(d, rt, Y_MAP, "runtime", err, sizeof err) < 0) {
            add_error(errs, nerr, err);
        } else {
            check_keys(d, rt, runtime_keys, "runtime", errs, nerr);
            ynode *m;
            if ((m = ymap_get(rt, "limits")))
                load_limits(d, m, "runtime.limits", &c->limits, errs, nerr);
            if ((m = ymap_get(rt, "max_chain_depth"))) {
                long v;
                if (get_long(d, m, "runtime.max_chain_depth", 0, 64, &v, err, sizeof err) < 0)
                    add_error(errs, nerr, err);
                else
                    c->max_chain_depth = (int)v;
            }
            if ((m = ymap_get(rt, "state_dir"))) {
                char *v = NULL;
                if (get_string(d, m, "runtime.state_dir", &v, err, sizeof err) < 0) {
                    add_error(errs, nerr, err);
                } else {
                    free(c->state_dir);
                    resolve_path(c, v, &c->state_dir);
                    free(v);
                }
            }
            if ((m = ymap_get(rt, "lua_paths"))) {
                if (ynode_expect(d, m, Y_SEQ, "runtime.lua_paths", err, sizeof err) < 0) {
                    add_error(errs, nerr, err);
                } else {
                    c->lua_paths = calloc(m->n ? m->n : 1, sizeof *c->lua_paths);
                    for (ynode *k = m->head; k && c->lua_paths; k = k->next) {
                        char *v = NULL;
                        if (get_string(d, k, "runtime.lua_paths[]", &v, err, sizeof err) < 0) {
                            add_error(errs, nerr, err);
                            continue;
                        }
                        resolve_path(c, v, &c->lua_paths[c->nlua_paths++]);
                        free(v);
                    }
                }
            }
        }
    }
    /* defaults: the base every hook starts from */
    hook_def base = {.allow = WIX_OP_ALL, .max_mutations = -1, .limits = c->limits};
    const ynode *dopts = NULL;
    ynode *dn = ymap_get(d->root, "defaults");
    if (dn && ynode_expect(d, dn, Y_MAP, "defaults", err, sizeof err) < 0) {
        add_error(errs, nerr, err);
    } else if (dn) {
        check_keys(d, dn, defaults_keys, "defaults", errs, nerr);
        load_hook_fields(d, dn, "defaults", &base, errs, nerr);
        dopts = ymap_get(dn, "options");
        if (dopts && ynode_expect(d, dopts, Y_MAP, "defaults.options", err, sizeof err) < 0) {
            add_error(errs, nerr, err);
            dopts = NULL;
        }
    }
    ynode *hooks = ymap_get(d->root, "hooks");
    if (!hooks || (hooks->type == Y_SCALAR && hooks->plain && (!hooks->len || !strcmp(hooks->str, "~") ||
                                                               !strcmp(hooks->str, "null"))))
        return; /* "hooks:" with nothing under it: no hooks yet */
    if (ynode_expect(d, hooks, Y_MAP, "hooks", err, sizeof err) < 0) {
        add_error(errs, nerr, err);
        return;
    }
    size_t total = 0;
    for (ynode *ev = hooks->head; ev; ev = ev->next)
        total += ev->type == Y_SEQ ? ev->n : 0;
    c->hooks = calloc(total ? total : 1, sizeof *c->hooks);
    opt_schema *schemas = calloc(total ? total : 1, sizeof *schemas);
    if (!c->hooks || !schemas) {
        free(schemas);
        add_error(errs, nerr, "out of memory");
        return;
    }
    pthread_mutex_lock(&known.lock);
    known.gen++;
    for (ynode *ev = hooks->head; ev; ev = ev->next) {
        char f[160];
        snprintf(f, sizeof f, "hooks.%s", ev->key->str);
        if (ynode_expect(d, ev, Y_SEQ, f, err, sizeof err) < 0) {
            add_error(errs, nerr, err);
            continue;
        }
        int i = 0;
        for (ynode *hn = ev->head; hn; hn = hn->next, i++) {
            int k = c->nhooks++;
            load_hook(d, hn, ev->key->str, i, c, &base, dopts, &c->hooks[k], &schemas[k], errs, nerr);
        }
    }
    check_default_options(d, dopts, schemas, c->nhooks, errs, nerr);
    for (int i = 0; i < c->nhooks; i++)
        schema_free(&schemas[i]);
    schemas_prune();
    pthread_mutex_unlock(&known.lock);
    free(schemas);
}

static int read_key_file(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read the API key file: %s", path, strerror(errno));
        return -1;
    }
    char line[8192];
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
        line[--n] = '\0';
    if (!n) {
        snprintf(err, errlen, "%s: the API key file is empty", path);
        return -1;
    }
    return set_str(out, line);
}

/* The one loader: path names the file (NULL: search for one); when text is
 * not NULL it is the file's content, already in memory. */
static int load(wixr_config *c, const char *path, const char *text, size_t len, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    wix_settings *s = &c->wix;
    s->transport = TRANSPORT_AUTO;
    s->timeout_ms = 30000;
    s->connect_timeout_ms = 10000;
    s->retry_attempts = 5;
    s->retry_base_ms = 200;
    s->retry_max_ms = 10000;
    s->retry_total_ms = 60000;
    s->rate_limit = 200;
    s->rate_window_ms = 60000;
    s->concurrency = 16;
    s->sandbox_delivery_delay_ms = 0;
    c->limits.instructions = 10000000;
    c->limits.memory_mb = 64;
    c->limits.wall_ms = 30000;
    c->max_chain_depth = 8;
    c->serve.concurrency = 32;
    c->serve.retry_attempts = 5;
    c->serve.retry_base_ms = 1000;
    c->serve.retry_max_ms = 60000;
    c->serve.max_body_kb = 1024;
    c->serve.drain_ms = 10000;
    {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        c->serve.workers = cores < 1 ? 1 : cores > 64 ? 64 : (int)cores;
    }
    c->serve.poison_after = 2;
    c->serve.journal_wal_mb = 64;
    c->serve.journal_keep_days = 7;
    c->serve.request_timeout_ms = 30000;
    c->serve.idle_timeout_ms = 15000;
    c->serve.max_connections = 1024;
    c->serve.max_connections_per_ip = 256;
    c->serve.poller_interval_ms = 5000;
    if (set_str(&c->serve.listen, "127.0.0.1:8480") < 0)
        goto oom;
    static const char *const default_keys[] = {"external_id", "subscription_id", "account_id"};
    c->serve.order_key = calloc(3, sizeof *c->serve.order_key);
    if (!c->serve.order_key)
        goto oom;
    for (int i = 0; i < 3; i++)
        c->serve.order_key[c->serve.norder_key++] = strdup(default_keys[i]);
    if (set_str(&s->base_url, "https://www.wixapis.com") < 0 ||
        set_str(&s->sandbox_catalog, WIXR_HOME "/config/catalog.yaml") < 0)
        goto oom;
    const char *home = getenv("WIXR_HOME");
    if (home && *home) {
        char cat[PATH_MAX];
        snprintf(cat, sizeof cat, "%s/config/catalog.yaml", home);
        set_str(&s->sandbox_catalog, cat);
    }

    if (!path && !text) {
        const char *env = getenv("WIXR_CONFIG");
        if (env && *env)
            path = env;
        else if (file_exists("wixr.yaml"))
            path = "wixr.yaml";
        else if (file_exists("config/wixr.yaml"))
            path = "config/wixr.yaml";
    }
    if (path) {
        ydoc *d = text ? ytree_load_string(path, text, len, err, errlen) : ytree_load_file(path, err, errlen);
        if (!d)
            goto fail;
        c->path = strdup(path);
        const char *slash = strrchr(path, '/');
        c->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        buf_t errs;
        int nerr = 0;
        char one[1024];
        buf_init(&errs, 64 * 1024);
        if (d->root && ynode_expect(d, d->root, Y_MAP, "configuration", one, sizeof one) < 0) {
            add_error(&errs, &nerr, one);
        } else if (d->root) {
            check_keys(d, d->root, top_keys, "the configuration", &errs, &nerr);
            ynode *w = ymap_get(d->root, "wix");
            if (w)
                load_wix(d, w, c, &errs, &nerr);
            load_runtime_and_hooks(d, c, &errs, &nerr);
            ynode *sv = ymap_get(d->root, "serve");
            if (sv)
                load_serve(d, sv, c, &errs, &nerr);
            ynode *pl = ymap_get(d->root, "poller");
            if (pl)
                load_poller(d, pl, c, &errs, &nerr);
        }
        ytree_free(d);
        if (nerr) {
            list_errors(err, errlen, path, buf_cstr(&errs), nerr);
            buf_free(&errs);
            goto fail;
        }
        buf_free(&errs);
    }
    /* Unset, the state folder is .wixr beside the file (of the working folder
     * when no file was read), wherever the command runs: a service started
     * from / and a CLI run from the project folder share one journal and one
     * installation key. The embedded emulator's state defaults into it. */
    if (!c->state_dir && resolve_path(c, ".wixr", &c->state_dir) < 0)
        goto oom;
    if (!s->sandbox_db) {
        char db[PATH_MAX];
        snprintf(db, sizeof db, "%s/sandbox.db", c->state_dir);
        if (set_str(&s->sandbox_db, db) < 0)
            goto oom;
    }

    const char *v;
    if ((v = getenv("WIX_BASE_URL")) && *v && set_str(&s->base_url, v) < 0)
        goto oom;
    if ((v = getenv("WIX_ACCOUNT_ID")) && *v && set_str(&s->account_id, v) < 0)
        goto oom;
    if ((v = getenv("WIX_API_KEY")) && *v && set_str(&s->api_key, v) < 0)
        goto oom;
    /* A trailing slash on the base URL would double the one every path starts with. */
    size_t bl = strlen(s->base_url);
    while (bl > 0 && s->base_url[bl - 1] == '/')
        s->base_url[--bl] = '\0';
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    config_free(c);
    return -1;
}

int config_load(wixr_config *c, const char *path, char *err, size_t errlen)
{
    return load(c, path, NULL, 0, err, errlen);
}

int config_load_string(wixr_config *c, const char *name, const char *text, size_t len, char *err, size_t errlen)
{
    return load(c, name ? name : "<string>", text ? text : "", len, err, errlen);
}

void config_free(wixr_config *c)
{
    wix_settings *s = &c->wix;
    if (s->api_key) {
        /* scrub the secret before giving the memory back */
        volatile char *p = s->api_key;
        while (*p)
            *p++ = 0;
    }
    free(s->api_key);
    free(s->api_key_file);
    free(s->base_url);
    free(s->account_id);
    free(s->sandbox_db);
    free(s->sandbox_catalog);
    free(s->audit);
    for (int i = 0; i < c->nhooks; i++) {
        hook_def *h = &c->hooks[i];
        free(h->event);
        free(h->id);
        free(h->script);
        free(h->where);
        free(h->options_json);
    }
    free(c->hooks);
    for (int i = 0; i < c->nlua_paths; i++)
        free(c->lua_paths[i]);
    free(c->lua_paths);
    free(c->serve.listen);
    free(c->serve.listen_where);
    free(c->serve.journal);
    for (int i = 0; i < c->serve.norder_key; i++)
        free(c->serve.order_key[i]);
    free(c->serve.order_key);
    free(c->serve.poller_account_id);
    free(c->state_dir);
    free(c->path);
    free(c->dir);
    memset(c, 0, sizeof *c);
}
