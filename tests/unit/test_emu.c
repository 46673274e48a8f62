/*
 * Unit tests of the emulator as a library: requests in, responses out, no
 * socket. Covers the catalog loader's errors, the store across a reopen,
 * delivery, idempotency and the query-filter evaluator.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "emulator/emu_internal.h"

#define RESELLER "11111111-2222-4333-8444-555555555555"
#define JANE "33333333-4444-4555-8666-777777777777"
#define BOB "44444444-5555-4666-8777-888888888888"
#define JANE_SITE "c0000000-0000-4000-8000-000000000001"
#define CORE "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02"
#define CATALOG WIXR_SOURCE_DIR "/config/catalog.yaml"

static emu_t *open_emu(const char *db, long long delay)
{
    char err[512];
    emu_options o = {.db_path = db, .catalog_path = CATALOG, .enable_delay_ms = delay, .seed = 42};
    emu_t *e = emu_open(&o, err, sizeof err);
    if (!e)
        fprintf(stderr, "emu_open: %s\n", err);
    return e;
}

/* Sends one request; returns the status and leaves the parsed body in *out. */
static int call(emu_t *e, const char *method, const char *path, const char *account, const char *body,
                json_doc **doc, json_value **out)
{
    emu_request rq = {.method = method, .path = path, .authorization = "test-key", .account_id = account,
                      .body = body, .body_len = body ? strlen(body) : 0};
    emu_response rs;
    emu_handle(e, &rq, &rs);
    *out = rs.body_len ? json_parse(rs.body, rs.body_len, 0, doc, NULL) : NULL;
    if (!rs.body_len)
        *doc = NULL;
    int st = rs.status;
    emu_response_free(&rs);
    return st;
}

static const char *app_code(const json_value *v)
{
    return json_get_str(json_get(json_get(v, "details"), "applicationError"), "code");
}

static const char *create_body = "{\"idempotencyKey\":\"order-1\",\"externalId\":\"sub-1\",\"products\":[{"
                                 "\"catalogProductId\":\"" CORE "\",\"siteId\":\"" JANE_SITE "\","
                                 "\"countryCode\":\"de\",\"billingInfo\":{\"type\":\"RECURRING\","
                                 "\"cycleDuration\":{\"unit\":\"YEAR\",\"count\":1}}}]}";

static void test_catalog_errors(void)
{
    char path[] = "/tmp/wixr-catalog-XXXXXX";
    int fd = mkstemp(path);
    const char *bad = "products:\n  - id: 7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01\n    name: X\n    type: t\n"
                      "    cycles: [{type: RECURRING, unit: FORTNIGHT}]\n";
    CHECK(write(fd, bad, strlen(bad)) == (ssize_t)strlen(bad));
    close(fd);
    emu_catalog cat;
    char err[512];
    CHECK(emu_catalog_load(&cat, path, err, sizeof err) < 0);
    char want[600];
    snprintf(want, sizeof want, "%s:5:38: unit: 'FORTNIGHT' is not DAY, WEEK, MONTH or YEAR", path);
    CHECK_STR(err, want);

    const char *typo = "products:\n  - id: 7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01\n    name: X\n    type: t\n"
                       "    cycle: []\n";
    FILE *f = fopen(path, "w");
    fputs(typo, f);
    fclose(f);
    CHECK(emu_catalog_load(&cat, path, err, sizeof err) < 0);
    snprintf(want, sizeof want, "%s:5:5: unknown key 'cycle' in a product (did you mean 'cycles'?)", path);
    CHECK_STR(err, want);
    unlink(path);

    /* Accounts and sites the store would merge, and parents that are not there. */
    static const struct {
        const char *text, *want;
    } clashes[] = {
        {"products: []\naccounts:\n  - id: 11111111-2222-4333-8444-555555555555\n"
         "  - id: 11111111-2222-4333-8444-555555555555\n",
         "c.yaml:4:9: id: account 11111111-2222-4333-8444-555555555555 is listed twice"},
        {"products: []\naccounts:\n  - id: 11111111-2222-4333-8444-555555555555\n"
         "    sites: [{id: c0000000-0000-4000-8000-000000000001}, {id: c0000000-0000-4000-8000-000000000001}]\n",
         "c.yaml:4:62: id: site c0000000-0000-4000-8000-000000000001 is listed twice"},
        {"products: []\naccounts:\n  - id: 11111111-2222-4333-8444-555555555555\n"
         "    sites: [{id: c0000000-0000-4000-8000-000000000001}]\n"
         "  - id: 22222222-2222-4333-8444-555555555555\n"
         "    sites: [{id: c0000000-0000-4000-8000-000000000001}]\n",
         "c.yaml:6:18: id: site c0000000-0000-4000-8000-000000000001 is listed twice"},
        {"products: []\naccounts:\n  - id: 22222222-2222-4333-8444-555555555555\n"
         "    parent: 11111111-2222-4333-8444-555555555555\n",
         "c.yaml:4:13: parent: account 11111111-2222-4333-8444-555555555555 is not listed in the catalog"},
        {"products: []\naccounts:\n  - id: 22222222-2222-4333-8444-555555555555\n"
         "    parent: 22222222-2222-4333-8444-555555555555\n",
         "c.yaml:4:13: parent: account 22222222-2222-4333-8444-555555555555 is not listed in the catalog "
         "(an account cannot be its own parent)"},
    };
    for (size_t i = 0; i < sizeof clashes / sizeof clashes[0]; i++) {
        CHECK(emu_catalog_load_string(&cat, "c.yaml", clashes[i].text, strlen(clashes[i].text), err, sizeof err) < 0);
        CHECK_STR(err, clashes[i].want);
    }
    /* a sub-account listed before its parent is fine */
    const char *order = "products: []\naccounts:\n  - id: 22222222-2222-4333-8444-555555555555\n"
                        "    parent: 11111111-2222-4333-8444-555555555555\n"
                        "  - id: 11111111-2222-4333-8444-555555555555\n";
    CHECK(emu_catalog_load_string(&cat, "c.yaml", order, strlen(order), err, sizeof err) == 0);
    CHECK(cat.naccounts == 2);
    emu_catalog_free(&cat);

    CHECK(emu_catalog_load(&cat, CATALOG, err, sizeof err) == 0);
    CHECK(cat.nproducts >= 10);
    CHECK(emu_product_find(&cat, CORE) != NULL);
    emu_catalog_free(&cat);
}

