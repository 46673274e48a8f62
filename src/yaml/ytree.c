/*
 * ytree.c -- libyaml events into a positioned tree (see ytree.h).
 */
#include "ytree.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "../util/nearest.h"
#include "../util/strset.h"

#define YTREE_MAX_DEPTH 64
/* What aliases may add to a document in all: past either cap a file is refused at the
 * alias that crosses it, so a few lines of nested aliases (an "alias bomb") cannot
 * make the loader build millions of nodes. */
#define YTREE_MAX_ALIAS_NODES 100000
#define YTREE_MAX_ALIAS_BYTES (16u << 20)

static void node_free(ynode *n)
{
    while (n) {
        ynode *next = n->next;
        node_free(n->head);
        if (n->key)
            node_free(n->key);
        free(n->str);
        free(n);
        n = next;
    }
}

void ytree_free(ydoc *d)
{
    if (!d)
        return;
    node_free(d->root);
    free(d->file);
    free(d);
}

/* An anchor seen so far: node is NULL while the anchored collection is still being
 * read (an alias to it from inside is refused), then the finished node. */
typedef struct yanchor {
    char *name;
    const ynode *node;
    int height;            /* levels of collections under and including node */
} yanchor;

typedef struct loader {
    yaml_parser_t parser;
    const char *name;
    char *err;
    size_t errlen;
    int depth;
    yanchor *anchors;
    size_t nanchors, capanchors;
    size_t alias_nodes, alias_bytes;   /* added by aliases so far */
    ynode *spare;          /* merge-key values, kept (anchors may name them) until the end */
} loader;

static int lerr(loader *l, yaml_mark_t m, const char *msg, const char *detail)
{
    snprintf(l->err, l->errlen, "%s:%zu:%zu: %s%s%s", l->name, m.line + 1, m.column + 1, msg,
             detail ? ": " : "", detail ? detail : "");
    return -1;
}

static ynode *new_node(ytype t, yaml_mark_t m)
{
    ynode *n = calloc(1, sizeof *n);
    if (n) {
        n->type = t;
        n->line = (int)m.line + 1;
        n->col = (int)m.column + 1;
    }
    return n;
}

static int mark_err(loader *l, const ynode *n, const char *msg, const char *detail)
{
    yaml_mark_t m = {0, (size_t)n->line - 1, (size_t)n->col - 1};
    return lerr(l, m, msg, detail);
}

static int next_event(loader *l, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&l->parser, ev)) {
        yaml_mark_t m = l->parser.problem_mark;
        if (m.line == 0 && m.column == 0 && l->parser.context_mark.line)
            m = l->parser.context_mark;
        return lerr(l, m, l->parser.problem ? l->parser.problem : "YAML syntax error",
                    l->parser.context);
    }
    return 0;
}

static ynode *load_node(loader *l, yaml_event_t *ev);

/* Levels of collections in n (0 for a scalar). Bounded by YTREE_MAX_DEPTH. */
static int node_height(const ynode *n)
{
    int h = 0;
    for (const ynode *c = n->type == Y_SCALAR ? NULL : n->head; c; c = c->next) {
        int ch = node_height(c);
        if (ch > h)
            h = ch;
    }
    return n->type == Y_SCALAR ? 0 : h + 1;
}

/* Nodes (keys included) and scalar bytes of the list that starts at n (n and its
 * siblings, with their children); counting stops once past limit. */
static void node_size(const ynode *n, size_t *nodes, size_t *bytes, size_t limit)
{
    for (; n && *nodes <= limit; n = n->next) {
        *nodes += 1 + (n->key != NULL);
        *bytes += n->len + (n->key ? n->key->len : 0);
        node_size(n->head, nodes, bytes, limit);
    }
}

/* A deep copy of n alone (not its siblings, not its key); NULL when out of memory. */
static ynode *node_copy(const ynode *n)
{
    ynode *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->type = n->type;
    c->line = n->line;
    c->col = n->col;
    c->len = n->len;
    c->plain = n->plain;
    c->n = n->n;
    if (n->str && !(c->str = malloc(n->len + 1)))
        goto fail;
    if (n->str)
        memcpy(c->str, n->str, n->len + 1);
    ynode **tail = &c->head;
    for (const ynode *k = n->head; k; k = k->next) {
        ynode *kc = node_copy(k);
        if (!kc)
            goto fail;
        *tail = kc;
        tail = &kc->next;
        if (k->key && !(kc->key = node_copy(k->key)))
            goto fail;
    }
    return c;
fail:
    node_free(c);
    return NULL;
}

