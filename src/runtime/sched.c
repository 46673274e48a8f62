/*
 * sched.c -- tasks, timers and libcurl transfers in one loop (see sched.h).
 */
#define _GNU_SOURCE
#include "sched.h"

#include <errno.h>
#include <lauxlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

volatile unsigned long sched_progress;

struct sched_task {
    unsigned long id;
    unsigned long group;
    int killed;            /* ended by sched_kill_group; freed when next scheduled */
    int queued;            /* on the ready queue */
    lua_State *L;          /* the state owning the registry ref */
    lua_State *co;
    int ref;               /* registry ref keeping the thread alive */
    int nargs;             /* values waiting on co's stack for the next resume */
    int parked;
    int flags;             /* SCHED_RESULT_JSON */
    void *payload;         /* for the task's continuation (sched_set_payload) */
    void (*payload_free)(void *);
    sched_done_fn done;
    void *done_arg;
    sched_task *next_ready;
    sched_task *next_all, *prev_all;
    sched_task *next_in_bucket, *prev_in_bucket; /* the tasks whose group hashes alike (group != 0) */
};

/* Tasks by group, so ending a run's group costs its own tasks, not a walk
 * over every task in flight: a bucket holds the tasks whose group falls in it. */
#define GROUP_BUCKETS 1024

typedef struct timer {
    long long at;
    unsigned long seq;
    int weak;
    int free_arg;
    sched_task *owner;
    sched_fn fn;
    void *arg;
} timer;

struct sched {
    lua_State *L;
    CURLM *multi;
    int transfers;
    sched_task *ready_head, *ready_tail;
    sched_task *all;
    sched_task *by_group[GROUP_BUCKETS];
    sched_task *current;
    unsigned long next_id, next_group;
    int ntasks;
    timer *timers;         /* binary min-heap on (at, seq) */
    int ntimers, captimers;
    int strong_timers;
    /* libcurl's sockets, the watched fds and the wakeup in one epoll set:
     * the loop hands libcurl only the sockets that are ready (socket_action),
     * so a wait costs what happened, not every transfer in flight. */
    int epfd, wakefd;
    long long curl_at;     /* when libcurl wants its timeouts run; -1: not */
    unsigned char *fds;    /* by fd: FD_IN_SET | FD_WANTED | the events asked for */
    int nfds;
    int nwatch;            /* fds sched_watch_fd added to the epoll set (at most 4) */
    unsigned long timer_seq;
};

/* What an epoll event is about (its data's high half; the low half is the fd). */
#define EV_CURL 0u
#define EV_WATCH 1u
#define EV_WAKE 2u

/* A socket libcurl no longer waits for (CURL_POLL_REMOVE) stays in the epoll
 * set, not wanted: the next transfer on that connection wants it again at the
 * cost of one MOD, not a DEL and an ADD; should it become ready meanwhile (the
 * server closed it), it leaves the set then. */
#define FD_IN_SET 0x80u
#define FD_WANTED 0x40u
#define FD_EVENTS (EPOLLIN | EPOLLOUT)

long long sched_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int ep_set(sched_t *s, int op, int fd, unsigned kind, unsigned events)
{
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)kind << 32 | (uint32_t)fd};
    return epoll_ctl(s->epfd, op, fd, &ev);
}

/* libcurl says which of its sockets to wait for (CURLMOPT_SOCKETFUNCTION). */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    sched_t *s = userp;
    if (fd < 0)
        return -1;
    if (fd >= s->nfds) {
        if (what == CURL_POLL_REMOVE)
            return 0;
        int n = s->nfds ? s->nfds : 64;
        while (n <= fd)
            n *= 2;
        unsigned char *f = realloc(s->fds, (size_t)n);
        if (!f)
            return -1;
        memset(f + s->nfds, 0, (size_t)(n - s->nfds));
        s->fds = f;
        s->nfds = n;
    }
    unsigned char *st = &s->fds[fd];
    if (what == CURL_POLL_REMOVE) {
        *st &= (unsigned char)~FD_WANTED;
        return 0;
    }
    unsigned events = (what & CURL_POLL_IN ? EPOLLIN : 0u) | (what & CURL_POLL_OUT ? EPOLLOUT : 0u);
    /* In the set already (as far as we know: a socket closed and opened again
     * under the same number is not): a MOD, else an ADD. */
    if (*st & FD_IN_SET) {
        if (ep_set(s, EPOLL_CTL_MOD, fd, EV_CURL, events) < 0 &&
            (errno != ENOENT || ep_set(s, EPOLL_CTL_ADD, fd, EV_CURL, events) < 0))
            return -1;
    } else if (ep_set(s, EPOLL_CTL_ADD, fd, EV_CURL, events) < 0 &&
               (errno != EEXIST || ep_set(s, EPOLL_CTL_MOD, fd, EV_CURL, events) < 0)) {
        return -1;
    }
    *st = (unsigned char)(FD_IN_SET | FD_WANTED | events);
    return 0;
}

