/*
 * journal.c -- the durable event journal in SQLite.
 *
 * One table, `events`, one row per event; the state is stored by name so
 * that `sqlite3 journal.db` reads plainly. Every statement is prepared once
 * at open. Every mutation is one transaction: a single statement in
 * autocommit (SQLite takes the write lock when the statement starts, so
 * there is no read-then-upgrade race between handles), or BEGIN IMMEDIATE
 * ... COMMIT where two statements must agree (accept). synchronous=FULL
 * makes each commit fsync the WAL before it returns.
 *
 * Indexes: id is UNIQUE; (state, seq) serves list-by-state; a partial index
 * on seq over the unfinished states serves journal_pending in order without
 * a sort; one over the accepted events and one on next_attempt_ms over the
 * retrying ones serve a dispatch (journal_runnable, journal_waiting_keys) in
 * the events it may start, however long the backlog; a partial index on
 * updated_ms over the finished states serves purge. The partial indexes are
 * named with INDEXED BY: the planner, without statistics, would rather sort
 * or scan a state. The counts by state are a table kept by triggers
 * (journal_counts reads five rows, never the events).
 */
#define _POSIX_C_SOURCE 200809L
#include "journal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../json/json.h"

#define JOURNAL_SCHEMA_VERSION 4
#define PURGE_CHUNK 2000 /* rows deleted per transaction, so a big purge never holds the lock long */

static const char *const state_names[EV__COUNT] = {"accepted", "running", "done", "retrying", "dead"};

/* The state sets as OR chains, not IN lists: SQLite (3.40) builds a
 * temporary b-tree for each IN list it evaluates, and the partial indexes'
 * predicates and the CHECK are evaluated on every insert and update, which
 * made an IN list cost more than the row itself. The queries repeat the
 * PENDING text exactly so the planner can use the partial index. */
#define PENDING "(state = 'accepted' OR state = 'running' OR state = 'retrying')"
#define FINISHED "(state = 'done' OR state = 'dead')"
#define EVENTS_COLUMNS                                                                                    \
    "(seq INTEGER PRIMARY KEY AUTOINCREMENT,"                                                             \
    " id TEXT NOT NULL UNIQUE,"                                                                           \
    " name TEXT NOT NULL,"                                                                                \
    " data TEXT NOT NULL,"                                                                                \
    " order_key TEXT,"                                                                                    \
    " state TEXT NOT NULL CHECK(" PENDING " OR " FINISHED "),"                                            \
    " attempts INTEGER NOT NULL DEFAULT 0,"                                                               \
    " next_attempt_ms INTEGER NOT NULL DEFAULT 0,"                                                        \
    " created_ms INTEGER NOT NULL,"                                                                       \
    " updated_ms INTEGER NOT NULL,"                                                                       \
    " last_error TEXT,"                                                                                   \
    " results TEXT,"                                                                                      \
    " worker_deaths INTEGER NOT NULL DEFAULT 0,"                                                          \
    " solo INTEGER NOT NULL DEFAULT 0)"
#define EVENTS_INDEXES                                                                                    \
    "CREATE INDEX IF NOT EXISTS events_state_seq ON events(state, seq);"                                  \
    "CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE " PENDING ";"                         \
    "CREATE INDEX IF NOT EXISTS events_finished ON events(updated_ms) WHERE " FINISHED ";"

static const char *const schema = "CREATE TABLE IF NOT EXISTS events" EVENTS_COLUMNS ";" EVENTS_INDEXES;

/* Format 3 had no counts by state (a /healthz snapshot counted every row, four
 * times a second), and found runnable events and the keys waiting for a retry
 * through the index of every pending event (a dispatch walked the backlog):
 * the counts are kept by triggers, exactly, whoever writes (serve, fire, the
 * CLI); accepted events and retries have indexes of their own. */
static const char *const migrate_3_to_4 =
    "CREATE TABLE counts(state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;"
    "INSERT INTO counts SELECT column1, (SELECT count(*) FROM events WHERE state = column1)"
    " FROM (VALUES ('accepted'), ('running'), ('done'), ('retrying'), ('dead'));"
    "CREATE TRIGGER events_count_insert AFTER INSERT ON events BEGIN"
    " UPDATE counts SET n = n + 1 WHERE state = NEW.state; END;"
    "CREATE TRIGGER events_count_delete AFTER DELETE ON events BEGIN"
    " UPDATE counts SET n = n - 1 WHERE state = OLD.state; END;"
    "CREATE TRIGGER events_count_update AFTER UPDATE OF state ON events WHEN OLD.state <> NEW.state BEGIN"
    " UPDATE counts SET n = n - 1 WHERE state = OLD.state;"
    " UPDATE counts SET n = n + 1 WHERE state = NEW.state; END;"
    "CREATE INDEX events_accepted ON events(seq) WHERE state = 'accepted';"
    "CREATE INDEX events_retrying ON events(next_attempt_ms) WHERE state = 'retrying';";

/* Format 2 had no worker_deaths (deaths of worker processes charged to the
 * event, for the poison quarantine) nor solo (the event's next run is alone
 * in its worker). */
static const char *const migrate_2_to_3 =
    "ALTER TABLE events ADD COLUMN worker_deaths INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE events ADD COLUMN solo INTEGER NOT NULL DEFAULT 0;";

/* Format 1 had IN lists in the CHECK and the partial indexes: the table is
 * rebuilt with the same rows (and seq numbers; the sequence is kept). */
static const char *const migrate_1_to_2 =
    "CREATE TABLE events_v2" EVENTS_COLUMNS ";"
    "INSERT INTO events_v2(seq, id, name, data, order_key, state, attempts, next_attempt_ms, created_ms,"
    " updated_ms, last_error, results) SELECT * FROM events;"
    "CREATE TEMP TABLE old_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'events';"
    "DROP TABLE events;"
    "ALTER TABLE events_v2 RENAME TO events;"
    "INSERT OR IGNORE INTO sqlite_sequence(name, seq) VALUES('events', 0);"
    "UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT seq FROM old_seq), 0)) WHERE name = 'events';"
    "DROP TABLE old_seq;" EVENTS_INDEXES;

