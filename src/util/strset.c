/*
 * strset.c -- a set of strings by hash (see strset.h).
 */
#include "strset.h"

#include <stdlib.h>
#include <string.h>

size_t strset_hash(const char *s)
{
    size_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The slot of s, or the free one where it would go. */
static size_t find(const strset *set, const char *s)
{
    size_t i = strset_hash(s) & (set->cap - 1);
    while (set->slot[i] && strcmp(set->slot[i], s))
        i = (i + 1) & (set->cap - 1);
    return i;
}

int strset_has(const strset *set, const char *s)
{
    return set->cap && set->slot[find(set, s)] != NULL;
}

const char *strset_get(const strset *set, const char *s)
{
    return set->cap ? set->slot[find(set, s)] : NULL;
}

int strset_add(strset *set, const char *s)
{
    if (2 * (set->n + 1) > set->cap) {
        strset bigger = {calloc(set->cap ? 2 * set->cap : 16, sizeof *bigger.slot), set->cap ? 2 * set->cap : 16, 0};
        if (!bigger.slot)
            return -1;
        for (size_t i = 0; i < set->cap; i++)
            if (set->slot[i])
                bigger.slot[find(&bigger, set->slot[i])] = set->slot[i];
        bigger.n = set->n;
        free(set->slot);
        *set = bigger;
    }
    size_t i = find(set, s);
    if (set->slot[i])
        return 0;
    set->slot[i] = s;
    set->n++;
    return 1;
}

void strset_free(strset *set)
{
    free(set->slot);
    memset(set, 0, sizeof *set);
}