/* libcurl's one timeout for all its transfers (CURLMOPT_TIMERFUNCTION). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    sched_t *s = userp;
    s->curl_at = timeout_ms < 0 ? -1 : sched_now_ms() + timeout_ms;
    return 0;
}

sched_t *sched_new(lua_State *L)
{
    sched_t *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->L = L;
    s->curl_at = -1;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    s->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    s->multi = curl_multi_init();
    if (!s->multi || s->epfd < 0 || s->wakefd < 0 || ep_set(s, EPOLL_CTL_ADD, s->wakefd, EV_WAKE, EPOLLIN) < 0) {
        if (s->multi)
            curl_multi_cleanup(s->multi);
        if (s->epfd >= 0)
            close(s->epfd);
        if (s->wakefd >= 0)
            close(s->wakefd);
        free(s);
        return NULL;
    }
    curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, 256L);
    curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
    curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
    return s;
}

/* Takes t off the list of tasks and frees it; unref drops its thread's
 * registry reference (not when its state is being closed anyway). */
static void task_release(sched_t *s, sched_task *t, int unref)
{
    if (t->prev_all)
        t->prev_all->next_all = t->next_all;
    else
        s->all = t->next_all;
    if (t->next_all)
        t->next_all->prev_all = t->prev_all;
    if (t->group) {
        if (t->prev_in_bucket)
            t->prev_in_bucket->next_in_bucket = t->next_in_bucket;
        else
            s->by_group[t->group % GROUP_BUCKETS] = t->next_in_bucket;
        if (t->next_in_bucket)
            t->next_in_bucket->prev_in_bucket = t->prev_in_bucket;
    }
    if (unref)
        luaL_unref(t->L, LUA_REGISTRYINDEX, t->ref);
    if (t->payload && t->payload_free)
        t->payload_free(t->payload);
    s->ntasks--;
    free(t);
}

static void task_free(sched_t *s, sched_task *t)
{
    task_release(s, t, 1);
}

void sched_free(sched_t *s)
{
    if (!s)
        return;
    while (s->all)
        task_free(s, s->all);
    curl_multi_cleanup(s->multi);
    close(s->epfd);
    close(s->wakefd);
    free(s->fds);
    for (int i = 0; i < s->ntimers; i++)
        if (s->timers[i].free_arg)
            free(s->timers[i].arg);
    free(s->timers);
    free(s);
}

static void push_ready(sched_t *s, sched_task *t)
{
    t->queued = 1;
    t->next_ready = NULL;
    if (s->ready_tail)
        s->ready_tail->next_ready = t;
    else
        s->ready_head = t;
    s->ready_tail = t;
}

sched_task *sched_spawn(sched_t *s, lua_State *L, int nargs, sched_done_fn done, void *arg)
{
    return sched_spawn_in(s, L, nargs, 0, SCHED_RESULT_JSON, done, arg);
}

unsigned long sched_new_group(sched_t *s) { return ++s->next_group; }
unsigned long sched_task_group(const sched_task *t) { return t->group; }

void sched_kill_group(sched_t *s, unsigned long group, const char *msg)
{
    if (!group)
        return;
    for (sched_task *t = s->by_group[group % GROUP_BUCKETS]; t; t = t->next_in_bucket) {
        if (t->group != group || t->killed)
            continue;
        int was_parked = t->parked;
        t->killed = 1;
        t->parked = 0;
        if (t->done) {
            sched_done_fn done = t->done;
            t->done = NULL;
            task_outcome o;
            outcome_set(&o, OUTCOME_ERROR, msg);
            done(t, t->co, &o, t->done_arg);
        }
        if (was_parked && !t->queued)
            push_ready(s, t); /* nothing else would ever schedule it: let the loop free it */
        /* A timer that would wake it no longer keeps the loop going. */
        for (int i = 0; i < s->ntimers; i++) {
            if (s->timers[i].owner == t && !s->timers[i].weak) {
                s->timers[i].weak = 1;
                s->strong_timers--;
            }
        }
    }
}

