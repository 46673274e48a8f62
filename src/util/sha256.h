/*
 * sha256.h -- SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for the
 * derived idempotency keys (a keyed MAC, no dependency for one hash).
 */
#ifndef WIXR_SHA256_H
#define WIXR_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define SHA256_LEN 32

typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t total;               /* bytes hashed so far */
    unsigned char block[64];
    size_t used;                  /* bytes waiting in block */
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t len);
void sha256_final(sha256_ctx *c, unsigned char out[SHA256_LEN]);
void sha256(const void *data, size_t len, unsigned char out[SHA256_LEN]);

/* HMAC-SHA256 in steps: init with the key, update with the message, final. */
typedef struct hmac_sha256_ctx {
    sha256_ctx inner;
    unsigned char opad[64];
} hmac_sha256_ctx;

void hmac_sha256_init(hmac_sha256_ctx *c, const void *key, size_t keylen);
void hmac_sha256_update(hmac_sha256_ctx *c, const void *data, size_t len);
void hmac_sha256_final(hmac_sha256_ctx *c, unsigned char out[SHA256_LEN]);
void hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, unsigned char out[SHA256_LEN]);

#endif
