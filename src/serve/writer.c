/*
 * writer.c -- the journal writer thread: it commits every intake waiting in
 * one transaction with one fsync (group commit) and wakes each waiting
 * connection, and commits the run outcomes the main loop hands it.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "serve_internal.h"

/* Writer thread: applies state changes (one transaction, no fsync needed:
 * see journal_set_durable). Returns the list of ids settled. */
static int apply_ops(serve *s, run_change *ops)
{
    journal_set_durable(s->jwrite, 0);
    int rc = journal_begin(s->jwrite);
    for (run_change *o = ops; o && rc == 0; o = o->next) {
        if (o->kind == 0)
            rc = journal_mark_done(s->jwrite, o->id, o->results);
        else if (o->kind == 1)
            rc = journal_mark_retry(s->jwrite, o->id, o->next_attempt_ms, o->error, o->results);
        else if (o->kind == 2)
            rc = journal_mark_dead(s->jwrite, o->id, o->error, o->results);
        else if (o->kind == 4 || o->kind == 5)
            rc = journal_mark_lost(s->jwrite, o->id, o->kind == 4, o->next_attempt_ms, o->error);
        else
            rc = journal_mark_running(s->jwrite, o->id);
        if (rc > 0)
            rc = 0; /* the event is gone (purged by `wixr events`): nothing to mark */
    }
    if (rc == 0) {
        rc = journal_commit(s->jwrite);
        if (rc < 0)
            journal_failed(s, journal_errmsg(s->jwrite), 0);
    } else {
        char why[512];
        snprintf(why, sizeof why, "%s", journal_errmsg(s->jwrite));
        journal_commit(s->jwrite); /* ends the transaction; the error kept is the write's */
        journal_failed(s, why, 0);
    }
    journal_set_durable(s->jwrite, 1);
    return rc;
}

/* The WAL starts over only when a checkpoint has copied all of it, and a
 * checkpoint beside a writer that keeps appending never has: the writer
 * itself, between two group commits (nothing appends meanwhile), copies what
 * it wrote once that passes WAL_STEP_PAGES, a few milliseconds each, so the
 * next commit starts the WAL over. Should readers hold it back until it
 * passes serve.journal_wal_mb, the writer waits for them and truncates it.
 * The file's size is looked at every 50 ms at most. */
#define WAL_STEP_PAGES 512
static void bound_wal(serve *s, long long *next_look)
{
    if (journal_wal_pages(s->jwrite) >= WAL_STEP_PAGES)
        journal_checkpoint_passive(s->jwrite);
    long long now = sched_now_ms();
    if (now < *next_look)
        return;
    *next_look = now + 50;
    if (journal_wal_size(s->jwrite) <= s->boot_cfg->serve.journal_wal_mb * 1024 * 1024)
        return;
    if (journal_checkpoint_truncate(s->jwrite) == 0) {
        pthread_mutex_lock(&s->lock);
        s->wal_truncations++;
        pthread_mutex_unlock(&s->lock);
    }
}

/* Retention: finished events past serve.journal_keep_days, or beyond
 * serve.journal_keep_events, are deleted a chunk at a time between group
 * commits: once a second, or at once again while there is more. */
#define RETAIN_CHUNK 500
static void retain(serve *s, long long *next_retain)
{
    const serve_settings *ss = &s->boot_cfg->serve;
    long long now = sched_now_ms();
    if (now < *next_retain || (!ss->journal_keep_days && !ss->journal_keep_events))
        return;
    long long cut = ss->journal_keep_days ? journal_now_ms() - ss->journal_keep_days * 86400000LL : 0;
    int n = journal_retain(s->jwrite, cut, ss->journal_keep_events, RETAIN_CHUNK);
    *next_retain = now + (n == RETAIN_CHUNK ? 20 : 1000);
    if (n > 0) {
        pthread_mutex_lock(&s->lock);
        s->purged_total += n;
        pthread_mutex_unlock(&s->lock);
    }
}

void *writer_main(void *arg)
{
    serve *s = arg;
    long long next_look = 0, next_retain = 0;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->qhead && !s->wops_head && !s->writer_stop) {
            /* idle: the retention's next chunk is due within a second */
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_sec += 1;
            if (pthread_cond_timedwait(&s->queued, &s->lock, &until) != 0 && !s->qhead && !s->wops_head &&
                !s->writer_stop) {
                pthread_mutex_unlock(&s->lock);
                retain(s, &next_retain);
                pthread_mutex_lock(&s->lock);
            }
        }
        if (!s->qhead && !s->wops_head && s->writer_stop)
            break;
        intake *batch = s->qhead;
        s->qhead = s->qtail = NULL;
        run_change *ops = s->wops_head;
        s->wops_head = s->wops_tail = NULL;
        pthread_mutex_unlock(&s->lock);
        if (ops) {
            apply_ops(s, ops);
            pthread_mutex_lock(&s->lock);
            for (run_change *o = ops, *next; o; o = next) {
                next = o->next;
                if (o->kind != 3) {
                    if (s->nsettled == s->capsettled) {
                        s->capsettled = s->capsettled ? s->capsettled * 2 : 64;
                        char **ns = realloc(s->settled, (size_t)s->capsettled * sizeof *ns);
                        if (ns)
                            s->settled = ns;
                    }
                    if (s->nsettled < s->capsettled) {
                        s->settled[s->nsettled++] = o->id;
                        o->id = NULL;
                    }
                }
                free(o->id);
                free(o->error);
                free(o->results);
                free(o);
            }
            pthread_mutex_unlock(&s->lock);
            uint64_t one = 1;
            if (write(s->evfd, &one, sizeof one) < 0) {
                /* the main loop polls anyway */
            }
        }
        if (!batch) {
            bound_wal(s, &next_look);
            retain(s, &next_retain);
            pthread_mutex_lock(&s->lock);
            continue;
        }

        int n = 0;
        for (intake *q = batch; q; q = q->next)
            n++;
        journal_new *items = calloc((size_t)n, sizeof *items);
        char err[256] = "";
        int rc = -1;
        if (items) {
            int i = 0;
            for (intake *q = batch; q; q = q->next)
                items[i++] = q->item;
            rc = journal_accept_many(s->jwrite, items, n, err, sizeof err);
            if (rc < 0)
                journal_failed(s, err, 0);
        }
        pthread_mutex_lock(&s->lock);
        int i = 0;
        for (intake *q = batch; q; q = q->next, i++) {
            q->done = 1;
            if (rc < 0) {
                q->status = -1;
                snprintf(q->err, sizeof q->err, "%s", err[0] ? err : "out of memory");
            } else {
                q->status = items[i].result;
                q->item.existing = items[i].existing;
                if (q->status == 0)
                    s->accepted_total++;
                else if (q->status == 1)
                    s->duplicates_total++;
                else
                    snprintf(q->err, sizeof q->err, "refused by the journal");
            }
        }
        free(items);
        for (intake *q = batch, *next; q; q = next) {
            next = q->next; /* q may be gone once its waiter runs */
            pthread_cond_signal(&q->wake);
        }
        uint64_t one = 1;
        if (write(s->evfd, &one, sizeof one) < 0) {
            /* the main loop polls anyway */
        }
        pthread_mutex_unlock(&s->lock);
        bound_wal(s, &next_look);
        retain(s, &next_retain);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}
