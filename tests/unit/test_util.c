/*
 * test_util.c -- the small-object pool and the ISO-8601 time formatter.
 */
#include <stdint.h>
#include <stdlib.h>

#include "../../src/util/isotime.h"
#include "../../src/util/pool.h"
#include "check.h"

static void test_pool_reuse_and_growth(void)
{
    pool p;
    pool_init(&p);
    char *a = pool_realloc(&p, NULL, 0, 24);
    CHECK(a != NULL);
    CHECK(((uintptr_t)a & 15) == 0); /* Lua needs max_align_t alignment */
    memset(a, 'a', 24);
    char *a2 = pool_realloc(&p, a, 24, 30);
    if (!POOL_PASSTHROUGH)
        CHECK(a2 == a); /* growing within the same 16-byte class keeps the block */
    /* growing out of the class keeps the bytes */
    char *b = pool_realloc(&p, a2, 30, 100);
    CHECK(b != NULL);
    CHECK(b[0] == 'a' && b[23] == 'a');
    char *c = pool_realloc(&p, NULL, 0, 32);
    if (!POOL_PASSTHROUGH)
        CHECK(c == a); /* the freed block is handed out again for the same class */
    /* large blocks go to malloc and back, bytes kept across the boundary */
    char *big = pool_realloc(&p, b, 100, 4000);
    CHECK(big != NULL && big[0] == 'a' && big[23] == 'a');
    char *small = pool_realloc(&p, big, 4000, 40);
    CHECK(small != NULL && small[0] == 'a' && small[23] == 'a');
    pool_free(&p, small, 40);
    pool_free(&p, c, 32);
    pool_free(&p, NULL, 10);
    pool_destroy(&p);
    CHECK(p.slabs == NULL);
}

static void test_pool_many_blocks(void)
{
    /* more than one slab of every class; blocks never overlap */
    pool p;
    pool_init(&p);
    enum { N = 3000 };
    static char *blocks[N];
    for (int i = 0; i < N; i++) {
        size_t size = (size_t)(i % POOL_MAX_SMALL) + 1;
        blocks[i] = pool_realloc(&p, NULL, 0, size);
        CHECK(blocks[i] != NULL);
        memset(blocks[i], i & 0xff, size);
    }
    int intact = 1;
    for (int i = 0; i < N; i++) {
        size_t size = (size_t)(i % POOL_MAX_SMALL) + 1;
        for (size_t j = 0; j < size; j++)
            if ((unsigned char)blocks[i][j] != (i & 0xff))
                intact = 0;
    }
    CHECK(intact);
    for (int i = 0; i < N; i++)
        pool_free(&p, blocks[i], (size_t)(i % POOL_MAX_SMALL) + 1);
    pool_destroy(&p);
}

static void test_isotime(void)
{
    char out[ISO_TIME_LEN];
    iso_format_ms(0, out);
    CHECK_STR(out, "1970-01-01T00:00:00.000Z");
    iso_format_ms(1795564800123LL, out); /* 2026-11-25T00:00:00.123Z */
    CHECK_STR(out, "2026-11-25T00:00:00.123Z");
    iso_format_ms(1795564800999LL, out); /* same second: the cached part, new milliseconds */
    CHECK_STR(out, "2026-11-25T00:00:00.999Z");
    iso_format_ms(1795564861005LL, out); /* the next minute */
    CHECK_STR(out, "2026-11-25T00:01:01.005Z");
    iso_format_ms(951782400000LL, out); /* a leap day */
    CHECK_STR(out, "2000-02-29T00:00:00.000Z");
    long long now = iso_now_ms();
    CHECK(now > 1700000000000LL);
}

int main(void)
{
    test_pool_reuse_and_growth();
    test_pool_many_blocks();
    test_isotime();
    return check_report();
}
