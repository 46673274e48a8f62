/*
 * Unit tests of the event journal: accept and duplicates (one by one and
 * in a group commit), every transition, pending order, crash recovery,
 * retry, purge by age, counts, list, the upgrade of a format-1 file, two
 * handles on one file (one writing while the other reads), reopening, and
 * a child process killed with
 * SIGKILL while it accepts events (nothing it reported is lost, the file
 * passes integrity_check); the id rule (bidi controls refused), file modes
 * (0600), and a file overwritten or truncated under an open handle.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "journal/journal.h"
#include "journal/journal_json.h"

static char dir[] = "/tmp/wixr-journal-XXXXXX";
static int db_counter;

/* A fresh journal file path in the test folder. */
static void new_path(char *out, size_t n)
{
    snprintf(out, n, "%s/j%d.db", dir, ++db_counter);
}

static journal *open_j(const char *path)
{
    char err[512];
    journal *j = journal_open(path, err, sizeof err);
    if (!j)
        fprintf(stderr, "journal_open: %s\n", err);
    return j;
}

static int accept_ev(journal *j, const char *id, const char *name, const char *data)
{
    char err[512];
    int rc = journal_accept(j, id, name, data, NULL, NULL, err, sizeof err);
    if (rc < 0)
        fprintf(stderr, "journal_accept %s: %s\n", id, err);
    return rc;
}

static ev_state state_of(journal *j, const char *id)
{
    journal_event e;
    ev_state s = (ev_state)-1;
    if (journal_get(j, id, &e) == 0)
        s = e.state;
    journal_event_free(&e);
    return s;
}

static long long fake_now;
static long long fake_clock(void *ud)
{
    (void)ud;
    return fake_now;
}

static void test_states(void)
{
    for (int i = 0; i < 5; i++) {
        ev_state s;
        CHECK(journal_state_parse(journal_state_name((ev_state)i), &s) == 0 && (int)s == i);
    }
    CHECK_STR(journal_state_name(EV_RETRYING), "retrying");
    ev_state s = EV_DONE;
    CHECK(journal_state_parse("failed", &s) == -1);
    CHECK(journal_state_parse(NULL, &s) == -1);
    CHECK(s == EV_DONE);
}

static void test_accept_and_duplicate(void)
{
    char path[256], err[512];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    long long before = journal_now_ms();
    CHECK_INT(journal_accept(j, "ord-1", "order.created", "{\"a\":1}", "sub-42", NULL, err, sizeof err), 0);
    CHECK_INT(journal_accept(j, "ord-2", "order.created", "{}", NULL, NULL, err, sizeof err), 0);

    journal_event e;
    CHECK_INT(journal_get(j, "ord-1", &e), 0);
    CHECK_STR(e.id, "ord-1");
    CHECK_STR(e.name, "order.created");
    CHECK_STR(e.data_json, "{\"a\":1}");
    CHECK_STR(e.order_key, "sub-42");
    CHECK(e.state == EV_ACCEPTED);
    CHECK_INT(e.attempts, 0);
    CHECK_INT(e.next_attempt_ms, 0);
    CHECK(e.created_ms >= before && e.created_ms <= journal_now_ms());
    CHECK_INT(e.updated_ms, e.created_ms);
    CHECK(e.last_error == NULL && e.results_json == NULL);
    long long seq1 = e.seq;
    journal_event_free(&e);
    CHECK_INT(journal_get(j, "ord-2", &e), 0);
    CHECK(e.order_key == NULL);
    CHECK(e.seq > seq1);
    journal_event_free(&e);

    /* a duplicate writes nothing and hands back what is there */
    journal_event ex;
    CHECK_INT(journal_accept(j, "ord-1", "other", "{\"b\":2}", NULL, &ex, err, sizeof err), 1);
    CHECK_STR(ex.name, "order.created");
    CHECK_STR(ex.data_json, "{\"a\":1}");
    CHECK_STR(ex.order_key, "sub-42");
    CHECK_INT(ex.seq, seq1);
    journal_event_free(&ex);
    CHECK_INT(journal_accept(j, "ord-1", "other", "{}", NULL, NULL, err, sizeof err), 1);
    CHECK_INT(journal_accept(j, "ord-3", "x", "{}", NULL, &ex, err, sizeof err), 0);
    CHECK(ex.id == NULL); /* zeroed when nothing was found */
    journal_event_free(&ex);

    /* bad arguments */
    err[0] = 0;
    CHECK_INT(journal_accept(j, "", "x", "{}", NULL, NULL, err, sizeof err), -1);
    CHECK(err[0] != 0);
    CHECK_INT(journal_accept(j, "id", NULL, "{}", NULL, NULL, err, sizeof err), -1);
    CHECK_INT(journal_accept(j, "id", "x", NULL, NULL, NULL, err, sizeof err), -1);

    CHECK_INT(journal_get(j, "nope", &e), 1);
    CHECK(e.id == NULL);
    journal_event_free(&e);
    long long c[5];
    CHECK_INT(journal_counts(j, c), 0);
    CHECK_INT(c[EV_ACCEPTED], 3);
    journal_close(j);
}