static void test_create_get_persist(void)
{
    char db[] = "/tmp/wixr-emu-XXXXXX";
    int fd = mkstemp(db);
    close(fd);
    emu_t *e = open_emu(db, 0);
    CHECK(e != NULL);
    if (!e)
        return;
    json_doc *d;
    json_value *v;
    CHECK_INT(call(e, "POST", "/resellers/v2/packages", JANE, create_body, &d, &v), 200);
    json_value *pkg = json_get(v, "package");
    char id[64], iid[64];
    snprintf(id, sizeof id, "%s", json_get_str(pkg, "id"));
    json_value *inst = json_get(pkg, "productInstances")->u.kids.head;
    snprintf(iid, sizeof iid, "%s", json_get_str(inst, "instanceId"));
    CHECK_STR(json_get_str(v, "idempotencyKey"), "order-1");
    CHECK_STR(json_get_str(pkg, "accountId"), JANE);
    CHECK_STR(json_get_str(pkg, "parentAccountId"), RESELLER);
    CHECK_STR(json_get_str(inst, "status"), "PENDING");
    CHECK_STR(json_get_str(inst, "countryCode"), "DE");
    CHECK(emu_is_guid(id) && emu_is_guid(iid) && strcmp(id, iid) != 0);
    json_doc_free(d);

    /* The same key again: the first answer, and still one package. */
    CHECK_INT(call(e, "POST", "/resellers/v2/packages", JANE, create_body, &d, &v), 200);
    CHECK_STR(json_get_str(json_get(v, "package"), "id"), id);
    json_doc_free(d);
    CHECK_INT(call(e, "GET", "/__admin/stats", NULL, NULL, &d, &v), 200);
    CHECK_INT(json_get(v, "packages")->u.number, 1);
    json_doc_free(d);
    emu_close(e);

    /* Reopen the same file: the package is there and has been delivered. */
    e = open_emu(db, 0);
    char path[128];
    snprintf(path, sizeof path, "/resellers/v1/packages/%s", id);
    CHECK_INT(call(e, "GET", path, JANE, NULL, &d, &v), 200);
    inst = json_get(json_get(v, "package"), "productInstances")->u.kids.head;
    CHECK_STR(json_get_str(inst, "status"), "ENABLED");
    CHECK_STR(json_get_str(inst, "instanceId"), iid);
    json_doc_free(d);
    /* A sibling sub-account cannot see it; the reseller can. */
    CHECK_INT(call(e, "GET", path, BOB, NULL, &d, &v), 404);
    CHECK_STR(app_code(v), "PACKAGE_NOT_FOUND");
    json_doc_free(d);
    CHECK_INT(call(e, "GET", path, RESELLER, NULL, &d, &v), 200);
    json_doc_free(d);
    emu_close(e);
    unlink(db);
    char side[160];
    snprintf(side, sizeof side, "%s-wal", db);
    unlink(side);
    snprintf(side, sizeof side, "%s-shm", db);
    unlink(side);
    snprintf(side, sizeof side, "%s.lock", db);
    unlink(side);
}