#define EV_COLS \
    "seq, id, name, data, order_key, state, attempts, next_attempt_ms, created_ms, updated_ms, last_error, results," \
    " worker_deaths, solo"

enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_INSERT,
    ST_GET,
    ST_PENDING,
    ST_RUNNING,
    ST_DONE,
    ST_RETRYING,
    ST_DEAD,
    ST_RECOVER,
    ST_RETRY,
    ST_RETRY_DEAD,
    ST_PURGE,
    ST_TRIM,
    ST_COUNTS,
    ST_LIST_ANY,
    ST_LIST_STATE,
    ST_RUNNABLE,
    ST_RUNNING_ROWS,
    ST_DUE,
    ST_WAITING_KEYS,
    ST_LOST_CHARGED,
    ST_LOST_BYSTANDER,
    ST__COUNT
};

static const char *const sql[ST__COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_INSERT] = "INSERT INTO events(id, name, data, order_key, state, attempts, next_attempt_ms, created_ms,"
                  " updated_ms) VALUES(?1, ?2, ?3, ?4, 'accepted', 0, 0, ?5, ?5) ON CONFLICT(id) DO NOTHING",
    [ST_GET] = "SELECT " EV_COLS " FROM events WHERE id = ?1",
    [ST_PENDING] = "SELECT " EV_COLS " FROM events INDEXED BY events_pending"
                   " WHERE " PENDING " ORDER BY seq LIMIT ?1",
    [ST_RUNNING] = "UPDATE events SET state = 'running', attempts = attempts + 1, next_attempt_ms = 0,"
                   " updated_ms = ?2 WHERE id = ?1",
    [ST_DONE] = "UPDATE events SET state = 'done', next_attempt_ms = 0, last_error = NULL, results = ?2,"
                " updated_ms = ?3 WHERE id = ?1",
    [ST_RETRYING] = "UPDATE events SET state = 'retrying', next_attempt_ms = ?2, last_error = ?3, results = ?4,"
                    " updated_ms = ?5 WHERE id = ?1",
    [ST_DEAD] = "UPDATE events SET state = 'dead', next_attempt_ms = 0, last_error = ?2, results = ?3,"
                " updated_ms = ?4 WHERE id = ?1",
    [ST_LOST_CHARGED] = "UPDATE events SET state = 'retrying', next_attempt_ms = ?2, last_error = ?3,"
                         " worker_deaths = worker_deaths + 1, solo = 1, updated_ms = ?4 WHERE id = ?1",
    [ST_LOST_BYSTANDER] = "UPDATE events SET state = 'retrying', next_attempt_ms = 0,"
                           " attempts = max(attempts - 1, 0), solo = 1, updated_ms = ?4 WHERE id = ?1",
    [ST_RECOVER] = "UPDATE events SET state = 'accepted', updated_ms = ?1 WHERE state = 'running'",
    [ST_RETRY] = "UPDATE events SET state = 'accepted', attempts = 0, next_attempt_ms = 0, updated_ms = ?2"
                 " WHERE id = ?1 AND (state = 'dead' OR state = 'retrying')",
    [ST_RETRY_DEAD] = "UPDATE events SET state = 'accepted', attempts = 0, next_attempt_ms = 0, updated_ms = ?1"
                      " WHERE state = 'dead'",
    [ST_PURGE] = "DELETE FROM events WHERE seq IN (SELECT seq FROM events INDEXED BY events_finished"
                 " WHERE " FINISHED " AND updated_ms < ?1 LIMIT ?2)",
    [ST_TRIM] = "DELETE FROM events WHERE seq IN (SELECT seq FROM events INDEXED BY events_finished"
                " WHERE " FINISHED " ORDER BY updated_ms LIMIT max(0, min(?2, (SELECT coalesce(sum(n), 0)"
                " FROM counts WHERE state = 'done' OR state = 'dead') - ?1)))",
    [ST_COUNTS] = "SELECT state, n FROM counts",
    [ST_LIST_ANY] = "SELECT " EV_COLS " FROM events ORDER BY seq DESC LIMIT ?1",
    [ST_LIST_STATE] = "SELECT " EV_COLS " FROM events WHERE state = ?1 ORDER BY seq DESC LIMIT ?2",
    /* runnable: the accepted ones, the retries that are due and the running ones (merged by seq in
     * journal_runnable; a running one the caller does not hold lost its outcome: it runs again) */
    [ST_RUNNABLE] = "SELECT " EV_COLS " FROM events INDEXED BY events_accepted WHERE state = 'accepted'"
                    " ORDER BY seq LIMIT ?1",
    [ST_RUNNING_ROWS] = "SELECT " EV_COLS " FROM events INDEXED BY events_state_seq WHERE state = 'running'"
                        " ORDER BY seq LIMIT ?1",
    [ST_DUE] = "SELECT " EV_COLS " FROM events INDEXED BY events_retrying WHERE state = 'retrying'"
               " AND next_attempt_ms <= ?2 ORDER BY seq LIMIT ?1",
    /* (no DISTINCT: it would build a temporary b-tree each time; the caller skips repeats) */
    [ST_WAITING_KEYS] = "SELECT order_key FROM events INDEXED BY events_retrying WHERE state = 'retrying'"
                        " AND next_attempt_ms > ?1 AND order_key IS NOT NULL",
};

struct journal {
    char wal_path[PATH_MAX];
    long long wal_pages;          /* in the WAL after this handle's last commit (sqlite3_wal_hook) */
    sqlite3 *db;
    sqlite3_stmt *st[ST__COUNT];
    pthread_mutex_t mu;
    long long (*clock)(void *ud);
    void *clock_ud;
    char err[512];
};

/* ---- small helpers ---- */

long long journal_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long long now_ms(journal *j)
{
    return j->clock ? j->clock(j->clock_ud) : journal_now_ms();
}