void sched_forget_state(sched_t *s, lua_State *L)
{
    sched_task *t = s->all;
    while (t) {
        sched_task *next = t->next_all;
        if (t->L == L) {
            /* off the ready queue */
            sched_task **p = &s->ready_head;
            sched_task *prev = NULL;
            while (*p) {
                if (*p == t) {
                    *p = t->next_ready;
                    if (s->ready_tail == t)
                        s->ready_tail = prev;
                    break;
                }
                prev = *p;
                p = &(*p)->next_ready;
            }
            for (int i = 0; i < s->ntimers; i++) {
                if (s->timers[i].owner == t) {
                    s->timers[i].owner = NULL;
                    if (!s->timers[i].weak) {
                        s->timers[i].weak = 1;
                        s->strong_timers--;
                    }
                }
            }
            task_release(s, t, 0);
        }
        t = next;
    }
}

typedef struct spawn_prep {
    int nargs;
    lua_State *co;
    int ref;
} spawn_prep;

/* (f, args..., spawn_prep): the task's thread, referenced from the registry,
 * with f and its arguments moved onto it. Allocates: runs protected. */
static int prepare_thread(lua_State *L)
{
    spawn_prep *p = lua_touserdata(L, -1);
    lua_pop(L, 1);
    lua_State *co = lua_newthread(L);
    lua_pushvalue(L, -1);
    int ref = luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pop(L, 1);
    lua_xmove(L, co, p->nargs + 1);
    p->co = co;
    p->ref = ref;
    return 0;
}

sched_task *sched_spawn_in(sched_t *s, lua_State *L, int nargs, unsigned long group, int flags, sched_done_fn done,
                           void *arg)
{
    sched_task *t = calloc(1, sizeof *t);
    spawn_prep p = {nargs, NULL, LUA_NOREF};
    if (!t || !lua_checkstack(L, 2)) {
        free(t);
        lua_pop(L, nargs + 1);
        return NULL;
    }
    lua_pushcfunction(L, prepare_thread);
    lua_insert(L, -(nargs + 2));
    lua_pushlightuserdata(L, &p);
    if (lua_pcall(L, nargs + 2, 0, 0) != LUA_OK) {
        lua_pop(L, 1); /* the memory error; f and its arguments went with the call */
        free(t);
        return NULL;
    }
    t->co = p.co;
    t->ref = p.ref;
    t->nargs = nargs;
    t->flags = flags;
    /* The state's main thread, whichever thread spawned it: sched_forget_state
     * finds every task of a state this way (a wix.spawn task left sleeping
     * when its run ended would otherwise outlive its state). Reading the
     * registry's array part does not allocate. */
    lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
    t->L = lua_tothread(L, -1);
    lua_pop(L, 1);
    t->group = group;
    t->id = ++s->next_id;
    t->done = done;
    t->done_arg = arg;
    t->next_all = s->all;
    if (s->all)
        s->all->prev_all = t;
    s->all = t;
    if (group) {
        sched_task **b = &s->by_group[group % GROUP_BUCKETS];
        t->next_in_bucket = *b;
        if (*b)
            (*b)->prev_in_bucket = t;
        *b = t;
    }
    s->ntasks++;
    push_ready(s, t);
    return t;
}

void sched_ready(sched_t *s, sched_task *t, int nvalues)
{
    t->nargs = nvalues;
    if (!t->queued)
        push_ready(s, t);
}

void sched_set_payload(sched_task *t, void *p, void (*free_fn)(void *))
{
    if (t->payload && t->payload_free)
        t->payload_free(t->payload);
    t->payload = p;
    t->payload_free = free_fn;
}

void *sched_payload(sched_t *s)
{
    return s->current ? s->current->payload : NULL;
}

void sched_drop_payload(sched_t *s)
{
    if (s->current)
        sched_set_payload(s->current, NULL, NULL);
}

sched_task *sched_current(sched_t *s) { return s->current; }
lua_State *sched_task_thread(sched_task *t) { return t->co; }
unsigned long sched_task_id(sched_task *t) { return t->id; }
int sched_tasks_alive(sched_t *s) { return s->ntasks; }
void sched_task_set_parked(sched_task *t, int parked) { t->parked = parked; }
int sched_task_parked(const sched_task *t) { return t->parked; }

