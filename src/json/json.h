/*
 * json.h -- a small, strict JSON reader (DOM in one arena) and writer.
 *
 * The reader takes RFC 8259 text, with a depth cap and exact error offsets.
 * Every node of one document lives in that document's arena: json_doc_free
 * releases them all at once. Strings are decoded (escapes, surrogate pairs)
 * and NUL-terminated; they may contain NUL bytes, so use .len.
 *
 * The writer appends to a buf_t and keeps track of commas itself.
 */
#ifndef WIXR_JSON_H
#define WIXR_JSON_H

#include <stddef.h>

#include "../util/buf.h"

#define JSON_DEFAULT_MAX_DEPTH 64

typedef enum { JSON_NULL, JSON_BOOL, JSON_NUMBER, JSON_STRING, JSON_ARRAY, JSON_OBJECT } json_type;

typedef struct json_value json_value;
struct json_value {
    json_type type;
    int is_int;            /* JSON_NUMBER written without fraction or exponent */
    const char *key;       /* when a member of an object */
    size_t keylen;
    json_value *next;      /* next sibling in an array or object */
    union {
        int boolean;
        double number;
        struct { const char *s; size_t len; } str;
        struct { json_value *head; size_t n; } kids;   /* array or object */
    } u;
};

typedef struct json_doc json_doc;

typedef struct json_error {
    size_t offset;         /* byte offset of the problem */
    int line, col;         /* 1-based */
    char msg[96];
} json_error;

/* Parses text[0..len). Returns the root, or NULL with *err filled. The doc
 * (arena) is returned in *doc either way when non-NULL; free it with
 * json_doc_free. max_depth <= 0 means JSON_DEFAULT_MAX_DEPTH. */
json_value *json_parse(const char *text, size_t len, int max_depth, json_doc **doc, json_error *err);
void json_doc_free(json_doc *doc);

/* 1 when s[0..n) is exactly one number as JSON writes it (RFC 8259 §6). */
int json_is_number(const char *s, size_t n);

json_value *json_get(const json_value *obj, const char *key);
const char *json_type_name(json_type t);
/* Convenience: string value of obj[key] or NULL when absent or not a string. */
const char *json_get_str(const json_value *obj, const char *key);

/* ---- writer ---- */
typedef struct json_writer {
    buf_t *b;
    int depth;
    unsigned char first[JSON_DEFAULT_MAX_DEPTH * 2 + 2];
    int after_key;
} json_writer;

void jw_init(json_writer *w, buf_t *b);
void jw_obj(json_writer *w);
void jw_obj_end(json_writer *w);
void jw_arr(json_writer *w);
void jw_arr_end(json_writer *w);
void jw_key(json_writer *w, const char *k);
void jw_str(json_writer *w, const char *s);
void jw_strn(json_writer *w, const char *s, size_t n);
void jw_int(json_writer *w, long long v);
void jw_num(json_writer *w, double v);
void jw_bool(json_writer *w, int v);
void jw_null(json_writer *w);
/* Writes an already-encoded JSON text as the next value. */
void jw_raw(json_writer *w, const char *json, size_t n);
/* Writes a parsed value back out (compact). */
void jw_value(json_writer *w, const json_value *v);
/* Shorthand: key + string value, skipped when s is NULL. */
void jw_kstr(json_writer *w, const char *k, const char *s);

/* Writes v indented by two spaces per level (for people to read). */
void json_pretty(buf_t *b, const json_value *v, int level);

/* 1 when s[0..n) is well-formed UTF-8 (no overlong forms, surrogates or
 * code points past U+10FFFF). */
int json_utf8_valid(const char *s, size_t n);

/* Appends s as a quoted JSON string to b. JSON text is UTF-8: a byte of s that
 * does not belong to a valid UTF-8 sequence is written as U+FFFD. */
void json_quote(buf_t *b, const char *s, size_t n);

#endif
