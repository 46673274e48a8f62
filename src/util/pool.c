/*
 * pool.c -- a small-object allocator for one Lua state (see pool.h).
 */
#include "pool.h"

#include <stdlib.h>
#include <string.h>

#define SLAB_BYTES (64 * 1024)
#define SLAB_HEADER 16 /* the link to the previous slab, kept 16-byte aligned */

static size_t class_of(size_t size) { return (size + 15) / 16 - 1; }

void pool_init(pool *p) { memset(p, 0, sizeof *p); }

static void *small_alloc(pool *p, size_t cls)
{
    void *b = p->free[cls];
    if (b) {
        p->free[cls] = *(void **)b;
        return b;
    }
    size_t bytes = (cls + 1) * 16;
    if ((size_t)(p->end - p->next) < bytes) {
        char *slab = malloc(SLAB_BYTES);
        if (!slab)
            return NULL;
        *(void **)slab = p->slabs;
        p->slabs = slab;
        p->next = slab + SLAB_HEADER;
        p->end = slab + SLAB_BYTES;
    }
    b = p->next;
    p->next += bytes;
    return b;
}

void pool_free(pool *p, void *ptr, size_t size)
{
    if (!ptr)
        return;
    if (POOL_PASSTHROUGH || size > POOL_MAX_SMALL) {
        free(ptr);
        return;
    }
    size_t cls = class_of(size);
    *(void **)ptr = p->free[cls];
    p->free[cls] = ptr;
}

void *pool_realloc(pool *p, void *ptr, size_t osize, size_t nsize)
{
    if (!ptr)
        osize = 0;
    if (POOL_PASSTHROUGH || (osize > POOL_MAX_SMALL && nsize > POOL_MAX_SMALL))
        return realloc(ptr, nsize);
    if (osize && nsize && osize <= POOL_MAX_SMALL && nsize <= POOL_MAX_SMALL && class_of(osize) == class_of(nsize))
        return ptr; /* the block already has room */
    void *n = nsize <= POOL_MAX_SMALL ? small_alloc(p, class_of(nsize)) : malloc(nsize);
    if (!n)
        return NULL;
    if (ptr) {
        memcpy(n, ptr, osize < nsize ? osize : nsize);
        pool_free(p, ptr, osize);
    }
    return n;
}

void pool_destroy(pool *p)
{
    while (p->slabs) {
        void *next = *(void **)p->slabs;
        free(p->slabs);
        p->slabs = next;
    }
    memset(p, 0, sizeof *p);
}
