/*
 * buf.h -- a growable byte buffer with a hard cap.
 *
 * Every append either succeeds or leaves the buffer as it was and sets
 * b->failed (out of memory or over the cap); callers check once at the end.
 */
#ifndef WIXR_BUF_H
#define WIXR_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

typedef struct buf {
    char *data;       /* NUL-terminated when len > 0 or after buf_cstr */
    size_t len;
    size_t cap;
    size_t limit;     /* 0 = no cap */
    int failed;
} buf_t;

void buf_init(buf_t *b, size_t limit);
void buf_free(buf_t *b);
void buf_reset(buf_t *b);
int buf_reserve(buf_t *b, size_t extra);
int buf_add(buf_t *b, const void *p, size_t n);
int buf_adds(buf_t *b, const char *s);
int buf_addc(buf_t *b, char c);
int buf_printf(buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(buf_t *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
const char *buf_cstr(buf_t *b);
/* Hands the data to the caller (malloc'd, NUL-terminated) and resets b. */
char *buf_steal(buf_t *b, size_t *len);
/* Everything f holds (NUL-terminated; *len without the NUL), at most limit
 * bytes; NULL on a read error or past the limit (then *too_large is set). */
char *buf_read_stream(FILE *f, size_t limit, size_t *len, int *too_large);

#endif