static void lock(journal *j) { pthread_mutex_lock(&j->mu); }
static void unlock(journal *j) { pthread_mutex_unlock(&j->mu); }

/* Records "what: sqlite's message" as the handle's last error. */
static void set_err(journal *j, const char *what)
{
    snprintf(j->err, sizeof j->err, "journal: %s: %s", what, sqlite3_errmsg(j->db));
}

/* A statement, reset and with its bindings cleared. */
static sqlite3_stmt *stmt(journal *j, int which)
{
    sqlite3_stmt *s = j->st[which];
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v)
{
    if (v)
        sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, i);
}

static int exec_simple(journal *j, int which)
{
    sqlite3_stmt *s = stmt(j, which);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void rollback(journal *j)
{
    if (!sqlite3_get_autocommit(j->db))
        exec_simple(j, ST_ROLLBACK);
}

/* Steps a write statement to its end. Returns the rows it changed, or -1
 * (error recorded under what). */
static int run_write(journal *j, sqlite3_stmt *s, const char *what)
{
    int rc = sqlite3_step(s);
    int changed = rc == SQLITE_DONE ? sqlite3_changes(j->db) : -1;
    if (changed < 0)
        set_err(j, what);
    sqlite3_reset(s);
    return changed;
}

static char *dup_col(sqlite3_stmt *s, int col, int *oom)
{
    const unsigned char *t = sqlite3_column_text(s, col);
    if (!t)
        return NULL;
    char *d = strdup((const char *)t);
    if (!d)
        *oom = 1;
    return d;
}

/* Copies the current row (EV_COLS order) into e. 0, or -1 (out of memory
 * or a state name this build does not know) with e freed. */
static int read_row(journal *j, sqlite3_stmt *s, journal_event *e)
{
    int oom = 0;
    memset(e, 0, sizeof *e);
    e->seq = sqlite3_column_int64(s, 0);
    e->id = dup_col(s, 1, &oom);
    e->name = dup_col(s, 2, &oom);
    e->data_json = dup_col(s, 3, &oom);
    e->order_key = dup_col(s, 4, &oom);
    const char *st = (const char *)sqlite3_column_text(s, 5);
    e->attempts = sqlite3_column_int(s, 6);
    e->next_attempt_ms = sqlite3_column_int64(s, 7);
    e->created_ms = sqlite3_column_int64(s, 8);
    e->updated_ms = sqlite3_column_int64(s, 9);
    e->last_error = dup_col(s, 10, &oom);
    e->results_json = dup_col(s, 11, &oom);
    e->worker_deaths = sqlite3_column_int(s, 12);
    e->solo = sqlite3_column_int(s, 13);
    if (oom) {
        snprintf(j->err, sizeof j->err, "journal: out of memory");
        journal_event_free(e);
        return -1;
    }
    if (!st || journal_state_parse(st, &e->state) < 0) {
        snprintf(j->err, sizeof j->err, "journal: event %s has an unknown state '%s'", e->id ? e->id : "?",
                 st ? st : "(null)");
        journal_event_free(e);
        return -1;
    }
    return 0;
}

/* Steps a SELECT of EV_COLS to its end, collecting the rows. */
static int collect(journal *j, sqlite3_stmt *s, journal_event **out, int *n)
{
    journal_event *list = NULL;
    int cnt = 0, cap = 0, rc;
    *out = NULL;
    *n = 0;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        if (cnt == cap) {
            int ncap = cap ? cap * 2 : 16;
            journal_event *nl = realloc(list, (size_t)ncap * sizeof *nl);
            if (!nl) {
                snprintf(j->err, sizeof j->err, "journal: out of memory");
                goto fail;
            }
            list = nl;
            cap = ncap;
        }
        if (read_row(j, s, &list[cnt]) < 0)
            goto fail;
        cnt++;
    }
    if (rc != SQLITE_DONE) {
        set_err(j, "reading events");
        goto fail;
    }
    sqlite3_reset(s);
    *out = list;
    *n = cnt;
    return 0;
fail:
    sqlite3_reset(s);
    journal_events_free(list, cnt);
    return -1;
}

/* ---- open and close ---- */

static int pragma_int(sqlite3 *db, const char *sql_text, long long *out)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(db, sql_text, -1, &s, NULL) != SQLITE_OK)
        return -1;
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        *out = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

/* Creates the schema when the file is new; refuses a newer one. */
static int setup_schema(sqlite3 *db, const char *path, char *err, size_t errlen)
{
    long long version = 0;
    if (pragma_int(db, "PRAGMA user_version", &version) < 0)
        goto sqlerr;
    if (version < JOURNAL_SCHEMA_VERSION) {
        /* Made or upgraded in one transaction. Two processes may do it at once: the
         * write lock decides, the other finds the new format and changes nothing. */
        char *msg = NULL;
        int ok = sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, &msg) == SQLITE_OK &&
                 pragma_int(db, "PRAGMA user_version", &version) == 0;
        const char *const steps[] = {[0] = schema, [1] = migrate_1_to_2, [2] = migrate_2_to_3}; /* (each -> 3) */
        if (ok && version < 3)
            ok = sqlite3_exec(db, steps[version], NULL, NULL, &msg) == SQLITE_OK;
        if (ok && version < 4)
            ok = sqlite3_exec(db, migrate_3_to_4, NULL, NULL, &msg) == SQLITE_OK &&
                 sqlite3_exec(db, "PRAGMA user_version = 4", NULL, NULL, &msg) == SQLITE_OK;
        if (!ok || sqlite3_exec(db, "COMMIT", NULL, NULL, &msg) != SQLITE_OK) {
            snprintf(err, errlen, "%s: %s the journal: %s", path, version ? "upgrading" : "creating",
                     msg ? msg : sqlite3_errmsg(db));
            sqlite3_free(msg);
            if (!sqlite3_get_autocommit(db))
                sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
        version = version < JOURNAL_SCHEMA_VERSION ? JOURNAL_SCHEMA_VERSION : version;
    }
    if (version != JOURNAL_SCHEMA_VERSION) {
        snprintf(err, errlen, "%s: journal format %lld is not the one this wixr knows (%d)%s", path, version,
                 JOURNAL_SCHEMA_VERSION, version > JOURNAL_SCHEMA_VERSION ? "; it was written by a newer wixr" : "");
        return -1;
    }
    return 0;
sqlerr:
    snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(db));
    return -1;
}