static void test_accept_many(void)
{
    char path[256], err[512];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    CHECK_INT(journal_accept(j, "old", "n", "{\"v\":0}", NULL, NULL, err, sizeof err), 0);
    journal_new items[5] = {
        {.id = "m1", .name = "n", .data_json = "{\"v\":1}", .order_key = "k"},
        {.id = "old", .name = "n", .data_json = "{\"v\":9}"},
        {.id = "m2", .name = "n", .data_json = "{\"v\":2}"},
        {.id = "m1", .name = "n", .data_json = "{\"v\":8}"}, /* repeat within the batch */
        {.id = "", .name = "n", .data_json = "{}"},        /* refused alone */
    };
    CHECK_INT(journal_accept_many(j, items, 5, err, sizeof err), 0);
    CHECK_INT(items[0].result, 0);
    CHECK_INT(items[1].result, 1);
    CHECK_STR(items[1].existing.data_json, "{\"v\":0}");
    CHECK_INT(items[2].result, 0);
    CHECK_INT(items[3].result, 1);
    CHECK_STR(items[3].existing.data_json, "{\"v\":1}");
    CHECK_STR(items[3].existing.order_key, "k");
    CHECK_INT(items[4].result, -1);
    CHECK(items[0].existing.id == NULL);
    for (int i = 0; i < 5; i++)
        journal_event_free(&items[i].existing);
    journal_event e;
    CHECK_INT(journal_get(j, "m2", &e), 0);
    CHECK_STR(e.data_json, "{\"v\":2}");
    CHECK(e.state == EV_ACCEPTED);
    journal_event_free(&e);
    journal_event *list;
    int n;
    CHECK_INT(journal_pending(j, 0, &list, &n), 0);
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK_STR(list[0].id, "old");
        CHECK_STR(list[1].id, "m1");
        CHECK_STR(list[2].id, "m2");
    }
    journal_events_free(list, n);
    CHECK_INT(journal_accept_many(j, NULL, 0, err, sizeof err), 0);
    journal_close(j);
}

static void test_transitions(void)
{
    char path[256];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    journal_set_clock(j, fake_clock, NULL);
    fake_now = 1000;
    CHECK_INT(accept_ev(j, "e1", "n", "{}"), 0);
    journal_event e;

    fake_now = 2000;
    CHECK_INT(journal_mark_running(j, "e1"), 0);
    CHECK_INT(journal_get(j, "e1", &e), 0);
    CHECK(e.state == EV_RUNNING);
    CHECK_INT(e.attempts, 1);
    CHECK_INT(e.created_ms, 1000);
    CHECK_INT(e.updated_ms, 2000);
    journal_event_free(&e);

    fake_now = 3000;
    CHECK_INT(journal_mark_retry(j, "e1", 9000, "hook route: 503 UNAVAILABLE", "[{\"hook\":\"route\",\"ok\":false}]"), 0);
    CHECK_INT(journal_get(j, "e1", &e), 0);
    CHECK(e.state == EV_RETRYING);
    CHECK_INT(e.attempts, 1);
    CHECK_INT(e.next_attempt_ms, 9000);
    CHECK_STR(e.last_error, "hook route: 503 UNAVAILABLE");
    CHECK_STR(e.results_json, "[{\"hook\":\"route\",\"ok\":false}]");
    CHECK_INT(e.updated_ms, 3000);
    journal_event_free(&e);

    fake_now = 9000;
    CHECK_INT(journal_mark_running(j, "e1"), 0);
    CHECK_INT(journal_get(j, "e1", &e), 0);
    CHECK(e.state == EV_RUNNING);
    CHECK_INT(e.attempts, 2);
    CHECK_INT(e.next_attempt_ms, 0);
    CHECK_STR(e.last_error, "hook route: 503 UNAVAILABLE"); /* kept while it runs */
    journal_event_free(&e);

    fake_now = 9500;
    CHECK_INT(journal_mark_dead(j, "e1", "gave up after 2 attempts", "[{\"hook\":\"route\",\"ok\":false,\"n\":2}]"), 0);
    CHECK_INT(journal_get(j, "e1", &e), 0);
    CHECK(e.state == EV_DEAD);
    CHECK_INT(e.attempts, 2);
    CHECK_STR(e.last_error, "gave up after 2 attempts");
    CHECK_STR(e.results_json, "[{\"hook\":\"route\",\"ok\":false,\"n\":2}]");
    journal_event_free(&e);

    CHECK_INT(journal_retry(j, "e1"), 0);
    CHECK_INT(journal_get(j, "e1", &e), 0);
    CHECK(e.state == EV_ACCEPTED);
    CHECK_INT(e.attempts, 0);
    CHECK_INT(e.next_attempt_ms, 0);
    CHECK_STR(e.last_error, "gave up after 2 attempts"); /* kept for the record */
    journal_event_free(&e);

    CHECK_INT(journal_mark_running(j, "e1"), 0);
    fake_now = 10000;
    CHECK_INT(journal_mark_done(j, "e1", "[{\"hook\":\"route\",\"ok\":true}]"), 0);
    CHECK_INT(journal_get(j, "e1", &e), 0);
    CHECK(e.state == EV_DONE);
    CHECK_INT(e.attempts, 1);
    CHECK(e.last_error == NULL);
    CHECK_STR(e.results_json, "[{\"hook\":\"route\",\"ok\":true}]");
    CHECK_INT(e.updated_ms, 10000);
    journal_event_free(&e);
    CHECK_INT(journal_retry(j, "e1"), 1); /* done is not retryable */
    CHECK(state_of(j, "e1") == EV_DONE);

    /* mark_done with no results stores none */
    CHECK_INT(accept_ev(j, "e2", "n", "{}"), 0);
    CHECK_INT(journal_mark_done(j, "e2", NULL), 0);
    CHECK_INT(journal_get(j, "e2", &e), 0);
    CHECK(e.results_json == NULL && e.state == EV_DONE && e.attempts == 0);
    journal_event_free(&e);

    /* unknown ids */
    CHECK_INT(journal_mark_running(j, "zz"), 1);
    CHECK_INT(journal_mark_done(j, "zz", NULL), 1);
    CHECK_INT(journal_mark_retry(j, "zz", 1, "x", NULL), 1);
    CHECK_INT(journal_mark_dead(j, "zz", "x", NULL), 1);
    CHECK_INT(journal_retry(j, "zz"), 1);
    journal_close(j);
}

