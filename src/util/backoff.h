/*
 * backoff.h -- how long to wait before trying again: one rule for the wix
 * client's retries of a request and the service's retries of an event.
 */
#ifndef WIXR_BACKOFF_H
#define WIXR_BACKOFF_H

#include <stdint.h>

/* The wait before attempt + 1, after attempt (from 1) failed: the cap is
 * base doubled per attempt (base << (attempt - 1), at most 20 doublings),
 * held at max; the wait is drawn uniformly from the upper half of the cap,
 * [cap/2, cap], so a crowd of clients spreads out yet none retries at once.
 * rng is the caller's generator state (splitmix64), advanced by one draw;
 * seed it once (backoff_seed), so two processes started together draw
 * differently and a test can fix the sequence. rng NULL: the calling
 * thread's own generator, seeded by backoff_seed on its first draw. Never negative; 0 when base
 * or max is 0 or less. */
long long backoff_ms(long long base, long long max, int attempt, uint64_t *rng);

/* A seed from the kernel (getrandom), or from the clock when there is none. */
uint64_t backoff_seed(void);

#endif