journal *journal_open(const char *path, char *err, size_t errlen)
{
    if (!sqlite3_threadsafe()) {
        snprintf(err, errlen, "%s: this SQLite was built without thread support", path);
        return NULL;
    }
    journal *j = calloc(1, sizeof *j);
    if (!j) {
        snprintf(err, errlen, "%s: out of memory", path);
        return NULL;
    }
    snprintf(j->wal_path, sizeof j->wal_path, "%s-wal", path);
    if (pthread_mutex_init(&j->mu, NULL) != 0) {
        snprintf(err, errlen, "%s: cannot create a mutex", path);
        free(j);
        return NULL;
    }
    /* The journal holds customer data: a new file is created 0600 (SQLite
     * would follow the umask), and so are its -wal and -shm (below). O_EXCL:
     * only a file made here is closed here -- closing a descriptor of a file
     * this process has open elsewhere would drop SQLite's POSIX locks on it. */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot open the journal: %s", path, strerror(errno));
        goto fail;
    }
    if (fd >= 0)
        close(fd);
    /* NOMUTEX: this handle's own mutex serialises its calls. */
    if (sqlite3_open_v2(path, &j->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open the journal: %s", path, j->db ? sqlite3_errmsg(j->db) : "out of memory");
        goto fail;
    }
    char *msg = NULL;
    /* busy_timeout first, so that switching to WAL waits for other handles. */
    sqlite3_busy_timeout(j->db, 5000);
    if (sqlite3_exec(j->db, "PRAGMA synchronous=FULL;", NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(j->db));
        sqlite3_free(msg);
        goto fail;
    }
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(j->db, "PRAGMA journal_mode=WAL", -1, &s, NULL) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, sqlite3_errmsg(j->db));
        goto fail;
    }
    int rc = sqlite3_step(s);
    const char *mode = rc == SQLITE_ROW ? (const char *)sqlite3_column_text(s, 0) : NULL;
    if (!mode || strcmp(mode, "wal") != 0) {
        snprintf(err, errlen, "%s: cannot switch the journal to WAL mode: %s", path,
                 mode ? mode : sqlite3_errmsg(j->db));
        sqlite3_finalize(s);
        goto fail;
    }
    sqlite3_finalize(s);
    if (setup_schema(j->db, path, err, errlen) < 0)
        goto fail;
    /* WAL mode made the -wal and -shm files (with the umask's mode) */
    for (int i = 0; i < 2; i++) {
        char side[PATH_MAX];
        snprintf(side, sizeof side, "%s%s", path, i ? "-shm" : "-wal");
        if (chmod(side, 0600) < 0 && errno != ENOENT) {
            snprintf(err, errlen, "%s: cannot make it private (0600): %s", side, strerror(errno));
            goto fail;
        }
    }
    for (int i = 0; i < ST__COUNT; i++) {
        if (sqlite3_prepare_v3(j->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &j->st[i], NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: preparing statement %d: %s", path, i, sqlite3_errmsg(j->db));
            goto fail;
        }
    }
    return j;
fail:
    journal_close(j);
    return NULL;
}

int journal_set_durable(journal *j, int full)
{
    return sqlite3_exec(j->db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) ==
                   SQLITE_OK
               ? 0
               : -1;
}

static int on_wal_commit(void *arg, sqlite3 *db, const char *name, int pages)
{
    (void)db;
    (void)name;
    ((journal *)arg)->wal_pages = pages;
    return SQLITE_OK;
}