static void test_pending_recover_retry(void)
{
    char path[256];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    const char *ids[] = {"a", "b", "c", "d", "e", "f"};
    for (int i = 0; i < 6; i++)
        CHECK_INT(accept_ev(j, ids[i], "n", "{}"), 0);
    journal_mark_running(j, "b");
    journal_mark_done(j, "b", "[]");
    journal_mark_running(j, "c");
    journal_mark_dead(j, "c", "boom", NULL);
    journal_mark_running(j, "d");
    journal_mark_retry(j, "d", journal_now_ms() + 3600000, "later", NULL); /* in the future: still listed */
    journal_mark_running(j, "e");                                         /* running: listed */
    journal_mark_running(j, "f");
    journal_mark_dead(j, "f", "boom", NULL);

    journal_event *list;
    int n;
    CHECK_INT(journal_pending(j, 0, &list, &n), 0);
    CHECK_INT(n, 3);
    if (n == 3) {
        CHECK_STR(list[0].id, "a");
        CHECK_STR(list[1].id, "d");
        CHECK_STR(list[2].id, "e");
        CHECK(list[0].seq < list[1].seq && list[1].seq < list[2].seq);
        CHECK(list[1].state == EV_RETRYING && list[2].state == EV_RUNNING);
    }
    journal_events_free(list, n);
    CHECK_INT(journal_pending(j, 2, &list, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2)
        CHECK_STR(list[1].id, "d");
    journal_events_free(list, n);

    /* recover: running -> accepted, attempts kept */
    journal_mark_running(j, "a");
    CHECK_INT(journal_recover(j), 2);
    CHECK(state_of(j, "a") == EV_ACCEPTED && state_of(j, "e") == EV_ACCEPTED);
    journal_event e;
    CHECK_INT(journal_get(j, "e", &e), 0);
    CHECK_INT(e.attempts, 1);
    journal_event_free(&e);
    CHECK_INT(journal_recover(j), 0);

    /* retry: retrying and dead are retryable, accepted is not */
    CHECK_INT(journal_retry(j, "d"), 0);
    CHECK(state_of(j, "d") == EV_ACCEPTED);
    CHECK_INT(journal_retry(j, "d"), 1);
    CHECK_INT(journal_retry(j, "b"), 1);
    CHECK_INT(journal_retry_dead(j), 2);
    CHECK(state_of(j, "c") == EV_ACCEPTED && state_of(j, "f") == EV_ACCEPTED);
    CHECK_INT(journal_get(j, "f", &e), 0);
    CHECK_INT(e.attempts, 0);
    journal_event_free(&e);
    CHECK_INT(journal_retry_dead(j), 0);

    CHECK_INT(journal_pending(j, -1, &list, &n), 0);
    CHECK_INT(n, 5); /* everything but b, in seq order */
    for (int i = 1; i < n; i++)
        CHECK(list[i - 1].seq < list[i].seq);
    journal_events_free(list, n);
    journal_close(j);
}

static void test_purge_counts_list(void)
{
    char path[256];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    journal_set_clock(j, fake_clock, NULL);
    char id[32];
    /* e0..e9 at t = 1000..10000; even ones done, 3 and 9 dead, 5 retrying, the rest accepted */
    for (int i = 0; i < 10; i++) {
        fake_now = 1000 * (i + 1);
        snprintf(id, sizeof id, "e%d", i);
        CHECK_INT(accept_ev(j, id, i % 2 ? "odd" : "even", "{}"), 0);
        if (i % 2 == 0) {
            journal_mark_running(j, id);
            journal_mark_done(j, id, "[]");
        } else if (i == 3 || i == 9) {
            journal_mark_running(j, id);
            journal_mark_dead(j, id, "boom", "[]");
        } else if (i == 5) {
            journal_mark_running(j, id);
            journal_mark_retry(j, id, 99999, "soon", NULL);
        }
    }
    long long c[5];
    CHECK_INT(journal_counts(j, c), 0);
    CHECK_INT(c[EV_ACCEPTED], 2);
    CHECK_INT(c[EV_RUNNING], 0);
    CHECK_INT(c[EV_DONE], 5);
    CHECK_INT(c[EV_RETRYING], 1);
    CHECK_INT(c[EV_DEAD], 2);

    journal_event *list;
    int n;
    CHECK_INT(journal_list(j, -1, 0, &list, &n), 0);
    CHECK_INT(n, 10);
    if (n == 10) {
        CHECK_STR(list[0].id, "e9");
        CHECK_STR(list[9].id, "e0");
    }
    journal_events_free(list, n);
    CHECK_INT(journal_list(j, EV_DONE, 2, &list, &n), 0);
    CHECK_INT(n, 2);
    if (n == 2) {
        CHECK_STR(list[0].id, "e8");
        CHECK_STR(list[1].id, "e6");
        CHECK(list[0].state == EV_DONE);
    }
    journal_events_free(list, n);
    CHECK_INT(journal_list(j, EV_RUNNING, 10, &list, &n), 0);
    CHECK(n == 0 && list == NULL);
    journal_events_free(list, n);
    CHECK_INT(journal_list(j, 7, 10, &list, &n), -1);

    /* purge: only done and dead, only those updated before the cut */
    CHECK_INT(journal_purge(j, 1000), 0);    /* e0 was updated at 1000: not before */
    CHECK_INT(journal_purge(j, 4001), 3);    /* e0 (1000), e2 (3000), e3 (4000, dead) */
    CHECK_INT(journal_get(j, "e0", &(journal_event){0}), 1);
    CHECK_INT(journal_counts(j, c), 0);
    CHECK_INT(c[EV_DONE] + c[EV_DEAD], 4);
    CHECK_INT(journal_purge(j, 1LL << 50), 4);
    CHECK_INT(journal_counts(j, c), 0);
    CHECK_INT(c[EV_ACCEPTED], 2);
    CHECK_INT(c[EV_RETRYING], 1);
    CHECK_INT(c[EV_DONE] + c[EV_DEAD], 0);

    /* seq keeps growing after a purge */
    CHECK_INT(accept_ev(j, "later", "n", "{}"), 0);
    CHECK_INT(journal_list(j, -1, 1, &list, &n), 0);
    CHECK(n == 1 && list[0].seq == 11);
    journal_events_free(list, n);
    journal_close(j);
}

static void test_reopen(void)
{
    char path[256];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    char err[256];
    CHECK_INT(journal_accept(j, "r1", "order.created", "{\"x\":\"\\u00e9\"}", "k1", NULL, err, sizeof err), 0);
    CHECK_INT(accept_ev(j, "r2", "order.cancelled", "{}"), 0);
    journal_mark_running(j, "r2");
    journal_mark_retry(j, "r2", 123456789, "oops \"quoted\"\nsecond line", "[1,2]");
    journal_event before[2];
    CHECK_INT(journal_get(j, "r1", &before[0]), 0);
    CHECK_INT(journal_get(j, "r2", &before[1]), 0);
    journal_close(j);

    j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    for (int i = 0; i < 2; i++) {
        journal_event e;
        CHECK_INT(journal_get(j, before[i].id, &e), 0);
        CHECK_INT(e.seq, before[i].seq);
        CHECK_STR(e.name, before[i].name);
        CHECK_STR(e.data_json, before[i].data_json);
        CHECK((e.order_key == NULL) == (before[i].order_key == NULL));
        CHECK(e.state == before[i].state);
        CHECK_INT(e.attempts, before[i].attempts);
        CHECK_INT(e.next_attempt_ms, before[i].next_attempt_ms);
        CHECK_INT(e.created_ms, before[i].created_ms);
        CHECK_INT(e.updated_ms, before[i].updated_ms);
        CHECK((e.last_error == NULL) == (before[i].last_error == NULL));
        journal_event_free(&e);
        journal_event_free(&before[i]);
    }
    journal_event e;
    CHECK_INT(journal_get(j, "r2", &e), 0);
    CHECK_STR(e.last_error, "oops \"quoted\"\nsecond line");
    CHECK_STR(e.results_json, "[1,2]");
    CHECK_INT(e.next_attempt_ms, 123456789);
    journal_event_free(&e);
    journal_close(j);

    /* a folder that does not exist is an error, not a crash */
    char bad[300];
    snprintf(bad, sizeof bad, "%s/missing/journal.db", dir);
    CHECK(journal_open(bad, err, sizeof err) == NULL);
    CHECK(strstr(err, bad) != NULL);
}

/* A format-1 journal (IN lists in the CHECK and the partial indexes) is
 * upgraded in place when opened: same rows, same seq numbers, the sequence
 * kept past purged rows, and the pending/finished indexes in use again. */
static void test_upgrade_from_format_1(void)
{
    char path[256];
    new_path(path, sizeof path);
    sqlite3 *db;
    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    const char *v1 =
        "CREATE TABLE events(seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, name TEXT NOT NULL,"
        " data TEXT NOT NULL, order_key TEXT,"
        " state TEXT NOT NULL CHECK(state IN ('accepted','running','done','retrying','dead')),"
        " attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL DEFAULT 0,"
        " created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL, last_error TEXT, results TEXT);"
        "CREATE INDEX events_state_seq ON events(state, seq);"
        "CREATE INDEX events_pending ON events(seq) WHERE state IN ('accepted','running','retrying');"
        "CREATE INDEX events_finished ON events(updated_ms) WHERE state IN ('done','dead');"
        "INSERT INTO events VALUES(3, 'u1', 'order.created', '{\"a\":1}', 'k=1', 'retrying', 2, 99, 10, 20, 'boom', '[]');"
        "INSERT INTO events VALUES(5, 'u2', 'order.created', '{}', NULL, 'done', 1, 0, 11, 21, NULL, '[1]');"
        "INSERT INTO events VALUES(9, 'u3', 'x', '{}', NULL, 'accepted', 0, 0, 12, 22, NULL, NULL);"
        "DELETE FROM events WHERE seq = 9;" /* the sequence stays at 9 */
        "PRAGMA user_version = 1;";
    char *msg = NULL;
    CHECK_INT(sqlite3_exec(db, v1, NULL, NULL, &msg), SQLITE_OK);
    sqlite3_free(msg);
    sqlite3_close(db);

    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    journal_event e;
    CHECK_INT(journal_get(j, "u1", &e), 0);
    CHECK_INT(e.seq, 3);
    CHECK(e.state == EV_RETRYING);
    CHECK_STR(e.order_key, "k=1");
    CHECK_STR(e.last_error, "boom");
    CHECK_INT(e.attempts, 2);
    CHECK_INT(e.next_attempt_ms, 99);
    journal_event_free(&e);
    CHECK(state_of(j, "u2") == EV_DONE);
    CHECK_INT(accept_ev(j, "u4", "n", "{}"), 0);
    CHECK_INT(journal_get(j, "u4", &e), 0);
    CHECK(e.seq > 9);
    journal_event_free(&e);
    journal_event *list = NULL;
    int n = 0;
    CHECK_INT(journal_pending(j, 10, &list, &n), 0);
    CHECK_INT(n, 2); /* u1 (retrying) and u4 */
    if (n == 2) {
        CHECK_STR(list[0].id, "u1");
        CHECK_STR(list[1].id, "u4");
    }
    journal_events_free(list, n);
    /* the counts by state were taken at the upgrade, and kept since */
    long long c[5];
    CHECK_INT(journal_counts(j, c), 0);
    CHECK(c[EV_RETRYING] == 1 && c[EV_DONE] == 1 && c[EV_ACCEPTED] == 1 && c[EV_RUNNING] == 0 && c[EV_DEAD] == 0);
    journal_close(j);

    CHECK_INT(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *st;
    CHECK_INT(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, NULL), SQLITE_OK);
    CHECK_INT(sqlite3_step(st), SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(st, 0), 4);
    sqlite3_finalize(st);
    CHECK_INT(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master WHERE sql LIKE '% IN (%'", -1, &st, NULL),
              SQLITE_OK);
    CHECK_INT(sqlite3_step(st), SQLITE_ROW);
    CHECK_INT(sqlite3_column_int(st, 0), 0);
    sqlite3_finalize(st);
    /* a bad state is still refused */
    CHECK(sqlite3_exec(db, "UPDATE events SET state = 'lost' WHERE id = 'u1'", NULL, NULL, NULL) == SQLITE_CONSTRAINT);
    sqlite3_close(db);
}

/* ---- two handles on one file ---- */

#define WRITER_EVENTS 150

typedef struct writer_arg {
    journal *j;
    const char *prefix;
    int errors;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *a = p;
    char id[64], err[256];
    for (int i = 0; i < WRITER_EVENTS; i++) {
        snprintf(id, sizeof id, "%s-%d", a->prefix, i);
        if (journal_accept(a->j, id, "n", "{\"k\":1}", NULL, NULL, err, sizeof err) != 0)
            a->errors++;
        if (i % 3 == 0 && (journal_mark_running(a->j, id) != 0 || journal_mark_done(a->j, id, "[]") != 0))
            a->errors++;
    }
    return NULL;
}

static void test_two_handles(void)
{
    char path[256];
    new_path(path, sizeof path);
    journal *a = open_j(path), *b = open_j(path);
    CHECK(a != NULL && b != NULL);
    if (!a || !b) {
        journal_close(a);
        journal_close(b);
        return;
    }
    /* what one handle writes, the other sees at once */
    CHECK_INT(accept_ev(a, "x", "n", "{}"), 0);
    CHECK(state_of(b, "x") == EV_ACCEPTED);
    CHECK_INT(journal_mark_running(b, "x"), 0);
    CHECK(state_of(a, "x") == EV_RUNNING);
    char err[256];
    CHECK_INT(journal_accept(b, "x", "n", "{}", NULL, NULL, err, sizeof err), 1);

    /* a writes in its thread while b reads in this one; then both write at once */
    writer_arg wa = {.j = a, .prefix = "a"};
    pthread_t t;
    CHECK(pthread_create(&t, NULL, writer, &wa) == 0);
    int read_errors = 0, reads = 0;
    long long last_total = 0, c[5];
    int monotonic = 1;
    for (;;) {
        journal_event *list;
        int n;
        if (journal_counts(b, c) != 0 || journal_pending(b, 50, &list, &n) != 0) {
            read_errors++;
            break;
        }
        journal_events_free(list, n);
        long long total = c[0] + c[1] + c[2] + c[3] + c[4];
        if (total < last_total)
            monotonic = 0;
        last_total = total;
        reads++;
        if (total >= WRITER_EVENTS + 1)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    pthread_join(t, NULL);
    CHECK_INT(wa.errors, 0);
    CHECK_INT(read_errors, 0);
    CHECK(monotonic);
    CHECK(reads > 1);

    writer_arg w1 = {.j = a, .prefix = "p"}, w2 = {.j = b, .prefix = "q"};
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, writer, &w1) == 0);
    CHECK(pthread_create(&t2, NULL, writer, &w2) == 0);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    CHECK_INT(w1.errors, 0);
    CHECK_INT(w2.errors, 0);
    CHECK_INT(journal_counts(a, c), 0);
    long long done = (WRITER_EVENTS + 2) / 3;
    CHECK_INT(c[EV_DONE], 3 * done);
    CHECK_INT(c[EV_ACCEPTED], 3 * (WRITER_EVENTS - done));
    CHECK_INT(c[EV_RUNNING], 1);
    journal_close(a);
    journal_close(b);
}

