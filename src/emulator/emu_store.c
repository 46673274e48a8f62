/*
 * emu_store.c -- the emulator's state in SQLite (WAL): accounts, sites,
 * packages, product instances and idempotency records.
 *
 * Every statement is prepared once at open; emu_stmt() hands one out reset
 * and with its bindings cleared.
 */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "emu_internal.h"

static const char *const schema =
    "CREATE TABLE IF NOT EXISTS accounts(id TEXT PRIMARY KEY, parent_id TEXT, type TEXT NOT NULL, name TEXT);"
    "CREATE TABLE IF NOT EXISTS sites(id TEXT PRIMARY KEY, account_id TEXT NOT NULL, name TEXT);"
    "CREATE TABLE IF NOT EXISTS packages(seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    " account_id TEXT NOT NULL, parent_account_id TEXT NOT NULL, external_id TEXT,"
    " created INTEGER NOT NULL, updated INTEGER NOT NULL);"
    /* Query Packages reads a page in its sort order from these (seq, the rowid, ends each key). */
    "DROP INDEX IF EXISTS packages_scope;"
    "CREATE INDEX IF NOT EXISTS packages_created ON packages(parent_account_id, created);"
    "CREATE INDEX IF NOT EXISTS packages_updated ON packages(parent_account_id, updated);"
    "CREATE INDEX IF NOT EXISTS packages_external ON packages(external_id) WHERE external_id IS NOT NULL;"
    "CREATE TABLE IF NOT EXISTS instances(instance_id TEXT PRIMARY KEY, package_seq INTEGER NOT NULL,"
    " pos INTEGER NOT NULL, site_id TEXT, catalog_product_id TEXT NOT NULL, product_type TEXT NOT NULL,"
    " status TEXT NOT NULL, failure_code TEXT, failure_message TEXT,"
    " billing_type TEXT, billing_unit TEXT, billing_count INTEGER, country_code TEXT, discount_code TEXT,"
    " reference_id TEXT, expiration INTEGER, created INTEGER NOT NULL, updated INTEGER NOT NULL,"
    " deliver_at INTEGER, deliver_status TEXT, deliver_failure TEXT, used_as_reference INTEGER NOT NULL DEFAULT 0);"
    "CREATE INDEX IF NOT EXISTS instances_pkg ON instances(package_seq, pos);"
    "CREATE INDEX IF NOT EXISTS instances_site ON instances(site_id) WHERE site_id IS NOT NULL;"
    "CREATE INDEX IF NOT EXISTS instances_due ON instances(deliver_at) WHERE status = 'PENDING';"
    /* A query's $hasSome on status: the few instances with a value, or one seek per value and package. */
    "CREATE INDEX IF NOT EXISTS instances_status ON instances(status, package_seq);"
    "CREATE TABLE IF NOT EXISTS idempotency(account_id TEXT NOT NULL, key TEXT NOT NULL, route TEXT NOT NULL,"
    " status INTEGER NOT NULL, body TEXT NOT NULL, created INTEGER NOT NULL, PRIMARY KEY(account_id, key));";

#define INST_COLS                                                                                          \
    "instance_id, site_id, catalog_product_id, status, failure_code, failure_message, billing_type,"     \
    " billing_unit, billing_count, country_code, discount_code, reference_id, expiration, created, updated"