int journal_set_manual_checkpoints(journal *j)
{
    /* (wal_autocheckpoint=0 sets SQLite's own WAL hook aside: ours counts the pages) */
    int rc = sqlite3_exec(j->db, "PRAGMA wal_autocheckpoint=0", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
    sqlite3_wal_hook(j->db, on_wal_commit, j);
    return rc;
}

int journal_begin(journal *j)
{
    lock(j);
    int rc = sqlite3_exec(j->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
    if (rc < 0)
        set_err(j, "begin");
    unlock(j);
    return rc;
}

int journal_commit(journal *j)
{
    lock(j);
    int rc = sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? 0 : -1;
    if (rc < 0) {
        set_err(j, "commit");
        sqlite3_exec(j->db, "ROLLBACK", NULL, NULL, NULL);
    }
    unlock(j);
    return rc;
}

int journal_checkpoint(journal *j)
{
    return sqlite3_wal_checkpoint_v2(j->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) == SQLITE_OK ? 0 : -1;
}

long long journal_wal_size(journal *j)
{
    struct stat st;
    return stat(j->wal_path, &st) == 0 ? (long long)st.st_size : 0;
}

long long journal_wal_pages(journal *j)
{
    lock(j);
    long long n = j->wal_pages;
    unlock(j);
    return n;
}

int journal_checkpoint_passive(journal *j)
{
    lock(j);
    int rc = sqlite3_wal_checkpoint_v2(j->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL) == SQLITE_OK ? 0 : -1;
    j->wal_pages = 0;
    unlock(j);
    return rc;
}

int journal_checkpoint_truncate(journal *j)
{
    lock(j);
    sqlite3_busy_timeout(j->db, 250); /* (a reader in the way: next time; the caller's writes wait meanwhile) */
    int rc = sqlite3_wal_checkpoint_v2(j->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL) == SQLITE_OK ? 0 : -1;
    if (rc < 0)
        set_err(j, "checkpointing the WAL");
    sqlite3_busy_timeout(j->db, 5000);
    unlock(j);
    return rc;
}

/* Each list is in seq order, and the first limit of their merge are what a
 * dispatch may start: three index walks of at most limit rows each, however
 * long the backlog or the queue of retries. */
int journal_runnable(journal *j, long long now_ms, int limit, journal_event **out, int *n)
{
    *out = NULL;
    *n = 0;
    static const int which[3] = {ST_RUNNABLE, ST_DUE, ST_RUNNING_ROWS};
    journal_event *part[3] = {NULL, NULL, NULL};
    int np[3] = {0, 0, 0}, rc = 0, total = 0;
    lock(j);
    for (int i = 0; i < 3 && rc == 0; i++) {
        sqlite3_stmt *st = stmt(j, which[i]);
        sqlite3_bind_int(st, 1, limit > 0 ? limit : -1);
        if (which[i] == ST_DUE)
            sqlite3_bind_int64(st, 2, now_ms);
        rc = collect(j, st, &part[i], &np[i]);
        total += np[i];
    }
    unlock(j);
    journal_event *all = rc == 0 && total ? malloc((size_t)total * sizeof *all) : NULL;
    if (rc == 0 && total && !all) {
        snprintf(j->err, sizeof j->err, "journal: out of memory");
        rc = -1;
    }
    if (rc < 0) {
        for (int i = 0; i < 3; i++)
            journal_events_free(part[i], np[i]);
        return -1;
    }
    int at[3] = {0, 0, 0}, keep = limit > 0 && limit < total ? limit : total;
    for (int k = 0; k < total; k++) {
        int best = -1;
        for (int i = 0; i < 3; i++)
            if (at[i] < np[i] && (best < 0 || part[i][at[i]].seq < part[best][at[best]].seq))
                best = i;
        all[k] = part[best][at[best]++];
    }
    for (int k = keep; k < total; k++)
        journal_event_free(&all[k]);
    for (int i = 0; i < 3; i++)
        free(part[i]);
    *out = all;
    *n = keep;
    return 0;
}

int journal_waiting_keys(journal *j, long long now_ms, char ***keys, int *n)
{
    *keys = NULL;
    *n = 0;
    lock(j);
    sqlite3_stmt *st = stmt(j, ST_WAITING_KEYS);
    sqlite3_bind_int64(st, 1, now_ms);
    int cap = 0, rc = 0, step;
    while ((step = sqlite3_step(st)) == SQLITE_ROW) {
        const char *k = (const char *)sqlite3_column_text(st, 0);
        int seen = 0;
        for (int i = 0; i < *n && !seen; i++)
            seen = !strcmp((*keys)[i], k);
        if (seen)
            continue;
        if (*n == cap) {
            cap = cap ? cap * 2 : 16;
            char **nk = realloc(*keys, (size_t)cap * sizeof *nk);
            if (!nk) {
                rc = -1;
                break;
            }
            *keys = nk;
        }
        if (!((*keys)[*n] = strdup(k))) {
            rc = -1;
            break;
        }
        (*n)++;
    }
    if (step != SQLITE_DONE && step != SQLITE_ROW) {
        set_err(j, "reading waiting keys");
        rc = -1;
    }
    sqlite3_reset(st);
    unlock(j);
    return rc;
}

static int ensure_poller_tables(journal *j)
{
    return sqlite3_exec(j->db,
                        "CREATE TABLE IF NOT EXISTS observed(instance_id TEXT PRIMARY KEY, status TEXT NOT NULL);"
                        "CREATE TABLE IF NOT EXISTS meta(k TEXT PRIMARY KEY, v TEXT NOT NULL);",
                        NULL, NULL, NULL) == SQLITE_OK
               ? 0
               : -1;
}

int journal_observe(journal *j, const char *instance_id, const char *status, char prev[32])
{
    int rc = -1;
    sqlite3_stmt *st = NULL;
    prev[0] = '\0';
    lock(j);
    if (ensure_poller_tables(j) < 0 ||
        sqlite3_prepare_v2(j->db, "SELECT status FROM observed WHERE instance_id = ?1", -1, &st, NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_text(st, 1, instance_id, -1, SQLITE_STATIC);
    int found = sqlite3_step(st) == SQLITE_ROW;
    if (found)
        snprintf(prev, 32, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
    if (found && !strcmp(prev, status)) {
        rc = 2;
        goto done;
    }
    if (sqlite3_prepare_v2(j->db, "INSERT OR REPLACE INTO observed(instance_id, status) VALUES(?1, ?2)", -1, &st,
                           NULL) != SQLITE_OK)
        goto done;
    sqlite3_bind_text(st, 1, instance_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, status, -1, SQLITE_STATIC);
    rc = sqlite3_step(st) == SQLITE_DONE ? (found ? 1 : 0) : -1;
done:
    sqlite3_finalize(st);
    unlock(j);
    return rc;
}

int journal_meta_get(journal *j, const char *key, char *out, size_t n)
{
    int rc = -1;
    sqlite3_stmt *st = NULL;
    lock(j);
    if (ensure_poller_tables(j) == 0 &&
        sqlite3_prepare_v2(j->db, "SELECT v FROM meta WHERE k = ?1", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        if (sqlite3_step(st) == SQLITE_ROW) {
            snprintf(out, n, "%s", (const char *)sqlite3_column_text(st, 0));
            rc = 0;
        } else {
            rc = 1;
        }
    }
    sqlite3_finalize(st);
    unlock(j);
    return rc;
}

int journal_meta_set(journal *j, const char *key, const char *value)
{
    int rc = -1;
    sqlite3_stmt *st = NULL;
    lock(j);
    if (ensure_poller_tables(j) == 0 &&
        sqlite3_prepare_v2(j->db, "INSERT OR REPLACE INTO meta(k, v) VALUES(?1, ?2)", -1, &st, NULL) == SQLITE_OK) {
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
        rc = sqlite3_step(st) == SQLITE_DONE ? 0 : -1;
    }
    sqlite3_finalize(st);
    unlock(j);
    return rc;
}

void journal_close(journal *j)
{
    if (!j)
        return;
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(j->st[i]);
    if (j->db)
        sqlite3_close(j->db);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

int journal_check_file(journal *j, char *err, size_t errlen)
{
    lock(j);
    sqlite3_file *f = NULL;
    unsigned char hdr[100];
    int rc = sqlite3_file_control(j->db, "main", SQLITE_FCNTL_FILE_POINTER, &f);
    if (rc != SQLITE_OK || !f || !f->pMethods) {
        snprintf(err, errlen, "journal: the file is not open");
        rc = -1;
    } else if ((rc = f->pMethods->xRead(f, hdr, (int)sizeof hdr, 0)) != SQLITE_OK) {
        snprintf(err, errlen, "journal: the file is %s", rc == SQLITE_IOERR_SHORT_READ ? "truncated (corrupted)"
                                                                                      : "unreadable");
        rc = -1;
    } else if (memcmp(hdr, "SQLite format 3", 16) != 0) {
        snprintf(err, errlen, "journal: the file is corrupted (it no longer starts as a SQLite database)");
        rc = -1;
    }
    unlock(j);
    return rc;
}

const char *journal_errmsg(journal *j)
{
    return j ? j->err : "journal: no handle";
}

void journal_set_clock(journal *j, long long (*clock)(void *ud), void *ud)
{
    lock(j);
    j->clock = clock;
    j->clock_ud = ud;
    unlock(j);
}

const char *journal_state_name(ev_state s)
{
    return (unsigned)s < EV__COUNT ? state_names[s] : "unknown";
}

int journal_state_parse(const char *name, ev_state *out)
{
    for (int i = 0; name && i < EV__COUNT; i++) {
        if (!strcmp(name, state_names[i])) {
            *out = (ev_state)i;
            return 0;
        }
    }
    return -1;
}

void journal_event_free(journal_event *e)
{
    if (!e)
        return;
    free(e->id);
    free(e->name);
    free(e->data_json);
    free(e->order_key);
    free(e->last_error);
    free(e->results_json);
    memset(e, 0, sizeof *e);
}

void journal_events_free(journal_event *list, int n)
{
    for (int i = 0; list && i < n; i++)
        journal_event_free(&list[i]);
    free(list);
}

/* ---- reads ---- */

/* journal_get without the lock. */
static int get_locked(journal *j, const char *id, journal_event *out)
{
    sqlite3_stmt *s = stmt(j, ST_GET);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s), ret;
    if (rc == SQLITE_ROW) {
        ret = read_row(j, s, out) < 0 ? -1 : 0;
    } else if (rc == SQLITE_DONE) {
        ret = 1;
    } else {
        set_err(j, "reading an event");
        ret = -1;
    }
    sqlite3_reset(s);
    return ret;
}

int journal_get(journal *j, const char *id, journal_event *out)
{
    memset(out, 0, sizeof *out);
    if (!id)
        return 1;
    lock(j);
    int rc = get_locked(j, id, out);
    unlock(j);
    return rc;
}

int journal_pending(journal *j, int limit, journal_event **out, int *n)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_PENDING);
    sqlite3_bind_int(s, 1, limit > 0 ? limit : -1);
    int rc = collect(j, s, out, n);
    unlock(j);
    return rc;
}

int journal_list(journal *j, int state, int limit, journal_event **out, int *n)
{
    *out = NULL;
    *n = 0;
    if (state >= EV__COUNT || state < -1) {
        snprintf(j->err, sizeof j->err, "journal: no state %d", state);
        return -1;
    }
    lock(j);
    sqlite3_stmt *s;
    if (state < 0) {
        s = stmt(j, ST_LIST_ANY);
        sqlite3_bind_int(s, 1, limit > 0 ? limit : -1);
    } else {
        s = stmt(j, ST_LIST_STATE);
        sqlite3_bind_text(s, 1, state_names[state], -1, SQLITE_STATIC);
        sqlite3_bind_int(s, 2, limit > 0 ? limit : -1);
    }
    int rc = collect(j, s, out, n);
    unlock(j);
    return rc;
}

int journal_counts(journal *j, long long counts[5])
{
    for (int i = 0; i < EV__COUNT; i++)
        counts[i] = 0;
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_COUNTS);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        ev_state st;
        if (journal_state_parse((const char *)sqlite3_column_text(s, 0), &st) == 0)
            counts[st] = sqlite3_column_int64(s, 1);
    }
    if (rc != SQLITE_DONE)
        set_err(j, "counting events");
    sqlite3_reset(s);
    unlock(j);
    return rc == SQLITE_DONE ? 0 : -1;
}

/* ---- writes ---- */

/* Inserts one event inside the caller's transaction: 0 inserted, 1 the id
 * exists (existing filled when not NULL), -1 error (j->err set). */
static int insert_locked(journal *j, const char *id, const char *name, const char *data_json, const char *order_key,
                         long long now, journal_event *existing)
{
    sqlite3_stmt *s = stmt(j, ST_INSERT);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, name, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, data_json, -1, SQLITE_STATIC);
    bind_text(s, 4, order_key);
    sqlite3_bind_int64(s, 5, now);
    int changed = run_write(j, s, "inserting an event");
    if (changed < 0)
        return -1;
    if (changed > 0)
        return 0;
    /* Seen before: hand back what is there, write nothing. */
    int got = existing ? get_locked(j, id, existing) : 0;
    if (got == 1) /* cannot happen while we hold the write lock */
        snprintf(j->err, sizeof j->err, "journal: event %s vanished while being read", id);
    return got == 0 ? 1 : -1;
}

static int valid_new(const char *id, const char *name, const char *data_json)
{
    return id && *id && name && *name && data_json;
}

int journal_accept(journal *j, const char *id, const char *name, const char *data_json, const char *order_key,
                   journal_event *existing, char *err, size_t errlen)
{
    if (existing)
        memset(existing, 0, sizeof *existing);
    if (!valid_new(id, name, data_json)) {
        snprintf(err, errlen, "journal: an event needs a non-empty id and name, and data");
        return -1;
    }
    lock(j);
    int ret = -1;
    if (exec_simple(j, ST_BEGIN) < 0) {
        set_err(j, "starting a transaction");
        goto done;
    }
    ret = insert_locked(j, id, name, data_json, order_key, now_ms(j), existing);
    if (ret == 1) {
        rollback(j); /* nothing was written */
    } else if (ret == 0 && exec_simple(j, ST_COMMIT) < 0) {
        set_err(j, "committing an event");
        ret = -1;
    }
done:
    if (ret < 0) {
        rollback(j);
        if (existing)
            journal_event_free(existing);
        snprintf(err, errlen, "%s", j->err);
    }
    unlock(j);
    return ret;
}

int journal_accept_many(journal *j, journal_new *items, int n, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++) {
        memset(&items[i].existing, 0, sizeof items[i].existing);
        items[i].result = -1;
    }
    if (err && errlen)
        err[0] = 0;
    if (n <= 0)
        return 0;
    lock(j);
    int ret = -1;
    if (exec_simple(j, ST_BEGIN) < 0) {
        set_err(j, "starting a transaction");
        goto done;
    }
    long long now = now_ms(j);
    for (int i = 0; i < n; i++) {
        journal_new *it = &items[i];
        if (!valid_new(it->id, it->name, it->data_json)) {
            snprintf(err, errlen, "journal: item %d: an event needs a non-empty id and name, and data", i);
            continue;
        }
        it->result = insert_locked(j, it->id, it->name, it->data_json, it->order_key, now, &it->existing);
        if (it->result < 0)
            goto done;
    }
    if (exec_simple(j, ST_COMMIT) < 0) {
        set_err(j, "committing events");
        goto done;
    }
    ret = 0;
done:
    if (ret < 0) {
        rollback(j);
        for (int i = 0; i < n; i++) {
            journal_event_free(&items[i].existing);
            items[i].result = -1;
        }
        snprintf(err, errlen, "%s", j->err);
    }
    unlock(j);
    return ret;
}

