/*
 * json.c -- strict JSON reader into an arena DOM, and a comma-tracking writer.
 */
#include "json.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- arena ---- */

typedef struct chunk {
    struct chunk *next;
    size_t used, cap;
    max_align_t data[];
} chunk;

struct json_doc {
    chunk *head;
};

static void *arena_alloc(json_doc *d, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    chunk *c = d->head;
    if (!c || c->cap - c->used < n) {
        size_t cap = n > 4096 ? n : 4096;
        c = malloc(sizeof(chunk) + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        c->next = d->head;
        d->head = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

void json_doc_free(json_doc *doc)
{
    if (!doc)
        return;
    chunk *c = doc->head;
    while (c) {
        chunk *n = c->next;
        free(c);
        c = n;
    }
    free(doc);
}

/* ---- reader ---- */

typedef struct parser {
    const char *p, *start, *end;
    json_doc *doc;
    int depth, max_depth;
    json_error *err;
    int failed;
} parser;

static void fail(parser *ps, const char *at, const char *msg)
{
    if (ps->failed)
        return;
    ps->failed = 1;
    if (!ps->err)
        return;
    if (at > ps->end)
        at = ps->end;
    ps->err->offset = (size_t)(at - ps->start);
    int line = 1, col = 1;
    for (const char *q = ps->start; q < at; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    ps->err->line = line;
    ps->err->col = col;
    snprintf(ps->err->msg, sizeof ps->err->msg, "%s", msg);
}

static void skip_ws(parser *ps)
{
    while (ps->p < ps->end && (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r'))
        ps->p++;
}

static json_value *new_node(parser *ps, json_type t)
{
    json_value *v = arena_alloc(ps->doc, sizeof *v);
    if (!v) {
        fail(ps, ps->p, "out of memory");
        return NULL;
    }
    memset(v, 0, sizeof *v);
    v->type = t;
    return v;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static int read_hex4(parser *ps, const char *q, unsigned *out)
{
    if (ps->end - q < 4) {
        fail(ps, q, "truncated \\u escape");
        return -1;
    }
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hexval((unsigned char)q[i]);
        if (h < 0) {
            fail(ps, q + i, "bad hex digit in \\u escape");
            return -1;
        }
        v = v * 16 + (unsigned)h;
    }
    *out = v;
    return 0;
}

static size_t put_utf8(char *o, unsigned cp)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Length of a valid UTF-8 sequence at q, or 0. */
/* Word-at-a-time scans (8 bytes per step). In each, a byte's high bit in
 * the mask is set where the byte matches; false matches occur only above a
 * true one, and either way the scan stops to look byte by byte. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static uint64_t zero_bytes(uint64_t v) { return (v - ONES) & ~v; }

/* Length of the run at p of printable ASCII other than '"' and '\\': bytes
 * a JSON string holds as they are, in both directions. */
static size_t plain_run(const unsigned char *p, const unsigned char *end)
{
    const unsigned char *q = p;
    while (end - q >= 8) {
        uint64_t v;
        memcpy(&v, q, 8);
        uint64_t special = (((v - 0x20 * ONES) & ~v) | zero_bytes(v ^ (0x22 * ONES)) | zero_bytes(v ^ (0x5C * ONES)) | v) & HIGHS;
        if (special)
            return (size_t)(q - p) + (size_t)__builtin_ctzll(special) / 8; /* the lowest match is a true one */
        q += 8;
    }
    while (q < end && (unsigned)(*q - 0x20) < 0x60 && *q != '"' && *q != '\\')
        q++;
    return (size_t)(q - p);
}

/* Length of the run at p without '"' or '\\'. */
static size_t quote_free_run(const unsigned char *p, const unsigned char *end)
{
    const unsigned char *q = p;
    while (end - q >= 8) {
        uint64_t v;
        memcpy(&v, q, 8);
        uint64_t special = (zero_bytes(v ^ (0x22 * ONES)) | zero_bytes(v ^ (0x5C * ONES))) & HIGHS;
        if (special)
            return (size_t)(q - p) + (size_t)__builtin_ctzll(special) / 8;
        q += 8;
    }
    while (q < end && *q != '"' && *q != '\\')
        q++;
    return (size_t)(q - p);
}

static size_t utf8_len(const unsigned char *q, const unsigned char *end)
{
    unsigned c = q[0];
    size_t n;
    unsigned min;
    if (c < 0x80)
        return 1;
    if ((c & 0xE0) == 0xC0) {
        n = 2;
        min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
        n = 3;
        min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - q) < n)
        return 0;
    unsigned cp = c & (0x7F >> n);
    for (size_t i = 1; i < n; i++) {
        if ((q[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (q[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return n;
}

int json_utf8_valid(const char *s, size_t n)
{
    const unsigned char *q = (const unsigned char *)s, *end = q + n;
    while (q < end) {
        size_t l = utf8_len(q, end);
        if (!l)
            return 0;
        q += l;
    }
    return 1;
}

/* Parses a string at ps->p (which is at the opening quote). */
static int parse_string(parser *ps, const char **out, size_t *outlen)
{
    const char *q = ps->p + 1;
    /* First pass: find the end and the decoded length upper bound. */
    const char *s = q;
    for (;;) {
        s += quote_free_run((const unsigned char *)s, (const unsigned char *)ps->end);
        if (s >= ps->end || *s == '"')
            break;
        if (ps->end - s < 2) {
            s = ps->end; /* a backslash at the very end */
            break;
        }
        s += 2; /* a backslash and the character it escapes */
    }
    if (s >= ps->end) {
        fail(ps, ps->p, "unterminated string");
        return -1;
    }
    char *o = arena_alloc(ps->doc, (size_t)(s - q) + 1);
    if (!o) {
        fail(ps, q, "out of memory");
        return -1;
    }
    size_t n = 0;
    while (q < ps->end && *q != '"') {
        size_t run = plain_run((const unsigned char *)q, (const unsigned char *)ps->end);
        if (run) {
            memcpy(o + n, q, run);
            n += run;
            q += run;
            continue;
        }
        unsigned char c = (unsigned char)*q;
        if (c < 0x20) {
            fail(ps, q, "control character in string");
            return -1;
        }
        if (c == '\\') {
            q++;
            if (q >= ps->end) {
                fail(ps, q, "unterminated string");
                return -1;
            }
            switch (*q) {
            case '"': o[n++] = '"'; q++; break;
            case '\\': o[n++] = '\\'; q++; break;
            case '/': o[n++] = '/'; q++; break;
            case 'b': o[n++] = '\b'; q++; break;
            case 'f': o[n++] = '\f'; q++; break;
            case 'n': o[n++] = '\n'; q++; break;
            case 'r': o[n++] = '\r'; q++; break;
            case 't': o[n++] = '\t'; q++; break;
            case 'u': {
                unsigned cp;
                if (read_hex4(ps, q + 1, &cp) < 0)
                    return -1;
                q += 5;
                if (cp >= 0xD800 && cp <= 0xDBFF) {
                    unsigned lo;
                    if (ps->end - q < 2 || q[0] != '\\' || q[1] != 'u') {
                        fail(ps, q, "unpaired surrogate in \\u escape");
                        return -1;
                    }
                    if (read_hex4(ps, q + 2, &lo) < 0)
                        return -1;
                    if (lo < 0xDC00 || lo > 0xDFFF) {
                        fail(ps, q, "unpaired surrogate in \\u escape");
                        return -1;
                    }
                    q += 6;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                    fail(ps, q - 6, "unpaired surrogate in \\u escape");
                    return -1;
                }
                n += put_utf8(o + n, cp);
                break;
            }
            default:
                fail(ps, q, "bad escape in string");
                return -1;
            }
        } else {
            size_t l = utf8_len((const unsigned char *)q, (const unsigned char *)ps->end);
            if (!l) {
                fail(ps, q, "invalid UTF-8 in string");
                return -1;
            }
            memcpy(o + n, q, l);
            n += l;
            q += l;
        }
    }
    o[n] = '\0';
    ps->p = q + 1;
    *out = o;
    *outlen = n;
    return 0;
}

static json_value *parse_value(parser *ps);

static json_value *parse_number(parser *ps)
{
    const char *q = ps->p;
    int is_int = 1;
    if (q < ps->end && *q == '-')
        q++;
    if (q >= ps->end || !(*q >= '0' && *q <= '9')) {
        fail(ps, ps->p, "bad number");
        return NULL;
    }
    if (*q == '0') {
        q++;
    } else {
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && *q == '.') {
        is_int = 0;
        q++;
        if (q >= ps->end || !(*q >= '0' && *q <= '9')) {
            fail(ps, q, "bad number: digit expected after '.'");
            return NULL;
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < ps->end && (*q == 'e' || *q == 'E')) {
        is_int = 0;
        q++;
        if (q < ps->end && (*q == '+' || *q == '-'))
            q++;
        if (q >= ps->end || !(*q >= '0' && *q <= '9')) {
            fail(ps, q, "bad number: digit expected in exponent");
            return NULL;
        }
        while (q < ps->end && *q >= '0' && *q <= '9')
            q++;
    }
    char tmp[64];
    size_t n = (size_t)(q - ps->p);
    json_value *v = new_node(ps, JSON_NUMBER);
    if (!v)
        return NULL;
    if (n >= sizeof tmp) {
        /* Long literals: strtod on an arena copy. */
        char *c = arena_alloc(ps->doc, n + 1);
        if (!c) {
            fail(ps, ps->p, "out of memory");
            return NULL;
        }
        memcpy(c, ps->p, n);
        c[n] = '\0';
        v->u.number = strtod(c, NULL);
    } else {
        memcpy(tmp, ps->p, n);
        tmp[n] = '\0';
        v->u.number = strtod(tmp, NULL);
    }
    if (!isfinite(v->u.number)) {
        /* 1e999 would become infinity and be written back as null: refuse it here. */
        fail(ps, ps->p, "number out of range");
        return NULL;
    }
    v->is_int = is_int;
    ps->p = q;
    return v;
}

int json_is_number(const char *s, size_t n)
{
    const char *q = s, *end = s + n;
    if (q < end && *q == '-')
        q++;
    if (q >= end || !(*q >= '0' && *q <= '9'))
        return 0;
    if (*q == '0')
        q++;
    else
        while (q < end && *q >= '0' && *q <= '9')
            q++;
    if (q < end && *q == '.') {
        if (++q >= end || !(*q >= '0' && *q <= '9'))
            return 0;
        while (q < end && *q >= '0' && *q <= '9')
            q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        q++;
        if (q < end && (*q == '+' || *q == '-'))
            q++;
        if (q >= end || !(*q >= '0' && *q <= '9'))
            return 0;
        while (q < end && *q >= '0' && *q <= '9')
            q++;
    }
    return q == end;
}

static int expect_lit(parser *ps, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(ps->end - ps->p) < n || memcmp(ps->p, lit, n) != 0) {
        fail(ps, ps->p, "unexpected character");
        return -1;
    }
    ps->p += n;
    return 0;
}

static json_value *parse_container(parser *ps, int is_obj)
{
    if (++ps->depth > ps->max_depth) {
        fail(ps, ps->p, "nesting too deep");
        return NULL;
    }
    json_value *v = new_node(ps, is_obj ? JSON_OBJECT : JSON_ARRAY);
    if (!v)
        return NULL;
    json_value **tail = &v->u.kids.head;
    ps->p++;
    skip_ws(ps);
    char close = is_obj ? '}' : ']';
    if (ps->p < ps->end && *ps->p == close) {
        ps->p++;
        ps->depth--;
        return v;
    }
    for (;;) {
        const char *key = NULL;
        size_t keylen = 0;
        skip_ws(ps);
        if (is_obj) {
            if (ps->p >= ps->end || *ps->p != '"') {
                fail(ps, ps->p, "object key (a string) expected");
                return NULL;
            }
            if (parse_string(ps, &key, &keylen) < 0)
                return NULL;
            skip_ws(ps);
            if (ps->p >= ps->end || *ps->p != ':') {
                fail(ps, ps->p, "':' expected after object key");
                return NULL;
            }
            ps->p++;
            skip_ws(ps);
        }
        json_value *kid = parse_value(ps);
        if (!kid)
            return NULL;
        kid->key = key;
        kid->keylen = keylen;
        *tail = kid;
        tail = &kid->next;
        v->u.kids.n++;
        skip_ws(ps);
        if (ps->p < ps->end && *ps->p == ',') {
            ps->p++;
            continue;
        }
        if (ps->p < ps->end && *ps->p == close) {
            ps->p++;
            break;
        }
        fail(ps, ps->p, is_obj ? "',' or '}' expected in object" : "',' or ']' expected in array");
        return NULL;
    }
    ps->depth--;
    return v;
}

static json_value *parse_value(parser *ps)
{
    skip_ws(ps);
    if (ps->p >= ps->end) {
        fail(ps, ps->p, "unexpected end of input");
        return NULL;
    }
    json_value *v;
    switch (*ps->p) {
    case '{':
        return parse_container(ps, 1);
    case '[':
        return parse_container(ps, 0);
    case '"':
        v = new_node(ps, JSON_STRING);
        if (!v || parse_string(ps, &v->u.str.s, &v->u.str.len) < 0)
            return NULL;
        return v;
    case 't':
        if (expect_lit(ps, "true") < 0)
            return NULL;
        v = new_node(ps, JSON_BOOL);
        if (v)
            v->u.boolean = 1;
        return v;
    case 'f':
        if (expect_lit(ps, "false") < 0)
            return NULL;
        return new_node(ps, JSON_BOOL);
    case 'n':
        if (expect_lit(ps, "null") < 0)
            return NULL;
        return new_node(ps, JSON_NULL);
    default:
        if (*ps->p == '-' || (*ps->p >= '0' && *ps->p <= '9'))
            return parse_number(ps);
        fail(ps, ps->p, "unexpected character");
        return NULL;
    }
}

json_value *json_parse(const char *text, size_t len, int max_depth, json_doc **docp, json_error *err)
{
    json_doc *doc = calloc(1, sizeof *doc);
    if (docp)
        *docp = doc;
    if (!doc) {
        if (err) {
            memset(err, 0, sizeof *err);
            snprintf(err->msg, sizeof err->msg, "out of memory");
        }
        return NULL;
    }
    parser ps = {text, text, text + len, doc, 0, max_depth > 0 ? max_depth : JSON_DEFAULT_MAX_DEPTH, err, 0};
    json_value *root = parse_value(&ps);
    if (root) {
        skip_ws(&ps);
        if (ps.p != ps.end) {
            fail(&ps, ps.p, "trailing characters after the JSON value");
            root = NULL;
        }
    }
    if (!docp)
        json_doc_free(doc);
    return root;
}

json_value *json_get(const json_value *obj, const char *key)
{
    if (!obj || obj->type != JSON_OBJECT)
        return NULL;
    size_t n = strlen(key);
    json_value *found = NULL;
    for (json_value *k = obj->u.kids.head; k; k = k->next)
        if (k->keylen == n && memcmp(k->key, key, n) == 0)
            found = k;   /* last one wins, like most parsers */
    return found;
}

const char *json_get_str(const json_value *obj, const char *key)
{
    json_value *v = json_get(obj, key);
    return v && v->type == JSON_STRING ? v->u.str.s : NULL;
}

const char *json_type_name(json_type t)
{
    switch (t) {
    case JSON_NULL: return "null";
    case JSON_BOOL: return "boolean";
    case JSON_NUMBER: return "number";
    case JSON_STRING: return "string";
    case JSON_ARRAY: return "array";
    case JSON_OBJECT: return "object";
    }
    return "?";
}

/* ---- writer ---- */

/* JSON text is UTF-8 (RFC 8259 §8.1): a byte that does not start a valid
 * sequence is written as U+FFFD, so what is written always parses back. */
static const char replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

void json_quote(buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s, *end = u + n;
    if (n > 4096) {
        /* long strings: runs of plain bytes, so the reservation stays near the output's size */
        buf_addc(b, '"');
        size_t run = 0;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = u[i];
            if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\')
                continue;
            if (c >= 0x80) {
                size_t l = utf8_len(u + i, end);
                if (l) {
                    i += l - 1;
                    continue;
                }
            }
            buf_add(b, s + run, i - run);
            run = i + 1;
            if (c >= 0x80) {
                buf_add(b, replacement, sizeof replacement);
                continue;
            }
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            if (c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t') {
                e[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : c == '\t' ? 't' : (char)c;
                buf_add(b, e, 2);
            } else {
                buf_add(b, e, 6);
            }
        }
        buf_add(b, s + run, n - run);
        buf_addc(b, '"');
        return;
    }
    /* short strings (nearly all): worst case every byte as \u00XX, plus the quotes */
    if (buf_reserve(b, n * 6 + 2) < 0)
        return;
    char *o = b->data + b->len;
    *o++ = '"';
    for (size_t i = 0; i < n; i++) {
        size_t run = plain_run(u + i, end);
        if (run) {
            memcpy(o, s + i, run);
            o += run;
            i += run;
            if (i >= n)
                break;
        }
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            *o++ = (char)c;
            continue;
        }
        if (c >= 0x80) {
            size_t l = utf8_len(u + i, end);
            if (l) {
                memcpy(o, s + i, l);
                o += l;
                i += l - 1;
            } else {
                memcpy(o, replacement, sizeof replacement);
                o += sizeof replacement;
            }
            continue;
        }
        *o++ = '\\';
        switch (c) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '\n': *o++ = 'n'; break;
        case '\r': *o++ = 'r'; break;
        case '\t': *o++ = 't'; break;
        default:
            *o++ = 'u';
            *o++ = '0';
            *o++ = '0';
            *o++ = hex[c >> 4];
            *o++ = hex[c & 15];
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

void jw_init(json_writer *w, buf_t *b)
{
    memset(w, 0, sizeof *w);
    w->b = b;
    w->first[0] = 1;
}

static void sep(json_writer *w)
{
    if (w->after_key) {
        w->after_key = 0;
        return;
    }
    if (!w->first[w->depth])
        buf_addc(w->b, ',');
    w->first[w->depth] = 0;
}

static void open_(json_writer *w, char c)
{
    sep(w);
    buf_addc(w->b, c);
    if (w->depth + 1 < (int)sizeof w->first) {
        w->depth++;
        w->first[w->depth] = 1;
    } else {
        w->b->failed = 1;
    }
}

static void close_(json_writer *w, char c)
{
    buf_addc(w->b, c);
    if (w->depth > 0)
        w->depth--;
}

void jw_obj(json_writer *w) { open_(w, '{'); }
void jw_obj_end(json_writer *w) { close_(w, '}'); }
void jw_arr(json_writer *w) { open_(w, '['); }
void jw_arr_end(json_writer *w) { close_(w, ']'); }

void jw_key(json_writer *w, const char *k)
{
    sep(w);
    json_quote(w->b, k, strlen(k));
    buf_addc(w->b, ':');
    w->after_key = 1;
}

void jw_strn(json_writer *w, const char *s, size_t n)
{
    sep(w);
    json_quote(w->b, s, n);
}

void jw_str(json_writer *w, const char *s) { jw_strn(w, s, strlen(s)); }

void jw_kstr(json_writer *w, const char *k, const char *s)
{
    if (!s)
        return;
    jw_key(w, k);
    jw_str(w, s);
}

void jw_int(json_writer *w, long long v)
{
    sep(w);
    buf_printf(w->b, "%lld", v);
}

void jw_num(json_writer *w, double v)
{
    sep(w);
    if (!isfinite(v))
        buf_adds(w->b, "null");
    else if (fabs(v) < 1e15 && v == (double)(long long)v) /* the range first: a cast out of range is undefined */
        buf_printf(w->b, "%lld", (long long)v);
    else
        buf_printf(w->b, "%.17g", v);
}

void jw_bool(json_writer *w, int v)
{
    sep(w);
    buf_adds(w->b, v ? "true" : "false");
}

void jw_null(json_writer *w)
{
    sep(w);
    buf_adds(w->b, "null");
}

void jw_raw(json_writer *w, const char *json, size_t n)
{
    sep(w);
    buf_add(w->b, json, n);
}

void jw_value(json_writer *w, const json_value *v)
{
    switch (v->type) {
    case JSON_NULL: jw_null(w); break;
    case JSON_BOOL: jw_bool(w, v->u.boolean); break;
    case JSON_NUMBER: jw_num(w, v->u.number); break;
    case JSON_STRING: jw_strn(w, v->u.str.s, v->u.str.len); break;
    case JSON_ARRAY:
        jw_arr(w);
        for (json_value *k = v->u.kids.head; k; k = k->next)
            jw_value(w, k);
        jw_arr_end(w);
        break;
    case JSON_OBJECT:
        jw_obj(w);
        for (json_value *k = v->u.kids.head; k; k = k->next) {
            sep(w);
            json_quote(w->b, k->key, k->keylen);
            buf_addc(w->b, ':');
            w->after_key = 1;
            jw_value(w, k);
        }
        jw_obj_end(w);
        break;
    }
}

static void indent(buf_t *b, int level)
{
    buf_addc(b, '\n');
    for (int i = 0; i < level; i++)
        buf_add(b, "  ", 2);
}

void json_pretty(buf_t *b, const json_value *v, int level)
{
    if ((v->type == JSON_ARRAY || v->type == JSON_OBJECT) && v->u.kids.n) {
        int obj = v->type == JSON_OBJECT;
        buf_addc(b, obj ? '{' : '[');
        for (json_value *k = v->u.kids.head; k; k = k->next) {
            indent(b, level + 1);
            if (obj) {
                json_quote(b, k->key, k->keylen);
                buf_add(b, ": ", 2);
            }
            json_pretty(b, k, level + 1);
            if (k->next)
                buf_addc(b, ',');
        }
        indent(b, level);
        buf_addc(b, obj ? '}' : ']');
        return;
    }
    json_writer w;
    jw_init(&w, b);
    jw_value(&w, v);
}
