/* Unit tests of the JSON reader and writer, and of Lua <-> JSON (luajson). */
#include <lauxlib.h>
#include <lualib.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "json/json.h"
#include "json/luajson.h"

static json_value *parse(const char *s, json_doc **d, json_error *e)
{
    return json_parse(s, strlen(s), 0, d, e);
}

static void test_values(void)
{
    json_doc *d;
    json_error e;
    json_value *v = parse(" {\"a\": [1, -2.5e3, true, false, null, \"x\\u00e9\\ud83d\\ude00\"], \"b\": {}} ", &d, &e);
    CHECK(v && v->type == JSON_OBJECT);
    json_value *a = json_get(v, "a");
    CHECK(a && a->type == JSON_ARRAY && a->u.kids.n == 6);
    json_value *k = a->u.kids.head;
    CHECK(k->type == JSON_NUMBER && k->u.number == 1 && k->is_int);
    k = k->next;
    CHECK(k->type == JSON_NUMBER && k->u.number == -2500 && !k->is_int);
    k = k->next;
    CHECK(k->type == JSON_BOOL && k->u.boolean);
    k = k->next->next->next;
    CHECK_STR(k->u.str.s, "x\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(json_get(v, "b")->type == JSON_OBJECT);
    CHECK(json_get(v, "missing") == NULL);
    json_doc_free(d);
}

static void test_errors(void)
{
    static const struct {
        const char *text;
        int line, col;
        const char *msg;
    } cases[] = {
        {"{\"a\": }", 1, 7, "unexpected character"},
        {"[1, 2", 1, 6, "',' or ']' expected in array"},
        {"{\"a\" 1}", 1, 6, "':' expected after object key"},
        {"\"abc", 1, 1, "unterminated string"},
        {"01", 1, 2, "trailing characters after the JSON value"},
        {"{}\n  x", 2, 3, "trailing characters after the JSON value"},
        {"\"\\ud800\"", 1, 8, "unpaired surrogate in \\u escape"},
        {"\"\xff\"", 1, 2, "invalid UTF-8 in string"},
        {"\"a\nb\"", 1, 3, "control character in string"},
        {"1.", 1, 3, "bad number: digit expected after '.'"},
        {"{\"n\": 1e999}", 1, 7, "number out of range"},
        {"[-1e400]", 1, 2, "number out of range"},
        {"", 1, 1, "unexpected end of input"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_doc *d;
        json_error e;
        CHECK(parse(cases[i].text, &d, &e) == NULL);
        CHECK_INT(e.line, cases[i].line);
        CHECK_INT(e.col, cases[i].col);
        CHECK_STR(e.msg, cases[i].msg);
        json_doc_free(d);
    }
}

static void test_depth(void)
{
    char deep[2100];
    for (int i = 0; i < 1000; i++)
        deep[i] = '[';
    for (int i = 0; i < 1000; i++)
        deep[1000 + i] = ']';
    deep[2000] = '\0';
    json_doc *d;
    json_error e;
    CHECK(json_parse(deep, 2000, 64, &d, &e) == NULL);
    CHECK_STR(e.msg, "nesting too deep");
    json_doc_free(d);
    CHECK(json_parse(deep + 936, 128, 64, &d, &e) != NULL); /* exactly 64 deep is fine */
    json_doc_free(d);
}

static void test_writer_roundtrip(void)
{
    const char *src = "{\"s\":\"q\\\"\\\\\\n\\u0001\",\"n\":[1,2.5,-3],\"o\":{\"t\":true,\"z\":null}}";
    json_doc *d;
    json_error e;
    json_value *v = parse(src, &d, &e);
    CHECK(v != NULL);
    buf_t b;
    buf_init(&b, 0);
    json_writer w;
    jw_init(&w, &b);
    jw_value(&w, v);
    CHECK_STR(buf_cstr(&b), src);
    buf_free(&b);
    json_doc_free(d);

    buf_init(&b, 0);
    jw_init(&w, &b);
    jw_obj(&w);
    jw_kstr(&w, "a", "x");
    jw_kstr(&w, "skipped", NULL);
    jw_key(&w, "list");
    jw_arr(&w);
    jw_int(&w, 1);
    jw_obj(&w);
    jw_obj_end(&w);
    jw_arr_end(&w);
    jw_obj_end(&w);
    CHECK_STR(buf_cstr(&b), "{\"a\":\"x\",\"list\":[1,{}]}");
    buf_free(&b);
}

static void test_quote_long(void)
{
    /* the long-string path gives what the short one gives */
    char big[6000];
    for (size_t i = 0; i < sizeof big - 1; i++)
        big[i] = "ab\"\\\n\x01c"[i % 7];
    big[sizeof big - 1] = '\0';
    buf_t a, b;
    buf_init(&a, 0);
    buf_init(&b, 0);
    json_quote(&a, big, strlen(big));
    for (size_t i = 0; i < strlen(big); i += 1000) {
        size_t n = strlen(big) - i < 1000 ? strlen(big) - i : 1000;
        buf_t part;
        buf_init(&part, 0);
        json_quote(&part, big + i, n);
        buf_add(&b, part.data + (i ? 1 : 0), part.len - (i ? 1 : 0) - (i + n < strlen(big) ? 1 : 0));
        buf_free(&part);
    }
    CHECK_INT(a.len, b.len);
    CHECK(a.len == b.len && memcmp(a.data, b.data, a.len) == 0);
    json_doc *d;
    json_value *v = json_parse(a.data, a.len, 0, &d, NULL);
    CHECK(v && v->type == JSON_STRING && v->u.str.len == strlen(big) && !memcmp(v->u.str.s, big, strlen(big)));
    json_doc_free(d);
    buf_free(&a);
    buf_free(&b);
}

/* Strings are scanned 8 bytes at a time: a byte that needs care (a quote, a
 * backslash, a control character, UTF-8) at every position of strings of
 * every length up to 40, against the expected escaping, both ways. */
static void test_quote_word_boundaries(void)
{
    static const char *const specials[] = {"\"", "\\", "\n", "\x01", "\xc3\xa9", "\x7f"};
    static const char *const escaped[] = {"\\\"", "\\\\", "\\n", "\\u0001", "\xc3\xa9", "\x7f"};
    int bad = 0;
    for (size_t k = 0; k < sizeof specials / sizeof *specials; k++) {
        for (size_t len = 0; len <= 40; len++) {
            for (size_t at = 0; at <= len; at++) {
                char in[64], want[80];
                size_t sl = strlen(specials[k]), n = 0, w = 0;
                want[w++] = '"';
                for (size_t i = 0; i < len; i++) {
                    if (i == at) {
                        memcpy(in + n, specials[k], sl);
                        n += sl;
                        memcpy(want + w, escaped[k], strlen(escaped[k]));
                        w += strlen(escaped[k]);
                    }
                    in[n++] = (char)('a' + i % 26);
                    want[w++] = (char)('a' + i % 26);
                }
                if (at == len) {
                    memcpy(in + n, specials[k], sl);
                    n += sl;
                    memcpy(want + w, escaped[k], strlen(escaped[k]));
                    w += strlen(escaped[k]);
                }
                want[w++] = '"';
                buf_t b;
                buf_init(&b, 0);
                json_quote(&b, in, n);
                if (b.len != w || memcmp(b.data, want, w)) {
                    bad++;
                } else {
                    json_doc *d;
                    json_value *v = json_parse(b.data, b.len, 0, &d, NULL);
                    if (!v || v->type != JSON_STRING || v->u.str.len != n || memcmp(v->u.str.s, in, n))
                        bad++;
                    json_doc_free(d);
                }
                buf_free(&b);
            }
        }
    }
    CHECK_INT(bad, 0);
    /* an unterminated string and a backslash at the very end are errors at any length */
    for (size_t len = 0; len < 20; len++) {
        char text[32] = "\"";
        memset(text + 1, 'x', len);
        json_doc *d;
        CHECK(json_parse(text, len + 1, 0, &d, NULL) == NULL);
        json_doc_free(d);
        text[len + 1] = '\\';
        CHECK(json_parse(text, len + 2, 0, &d, NULL) == NULL);
        json_doc_free(d);
    }
}

/* What the writer writes parses back, whatever the bytes: invalid UTF-8 (a
 * raw byte from a URL, a message cut in the middle of a character) becomes
 * U+FFFD; valid sequences stay as they are. */
static void test_quote_utf8(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\""},
        {"a\xfe", "\"a\xef\xbf\xbd\""},
        {"\xc3", "\"\xef\xbf\xbd\""},                   /* cut after the first byte of two */
        {"\xe2\x82", "\"\xef\xbf\xbd\xef\xbf\xbd\""}, /* each stray byte on its own */
        {"\xc0\xaf", "\"\xef\xbf\xbd\xef\xbf\xbd\""}, /* overlong '/' */
        {"\xed\xa0\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""}, /* a surrogate */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        buf_t b;
        buf_init(&b, 0);
        json_quote(&b, cases[i].in, strlen(cases[i].in));
        CHECK_STR(buf_cstr(&b), cases[i].out);
        json_doc *d;
        CHECK(json_parse(b.data, b.len, 0, &d, NULL) != NULL);
        json_doc_free(d);
        buf_free(&b);
    }
    /* the long-string path does the same */
    char big[5000];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = "x\xc3\xa9\xff"[i % 4];
    buf_t b;
    buf_init(&b, 0);
    json_quote(&b, big, sizeof big);
    json_doc *d;
    json_value *v = json_parse(b.data, b.len, 0, &d, NULL);
    CHECK(v && v->type == JSON_STRING && v->u.str.len == sizeof big / 4 * 6);
    CHECK(v && !memcmp(v->u.str.s, "x\xc3\xa9\xef\xbf\xbd", 6));
    json_doc_free(d);
    buf_free(&b);
}

/* Numbers beyond what a long long holds are written with an exponent (the
 * whole-number test must not convert them first: that is undefined). */
static void test_num_large(void)
{
    buf_t b;
    buf_init(&b, 0);
    json_writer w;
    jw_init(&w, &b);
    jw_arr(&w);
    jw_num(&w, 1e300);
    jw_num(&w, -9.3e18);
    jw_num(&w, 123456789012345.0);
    jw_num(&w, 0.5);
    jw_arr_end(&w);
    CHECK_STR(buf_cstr(&b), "[1.0000000000000001e+300,-9.3e+18,123456789012345,0.5]");
    buf_free(&b);
    CHECK(json_is_number("-0.5e+3", 7));
    CHECK(!json_is_number("1.", 2));
    CHECK(!json_is_number("012", 3));
    CHECK(!json_is_number("-inf", 4));
    CHECK(!json_is_number("", 0));
}

/* A list field ("products", "$in", ...) holding named fields is written as an
 * object, and the encoder leaves the Lua stack as it found it (it once left
 * the probe's key and value behind: the next lua_next got a wrong key and
 * Lua aborted the process). */
static void test_luajson_list_key_object(void)
{
    lua_State *L = luaL_newstate();
    const char *text = "{\"products\":{\"a\":1,\"b\":[]},\"$in\":{\"\":{}},\"sort\":{},\"z\":[1,2]}";
    char err[256];
    CHECK(luajson_decode(L, text, strlen(text), 0, err, sizeof err) == 0);
    int top = lua_gettop(L);
    buf_t b;
    buf_init(&b, 0);
    CHECK(luajson_encode(L, -1, &b, 0, err, sizeof err) == 0);
    CHECK_INT(lua_gettop(L), top);
    json_doc *d;
    json_value *v = json_parse(b.data, b.len, 0, &d, NULL);
    CHECK(v && v->type == JSON_OBJECT && v->u.kids.n == 4);
    CHECK(json_get(v, "products") && json_get(v, "products")->type == JSON_OBJECT);
    CHECK(json_get(json_get(v, "products"), "a") && json_get(json_get(v, "products"), "b"));
    CHECK(json_get(v, "$in") && json_get(v, "$in")->type == JSON_OBJECT);
    CHECK(json_get(v, "sort") && json_get(v, "sort")->type == JSON_ARRAY); /* empty: the wire's list */
    json_doc_free(d);
    buf_free(&b);
    lua_close(L);
}

/* An allocator with a cap, like a hook's state. */
typedef struct capped {
    size_t used, cap;
} capped;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    capped *c = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        c->used -= old;
        free(ptr);
        return NULL;
    }
    if (nsize > old && c->used + (nsize - old) > c->cap)
        return NULL;
    void *p = realloc(ptr, nsize);
    if (p)
        c->used = c->used - old + nsize;
    return p;
}