/* ---- crash safety ---- */

#define PAD 3000 /* each event spans pages, so a kill can land mid-write */

static void crash_data(char *out, size_t n, int round, int k)
{
    int len = snprintf(out, n, "{\"round\":%d,\"k\":%d,\"pad\":\"", round, k);
    for (int i = 0; i < PAD && (size_t)len + 3 < n; i++)
        out[len++] = (char)('a' + (k + i) % 26);
    snprintf(out + len, n - (size_t)len, "\"}");
}

/* The child: accepts events until killed; reports each id on fd only after
 * journal_accept returned 0, then marks every other one running and done. */
static void crash_child(const char *path, int round, int fd)
{
    char err[256], id[64];
    static char data[PAD + 128];
    journal *j = journal_open(path, err, sizeof err);
    if (!j)
        _exit(3);
    for (int k = 0;; k++) {
        snprintf(id, sizeof id, "crash-%d-%d", round, k);
        crash_data(data, sizeof data, round, k);
        if (journal_accept(j, id, "crash.test", data, id, NULL, err, sizeof err) != 0)
            _exit(4);
        char line[80];
        int len = snprintf(line, sizeof line, "%s\n", id);
        if (write(fd, line, (size_t)len) != len)
            _exit(5);
        if (k % 2 && (journal_mark_running(j, id) != 0 || journal_mark_done(j, id, "[{\"ok\":true}]") != 0))
            _exit(6);
    }
}

