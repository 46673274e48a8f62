/* Unit tests of the positioned YAML tree and its strict helpers. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
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
}

static void test_distance(void)
{
    CHECK_INT(ytree_distance("memory", "memroy"), 2);
    CHECK_INT(ytree_distance("script", "script"), 0);
    CHECK_INT(ytree_distance("", "abc"), 3);
}

int main(void)
{
    test_positions();
    test_errors();
    test_distance();
    return check_report();
}
