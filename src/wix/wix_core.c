/*
 * wix_core.c -- the C half of the wix Lua module ("wix.core"): the call that
 * puts a request on the wire and yields the calling task until its answer
 * (retries included) is in, task primitives for wix.all/wix.spawn, the JSON
 * conversions with the naming rule, and small helpers. lua/wix.lua builds
 * the public API on top of it.
 */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../json/json.h"
#include "../json/luajson.h"
#include "../runtime/host.h"
#include "../util/isotime.h"
#include "client.h"
#include "wix_core.h"

static wixr_host *need_task(lua_State *L, const char *what)
{
    wixr_host *h = host_of(L);
    sched_task *t = sched_current(h->sched);
    if (!t || sched_task_thread(t) != L)
        luaL_error(L, "%s must be called from a script run by wixr (inside its scheduler)", what);
    /* Checked before anything is armed: a wait that cannot yield would leave
     * its timer or answer pointed at the task, to wake it at the wrong time. */
    if (!lua_isyieldable(L))
        luaL_error(L, "%s cannot wait here: it was called from a function that cannot yield (a callback of "
                      "string.gsub or table.sort, a metamethod)", what);
    return h;
}

/* ---- which operation a request is (for hooks' allow lists) ---- */

static unsigned op_of(const char *method, const char *path, int *mutating)
{
    static const char pkgs[] = "/resellers/v1/packages";
    static const char inst[] = "/resellers/v1/packages/product-instances/";
    *mutating = strcmp(method, "GET") != 0;
    if (!strcmp(path, "/resellers/v2/packages") || !strcmp(path, pkgs))
        return WIX_OP_CREATE;
    if (!strcmp(path, "/resellers/v1/packages/query")) {
        *mutating = 0;
        return WIX_OP_QUERY;
    }
    if (!strncmp(path, inst, sizeof inst - 1)) {
        const char *rest = path + sizeof inst - 1;
        const char *slash = strchr(rest, '/');
        if (!strcmp(method, "DELETE"))
            return WIX_OP_CANCEL_INSTANCE;
        if (!slash)
            return WIX_OP_ADJUST;
        return !strcmp(slash + 1, "unassign") ? WIX_OP_UNASSIGN : WIX_OP_ASSIGN;
    }
    if (!strncmp(path, "/resellers/v1/packages/update/", 30))
        return WIX_OP_SET_EXTERNAL_ID;
    if (!strcmp(method, "DELETE"))
        return WIX_OP_CANCEL_PACKAGE;
    return WIX_OP_GET;
}

void wix_script_where(lua_State *L, char *out, size_t n)
{
    lua_Debug ar;
    out[0] = '\0';
    for (int level = 1; lua_getstack(L, level, &ar); level++) {
        if (lua_getinfo(L, "Sl", &ar) && ar.source[0] == '@' && ar.currentline > 0) {
            snprintf(out, n, "%s:%d: ", ar.short_src, ar.currentline);
            return;
        }
    }
}

/* Inside a hook run: raises unless the hook may make this call. */
static void check_permit(lua_State *L, const char *method, const char *path)
{
    int mutating;
    unsigned op = op_of(method, path, &mutating);
    char err[512], where[300];
    if (host_permit(L, op, mutating, err, sizeof err) < 0) {
        wix_script_where(L, where, sizeof where);
        lua_pushfstring(L, "%s%s", where, err);
        lua_error(L);
    }
}

/* ---- request ---- */

typedef struct lreq {
    wixr_host *h;
    unsigned long task_id;        /* looked up again on completion: the task may be gone */
    int in_start, done;
    long status;
    char *body;
    size_t body_len;
    char rid[64];
    int attempts;
    char *error;
    json_doc *doc;                /* the parsed body, while the continuation pushes it */
} lreq;

static void lreq_free(void *p)
{
    lreq *q = p;
    free(q->body);
    free(q->error);
    json_doc_free(q->doc);
    free(q);
}

/* The answer is in (from a curl completion, or at once from the sandbox
 * transport). Outside any protected call: it only copies the answer into C
 * memory the task will own, and makes the task ready. */