static const char *const sql[ST__COUNT] = {
    [ST_ACCOUNT_GET] = "SELECT id, parent_id, type FROM accounts WHERE id = ?1",
    [ST_ACCOUNT_PUT] = "INSERT OR REPLACE INTO accounts(id, parent_id, type, name) VALUES(?1, ?2, ?3, ?4)",
    [ST_SITE_GET] = "SELECT account_id FROM sites WHERE id = ?1",
    [ST_SITE_PUT] = "INSERT OR REPLACE INTO sites(id, account_id, name) VALUES(?1, ?2, ?3)",
    [ST_PKG_BY_ID] = "SELECT seq, account_id, parent_account_id FROM packages WHERE id = ?1",
    [ST_PKG_BY_SEQ] = "SELECT id, account_id, parent_account_id, external_id, created, updated FROM packages WHERE seq = ?1",
    [ST_PKG_INSERT] = "INSERT INTO packages(id, account_id, parent_account_id, external_id, created, updated)"
                      " VALUES(?1, ?2, ?3, ?4, ?5, ?5)",
    [ST_PKG_TOUCH] = "UPDATE packages SET updated = ?2 WHERE seq = ?1",
    [ST_PKG_SET_EXT] = "UPDATE packages SET external_id = ?2, updated = ?3 WHERE seq = ?1",
    [ST_INST_OF_PKG] = "SELECT " INST_COLS " FROM instances WHERE package_seq = ?1 ORDER BY pos",
    [ST_INST_GET] = "SELECT i.instance_id, i.package_seq, i.site_id, i.catalog_product_id, i.status,"
                    " i.billing_type, i.billing_unit, i.billing_count, i.used_as_reference,"
                    " p.account_id, p.parent_account_id"
                    " FROM instances i JOIN packages p ON p.seq = i.package_seq WHERE i.instance_id = ?1",
    [ST_INST_INSERT] = "INSERT INTO instances(instance_id, package_seq, pos, site_id, catalog_product_id, product_type,"
                       " status, billing_type, billing_unit, billing_count, country_code, discount_code, reference_id,"
                       " expiration, created, updated, deliver_at, deliver_status, deliver_failure)"
                       " VALUES(?1, ?2, ?3, ?4, ?5, ?6, 'PENDING', ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14, ?15, ?16, ?17)",
    [ST_INST_SET_STATUS] = "UPDATE instances SET status = ?2, failure_code = ?3, failure_message = ?4, updated = ?5,"
                           " deliver_at = NULL WHERE instance_id = ?1",
    [ST_INST_SET_SITE] = "UPDATE instances SET site_id = ?2, updated = ?3 WHERE instance_id = ?1",
    [ST_INST_ADJUST] = "UPDATE instances SET catalog_product_id = ?2, product_type = ?3, billing_type = ?4,"
                       " billing_unit = ?5, billing_count = ?6, discount_code = COALESCE(?7, discount_code), updated = ?8"
                       " WHERE instance_id = ?1",
    [ST_INST_MARK_REF] = "UPDATE instances SET used_as_reference = 1 WHERE instance_id = ?1",
    [ST_INST_LIVE_ON_SITE] = "SELECT instance_id, catalog_product_id, product_type FROM instances"
                             " WHERE site_id = ?1 AND status IN ('PENDING', 'ENABLED', 'AWAITING_ACTION')",
    [ST_INST_COUNT_PRODUCT] = "SELECT count(*) FROM instances i JOIN packages p ON p.seq = i.package_seq"
                              " WHERE i.catalog_product_id = ?1 AND p.parent_account_id = ?2"
                              " AND i.status IN ('PENDING', 'ENABLED', 'AWAITING_ACTION')",
    [ST_DUE_PKG] = "UPDATE packages SET updated = ?1 WHERE seq IN (SELECT package_seq FROM instances"
                   " WHERE status = 'PENDING' AND deliver_at <= ?1)",
    [ST_DUE_INST] = "UPDATE instances SET status = deliver_status, failure_code = deliver_failure,"
                    " failure_message = CASE WHEN deliver_failure IS NULL THEN NULL"
                    " ELSE 'Delivery of the product did not complete' END,"
                    " updated = ?1, deliver_at = NULL WHERE status = 'PENDING' AND deliver_at <= ?1",
    [ST_IDEM_GET] = "SELECT route, status, body FROM idempotency WHERE account_id = ?1 AND key = ?2",
    [ST_IDEM_PUT] = "INSERT OR REPLACE INTO idempotency(account_id, key, route, status, body, created)"
                    " VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_BEGIN_READ] = "BEGIN",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_PKG_LAST_SEQ] = "SELECT coalesce(max(seq), 0) FROM packages",
    [ST_PKG_COUNT] = "SELECT count(*) FROM packages",
    [ST_NEXT_DUE] = "SELECT min(deliver_at) FROM instances WHERE status = 'PENDING' AND deliver_at IS NOT NULL",
    [ST_INST_COUNT_STATUS] = "SELECT status, count(*) FROM instances GROUP BY status ORDER BY status",
    [ST_ACCOUNT_LIST] = "SELECT id, parent_id, type, name FROM accounts ORDER BY rowid",
    [ST_SITE_LIST] = "SELECT id, account_id, name FROM sites ORDER BY rowid",
};

int emu_store_open(emu_t *e, const char *path, char *err, size_t errlen)
{
    if (sqlite3_open_v2(path, &e->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) !=
        SQLITE_OK) {
        snprintf(err, errlen, "%s: cannot open the database: %s", path,
                 e->db ? sqlite3_errmsg(e->db) : "out of memory");
        return -1;
    }
    char *msg = NULL;
    if (sqlite3_exec(e->db,
                     "PRAGMA locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-4000;"
                     "PRAGMA busy_timeout=5000;",
                     NULL, NULL, &msg) != SQLITE_OK ||
        sqlite3_exec(e->db, schema, NULL, NULL, &msg) != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, msg ? msg : sqlite3_errmsg(e->db));
        sqlite3_free(msg);
        return -1;
    }
    for (int i = 0; i < ST__COUNT; i++) {
        if (sqlite3_prepare_v3(e->db, sql[i], -1, SQLITE_PREPARE_PERSISTENT, &e->st[i], NULL) != SQLITE_OK) {
            snprintf(err, errlen, "%s: preparing statement %d: %s", path, i, sqlite3_errmsg(e->db));
            return -1;
        }
    }
    return 0;
}

