/*
 * test_util.c -- the small-object pool, the ISO-8601 time formatter,
 * SHA-256 / HMAC-SHA256 against the FIPS 180-2 and RFC 4231 vectors, the
 * backoff rule and "did you mean".
 */
#include <stdint.h>
#include <stdlib.h>

#include "../../src/util/backoff.h"
#include "../../src/util/isotime.h"
#include "../../src/util/name_index.h"
#include "../../src/util/nearest.h"
#include "../../src/util/pool.h"
#include "../../src/util/strset.h"
#include "../../src/util/sha256.h"
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

static void hex_of(const unsigned char *d, char out[2 * SHA256_LEN + 1])
{
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < SHA256_LEN; i++) {
        out[2 * i] = hx[d[i] >> 4];
        out[2 * i + 1] = hx[d[i] & 15];
    }
    out[2 * SHA256_LEN] = '\0';
}

static void check_sha(const char *msg, size_t len, const char *want)
{
    unsigned char d[SHA256_LEN];
    char hx[2 * SHA256_LEN + 1];
    sha256(msg, len, d);
    hex_of(d, hx);
    CHECK_STR(hx, want);
}

static void check_hmac(const void *key, size_t keylen, const char *msg, size_t len, const char *want)
{
    unsigned char d[SHA256_LEN];
    char hx[2 * SHA256_LEN + 1];
    hmac_sha256(key, keylen, msg, len, d);
    hex_of(d, hx);
    CHECK_STR(hx, want);
}