/* The built-in catalog, one owner per state file (a second opener is told
 * who), and request fields under their proto names, in-process. */
static void test_owner_builtin_fields(void)
{
    char err[512];
    emu_options o = {.db_path = ":memory:", .catalog_path = NULL, .enable_delay_ms = 0, .seed = 1};
    emu_t *e = emu_open(&o, err, sizeof err);
    CHECK(e != NULL);
    if (!e)
        return;
    CHECK(emu_product_find(&e->cat, CORE) != NULL);
    CHECK(e->cat.naccounts >= 4);

    /* proto names are the same fields; an unknown one is answered and named */
    const char *snake = "{\"external_id\":\"s-1\",\"products\":[{\"catalog_product_id\":\"" CORE "\","
                        "\"site_id\":\"" JANE_SITE "\",\"country_code\":\"DE\",\"billing_info\":{"
                        "\"type\":\"RECURRING\",\"cycle_duration\":{\"unit\":\"YEAR\",\"count\":1}},"
                        "\"colour\":\"red\"}]}";
    emu_request rq = {.method = "POST", .path = "/resellers/v2/packages", .authorization = "k", .account_id = JANE,
                      .body = snake, .body_len = strlen(snake)};
    emu_response rs;
    emu_handle(e, &rq, &rs);
    CHECK_INT(rs.status, 200);
    CHECK_STR(rs.warning, "unknown fields ignored: products[0].colour");
    CHECK(strstr(rs.body, "\"siteId\":\"" JANE_SITE "\"") != NULL);
    CHECK(strstr(rs.body, "\"externalId\":\"s-1\"") != NULL);
    emu_response_free(&rs);
    /* GET on the POST-only query route */
    emu_request get = {.method = "GET", .path = "/resellers/v1/packages/query", .authorization = "k",
                       .account_id = JANE};
    emu_handle(e, &get, &rs);
    CHECK_INT(rs.status, 405);
    CHECK_STR(rs.allow, "POST");
    emu_response_free(&rs);
    emu_close(e);

    /* strict: the unknown field is a 400 */
    o.strict = 1;
    e = emu_open(&o, err, sizeof err);
    CHECK(e != NULL);
    if (!e)
        return;
    emu_handle(e, &rq, &rs);
    CHECK_INT(rs.status, 400);
    CHECK(strstr(rs.body, "products[0].colour") != NULL);
    emu_response_free(&rs);
    emu_close(e);

    char db[] = "/tmp/wixr-emu-XXXXXX";
    int fd = mkstemp(db);
    close(fd);
    emu_options f = {.db_path = db, .enable_delay_ms = 0, .seed = 1};
    emu_t *first = emu_open(&f, err, sizeof err);
    CHECK(first != NULL);
    char want[256];
    snprintf(want, sizeof want, "%s is in use by process %ld (test_emu); stop it", db, (long)getpid());
    CHECK(emu_open(&f, err, sizeof err) == NULL);
    CHECK(strstr(err, want) != NULL);
    emu_note_url(first, "http://127.0.0.1:1");
    CHECK(emu_open(&f, err, sizeof err) == NULL);
    CHECK(strstr(err, want) != NULL && strstr(err, "WIX_BASE_URL=http://127.0.0.1:1") != NULL);
    emu_close(first);
    emu_t *second = emu_open(&f, err, sizeof err); /* the owner is gone: the file is free again */
    CHECK(second != NULL);
    emu_close(second);
    char side[160];
    const char *const suffixes[] = {"", "-wal", "-shm", ".lock"};
    for (size_t i = 0; i < 4; i++) {
        snprintf(side, sizeof side, "%s%s", db, suffixes[i]);
        unlink(side);
    }
}