static void lreq_done(void *arg, const wix_result *r)
{
    lreq *q = arg;
    q->status = r->status;
    q->body = malloc(r->body_len + 1);
    if (q->body) {
        memcpy(q->body, r->body, r->body_len);
        q->body[r->body_len] = '\0';
        q->body_len = r->body_len;
    }
    snprintf(q->rid, sizeof q->rid, "%s", r->request_id);
    q->attempts = r->attempts;
    q->error = r->error ? strdup(r->error) : NULL;
    if (!q->body && !q->error)
        q->error = strdup("out of memory keeping the answer");
    if (q->in_start) {
        q->done = 1;
        return;
    }
    sched_task *t = sched_task_by_id(q->h->sched, q->task_id);
    if (!t) {
        lreq_free(q);
        return;
    }
    sched_set_payload(t, q, lreq_free);
    sched_ready(q->h->sched, t, 0);
}

/* The continuation, inside the task's resume: the answer (the task's payload)
 * as Lua values -> status, body table|nil, request id, attempts, transport
 * error|nil. Building the body may raise a memory error (the hook's cap):
 * the task then ends with it, and the payload, which owns every C buffer
 * here, is freed with the task. */
static int request_finish(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    wixr_host *h = host_of(L);
    lreq *q = sched_payload(h->sched);
    if (!q)
        return luaL_error(L, "wix: the answer to a call was lost");
    luaL_checkstack(L, 6, "wix answer");
    const json_value *v = NULL;
    char bad[200] = "";
    if (q->body_len && !host_json_fits(L, q->body, q->body_len)) {
        /* the answer's document would not fit in the hook's free memory: a
         * memory failure of the run, before anything outside the cap is built */
        lua_pushliteral(L, LUAJSON_NO_MEMORY);
        return lua_error(L);
    }
    if (q->body_len) {
        json_error jerr;
        v = json_parse(q->body, q->body_len, LUAJSON_MAX_DEPTH, &q->doc, &jerr);
        if (!v)
            snprintf(bad, sizeof bad, "the answer is not valid JSON: invalid JSON at line %d, column %d: %s",
                     jerr.line, jerr.col, jerr.msg);
    }
    lua_pushinteger(L, q->status);
    if (v)
        luajson_push(L, v, 1);
    else
        lua_pushnil(L);
    lua_pushstring(L, q->rid);
    lua_pushinteger(L, q->attempts);
    if (q->error)
        lua_pushstring(L, q->error);
    else if (bad[0] && q->status >= 200 && q->status < 300)
        lua_pushstring(L, bad);
    else
        lua_pushnil(L);
    sched_drop_payload(h->sched);
    return 5;
}

/* request(method, path, body|nil, account_id|nil, idempotency_key|nil)
 *   -> status, body table|nil, request id, attempts, transport error|nil */
static int l_request(lua_State *L)
{
    wixr_host *h = need_task(L, "a wix API call");
    const char *method = luaL_checkstring(L, 1);
    const char *path = luaL_checkstring(L, 2);
    const char *account = luaL_optstring(L, 4, NULL);
    const char *idem = luaL_optstring(L, 5, NULL);
    lua_settop(L, 5);
    check_permit(L, method, path);
    /* Dry-run is enforced here too, whatever the Lua side was talked into. */
    if (h->dry_run && strcmp(method, "GET") != 0 && strcmp(path, "/resellers/v1/packages/query") != 0)
        return luaL_error(L, "dry run: a mutating call (%s %s) may not be sent", method, path);
    buf_t body;
    buf_init(&body, 16 * 1024 * 1024);
    int has_body = !lua_isnil(L, 3);
    if (has_body) {
        char err[256];
        if (luajson_encode(L, 3, &body, 1, err, sizeof err) < 0) {
            buf_free(&body);
            return luajson_raise(L, "request body: ", err);
        }
    }
    lreq *q = calloc(1, sizeof *q);
    if (!q) {
        buf_free(&body);
        return luaL_error(L, "out of memory");
    }
    q->h = h;
    q->task_id = sched_task_id(sched_current(h->sched));
    q->in_start = 1;
    wix_client_call(h->client, method, path, has_body ? buf_cstr(&body) : NULL, body.len, account, idem, lreq_done, q);
    buf_free(&body);
    if (q->done) { /* answered at once (the sandbox transport): the same path as a later answer */
        sched_set_payload(sched_current(h->sched), q, lreq_free);
        return request_finish(L, LUA_OK, 0);
    }
    q->in_start = 0;
    return lua_yieldk(L, 0, 0, request_finish);
}

/* ---- tasks ---- */

