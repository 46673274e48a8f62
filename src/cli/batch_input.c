/*
 * batch_input.c -- NDJSON events read in slices (see batch_input.h).
 */
#define _GNU_SOURCE
#include "batch_input.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../journal/journal.h"
#include "../json/json.h"

#define READ_SLICE (256 * 1024)

struct batch_input {
    int fd;
    int regular;                  /* a regular file: a read never waits */
    int ready;                    /* a read will not wait (poll said so, or regular) */
    int eof;
    int skipping;                 /* inside a line past the cap: dropped up to its end */
    char name[4096];
    char error[256];
    size_t max_line;
    char *buf;                    /* unparsed input: [at, len) */
    size_t at, len, cap;
    long line;                    /* lines taken so far */
    long malformed;
    long long size, consumed;     /* a regular file's size, and the bytes taken */
};

batch_input *batch_input_open(const char *src, size_t max_line, char *err, size_t errlen)
{
    batch_input *in = calloc(1, sizeof *in);
    if (!in) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int is_stdin = !strcmp(src, "-");
    snprintf(in->name, sizeof in->name, "%s", is_stdin ? "<stdin>" : src);
    in->fd = is_stdin ? 0 : open(src, O_RDONLY | O_CLOEXEC);
    if (in->fd < 0) {
        snprintf(err, errlen, "%s: %s", src, strerror(errno));
        free(in);
        return NULL;
    }
    struct stat st;
    if (fstat(in->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: %s", src, strerror(EISDIR));
        batch_input_close(in);
        return NULL;
    }
    in->regular = fstat(in->fd, &st) == 0 && S_ISREG(st.st_mode);
    in->size = in->regular ? (long long)st.st_size : -1;
    in->ready = 1; /* (the first read: a pipe with nothing yet makes it wait once, as poll would) */
    in->max_line = max_line;
    return in;
}

void batch_input_close(batch_input *in)
{
    if (!in)
        return;
    if (in->fd > 0)
        close(in->fd);
    free(in->buf);
    free(in);
}

void batch_event_free(batch_event *e)
{
    if (!e)
        return;
    free(e->name);
    free(e->id);
    free(e->data);
    free(e);
}

const char *batch_input_name(const batch_input *in) { return in->name; }
long batch_input_malformed(const batch_input *in) { return in->malformed; }
const char *batch_input_error(const batch_input *in) { return in->error; }

double batch_input_done(const batch_input *in)
{
    if (in->size < 0)
        return -1;
    return in->size ? (double)in->consumed / (double)in->size : 1;
}

int batch_input_fd(const batch_input *in)
{
    return in->eof || in->ready ? -1 : in->fd;
}

void batch_input_readable(batch_input *in)
{
    in->ready = 1;
}

/* One read into the buffer (after what is left of it). */
static void read_slice(batch_input *in)
{
    if (in->at) {
        memmove(in->buf, in->buf + in->at, in->len - in->at);
        in->len -= in->at;
        in->at = 0;
    }
    if (in->cap - in->len < READ_SLICE) {
        size_t cap = in->len + READ_SLICE;
        char *nb = realloc(in->buf, cap);
        if (!nb) {
            snprintf(in->error, sizeof in->error, "out of memory");
            in->eof = 1;
            return;
        }
        in->buf = nb;
        in->cap = cap;
    }
    ssize_t n = read(in->fd, in->buf + in->len, in->cap - in->len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n < 0)
        snprintf(in->error, sizeof in->error, "%s", strerror(errno));
    if (n <= 0)
        in->eof = 1;
    else
        in->len += (size_t)n;
    in->ready = in->regular;
}

static void malformed(batch_input *in, const char *why)
{
    fprintf(stderr, "%s:%ld: %s (line skipped)\n", in->name, in->line, why);
    in->malformed++;
}

/* A line's event, or NULL when it is blank or malformed (reported). */
static batch_event *parse_line(batch_input *in, const char *p, size_t n)
{
    int blank = 1;
    for (size_t i = 0; i < n && blank; i++)
        blank = p[i] == ' ' || p[i] == '\t' || p[i] == '\r';
    if (blank)
        return NULL;
    json_doc *doc;
    json_error e;
    json_value *v = json_parse(p, n, 0, &doc, &e);
    const char *why = NULL;
    char msg[200];
    json_value *name = v ? json_get(v, "event") : NULL, *id = v ? json_get(v, "id") : NULL;
    json_value *data = v ? json_get(v, "data") : NULL;
    if (!v) {
        snprintf(msg, sizeof msg, "column %d: %s", e.col, e.msg);
        why = msg;
    } else if (v->type != JSON_OBJECT) {
        why = "a line must be a JSON object";
    } else if (!name || name->type != JSON_STRING || !name->u.str.len) {
        why = "\"event\" (a non-empty string) is required";
    } else if (id && id->type != JSON_STRING && id->type != JSON_NUMBER && id->type != JSON_NULL) {
        why = "\"id\" must be a string or a number";
    } else if (id && id->type == JSON_STRING && !journal_valid_id(id->u.str.s, id->u.str.len)) {
        why = "\"id\" must be " JOURNAL_ID_RULE;
    } else if (data && data->type != JSON_OBJECT && data->type != JSON_NULL) {
        why = "\"data\" must be an object";
    }
    batch_event *ev = why ? NULL : calloc(1, sizeof *ev);
    if (ev) {
        ev->line = in->line;
        ev->state = -1;
        ev->name = strndup(name->u.str.s, name->u.str.len);
        if (id && id->type == JSON_STRING)
            ev->id = strndup(id->u.str.s, id->u.str.len);
        else if (id && id->type == JSON_NUMBER && asprintf(&ev->id, "%.17g", id->u.number) < 0)
            ev->id = NULL;
        buf_t d;
        buf_init(&d, 0);
        json_writer w;
        jw_init(&w, &d);
        if (data && data->type == JSON_OBJECT)
            jw_value(&w, data);
        else
            buf_adds(&d, "{}");
        ev->data = buf_steal(&d, NULL);
        if (!ev->name || !ev->data || (id && id->type != JSON_NULL && !ev->id)) {
            batch_event_free(ev);
            ev = NULL;
            why = "out of memory";
        }
    } else if (!why) {
        why = "out of memory";
    }
    json_doc_free(doc);
    if (why)
        malformed(in, why);
    return ev;
}

int batch_input_next(batch_input *in, batch_event **out)
{
    for (;;) {
        char *p = in->buf + in->at;
        size_t avail = in->len - in->at;
        char *nl = avail ? memchr(p, '\n', avail) : NULL;
        if (nl || (in->eof && avail)) {
            size_t n = nl ? (size_t)(nl - p) : avail;
            in->at += nl ? n + 1 : n;
            in->consumed += (long long)(nl ? n + 1 : n);
            if (in->skipping) {
                in->skipping = 0; /* (the end of a line already reported) */
                continue;
            }
            in->line++;
            if (n > in->max_line) {
                char msg[96];
                snprintf(msg, sizeof msg, "longer than %zu bytes", in->max_line);
                malformed(in, msg);
                continue;
            }
            if ((*out = parse_line(in, p, n)))
                return 1;
            continue;
        }
        if (avail > in->max_line) {
            /* no end in sight: the line is reported now, and the rest of it dropped as it comes */
            if (!in->skipping) {
                in->line++;
                char msg[96];
                snprintf(msg, sizeof msg, "longer than %zu bytes", in->max_line);
                malformed(in, msg);
            }
            in->skipping = 1;
            in->consumed += (long long)avail;
            in->at = in->len;
        }
        if (in->eof)
            return -1;
        if (!in->ready)
            return 0;
        read_slice(in);
    }
}