/* A document too big for the state's memory: an error, the stack as it was,
 * and the parsed document freed (it leaked when the tables raised). */
static void test_luajson_decode_out_of_memory(void)
{
    capped c = {0, 256 * 1024};
    lua_State *L = lua_newstate(capped_alloc, &c);
    buf_t b;
    buf_init(&b, 0);
    buf_addc(&b, '[');
    for (int i = 0; i < 20000; i++)
        buf_adds(&b, i ? ",{\"k\":[1,2,3]}" : "{\"k\":[1,2,3]}");
    buf_addc(&b, ']');
    char err[256] = "";
    int top = lua_gettop(L);
    CHECK(luajson_decode(L, b.data, b.len, 0, err, sizeof err) < 0);
    CHECK_INT(lua_gettop(L), top);
    CHECK_STR(err, "not enough memory");
    /* a small one still decodes in the same state */
    CHECK(luajson_decode(L, "{\"a\":[1,null]}", 14, 0, err, sizeof err) == 0);
    CHECK(lua_istable(L, -1));
    buf_free(&b);
    lua_close(L);
}

static void test_buf_limit(void)
{
    buf_t b;
    buf_init(&b, 8);
    CHECK(buf_adds(&b, "12345678") == 0);
    CHECK(buf_addc(&b, '9') < 0);
    CHECK(b.failed);
    CHECK_INT(b.len, 8);
    buf_free(&b);
}

