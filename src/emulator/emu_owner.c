/*
 * emu_owner.c -- one process owns an emulator state file, and a second one
 * is told which.
 *
 * SQLite holds the file in exclusive locking mode, but its "database is
 * locked" says neither who nor what to do. So beside FILE the owner keeps
 * FILE.lock: an flock(2) held for as long as the emulator is open, and the
 * owner's pid, command and (for `wixr sandbox serve`) URL written in it. The
 * lock, not the text, decides: the kernel drops it when the owner exits, so
 * what a later opener reads is either the live owner's or ignored (a pid that
 * no longer runs is not named).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/types.h>
#include <unistd.h>

#include "emu_internal.h"

/* "wixr sandbox serve": the program's base name and the subcommand words after it
 * (only words wixr knows as commands: an argument might be something not to store). */
static void own_command(char *out, size_t n)
{
    char raw[512];
    snprintf(out, n, "wixr");
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    ssize_t len = read(fd, raw, sizeof raw - 1);
    close(fd);
    if (len <= 0)
        return;
    raw[len] = '\0';
    const char *arg = raw, *end = raw + len;
    const char *base = strrchr(arg, '/');
    size_t k = (size_t)snprintf(out, n, "%.64s", base ? base + 1 : arg);
    arg += strlen(arg) + 1;
    for (int words = 0; words < 2 && arg < end && k < n; words++, arg += strlen(arg) + 1) {
        static const char *const commands[] = {"sandbox", "serve", "run", "fire", "test", "check", "events", NULL};
        int known = 0;
        for (const char *const *w = commands; *w && !known; w++)
            known = !strcmp(arg, *w);
        if (!known)
            break;
        k += (size_t)snprintf(out + k, n - k, " %.32s", arg);
    }
}

static void write_owner(int fd, const char *url)
{
    char cmd[160], text[512];
    own_command(cmd, sizeof cmd);
    int n = snprintf(text, sizeof text, "%ld\n%s\n%s\n", (long)getpid(), cmd, url ? url : "");
    if (ftruncate(fd, 0) == 0 && pwrite(fd, text, (size_t)n, 0) != n)
        (void)ftruncate(fd, 0); /* no half a record: a later opener then names "another process" */
}

/* Says who holds path (from its lock file) and what to do, into err. */
static void describe_owner(int fd, const char *path, char *err, size_t errlen)
{
    char text[512] = "", cmd[160] = "", url[200] = "";
    ssize_t n = pread(fd, text, sizeof text - 1, 0);
    text[n > 0 ? n : 0] = '\0';
    long pid = 0;
    char *p = text, *nl;
    pid = strtol(p, &nl, 10);
    if (*nl == '\n') {
        p = nl + 1;
        if ((nl = strchr(p, '\n'))) {
            snprintf(cmd, sizeof cmd, "%.*s", (int)(nl - p), p);
            p = nl + 1;
            if ((nl = strchr(p, '\n')))
                snprintf(url, sizeof url, "%.*s", (int)(nl - p), p);
        }
    }
    int alive = pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
    char who[240];
    if (alive && cmd[0])
        snprintf(who, sizeof who, "process %ld (%s)", pid, cmd);
    else
        snprintf(who, sizeof who, "another process");
    if (alive && url[0])
        snprintf(err, errlen,
                 "%s is in use by %s; stop it, point this run at it over HTTP (WIX_BASE_URL=%s and any "
                 "WIX_API_KEY), or use another folder",
                 path, who, url);
    else
        snprintf(err, errlen, "%s is in use by %s; stop it, or use another folder (or another state file)", path,
                 who);
}

int emu_owner_claim(emu_t *e, const char *path, char *err, size_t errlen)
{
    e->owner_fd = -1;
    if (!path || !*path || !strcmp(path, ":memory:") || !strncmp(path, "file:", 5))
        return 0;
    char lock[4200];
    if ((size_t)snprintf(lock, sizeof lock, "%s.lock", path) >= sizeof lock) {
        snprintf(err, errlen, "%.200s...: the state file's path is too long", path);
        return -1;
    }
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return 0; /* a read-only folder: SQLite's own exclusive lock still keeps a second process out */
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            describe_owner(fd, path, err, errlen);
        else
            snprintf(err, errlen, "%s: cannot lock %s: %s", path, lock, strerror(errno));
        close(fd);
        return -1;
    }
    write_owner(fd, NULL);
    e->owner_fd = fd;
    return 0;
}

void emu_note_url(emu_t *e, const char *url)
{
    if (e && e->owner_fd >= 0)
        write_owner(e->owner_fd, url);
}

void emu_owner_release(emu_t *e)
{
    if (e->owner_fd >= 0)
        close(e->owner_fd); /* drops the flock; the file stays (removing it would race a new owner) */
    e->owner_fd = -1;
}
