/*
 * cmd_run.c -- `wixr run SCRIPT.lua`: runs one script on the scheduler, with
 * the wix module on the configured transport.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../app/app.h"
#include "../json/json.h"
#include "../json/luajson.h"
#include "cli.h"
#include "opts.h"

static const char usage[] =
    "usage: wixr run SCRIPT.lua [options]\n"
    "\n"
    "Runs a Lua script with the wix module. If the script returns a function, it is\n"
    "called as handler(event, ctx) and what it returns is printed.\n"
    "\n"
    "Options:\n"
    "  --event FILE.json   the event passed to the handler ('-' reads standard input)\n"
    "  --config FILE       configuration (default: $WIXR_CONFIG, ./wixr.yaml or ./config/wixr.yaml)\n"
    "  --dry-run           do not send mutating calls: record them, return simulated results,\n"
    "                      and print the planned calls at the end (reads still go through)\n"
    "  --json              print one JSON document: {ok, result, error, planned, stats}\n"
    "  --trace             print a Lua traceback with an error\n"
    "  -h, --help          this help\n"
    "\n"
    "Environment: WIX_API_KEY, WIX_ACCOUNT_ID, WIX_BASE_URL override the configuration.\n"
    "With no API key the embedded sandbox emulator is used.\n"
    "Exit codes: 0 ok, 1 the script failed, 2 usage, 3 bad script, event or configuration.\n";

typedef struct outcome {
    int finished, status;
    char *result_json;     /* first return value as JSON, or NULL */
    char *error;           /* one-line error */
    char *trace;
    int want_trace;
} outcome;

static void root_done(sched_task *t, lua_State *co, const task_outcome *to, void *arg)
{
    (void)t;
    (void)co;
    outcome *o = arg;
    o->finished = 1;
    o->status = to->kind == OUTCOME_OK ? LUA_OK : LUA_ERRRUN;
    if (to->kind == OUTCOME_OK) {
        if (to->json && strcmp(to->json, "null") != 0) {
            o->result_json = strdup(to->json);
        } else if (!to->json) {
            o->status = LUA_ERRRUN;
            if (asprintf(&o->error, "the script's result cannot be printed as JSON: %s", to->text) < 0)
                o->error = NULL;
        }
        return;
    }
    o->error = strdup(to->text);
    if (to->trace)
        o->trace = strdup(to->trace);
}

/* Pushes the event (a table; {} without --event). Returns 0, or -1 after printing why. */
static int push_event(lua_State *L, const char *path)
{
    if (!path) {
        lua_newtable(L);
        return 0;
    }
    const char *name = strcmp(path, "-") ? path : "<stdin>";
    size_t len;
    char *text = cli_read_file(path, &len);
    if (!text) {
        fprintf(stderr, "wixr run: %s: %s\n", name, strerror(errno));
        return -1;
    }
    json_doc *doc;
    json_error e;
    json_value *v = json_parse(text, len, 0, &doc, &e);
    json_doc_free(doc);
    if (!v) {
        fprintf(stderr, "wixr run: %s:%d:%d: %s\n", name, e.line, e.col, e.msg);
        free(text);
        return -1;
    }
    char err[256];
    int rc = luajson_decode(L, text, len, 0, err, sizeof err);
    free(text);
    if (rc < 0) {
        fprintf(stderr, "wixr run: %s: %s\n", name, err);
        return -1;
    }
    return 0;
}

static void print_pretty(FILE *out, const char *json)
{
    json_doc *doc;
    json_value *v = json_parse(json, strlen(json), 0, &doc, NULL);
    if (v && (v->type == JSON_STRING)) {
        fprintf(out, "%s\n", v->u.str.s);
    } else if (v) {
        buf_t b;
        buf_init(&b, 0);
        json_pretty(&b, v, 0);
        fprintf(out, "%s\n", buf_cstr(&b));
        buf_free(&b);
    }
    json_doc_free(doc);
}

/* Encodes the dry-run plan (wire names) as a JSON array into b. */
static int plan_json(wixr_host *h, buf_t *b)
{
    lua_State *L = h->L;
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->plan_ref);
    int n = (int)lua_rawlen(L, -1);
    char err[256];
    int rc = luajson_encode(L, -1, b, 1, err, sizeof err);
    if (n == 0) {
        buf_reset(b);
        buf_adds(b, "[]");
    }
    lua_pop(L, 1);
    return rc < 0 ? -1 : n;
}

