/*
 * luajson.c -- Lua <-> JSON with the wix naming rule (see luajson.h).
 */
#include "luajson.h"

#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

size_t luajson_snake_to_camel(const char *in, size_t n, char *out, size_t outlen)
{
    size_t k = 0;
    int up = 0, seg_start = 1;
    for (size_t i = 0; i < n && k + 1 < outlen; i++) {
        char c = in[i];
        if (seg_start && c == '$') {
            /* an operator segment: copy it as it is */
            while (i < n && in[i] != '.' && k + 1 < outlen)
                out[k++] = in[i++];
            if (i < n && k + 1 < outlen)
                out[k++] = '.';
            continue;
        }
        seg_start = 0;
        if (c == '.') {
            out[k++] = c;
            up = 0;
            seg_start = 1;
        } else if (c == '_' && k > 0 && out[k - 1] != '.' && i + 1 < n && in[i + 1] != '_' && in[i + 1] != '.') {
            up = 1;
        } else {
            out[k++] = up && c >= 'a' && c <= 'z' ? (char)(c - 32) : c;
            up = 0;
        }
    }
    out[k] = '\0';
    return k;
}

size_t luajson_camel_to_snake(const char *in, size_t n, char *out, size_t outlen)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 2 < outlen; i++) {
        char c = in[i];
        if (c >= 'A' && c <= 'Z' && i > 0 && in[0] != '$') {
            out[k++] = '_';
            out[k++] = (char)(c + 32);
        } else {
            out[k++] = c;
        }
    }
    out[k] = '\0';
    return k;
}

/* ---- encode ---- */

typedef struct enc {
    lua_State *L;
    buf_t *b;
    int camel;
    int sorted;                   /* object keys in name order */
    char *err;
    size_t errlen;
    int rc;
    long long nodes;              /* values visited (a shared sub-table once per reference) */
} enc;

void (*luajson_charge)(lua_State *L, double units);

static int list_key(const char *k, size_t n)
{
    static const char *const keys[] = {"products", "sort", "fields", "fieldsets", "$in", "$hasSome", "$hasAll",
                                       "product_instances", "productInstances", NULL};
    for (const char *const *p = keys; *p; p++)
        if (strlen(*p) == n && !memcmp(*p, k, n))
            return 1;
    return 0;
}

static int encode_value(enc *e, int idx, int depth, const char *key, size_t keylen);

/* 1 when the table at idx has no entry; the stack is left as it was. */
static int table_empty(lua_State *L, int idx)
{
    lua_pushnil(L);
    if (lua_next(L, idx) == 0)
        return 1;
    lua_pop(L, 2);
    return 0;
}

static void put_key(enc *e, const char *k, size_t n)
{
    if (e->camel && memchr(k, '_', n)) {
        char tmp[256];
        if (n < sizeof tmp / 2) {
            size_t m = luajson_snake_to_camel(k, n, tmp, sizeof tmp);
            json_quote(e->b, tmp, m);
            return;
        }
    }
    json_quote(e->b, k, n);
}

/* Array if keys are exactly 1..n (n > 0). Returns n, 0 for an object, -1 for bad keys. */
static long long array_length(lua_State *L, int idx)
{
    long long n = 0, max = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1)) {
            long long k = lua_tointeger(L, -1);
            if (k < 1) {
                lua_pop(L, 1);
                return 0;
            }
            if (k > max)
                max = k;
            n++;
        } else {
            lua_pop(L, 1);
            return n ? -1 : 0; /* mixed keys */
        }
    }
    return n && n == max ? n : (n ? -1 : 0);
}

typedef struct skey {
    const char *s;
    size_t n;
    int pos;                      /* the key's stack slot; its value is the next */
} skey;

static int encode_value(enc *e, int idx, int depth, const char *key, size_t keylen);

/* "key":value, the value at stack slot vidx */
static int encode_field(enc *e, const char *k, size_t kl, int vidx, int depth)
{
    lua_State *L = e->L;
    put_key(e, k, kl);
    buf_addc(e->b, ':');
    if (e->camel && lua_type(L, vidx) == LUA_TSTRING &&
        ((kl == 10 && !memcmp(k, "field_name", 10)) || (kl == 9 && !memcmp(k, "fieldName", 9)))) {
        size_t vl;
        const char *v = lua_tolstring(L, vidx, &vl);
        char tmp[256];
        if (vl < sizeof tmp / 2)
            json_quote(e->b, tmp, luajson_snake_to_camel(v, vl, tmp, sizeof tmp));
        else
            json_quote(e->b, v, vl);
        return 0;
    }
    return encode_value(e, vidx, depth + 1, k, kl);
}

