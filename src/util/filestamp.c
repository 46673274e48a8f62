/*
 * filestamp.c -- a file's identity and times (see filestamp.h).
 */
#include "filestamp.h"

#include <string.h>

static int before(struct timespec a, struct timespec b)
{
    return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

static int same_time(struct timespec a, struct timespec b)
{
    return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

void file_stamp_of(const struct stat *st, file_stamp *s)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct timespec settled = {now.tv_sec - 1, now.tv_nsec};
    *s = (file_stamp){st->st_dev, st->st_ino, st->st_size, st->st_mtim, st->st_ctim, 0};
    s->settled = before(st->st_mtim, settled) && before(st->st_ctim, settled);
}

int file_stamp_take(const char *path, file_stamp *s)
{
    struct stat st;
    if (stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
        memset(s, 0, sizeof *s);
        return -1;
    }
    file_stamp_of(&st, s);
    return 0;
}

int file_stamp_same(const file_stamp *a, const file_stamp *b)
{
    return a->settled && b->settled && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           same_time(a->mtime, b->mtime) && same_time(a->ctime, b->ctime);
}