/* Charges a copy of n alone (its children, not its siblings; its key when with_key),
 * made at the position of at, to the caps on what aliases add (what, e.g. "alias *x",
 * names it in the message); 0 or -1 with the error set. */
static int charge_copy(loader *l, const ynode *n, int with_key, int height, const ynode *at, const char *what)
{
    size_t nodes = 1, bytes = n->len;
    if (with_key && n->key) {
        nodes++;
        bytes += n->key->len;
    }
    node_size(n->head, &nodes, &bytes, YTREE_MAX_ALIAS_NODES);
    char msg[200];
    if (l->alias_nodes + nodes > YTREE_MAX_ALIAS_NODES || l->alias_bytes + bytes > YTREE_MAX_ALIAS_BYTES) {
        snprintf(msg, sizeof msg,
                 "%.60s: aliases would expand the document past %d nodes or %u MiB (refused: an alias bomb?)",
                 what, YTREE_MAX_ALIAS_NODES, YTREE_MAX_ALIAS_BYTES >> 20);
        return mark_err(l, at, msg, NULL);
    }
    if (l->depth + height > YTREE_MAX_DEPTH) {
        snprintf(msg, sizeof msg, "%.60s: nesting too deep once expanded", what);
        return mark_err(l, at, msg, NULL);
    }
    l->alias_nodes += nodes;
    l->alias_bytes += bytes;
    return 0;
}

/* Records an anchor (node NULL: its collection is being read). Returns its index or -1. */
static long add_anchor(loader *l, const char *name, yaml_mark_t m)
{
    if (l->nanchors == l->capanchors) {
        size_t cap = l->capanchors ? l->capanchors * 2 : 16;
        yanchor *p = realloc(l->anchors, cap * sizeof *p);
        if (!p)
            return lerr(l, m, "out of memory", NULL);
        l->anchors = p;
        l->capanchors = cap;
    }
    yanchor *a = &l->anchors[l->nanchors];
    if (!(a->name = strdup(name)))
        return lerr(l, m, "out of memory", NULL);
    a->node = NULL;
    a->height = 0;
    return (long)l->nanchors++;
}

static void anchor_done(loader *l, long i, const ynode *n)
{
    l->anchors[i].node = n;
    l->anchors[i].height = node_height(n);
}

/* An alias: a copy of the node its anchor names (the latest anchor of that name),
 * keeping the anchor's positions, so a problem inside it points at the anchor's text. */
static ynode *load_alias(loader *l, yaml_event_t *ev)
{
    const char *name = (const char *)ev->data.alias.anchor;
    ynode at = {.line = (int)ev->start_mark.line + 1, .col = (int)ev->start_mark.column + 1};
    for (size_t i = l->nanchors; i-- > 0;) {
        const yanchor *a = &l->anchors[i];
        if (strcmp(a->name, name))
            continue;
        if (!a->node)
            return mark_err(l, &at, "alias refers to the node it is inside of", name), NULL;
        char what[100];
        snprintf(what, sizeof what, "alias *%.60s", name);
        if (charge_copy(l, a->node, 0, a->height, &at, what) < 0)
            return NULL;
        ynode *c = node_copy(a->node);
        if (!c)
            return mark_err(l, &at, "out of memory", NULL), NULL;
        return c;
    }
    return mark_err(l, &at, "alias to an unknown anchor", name), NULL;
}

/* The value of a merge key ("<<") is a mapping or a list of mappings. */
static int check_merge(loader *l, const ynode *src)
{
    if (src->type == Y_MAP)
        return 0;
    if (src->type == Y_SEQ) {
        for (const ynode *k = src->head; k; k = k->next)
            if (k->type != Y_MAP)
                return mark_err(l, k, "merge key '<<': each item must be a mapping", NULL);
        return 0;
    }
    return mark_err(l, src, "merge key '<<' takes a mapping or a list of mappings", NULL);
}

