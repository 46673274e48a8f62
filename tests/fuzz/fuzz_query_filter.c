/*
 * fuzz_query_filter -- the Query Packages filter language of the emulator
 * (src/emulator/emu_query.c): emu_filter_validate and emu_filter_match,
 * and the endpoint that uses them, POST /resellers/v1/packages/query.
 *
 * Input: a filter, as JSON. At start an in-process emulator gets a set of
 * packages of every shape (sites and floating, several accounts, billing
 * cycles, ENABLED, AWAITING_ACTION, FAILED with a failure, CANCELED, an
 * external id or none); their JSON, as Query Packages returns it, is what
 * the filter is evaluated on. Checked besides the sanitizers:
 *   - the endpoint answers 200 exactly when the filter validates (400 with a
 *     query.filter field violation otherwise), and its total is the number
 *     of packages the filter matches;
 *   - {"$not": F} matches exactly the packages F does not, and
 *     {"$or": [F, F]} and {"$and": [F]} match the same packages as F.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emulator/emu_internal.h"
#include "fuzz_emu.h"

#define TARGET "fuzz_query_filter"
#define MAX_PACKAGES 32
/* The filter travels in {"query":{"filter": F, ...}}: two levels of the body's cap. */
#define FILTER_MAX_DEPTH (EMU_MAX_JSON_DEPTH - 2)

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static emu_t *emu;
static json_doc *pkgs_doc;
static const json_value *pkgs[MAX_PACKAGES];
static int npkgs;

static void create(const char *account, const char *version, const char *product, const char *site,
                   const char *cycle, const char *external_id)
{
    char body[1024], path[64], *answer = NULL;
    snprintf(body, sizeof body,
             "{%s%s%s\"products\":[{\"catalogProductId\":\"%s\"%s%s%s,\"countryCode\":\"DE\","
             "\"billingInfo\":%s}]}",
             external_id ? "\"externalId\":\"" : "", external_id ? external_id : "", external_id ? "\"," : "",
             product, site ? ",\"siteId\":\"" : "", site ? site : "", site ? "\"" : "", cycle);
    snprintf(path, sizeof path, "/resellers/%s/packages", version);
    if (fuzz_emu_call(emu, "POST", path, account, body, &answer) != 200)
        fuzz_die(TARGET, "a seed package was refused", answer);
    free(answer);
}

static const char *const YEARLY = "{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"YEAR\",\"count\":1}}";
static const char *const MONTHLY = "{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"MONTH\",\"count\":1}}";
static const char *const ONE_TIME = "{\"type\":\"ONE_TIME\"}";

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    emu = fuzz_emu_open(TARGET);
    create(FUZZ_JANE, "v2", "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02", "c0000000-0000-4000-8000-000000000001", YEARLY,
           "sub-1");
    create(FUZZ_JANE, "v2", "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01", "c0000000-0000-4000-8000-000000000001", YEARLY,
           "sub-1");
    create(FUZZ_TEAM, "v2", "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03", "b0000000-0000-4000-8000-000000000001", MONTHLY,
           "sub-2");
    create(FUZZ_BOB, "v1", "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01", NULL, MONTHLY, NULL);
    create(FUZZ_BOB, "v2", "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d01", "d0000000-0000-4000-8000-000000000001", MONTHLY,
           "mail-1");
    create(FUZZ_TEAM, "v2", "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d05", "b0000000-0000-4000-8000-000000000002", YEARLY,
           "fwd-1");
    create(FUZZ_RESELLER, "v2", "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03", NULL, ONE_TIME, "setup-1");
    create(FUZZ_TEAM, "v2", "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04", "b0000000-0000-4000-8000-000000000003", YEARLY,
           "to-cancel");
    create("99999999-8888-4777-8666-555555555555", "v2", "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01",
           "e0000000-0000-4000-8000-000000000001", YEARLY, "other-reseller");

    /* Every package of the reseller, delivered, one canceled. */
    char *answer = NULL;
    const char *all = "{\"query\":{\"paging\":{\"limit\":1000}}}";
    if (fuzz_emu_call(emu, "POST", "/resellers/v1/packages/query", FUZZ_RESELLER, all, &answer) != 200)
        fuzz_die(TARGET, "cannot list the seed packages", answer);
    json_doc *d = NULL;
    json_value *v = json_parse(answer, strlen(answer), 0, &d, NULL);
    const char *cancel = NULL;
    for (json_value *p = json_get(v, "packages") ? json_get(v, "packages")->u.kids.head : NULL; p; p = p->next) {
        const char *ext = json_get_str(p, "externalId");
        if (ext && !strcmp(ext, "to-cancel"))
            cancel = json_get_str(p, "id");
    }
    if (!cancel)
        fuzz_die(TARGET, "the package to cancel is missing", answer);
    char path[128];
    snprintf(path, sizeof path, "/resellers/v1/packages/%s", cancel);
    json_doc_free(d);
    free(answer);
    if (fuzz_emu_call(emu, "DELETE", path, FUZZ_TEAM, NULL, NULL) != 200)
        fuzz_die(TARGET, "cannot cancel a seed package", path);
    if (fuzz_emu_call(emu, "POST", "/resellers/v1/packages/query", FUZZ_RESELLER, all, &answer) != 200)
        fuzz_die(TARGET, "cannot list the seed packages", answer);
    v = json_parse(answer, strlen(answer), 0, &pkgs_doc, NULL);
    free(answer);
    for (json_value *p = json_get(v, "packages") ? json_get(v, "packages")->u.kids.head : NULL;
         p && npkgs < MAX_PACKAGES; p = p->next)
        pkgs[npkgs++] = p;
    if (npkgs != 8)
        fuzz_die(TARGET, "the reseller should see 8 seed packages", NULL);
    return 0;
}