/* json_utf8_valid: what wixr serve refuses in an event id. */
static void test_utf8_valid(void)
{
    CHECK(json_utf8_valid("", 0));
    CHECK(json_utf8_valid("plain ascii", 11));
    CHECK(json_utf8_valid("x\xc3\xa9\xf0\x9f\x98\x80", 8));
    CHECK(json_utf8_valid("\xef\xbf\xbd", 3));
    CHECK(!json_utf8_valid("\xff", 1));                  /* never a UTF-8 byte */
    CHECK(!json_utf8_valid("a\xc3", 2));                 /* cut short */
    CHECK(!json_utf8_valid("\xc3\x28", 2));              /* bad continuation */
    CHECK(!json_utf8_valid("\xc0\xaf", 2));              /* overlong '/' */
    CHECK(!json_utf8_valid("\xed\xa0\x80", 3));          /* a surrogate */
    CHECK(!json_utf8_valid("\xf4\x90\x80\x80", 4));      /* past U+10FFFF */
    CHECK(!json_utf8_valid("\x80", 1));                  /* a lone continuation */
    CHECK(json_utf8_valid("a\0b", 3));                   /* NUL is UTF-8; callers refuse it themselves */
}

/* Whatever bytes a string holds, the writer's output is one JSON text that
 * parses back: quotes, backslashes and control characters escaped, bytes
 * that are not UTF-8 replaced by U+FFFD (short and long strings alike). */