static void test_rules_rollback(void)
{
    emu_t *e = open_emu(":memory:", -1);
    json_doc *d;
    json_value *v;
    /* Two products; the second breaks a rule: nothing at all is written. */
    const char *body = "{\"products\":[{\"catalogProductId\":\"" CORE "\",\"countryCode\":\"DE\","
                       "\"billingInfo\":{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"MONTH\",\"count\":1}}},"
                       "{\"catalogProductId\":\"" CORE "\",\"countryCode\":\"DE\","
                       "\"billingInfo\":{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"WEEK\",\"count\":1}}}]}";
    CHECK_INT(call(e, "POST", "/resellers/v2/packages", JANE, body, &d, &v), 428);
    CHECK_STR(app_code(v), "INCOMPATIBLE_BILLING_CYCLE");
    json_doc_free(d);
    CHECK_INT(call(e, "GET", "/__admin/stats", NULL, NULL, &d, &v), 200);
    CHECK_INT(json_get(v, "packages")->u.number, 0);
    json_doc_free(d);
    /* Never delivered with delay -1. */
    CHECK_INT(call(e, "POST", "/resellers/v2/packages", JANE, create_body, &d, &v), 200);
    json_doc_free(d);
    CHECK_INT(call(e, "POST", "/resellers/v1/packages/query", JANE,
                   "{\"query\":{\"filter\":{\"productInstances.status\":{\"$hasSome\":[\"PENDING\"]}}}}", &d, &v),
              200);
    CHECK_INT(json_get(json_get(v, "metadata"), "count")->u.number, 1);
    json_doc_free(d);
    /* No auth, no account. */
    emu_request rq = {.method = "GET", .path = "/resellers/v1/packages/x"};
    emu_response rs;
    emu_handle(e, &rq, &rs);
    CHECK_INT(rs.status, 401);
    emu_response_free(&rs);
    rq.authorization = "k";
    emu_handle(e, &rq, &rs);
    CHECK_INT(rs.status, 403);
    emu_response_free(&rs);
    emu_close(e);
}

static int match(const char *filter, const char *pkg)
{
    json_doc *fd, *pd;
    json_value *f = json_parse(filter, strlen(filter), 0, &fd, NULL);
    json_value *p = json_parse(pkg, strlen(pkg), 0, &pd, NULL);
    char field[160], msg[256];
    int r = -1;
    if (f && p && emu_filter_validate(f, field, sizeof field, msg, sizeof msg) == 0)
        r = emu_filter_match(f, p);
    json_doc_free(fd);
    json_doc_free(pd);
    return r;
}

static void test_filter(void)
{
    const char *pkg = "{\"id\":\"p1\",\"accountId\":\"a1\",\"externalId\":\"x\",\"createdDate\":\"2024-05-01T10:00:00.000Z\","
                      "\"productInstances\":[{\"status\":\"ENABLED\",\"siteId\":\"s1\"},{\"status\":\"PENDING\","
                      "\"billingInfo\":{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"YEAR\",\"count\":1}}}]}";
    CHECK_INT(match("{\"id\":\"p1\"}", pkg), 1);
    CHECK_INT(match("{\"id\":{\"$ne\":\"p1\"}}", pkg), 0);
    CHECK_INT(match("{\"accountId\":{\"$in\":[\"a0\",\"a1\"]}}", pkg), 1);
    CHECK_INT(match("{\"externalId\":{\"$exists\":false}}", pkg), 0);
    CHECK_INT(match("{\"createdDate\":{\"$gt\":\"2024-05-01T09:59:59Z\"}}", pkg), 1);
    CHECK_INT(match("{\"createdDate\":{\"$lt\":\"2024-05-01T10:00:00Z\"}}", pkg), 0);
    CHECK_INT(match("{\"createdDate\":{\"$gte\":\"2024-05-01T10:00:00Z\",\"$lte\":\"2024-05-01T10:00:00.000Z\"}}", pkg), 1);
    CHECK_INT(match("{\"productInstances.status\":{\"$hasAll\":[\"ENABLED\",\"PENDING\"]}}", pkg), 1);
    CHECK_INT(match("{\"productInstances.status\":{\"$hasAll\":[\"ENABLED\",\"FAILED\"]}}", pkg), 0);
    CHECK_INT(match("{\"productInstances.status\":{\"$hasSome\":[\"FAILED\",\"PENDING\"]}}", pkg), 1);
    CHECK_INT(match("{\"productInstances.billingInfo.cycleDuration.count\":{\"$hasSome\":[1]}}", pkg), 1);
    CHECK_INT(match("{\"$or\":[{\"id\":\"zz\"},{\"accountId\":\"a1\"}]}", pkg), 1);
    CHECK_INT(match("{\"$and\":[{\"id\":\"p1\"},{\"accountId\":\"zz\"}]}", pkg), 0);
    CHECK_INT(match("{\"$not\":{\"id\":\"p1\"}}", pkg), 0);
    /* Refused by validation. */
    CHECK_INT(match("{\"name\":\"x\"}", pkg), -1);
    CHECK_INT(match("{\"productInstances.status\":\"ENABLED\"}", pkg), -1);
    CHECK_INT(match("{\"id\":{\"$gt\":\"a\"}}", pkg), -1);
    CHECK_INT(match("{\"createdDate\":{\"$gt\":\"yesterday\"}}", pkg), -1);
    CHECK_INT(match("{\"id\":{\"$in\":\"p1\"}}", pkg), -1);
}

