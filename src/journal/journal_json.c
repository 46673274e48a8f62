/*
 * journal_json.c -- a journal event as JSON (see journal_json.h).
 */
#include "journal_json.h"

#include <string.h>

#include "../util/isotime.h"

/* Stored JSON text as a value: parsed and written again when it is JSON, as
 * a string when it is not, null when there is none. */
static void stored(json_writer *w, const char *k, const char *text)
{
    jw_key(w, k);
    if (!text || !*text) {
        jw_null(w);
        return;
    }
    json_doc *doc = NULL;
    json_value *v = json_parse(text, strlen(text), 0, &doc, NULL);
    if (v)
        jw_value(w, v);
    else
        jw_str(w, text);
    json_doc_free(doc);
}

static void str_or_null(json_writer *w, const char *k, const char *s)
{
    jw_key(w, k);
    if (s)
        jw_str(w, s);
    else
        jw_null(w);
}

static void time_pair(json_writer *w, const char *k, const char *kms, long long ms, int present)
{
    char t[80];
    if (present)
        iso_format_ms(ms, t);
    str_or_null(w, k, present ? t : NULL);
    jw_key(w, kms);
    if (present)
        jw_int(w, ms);
    else
        jw_null(w);
}

void journal_event_jw(json_writer *w, const journal_event *e)
{
    jw_obj(w);
    jw_key(w, "seq");
    jw_int(w, e->seq);
    str_or_null(w, "id", e->id);
    str_or_null(w, "name", e->name);
    str_or_null(w, "state", journal_state_name(e->state));
    jw_key(w, "attempts");
    jw_int(w, e->attempts);
    str_or_null(w, "order_key", e->order_key);
    time_pair(w, "created", "created_ms", e->created_ms, e->created_ms >= 0);
    time_pair(w, "updated", "updated_ms", e->updated_ms, e->updated_ms >= 0);
    time_pair(w, "next_attempt", "next_attempt_ms", e->next_attempt_ms,
              e->state == EV_RETRYING && e->next_attempt_ms > 0);
    str_or_null(w, "last_error", e->last_error);
    stored(w, "data", e->data_json);
    stored(w, "result", e->results_json);
    jw_obj_end(w);
}

void journal_event_json(buf_t *b, const journal_event *e)
{
    json_writer w;
    jw_init(&w, b);
    journal_event_jw(&w, e);
}
