/*
 * strset.h -- a set of strings by hash (open addressing), for the places that
 * must tell a name or id seen before among thousands: a mapping's keys (the
 * YAML loader), a batch's event ids (wixr fire). The strings are the
 * caller's; they must outlive the set.
 */
#ifndef WIXR_STRSET_H
#define WIXR_STRSET_H

#include <stddef.h>

typedef struct strset {
    const char **slot;
    size_t cap, n;
} strset;

/* FNV-1a of s: the hash every string look-up here uses. */
size_t strset_hash(const char *s);
/* 1 when s is in the set. */
int strset_has(const strset *set, const char *s);
/* The set's own copy of s (the pointer it was added with), or NULL. */
const char *strset_get(const strset *set, const char *s);
/* Adds s: 1 added, 0 there already, -1 out of memory (nothing added). */
int strset_add(strset *set, const char *s);
void strset_free(strset *set);

#endif