/* Runs one of the id-keyed updates: 0 changed, 1 no such id, -1 error. */
static int update_one(journal *j, sqlite3_stmt *s, const char *what)
{
    int changed = run_write(j, s, what);
    return changed < 0 ? -1 : changed == 0 ? 1 : 0;
}

int journal_mark_running(journal *j, const char *id)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_RUNNING);
    bind_text(s, 1, id);
    sqlite3_bind_int64(s, 2, now_ms(j));
    int rc = update_one(j, s, "marking an event running");
    unlock(j);
    return rc;
}

int journal_mark_done(journal *j, const char *id, const char *results_json)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_DONE);
    bind_text(s, 1, id);
    bind_text(s, 2, results_json);
    sqlite3_bind_int64(s, 3, now_ms(j));
    int rc = update_one(j, s, "marking an event done");
    unlock(j);
    return rc;
}

int journal_mark_retry(journal *j, const char *id, long long next_attempt_ms, const char *error,
                       const char *results_json)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_RETRYING);
    bind_text(s, 1, id);
    sqlite3_bind_int64(s, 2, next_attempt_ms > 0 ? next_attempt_ms : 0);
    bind_text(s, 3, error);
    bind_text(s, 4, results_json);
    sqlite3_bind_int64(s, 5, now_ms(j));
    int rc = update_one(j, s, "marking an event for retry");
    unlock(j);
    return rc;
}

