/*
 * journal.h -- the durable event journal of `wixr serve`: every accepted
 * event and where it stands (SQLite, WAL, fsync'd commits).
 *
 * Life of an event:
 *
 *     accepted --mark_running--> running --mark_done--> done
 *                                   |  \--mark_dead--> dead --retry--> accepted
 *                                   \--mark_retry--> retrying --mark_running--> running
 *     crash: running --recover--> accepted (attempts kept)
 *
 * attempts counts runs *started*: it grows in journal_mark_running, so an
 * event whose runs keep dying with the process still reaches the caller's
 * attempt cap. The journal itself enforces no transition order (the caller
 * owns the policy); journal_retry alone checks the state it starts from.
 *
 * Durability: a function that returned 0 has committed (fsync'd) its one
 * transaction; a process killed at any moment leaves each event either as
 * it was or as it became, never in between.
 *
 * Threads: one handle may be used from any thread (calls on one handle are
 * serialised by a mutex), but the intended shape is one handle per thread;
 * any number of handles and processes may open the same file at once
 * (`wixr events` reads and edits the journal while `wixr serve` runs).
 *
 * Strings handed out in journal_event are malloc'd copies owned by the
 * caller: journal_event_free / journal_events_free.
 */
#ifndef WIXR_JOURNAL_H
#define WIXR_JOURNAL_H

#include <stddef.h>

typedef struct journal journal;

typedef enum { EV_ACCEPTED, EV_RUNNING, EV_DONE, EV_RETRYING, EV_DEAD } ev_state; /* names: accepted running done retrying dead */
#define EV__COUNT 5

/* An event id travels in URLs (GET /v1/events/ID), logs and the journal, from
 * wixr serve's intake and from wixr fire alike: 1 to JOURNAL_ID_MAX bytes of
 * well-formed UTF-8, no NUL or other control character (C0, DEL, C1, and the
 * bidi controls U+200E U+200F U+202A..U+202E U+2066..U+2069), no space
 * and none of / % ? # \ (the writer would cope with any bytes; people reading
 * logs and URLs would not). */
#define JOURNAL_ID_MAX 200
#define JOURNAL_ID_RULE                                                                                   \
    "1 to 200 bytes of UTF-8, without control characters, spaces, '/', '%', '?', '#' or '\\'"
int journal_valid_id(const char *id, size_t len);

typedef struct journal_event {
    long long seq;                               /* insertion order */
    char *id, *name, *data_json, *order_key;     /* order_key may be NULL */
    ev_state state;
    int attempts;                                /* runs started so far */
    long long next_attempt_ms;                   /* wall-clock ms since the epoch; 0 = now */
    long long created_ms, updated_ms;
    char *last_error;                            /* NULL when none */
    char *results_json;                          /* the last run's per-hook results (a JSON array text), NULL when none */
    int worker_deaths;                           /* worker processes that died running it alone */
    int solo;                                    /* its next run is alone in its worker (a worker died under it) */
} journal_event;

/* Opens (creating when missing) the journal at path; the folder must exist.
 * WAL, synchronous=FULL, busy_timeout 5000 ms, shared (not exclusive)
 * locking. NULL with a message in err on failure (also when the file was
 * written by a newer wixr). */
journal *journal_open(const char *path, char *err, size_t errlen);
void journal_close(journal *j);
/* Commits of this handle reach the disk (fsync) before returning (full = 1,
 * the default), or only the OS (0: still safe against a crash of the process,
 * not against power loss). Intake keeps 1; state changes of a run may use 0
 * since a lost change only means the event runs again, with the same keys. */
int journal_set_durable(journal *j, int full);
/* Turns off checkpoints at commit on this handle (so a commit never waits for
 * one); the owner then calls journal_checkpoint from time to time. */