static int integrity_ok(const char *path)
{
    sqlite3 *db;
    int ok = 0;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK) {
        sqlite3_stmt *s;
        if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &s, NULL) == SQLITE_OK) {
            ok = sqlite3_step(s) == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(s, 0), "ok") &&
                 sqlite3_step(s) == SQLITE_DONE;
            sqlite3_finalize(s);
        }
    }
    sqlite3_close(db);
    return ok;
}

static void test_crash(void)
{
    char path[256];
    new_path(path, sizeof path);
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    int reported_total = 0, missing = 0, bad = 0;
    static char want[PAD + 128];
    for (int round = 0; round < 3; round++) {
        int p[2];
        CHECK(pipe(p) == 0);
        pid_t pid = fork();
        if (pid == 0) {
            close(p[0]);
            crash_child(path, round, p[1]);
            _exit(0);
        }
        close(p[1]);
        /* read reports until a random number arrived, then kill mid-stride */
        int target = 8 + rand() % 20, got = 0;
        char buf[8192];
        size_t have = 0;
        char **ids = NULL;
        int nids = 0;
        int killed = 0;
        for (;;) {
            ssize_t r = read(p[0], buf + have, sizeof buf - have - 1);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            have += (size_t)r;
            char *start = buf, *nl;
            while ((nl = memchr(start, '\n', (size_t)(buf + have - start)))) {
                *nl = 0;
                ids = realloc(ids, (size_t)(nids + 1) * sizeof *ids);
                ids[nids++] = strdup(start);
                got++;
                start = nl + 1;
            }
            have = (size_t)(buf + have - start);
            memmove(buf, start, have);
            if (!killed && got >= target) {
                struct timespec ts = {0, (long)(rand() % 3000) * 1000};
                nanosleep(&ts, NULL);
                kill(pid, SIGKILL);
                killed = 1;
            }
        }
        int status;
        waitpid(pid, &status, 0);
        close(p[0]);
        CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
        CHECK_INT(have, 0); /* no half line: each report is one atomic write */

        CHECK(integrity_ok(path));
        journal *j = open_j(path);
        CHECK(j != NULL);
        if (!j)
            break;
        CHECK(journal_recover(j) >= 0);
        for (int i = 0; i < nids; i++) {
            int r, k;
            sscanf(ids[i], "crash-%d-%d", &r, &k);
            crash_data(want, sizeof want, r, k);
            journal_event e;
            if (journal_get(j, ids[i], &e) != 0) {
                missing++;
                fprintf(stderr, "lost after SIGKILL: %s\n", ids[i]);
            } else if (strcmp(e.data_json, want) || strcmp(e.name, "crash.test") || !e.order_key ||
                       strcmp(e.order_key, ids[i]) || (e.state != EV_ACCEPTED && e.state != EV_DONE)) {
                bad++;
                fprintf(stderr, "damaged after SIGKILL: %s (state %s)\n", ids[i], journal_state_name(e.state));
            }
            journal_event_free(&e);
            free(ids[i]);
        }
        free(ids);
        reported_total += nids;
        long long c[5];
        CHECK_INT(journal_counts(j, c), 0);
        CHECK(c[EV_ACCEPTED] + c[EV_DONE] >= reported_total); /* one more may have committed unreported */
        CHECK_INT(c[EV_RUNNING] + c[EV_RETRYING] + c[EV_DEAD], 0);
        journal_close(j);
        CHECK(integrity_ok(path));
    }
    CHECK_INT(missing, 0);
    CHECK_INT(bad, 0);
    CHECK(reported_total >= 24);
}