/* The fields of the table at idx in its own order (the wire: one pass). */
static int encode_fields(enc *e, int idx, int depth, const char *key, size_t keylen)
{
    lua_State *L = e->L;
    buf_addc(e->b, '{');
    int first = 1;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_pop(L, 2);
            snprintf(e->err, e->errlen, "%.*s: object keys must be strings", (int)(key ? keylen : 5),
                     key ? key : "value");
            return -1;
        }
        size_t kl;
        const char *k = lua_tolstring(L, -2, &kl);
        if (!first)
            buf_addc(e->b, ',');
        first = 0;
        if (encode_field(e, k, kl, lua_gettop(L), depth) < 0) {
            lua_pop(L, 2);
            return -1;
        }
        lua_pop(L, 1);
    }
    buf_addc(e->b, '}');
    return 0;
}

static int skey_cmp(const void *a, const void *b)
{
    const skey *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    return c ? c : (x->n > y->n) - (x->n < y->n);
}

static int encode_table(enc *e, int idx, int depth, const char *key, size_t keylen)
{
    lua_State *L = e->L;
    if (depth > LUAJSON_MAX_DEPTH) {
        snprintf(e->err, e->errlen, "table nested deeper than %d (a cycle?)", LUAJSON_MAX_DEPTH);
        return -1;
    }
    luaL_checkstack(L, 6, "luajson");
    int is_marked = 0;
    if (lua_getmetatable(L, idx)) {
        luaL_getmetatable(L, LUAJSON_ARRAY_MT);
        is_marked = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    /* Objects (the common case) have no array part: one pass, not two. */
    long long n = lua_rawlen(L, idx) > 0 || is_marked ? array_length(L, idx) : 0;
    if (n < 0) {
        snprintf(e->err, e->errlen, "%s%.*s: a table mixes list items and named fields", key ? "" : "value",
                 (int)(key ? keylen : 0), key ? key : "");
        return -1;
    }
    if (n > 0 || is_marked || (n == 0 && key && list_key(key, keylen) && lua_rawlen(L, idx) == 0 &&
                               table_empty(L, idx))) {
        buf_addc(e->b, '[');
        for (long long i = 1; i <= n; i++) {
            if (i > 1)
                buf_addc(e->b, ',');
            lua_rawgeti(L, idx, i);
            int rc = encode_value(e, lua_gettop(L), depth + 1, NULL, 0);
            lua_pop(L, 1);
            if (rc < 0)
                return -1;
        }
        buf_addc(e->b, ']');
        return 0;
    }
    /* Named fields: on the wire in the table's order; everywhere else (results,
     * logs, plans) sorted by name, so the same data is the same text. */
    if (e->camel && !e->sorted)
        return encode_fields(e, idx, depth, key, keylen);
    /* Every pair goes on the stack (k1 v1 k2 v2 ...), then the keys are
     * sorted by name: no look-up again, nothing allocated in C. */
    int base = lua_gettop(L), nkeys = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING) {
            lua_settop(L, base);
            snprintf(e->err, e->errlen, "%.*s: object keys must be strings", (int)(key ? keylen : 5),
                     key ? key : "value");
            return -1;
        }
        luaL_checkstack(L, 3, "luajson");
        lua_pushvalue(L, -2); /* the key again, for lua_next */
        nkeys++;
    }
    skey small[16], *keys = small;
    if (nkeys > 16) /* a userdata on top: owned by Lua, so a memory error leaves nothing behind */
        keys = lua_newuserdatauv(L, (size_t)nkeys * sizeof *keys, 0);
    for (int i = 0; i < nkeys; i++) {
        keys[i].pos = base + 1 + 2 * i;
        keys[i].s = lua_tolstring(L, keys[i].pos, &keys[i].n);
    }
    if (nkeys > 1)
        qsort(keys, (size_t)nkeys, sizeof *keys, skey_cmp);
    buf_addc(e->b, '{');
    int rc = 0;
    for (int i = 0; i < nkeys && rc == 0; i++) {
        if (i)
            buf_addc(e->b, ',');
        rc = encode_field(e, keys[i].s, keys[i].n, keys[i].pos + 1, depth);
    }
    lua_settop(L, base);
    if (rc < 0)
        return -1;
    buf_addc(e->b, '}');
    return 0;
}