/* Adds to map each entry of the merged mapping(s) whose key map does not have yet:
 * the map's own keys win, and of a list the earlier mappings win over later ones. */
static int merge_one(loader *l, ynode *map, ynode ***tail, const ynode *from, const ynode *at)
{
    for (const ynode *e = from->head; e; e = e->next) {
        if (ymap_get(map, e->key->str))
            continue;
        if (charge_copy(l, e, 1, node_height(e), at, "merge key '<<'") < 0)
            return -1;
        ynode *c = node_copy(e);
        if (!c || !(c->key = node_copy(e->key))) {
            node_free(c);
            return mark_err(l, at, "out of memory", NULL);
        }
        **tail = c;
        *tail = &c->next;
        map->n++;
    }
    return 0;
}

static int apply_merge(loader *l, ynode *map, const ynode *src)
{
    ynode **tail = &map->head;
    while (*tail)
        tail = &(*tail)->next;
    if (src->type == Y_MAP)
        return merge_one(l, map, &tail, src, src->key);
    for (const ynode *m = src->head; m; m = m->next)
        if (merge_one(l, map, &tail, m, src->key) < 0)
            return -1;
    return 0;
}

/* Consumes events until the matching end event; ev is the start event. */
static ynode *load_collection(loader *l, yaml_event_t *start, ytype t)
{
    if (++l->depth > YTREE_MAX_DEPTH) {
        lerr(l, start->start_mark, "nesting too deep", NULL);
        return NULL;
    }
    ynode *coll = new_node(t, start->start_mark);
    if (!coll) {
        lerr(l, start->start_mark, "out of memory", NULL);
        return NULL;
    }
    ynode **tail = &coll->head;
    ynode *merge = NULL; /* the value of its "<<" key */
    strset keys = {0};           /* (a mapping of thousands of keys: each told apart by hash) */
    yaml_event_type_t end = t == Y_MAP ? YAML_MAPPING_END_EVENT : YAML_SEQUENCE_END_EVENT;
    for (;;) {
        yaml_event_t ev;
        if (next_event(l, &ev) < 0)
            goto fail;
        if (ev.type == end) {
            yaml_event_delete(&ev);
            break;
        }
        ynode *key = NULL;
        if (t == Y_MAP) {
            key = load_node(l, &ev);
            yaml_event_delete(&ev);
            if (!key)
                goto fail;
            if (key->type != Y_SCALAR) {
                mark_err(l, key, "mapping keys must be plain scalars", NULL);
                node_free(key);
                goto fail;
            }
            int is_merge = key->plain && !strcmp(key->str, "<<");
            int added = is_merge ? merge == NULL : strset_add(&keys, key->str);
            if (added <= 0) {
                mark_err(l, key, added < 0 ? "out of memory" : "duplicate key", added < 0 ? NULL : key->str);
                node_free(key);
                goto fail;
            }
            if (next_event(l, &ev) < 0) {
                node_free(key);
                goto fail;
            }
            if (is_merge) {
                ynode *src = load_node(l, &ev);
                yaml_event_delete(&ev);
                if (!src || check_merge(l, src) < 0) {
                    node_free(src);
                    node_free(key);
                    goto fail;
                }
                src->key = key; /* kept until the end: an anchor may name it */
                src->next = l->spare;
                l->spare = src;
                merge = src;
                continue;
            }
        }
        ynode *val = load_node(l, &ev);
        yaml_event_delete(&ev);
        if (!val) {
            node_free(key);
            goto fail;
        }
        val->key = key;
        *tail = val;
        tail = &val->next;
        coll->n++;
    }
    strset_free(&keys);
    if (merge && apply_merge(l, coll, merge) < 0)
        goto fail;
    l->depth--;
    return coll;
fail:
    strset_free(&keys);
    node_free(coll);
    return NULL;
}