int cmd_run(int argc, char **argv)
{
    const char *script = NULL, *event = NULL, *config = NULL;
    int dry = 0, json = 0, trace = 0;
    const cli_opt opts[] = {
        {"--dry-run", OPT_FLAG, &dry, 1, 0, NULL},
        {"--json", OPT_FLAG, &json, 1, 0, NULL},
        {"--trace", OPT_FLAG, &trace, 1, 0, NULL},
        {"--event", OPT_VALUE, &event, 0, 0, NULL},
        {"--config", OPT_VALUE, &config, 0, 0, NULL},
        {NULL, OPT_FLAG, NULL, 0, 0, NULL},
    };
    const cli_command cmd = {"wixr run", usage, opts, &script, 1, "SCRIPT"};
    int prc = cli_parse(&cmd, argc, argv, NULL);
    if (prc != CLI_GO)
        return prc;
    if (!script)
        return cli_usage_error(&cmd, "give a SCRIPT to run");

    char err[1024];
    wixr_config cfg;
    if (config_load(&cfg, config, err, sizeof err) < 0) {
        fprintf(stderr, "wixr run: %s\n", err);
        return EXIT_BAD_INPUT;
    }
    int rc = EXIT_WORK_FAILED;
    outcome o = {.want_trace = trace};
    wixr_host *h = host_new(&cfg, dry, err, sizeof err);
    if (!h) {
        fprintf(stderr, "wixr run: %s\n", err);
        config_free(&cfg);
        return EXIT_BAD_INPUT;
    }
    lua_State *L = h->L;
    lua_getglobal(L, "require");
    lua_pushstring(L, "wixr.runner");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        fprintf(stderr, "wixr run: %s\n", lua_tostring(L, -1));
        goto done;
    }
    if (host_load_script(h, script) != LUA_OK) {
        fprintf(stderr, "wixr run: %s\n", lua_tostring(L, -1));
        rc = EXIT_BAD_INPUT;
        goto done;
    }
    if (push_event(L, event) < 0) {
        rc = EXIT_BAD_INPUT;
        goto done;
    }
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, dry);
    lua_setfield(L, -2, "dry_run");
    lua_pushstring(L, "run");
    lua_setfield(L, -2, "name");
    lua_getfield(L, -2, "id");
    lua_setfield(L, -2, "id");
    if (!sched_spawn_in(h->sched, L, 3, 0, SCHED_RESULT_JSON | (trace ? SCHED_TRACEBACK : 0), root_done, &o)) {
        fprintf(stderr, "wixr run: out of memory\n");
        goto done;
    }
    sched_run(h->sched);
    if (!o.finished) {
        o.status = LUA_ERRRUN;
        o.error = strdup("the script is waiting for something that will never happen (a suspended task nobody wakes)");
    }
    buf_t plan;
    buf_init(&plan, 0);
    int planned = dry ? plan_json(h, &plan) : 0;
    const wix_stats *st = wix_client_stats(h->client);
    if (json) {
        buf_t out;
        json_writer w;
        buf_init(&out, 0);
        jw_init(&w, &out);
        jw_obj(&w);
        jw_key(&w, "ok");
        jw_bool(&w, o.status == LUA_OK);
        if (o.result_json) { /* JSON the encoder made: written as it is */
            jw_key(&w, "result");
            jw_raw(&w, o.result_json, strlen(o.result_json));
        }
        if (o.error)
            jw_kstr(&w, "error", o.error);
        if (dry) {
            jw_key(&w, "planned");
            jw_raw(&w, buf_cstr(&plan), plan.len);
        }
        jw_key(&w, "stats");
        jw_obj(&w);
        jw_key(&w, "calls");
        jw_int(&w, st->calls);
        jw_key(&w, "attempts");
        jw_int(&w, st->attempts);
        jw_key(&w, "retries");
        jw_int(&w, st->retries);
        jw_key(&w, "rate_waits");
        jw_int(&w, st->rate_waits);
        jw_obj_end(&w);
        jw_obj_end(&w);
        buf_addc(&out, '\n');
        fputs(buf_cstr(&out), stdout);
        buf_free(&out);
    } else {
        if (o.result_json)
            print_pretty(stdout, o.result_json);
        if (dry) {
            fprintf(stderr, "wixr run: dry run: %d mutating call%s not sent:\n", planned, planned == 1 ? "" : "s");
            if (planned > 0) {
                json_doc *doc;
                json_value *v = json_parse(plan.data, plan.len, 0, &doc, NULL);
                for (json_value *k = v ? v->u.kids.head : NULL; k; k = k->next) {
                    buf_t line;
                    buf_init(&line, 0);
                    json_writer w;
                    jw_init(&w, &line);
                    json_value *body = json_get(k, "body");
                    if (body)
                        jw_value(&w, body);
                    fprintf(stderr, "  %s %s %s\n", json_get_str(k, "method"), json_get_str(k, "path"),
                            body ? buf_cstr(&line) : "");
                    buf_free(&line);
                }
                json_doc_free(doc);
            }
        }
        if (o.error)
            fprintf(stderr, "wixr run: %s\n", o.error);
        if (o.trace)
            fprintf(stderr, "%s\n", o.trace);
    }
    buf_free(&plan);
    rc = o.status == LUA_OK ? 0 : EXIT_WORK_FAILED;
done:
    free(o.result_json);
    free(o.error);
    free(o.trace);
    host_free(h);
    config_free(&cfg);
    return rc;
}