static int encode_value(enc *e, int idx, int depth, const char *key, size_t keylen)
{
    lua_State *L = e->L;
    /* Stop at the first failure: past the buffer's cap nothing more can be
     * written, and a walk of shared sub-tables could go on for 2^depth. */
    if (e->b->failed) {
        snprintf(e->err, e->errlen, "the JSON text is too large");
        return -1;
    }
    if (++e->nodes % LUAJSON_CHARGE_EVERY == 0 && luajson_charge)
        luajson_charge(L, LUAJSON_CHARGE_EVERY); /* raises once a limit has struck */
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        buf_adds(e->b, "null");
        return 0;
    case LUA_TBOOLEAN:
        buf_adds(e->b, lua_toboolean(L, idx) ? "true" : "false");
        return 0;
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx)) {
            buf_printf(e->b, "%lld", (long long)lua_tointeger(L, idx));
        } else {
            double d = lua_tonumber(L, idx);
            if (!isfinite(d)) {
                snprintf(e->err, e->errlen, "%.*s: %s cannot be sent as JSON", (int)(key ? keylen : 5),
                         key ? key : "value", isnan(d) ? "NaN" : "infinity");
                return -1;
            }
            buf_printf(e->b, "%.17g", d);
        }
        return 0;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        json_quote(e->b, s, n);
        return 0;
    }
    case LUA_TTABLE:
        return encode_table(e, idx, depth, key, keylen);
    case LUA_TLIGHTUSERDATA:
        if (lua_touserdata(L, idx) == NULL) {
            buf_adds(e->b, "null");
            return 0;
        }
        /* fallthrough */
    default:
        snprintf(e->err, e->errlen, "%.*s: a %s cannot be sent as JSON", (int)(key ? keylen : 5), key ? key : "value",
                 luaL_typename(L, idx));
        return -1;
    }
}

int luajson_raise(lua_State *L, const char *what, const char *err)
{
    if (!strcmp(err, LUAJSON_NO_MEMORY)) {
        lua_pushliteral(L, LUAJSON_NO_MEMORY);
        return lua_error(L);
    }
    return luaL_error(L, "%s%s", what, err);
}

static int encode_protected(lua_State *L)
{
    enc *e = lua_touserdata(L, 2);
    e->L = L;
    e->rc = encode_value(e, 1, 0, NULL, 0);
    return 0;
}

int luajson_encode(lua_State *L, int idx, buf_t *b, int camel, char *err, size_t errlen)
{
    /* the wire form keeps the table's order unless sorting is asked for; every other form is sorted */
    enc e = {L, b, camel & LUAJSON_CAMEL, !(camel & LUAJSON_CAMEL) || (camel & LUAJSON_SORTED), err, errlen, -1, 0};
    /* In a protected call of its own: a memory error (a hook's cap) or a
     * stack overflow while encoding comes back as -1, so the caller frees
     * its buffer instead of being unwound past it. */
    idx = lua_absindex(L, idx);
    if (!lua_checkstack(L, 3)) {
        snprintf(err, errlen, "stack overflow");
        return -1;
    }
    lua_pushcfunction(L, encode_protected);
    lua_pushvalue(L, idx);
    lua_pushlightuserdata(L, &e);
    int st = lua_pcall(L, 2, 0, 0);
    if (st != LUA_OK) {
        snprintf(err, errlen, "%s", st == LUA_ERRMEM ? LUAJSON_NO_MEMORY
                                    : lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error while encoding");
        lua_pop(L, 1);
        return -1;
    }
    if (e.rc < 0)
        return -1;
    if (b->failed) {
        snprintf(err, errlen, "the JSON text is too large");
        return -1;
    }
    return 0;
}

/* ---- decode ---- */

/* The wire's key names come back in every answer: the snake_case name of
 * each is kept, per Lua state, in a small direct-mapped cache (the wire name
 * in C, the Lua string in a table both owned by the registry), so a key costs
 * a hash and a compare, not a conversion and an interning. */
#define KEYCACHE_SLOTS 128
#define KEYCACHE_MAXLEN 32
#define KEYCACHE_REG "wix.luajson.keys"

typedef struct keycache {
    unsigned char len[KEYCACHE_SLOTS]; /* 0: empty */
    char key[KEYCACHE_SLOTS][KEYCACHE_MAXLEN];
} keycache;

typedef struct pusher {
    lua_State *L;
    int snake;
    keycache *kc;                 /* NULL: no cache */
    int names;                    /* stack slot of the cache's strings (slot i at i + 1) */
} pusher;

/* Pushes the key cache's strings table and returns the cache (made on first
 * use; may raise a memory error, as any push here). */
static keycache *keycache_push(lua_State *L)
{
    if (lua_getfield(L, LUA_REGISTRYINDEX, KEYCACHE_REG) == LUA_TUSERDATA) {
        keycache *kc = lua_touserdata(L, -1);
        lua_getiuservalue(L, -1, 1);
        lua_remove(L, -2);
        return kc;
    }
    lua_pop(L, 1);
    keycache *kc = lua_newuserdatauv(L, sizeof *kc, 1);
    memset(kc->len, 0, sizeof kc->len);
    lua_createtable(L, KEYCACHE_SLOTS, 0);
    for (int i = 1; i <= KEYCACHE_SLOTS; i++) { /* the array part in full: a later store never grows it */
        lua_pushboolean(L, 0);
        lua_rawseti(L, -2, i);
    }
    lua_pushvalue(L, -1);
    lua_setiuservalue(L, -3, 1);
    lua_insert(L, -2);
    lua_setfield(L, LUA_REGISTRYINDEX, KEYCACHE_REG);
    return kc;
}

static void push_converted_key(lua_State *L, const char *k, size_t n, int snake)
{
    char tmp[256];
    if (snake && n < sizeof tmp / 2) {
        size_t m = luajson_camel_to_snake(k, n, tmp, sizeof tmp);
        lua_pushlstring(L, tmp, m);
    } else {
        lua_pushlstring(L, k, n);
    }
}

static void push_key(const pusher *p, const char *k, size_t n)
{
    lua_State *L = p->L;
    keycache *kc = p->kc;
    if (!kc || n == 0 || n >= KEYCACHE_MAXLEN) {
        push_converted_key(L, k, n, p->snake);
        return;
    }
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)k[i]) * 16777619u;
    unsigned slot = (h ^ (h >> 15)) & (KEYCACHE_SLOTS - 1);
    if (kc->len[slot] == n && !memcmp(kc->key[slot], k, n)) {
        lua_rawgeti(L, p->names, slot + 1);
        return;
    }
    push_converted_key(L, k, n, p->snake);
    lua_pushvalue(L, -1);
    lua_rawseti(L, p->names, slot + 1);
    memcpy(kc->key[slot], k, n); /* (only once the string is stored) */
    kc->len[slot] = (unsigned char)n;
}

