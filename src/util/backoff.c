/*
 * backoff.c -- exponential backoff with jitter (see backoff.h).
 */
#include "backoff.h"

#include <limits.h>
#include <sys/random.h>
#include <time.h>

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

long long backoff_ms(long long base, long long max, int attempt, uint64_t *rng)
{
    static _Thread_local uint64_t own;
    static _Thread_local int own_seeded;
    if (!rng) {
        if (!own_seeded) {
            own = backoff_seed();
            own_seeded = 1;
        }
        rng = &own;
    }
    /* base << (attempt - 1), doubled step by step so no shift overflows */
    long long cap = base;
    for (int i = 1; i < attempt && i <= 20 && cap < max; i++)
        cap = cap > LLONG_MAX / 2 ? LLONG_MAX : cap * 2;
    if (cap > max)
        cap = max;
    if (cap <= 0)
        return 0;
    long long half = cap / 2;
    /* uniform in [half, cap], both ends in */
    return half + (cap > 1 ? (long long)(splitmix64(rng) % ((uint64_t)(cap - half) + 1)) : 0);
}

uint64_t backoff_seed(void)
{
    uint64_t s;
    if (getrandom(&s, sizeof s, 0) == (ssize_t)sizeof s)
        return s;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) * 2654435761u;
}