static ynode *load_node(loader *l, yaml_event_t *ev)
{
    const unsigned char *anchor = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        ynode *n = new_node(Y_SCALAR, ev->start_mark);
        if (!n)
            return lerr(l, ev->start_mark, "out of memory", NULL), NULL;
        n->len = ev->data.scalar.length;
        n->str = malloc(n->len + 1);
        if (!n->str) {
            free(n);
            return lerr(l, ev->start_mark, "out of memory", NULL), NULL;
        }
        memcpy(n->str, ev->data.scalar.value, n->len);
        n->str[n->len] = '\0';
        n->plain = ev->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (ev->data.scalar.anchor) {
            long a = add_anchor(l, (const char *)ev->data.scalar.anchor, ev->start_mark);
            if (a < 0) {
                node_free(n);
                return NULL;
            }
            anchor_done(l, a, n);
        }
        return n;
    }
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        int map = ev->type == YAML_MAPPING_START_EVENT;
        anchor = map ? ev->data.mapping_start.anchor : ev->data.sequence_start.anchor;
        long a = anchor ? add_anchor(l, (const char *)anchor, ev->start_mark) : -1;
        if (anchor && a < 0)
            return NULL;
        ynode *n = load_collection(l, ev, map ? Y_MAP : Y_SEQ);
        if (n && a >= 0)
            anchor_done(l, a, n);
        return n;
    }
    case YAML_ALIAS_EVENT:
        return load_alias(l, ev);
    default:
        return lerr(l, ev->start_mark, "unexpected YAML event", NULL), NULL;
    }
}

ydoc *ytree_load_string(const char *name, const char *text, size_t len, char *err, size_t errlen)
{
    loader l = {.name = name, .err = err, .errlen = errlen};
    ydoc *d = calloc(1, sizeof *d);
    if (!d || !(d->file = strdup(name))) {
        free(d);
        snprintf(err, errlen, "%s: out of memory", name);
        return NULL;
    }
    if (!yaml_parser_initialize(&l.parser)) {
        snprintf(err, errlen, "%s: cannot initialise the YAML parser", name);
        ytree_free(d);
        return NULL;
    }
    yaml_parser_set_input_string(&l.parser, (const unsigned char *)text, len);
    int ok = 0, docs = 0;
    for (;;) {
        yaml_event_t ev;
        if (next_event(&l, &ev) < 0)
            break;
        if (ev.type == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            ok = 1;
            break;
        }
        if (ev.type == YAML_DOCUMENT_START_EVENT) {
            if (++docs > 1) {
                lerr(&l, ev.start_mark, "only one YAML document is allowed", NULL);
                yaml_event_delete(&ev);
                break;
            }
        }
        if (ev.type == YAML_SCALAR_EVENT || ev.type == YAML_SEQUENCE_START_EVENT ||
            ev.type == YAML_MAPPING_START_EVENT || ev.type == YAML_ALIAS_EVENT) {
            d->root = load_node(&l, &ev);
            yaml_event_delete(&ev);
            if (!d->root)
                break;
            continue;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&l.parser);
    for (size_t i = 0; i < l.nanchors; i++)
        free(l.anchors[i].name);
    free(l.anchors);
    node_free(l.spare);
    if (!ok) {
        ytree_free(d);
        return NULL;
    }
    return d;
}

ydoc *ytree_load_file(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            char *p = realloc(text, cap);
            if (!p) {
                free(text);
                fclose(f);
                snprintf(err, errlen, "%s: out of memory", path);
                return NULL;
            }
            text = p;
        }
        size_t n = fread(text + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(text);
        snprintf(err, errlen, "%s: read error", path);
        return NULL;
    }
    ydoc *d = ytree_load_string(path, text ? text : "", len, err, errlen);
    free(text);
    return d;
}

ynode *ymap_get(const ynode *map, const char *key)
{
    if (!map || map->type != Y_MAP)
        return NULL;
    for (ynode *v = map->head; v; v = v->next)
        if (strcmp(v->key->str, key) == 0)
            return v;
    return NULL;
}

