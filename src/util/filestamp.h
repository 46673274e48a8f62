/*
 * filestamp.h -- what tells that a file is the one read before, without
 * reading it again: its device, inode, size, modification and change times.
 * File systems' clocks tick coarsely, so a stamp counts only when both times
 * were a second older than the moment it was taken ("settled"): a file
 * changed just before it was read could change again with the same times.
 */
#ifndef WIXR_FILESTAMP_H
#define WIXR_FILESTAMP_H

#include <sys/stat.h>
#include <time.h>

typedef struct file_stamp {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime, ctime;
    int settled;                  /* 0: the stamp tells nothing (unsettled, or no file) */
} file_stamp;

/* The stamp of the file st describes, taken now. */
void file_stamp_of(const struct stat *st, file_stamp *s);
/* The stamp of the regular file at path: 0, or -1 (no such file, or not a
 * regular one: *s is then all zero and tells nothing). */
int file_stamp_take(const char *path, file_stamp *s);
/* 1 when a and b are settled stamps of the same file with the same content. */
int file_stamp_same(const file_stamp *a, const file_stamp *b);

#endif