/* journal_event_json: one JSON object with the same keys in the same order
 * for every event, whatever its strings hold (quotes, backslashes, control
 * characters, bytes that are not UTF-8, 10 KB), and stored texts that are
 * not JSON written as strings. */
static void test_render(void)
{
    static const char *const keys[] = {"seq", "id", "name", "state", "attempts", "order_key", "created",
                                       "created_ms", "updated", "updated_ms", "next_attempt", "next_attempt_ms",
                                       "last_error", "data", "result"};
    const size_t nkeys = sizeof keys / sizeof keys[0];
    char path[256];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    char *big = malloc(10 * 1024 + 1);
    for (int i = 0; i < 10 * 1024; i++)
        big[i] = "\"\\\x01\xff"[i % 4];
    big[10 * 1024] = 0;
    const char *ids[] = {"x\",\"forged\":\"1", "back\\slash", "ctl\x01\x1f\x7f\n", "bad\xff\xc3(", big, "plain"};
    const int nids = (int)(sizeof ids / sizeof ids[0]);
    char err[256];
    for (int i = 0; i < nids; i++) {
        const char *name = i == 4 ? big : ids[(i + 1) % nids];
        CHECK_INT(journal_accept(j, ids[i], name, i == 3 ? "{not json" : "{\"a\":\"\\u0000\\\"\"}",
                                 i == 2 ? ids[i] : NULL, NULL, err, sizeof err), 0);
    }
    CHECK_INT(journal_mark_running(j, ids[0]), 0);
    CHECK_INT(journal_mark_dead(j, ids[0], big, "[\"\\u0001\"]"), 0);
    CHECK_INT(journal_mark_running(j, ids[1]), 0);
    CHECK_INT(journal_mark_retry(j, ids[1], journal_now_ms() + 60000, "x\"\n\xff", "{\"ok\":false} trailing"), 0);
    CHECK_INT(journal_mark_running(j, ids[5]), 0);
    CHECK_INT(journal_mark_done(j, ids[5], "{\"ok\":true}"), 0);
    for (int i = 0; i < nids; i++) {
        journal_event e;
        CHECK_INT(journal_get(j, ids[i], &e), 0);
        buf_t b;
        buf_init(&b, 0);
        journal_event_json(&b, &e);
        CHECK(b.len > 0 && !strchr(buf_cstr(&b), '\n'));
        json_doc *d;
        json_error je;
        json_value *v = json_parse(b.data, b.len, 0, &d, &je);
        CHECK(v && v->type == JSON_OBJECT);
        if (v) {
            CHECK_INT(v->u.kids.n, nkeys);
            size_t k = 0;
            for (json_value *m = v->u.kids.head; m && k < nkeys; m = m->next, k++)
                CHECK_STR(m->key, keys[k]);
            json_value *id = json_get(v, "id");
            CHECK(id && id->type == JSON_STRING);
            if (i == 0 || i == 1 || i == 5)
                CHECK(id && id->u.str.len == strlen(ids[i]) && !memcmp(id->u.str.s, ids[i], strlen(ids[i])));
            if (i == 3) /* not UTF-8: each bad byte is U+FFFD */
                CHECK_STR(id ? id->u.str.s : NULL, "bad\xef\xbf\xbd\xef\xbf\xbd(");
            json_value *data = json_get(v, "data"), *res = json_get(v, "result");
            CHECK(data && data->type == (i == 3 ? JSON_STRING : JSON_OBJECT));
            CHECK(res && res->type == (i == 0 ? JSON_ARRAY : i == 1 ? JSON_STRING : i == 5 ? JSON_OBJECT : JSON_NULL));
            json_value *na = json_get(v, "next_attempt_ms");
            CHECK(na && na->type == (i == 1 ? JSON_NUMBER : JSON_NULL));
            json_value *le = json_get(v, "last_error");
            CHECK(le && le->type == (i == 0 || i == 1 ? JSON_STRING : JSON_NULL));
            if (i == 0)
                CHECK_INT(le->u.str.len, 10 * 1024 / 4 * 6); /* each 0xff became 3 bytes */
            json_value *ok = json_get(v, "order_key");
            CHECK(ok && ok->type == (i == 2 ? JSON_STRING : JSON_NULL));
        }
        json_doc_free(d);
        buf_free(&b);
        journal_event_free(&e);
    }
    free(big);
    journal_close(j);
}

