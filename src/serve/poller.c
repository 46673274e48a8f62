/*
 * poller.c -- the poller: the workers poll the API for status changes Wix
 * does not push, and each change becomes a journaled event.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "../json/json.h"
#include "../runtime/host.h"
#include "../runtime/sched.h"
#include "serve_internal.h"

/* A poll's task ended: each changed instance becomes a journaled event. The
 * task's result, {instances = {{instance_id, status, name, id, data}...},
 * watermark}, arrives as JSON (the scheduler encoded it; nothing here touches
 * the poller's Lua state). */
void poll_done(void *ctx, int ok, const char *text)
{
    serve *s = ctx;
    s->polling = 0;
    s->polls_total++;
    json_doc *doc = NULL;
    json_value *res = ok ? json_parse(text, strlen(text), 0, &doc, NULL) : NULL;
    if (!res || res->type != JSON_OBJECT) {
        s->poll_failures_total++;
        host_logline l;
        json_writer *w = host_log_begin(&l, "warn", "poll failed");
        jw_kstr(w, "error", !ok ? text : "the poller's result is not an object");
        host_log_end(&l);
        json_doc_free(doc);
        return;
    }
    json_value *list = json_get(res, "instances");
    for (json_value *item = list && list->type == JSON_ARRAY ? list->u.kids.head : NULL; item; item = item->next) {
        if (item->type != JSON_OBJECT)
            continue;
        const char *iid = json_get_str(item, "instance_id"), *st = json_get_str(item, "status"),
                   *name = json_get_str(item, "name"), *id = json_get_str(item, "id");
        char prev[32];
        int seen = iid && st ? journal_observe(s->jmain, iid, st, prev) : -1;
        /* A change, or a failure seen for the first time, is an event. */
        if ((seen == 1 || (seen == 0 && !strcmp(st, "FAILED"))) && name && id && known_name(s, name)) {
            json_value *dv = json_get(item, "data");
            buf_t data;
            buf_init(&data, 4 * 1024 * 1024);
            json_writer w;
            jw_init(&w, &data);
            jw_obj(&w);
            for (json_value *k = dv && dv->type == JSON_OBJECT ? dv->u.kids.head : NULL; k; k = k->next) {
                if (seen == 1 && k->keylen == 15 && !memcmp(k->key, "previous_status", 15))
                    continue;
                jw_key(&w, k->key);
                jw_value(&w, k);
            }
            if (seen == 1)
                jw_kstr(&w, "previous_status", prev);
            jw_obj_end(&w);
            if (!data.failed) {
                journal_new q = {.id = id, .name = name, .data_json = buf_cstr(&data), .order_key = NULL};
                char e2[256];
                if (journal_accept_many(s->jmain, &q, 1, e2, sizeof e2) == 0 && q.result == 0)
                    s->poll_events_total++;
                if (q.result == 1)
                    journal_event_free(&q.existing);
            }
            buf_free(&data);
        }
    }
    const char *wm = json_get_str(res, "watermark");
    if (wm)
        journal_meta_set(s->jmain, "poller.watermark", wm);
    json_doc_free(doc);
}

void poll_start(serve *s)
{
    const serve_settings *ss = &s->boot_cfg->serve;
    if (!ss->poller_enabled || s->polling || s->draining || sched_now_ms() < s->next_poll)
        return;
    s->next_poll = sched_now_ms() + ss->poller_interval_ms;
    char wm[64];
    int have_wm = journal_meta_get(s->jmain, "poller.watermark", wm, sizeof wm) == 0;
    const char *acct = ss->poller_account_id ? ss->poller_account_id : s->boot_cfg->wix.account_id;
    if (workers_poll(s->pool, have_wm ? wm : NULL, acct) == 0)
        s->polling = 1;
}