int journal_mark_lost(journal *j, const char *id, int charged, long long next_attempt_ms, const char *error)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, charged ? ST_LOST_CHARGED : ST_LOST_BYSTANDER);
    bind_text(s, 1, id);
    sqlite3_bind_int64(s, 2, next_attempt_ms > 0 ? next_attempt_ms : 0);
    bind_text(s, 3, error ? error : "");
    sqlite3_bind_int64(s, 4, now_ms(j));
    int rc = update_one(j, s, "marking an event whose worker died");
    unlock(j);
    return rc;
}

int journal_mark_dead(journal *j, const char *id, const char *error, const char *results_json)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_DEAD);
    bind_text(s, 1, id);
    bind_text(s, 2, error);
    bind_text(s, 3, results_json);
    sqlite3_bind_int64(s, 4, now_ms(j));
    int rc = update_one(j, s, "marking an event dead");
    unlock(j);
    return rc;
}

int journal_retry(journal *j, const char *id)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, ST_RETRY);
    bind_text(s, 1, id);
    sqlite3_bind_int64(s, 2, now_ms(j));
    int rc = update_one(j, s, "retrying an event");
    unlock(j);
    return rc;
}

/* Runs one of the bulk updates bound with ?1 = now: how many, or -1. */
static int update_all(journal *j, int which, const char *what)
{
    lock(j);
    sqlite3_stmt *s = stmt(j, which);
    sqlite3_bind_int64(s, 1, now_ms(j));
    int rc = run_write(j, s, what);
    unlock(j);
    return rc;
}

int journal_recover(journal *j)
{
    return update_all(j, ST_RECOVER, "recovering running events");
}

int journal_retry_dead(journal *j)
{
    return update_all(j, ST_RETRY_DEAD, "retrying dead events");
}

int journal_purge(journal *j, long long older_than_ms)
{
    int total = 0;
    lock(j);
    for (;;) {
        sqlite3_stmt *s = stmt(j, ST_PURGE);
        sqlite3_bind_int64(s, 1, older_than_ms);
        sqlite3_bind_int(s, 2, PURGE_CHUNK);
        int n = run_write(j, s, "purging events");
        if (n < 0) {
            total = -1;
            break;
        }
        total += n;
        if (n < PURGE_CHUNK)
            break;
    }
    unlock(j);
    return total;
}

int journal_retain(journal *j, long long older_than_ms, long long keep, int chunk)
{
    int total = 0;
    lock(j);
    if (older_than_ms > 0) {
        sqlite3_stmt *s = stmt(j, ST_PURGE);
        sqlite3_bind_int64(s, 1, older_than_ms);
        sqlite3_bind_int(s, 2, chunk);
        total = run_write(j, s, "purging old events");
    }
    if (total >= 0 && total < chunk && keep > 0) {
        sqlite3_stmt *s = stmt(j, ST_TRIM);
        sqlite3_bind_int64(s, 1, keep);
        sqlite3_bind_int(s, 2, chunk - total);
        int n = run_write(j, s, "purging events beyond the count kept");
        total = n < 0 ? -1 : total + n;
    }
    unlock(j);
    return total;
}

