/*
 * watch.c -- the request deadline of the HTTP fronts: every open connection
 * and when its current request began, so a slow client can be cut off (see
 * http.h).
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "http.h"

/* An open connection. */
typedef struct watched {
    int fd;                       /* -1: the slot is free */
    long long since_ms;           /* when its current request began (opened, or the last one answered) */
    int answering;                /* the request is whole and being answered: not cut */
    int cut;
} watched;

struct http_watch {
    pthread_mutex_t lock;         /* guards the slots */
    int n;
    watched slot[];
};

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

http_watch *http_watch_new(int slots)
{
    http_watch *w = malloc(sizeof *w + (size_t)slots * sizeof w->slot[0]);
    if (!w)
        return NULL;
    pthread_mutex_init(&w->lock, NULL);
    w->n = slots;
    for (int i = 0; i < slots; i++)
        w->slot[i].fd = -1;
    return w;
}

void http_watch_free(http_watch *w)
{
    if (!w)
        return;
    pthread_mutex_destroy(&w->lock);
    free(w);
}

void http_watch_notify(void *cls, struct MHD_Connection *c, void **socket_context,
                       enum MHD_ConnectionNotificationCode code)
{
    http_watch *w = cls;
    pthread_mutex_lock(&w->lock);
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        for (int i = 0; ci && i < w->n; i++) {
            if (w->slot[i].fd < 0) {
                w->slot[i] = (watched){.fd = ci->connect_fd, .since_ms = now_ms()};
                *socket_context = &w->slot[i];
                break;
            }
        }
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        ((watched *)*socket_context)->fd = -1;
        *socket_context = NULL;
    }
    pthread_mutex_unlock(&w->lock);
}

void http_watch_mark(http_watch *w, struct MHD_Connection *c, int answering)
{
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (!ci || !ci->socket_context)
        return;
    pthread_mutex_lock(&w->lock);
    watched *slot = ci->socket_context;
    slot->answering = answering;
    if (!answering)
        slot->since_ms = now_ms();
    pthread_mutex_unlock(&w->lock);
}

int http_watch_cut(http_watch *w, long long limit_ms)
{
    long long now = now_ms();
    int n = 0;
    pthread_mutex_lock(&w->lock);
    for (int i = 0; i < w->n; i++) {
        watched *slot = &w->slot[i];
        if (slot->fd >= 0 && !slot->cut && !slot->answering && now - slot->since_ms > limit_ms) {
            shutdown(slot->fd, SHUT_RDWR);
            slot->cut = 1;
            n++;
        }
    }
    pthread_mutex_unlock(&w->lock);
    return n;
}
