/*
 * reply.c -- answers and capped request bodies for the HTTP fronts (see http.h).
 */
#include <stdlib.h>
#include <string.h>

#include "http.h"

struct MHD_Response *http_response(void *body, size_t len, enum MHD_ResponseMemoryMode mode, const char *type,
                                   const char *allow)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r)
        return NULL;
    if (type)
        MHD_add_response_header(r, "Content-Type", type);
    if (allow)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
    return r;
}

enum MHD_Result http_send(struct MHD_Connection *c, unsigned status, struct MHD_Response *r)
{
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

enum MHD_Result http_reply(struct MHD_Connection *c, unsigned status, const void *body, size_t len, const char *type,
                           const char *allow)
{
    struct MHD_Response *r = http_response((void *)body, len, MHD_RESPMEM_MUST_COPY, type, allow);
    return r ? http_send(c, status, r) : MHD_NO;
}

int http_announced_over(struct MHD_Connection *c, size_t cap)
{
    const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    return cl && strtoull(cl, NULL, 10) > (unsigned long long)cap;
}

http_body *http_body_new(size_t cap)
{
    http_body *b = calloc(1, sizeof *b);
    if (b)
        buf_init(&b->buf, cap);
    return b;
}

void http_body_add(http_body *b, const char *data, size_t *size)
{
    if (!b->too_big && buf_add(&b->buf, data, *size) < 0)
        b->too_big = 1;
    *size = 0;
}

void http_body_free(http_body *b)
{
    if (!b)
        return;
    buf_free(&b->buf);
    free(b);
}