static void test_dates(void)
{
    long long ms;
    char out[64];
    CHECK(emu_parse_date("2021-12-02T15:45:30.941Z", &ms) == 0);
    emu_format_date(ms, out);
    CHECK_STR(out, "2021-12-02T15:45:30.941Z");
    CHECK(emu_parse_date("2021-12-02T15:45:30Z", &ms) == 0 && ms % 1000 == 0);
    CHECK(emu_parse_date("2021-12-02 15:45:30Z", &ms) < 0);
    CHECK(emu_parse_date("2021-13-02T15:45:30Z", &ms) < 0);
}

/* Inputs the fuzzers found (tests/fuzz/regressions/): each answer is one JSON object. */
static void test_fuzz_findings(void)
{
    emu_t *e = open_emu(":memory:", 0);
    if (!e)
        return;
    json_doc *d;
    json_value *v;
    /* A raw byte of the path echoed in the message: the body is still UTF-8 JSON. */
    CHECK_INT(call(e, "GET", "/resellers/v1/packages/\xfe", JANE, NULL, &d, &v), 400);
    CHECK(v && v->type == JSON_OBJECT);
    json_doc_free(d);
    CHECK_INT(call(e, "GET", "/\xc3", JANE, NULL, &d, &v), 404);
    CHECK(v && strstr(json_get_str(v, "message"), "\xef\xbf\xbd"));
    json_doc_free(d);
    /* The request log with numbers strtoll saturates. */
    emu_request rq = {.method = "GET", .path = "/__admin/requests",
                      .query = "since=99999999999999999999&limit=-99999999999999999999"};
    emu_response rs;
    emu_handle(e, &rq, &rs);
    CHECK_INT(rs.status, 200);
    CHECK(strstr(rs.body, "\"requests\":[]") != NULL);
    emu_response_free(&rs);
    rq.query = "since=-99999999999999999999&limit=99999999999999999999";
    emu_handle(e, &rq, &rs);
    CHECK_INT(rs.status, 200);
    CHECK(strstr(rs.body, "\"seq\":1,") != NULL);
    emu_response_free(&rs);
    /* Numbers out of range are refused before they are converted. */
    CHECK_INT(call(e, "POST", "/__admin/settings", NULL, "{\"seed\":-7}", &d, &v), 400);
    json_doc_free(d);
    CHECK_INT(call(e, "POST", "/__admin/settings", NULL, "{\"seed\":1e30}", &d, &v), 400);
    json_doc_free(d);
    CHECK_INT(call(e, "POST", "/__admin/settings", NULL, "{\"seed\":7}", &d, &v), 200);
    json_doc_free(d);
    /* a cursor whose offset is {"p": the reseller, "o": 1e30} */
    CHECK_INT(call(e, "POST", "/resellers/v1/packages/query", RESELLER,
                   "{\"query\":{\"cursorPaging\":{\"cursor\":\"eyJwIjoiMTExMTExMTEtMjIyMi00MzMzLTg0NDQtNTU1NTU1NTU1NTU1IiwibyI6MTAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMH0\"}}}", &d, &v),
              400);
    CHECK_STR(json_get_str(json_get(json_get(json_get(v, "details"), "validationError"), "fieldViolations")->u.kids.head,
                           "violatedRule"),
              "INVALID_CURSOR");
    json_doc_free(d);
    emu_close(e);
}

static long long weight_of(const char *filter)
{
    json_doc *fd;
    json_value *f = json_parse(filter, strlen(filter), 0, &fd, NULL);
    long long w = f ? emu_filter_weight(f) : -1;
    json_doc_free(fd);
    return w;
}

static const char *first_violation(const json_value *v, const char *key)
{
    const json_value *fv = json_get(json_get(json_get(v, "details"), "validationError"), "fieldViolations");
    return fv && fv->u.kids.head ? json_get_str(fv->u.kids.head, key) : NULL;
}

static const char *violated_rule(const json_value *v)
{
    return first_violation(v, "violatedRule");
}