static void test_writer_hostile_strings(void)
{
    static const char *const hostile[] = {
        "x\",\"forged\":\"1", "back\\slash\\", "ctl\x01\x02\x1f\x7f", "nl\nline\r\t", "bad\xff\xfe utf8\xc3",
        "\xed\xa0\x80 surrogate", "\xc0\xaf overlong", "nul\0after",
    };
    for (size_t i = 0; i < sizeof hostile / sizeof hostile[0]; i++) {
        for (int rep = 1; rep <= 2000; rep *= 2000) { /* once, and 2000 times (over the long-string path) */
            buf_t s, b;
            buf_init(&s, 0);
            buf_init(&b, 0);
            size_t n = strlen(hostile[i]) + (i == 7 ? 6 : 0);
            for (int r = 0; r < rep; r++)
                buf_add(&s, hostile[i], n);
            json_writer w;
            jw_init(&w, &b);
            jw_obj(&w);
            jw_key(&w, "k\"ey");
            jw_strn(&w, s.data, s.len);
            jw_obj_end(&w);
            CHECK(!strchr(buf_cstr(&b), '\n'));
            CHECK(json_utf8_valid(b.data, b.len));
            json_doc *d;
            json_error e;
            json_value *v = json_parse(b.data, b.len, 0, &d, &e);
            CHECK(v && v->type == JSON_OBJECT && v->u.kids.n == 1);
            json_value *k = v ? json_get(v, "k\"ey") : NULL;
            CHECK(k && k->type == JSON_STRING && json_utf8_valid(k->u.str.s, k->u.str.len));
            if (i == 0 && rep == 1)
                CHECK(k && k->u.str.len == n && !memcmp(k->u.str.s, hostile[0], n));
            json_doc_free(d);
            buf_free(&s);
            buf_free(&b);
        }
    }
}

int main(void)
{
    test_values();
    test_errors();
    test_depth();
    test_writer_roundtrip();
    test_quote_long();
    test_quote_word_boundaries();
    test_quote_utf8();
    test_num_large();
    test_luajson_list_key_object();
    test_luajson_decode_out_of_memory();
    test_buf_limit();
    test_utf8_valid();
    test_writer_hostile_strings();
    return check_report();
}
