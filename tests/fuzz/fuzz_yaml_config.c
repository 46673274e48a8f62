/*
 * fuzz_yaml_config -- the YAML configuration loader (src/config/config.c on
 * src/yaml/ytree.c), from text in memory: config_load_string, the entry
 * config_load itself goes through.
 *
 * The text stands for config/wixr.yaml of the source tree, so the example
 * policies' relative script paths resolve and the loader goes on past them.
 * Besides the sanitizers, it checks what the rest of wixr relies on:
 *   - a refused file leaves a non-empty error message, each problem on a line
 *     of its own that starts with file:line:col (the last may count those that
 *     did not fit);
 *   - a loaded file's hooks each have an event, a script and a position, and
 *     their options are valid JSON objects (the sandbox decodes them into
 *     ctx.options at every run; text that does not parse fails the hook);
 *   - limits stay in their documented ranges.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "json/json.h"

#define NAME WIXR_SOURCE_DIR "/config/wixr.yaml"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    /* ${...} references: one variable is set, the others are not. */
    setenv("WIXR_FUZZ_VALUE", "fuzz-value", 1);
    unsetenv("WIX_API_KEY");
    unsetenv("WIX_ACCOUNT_ID");
    unsetenv("WIX_BASE_URL");
    unsetenv("WIXR_CONFIG");
    return 0;
}

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_yaml_config: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    wixr_config c;
    char err[8192];
    err[0] = '\0';
    if (config_load_string(&c, NAME, (const char *)data, size, err, sizeof err) < 0) {
        if (!err[0] || !memchr(err, '\0', sizeof err))
            fail("a refused configuration without a message", NULL);
        /* Each problem is one line that says where: NAME:LINE:COL: message (or, for a
         * script's ---@option line, SCRIPT.lua:LINE:COL: message). */
        for (const char *line = err; *line;) {
            size_t n = strcspn(line, "\n");
            int ln, col, at = 0;
            int more = !line[n] && strstr(line, " more problem") && strstr(line, " not shown");
            size_t skip = strlen(NAME ":");
            const char *lua = strstr(line, ".lua:");
            if (lua && lua < line + n && strncmp(line, NAME ":", skip))
                skip = (size_t)(lua - line) + 5;
            else if (strncmp(line, NAME ":", skip))
                fail("a problem without file:line:col", line);
            if (!more && (sscanf(line + skip, "%d:%d: %n", &ln, &col, &at) != 2 || !at || ln < 1 || col < 1))
                fail("a problem without file:line:col", line);
            line += n + (line[n] == '\n');
        }
        return 0;
    }
    if (!c.path || !c.dir || !c.state_dir || !c.wix.base_url || !c.serve.listen)
        fail("a loaded configuration misses a default", NULL);
    for (int i = 0; i < c.nhooks; i++) {
        const hook_def *h = &c.hooks[i];
        if (!h->event || !h->script || !h->where)
            fail("a hook without event, script or position", h->where);
        if (h->limits.instructions < 1000 || h->limits.memory_mb < 1 || h->limits.wall_ms < 1)
            fail("a hook's limits are out of range", h->where);
        if (h->options_json) {
            json_doc *doc = NULL;
            json_error je;
            json_value *v = json_parse(h->options_json, strlen(h->options_json), 0, &doc, &je);
            int ok = v && v->type == JSON_OBJECT;
            json_doc_free(doc);
            if (!ok) {
                fprintf(stderr, "options of %s: %s\n", h->where, h->options_json);
                fail("a hook's options are not a JSON object", v ? "not an object" : je.msg);
            }
        }
    }
    for (int i = 0; i < c.serve.norder_key; i++)
        if (!c.serve.order_key[i])
            fail("a missing serve.order_key entry", NULL);
    config_free(&c);
    return 0;
}