/* The query budget: what a filter weighs, the work counted while matching, a
 * refusal before any rendering, and one while evaluating when the packages
 * hold more instances than the estimate assumes. */
static void test_query_budget(void)
{
    CHECK_INT(weight_of("{\"id\":\"p1\"}"), 1);
    CHECK_INT(weight_of("{\"$or\":[{\"id\":\"a\"},{\"accountId\":{\"$in\":[\"x\",\"y\",\"z\"]}}]}"), 5);
    CHECK_INT(weight_of("{\"$not\":{\"productInstances.status\":{\"$hasSome\":[\"A\",\"B\"]}}}"), 3);

    const char *pkg = "{\"id\":\"p1\",\"productInstances\":[{\"status\":\"A\"},{\"status\":\"B\"},{\"status\":\"C\"}]}";
    json_doc *fd, *pd;
    const char *filter = "{\"productInstances.status\":{\"$hasSome\":[\"X\",\"Y\"]}}";
    json_value *f = json_parse(filter, strlen(filter), 0, &fd, NULL);
    json_value *p = json_parse(pkg, strlen(pkg), 0, &pd, NULL);
    long long work = 0;
    CHECK_INT(emu_filter_match_counted(f, p, &work), 0);
    CHECK_INT(work, 1 + 2 * 3); /* the operator, then each value against each of the 3 instances */
    json_doc_free(fd);
    json_doc_free(pd);

    char err[512];
    emu_options o = {.db_path = ":memory:", .catalog_path = CATALOG, .seed = 42, .query_budget = 150};
    emu_t *e = emu_open(&o, err, sizeof err);
    CHECK(e != NULL);
    if (!e)
        return;
    char body[8192];
    size_t n = (size_t)snprintf(body, sizeof body, "{\"products\":[");
    for (int i = 0; i < 20; i++)
        n += (size_t)snprintf(body + n, sizeof body - n,
                              "%s{\"catalogProductId\":\"" CORE "\",\"countryCode\":\"DE\",\"billingInfo\":"
                              "{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"YEAR\",\"count\":1}}}",
                              i ? "," : "");
    snprintf(body + n, sizeof body - n, "]}");
    json_doc *d;
    json_value *v;
    CHECK_INT(call(e, "POST", "/resellers/v2/packages", JANE, body, &d, &v), 200);
    json_doc_free(d);
    /* Foreseen: 100 + 1 + 10 values = 111 <= 150; done: 100 + 1 + 9 x 20 instances before the last value
     * (the status they have: a package with none of the values is ruled out by the index, not evaluated),
     * refused on the way. */
    const char *q = "{\"query\":{\"filter\":{\"productInstances.status\":{\"$hasSome\":"
                    "[\"X0\",\"X1\",\"X2\",\"X3\",\"X4\",\"X5\",\"X6\",\"X7\",\"X8\",\"ENABLED\"]}}}}";
    CHECK_INT(call(e, "POST", "/resellers/v1/packages/query", JANE, q, &d, &v), 400);
    CHECK_STR(violated_rule(v), "QUERY_TOO_COSTLY");
    const char *desc = first_violation(v, "description");
    CHECK(desc && strstr(desc, "after 1 of the 1 packages"));
    json_doc_free(d);
    /* Foreseen over the budget (100 + 1 + 60 = 161): refused before rendering. */
    char big[1024];
    n = (size_t)snprintf(big, sizeof big, "{\"query\":{\"filter\":{\"externalId\":{\"$in\":[");
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(big + n, sizeof big - n, "%s\"e%d\"", i ? "," : "", i);
    snprintf(big + n, sizeof big - n, "]}}}}");
    CHECK_INT(call(e, "POST", "/resellers/v1/packages/query", JANE, big, &d, &v), 400);
    CHECK_STR(violated_rule(v), "QUERY_TOO_COSTLY");
    json_doc_free(d);
    /* Within it: answered. */
    CHECK_INT(call(e, "POST", "/resellers/v1/packages/query", JANE,
                   "{\"query\":{\"filter\":{\"productInstances.status\":{\"$hasSome\":[\"PENDING\"]}}}}", &d, &v),
              200);
    json_doc_free(d);
    emu_close(e);
}

/* ---- Query Packages at any size: keyset paging ---- */

#define QUERY_PATH "/resellers/v1/packages/query"
#define MAX_IDS 400

static const char *floating_body = "{\"products\":[{\"catalogProductId\":\"" CORE "\",\"countryCode\":\"DE\","
                                   "\"billingInfo\":{\"type\":\"RECURRING\",\"cycleDuration\":{\"unit\":\"YEAR\","
                                   "\"count\":1}}}]}";