/* FIPS 180-2 appendix B and RFC 4231 section 4. */
static void test_sha256_vectors(void)
{
    check_sha("abc", 3, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    check_sha("", 0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    check_sha(two, strlen(two), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* a million 'a', fed in uneven pieces so the block buffering is crossed every way */
    sha256_ctx c;
    sha256_init(&c);
    char as[1000];
    memset(as, 'a', sizeof as);
    size_t left = 1000000, step = 1;
    while (left) {
        size_t n = step < left ? step : left;
        sha256_update(&c, as, n);
        left -= n;
        step = step % 997 + 1;
    }
    unsigned char d[SHA256_LEN];
    char hx[2 * SHA256_LEN + 1];
    sha256_final(&c, d);
    hex_of(d, hx);
    CHECK_STR(hx, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    /* 55, 56 and 64 bytes: where the length does or does not fit the last block */
    check_sha(as, 55, "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
    check_sha(as, 56, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
    check_sha(as, 64, "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");

    unsigned char k[131];
    memset(k, 0x0b, 20);
    check_hmac(k, 20, "Hi There", 8, "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
    const char *q = "what do ya want for nothing?";
    check_hmac("Jefe", 4, q, strlen(q), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    char dd[50];
    memset(k, 0xaa, sizeof k);
    memset(dd, 0xdd, sizeof dd);
    check_hmac(k, 20, dd, sizeof dd, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
    const char *big = "Test Using Larger Than Block-Size Key - Hash Key First";
    check_hmac(k, 131, big, strlen(big), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    /* in steps, the same as in one go */
    hmac_sha256_ctx h;
    hmac_sha256_init(&h, "Jefe", 4);
    hmac_sha256_update(&h, q, 10);
    hmac_sha256_update(&h, q + 10, strlen(q) - 10);
    hmac_sha256_final(&h, d);
    hex_of(d, hx);
    CHECK_STR(hx, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
}

/* Every wait lies in the upper half of its cap, the cap doubles per attempt
 * up to max, and one seed gives one sequence (the client's and the service's
 * retries both draw from it). */
static void test_backoff(void)
{
    uint64_t rng = 42;
    for (int attempt = 1; attempt <= 40; attempt++) {
        long long cap = attempt > 12 ? 3000 : 1LL << (attempt - 1);
        if (cap > 3000)
            cap = 3000;
        for (int i = 0; i < 200; i++) {
            long long d = backoff_ms(1, 3000, attempt, &rng);
            CHECK(d >= cap / 2 && d <= cap);
        }
    }
    /* both ends of [cap/2, cap] come up */
    int lo = 0, hi = 0;
    for (int i = 0; i < 2000; i++) {
        long long d = backoff_ms(100, 30000, 1, &rng);
        lo += d == 50;
        hi += d == 100;
    }
    CHECK(lo > 0 && hi > 0);
    /* a cap past 20 doublings, or past LLONG_MAX, stays at max */
    CHECK(backoff_ms(1LL << 60, 1LL << 62, 30, &rng) <= 1LL << 62);
    CHECK(backoff_ms(1000, 5000, 1000, &rng) >= 2500);
    CHECK_INT(backoff_ms(0, 5000, 3, &rng), 0);
    CHECK_INT(backoff_ms(100, 0, 3, &rng), 0);
    uint64_t a = 7, b = 7;
    for (int i = 1; i < 10; i++)
        CHECK(backoff_ms(100, 60000, i, &a) == backoff_ms(100, 60000, i, &b));
}

static void test_nearest(void)
{
    CHECK_INT(nearest_distance("memory", "memroy"), 2);
    CHECK_INT(nearest_distance("script", "script"), 0);
    CHECK_INT(nearest_distance("", "abc"), 3);
    static const char *const names[] = {"fire", "run", "serve", "sandbox"};
    CHECK_STR(nearest_name("serv", names, 4, sizeof names[0]), "serve");
    CHECK_STR(nearest_name("rnu", names, 4, sizeof names[0]), "run");
    CHECK(nearest_name("checkout", names, 4, sizeof names[0]) == NULL);
    struct opt {
        const char *name;
        int v;
    } opts[] = {{"--verbose", 1}, {"--json", 2}};
    CHECK_STR(nearest_name("--jsno", opts, 2, sizeof opts[0]), "--json");
}

static void test_name_index(void)
{
    const char *names[] = {"order", "cancel", NULL, "order", "move", "cancel", "order"};
    name_index x;
    CHECK_INT(name_index_build(&x, names, 7), 0);
    CHECK_INT(x.distinct, 3);
    int n;
    const int *p = name_index_find(&x, "order", &n);
    CHECK_INT(n, 3);
    CHECK(p && p[0] == 0 && p[1] == 3 && p[2] == 6); /* in list order */
    p = name_index_find(&x, "cancel", &n);
    CHECK(n == 2 && p[0] == 1 && p[1] == 5);
    CHECK(name_index_find(&x, "nothing", &n) == NULL && n == 0);
    CHECK(name_index_find(&x, NULL, &n) == NULL);
    name_index_free(&x);
    /* thousands of names: each found, with its own position */
    static char buf[5000][16];
    static const char *many[5000];
    for (int i = 0; i < 5000; i++) {
        snprintf(buf[i], sizeof buf[i], "event.%d", i % 2500);
        many[i] = buf[i];
    }
    CHECK_INT(name_index_build(&x, many, 5000), 0);
    CHECK_INT(x.distinct, 2500);
    int good = 1;
    for (int i = 0; i < 2500; i++) {
        p = name_index_find(&x, buf[i], &n);
        good = good && n == 2 && p[0] == i && p[1] == i + 2500;
    }
    CHECK(good);
    name_index_free(&x);
    /* an empty list */
    CHECK_INT(name_index_build(&x, NULL, 0), 0);
    CHECK(name_index_find(&x, "order", &n) == NULL);
    name_index_free(&x);
}

static void test_strset(void)
{
    strset set = {0};
    CHECK(!strset_has(&set, "a"));
    static char names[3000][16];
    int added = 1;
    for (int i = 0; i < 3000; i++) {
        snprintf(names[i], sizeof names[i], "id-%d", i);
        added = added && strset_add(&set, names[i]) == 1;
    }
    CHECK(added);
    CHECK_INT((long long)set.n, 3000);
    CHECK_INT(strset_add(&set, "id-1234"), 0); /* another copy of a string in the set */
    CHECK(strset_has(&set, "id-2999") && !strset_has(&set, "id-3000"));
    strset_free(&set);
    CHECK(!strset_has(&set, "id-1"));
}

int main(void)
{
    test_pool_reuse_and_growth();
    test_pool_many_blocks();
    test_isotime();
    test_sha256_vectors();
    test_backoff();
    test_nearest();
    test_name_index();
    test_strset();
    return check_report();
}