int journal_set_manual_checkpoints(journal *j);
int journal_checkpoint(journal *j);
/* The size of the journal's WAL file in bytes (0 when there is none). */
long long journal_wal_size(journal *j);
/* Copies the whole WAL into the database and truncates it to nothing, waiting
 * (the busy timeout) for readers to leave it; 0, or -1 (they did not). */
int journal_checkpoint_truncate(journal *j);
/* Pages written to the WAL since this handle's last checkpoint (its commits
 * count them). */
long long journal_wal_pages(journal *j);
/* A passive checkpoint by this handle (it waits for nobody); the WAL starts
 * over at the next commit when no reader still needs it. 0 or -1. */
int journal_checkpoint_passive(journal *j);
/* Groups the next writes of this handle in one transaction (mark_* calls;
 * not accept, which opens its own). */
int journal_begin(journal *j);
int journal_commit(journal *j);

/* Events that may run now (accepted, running, or retrying and due), in seq
 * order, at most limit (the cost is in limit, not in the backlog; a running
 * one the caller does not hold lost its outcome and runs again); and the
 * order keys held by retrying events that are not due yet (their later
 * events must wait). */
int journal_runnable(journal *j, long long now_ms, int limit, journal_event **out, int *n);
int journal_waiting_keys(journal *j, long long now_ms, char ***keys, int *n);

/* The poller's memory. journal_observe records an instance's status and
 * returns 0 when the instance was not seen before, 1 when its status changed
 * (prev gets the old one), 2 when it is unchanged; -1 on error. */
int journal_observe(journal *j, const char *instance_id, const char *status, char prev[32]);
/* Small persistent settings (the poller's watermark). get: 0 found, 1 not. */
int journal_meta_get(journal *j, const char *key, char *out, size_t n);
int journal_meta_set(journal *j, const char *key, const char *value);
/* Whether the file on disk still starts as a SQLite database (its 100-byte
 * header is read through the handle's own descriptor, so no lock is
 * disturbed): a journal overwritten or truncated under a running process
 * would otherwise go unseen while the page cache and the WAL serve reads.
 * 0 sound, -1 with a message in err. */
int journal_check_file(journal *j, char *err, size_t errlen);
/* The last error on this handle, for messages ("" when none). */
const char *journal_errmsg(journal *j);
/* Replaces the wall clock (ms since the epoch) used for created/updated
 * times; NULL restores it. For tests. */
void journal_set_clock(journal *j, long long (*now_ms)(void *ud), void *ud);
/* Wall-clock ms since the epoch. */
long long journal_now_ms(void);

const char *journal_state_name(ev_state s);
int journal_state_parse(const char *name, ev_state *out); /* 0 ok, -1 unknown */

/* Durable insert of a new event (state accepted). If id exists: returns 1
 * and, when existing != NULL, fills it (nothing written). 0 inserted, -1
 * error (err set). existing is zeroed first, so freeing it is always safe. */
int journal_accept(journal *j, const char *id, const char *name, const char *data_json, const char *order_key,
                   journal_event *existing, char *err, size_t errlen);
/* Group commit: one transaction (one fsync) for n new events, as
 * journal_accept does each. Per item, result is 0 inserted, 1 the id
 * existed (existing filled; also for a repeat within the batch), -1 the
 * item was refused (empty id or name, no data; err names it) and nothing
 * written for it. Returns 0 when the batch committed (every item's result
 * set), -1 when nothing was written (err set; no existing left to free). */
typedef struct journal_new {
    const char *id, *name, *data_json, *order_key; /* in; order_key may be NULL */
    int result;                                    /* out */
    journal_event existing;                        /* out when result == 1: free it */
} journal_new;
int journal_accept_many(journal *j, journal_new *items, int n, char *err, size_t errlen);

/* 0 found (out filled), 1 not found, -1 error (out zeroed unless found). */
int journal_get(journal *j, const char *id, journal_event *out);
void journal_event_free(journal_event *e);               /* frees the strings, not e */
void journal_events_free(journal_event *list, int n);    /* frees the strings and the array */

