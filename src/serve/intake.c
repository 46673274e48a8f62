/*
 * intake.c -- events in: POST /v1/events/NAME (checked, given an id and an
 * order key, queued for the writer thread and answered once committed) and
 * GET /v1/events/ID, and the event names the rules in force take.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "../journal/journal_json.h"
#include "../json/json.h"
#include "serve_internal.h"

#define INTAKE_MAX_DEPTH 64

/* ---- names and order keys ---- */

/* The names of s->cfg (current): built before the lock is taken, swapped
 * under it (the index points into the configuration, which outlives it). */
void publish_names(serve *s)
{
    name_index next, old;
    config_index_events(s->cfg, &next); /* (out of memory: an empty index, every name unknown) */
    pthread_mutex_lock(&s->lock);
    old = s->names;
    s->names = next;
    s->accept_unknown = s->cfg->serve.accept_unknown_events;
    pthread_mutex_unlock(&s->lock);
    name_index_free(&old);
}

int known_name(serve *s, const char *name)
{
    int n;
    pthread_mutex_lock(&s->lock);
    int ok = s->accept_unknown || name_index_find(&s->names, name, &n);
    pthread_mutex_unlock(&s->lock);
    return ok;
}

/* ---- POST and GET /v1/events ---- */

static int valid_name(const char *n)
{
    size_t len = strlen(n);
    if (len == 0 || len > 100)
        return 0;
    return strspn(n, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-:") == len;
}

enum MHD_Result post_event(serve *s, struct MHD_Connection *c, const char *name, const buf_t *body)
{
    if (!valid_name(name))
        return reply_invalid(c, "name", "EVENT_NAME_FORMAT", "event names are 1-100 of A-Z a-z 0-9 . _ - :");
    if (!known_name(s, name))
        return reply_error(c, 404, "UNKNOWN_EVENT", "no hook is configured for event '%s'", name);
    json_doc *doc = NULL;
    json_error e;
    json_value *v = body->len ? json_parse(body->data, body->len, INTAKE_MAX_DEPTH, &doc, &e) : NULL;
    if (!body->len) {
        json_doc_free(doc);
        return reply_invalid(c, "body", "VALID_JSON", "the body must be a JSON object (the event's data)");
    }
    if (!v) {
        json_doc_free(doc);
        return reply_invalid(c, "body", "VALID_JSON", "malformed JSON at line %d, column %d: %s", e.line, e.col,
                             e.msg);
    }
    if (v->type != JSON_OBJECT) {
        const char *what = json_type_name(v->type);
        json_doc_free(doc);
        return reply_invalid(c, "body", "VALID_JSON", "the body must be a JSON object, not %s", what);
    }
    const char *id = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Event-Id");
    json_value *idv = json_get(v, "event_id");
    char idbuf[64];
    const char *id_field = "X-Event-Id";
    size_t idlen = id ? strlen(id) : 0;
    if (!id && idv && idv->type == JSON_STRING) {
        id = idv->u.str.s;
        idlen = idv->u.str.len; /* a \u0000 inside makes it differ from strlen: refused below */
        id_field = "event_id";
    }
    else if (!id && idv && idv->type != JSON_NULL) {
        json_doc_free(doc);
        return reply_invalid(c, "event_id", "EVENT_ID_FORMAT", "event_id must be a string");
    }
    if (id && !journal_valid_id(id, idlen)) {
        json_doc_free(doc);
        return reply_invalid(c, id_field, "EVENT_ID_FORMAT", "an event id is %s", JOURNAL_ID_RULE);
    }
    if (!id) {
        unsigned char r[16];
        if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
            json_doc_free(doc);
            return reply_error(c, 500, "INTERNAL", "no randomness for an event id");
        }
        r[6] = (unsigned char)((r[6] & 0x0F) | 0x40);
        r[8] = (unsigned char)((r[8] & 0x3F) | 0x80);
        snprintf(idbuf, sizeof idbuf, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1],
                 r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
        id = idbuf;
    }
    /* The order key: the first configured data field present. */
    char key[256] = "";
    const serve_settings *ss = &s->boot_cfg->serve;
    for (int i = 0; i < ss->norder_key && !key[0]; i++) {
        json_value *k = json_get(v, ss->order_key[i]);
        if (k && k->type == JSON_STRING && k->u.str.len)
            snprintf(key, sizeof key, "%s=%.*s", ss->order_key[i], (int)(k->u.str.len > 200 ? 200 : k->u.str.len),
                     k->u.str.s);
        else if (k && k->type == JSON_NUMBER)
            snprintf(key, sizeof key, "%s=%.17g", ss->order_key[i], k->u.number);
    }
    buf_t data;
    buf_init(&data, 0);
    json_writer w;
    jw_init(&w, &data);
    jw_value(&w, v);
    intake q = {0};
    pthread_cond_init(&q.wake, NULL);
    char *idcopy = strdup(id);
    q.item.id = idcopy;
    q.item.name = name;
    q.item.data_json = buf_cstr(&data);
    q.item.order_key = key[0] ? key : NULL;
    json_doc_free(doc);
    pthread_mutex_lock(&s->lock);
    if (s->draining || s->journal_broken) {
        int draining = s->draining;
        char why[sizeof s->journal_error];
        snprintf(why, sizeof why, "%s", s->journal_error);
        pthread_mutex_unlock(&s->lock);
        pthread_cond_destroy(&q.wake);
        buf_free(&data);
        free(idcopy);
        if (draining)
            return reply_error(c, 503, "SHUTTING_DOWN", "the service is stopping; send the event again later");
        return reply_error(c, 503, "JOURNAL", "the event was not stored (%s); send it again later", why);
    }
    if (s->qtail)
        s->qtail->next = &q;
    else
        s->qhead = &q;
    s->qtail = &q;
    pthread_cond_signal(&s->queued);
    while (!q.done)
        pthread_cond_wait(&q.wake, &s->lock);
    pthread_mutex_unlock(&s->lock);
    pthread_cond_destroy(&q.wake);
    buf_free(&data);
    buf_t out;
    buf_init(&out, 0);
    enum MHD_Result rc;
    if (q.status < 0) {
        rc = reply_error(c, 503, "JOURNAL", "the event was not stored (%s); send it again later", q.err);
    } else {
        json_writer ow;
        jw_init(&ow, &out);
        jw_obj(&ow);
        if (q.status == 0) {
            jw_kstr(&ow, "id", idcopy);
            jw_kstr(&ow, "state", "accepted");
        } else {
            jw_key(&ow, "duplicate");
            jw_bool(&ow, 1);
            jw_key(&ow, "event");
            journal_event_jw(&ow, &q.item.existing);
            journal_event_free(&q.item.existing);
        }
        jw_obj_end(&ow);
        rc = reply(c, q.status == 0 ? 202 : 200, &out);
    }
    buf_free(&out);
    free(idcopy);
    return rc;
}

enum MHD_Result get_event(serve *s, struct MHD_Connection *c, const char *id)
{
    journal_event e;
    pthread_mutex_lock(&s->lock);
    int rc = journal_get(s->jread, id, &e);
    pthread_mutex_unlock(&s->lock);
    if (rc == 1)
        return reply_error(c, 404, "NOT_FOUND", "no event with id '%s'", id);
    if (rc < 0)
        return reply_error(c, 500, "JOURNAL", "cannot read the journal");
    buf_t b;
    buf_init(&b, 0);
    journal_event_json(&b, &e);
    journal_event_free(&e);
    return reply(c, 200, &b);
}