/* The one id rule of serve's intake and wixr fire: bytes that would make one
 * id look like another (controls, bidi overrides, invalid UTF-8) are refused. */
static void test_valid_id(void)
{
    CHECK(journal_valid_id("order-1", 7));
    CHECK(journal_valid_id("caf\xc3\xa9", 5));                 /* é */
    CHECK(journal_valid_id("a\xe2\x80\x94" "b", 5));           /* an em dash (E2 80 94) is fine */
    CHECK(journal_valid_id("a\xe2\x81\xa0" "b", 5));           /* U+2060, not a bidi control */
    CHECK(!journal_valid_id("", 0));
    CHECK(!journal_valid_id("a\0b", 3));                         /* NUL inside */
    CHECK(!journal_valid_id("a\x7f", 2));
    CHECK(!journal_valid_id("a\xc2\x85", 3));                   /* C1 */
    CHECK(!journal_valid_id("a\xff", 2));                        /* not UTF-8 */
    static const char *const bidi[] = {"\xe2\x80\x8e", "\xe2\x80\x8f", "\xe2\x80\xaa", "\xe2\x80\xab",
                                       "\xe2\x80\xac", "\xe2\x80\xad", "\xe2\x80\xae", "\xe2\x81\xa6",
                                       "\xe2\x81\xa7", "\xe2\x81\xa8", "\xe2\x81\xa9"};
    for (size_t i = 0; i < sizeof bidi / sizeof bidi[0]; i++) {
        char id[16];
        snprintf(id, sizeof id, "ab%scd", bidi[i]);
        CHECK(!journal_valid_id(id, strlen(id)));
    }
    char longest[JOURNAL_ID_MAX + 2];
    memset(longest, 'x', sizeof longest);
    longest[JOURNAL_ID_MAX] = 0;
    CHECK(journal_valid_id(longest, JOURNAL_ID_MAX));
    longest[JOURNAL_ID_MAX] = 'x';
    longest[JOURNAL_ID_MAX + 1] = 0;
    CHECK(!journal_valid_id(longest, JOURNAL_ID_MAX + 1));
}

/* The journal and its -wal and -shm are 0600 whatever the umask. */
static void test_file_modes(void)
{
    char path[600], side[640];
    new_path(path, sizeof path);
    mode_t old = umask(022);
    journal *j = open_j(path);
    umask(old);
    CHECK(j != NULL);
    if (!j)
        return;
    char err[256];
    CHECK_INT(journal_accept(j, "m1", "e", "{}", NULL, NULL, err, sizeof err), 0);
    struct stat st;
    CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
    snprintf(side, sizeof side, "%s-wal", path);
    CHECK(stat(side, &st) == 0 && (st.st_mode & 0777) == 0600);
    snprintf(side, sizeof side, "%s-shm", path);
    CHECK(stat(side, &st) == 0 && (st.st_mode & 0777) == 0600);
    journal_close(j);
}