static void spawn_done(sched_task *t, lua_State *co, const task_outcome *o, void *arg)
{
    (void)t;
    (void)arg;
    if (o->kind == OUTCOME_OK)
        return;
    if (host_task_failed(co, o))
        return; /* a hook run's task: the run ended, or its log line names the run */
    /* Nobody waits for this task (a waited one reports to its waiter): say so in the log. */
    const char *fields[] = {"error", o->text, NULL};
    host_log("warn", "a task started with wix.spawn failed", fields);
}

static int l_spawn(lua_State *L)
{
    wixr_host *h = host_of(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    int nargs = lua_gettop(L) - 1;
    sched_task *cur = sched_current(h->sched);
    /* A hook's tasks belong to a run (its limits, permissions and end); while
     * the script loads there is none, and a task started then would outlive it. */
    if (ctx_of(L)->hook && !cur)
        return luaL_error(L, "wix.spawn: tasks can only be started by a run of the handler, not while the "
                             "script loads");
    unsigned long group = cur ? sched_task_group(cur) : 0;
    sched_task *t = sched_spawn_in(h->sched, L, nargs, group, 0, spawn_done, NULL);
    if (!t)
        return luaL_error(L, "out of memory");
    /* A hook run's limits and permissions follow it into the tasks it starts. */
    host_adopt_thread(L, sched_task_thread(t));
    lua_pushinteger(L, (lua_Integer)sched_task_id(t));
    return 1;
}

static int l_current(lua_State *L)
{
    wixr_host *h = host_of(L);
    sched_task *t = sched_current(h->sched);
    if (t)
        lua_pushinteger(L, (lua_Integer)sched_task_id(t));
    else
        lua_pushnil(L);
    return 1;
}

static int l_suspend(lua_State *L)
{
    wixr_host *h = need_task(L, "wix.core.suspend");
    sched_task_set_parked(sched_current(h->sched), 1);
    return lua_yield(L, 0);
}

static int l_wake(lua_State *L)
{
    wixr_host *h = host_of(L);
    lua_Integer id = luaL_checkinteger(L, 1);
    sched_task *t = sched_task_by_id(h->sched, (unsigned long)id);
    if (!t || !sched_task_parked(t)) {
        lua_pushboolean(L, 0);
        return 1;
    }
    int n = lua_gettop(L) - 1;
    lua_State *co = sched_task_thread(t);
    if (!lua_checkstack(co, n + 1))
        return luaL_error(L, "too many values to wake a task with");
    lua_xmove(L, co, n);
    sched_task_set_parked(t, 0);
    sched_ready(h->sched, t, n);
    lua_pushboolean(L, 1);
    return 1;
}

typedef struct sleeper {
    sched_t *s;
    unsigned long task_id;
} sleeper;

static void sleep_over(void *arg)
{
    sleeper *z = arg;
    sched_task *t = sched_task_by_id(z->s, z->task_id);
    if (t)
        sched_ready(z->s, t, 0);
    free(z);
}

static int l_sleep(lua_State *L)
{
    wixr_host *h = need_task(L, "wix.sleep");
    lua_Number ms = luaL_checknumber(L, 1);
    sleeper *z = malloc(sizeof *z);
    if (!z)
        return luaL_error(L, "out of memory");
    z->s = h->sched;
    sched_task *cur = sched_current(h->sched);
    z->task_id = sched_task_id(cur);
    /* +1: the clock counts whole ms, so this waits at least ms; math.huge or
     * 1e300 is a very long time (a double that large cast to an integer is
     * undefined: it came out negative, a sleep of nothing) */
    long long wait = ms > 0 ? (ms < 1e12 ? (long long)ms + 1 : (long long)1e12) : 0;
    if (sched_timer_owning(h->sched, sched_now_ms() + wait, sleep_over, z, cur) < 0) {
        free(z);
        return luaL_error(L, "out of memory");
    }
    return lua_yield(L, 0);
}

/* ---- helpers ---- */

/* uuid(): a random (v4) GUID from the host's xoshiro256** generator, seeded
 * from the kernel once: no system call per id (hook runs make several each). */
static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t rng_next(uint64_t *s)
{
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* guid(v) -> v in lower case when it is a GUID (8-4-4-4-12 hex digits), else nil */
static int l_guid(lua_State *L)
{
    size_t n;
    const char *v = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
    if (!v || n != 36) {
        lua_pushnil(L);
        return 1;
    }
    char out[36];
    int upper = 0;
    for (size_t i = 0; i < 36; i++) {
        char c = v[i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                goto no;
            out[i] = c;
        } else if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
            out[i] = c;
        } else if (c >= 'A' && c <= 'F') {
            out[i] = (char)(c + 32);
            upper = 1;
        } else {
            goto no;
        }
    }
    if (upper)
        lua_pushlstring(L, out, 36);
    else
        lua_settop(L, 1); /* already in lower case: the same string */
    return 1;
no:
    lua_pushnil(L);
    return 1;
}

static int l_uuid(lua_State *L)
{
    wixr_host *h = host_of(L);
    if (!h->rng_seeded) {
        if (getrandom(h->rng, sizeof h->rng, 0) != (ssize_t)sizeof h->rng)
            return luaL_error(L, "no randomness available");
        h->rng_seeded = 1;
    }
    unsigned char b[16];
    uint64_t a = rng_next(h->rng), c = rng_next(h->rng);
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char s[36];
    int k = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            s[k++] = '-';
        s[k++] = hex[b[i] >> 4];
        s[k++] = hex[b[i] & 15];
    }
    lua_pushlstring(L, s, 36);
    return 1;
}