/* ---- events run outside the service ---- */

int journal_record_runs(journal *j, journal_run *runs, int n, int only_new, char *err, size_t errlen)
{
    static const char upsert[] =
        "INSERT INTO events(id, name, data, order_key, state, attempts, next_attempt_ms, created_ms, updated_ms,"
        " last_error, results) VALUES(?1, ?2, ?3, NULL, ?4, 1, 0, ?5, ?5, ?6, ?7)"
        " ON CONFLICT(id) DO UPDATE SET name = excluded.name, data = excluded.data, state = excluded.state,"
        " attempts = events.attempts + 1, next_attempt_ms = 0, updated_ms = excluded.updated_ms,"
        " last_error = excluded.last_error, results = excluded.results"
        " WHERE events.state = 'done' OR events.state = 'dead'";
    static const char insert_new[] =
        "INSERT INTO events(id, name, data, order_key, state, attempts, next_attempt_ms, created_ms, updated_ms,"
        " last_error, results) VALUES(?1, ?2, ?3, NULL, ?4, 1, 0, ?5, ?5, ?6, ?7) ON CONFLICT(id) DO NOTHING";
    if (err && errlen)
        err[0] = '\0';
    for (int i = 0; i < n; i++)
        runs[i].result = 1;
    if (n <= 0)
        return 0;
    lock(j);
    int ret = -1, own = sqlite3_get_autocommit(j->db);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(j->db, only_new ? insert_new : upsert, -1, &s, NULL) != SQLITE_OK) {
        set_err(j, "recording runs");
        goto done;
    }
    if (own && exec_simple(j, ST_BEGIN) < 0) {
        set_err(j, "starting a transaction");
        goto done;
    }
    long long now = now_ms(j);
    for (int i = 0; i < n; i++) {
        journal_run *r = &runs[i];
        if (!valid_new(r->id, r->name, r->data_json)) {
            snprintf(j->err, sizeof j->err, "journal: run %d: an event needs a non-empty id and name, and data", i);
            goto done;
        }
        sqlite3_reset(s);
        sqlite3_clear_bindings(s);
        sqlite3_bind_text(s, 1, r->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, r->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, r->data_json, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, r->ok ? "done" : "dead", -1, SQLITE_STATIC);
        sqlite3_bind_int64(s, 5, now);
        bind_text(s, 6, r->ok ? NULL : r->error);
        bind_text(s, 7, r->results_json);
        int changed = run_write(j, s, "recording a run");
        if (changed < 0)
            goto done;
        r->result = changed > 0 ? 0 : 1;
    }
    if (own && exec_simple(j, ST_COMMIT) < 0) {
        set_err(j, "committing runs");
        goto done;
    }
    ret = 0;
done:
    sqlite3_finalize(s);
    if (ret < 0) {
        if (own)
            rollback(j);
        for (int i = 0; i < n; i++)
            runs[i].result = 1;
        if (err && errlen)
            snprintf(err, errlen, "%s", j->err);
    }
    unlock(j);
    return ret;
}

int journal_states(journal *j, const char *const *ids, int n, int *states, char *err, size_t errlen)
{
    for (int i = 0; i < n; i++)
        states[i] = -1;
    if (n <= 0)
        return 0;
    lock(j);
    int ret = -1, own = sqlite3_get_autocommit(j->db);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(j->db, "SELECT state FROM events WHERE id = ?1", -1, &s, NULL) != SQLITE_OK) {
        set_err(j, "reading states");
        goto done;
    }
    if (own && sqlite3_exec(j->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
        set_err(j, "starting a read");
        goto done;
    }
    int rc = SQLITE_DONE;
    for (int i = 0; i < n && (rc == SQLITE_DONE || rc == SQLITE_ROW); i++) {
        if (!ids[i])
            continue;
        sqlite3_reset(s);
        sqlite3_bind_text(s, 1, ids[i], -1, SQLITE_STATIC);
        rc = sqlite3_step(s);
        ev_state st;
        if (rc == SQLITE_ROW && journal_state_parse((const char *)sqlite3_column_text(s, 0), &st) == 0)
            states[i] = (int)st;
    }
    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        set_err(j, "reading states");
    else
        ret = 0;
    if (own)
        sqlite3_exec(j->db, "COMMIT", NULL, NULL, NULL); /* (a read: nothing to keep or lose) */
done:
    sqlite3_finalize(s);
    if (ret < 0 && err && errlen)
        snprintf(err, errlen, "%s", j->err);
    unlock(j);
    return ret;
}

int journal_valid_id(const char *id, size_t len)
{
    if (len == 0 || len > JOURNAL_ID_MAX || strlen(id) != len || !json_utf8_valid(id, len))
        return 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)id[i];
        if (ch <= 0x20 || ch == 0x7f || strchr("/%?#\\", ch))
            return 0;
        if (ch == 0xC2 && (unsigned char)id[i + 1] < 0xA0) /* U+0080..U+009F, the C1 controls */
            return 0;
        /* the bidi controls, which make an id read as another one: U+200E U+200F (E2 80 8E/8F),
         * U+202A..U+202E (E2 80 AA..AE), U+2066..U+2069 (E2 81 A6..A9); UTF-8 is valid here */
        if (ch == 0xE2) {
            unsigned char b1 = (unsigned char)id[i + 1], b2 = (unsigned char)id[i + 2];
            if (b1 == 0x80 && (b2 == 0x8E || b2 == 0x8F || (b2 >= 0xAA && b2 <= 0xAE)))
                return 0;
            if (b1 == 0x81 && b2 >= 0xA6 && b2 <= 0xA9)
                return 0;
        }
    }
    return 1;
}