/* Parses text as a filter; NULL when it is not JSON (within the depth the endpoint allows). */
static const json_value *parse(const char *text, size_t len, json_doc **doc)
{
    *doc = NULL;
    return json_parse(text, len, FILTER_MAX_DEPTH, doc, NULL);
}

static int valid(const json_value *f)
{
    char field[160], msg[256];
    field[0] = msg[0] = '\0';
    int rc = emu_filter_validate(f, field, sizeof field, msg, sizeof msg);
    if (rc < 0 && (strncmp(field, "query.filter", 12) || !msg[0]))
        fuzz_die(TARGET, "a refused filter without a field and a message", field);
    return rc == 0;
}

/* Bit i set when package i matches. */
static unsigned matches(const json_value *f)
{
    unsigned m = 0;
    for (int i = 0; i < npkgs; i++)
        if (emu_filter_match(f, pkgs[i]))
            m |= 1u << i;
    return m;
}

static unsigned wrapped(const char *before, const json_value *f, const char *after, int *ok)
{
    buf_t b;
    buf_init(&b, 0);
    buf_adds(&b, before);
    json_writer w;
    jw_init(&w, &b);
    jw_value(&w, f);
    buf_adds(&b, after);
    json_doc *doc;
    const json_value *g = json_parse(buf_cstr(&b), b.len, 0, &doc, NULL);
    if (!g)
        fuzz_die(TARGET, "a wrapped filter does not parse", buf_cstr(&b));
    unsigned m = 0;
    *ok = valid(g);
    if (*ok)
        m = matches(g);
    json_doc_free(doc);
    buf_free(&b);
    return m;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_doc *doc;
    const json_value *f = parse((const char *)data, size, &doc);
    if (!f) {
        json_doc_free(doc);
        return 0;
    }
    unsigned all = (1u << npkgs) - 1;
    /* "filter": null is no filter at all. */
    int ok = f->type == JSON_NULL || valid(f);
    unsigned m = f->type == JSON_NULL ? all : ok ? matches(f) : 0;

    /* The endpoint, with the same filter. */
    buf_t body;
    buf_init(&body, 0);
    buf_adds(&body, "{\"query\":{\"paging\":{\"limit\":1000},\"filter\":");
    buf_add(&body, data, size);
    buf_adds(&body, "}}");
    char *answer = NULL;
    int st = fuzz_emu_call(emu, "POST", "/resellers/v1/packages/query", FUZZ_RESELLER, buf_cstr(&body), &answer);
    if (st != (ok ? 200 : 400)) {
        fprintf(stderr, "filter %.*s -> %d %s\n", (int)size, (const char *)data, st, answer);
        fuzz_die(TARGET, ok ? "a valid filter was refused by the endpoint" : "an invalid filter was accepted", NULL);
    }
    if (ok) {
        json_doc *ad = NULL;
        json_value *a = json_parse(answer, strlen(answer), 0, &ad, NULL);
        json_value *total = json_get(json_get(a, "metadata"), "total");
        int want = __builtin_popcount(m);
        if (!total || total->type != JSON_NUMBER || (int)total->u.number != want) {
            fprintf(stderr, "filter %.*s: %d packages match, the endpoint says %s\n", (int)size,
                    (const char *)data, want, answer);
            fuzz_die(TARGET, "the endpoint and the evaluator disagree", NULL);
        }
        json_doc_free(ad);
    }
    free(answer);
    buf_free(&body);

    if (ok && f->type == JSON_OBJECT) {
        int wok;
        unsigned n = wrapped("{\"$not\":", f, "}", &wok);
        if (wok && n != (all & ~m))
            fuzz_die(TARGET, "$not F does not match the complement of F", NULL);
        n = wrapped("{\"$or\":[", f, ",{}]}", &wok);
        if (wok && n != all)
            fuzz_die(TARGET, "$or [F, {}] does not match everything", NULL);
        n = wrapped("{\"$and\":[", f, "]}", &wok);
        if (wok && n != m)
            fuzz_die(TARGET, "$and [F] does not match what F matches", NULL);
        n = wrapped("{\"$or\":[", f, "]}", &wok);
        if (wok && n != m)
            fuzz_die(TARGET, "$or [F] does not match what F matches", NULL);
    }
    json_doc_free(doc);
    return 0;
}