typedef struct id_list {
    char id[MAX_IDS][EMU_ID_LEN + 1];
    int n;
} id_list;

/* Creates n floating packages for the account, as fast as they go (several in one ms). */
static void create_many(emu_t *e, const char *account, int n)
{
    for (int i = 0; i < n; i++) {
        json_doc *d;
        json_value *v;
        CHECK_INT(call(e, "POST", "/resellers/v2/packages", account, floating_body, &d, &v), 200);
        json_doc_free(d);
    }
}

/* Runs a query; appends the packages' ids to ids and copies the next cursor ("" when none).
 * Returns the status. */
static int query_page(emu_t *e, const char *body, id_list *ids, char *next, size_t nextlen)
{
    json_doc *d;
    json_value *v;
    int st = call(e, "POST", QUERY_PATH, JANE, body, &d, &v);
    const json_value *pkgs = json_get(v, "packages");
    for (const json_value *p = pkgs ? pkgs->u.kids.head : NULL; p && ids->n < MAX_IDS; p = p->next)
        snprintf(ids->id[ids->n++], EMU_ID_LEN + 1, "%s", json_get_str(p, "id"));
    const char *c = json_get_str(json_get(json_get(v, "metadata"), "cursors"), "next");
    snprintf(next, nextlen, "%s", c ? c : "");
    json_doc_free(d);
    return st;
}

/* Pages through everything by cursor, `limit` a page, creating `between` packages after each page. */
static void walk_all(emu_t *e, const char *first, int limit, int between, id_list *out)
{
    char body[2048], next[1024];
    out->n = 0;
    CHECK_INT(query_page(e, first, out, next, sizeof next), 200);
    for (int pages = 1; next[0] && pages < MAX_IDS; pages++) {
        create_many(e, JANE, between);
        snprintf(body, sizeof body, "{\"query\":{\"cursorPaging\":{\"limit\":%d,\"cursor\":\"%s\"}}}", limit, next);
        CHECK_INT(query_page(e, body, out, next, sizeof next), 200);
    }
}

static int index_of(const id_list *l, const char *id)
{
    for (int i = 0; i < l->n; i++)
        if (!strcmp(l->id[i], id))
            return i;
    return -1;
}

/* A cursor walk returns each package there was when it began exactly once, in
 * order, however many are created between its pages -- newest first, the new
 * ones are before the walk; oldest first, after what there was, each once. */
static void test_cursor_walk_with_creates_between(void)
{
    emu_t *e = open_emu(":memory:", 0);
    CHECK(e != NULL);
    if (!e)
        return;
    create_many(e, JANE, 60);
    static id_list before, walked;
    char next[1024];
    before.n = 0;
    CHECK_INT(query_page(e, "{\"query\":{\"paging\":{\"limit\":1000}}}", &before, next, sizeof next), 200);
    CHECK_INT(before.n, 60);
    walk_all(e, "{\"query\":{\"cursorPaging\":{\"limit\":7}}}", 7, 2, &walked);
    CHECK_INT(walked.n, 60);
    for (int i = 0; i < 60 && i < walked.n; i++)
        CHECK_STR(walked.id[i], before.id[i]);

    const char *asc = "{\"query\":{\"sort\":[{\"fieldName\":\"createdDate\",\"order\":\"ASC\"}],";
    char body[256];
    before.n = 0;
    snprintf(body, sizeof body, "%s\"paging\":{\"limit\":1000}}}", asc);
    CHECK_INT(query_page(e, body, &before, next, sizeof next), 200);
    snprintf(body, sizeof body, "%s\"cursorPaging\":{\"limit\":9}}}", asc);
    walk_all(e, body, 9, 1, &walked);
    CHECK(walked.n > before.n);
    for (int i = 0; i < before.n && i < walked.n; i++)
        CHECK_STR(walked.id[i], before.id[i]);
    for (int i = 0; i < walked.n; i++)
        CHECK_INT(index_of(&walked, walked.id[i]), i);
    emu_close(e);
}

/* What one page costs SQLite, in virtual machine steps; no full scan. */
static long long page_steps(emu_t *e, const char *body)
{
    static id_list ids;
    char next[1024];
    ids.n = 0;
    CHECK_INT(query_page(e, body, &ids, next, sizeof next), 200);
    CHECK_INT(e->query_fullscan_steps, 0);
    return e->query_vm_steps;
}

