/*
 * Benchmark reference: bare libcurl, one easy handle (keep-alive), doing N
 * sequential Create Package V2 + Get Package pairs -- the same calls as
 * wix_seq.lua, with no JSON library: how close to the wire wixr gets.
 * Built by wix_client.sh into a temporary directory:
 *   cc -O2 peer_libcurl.c -lcurl && ./a.out BASE_URL PAIRS
 * Prints the elapsed seconds of the loop; exits 1 on any non-200 answer.
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ACCOUNT "33333333-4444-4555-8666-777777777777"
#define PRODUCT "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"

typedef struct { char *p; size_t len, cap; } buf;

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    buf *b = arg;
    size_t k = size * n;
    if (b->len + k + 1 > b->cap) {
        size_t cap = (b->len + k + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return 0;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, k);
    b->len += k;
    b->p[b->len] = '\0';
    return k;
}

static void uuid4(char out[37])
{
    unsigned char r[16];
    for (int i = 0; i < 16; i++)
        r[i] = (unsigned char)(random() >> 7);
    r[6] = (r[6] & 0x0f) | 0x40;
    r[8] = (r[8] & 0x3f) | 0x80;
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3],
             r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}

/* The package id in {"package":{"id":"...", ...}}: the first "id" key. */
static int package_id(const char *body, char out[37])
{
    const char *p = body ? strstr(body, "\"id\":\"") : NULL;
    if (!p || strlen(p + 6) < 36)
        return -1;
    memcpy(out, p + 6, 36);
    out[36] = '\0';
    return 0;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s BASE_URL PAIRS\n", argv[0]);
        return 2;
    }
    const char *base = argv[1];
    long pairs = strtol(argv[2], NULL, 10);
    const char *key = getenv("WIX_API_KEY");
    char auth[256], url[512], body[256], idem[37], id[37], id2[37];
    snprintf(auth, sizeof auth, "Authorization: %s", key && *key ? key : "bench-key");
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());

    curl_global_init(CURL_GLOBAL_DEFAULT);
    CURL *e = curl_easy_init();
    struct curl_slist *h = NULL;
    h = curl_slist_append(h, auth);
    h = curl_slist_append(h, "wix-account-id: " ACCOUNT);
    h = curl_slist_append(h, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    buf b = {0};
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);

    double t0 = now();
    for (long i = 0; i < pairs; i++) {
        long status = 0;
        uuid4(idem);
        snprintf(body, sizeof body,
                 "{\"products\":[{\"catalogProductId\":\"" PRODUCT "\",\"countryCode\":\"DE\"}],"
                 "\"idempotencyKey\":\"%s\"}", idem);
        snprintf(url, sizeof url, "%s/resellers/v2/packages", base);
        b.len = 0;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        CURLcode rc = curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK || status != 200 || package_id(b.p, id) < 0) {
            fprintf(stderr, "peer_libcurl: pair %ld: create: %s, status %ld: %.300s\n", i, curl_easy_strerror(rc),
                    status, b.p ? b.p : "");
            return 1;
        }
        snprintf(url, sizeof url, "%s/resellers/v1/packages/%s", base, id);
        b.len = 0;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        rc = curl_easy_perform(e);
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK || status != 200 || package_id(b.p, id2) < 0 || strcmp(id, id2) != 0) {
            fprintf(stderr, "peer_libcurl: pair %ld: get: %s, status %ld: %.300s\n", i, curl_easy_strerror(rc), status,
                    b.p ? b.p : "");
            return 1;
        }
    }
    printf("%.6f\n", now() - t0);
    curl_slist_free_all(h);
    curl_easy_cleanup(e);
    curl_global_cleanup();
    free(b.p);
    return 0;
}
