/*
 * name_index.h -- where a name occurs in a list of names, in O(1): the hooks
 * of an event in the hook table, the event names the service accepts. A
 * table of thousands of hooks costs an event one look-up, not a walk.
 */
#ifndef WIXR_NAME_INDEX_H
#define WIXR_NAME_INDEX_H

typedef struct name_index {
    int *pos;                     /* positions grouped by name, each group in list order */
    struct name_slot *slots;      /* open addressing: a distinct name -> its group in pos */
    unsigned cap;                 /* slots (a power of two, or 0) */
    int distinct;
} name_index;

/* Indexes names[0..n) (a NULL entry is left out; the strings must outlive
 * the index). 0, or -1 out of memory (the index is then empty). */
int name_index_build(name_index *x, const char *const *names, int n);
/* The positions of name, in list order (*count of them), or NULL (none). */
const int *name_index_find(const name_index *x, const char *name, int *count);
void name_index_free(name_index *x);

#endif