static void push_value(const pusher *p, const json_value *v)
{
    lua_State *L = p->L;
    switch (v->type) {
    case JSON_NULL:
        lua_pushlightuserdata(L, NULL);
        break;
    case JSON_BOOL:
        lua_pushboolean(L, v->u.boolean);
        break;
    case JSON_NUMBER:
        if (v->is_int && fabs(v->u.number) < 9007199254740992.0)
            lua_pushinteger(L, (lua_Integer)v->u.number);
        else
            lua_pushnumber(L, v->u.number);
        break;
    case JSON_STRING:
        lua_pushlstring(L, v->u.str.s, v->u.str.len);
        break;
    case JSON_ARRAY: {
        luaL_checkstack(L, 4, "luajson");
        lua_createtable(L, (int)v->u.kids.n, 0);
        if (v->u.kids.n == 0) /* an empty list stays a list when written again (not {}) */
            luaL_setmetatable(L, LUAJSON_ARRAY_MT);
        lua_Integer i = 1;
        for (json_value *k = v->u.kids.head; k; k = k->next) {
            push_value(p, k);
            lua_rawseti(L, -2, i++);
        }
        break;
    }
    case JSON_OBJECT:
        luaL_checkstack(L, 4, "luajson");
        lua_createtable(L, 0, (int)v->u.kids.n);
        for (json_value *k = v->u.kids.head; k; k = k->next) {
            if (k->type == JSON_NULL)
                continue;
            push_key(p, k->key, k->keylen);
            push_value(p, k);
            lua_rawset(L, -3);
        }
        break;
    }
}

/* Pushes v (with the key cache when converting names; the cache's table is
 * taken off the stack again). */
static void push_root(lua_State *L, const json_value *v, int snake)
{
    luaL_checkstack(L, 6, "luajson");
    pusher p = {L, snake, NULL, 0};
    if (snake && (v->type == JSON_OBJECT || v->type == JSON_ARRAY)) {
        p.kc = keycache_push(L);
        p.names = lua_gettop(L);
    }
    push_value(&p, v);
    if (p.kc)
        lua_remove(L, p.names);
}

void luajson_push(lua_State *L, const json_value *v, int snake)
{
    push_root(L, v, snake);
}

static int push_protected(lua_State *L)
{
    const json_value *v = lua_touserdata(L, 1);
    int snake = lua_toboolean(L, 2);
    lua_settop(L, 0);
    push_root(L, v, snake);
    return 1;
}

int luajson_decode(lua_State *L, const char *text, size_t len, int snake, char *err, size_t errlen)
{
    json_doc *doc = NULL;
    json_error jerr;
    json_value *v = json_parse(text, len, LUAJSON_MAX_DEPTH, &doc, &jerr);
    if (!v) {
        snprintf(err, errlen, "invalid JSON at line %d, column %d: %s", jerr.line, jerr.col, jerr.msg);
        json_doc_free(doc);
        return -1;
    }
    /* Building the tables may raise (a memory limit): in a protected call, so
     * the document is freed either way. None of the three pushes allocates. */
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "stack overflow");
        json_doc_free(doc);
        return -1;
    }
    lua_pushcfunction(L, push_protected);
    lua_pushlightuserdata(L, v);
    lua_pushboolean(L, snake);
    int rc = lua_pcall(L, 2, 1, 0);
    json_doc_free(doc);
    if (rc != LUA_OK) {
        snprintf(err, errlen, "%s", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "error while decoding");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
