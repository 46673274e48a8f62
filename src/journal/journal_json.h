/*
 * journal_json.h -- one rendering of a journal event as JSON, for every
 * place that shows one: GET /v1/events/ID (and the 200 of a duplicate POST)
 * of `wixr serve`, and `wixr events list|show --json`.
 *
 * The object always has the same keys, in this order (null when there is
 * nothing to say):
 *
 *   seq, id, name, state, attempts, order_key, created, created_ms, updated,
 *   updated_ms, next_attempt, next_attempt_ms, last_error, data, result
 *
 * data and result are the stored JSON texts (the event's data; the last
 * run's report, see event_job_json), parsed and written again; a stored text
 * that is not JSON is written as a string, so the output is always one JSON
 * object. Every string goes through the JSON writer: quotes, backslashes and
 * control characters are escaped, and bytes that are not UTF-8 become U+FFFD.
 */
#ifndef WIXR_JOURNAL_JSON_H
#define WIXR_JOURNAL_JSON_H

#include "../json/json.h"
#include "journal.h"

/* Writes e as the next value of w. */
void journal_event_jw(json_writer *w, const journal_event *e);
/* Appends e to b as one JSON object (no newline). */
void journal_event_json(buf_t *b, const journal_event *e);

#endif
