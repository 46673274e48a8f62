/*
 * name_index.c -- positions by name (see name_index.h).
 */
#include "name_index.h"
#include "strset.h"

#include <stdlib.h>
#include <string.h>

struct name_slot {
    const char *name;             /* NULL: free */
    int first, count;             /* its positions: pos[first .. first + count) */
};

static struct name_slot *slot_of(const name_index *x, const char *name)
{
    unsigned i = (unsigned)strset_hash(name) & (x->cap - 1);
    while (x->slots[i].name && strcmp(x->slots[i].name, name))
        i = (i + 1) & (x->cap - 1);
    return &x->slots[i];
}

int name_index_build(name_index *x, const char *const *names, int n)
{
    memset(x, 0, sizeof *x);
    unsigned cap = 16;
    while (cap < 2u * (unsigned)(n > 0 ? n : 1))
        cap *= 2;
    x->cap = cap;
    x->slots = calloc(cap, sizeof *x->slots);
    x->pos = malloc((size_t)(n > 0 ? n : 1) * sizeof *x->pos);
    int *group = malloc((size_t)(n > 0 ? n : 1) * sizeof *group); /* each position's slot */
    if (!x->slots || !x->pos || !group) {
        free(group);
        name_index_free(x);
        return -1;
    }
    /* first pass: count each name; second: hand out each group's place; third: fill in list order */
    for (int i = 0; i < n; i++) {
        group[i] = -1;
        if (!names[i])
            continue;
        struct name_slot *sl = slot_of(x, names[i]);
        if (!sl->name) {
            sl->name = names[i];
            x->distinct++;
        }
        sl->count++;
        group[i] = (int)(sl - x->slots);
    }
    int at = 0;
    for (unsigned i = 0; i < cap; i++) {
        if (!x->slots[i].name)
            continue;
        x->slots[i].first = at;
        at += x->slots[i].count;
        x->slots[i].count = 0;
    }
    for (int i = 0; i < n; i++) {
        if (group[i] < 0)
            continue;
        struct name_slot *sl = &x->slots[group[i]];
        x->pos[sl->first + sl->count++] = i;
    }
    free(group);
    return 0;
}

const int *name_index_find(const name_index *x, const char *name, int *count)
{
    *count = 0;
    if (!x->cap || !name)
        return NULL;
    const struct name_slot *sl = slot_of(x, name);
    if (!sl->name)
        return NULL;
    *count = sl->count;
    return x->pos + sl->first;
}

void name_index_free(name_index *x)
{
    free(x->pos);
    free(x->slots);
    memset(x, 0, sizeof *x);
}
