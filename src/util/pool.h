/*
 * pool.h -- a small-object allocator for one Lua state.
 *
 * Lua allocates and frees many small blocks (strings, tables and their
 * parts, closures) for every event a hook runs; libc's malloc costs a few
 * hundred instructions a pair. The pool keeps freed blocks on per-size free
 * lists (16-byte steps up to POOL_MAX_SMALL) carved from 64 KiB slabs, so a
 * pair costs a few dozen. Larger blocks go to malloc. Freed small blocks stay
 * in the pool until pool_destroy (the state's peak, not its churn, bounds
 * what the pool holds).
 *
 * Under AddressSanitizer every block goes to malloc, so the sanitizer still
 * sees each one.
 */
#ifndef WIXR_POOL_H
#define WIXR_POOL_H

#include <stddef.h>

/* 1 when every block goes to malloc (AddressSanitizer builds). */
#if defined(__SANITIZE_ADDRESS__)
#define POOL_PASSTHROUGH 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_PASSTHROUGH 1
#endif
#endif
#ifndef POOL_PASSTHROUGH
#define POOL_PASSTHROUGH 0
#endif

#define POOL_MAX_SMALL 512
#define POOL_CLASSES (POOL_MAX_SMALL / 16)

typedef struct pool {
    void *free[POOL_CLASSES];  /* per size class: a list of free blocks */
    void *slabs;               /* every slab, linked through its first word */
    char *next, *end;          /* the unused rest of the newest slab */
} pool;

void pool_init(pool *p);
/* realloc semantics for a block of osize bytes (ptr NULL: a new block); NULL when out of memory. */
void *pool_realloc(pool *p, void *ptr, size_t osize, size_t nsize);
void pool_free(pool *p, void *ptr, size_t size);
/* Frees every slab (the blocks in it need not have been freed). */
void pool_destroy(pool *p);

#endif