/* next_key(): the idempotency key for a mutating call that was given none.
 * Inside a hook run for an event with an id it is derived (the hooks layer:
 * hooks/keys.c), so running the same event again sends the same keys;
 * elsewhere it is a fresh random GUID. */
static int l_next_key(lua_State *L)
{
    if (host_next_key(L))
        return 1;
    return l_uuid(L);
}

static int l_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    int camel = lua_toboolean(L, 2);
    int pretty = lua_toboolean(L, 3);
    buf_t b;
    char err[256];
    buf_init(&b, 64 * 1024 * 1024);
    if (luajson_encode(L, 1, &b, camel, err, sizeof err) < 0) {
        buf_free(&b);
        return luajson_raise(L, "", err);
    }
    (void)pretty;
    lua_pushlstring(L, buf_cstr(&b), b.len);
    buf_free(&b);
    return 1;
}

static int l_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[256];
    if (luajson_decode(L, s, n, lua_toboolean(L, 2), err, sizeof err) < 0)
        return luaL_error(L, "%s", err);
    return 1;
}

static int l_settings(lua_State *L)
{
    wixr_host *h = host_of(L);
    lua_createtable(L, 0, 4);
    lua_pushstring(L, config_transport_name(wix_client_transport(h->client)));
    lua_setfield(L, -2, "transport");
    if (wix_client_default_account(h->client)) {
        lua_pushstring(L, wix_client_default_account(h->client));
        lua_setfield(L, -2, "account_id");
    }
    lua_pushboolean(L, h->dry_run);
    lua_setfield(L, -2, "dry_run");
    return 1;
}

/* plan(entry): records a call that dry-run did not send. */
static int l_plan(lua_State *L)
{
    wixr_host *h = host_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_getfield(L, 1, "method");
    lua_getfield(L, 1, "path");
    check_permit(L, luaL_checkstring(L, -2), luaL_checkstring(L, -1));
    lua_pop(L, 2);
    if (host_plan(L, 1))
        return 0; /* kept by the hook run */
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->plan_ref);
    lua_pushvalue(L, 1);
    lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    return 0;
}

static int l_stats(lua_State *L)
{
    const wix_stats *s = wix_client_stats(host_of(L)->client);
    lua_createtable(L, 0, 4);
    lua_pushinteger(L, s->calls);
    lua_setfield(L, -2, "calls");
    lua_pushinteger(L, s->attempts);
    lua_setfield(L, -2, "attempts");
    lua_pushinteger(L, s->retries);
    lua_setfield(L, -2, "retries");
    lua_pushinteger(L, s->rate_waits);
    lua_setfield(L, -2, "rate_waits");
    return 1;
}

/* log(level, message, fields?) -> one JSON line on stderr */
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};

