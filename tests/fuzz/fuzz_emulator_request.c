/*
 * fuzz_emulator_request -- the emulator's request handling, emu_handle:
 * routing, auth, faults, rate limit, body parsing, idempotency, every
 * Resellers API endpoint and the admin API, on an in-process emulator
 * (:memory: state, config/catalog.yaml), back to its seeded state before
 * each input.
 *
 * Input: up to 8 requests, separated by a line "===". A request is written
 * like HTTP/1.1 without the version:
 *
 *     POST /resellers/v1/packages/query?x=1
 *     Authorization: key
 *     wix-account-id: 11111111-2222-4333-8444-555555555555
 *
 *     {"query": {}}
 *
 * (the method, a space, the percent-encoded path and query; header lines;
 * an empty line; the body). Only the two headers the API reads are kept.
 * Checked besides the sanitizers, for every answer:
 *   - a status from 200 to 599 and a request id, unless the connection is
 *     dropped;
 *   - the body is empty or one JSON object, without NUL bytes; 4xx bodies
 *     carry a message (the Wix error shapes);
 *   - after the input the emulator still answers (GET /__admin/stats).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fuzz_emu.h"
#include "json/json.h"

#define TARGET "fuzz_emulator_request"
#define MAX_REQUESTS 8

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static emu_t *emu;
static int verbose; /* WIXR_FUZZ_VERBOSE=1: one line per request on stderr */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    emu = fuzz_emu_open(TARGET);
    verbose = getenv("WIXR_FUZZ_VERBOSE") != NULL;
    return 0;
}

/* A NUL-terminated copy of p[0..n). */
static char *copy(const char *p, size_t n)
{
    char *s = malloc(n + 1);
    if (!s)
        abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void check_answer(const emu_request *rq, const emu_response *rs)
{
    if (rs->drop)
        return;
    if (rs->status < 200 || rs->status > 599)
        fuzz_die(TARGET, "a status out of range", rq->path);
    if (!rs->request_id[0])
        fuzz_die(TARGET, "an answer without a request id", rq->path);
    if (!rs->body)
        fuzz_die(TARGET, "an answer without a body", rq->path);
    if (memchr(rs->body, '\0', rs->body_len))
        fuzz_die(TARGET, "a NUL byte in an answer's body", rq->path);
    if (!rs->body_len) {
        if (rs->status < 500)
            fuzz_die(TARGET, "an empty body on a non-5xx answer", rq->path);
        return;
    }
    json_doc *doc = NULL;
    json_error je;
    json_value *v = json_parse(rs->body, rs->body_len, 0, &doc, &je);
    int ok = v && v->type == JSON_OBJECT;
    int has_message = ok && json_get_str(v, "message") != NULL;
    json_doc_free(doc);
    if (!ok) {
        fprintf(stderr, "%s %s -> %d %.*s\n", rq->method, rq->path, rs->status,
                (int)(rs->body_len > 2000 ? 2000 : rs->body_len), rs->body);
        fuzz_die(TARGET, "an answer's body is not a JSON object", v ? NULL : je.msg);
    }
    if (rs->status >= 400 && rs->status < 500 && !has_message) {
        fprintf(stderr, "%s %s -> %d %.*s\n", rq->method, rq->path, rs->status, (int)rs->body_len, rs->body);
        fuzz_die(TARGET, "a 4xx answer without a message", NULL);
    }
}

/* Parses and sends one request written as above. */
static void one_request(const char *p, size_t n)
{
    const char *end = p + n;
    const char *eol = memchr(p, '\n', n);
    const char *line_end = eol ? eol : end;
    const char *sp = memchr(p, ' ', (size_t)(line_end - p));
    if (!sp || sp == p || sp - p > 15)
        return; /* no request line: nothing a client could send */
    char *method = copy(p, (size_t)(sp - p));
    const char *target = sp + 1;
    const char *q = memchr(target, '?', (size_t)(line_end - target));
    char *path = copy(target, (size_t)((q ? q : line_end) - target));
    char *query = q ? copy(q + 1, (size_t)(line_end - q - 1)) : NULL;
    char *auth = NULL, *account = NULL;
    const char *body = NULL;
    size_t body_len = 0;
    p = eol ? eol + 1 : end;
    while (p < end) {
        eol = memchr(p, '\n', (size_t)(end - p));
        line_end = eol ? eol : end;
        if (line_end == p) { /* the empty line: the body follows */
            body = p + 1;
            body_len = (size_t)(end - body);
            break;
        }
        const char *colon = memchr(p, ':', (size_t)(line_end - p));
        if (colon) {
            const char *v = colon + 1;
            while (v < line_end && (*v == ' ' || *v == '\t'))
                v++;
            size_t kl = (size_t)(colon - p);
            if (kl == 13 && !strncasecmp(p, "authorization", 13)) {
                free(auth);
                auth = copy(v, (size_t)(line_end - v));
            } else if (kl == 14 && !strncasecmp(p, "wix-account-id", 14)) {
                free(account);
                account = copy(v, (size_t)(line_end - v));
            }
        }
        p = eol ? eol + 1 : end;
    }
    /* The HTTP front hands over strings: a header or path with a NUL byte ends there. */
    char *b = body_len ? malloc(body_len) : NULL;
    if (body_len) {
        if (!b)
            abort();
        memcpy(b, body, body_len); /* exact size: reads past the end are caught */
    }
    emu_request rq = {.method = method, .path = path, .query = query, .authorization = auth,
                      .account_id = account, .body = b, .body_len = body_len};
    emu_response rs;
    if (body_len > EMU_MAX_BODY)
        emu_reject_too_large(emu, &rq, &rs);
    else
        emu_handle(emu, &rq, &rs);
    if (verbose)
        fprintf(stderr, "%s %s -> %d %.*s\n", method, path, rs.status, (int)(rs.body_len > 300 ? 300 : rs.body_len),
                rs.body ? rs.body : "");
    check_answer(&rq, &rs);
    emu_response_free(&rs);
    free(b);
    free(method);
    free(path);
    free(query);
    free(auth);
    free(account);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_emu_reset(TARGET, emu);
    const char *p = (const char *)data, *end = p + size;
    for (int i = 0; i < MAX_REQUESTS && p < end; i++) {
        const char *sep = NULL;
        for (const char *s = p; s + 5 <= end; s++) {
            if (s[0] == '\n' && s[1] == '=' && s[2] == '=' && s[3] == '=' && s[4] == '\n') {
                sep = s;
                break;
            }
        }
        one_request(p, (size_t)((sep ? sep : end) - p));
        p = sep ? sep + 5 : end;
    }
    char *stats = NULL;
    if (fuzz_emu_call(emu, "GET", "/__admin/stats", NULL, NULL, &stats) != 200)
        fuzz_die(TARGET, "the emulator no longer answers", stats);
    free(stats);
    return 0;
}