void emu_store_close(emu_t *e)
{
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_finalize(e->st[i]);
    if (e->db)
        sqlite3_close(e->db);
    e->db = NULL;
}

sqlite3_stmt *emu_stmt(emu_t *e, int which)
{
    sqlite3_stmt *s = e->st[which];
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

static int exec_simple(emu_t *e, int which)
{
    sqlite3_stmt *s = emu_stmt(e, which);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE ? 0 : -1;
}

void emu_store_quiesce(emu_t *e)
{
    for (int i = 0; i < ST__COUNT; i++)
        sqlite3_reset(e->st[i]);
}

int emu_begin(emu_t *e) { return exec_simple(e, ST_BEGIN); }
int emu_begin_read(emu_t *e) { return exec_simple(e, ST_BEGIN_READ); }
int emu_commit(emu_t *e) { return exec_simple(e, ST_COMMIT); }
void emu_rollback(emu_t *e)
{
    if (!sqlite3_get_autocommit(e->db))
        exec_simple(e, ST_ROLLBACK);
}

int emu_store_seed(emu_t *e, char *err, size_t errlen)
{
    if (emu_begin(e) < 0)
        goto fail;
    for (int i = 0; i < e->cat.naccounts; i++) {
        emu_seed_account *a = &e->cat.accounts[i];
        sqlite3_stmt *s = emu_stmt(e, ST_ACCOUNT_PUT);
        sqlite3_bind_text(s, 1, a->id, -1, SQLITE_STATIC);
        if (a->parent[0])
            sqlite3_bind_text(s, 2, a->parent, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, a->type, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, a->name, -1, SQLITE_STATIC);
        if (sqlite3_step(s) != SQLITE_DONE)
            goto fail;
        for (int j = 0; j < a->nsites; j++) {
            s = emu_stmt(e, ST_SITE_PUT);
            sqlite3_bind_text(s, 1, a->sites[j].id, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 2, a->id, -1, SQLITE_STATIC);
            sqlite3_bind_text(s, 3, a->sites[j].name, -1, SQLITE_STATIC);
            if (sqlite3_step(s) != SQLITE_DONE)
                goto fail;
        }
    }
    if (emu_commit(e) < 0)
        goto fail;
    emu_store_refresh_due(e);
    return 0;
fail:
    snprintf(err, errlen, "seeding accounts: %s", sqlite3_errmsg(e->db));
    emu_rollback(e);
    return -1;
}

int emu_store_reset(emu_t *e)
{
    char err[256];
    if (sqlite3_exec(e->db,
                     "DELETE FROM instances; DELETE FROM packages; DELETE FROM idempotency;"
                     "DELETE FROM sites; DELETE FROM accounts;",
                     NULL, NULL, NULL) != SQLITE_OK)
        return -1;
    return emu_store_seed(e, err, sizeof err);
}

void emu_store_refresh_due(emu_t *e)
{
    sqlite3_stmt *s = emu_stmt(e, ST_NEXT_DUE);
    e->next_due = LLONG_MAX;
    if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
        e->next_due = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
}

void emu_store_schedule(emu_t *e, long long at)
{
    if (at < e->next_due)
        e->next_due = at;
}

void emu_store_deliver_due(emu_t *e, long long now)
{
    if (now < e->next_due)
        return;
    sqlite3_stmt *s = emu_stmt(e, ST_DUE_PKG);
    sqlite3_bind_int64(s, 1, now);
    sqlite3_step(s);
    s = emu_stmt(e, ST_DUE_INST);
    sqlite3_bind_int64(s, 1, now);
    sqlite3_step(s);
    sqlite3_reset(s);
    emu_store_refresh_due(e);
}

static const char *col(sqlite3_stmt *s, int i)
{
    return (const char *)sqlite3_column_text(s, i);
}

static void kdate(json_writer *w, const char *k, long long ms)
{
    char d[64];
    emu_format_date(ms, d);
    jw_key(w, k);
    jw_str(w, d);
}

int emu_render_package(emu_t *e, long long seq, json_writer *w)
{
    sqlite3_stmt *p = emu_stmt(e, ST_PKG_BY_SEQ);
    sqlite3_bind_int64(p, 1, seq);
    if (sqlite3_step(p) != SQLITE_ROW)
        return -1;
    jw_obj(w);
    jw_kstr(w, "id", col(p, 0));
    jw_kstr(w, "accountId", col(p, 1));
    jw_kstr(w, "parentAccountId", col(p, 2));
    jw_kstr(w, "externalId", col(p, 3));
    jw_key(w, "productInstances");
    jw_arr(w);
    sqlite3_stmt *s = emu_stmt(e, ST_INST_OF_PKG);
    sqlite3_bind_int64(s, 1, seq);
    while (sqlite3_step(s) == SQLITE_ROW) {
        jw_obj(w);
        jw_kstr(w, "instanceId", col(s, 0));
        jw_kstr(w, "siteId", col(s, 1));
        jw_kstr(w, "catalogProductId", col(s, 2));
        jw_kstr(w, "status", col(s, 3));
        if (col(s, 4)) {
            jw_key(w, "failure");
            jw_obj(w);
            jw_kstr(w, "code", col(s, 4));
            jw_kstr(w, "message", col(s, 5));
            jw_obj_end(w);
        }
        if (col(s, 6)) {
            jw_key(w, "billingInfo");
            jw_obj(w);
            jw_kstr(w, "type", col(s, 6));
            if (col(s, 7)) {
                jw_key(w, "cycleDuration");
                jw_obj(w);
                jw_kstr(w, "unit", col(s, 7));
                jw_key(w, "count");
                jw_int(w, sqlite3_column_int(s, 8));
                jw_obj_end(w);
            }
            jw_obj_end(w);
        }
        jw_kstr(w, "countryCode", col(s, 9));
        jw_kstr(w, "discountCode", col(s, 10));
        jw_kstr(w, "referenceProductInstanceId", col(s, 11));
        if (sqlite3_column_type(s, 12) != SQLITE_NULL)
            kdate(w, "expirationDate", sqlite3_column_int64(s, 12));
        kdate(w, "createdDate", sqlite3_column_int64(s, 13));
        kdate(w, "updatedDate", sqlite3_column_int64(s, 14));
        jw_obj_end(w);
    }
    jw_arr_end(w);
    kdate(w, "createdDate", sqlite3_column_int64(p, 4));
    kdate(w, "updatedDate", sqlite3_column_int64(p, 5));
    jw_obj_end(w);
    sqlite3_reset(s);
    sqlite3_reset(p);
    return 0;
}

int emu_package_lookup(emu_t *e, const char *id, long long *seq, char account[EMU_ID_LEN + 1],
                       char parent[EMU_ID_LEN + 1])
{
    sqlite3_stmt *s = emu_stmt(e, ST_PKG_BY_ID);
    sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW)
        return -1;
    *seq = sqlite3_column_int64(s, 0);
    snprintf(account, EMU_ID_LEN + 1, "%s", col(s, 1));
    snprintf(parent, EMU_ID_LEN + 1, "%s", col(s, 2));
    sqlite3_reset(s);
    return 0;
}