sched_task *sched_task_by_id(sched_t *s, unsigned long id)
{
    for (sched_task *t = s->all; t; t = t->next_all)
        if (t->id == id)
            return t;
    return NULL;
}

/* ---- timers ---- */

static int timer_less(const timer *a, const timer *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static int add_timer(sched_t *s, long long at_ms, sched_fn fn, void *arg, int weak, sched_task *owner);

int sched_timer_owning(sched_t *s, long long at_ms, sched_fn fn, void *arg, sched_task *task)
{
    if (add_timer(s, at_ms, fn, arg, 0, task) < 0)
        return -1;
    /* the new timer sits somewhere in the heap: find it by its sequence number */
    for (int i = 0; i < s->ntimers; i++)
        if (s->timers[i].seq == s->timer_seq)
            s->timers[i].free_arg = 1;
    return 0;
}

int sched_timer(sched_t *s, long long at_ms, sched_fn fn, void *arg)
{
    return add_timer(s, at_ms, fn, arg, 0, NULL);
}

int sched_timer_weak(sched_t *s, long long at_ms, sched_fn fn, void *arg)
{
    return add_timer(s, at_ms, fn, arg, 1, NULL);
}

int sched_timer_for(sched_t *s, long long at_ms, sched_fn fn, void *arg, sched_task *task)
{
    return add_timer(s, at_ms, fn, arg, 0, task);
}

static int add_timer(sched_t *s, long long at_ms, sched_fn fn, void *arg, int weak, sched_task *owner)
{
    if (s->ntimers == s->captimers) {
        int cap = s->captimers ? s->captimers * 2 : 64;
        timer *p = realloc(s->timers, (size_t)cap * sizeof *p);
        if (!p)
            return -1;
        s->timers = p;
        s->captimers = cap;
    }
    int i = s->ntimers++;
    timer t = {at_ms, ++s->timer_seq, weak, 0, owner, fn, arg};
    if (!weak)
        s->strong_timers++;
    while (i > 0 && timer_less(&t, &s->timers[(i - 1) / 2])) {
        s->timers[i] = s->timers[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->timers[i] = t;
    return 0;
}

static timer timer_pop(sched_t *s)
{
    timer top = s->timers[0];
    timer last = s->timers[--s->ntimers];
    int i = 0;
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        const timer *mt = &last;
        if (l < s->ntimers && timer_less(&s->timers[l], mt)) {
            m = l;
            mt = &s->timers[l];
        }
        if (r < s->ntimers && timer_less(&s->timers[r], mt))
            m = r;
        if (m == i)
            break;
        s->timers[i] = s->timers[m];
        i = m;
    }
    if (s->ntimers)
        s->timers[i] = last;
    return top;
}

static void fire_timers(sched_t *s)
{
    long long now = sched_now_ms();
    while (s->ntimers && s->timers[0].at <= now) {
        timer t = timer_pop(s);
        if (!t.weak)
            s->strong_timers--;
        t.fn(t.arg);
    }
}

/* ---- transfers ---- */

int sched_add_transfer(sched_t *s, CURL *easy)
{
    if (curl_multi_add_handle(s->multi, easy) != CURLM_OK)
        return -1;
    s->transfers++;
    return 0;
}

static void drain_transfers(sched_t *s)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(s->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURL *easy = m->easy_handle;
        CURLcode rc = m->data.result;
        sched_transfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(s->multi, easy);
        s->transfers--;
        if (x)
            x->done(x, rc);
    }
}

/* ---- the loop ---- */

static void run_task(sched_t *s, sched_task *t)
{
    int nres = 0;
    t->queued = 0;
    if (t->killed) {
        task_free(s, t);
        return;
    }
    s->current = t;
    sched_progress++;
    int st = lua_resume(t->co, NULL, t->nargs, &nres);
    s->current = NULL;
    t->nargs = 0;
    if (st == LUA_YIELD) {
        lua_pop(t->co, nres);
        return;
    }
    /* Ended: a kill of its group from inside done() must not call done again. */
    sched_done_fn done = t->done;
    t->done = NULL;
    t->killed = 1;
    if (done) {
        /* Told in C text, made under protection: done never calls into Lua. */
        task_outcome o;
        outcome_of(t->co, st, t->flags, SCHED_RESULT_JSON_CAP, &o);
        done(t, t->co, &o, t->done_arg);
        outcome_clear(&o);
    }
    task_free(s, t);
}

/* Runs libcurl's timeout when it is due: 1 when it ran. */
static int run_curl_timeout(sched_t *s)
{
    if (s->curl_at < 0 || s->curl_at > sched_now_ms())
        return 0;
    int running;
    s->curl_at = -1; /* (libcurl sets it again from inside) */
    curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    return 1;
}

/* Waits at most wait ms (less when libcurl's timeout comes first) for a
 * transfer's socket, a watched fd or a wakeup; lets libcurl act on the
 * sockets that are ready and on its timeout when due, and hands the finished
 * transfers to their owners. */
static void wait_io(sched_t *s, long wait)
{
    int running;
    if (run_curl_timeout(s)) {
        /* first what is due (a transfer just added starts here): it may finish something */
        drain_transfers(s);
        if (s->ready_head)
            return;
    }
    if (s->curl_at >= 0) {
        long long d = s->curl_at - sched_now_ms();
        if (d < wait)
            wait = d < 0 ? 0 : (long)d;
    }
    struct epoll_event ev[64];
    int n = epoll_wait(s->epfd, ev, 64, (int)wait);
    for (int i = 0; i < n; i++) {
        unsigned kind = (unsigned)(ev[i].data.u64 >> 32);
        int fd = (int)(uint32_t)ev[i].data.u64;
        if (kind == EV_CURL) {
            if (fd >= s->nfds || !(s->fds[fd] & FD_WANTED)) { /* a parked socket: out of the set */
                epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, NULL);
                if (fd < s->nfds)
                    s->fds[fd] = 0;
                continue;
            }
            unsigned e = ev[i].events;
            int act = (e & (EPOLLIN | EPOLLHUP) ? CURL_CSELECT_IN : 0) | (e & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                      (e & EPOLLERR ? CURL_CSELECT_ERR : 0);
            curl_multi_socket_action(s->multi, fd, act, &running);
        } else if (kind == EV_WAKE) {
            uint64_t v;
            while (read(s->wakefd, &v, sizeof v) == (ssize_t)sizeof v)
                ;
        } /* a watched fd: being ready ends the wait, nothing more */
    }
    run_curl_timeout(s);
    drain_transfers(s);
}

static void run_ready(sched_t *s)
{
    while (s->ready_head) {
        sched_task *t = s->ready_head;
        s->ready_head = t->next_ready;
        if (!s->ready_head)
            s->ready_tail = NULL;
        run_task(s, t);
    }
}

void sched_run(sched_t *s)
{
    for (;;) {
        run_ready(s);
        fire_timers(s);
        if (s->ready_head)
            continue;
        if (s->transfers > 0) {
            long wait = 1000;
            if (s->ntimers) {
                long long d = s->timers[0].at - sched_now_ms();
                wait = d < 0 ? 0 : d < 1000 ? (long)d : 1000;
            }
            wait_io(s, wait);
            continue;
        }
        if (s->strong_timers) {
            long long d = s->timers[0].at - sched_now_ms();
            if (d > 0) {
                struct timespec ts = {d / 1000, (long)(d % 1000) * 1000000L};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        break; /* nothing ready, no timers, no transfers */
    }
}

int sched_watch_fd(sched_t *s, int fd)
{
    if (s->nwatch == 4 || ep_set(s, EPOLL_CTL_ADD, fd, EV_WATCH, EPOLLIN) < 0)
        return -1;
    s->nwatch++;
    return 0;
}

void sched_wakeup(sched_t *s)
{
    uint64_t one = 1;
    ssize_t r = write(s->wakefd, &one, sizeof one);
    (void)r; /* full (EAGAIN): a wakeup is pending anyway */
}

void sched_run_for(sched_t *s, long max_wait_ms)
{
    for (int round = 0; round < 2; round++) {
        run_ready(s);
        fire_timers(s);
        if (s->transfers > 0 && round == 1)
            wait_io(s, 0);
        run_ready(s);
        if (round == 1)
            break;
        long wait = max_wait_ms;
        if (s->ntimers) {
            long long d = s->timers[0].at - sched_now_ms();
            if (d < wait)
                wait = d < 0 ? 0 : (long)d;
        }
        if (s->ready_head)
            wait = 0;
        wait_io(s, wait);
    }
}
