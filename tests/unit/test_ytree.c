/* Unit tests of the positioned YAML tree and its strict helpers, and of the
 * configuration read from text (config_load_string). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "config/config.h"
#include "json/json.h"
#include "yaml/ytree.h"

static ydoc *load(const char *text, char *err, size_t n)
{
    return ytree_load_string("t.yaml", text, strlen(text), err, n);
}

static void test_positions(void)
{
    char err[256];
    ydoc *d = load("hooks:\n  order.created:\n    - script: a.lua\n      enabled: yes\n", err, sizeof err);
    CHECK(d != NULL);
    ynode *hooks = ymap_get(d->root, "hooks");
    CHECK(hooks && hooks->type == Y_MAP);
    ynode *list = ymap_get(hooks, "order.created");
    CHECK(list && list->type == Y_SEQ && list->n == 1);
    ynode *script = ymap_get(list->head, "script");
    CHECK_INT(script->line, 3);
    CHECK_INT(script->col, 15);
    CHECK_INT(script->key->line, 3);
    CHECK_INT(script->key->col, 7);
    int b = 0;
    CHECK(ynode_bool(d, ymap_get(list->head, "enabled"), "enabled", &b, err, sizeof err) == 0 && b == 1);
    ytree_free(d);
}

static void test_errors(void)
{
    char err[256];
    CHECK(load("a: [1, 2\nb: 3\n", err, sizeof err) == NULL);
    CHECK(strncmp(err, "t.yaml:", 7) == 0 && strstr(err, ":0:0") == NULL);
    CHECK(load("a: 1\na: 2\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:2:1: duplicate key: a");
    CHECK(load("a: &x 1\nb: *x\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:1:4: anchors are not supported");

    ydoc *d = load("limits:\n  memroy: 10\n  count: ten\n", err, sizeof err);
    CHECK(d != NULL);
    static const char *const allowed[] = {"memory", "instructions", "count", NULL};
    ynode *lim = ymap_get(d->root, "limits");
    CHECK(ymap_check_keys(d, lim, allowed, "limits", err, sizeof err) < 0);
    CHECK_STR(err, "t.yaml:2:3: unknown key 'memroy' in limits (did you mean 'memory'?)");
    long long v;
    CHECK(ynode_int(d, ymap_get(lim, "count"), "count", 0, 100, &v, err, sizeof err) < 0);
    CHECK_STR(err, "t.yaml:3:10: count: expected a whole number, got 'ten'");
    ytree_free(d);

    /* A value quoted in a message cannot break it over lines. */
    d = load("count: \"1\\n2\\t\\x01\"\n", err, sizeof err);
    CHECK(d != NULL);
    CHECK(ynode_int(d, ymap_get(d->root, "count"), "count", 0, 100, &v, err, sizeof err) < 0);
    CHECK_STR(err, "t.yaml:1:8: count: expected a whole number, got '1\\n2\\t\\x01'");
    ytree_free(d);
}

static void test_distance(void)
{
    CHECK_INT(ytree_distance("memory", "memroy"), 2);
    CHECK_INT(ytree_distance("script", "script"), 0);
    CHECK_INT(ytree_distance("", "abc"), 3);
}

/* A hook's options become JSON the sandbox decodes: plain scalars keep their type
 * only when JSON has the same number, so the text always parses. */
static void test_config_options(void)
{
    const char *text = "hooks:\n"
                       "  order.created:\n"
                       "    - script: ../lua/policies/route_order.lua\n"
                       "      options: {i: 12, f: -1.5e3, z: 0, t: true, n: ~, e: '', s: \"7\",\n"
                       "                dot: 5., lead: .5, oct: 012, hex: 0x1F, inf: -inf, nan: .nan, plus: +1}\n";
    wixr_config c;
    char err[1024] = "";
    int rc = config_load_string(&c, WIXR_SOURCE_DIR "/config/test.yaml", text, strlen(text), err, sizeof err);
    CHECK(rc == 0);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_INT(c.nhooks, 1);
    CHECK_STR(c.hooks[0].script, WIXR_SOURCE_DIR "/config/../lua/policies/route_order.lua");
    CHECK_STR(c.hooks[0].options_json,
              "{\"i\":12,\"f\":-1.5e3,\"z\":0,\"t\":true,\"n\":null,\"e\":\"\",\"s\":\"7\",\"dot\":\"5.\",\"lead\":\".5\","
              "\"oct\":\"012\",\"hex\":\"0x1F\",\"inf\":\"-inf\",\"nan\":\".nan\",\"plus\":\"+1\"}");
    json_doc *d;
    CHECK(json_parse(c.hooks[0].options_json, strlen(c.hooks[0].options_json), 0, &d, NULL) != NULL);
    json_doc_free(d);
    config_free(&c);

    /* errors name the text's file, like config_load does */
    rc = config_load_string(&c, "inline.yaml", "hooks: [1]\n", 11, err, sizeof err);
    CHECK(rc < 0);
    CHECK_STR(err, "inline.yaml:1:8: hooks: expected a mapping, got a list");

    /* More problems than the message holds: whole lines, then a count of the rest. */
    char many[4096] = "hooks:\n  e:\n";
    for (int i = 0; i < 200; i++)
        strcat(many, "    - {}\n");
    rc = config_load_string(&c, "m.yaml", many, strlen(many), err, sizeof err);
    CHECK(rc < 0);
    int lines = 0, more = -1;
    for (char *line = err; *line; lines++) {
        size_t n = strcspn(line, "\n");
        if (!line[n])
            CHECK(sscanf(line, "m.yaml: %d more problems not shown", &more) == 1);
        else
            CHECK(strncmp(line, "m.yaml:", 7) == 0 && strstr(line, "'script' is required") && line[7] != ' ');
        line += n + (line[n] == '\n');
    }
    CHECK(lines > 5 && more > 0);
    CHECK_INT(lines - 1 + more, 200);
    /* a message too small for even the first: it is cut, and the count still said */
    char small[60];
    CHECK(config_load_string(&c, "m.yaml", many, strlen(many), small, sizeof small) < 0);
    CHECK_STR(small, "m.yaml:3:7: hooks.e[0]:\nm.yaml: 199 more problems not shown");
}

int main(void)
{
    test_positions();
    test_errors();
    test_distance();
    test_config_options();
    return check_report();
}