/* The next cursor after `pages` pages of the query (10 a page). */
static void cursor_after(emu_t *e, const char *first, int pages, char *next, size_t nextlen)
{
    static id_list ids;
    char body[2048];
    ids.n = 0;
    CHECK_INT(query_page(e, first, &ids, next, nextlen), 200);
    for (int i = 1; i < pages; i++) {
        snprintf(body, sizeof body, "{\"query\":{\"cursorPaging\":{\"limit\":10,\"cursor\":\"%s\"}}}", next);
        CHECK_INT(query_page(e, body, &ids, next, nextlen), 200);
    }
}

/* Creates a package and marks its instance with a status (the admin's forced status). */
static void create_with_status(emu_t *e, const char *status)
{
    json_doc *d;
    json_value *v;
    CHECK_INT(call(e, "POST", "/resellers/v2/packages", JANE, floating_body, &d, &v), 200);
    const json_value *insts = json_get(json_get(v, "package"), "productInstances");
    char path[128], body[64];
    snprintf(path, sizeof path, "/__admin/instances/%s/status",
             insts && insts->u.kids.head ? json_get_str(insts->u.kids.head, "instanceId") : "none");
    json_doc_free(d);
    snprintf(body, sizeof body, "{\"status\":\"%s\"}", status);
    CHECK_INT(call(e, "POST", path, NULL, body, &d, &v), 200);
    json_doc_free(d);
}

/* A page's cost does not grow with the store: the same pages, with twice the
 * packages, take no more SQLite steps (but a few), each below a bound per
 * package read (the page and the one that tells whether there is a next).
 * Among them, a status most instances have (more than lead a walk by their
 * index) and one only three have (their packages found by index, then
 * sorted). */
static void test_page_cost_is_bounded(void)
{
    static const char *const pages[] = {
        "{\"query\":{\"cursorPaging\":{\"limit\":10}}}",
        "{\"query\":{\"filter\":{\"productInstances.status\":{\"$hasSome\":[\"ENABLED\"]}},\"cursorPaging\":{\"limit\":10}}}",
        "{\"query\":{\"filter\":{\"productInstances.status\":{\"$hasSome\":[\"AWAITING_ACTION\"]}},"
        "\"cursorPaging\":{\"limit\":10}}}",
        "{\"query\":{\"filter\":{\"accountId\":\"" JANE "\"},\"cursorPaging\":{\"limit\":10}}}",
        "{\"query\":{\"sort\":[{\"fieldName\":\"updatedDate\",\"order\":\"ASC\"}],\"cursorPaging\":{\"limit\":10}}}",
        "{\"query\":{\"sort\":[{\"fieldName\":\"createdDate\",\"order\":\"ASC\"},{\"fieldName\":\"updatedDate\","
        "\"order\":\"DESC\"}],\"cursorPaging\":{\"limit\":10}}}",
    };
    enum { NPAGES = sizeof pages / sizeof pages[0] };
    emu_t *e = open_emu(":memory:", 0);
    CHECK(e != NULL);
    if (!e)
        return;
    for (int i = 0; i < 3; i++)
        create_with_status(e, "AWAITING_ACTION");
    long long cost[2][NPAGES + 1];
    for (int round = 0; round < 2; round++) {
        create_many(e, JANE, 1100);
        for (int i = 0; i < NPAGES; i++)
            cost[round][i] = page_steps(e, pages[i]);
        char next[1024], body[2048];
        cursor_after(e, pages[0], 5, next, sizeof next); /* the sixth page, by cursor */
        snprintf(body, sizeof body, "{\"query\":{\"cursorPaging\":{\"limit\":10,\"cursor\":\"%s\"}}}", next);
        cost[round][NPAGES] = page_steps(e, body);
    }
    for (int i = 0; i <= NPAGES; i++) {
        CHECK(cost[0][i] > 0);
        CHECK(cost[1][i] <= cost[0][i] + 32); /* a page from inside a ms: its rest, then the next ones */
        if (i == 1) /* counting up to EMU_QUERY_LEAD_MAX instances tells the status is not rare */
            CHECK(cost[1][i] <= 11 * 60 + 9 * EMU_QUERY_LEAD_MAX);
        else if (i != 5) /* two keys: the second is sorted among the packages of one ms (~1100 here) */
            CHECK(cost[1][i] <= 11 * 60);
    }
    emu_close(e);
}

int main(void)
{
    test_catalog_errors();
    test_create_get_persist();
    test_owner_builtin_fields();
    test_rules_rollback();
    test_filter();
    test_dates();
    test_fuzz_findings();
    test_query_budget();
    test_cursor_walk_with_creates_between();
    test_page_cost_is_bounded();
    return check_report();
}
