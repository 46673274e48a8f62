/*
 * fuzz_event_json -- event JSON intake: what `wixr serve` (POST /v1/events/NAME)
 * and `wixr fire --data` do with an incoming event, then the event's run.
 *
 * Input: an optional first line naming the event (one of the events of
 * support/event_hooks.yaml), then the body. Without a name line the whole
 * input is the body of the event "fuzz.echo".
 *
 * The body goes the way of an accepted event:
 *   json_parse at the intake's depth cap -> a JSON object or refused ->
 *   event_id (a string of 1 to 200 characters without / % ? # \ or spaces)
 *   -> the journaled copy (jw_value) -> event_fire: the event's hooks (an
 *   example policy on the in-process emulator, reset for each input, then
 *   support/echo_event.lua) -> the run's report (event_job_json).
 * Checked besides the sanitizers:
 *   - a refused body has an error position inside the body;
 *   - the journaled copy parses and writes back byte for byte (a stored event
 *     reads back as it was stored);
 *   - the run finishes, the echo hook succeeds (every accepted event can be
 *     handed to a hook and back), and the run's report is valid JSON.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "json/json.h"
#include "app/app.h"
#include "hooks/hooks.h"
#include "runtime/sched.h"
#include "wix/client.h"

#define HOOKS WIXR_SOURCE_DIR "/tests/fuzz/support/event_hooks.yaml"
#define INTAKE_MAX_DEPTH 64 /* serve/intake.c's intake cap */

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static wixr_config cfg;
static wixr_host *host;
static hook_table *table;

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_event_json: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    char err[8192];
    unsetenv("WIX_API_KEY");
    unsetenv("WIX_BASE_URL");
    unsetenv("WIX_ACCOUNT_ID");
    if (config_load(&cfg, HOOKS, err, sizeof err) < 0)
        fail("cannot load the hooks", err);
    if (!(host = host_new(&cfg, 0, err, sizeof err)))
        fail("cannot create the host", err);
    buf_t errors;
    buf_init(&errors, 0);
    if (!(table = hooks_load(host, &cfg, &errors)))
        fail("cannot load the hook scripts", buf_cstr(&errors));
    buf_free(&errors);
    return 0;
}

static int valid_name(const char *n, size_t len)
{
    if (len == 0 || len > 100)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!memchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:", n[i], 66))
            return 0;
    return 1;
}

static int valid_id(const char *id, size_t len)
{
    return len >= 1 && len <= 200 && strlen(id) == len && !strpbrk(id, "/%?#\\ \t\r\n");
}

typedef struct run_state {
    int finished;
} run_state;

static void run_done(event_job *j, void *arg)
{
    (void)j;
    ((run_state *)arg)->finished = 1;
}

static void check_json(const char *what, const char *text, size_t len)
{
    json_doc *doc = NULL;
    json_error je;
    json_value *v = json_parse(text, len, 0, &doc, &je);
    json_doc_free(doc);
    if (!v) {
        fprintf(stderr, "%s: %.*s\n", what, (int)(len > 2000 ? 2000 : len), text);
        fail("not valid JSON", je.msg);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    char name[101] = "fuzz.echo";
    const char *nl = memchr(text, '\n', size);
    if (nl && valid_name(text, (size_t)(nl - text))) {
        memcpy(name, text, (size_t)(nl - text));
        name[nl - text] = '\0';
        size -= (size_t)(nl - text) + 1;
        text = nl + 1;
    }
    if (!hooks_count_for(table, name))
        return 0; /* 404 UNKNOWN_EVENT */
    if (!size)
        return 0; /* 400: the body must be a JSON object */

    /* Intake: parse and validate. */
    json_doc *doc = NULL;
    json_error je;
    json_value *v = json_parse(text, size, INTAKE_MAX_DEPTH, &doc, &je);
    if (!v) {
        json_doc_free(doc);
        if (je.offset > size || je.line < 1 || je.col < 1 || !je.msg[0])
            fail("a refused body without a position inside it", je.msg);
        return 0;
    }
    if (v->type != JSON_OBJECT) {
        json_doc_free(doc);
        return 0;
    }
    json_value *idv = json_get(v, "event_id");
    char *id = NULL;
    if (idv && idv->type == JSON_STRING) {
        if (!valid_id(idv->u.str.s, idv->u.str.len)) {
            json_doc_free(doc);
            return 0; /* 400, a violation on the event id */
        }
        id = strdup(idv->u.str.s);
    } else if (idv && idv->type != JSON_NULL) {
        json_doc_free(doc);
        return 0;
    } else {
        id = strdup("fuzz-event-1");
    }

    /* The journaled copy, and how it reads back. */
    buf_t stored;
    buf_init(&stored, 0);
    json_writer w;
    jw_init(&w, &stored);
    jw_value(&w, v);
    json_doc_free(doc);
    if (stored.failed)
        fail("the journaled copy could not be written", NULL);
    const char *data_json = buf_cstr(&stored);
    doc = NULL;
    v = json_parse(data_json, stored.len, INTAKE_MAX_DEPTH, &doc, &je);
    if (!v || v->type != JSON_OBJECT) {
        fprintf(stderr, "journaled: %s\n", data_json);
        fail("the journaled copy does not parse back", v ? "not an object" : je.msg);
    }
    buf_t again;
    buf_init(&again, 0);
    jw_init(&w, &again);
    jw_value(&w, v);
    json_doc_free(doc);
    if (again.len != stored.len || memcmp(again.data, stored.data, stored.len)) {
        fprintf(stderr, "journaled: %s\nread back: %s\n", data_json, buf_cstr(&again));
        fail("the journaled copy changes when read back", NULL);
    }
    buf_free(&again);

    /* The run. */
    if (strcmp(name, "fuzz.echo") && wix_client_sandbox_admin(host->client, "POST", "/__admin/reset", NULL) != 200)
        fail("the in-process emulator did not reset", NULL);
    run_state st = {0};
    event_job *j = event_fire(table, name, id, data_json, run_done, &st);
    if (!j)
        fail("event_fire refused an accepted event", NULL);
    sched_run(host->sched);
    if (!st.finished)
        fail("the event's run did not finish", NULL);
    if (j->nidx < 1)
        fail("the event ran no hook", name);
    const hook_result *echo = &j->results[j->nidx - 1];
    if (echo->status != HOOK_OK) {
        fprintf(stderr, "event %s: %s\n", name, data_json);
        fail("the echo hook failed on an accepted event", echo->error);
    }
    if (!echo->result_json)
        fail("the echo hook returned nothing", NULL);
    check_json("echo result", echo->result_json, strlen(echo->result_json));
    buf_t report;
    buf_init(&report, 0);
    event_job_json(j, &report);
    check_json("run report", buf_cstr(&report), report.len);
    buf_free(&report);
    event_job_free(j);
    buf_free(&stored);
    free(id);
    return 0;
}