void wix_log_write(lua_State *L, int level_idx, int msg_idx, int fields_idx, const char *const *extra)
{
    int lv = luaL_checkoption(L, level_idx, "info", log_levels);
    size_t msglen;
    const char *msg = luaL_checklstring(L, msg_idx, &msglen);
    buf_t b;
    buf_init(&b, 1024 * 1024);
    char when[ISO_TIME_LEN];
    iso_format_ms(iso_now_ms(), when);
    buf_adds(&b, "{\"ts\":\"");
    buf_adds(&b, when);
    buf_adds(&b, "\",\"level\":\"");
    buf_adds(&b, log_levels[lv]);
    buf_adds(&b, "\",\"msg\":");
    if (msglen > WIX_LOG_MSG_MAX) {
        /* cut at a character's start, then say how much was left out: the
         * line stays one line of valid JSON, under the buffer's cap */
        size_t keep = WIX_LOG_MSG_MAX;
        while (keep > 0 && ((unsigned char)msg[keep] & 0xC0) == 0x80)
            keep--;
        char mark[80];
        int ml = snprintf(mark, sizeof mark, " [... %zu bytes cut]", msglen - keep);
        buf_t m;
        buf_init(&m, 0);
        buf_add(&m, msg, keep);
        buf_add(&m, mark, (size_t)ml);
        if (m.failed)
            json_quote(&b, mark + 1, (size_t)ml - 1);
        else
            json_quote(&b, m.data, m.len);
        buf_free(&m);
    } else {
        json_quote(&b, msg, msglen);
    }
    /* a line from a dry run says so: nothing it speaks of was sent */
    wixr_ctx *c = ctx_of(L);
    if (c && c->host && c->host->dry_run)
        buf_adds(&b, ",\"dry_run\":true");
    size_t at = b.len;
    char err[128];
    if (lua_istable(L, fields_idx)) {
        buf_adds(&b, ",\"fields\":");
        if (luajson_encode(L, fields_idx, &b, 0, err, sizeof err) < 0 || b.data[b.len - 1] != '}') {
            b.len = at; /* not an object: the extra fields stand alone */
            b.failed = 0;
        }
    }
    if (extra && extra[0]) {
        if (b.len > at) { /* "fields":{...} : the extra pairs join it */
            b.len--;
            if (b.data[b.len - 1] != '{')
                buf_addc(&b, ',');
        } else {
            buf_adds(&b, ",\"fields\":{");
        }
        for (int i = 0; extra[i] && extra[i + 1]; i += 2) {
            if (i)
                buf_addc(&b, ',');
            json_quote(&b, extra[i], strlen(extra[i]));
            buf_addc(&b, ':');
            json_quote(&b, extra[i + 1], strlen(extra[i + 1]));
        }
        buf_addc(&b, '}');
    } else if (b.len == at && lua_istable(L, fields_idx)) {
        buf_adds(&b, ",\"fields\":null");
    }
    buf_adds(&b, "}\n");
    if (b.failed) { /* out of memory: the line could not be made whole */
        buf_free(&b);
        fprintf(stderr, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"[log line too large or out of memory]\"}\n",
                when, log_levels[lv]);
        return;
    }
    fwrite(b.data, 1, b.len, stderr);
    buf_free(&b);
}

int wix_core_log(lua_State *L)
{
    /* Inside a hook run (a task nobody waited for failed, say) the line names the run. */
    const char *hook, *event_id;
    int in_run = host_run_names(L, &hook, &event_id);
    const char *extra[] = {"hook", hook, "event_id", event_id, NULL};
    wix_log_write(L, 1, 2, 3, in_run ? extra : NULL);
    return 0;
}

/* sandbox_admin(method, path, body_json?) -> status: the in-process emulator's
 * admin API, for the test runner (not available inside hook scripts). */
static int l_sandbox_admin(lua_State *L)
{
    wixr_ctx *c = ctx_of(L);
    if (c->hook)
        return luaL_error(L, "the emulator's admin API is not available to hook scripts");
    int st = wix_client_sandbox_admin(c->host->client, luaL_checkstring(L, 1), luaL_checkstring(L, 2),
                                      luaL_optstring(L, 3, NULL));
    lua_pushinteger(L, st);
    return 1;
}

static const luaL_Reg core_funcs[] = {
    {"sandbox_admin", l_sandbox_admin}, {"next_key", l_next_key},
    {"request", l_request}, {"spawn", l_spawn},       {"current", l_current}, {"suspend", l_suspend},
    {"wake", l_wake},       {"sleep", l_sleep},       {"guid", l_guid},       {"uuid", l_uuid},       {"encode", l_encode},
    {"decode", l_decode},   {"settings", l_settings}, {"plan", l_plan},       {"stats", l_stats},
    {"log", wix_core_log},         {NULL, NULL},
};

int luaopen_wix_core(lua_State *L)
{
    luaL_newlib(L, core_funcs);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
    luaL_newmetatable(L, LUAJSON_ARRAY_MT);
    lua_setfield(L, -2, "array_mt");
    return 1;
}
