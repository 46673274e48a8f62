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
    /* a mapping of thousands of keys (hooks of as many events): every key is told apart, the
     * duplicate found wherever it is */
    buf_t many;
    buf_init(&many, 0);
    for (int i = 0; i < 3000; i++)
        buf_printf(&many, "e%d: %d\n", i, i);
    ydoc *md = load(buf_cstr(&many), err, sizeof err);
    CHECK(md && md->root->n == 3000 && ymap_get(md->root, "e2999"));
    ytree_free(md);
    buf_adds(&many, "e1234: again\n");
    CHECK(load(buf_cstr(&many), err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:3001:1: duplicate key: e1234");
    buf_free(&many);

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


/* Anchors and aliases: an alias is a copy of its anchor's node, positions and all. */
static void test_anchors(void)
{
    char err[512];
    ydoc *d = load("plans: &plans\n  light: p1\n  core: p2\nx: *plans\ny: [*plans, &one 1, *one]\nname: &n abc\n"
                   "again: *n\n",
                   err, sizeof err);
    CHECK(d != NULL);
    if (!d) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    ynode *x = ymap_get(d->root, "x");
    CHECK(x && x->type == Y_MAP && x->n == 2);
    ynode *light = ymap_get(x, "light");
    CHECK_STR(light->str, "p1");
    /* the copy keeps the anchor's text positions */
    CHECK_INT(light->line, 2);
    CHECK_INT(light->col, 10);
    CHECK_INT(light->key->line, 2);
    CHECK_INT(light->key->col, 3);
    CHECK(light != ymap_get(ymap_get(d->root, "plans"), "light"));
    ynode *y = ymap_get(d->root, "y");
    CHECK(y && y->type == Y_SEQ && y->n == 3);
    CHECK(y->head->type == Y_MAP && ymap_get(y->head, "core"));
    CHECK_STR(y->head->next->next->str, "1");
    CHECK_INT(y->head->next->next->line, 5);
    CHECK_INT(y->head->next->next->col, 13); /* an anchored scalar starts at its anchor */
    CHECK_STR(ymap_get(d->root, "again")->str, "abc");
    /* an error inside an aliased node names the anchor's text */
    long long v;
    CHECK(ynode_int(d, ymap_get(x, "core"), "core", 0, 9, &v, err, sizeof err) < 0);
    CHECK_STR(err, "t.yaml:3:9: core: expected a whole number, got 'p2'");
    ytree_free(d);

    /* a name anchored again: later aliases take the latest */
    d = load("a: &v 1\nb: &v 2\nc: *v\n", err, sizeof err);
    CHECK(d && !strcmp(ymap_get(d->root, "c")->str, "2"));
    ytree_free(d);

    CHECK(load("a: *nope\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:1:4: alias to an unknown anchor: nope");
    CHECK(load("a: &x [1, *x]\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:1:11: alias refers to the node it is inside of: x");
    CHECK(load("a: &x {b: *x}\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:1:11: alias refers to the node it is inside of: x");
    /* an alias as a key is fine when it names a scalar, refused otherwise */
    d = load("k: &k name\n*k : 1\n", err, sizeof err);
    CHECK(d && ymap_get(d->root, "name") && !strcmp(ymap_get(d->root, "name")->str, "1"));
    ytree_free(d);
    CHECK(load("k: &k [1]\n? *k\n: 1\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:1:4: mapping keys must be plain scalars"); /* the anchored list */
}

/* Merge keys: the mapping's own keys win; of a list, earlier mappings win. */
static void test_merge_keys(void)
{
    char err[512];
    ydoc *d = load("base: &base {a: 1, b: 2, c: {deep: 1}}\n"
                   "more: &more {b: 20, d: 40}\n"
                   "one:\n  <<: *base\n  b: 3\n"
                   "two:\n  c: own\n  <<: [*more, *base]\n"
                   "three: {<<: {z: 26}, y: 25}\n",
                   err, sizeof err);
    CHECK(d != NULL);
    if (!d) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    ynode *one = ymap_get(d->root, "one");
    CHECK(one && one->n == 3);
    CHECK(ymap_get(one, "<<") == NULL);
    CHECK_STR(ymap_get(one, "a")->str, "1");
    CHECK_STR(ymap_get(one, "b")->str, "3");
    CHECK(ymap_get(one, "c") && ymap_get(one, "c")->type == Y_MAP);
    /* merged entries point at the anchor's text */
    CHECK_INT(ymap_get(one, "a")->key->line, 1);
    CHECK_INT(ymap_get(one, "a")->key->col, 14);
    ynode *two = ymap_get(d->root, "two");
    CHECK(two && two->n == 4);
    CHECK_STR(ymap_get(two, "c")->str, "own");
    CHECK_STR(ymap_get(two, "b")->str, "20");
    CHECK_STR(ymap_get(two, "d")->str, "40");
    CHECK_STR(ymap_get(two, "a")->str, "1");
    ynode *three = ymap_get(d->root, "three");
    CHECK(three && three->n == 2 && !strcmp(ymap_get(three, "z")->str, "26"));
    ytree_free(d);

    /* a key given twice is still a duplicate, a merged one is not */
    CHECK(load("b: &b {x: 1}\nm:\n  <<: *b\n  y: 1\n  y: 2\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:5:3: duplicate key: y");
    CHECK(load("b: &b {x: 1}\nm:\n  <<: *b\n  <<: *b\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:4:3: duplicate key: <<");
    CHECK(load("m:\n  <<: 1\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:2:7: merge key '<<' takes a mapping or a list of mappings");
    CHECK(load("b: &b {x: 1}\nm:\n  <<: [*b, 2]\n", err, sizeof err) == NULL);
    CHECK_STR(err, "t.yaml:3:12: merge key '<<': each item must be a mapping");
    /* a quoted "<<" is an ordinary key */
    d = load("m: {'<<': 1}\n", err, sizeof err);
    CHECK(d && ymap_get(ymap_get(d->root, "m"), "<<"));
    ytree_free(d);
}

/* Billion laughs: each level aliases the one before ten times. */
static void test_alias_bomb(void)
{
    char text[4096] = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
    for (char c = 'b'; c <= 'j'; c++) {
        char line[128];
        snprintf(line, sizeof line, "%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n", c, c, c - 1,
                 c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1, c - 1);
        strcat(text, line);
    }
    char err[512];
    CHECK(load(text, err, sizeof err) == NULL);
    /* refused at the alias that crosses the cap: in line 5 (e), 10^4-node copies */
    CHECK(strncmp(err, "t.yaml:5:", 9) == 0);
    CHECK(strstr(err, ": alias *d: aliases would expand the document past 100000 nodes") != NULL);

    /* a big scalar copied many times hits the byte cap */
    size_t big = 4u << 20;
    char *t = malloc(big + 200);
    strcpy(t, "s: &s \"");
    memset(t + 7, 'x', big);
    strcpy(t + 7 + big, "\"\nl: [*s, *s, *s, *s, *s]\n");
    CHECK(load(t, err, sizeof err) == NULL);
    CHECK(strncmp(err, "t.yaml:2:", 9) == 0 && strstr(err, "alias *s: aliases would expand the document past"));
    free(t);

    /* an alias costs what it copies, not what follows its anchor in the file */
    size_t cap = 64 * 1024;
    char *many = malloc(cap);
    size_t k = (size_t)snprintf(many, cap, "a: &x 1\n");
    for (int i = 0; i < 2000; i++)
        k += (size_t)snprintf(many + k, cap - k, "k%d: v\n", i);
    k += (size_t)snprintf(many + k, cap - k, "l: [");
    for (int i = 0; i < 60; i++)
        k += (size_t)snprintf(many + k, cap - k, "%s*x", i ? ", " : "");
    snprintf(many + k, cap - k, "]\n");
    ydoc *d = load(many, err, sizeof err);
    CHECK(d != NULL && ymap_get(d->root, "l")->n == 60);
    ytree_free(d);
    free(many);

    /* aliases cannot nest past the depth cap either */
    char deep[1024] = "a: &a ";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    strcat(deep, "\nb: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[*a]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n");
    CHECK(load(deep, err, sizeof err) == NULL);
    CHECK(strstr(err, "alias *a: nesting too deep once expanded") != NULL);
}

/* A hook's options become JSON the sandbox decodes: plain scalars keep their type
 * only when JSON has the same number, so the text always parses. */
static void test_config_options(void)
{
    /* a script that declares no options (route_order.lua does): any keys are taken */
    const char *text = "hooks:\n"
                       "  order.created:\n"
                       "    - script: ../lua/policies/route_order_test.lua\n"
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
    CHECK_STR(c.hooks[0].script, WIXR_SOURCE_DIR "/config/../lua/policies/route_order_test.lua");
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


/* defaults: options merged deeply under each hook's own (its keys win); allow, limits,
 * on_error and max_mutations as defaults a hook may override. */
static void test_config_defaults(void)
{
    const char *text = "defaults:\n"
                       "  options: {plans: {a: 1, b: 2}, mode: x}\n"
                       "  allow: [read]\n"
                       "  limits: {wall_ms: 500}\n"
                       "  on_error: continue\n"
                       "  max_mutations: 3\n"
                       "hooks:\n"
                       "  e:\n"
                       "    - script: ../lua/policies/route_order_test.lua\n"
                       "      options: {plans: {b: 20, c: 30}, own: true}\n"
                       "      allow: [create]\n"
                       "      limits: {memory_mb: 8}\n"
                       "    - script: ../lua/policies/route_order_test.lua\n"
                       "      on_error: stop\n"
                       "      max_mutations: 0\n";
    wixr_config c;
    char err[2048] = "";
    int rc = config_load_string(&c, WIXR_SOURCE_DIR "/config/d.yaml", text, strlen(text), err, sizeof err);
    CHECK(rc == 0);
    if (rc < 0) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_INT(c.nhooks, 2);
    CHECK_STR(c.hooks[0].options_json, "{\"plans\":{\"a\":1,\"b\":20,\"c\":30},\"mode\":\"x\",\"own\":true}");
    CHECK_INT(c.hooks[0].allow, WIX_OP_CREATE);
    CHECK_INT(c.hooks[0].limits.wall_ms, 500);
    CHECK_INT(c.hooks[0].limits.memory_mb, 8);
    CHECK_INT(c.hooks[0].on_error_continue, 1);
    CHECK_INT(c.hooks[0].max_mutations, 3);
    CHECK_STR(c.hooks[1].options_json, "{\"plans\":{\"a\":1,\"b\":2},\"mode\":\"x\"}");
    CHECK_INT(c.hooks[1].allow, WIX_OP_READ);
    CHECK_INT(c.hooks[1].limits.memory_mb, 64);
    CHECK_INT(c.hooks[1].on_error_continue, 0);
    CHECK_INT(c.hooks[1].max_mutations, 0);
    config_free(&c);
}

/* ${NAME:-default}: the default for an unset or empty NAME; ${NAME} alone unset is an error. */
static void test_config_env_defaults(void)
{
    setenv("WIXR_T_SET", "set", 1);
    setenv("WIXR_T_EMPTY", "", 1);
    unsetenv("WIXR_T_UNSET");
    const char *text = "wix:\n  base_url: \"http://${WIXR_T_UNSET:-localhost:9}/${WIXR_T_SET:-no}${WIXR_T_EMPTY:-e}$x\"\n"
                       "  account_id: ${WIXR_T_UNSET:-}\n";
    wixr_config c;
    char err[1024] = "";
    unsetenv("WIX_BASE_URL");
    unsetenv("WIX_ACCOUNT_ID");
    int rc = config_load_string(&c, "env.yaml", text, strlen(text), err, sizeof err);
    CHECK(rc == 0);
    if (rc == 0) {
        CHECK_STR(c.wix.base_url, "http://localhost:9/sete$x");
        CHECK_STR(c.wix.account_id, "");
        config_free(&c);
    }
    const char *bad = "wix:\n  base_url: ${WIXR_T_UNSET}\n  account_id: \"${:-x}\"\n";
    CHECK(config_load_string(&c, "env.yaml", bad, strlen(bad), err, sizeof err) < 0);
    CHECK_STR(err, "env.yaml:2:13: ${WIXR_T_UNSET} is not set in the environment\n"
                   "env.yaml:3:15: bad ${...} reference: ${:-x}");
}

/* Every problem of the file, from every mapping, each at its position. */
static void test_config_every_problem(void)
{
    const char *text = "wixx: 1\n"
                       "runtime:\n  limits: {wall_ms: 0, memroy_mb: 1}\n  max_chain_depth: 99\n"
                       "serve:\n  listen: 127.0.0.1:99999\n  concurency: 3\n  retry: {attempts: 0}\n"
                       "poller:\n  enabled: maybe\n  interval_ms: 1\n"
                       "defaults:\n  allow: [raed]\n";
    wixr_config c;
    char err[4096] = "";
    CHECK(config_load_string(&c, "p.yaml", text, strlen(text), err, sizeof err) < 0);
    CHECK_STR(err, "p.yaml:1:1: unknown key 'wixx' in the configuration (did you mean 'wix'?)\n"
                   "p.yaml:3:24: unknown key 'memroy_mb' in runtime.limits (did you mean 'memory_mb'?)\n"
                   "p.yaml:3:21: runtime.limits.wall_ms: 0 is out of range (1 to 86400000)\n"
                   "p.yaml:4:20: runtime.max_chain_depth: 99 is out of range (0 to 64)\n"
                   "p.yaml:13:11: allow: unknown operation 'raed' (did you mean 'read'?)\n"
                   "p.yaml:7:3: unknown key 'concurency' in serve (did you mean 'concurrency'?)\n"
                   "p.yaml:6:11: serve.listen: bad port '99999' (0 to 65535)\n"
                   "p.yaml:8:21: serve.retry.attempts: 0 is out of range (1 to 1000)\n"
                   "p.yaml:10:12: poller.enabled: expected true or false, got 'maybe'\n"
                   "p.yaml:11:16: poller.interval_ms: 1 is out of range (100 to 86400000)");
    const char *listen = "serve:\n  listen: nowhere:80\n";
    CHECK(config_load_string(&c, "l.yaml", listen, strlen(listen), err, sizeof err) < 0);
    CHECK_STR(err, "l.yaml:2:11: serve.listen: 'nowhere' is not an IPv4 address (or localhost)");
    listen = "serve:\n  listen: 8080\n";
    CHECK(config_load_string(&c, "l.yaml", listen, strlen(listen), err, sizeof err) < 0);
    CHECK_STR(err, "l.yaml:2:11: serve.listen: expected HOST:PORT, got '8080'");
    listen = "serve:\n  listen: localhost:0\n";
    CHECK(config_load_string(&c, "l.yaml", listen, strlen(listen), err, sizeof err) == 0);
    CHECK_STR(c.serve.listen_where, "l.yaml:2:11");
    config_free(&c);
}

/* Option declarations (---@option lines of the script) against a hook's options. */
static void test_config_option_schema(void)
{
    const char *text = "defaults:\n"
                       "  options: {plans: {a: x}, coutnry_code: DE}\n"
                       "hooks:\n"
                       "  e:\n"
                       "    - script: ../lua/policies/change_plan.lua\n"
                       "      options: {alow_downgrade: true, plans: [1]}\n"
                       "    - script: ../lua/policies/change_plan.lua\n"
                       "      options: {allow_downgrade: 'yes', zzz: 1}\n"
                       "    - script: ../lua/policies/route_order.lua\n"
                       "      options: {team_account_id: t, country_code: 7}\n";
    wixr_config c;
    char err[4096] = "";
    CHECK(config_load_string(&c, WIXR_SOURCE_DIR "/config/o.yaml", text, strlen(text), err, sizeof err) < 0);
    CHECK_STR(err, WIXR_SOURCE_DIR "/config/o.yaml:6:17: options: 'alow_downgrade' is not an option change_plan.lua "
                                   "declares (did you mean 'allow_downgrade'?)\n"
                   WIXR_SOURCE_DIR "/config/o.yaml:8:34: options.allow_downgrade: change_plan.lua declares it boolean, "
                                   "got a string\n"
                   WIXR_SOURCE_DIR "/config/o.yaml:8:41: options: 'zzz' is not an option change_plan.lua declares "
                                   "(plans, allow_downgrade)\n"
                   WIXR_SOURCE_DIR "/config/o.yaml:10:51: options.country_code: route_order.lua declares it string, "
                                   "got a number\n"
                   WIXR_SOURCE_DIR "/config/o.yaml:2:28: defaults.options: no hook's script declares 'coutnry_code' "
                                   "(did you mean 'country_code'?)");
    /* plans: [1] is a list, and a table: the declared type table<string, string> is not looked into */
}

int main(void)
{
    test_positions();
    test_errors();
    test_anchors();
    test_merge_keys();
    test_alias_bomb();
    test_config_options();
    test_config_defaults();
    test_config_env_defaults();
    test_config_every_problem();
    test_config_option_schema();
    return check_report();
}
