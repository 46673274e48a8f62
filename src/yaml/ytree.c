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

#define YTREE_MAX_DEPTH 64

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

typedef struct loader {
    yaml_parser_t parser;
    const char *name;
    char *err;
    size_t errlen;
    int depth;
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
                yaml_mark_t m = {0, (size_t)key->line - 1, (size_t)key->col - 1};
                lerr(l, m, "mapping keys must be plain scalars", NULL);
                node_free(key);
                goto fail;
            }
            for (ynode *k = coll->head; k; k = k->next) {
                if (strcmp(k->key->str, key->str) == 0) {
                    yaml_mark_t m = {0, (size_t)key->line - 1, (size_t)key->col - 1};
                    lerr(l, m, "duplicate key", key->str);
                    node_free(key);
                    goto fail;
                }
            }
            if (next_event(l, &ev) < 0) {
                node_free(key);
                goto fail;
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
    l->depth--;
    return coll;
fail:
    node_free(coll);
    return NULL;
}

static ynode *load_node(loader *l, yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_SCALAR_EVENT: {
        if (ev->data.scalar.anchor)
            return lerr(l, ev->start_mark, "anchors are not supported", NULL), NULL;
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
        return n;
    }
    case YAML_SEQUENCE_START_EVENT:
        if (ev->data.sequence_start.anchor)
            return lerr(l, ev->start_mark, "anchors are not supported", NULL), NULL;
        return load_collection(l, ev, Y_SEQ);
    case YAML_MAPPING_START_EVENT:
        if (ev->data.mapping_start.anchor)
            return lerr(l, ev->start_mark, "anchors are not supported", NULL), NULL;
        return load_collection(l, ev, Y_MAP);
    case YAML_ALIAS_EVENT:
        return lerr(l, ev->start_mark, "aliases are not supported", NULL), NULL;
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

int ytree_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return 99;
    int row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        int prev = row[0];
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int cur = row[j];
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = prev + cost;
            if (row[j] + 1 < best)
                best = row[j] + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            prev = cur;
        }
    }
    return row[lb];
}

const char *ytree_nearest(const char *word, const void *table, size_t n, size_t stride)
{
    const char *best = NULL;
    int bestd = 3;
    for (size_t i = 0; i < n; i++) {
        const char *name = *(const char *const *)((const char *)table + i * stride);
        int d = ytree_distance(name, word);
        if (d < bestd) {
            bestd = d;
            best = name;
        }
    }
    return best;
}

int ymap_check_keys(const ydoc *d, const ynode *map, const char *const *allowed, const char *where, char *err,
                    size_t errlen)
{
    size_t nallowed = 0;
    while (allowed[nallowed])
        nallowed++;
    for (ynode *v = map->head; v; v = v->next) {
        const char *k = v->key->str;
        int ok = 0;
        for (size_t i = 0; i < nallowed && !ok; i++)
            ok = !strcmp(allowed[i], k);
        if (ok)
            continue;
        const char *best = ytree_nearest(k, allowed, nallowed, sizeof *allowed);
        if (best)
            return yerr(d, v->key, err, errlen, "unknown key '%s' in %s (did you mean '%s'?)", k, where, best);
        return yerr(d, v->key, err, errlen, "unknown key '%s' in %s", k, where);
    }
    return 0;
}