int yerr(const ydoc *d, const ynode *n, char *err, size_t errlen, const char *fmt, ...)
{
    int k = snprintf(err, errlen, "%s:%d:%d: ", d->file, n ? n->line : 1, n ? n->col : 1);
    if (k < 0 || (size_t)k >= errlen)
        return -1;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One line, whatever a quoted value holds: control characters are written escaped. */
    size_t o = (size_t)k;
    for (const unsigned char *p = (const unsigned char *)msg; *p && o + 5 < errlen; p++) {
        if (*p >= 0x20 && *p != 0x7f)
            err[o++] = (char)*p;
        else if (*p == '\n' || *p == '\t' || *p == '\r')
            o += (size_t)snprintf(err + o, errlen - o, "\\%c", *p == '\n' ? 'n' : *p == '\t' ? 't' : 'r');
        else
            o += (size_t)snprintf(err + o, errlen - o, "\\x%02x", *p);
    }
    err[o] = '\0';
    return -1;
}

static const char *type_word(ytype t)
{
    return t == Y_SCALAR ? "a scalar" : t == Y_SEQ ? "a list" : "a mapping";
}

int ynode_expect(const ydoc *d, const ynode *n, ytype t, const char *field, char *err, size_t errlen)
{
    if (n->type == t)
        return 0;
    return yerr(d, n, err, errlen, "%s: expected %s, got %s", field, type_word(t), type_word(n->type));
}

int ynode_str(const ydoc *d, const ynode *n, const char *field, const char **out, char *err, size_t errlen)
{
    if (ynode_expect(d, n, Y_SCALAR, field, err, errlen) < 0)
        return -1;
    *out = n->str;
    return 0;
}

int ynode_int(const ydoc *d, const ynode *n, const char *field, long long min, long long max, long long *out,
              char *err, size_t errlen)
{
    if (ynode_expect(d, n, Y_SCALAR, field, err, errlen) < 0)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(n->str, &end, 10);
    if (!n->plain || n->len == 0 || *end || errno)
        return yerr(d, n, err, errlen, "%s: expected a whole number, got '%s'", field, n->str);
    if (v < min || v > max)
        return yerr(d, n, err, errlen, "%s: %lld is out of range (%lld to %lld)", field, v, min, max);
    *out = v;
    return 0;
}

int ynode_bool(const ydoc *d, const ynode *n, const char *field, int *out, char *err, size_t errlen)
{
    if (ynode_expect(d, n, Y_SCALAR, field, err, errlen) < 0)
        return -1;
    if (n->plain && (!strcmp(n->str, "true") || !strcmp(n->str, "yes"))) {
        *out = 1;
        return 0;
    }
    if (n->plain && (!strcmp(n->str, "false") || !strcmp(n->str, "no"))) {
        *out = 0;
        return 0;
    }
    return yerr(d, n, err, errlen, "%s: expected true or false, got '%s'", field, n->str);
}

/* The message for one key of map that is not in allowed; 0 when it is allowed. */
static int check_key(const ydoc *d, const ynode *v, const char *const *allowed, size_t nallowed, const char *where,
                     char *err, size_t errlen)
{
    const char *k = v->key->str;
    for (size_t i = 0; i < nallowed; i++)
        if (!strcmp(allowed[i], k))
            return 0;
    const char *best = nearest_name(k, allowed, nallowed, sizeof *allowed);
    if (best)
        return yerr(d, v->key, err, errlen, "unknown key '%s' in %s (did you mean '%s'?)", k, where, best);
    return yerr(d, v->key, err, errlen, "unknown key '%s' in %s", k, where);
}

static size_t count_allowed(const char *const *allowed)
{
    size_t n = 0;
    while (allowed[n])
        n++;
    return n;
}

int ymap_check_keys(const ydoc *d, const ynode *map, const char *const *allowed, const char *where, char *err,
                    size_t errlen)
{
    size_t nallowed = count_allowed(allowed);
    for (ynode *v = map->head; v; v = v->next)
        if (check_key(d, v, allowed, nallowed, where, err, errlen) < 0)
            return -1;
    return 0;
}

int ymap_check_keys_each(const ydoc *d, const ynode *map, const char *const *allowed, const char *where,
                         void (*report)(void *ctx, const char *msg), void *ctx)
{
    size_t nallowed = count_allowed(allowed);
    int bad = 0;
    char err[1024];
    for (ynode *v = map->type == Y_MAP ? map->head : NULL; v; v = v->next)
        if (check_key(d, v, allowed, nallowed, where, err, sizeof err) < 0) {
            report(ctx, err);
            bad++;
        }
    return bad;
}