/* Events not finished (accepted, running, retrying), in seq order, at most
 * limit (<= 0: all). Retrying ones whose next_attempt_ms is in the future
 * are included: the caller decides. *out is NULL when *n is 0. 0 or -1. */
int journal_pending(journal *j, int limit, journal_event **out, int *n);

/* Transitions: 0 done, 1 no such id, -1 error. Each stamps updated_ms. */
int journal_mark_running(journal *j, const char *id);   /* attempts += 1, state running, next_attempt 0 */
/* state done, results kept, last_error cleared */
int journal_mark_done(journal *j, const char *id, const char *results_json);
/* state retrying until next_attempt_ms */
int journal_mark_retry(journal *j, const char *id, long long next_attempt_ms, const char *error,
                       const char *results_json);
/* The worker process running the event died. charged (it ran alone, so the
 * death is its doing): one more worker death, a retry at next_attempt_ms with
 * error. Not charged (a bystander): the attempt is given back and it runs
 * again at once. Either way its next run is alone in its worker. */
int journal_mark_lost(journal *j, const char *id, int charged, long long next_attempt_ms, const char *error);
int journal_mark_dead(journal *j, const char *id, const char *error, const char *results_json);

/* After a crash: running -> accepted; returns how many, -1 error. */
int journal_recover(journal *j);
/* dead (or retrying) -> accepted, next_attempt 0, attempts 0 (last_error
 * and results kept for the record); 0 ok, 1 not found or not retryable, -1
 * error. */
int journal_retry(journal *j, const char *id);
/* Every dead -> accepted as above; returns how many, -1 error. */
int journal_retry_dead(journal *j);
/* Deletes done and dead events last updated before older_than_ms (wall
 * clock); returns how many, -1 error. */
int journal_purge(journal *j, long long older_than_ms);
/* Retention, a chunk at a time (one short transaction): deletes at most chunk
 * finished events, those last updated before older_than_ms (0: none by age)
 * first, then the oldest beyond keep of them (0: no cap). Returns how many,
 * -1 error. */
int journal_retain(journal *j, long long older_than_ms, long long keep, int chunk);
/* counts[state] for every ev_state; 0 or -1. */
int journal_counts(journal *j, long long counts[5]);
/* Newest first (by seq), state -1 = any, at most limit (<= 0: all). 0 or -1. */
int journal_list(journal *j, int state, int limit, journal_event **out, int *n);

/* ---- events run outside the service (wixr fire) ---- */

/* One finished run of an event, to record. */
typedef struct journal_run {
    const char *id, *name, *data_json;           /* in */
    int ok;                                      /* in: 1 done, 0 dead */
    const char *error;                           /* in: the last error (NULL: none) */
    const char *results_json;                    /* in: the run's report (NULL: none) */
    int result;                                  /* out: 0 recorded, 1 left alone (see below) */
} journal_run;
/* Records n finished runs in one transaction (or in the caller's, after
 * journal_begin). A new id is inserted as done or dead with attempts 1; an id
 * that is done or dead is updated (state, error, results, data; attempts + 1);
 * an id that is pending (accepted, running, retrying: the service holds it) is
 * left alone (result 1). A pending state is never written, so a service
 * running on the same file never picks these events up. With only_new, every
 * existing id is left alone (an import of ids recorded elsewhere). 0 (every
 * item's result set), or -1 with nothing written and err set. */
int journal_record_runs(journal *j, journal_run *runs, int n, int only_new, char *err, size_t errlen);

/* The state of each of n ids, in one read transaction (in WAL mode a reader
 * never blocks a writer): states[i] is an ev_state, or -1 when ids[i] is NULL
 * or not in the journal. For deduplicating a batch without a transaction per
 * look-up. 0, or -1 (err set). */
int journal_states(journal *j, const char *const *ids, int n, int *states, char *err, size_t errlen);

#endif