int emu_instance_get(emu_t *e, const char *instance_id, emu_instance *out)
{
    sqlite3_stmt *s = emu_stmt(e, ST_INST_GET);
    sqlite3_bind_text(s, 1, instance_id, -1, SQLITE_STATIC);
    if (sqlite3_step(s) != SQLITE_ROW)
        return -1;
    memset(out, 0, sizeof *out);
    snprintf(out->instance_id, sizeof out->instance_id, "%s", col(s, 0));
    out->package_seq = sqlite3_column_int64(s, 1);
    snprintf(out->site_id, sizeof out->site_id, "%s", col(s, 2) ? col(s, 2) : "");
    snprintf(out->product_id, sizeof out->product_id, "%s", col(s, 3));
    snprintf(out->status, sizeof out->status, "%s", col(s, 4));
    snprintf(out->billing.type, sizeof out->billing.type, "%s", col(s, 5) ? col(s, 5) : "");
    snprintf(out->billing.unit, sizeof out->billing.unit, "%s", col(s, 6) ? col(s, 6) : "");
    out->billing.count = sqlite3_column_int(s, 7);
    out->used_as_reference = sqlite3_column_int(s, 8);
    snprintf(out->pkg_account, sizeof out->pkg_account, "%s", col(s, 9));
    snprintf(out->pkg_parent, sizeof out->pkg_parent, "%s", col(s, 10));
    sqlite3_reset(s);
    return 0;
}
