/*
 * wire.c -- framing of supervisor <-> worker messages (see wire.h).
 */
#include "wire.h"

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <unistd.h>

void wire_init(wire *w, int fd)
{
    memset(w, 0, sizeof *w);
    w->fd = fd;
    buf_init(&w->in, 0);
    buf_init(&w->out, 0);
}

void wire_free(wire *w)
{
    buf_free(&w->in);
    buf_free(&w->out);
    w->fd = -1;
}

static void put_u32(char *p, uint32_t v)
{
    p[0] = (char)(v >> 24);
    p[1] = (char)(v >> 16);
    p[2] = (char)(v >> 8);
    p[3] = (char)v;
}

static uint32_t get_u32(const char *p)
{
    const unsigned char *u = (const unsigned char *)p;
    return (uint32_t)u[0] << 24 | (uint32_t)u[1] << 16 | (uint32_t)u[2] << 8 | u[3];
}

int wire_put(wire *w, int type, int n, const char *const *f, const size_t *len)
{
    size_t total = 1, lens[WIRE_MAX_FIELDS];
    if (n > WIRE_MAX_FIELDS)
        return -1;
    for (int i = 0; i < n; i++) {
        lens[i] = !f[i] ? 0 : len && len[i] != (size_t)-1 ? len[i] : strlen(f[i]);
        total += 4 + lens[i] + 1;
    }
    if (total > WIRE_MAX_MESSAGE || buf_reserve(&w->out, 4 + total) < 0)
        return -1;
    char *p = w->out.data + w->out.len;
    put_u32(p, (uint32_t)total);
    p[4] = (char)type;
    p += 5;
    for (int i = 0; i < n; i++) {
        put_u32(p, (uint32_t)lens[i]);
        if (lens[i])
            memcpy(p + 4, f[i], lens[i]);
        p[4 + lens[i]] = '\0';
        p += 4 + lens[i] + 1;
    }
    w->out.len += 4 + total;
    return 0;
}

int wire_pending(const wire *w)
{
    return w->out.len > w->out_at;
}

int wire_flush(wire *w)
{
    while (w->out_at < w->out.len) {
        ssize_t k = write(w->fd, w->out.data + w->out_at, w->out.len - w->out_at);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        w->out_at += (size_t)k;
    }
    w->out.len = w->out_at = 0;
    return 0;
}

int wire_fill(wire *w)
{
    if (w->in_at && w->in_at == w->in.len) {
        w->in.len = w->in_at = 0;
    } else if (w->in_at > 65536 && w->in_at * 2 > w->in.len) {
        memmove(w->in.data, w->in.data + w->in_at, w->in.len - w->in_at);
        w->in.len -= w->in_at;
        w->in_at = 0;
    }
    int got = 0;
    for (;;) {
        if (buf_reserve(&w->in, 65536) < 0)
            return -1;
        ssize_t k = read(w->fd, w->in.data + w->in.len, w->in.cap - w->in.len - 1);
        if (k > 0) {
            w->in.len += (size_t)k;
            got = 1;
            if ((size_t)k < 65536)
                return 1;
            continue;
        }
        if (k == 0)
            return got ? 1 : -1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return got;
        return got ? 1 : -1;
    }
}

int wire_next(wire *w, wire_msg *m)
{
    size_t avail = w->in.len - w->in_at;
    if (avail < 5)
        return 0;
    const char *p = w->in.data + w->in_at;
    uint32_t total = get_u32(p);
    if (total < 1 || total > WIRE_MAX_MESSAGE)
        return -1;
    if (avail < 4 + (size_t)total)
        return 0;
    m->type = (unsigned char)p[4];
    m->n = 0;
    const char *q = p + 5, *end = p + 4 + total;
    while (q < end) {
        if (end - q < 5 || m->n == WIRE_MAX_FIELDS)
            return -1;
        uint32_t l = get_u32(q);
        if ((size_t)(end - q) < 4 + (size_t)l + 1 || q[4 + l] != '\0')
            return -1;
        m->f[m->n] = q + 4;
        m->len[m->n++] = l;
        q += 4 + l + 1;
    }
    for (int i = m->n; i < WIRE_MAX_FIELDS; i++) {
        m->f[i] = "";
        m->len[i] = 0;
    }
    w->in_at += 4 + total;
    return 1;
}

int wire_wait_for(wire *w, int type, wire_msg *m)
{
    /* Scan the inbox for the type without taking the messages before it:
     * they stay for wire_next. The wanted one is cut out of the inbox. */
    for (;;) {
        size_t at = w->in_at;
        while (w->in.len - at >= 5) {
            uint32_t total = get_u32(w->in.data + at);
            if (total < 1 || total > WIRE_MAX_MESSAGE)
                return -1;
            if (w->in.len - at < 4 + (size_t)total)
                break;
            if ((unsigned char)w->in.data[at + 4] == type) {
                /* move it to the front of the inbox, take it there */
                size_t n = 4 + (size_t)total;
                if (at != w->in_at) {
                    char tmp[4096];
                    if (n > sizeof tmp)
                        return -1; /* (answers waited for are small) */
                    memcpy(tmp, w->in.data + at, n);
                    memmove(w->in.data + w->in_at + n, w->in.data + w->in_at, at - w->in_at);
                    memcpy(w->in.data + w->in_at, tmp, n);
                }
                return wire_next(w, m);
            }
            at += 4 + (size_t)total;
        }
        struct pollfd pfd = {.fd = w->fd, .events = POLLIN};
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
            return -1;
        if (wire_fill(w) < 0)
            return -1;
    }
}