/* A journal overwritten or truncated under an open handle is seen. */
static void test_check_file(void)
{
    char path[600], err[256];
    new_path(path, sizeof path);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    CHECK_INT(journal_check_file(j, err, sizeof err), 0);
    CHECK_INT(journal_accept(j, "c1", "e", "{}", NULL, NULL, err, sizeof err), 0);
    CHECK_INT(journal_check_file(j, err, sizeof err), 0);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        fwrite("garbage garbage garbage", 1, 23, f);
        fclose(f);
    }
    CHECK_INT(journal_check_file(j, err, sizeof err), -1);
    CHECK(strstr(err, "corrupted") != NULL);
    CHECK(truncate(path, 10) == 0);
    CHECK_INT(journal_check_file(j, err, sizeof err), -1);
    CHECK(strstr(err, "truncated") != NULL);
    journal_close(j);
}

/* What a dispatch may start: accepted, running (the caller skips those it holds) and due
 * events, in seq order, not retries still waiting (their keys are waiting keys); the counts
 * follow every change. */
static void test_runnable_and_counts(void)
{
    char path[300], err[256];
    snprintf(path, sizeof path, "%s/runnable.db", dir);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    const char *ids[] = {"r1", "r2", "r3", "r4", "r5"};
    for (int i = 0; i < 5; i++)
        CHECK_INT(journal_accept(j, ids[i], "ev", "{}", i >= 3 ? "K" : NULL, NULL, err, sizeof err), 0);
    long long now = journal_now_ms();
    CHECK_INT(journal_mark_running(j, "r2"), 0);
    CHECK_INT(journal_mark_running(j, "r3"), 0);
    CHECK_INT(journal_mark_retry(j, "r3", now - 1000, "boom", NULL), 0); /* due */
    CHECK_INT(journal_mark_running(j, "r4"), 0);
    CHECK_INT(journal_mark_retry(j, "r4", now + 60000, "boom", NULL), 0); /* waiting, holds K */
    journal_event *list;
    int n;
    CHECK_INT(journal_runnable(j, now, 10, &list, &n), 0);
    CHECK_INT(n, 4);
    if (n == 4)
        CHECK(!strcmp(list[0].id, "r1") && !strcmp(list[1].id, "r2") && !strcmp(list[2].id, "r3") &&
              !strcmp(list[3].id, "r5"));
    journal_events_free(list, n);
    CHECK_INT(journal_runnable(j, now, 2, &list, &n), 0);
    CHECK(n == 2 && !strcmp(list[0].id, "r1") && !strcmp(list[1].id, "r2"));
    journal_events_free(list, n);
    char **keys;
    CHECK_INT(journal_waiting_keys(j, now, &keys, &n), 0);
    CHECK(n == 1 && !strcmp(keys[0], "K"));
    for (int i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
    long long c[5];
    CHECK_INT(journal_counts(j, c), 0);
    CHECK(c[EV_ACCEPTED] == 2 && c[EV_RUNNING] == 1 && c[EV_RETRYING] == 2 && c[EV_DONE] == 0 && c[EV_DEAD] == 0);
    CHECK_INT(journal_mark_done(j, "r2", "[]"), 0);
    CHECK_INT(journal_mark_dead(j, "r3", "no", NULL), 0);
    CHECK_INT(journal_purge(j, journal_now_ms() + 1000), 2);
    CHECK_INT(journal_counts(j, c), 0);
    CHECK(c[EV_ACCEPTED] == 2 && c[EV_RUNNING] == 0 && c[EV_RETRYING] == 1 && c[EV_DONE] == 0 && c[EV_DEAD] == 0);
    journal_close(j);
}

/* Retention a chunk at a time: by age first, then the oldest beyond a count; unfinished events
 * are never touched. */
static void test_retain(void)
{
    char path[300], err[256];
    snprintf(path, sizeof path, "%s/retain.db", dir);
    journal *j = open_j(path);
    CHECK(j != NULL);
    if (!j)
        return;
    journal_set_clock(j, fake_clock, NULL);
    for (int i = 0; i < 10; i++) {
        char id[16];
        snprintf(id, sizeof id, "t%d", i);
        fake_now = 1000 + i * 100; /* t0 finished at 1000, t9 at 1900 */
        CHECK_INT(journal_accept(j, id, "ev", "{}", NULL, NULL, err, sizeof err), 0);
        CHECK_INT(journal_mark_done(j, id, "[]"), 0);
    }
    CHECK_INT(journal_accept(j, "open", "ev", "{}", NULL, NULL, err, sizeof err), 0); /* never purged */
    CHECK_INT(journal_retain(j, 1250, 0, 2), 2);  /* by age, two at a time: t0, t1 */
    CHECK_INT(journal_retain(j, 1250, 0, 2), 1);  /* t2 */
    CHECK_INT(journal_retain(j, 1250, 0, 2), 0);
    CHECK_INT(journal_retain(j, 0, 4, 100), 3);  /* beyond 4 kept: t3, t4, t5 (the oldest) */
    CHECK_INT(journal_retain(j, 0, 4, 100), 0);
    long long c[5];
    CHECK_INT(journal_counts(j, c), 0);
    CHECK(c[EV_DONE] == 4 && c[EV_ACCEPTED] == 1);
    CHECK(state_of(j, "t5") == (ev_state)-1);
    CHECK(state_of(j, "t6") == EV_DONE && state_of(j, "open") == EV_ACCEPTED);
    journal_close(j);
}

int main(void)
{
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_states();
    test_accept_and_duplicate();
    test_accept_many();
    test_transitions();
    test_pending_recover_retry();
    test_purge_counts_list();
    test_reopen();
    test_upgrade_from_format_1();
    test_two_handles();
    test_crash();
    test_render();
    test_valid_id();
    test_file_modes();
    test_check_file();
    test_runnable_and_counts();
    test_retain();
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return check_report();
}
