/*
 * ytree.h -- YAML (libyaml) into a small tree that keeps every node's
 * position, so configuration errors can say file:line:col.
 *
 * A mapping's children are its values, each carrying its key node in ->key.
 * Anchors and aliases are expanded as the file is read: an alias becomes a copy of
 * its anchor's node that keeps the anchor's positions (a problem found in it points
 * at the anchor's text), and a merge key (`<<: *base`, `<<: [*a, *b]`) adds the
 * entries of the mapping(s) it names that the mapping does not set itself. What
 * aliases may add is capped (nodes, bytes and nesting), so an alias bomb is refused
 * at the alias that crosses the cap.
 */
#ifndef WIXR_YTREE_H
#define WIXR_YTREE_H

#include <stddef.h>

typedef enum { Y_SCALAR, Y_SEQ, Y_MAP } ytype;

typedef struct ynode ynode;
struct ynode {
    ytype type;
    int line, col;         /* 1-based, from libyaml's start mark */
    char *str;             /* scalar text (NUL-terminated) */
    size_t len;
    int plain;             /* scalar written without quotes */
    ynode *key;            /* for a mapping's value: its key */
    ynode *head, *next;    /* children (sequence items or mapping values) */
    size_t n;
};

typedef struct ydoc {
    char *file;            /* the name used in messages */
    ynode *root;           /* NULL for an empty document */
} ydoc;

/* Loads a file. Returns NULL and writes "file:line:col: message" to err. */
ydoc *ytree_load_file(const char *path, char *err, size_t errlen);
/* Loads text; name is used in messages. */
ydoc *ytree_load_string(const char *name, const char *text, size_t len, char *err, size_t errlen);
void ytree_free(ydoc *d);

/* Mapping lookup by key, NULL when absent or node is not a mapping. */
ynode *ymap_get(const ynode *map, const char *key);

/* Scalar helpers: each returns 0 and sets *out, or -1 with a positioned
 * message ("file:line:col: field: ...") in err. */
int ynode_str(const ydoc *d, const ynode *n, const char *field, const char **out, char *err, size_t errlen);
int ynode_int(const ydoc *d, const ynode *n, const char *field, long long min, long long max, long long *out, char *err, size_t errlen);
int ynode_bool(const ydoc *d, const ynode *n, const char *field, int *out, char *err, size_t errlen);
/* Checks that n is of type t. */
int ynode_expect(const ydoc *d, const ynode *n, ytype t, const char *field, char *err, size_t errlen);
/* Every key of map must be one of allowed (NULL-terminated); otherwise an
 * error naming the key, with "did you mean" for a near miss. */
int ymap_check_keys(const ydoc *d, const ynode *map, const char *const *allowed, const char *where, char *err, size_t errlen);
/* The same for every unknown key: report(ctx, message) is called once for each
 * (message "file:line:col: unknown key ..."); returns how many there were. */
int ymap_check_keys_each(const ydoc *d, const ynode *map, const char *const *allowed, const char *where,
                         void (*report)(void *ctx, const char *msg), void *ctx);
/* Writes "file:line:col: " + message. Always returns -1. */
int yerr(const ydoc *d, const ynode *n, char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#endif
