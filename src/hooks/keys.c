/*
 * keys.c -- the idempotency keys a hook run derives (see keys.h).
 */
#define _GNU_SOURCE
#include "keys.h"

#include <errno.h>
#include <fcntl.h>
#include <lauxlib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../util/sha256.h"
#include "../wix/client.h"
#include "../wix/wix_core.h"
#include "sandbox.h"

/* A hook run's idempotency key for a mutating call that was given none
 * (wix.core.next_key asks through the host's guard). For an event with an id
 * it is derived, so running the
 * same event again -- after a crash, a retry, a restart, a reload that fixed
 * the script -- sends the same keys and provisions nothing twice; elsewhere
 * it is a fresh random GUID. The derivation is HMAC-SHA256 keyed by the
 * installation's secret (<state_dir>/installation.key, 32 random bytes, 0600)
 * over (event id, event name, the hook's `id:` or else its position among
 * that event's hooks, n-th mutating call of the run): nothing that depends
 * on how a path was spelled, and nothing another hook -- which never sees
 * the secret -- can compute. The script's text is left out on purpose: a fixed script that
 * runs a failed event again must send the keys of the calls it already made.
 * docs/SECURITY.md ("Derived idempotency keys") argues the choice. */
#define INSTALL_KEY_LEN 32
static const char install_key_slot = 0; /* registry key of the state's copy of the secret */

/* 1 read, 0 no such file, -1 with err. */
static int install_key_read(const char *path, unsigned char key[INSTALL_KEY_LEN], char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(err, errlen, "%s: cannot open the installation key: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s: the installation key is not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen,
                 "%s: the installation key is open to group or others (mode %04o); chmod 600 it "
                 "(removing it makes a new one, and every derived idempotency key changes)",
                 path, (unsigned)(st.st_mode & 07777));
        close(fd);
        return -1;
    }
    if (st.st_uid != geteuid()) {
        snprintf(err, errlen, "%s: the installation key belongs to another user (uid %u)", path,
                 (unsigned)st.st_uid);
        close(fd);
        return -1;
    }
    unsigned char extra;
    ssize_t n = read(fd, key, INSTALL_KEY_LEN);
    ssize_t more = n == INSTALL_KEY_LEN ? read(fd, &extra, 1) : 0;
    close(fd);
    if (n != INSTALL_KEY_LEN || more != 0) {
        memset(key, 0, INSTALL_KEY_LEN);
        snprintf(err, errlen, "%s: not an installation key (%lld bytes; one is %d random bytes)", path,
                 (long long)st.st_size, INSTALL_KEY_LEN);
        return -1;
    }
    return 1;
}

int hooks_install_key_check(const char *state_dir, char *err, size_t errlen)
{
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/installation.key", state_dir ? state_dir : ".wixr") >= sizeof path) {
        snprintf(err, errlen, "runtime.state_dir: too long for the installation key's path");
        return -1;
    }
    unsigned char key[INSTALL_KEY_LEN];
    int got = install_key_read(path, key, err, errlen);
    memset(key, 0, sizeof key);
    return got < 0 ? -1 : 0;
}

/* Makes the secret once: written 0600 to a file of this process, then linked
 * into place, so a reader never sees half a key and two processes starting
 * at once agree on one (the loser reads the winner's). 0 or -1 with err. */
static int install_key_make(const char *dir, const char *path, unsigned char key[INSTALL_KEY_LEN], char *err,
                            size_t errlen)
{
    if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: cannot create the state folder: %s", dir, strerror(errno));
        return -1;
    }
    if (getrandom(key, INSTALL_KEY_LEN, 0) != INSTALL_KEY_LEN) {
        snprintf(err, errlen, "no randomness available for the installation key");
        return -1;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", tmp, strerror(errno));
        return -1;
    }
    int ok = write(fd, key, INSTALL_KEY_LEN) == INSTALL_KEY_LEN && fsync(fd) == 0;
    int werr = errno;
    close(fd);
    if (!ok) {
        unlink(tmp);
        snprintf(err, errlen, "%s: cannot write: %s", tmp, strerror(werr));
        return -1;
    }
    int linked = link(tmp, path);
    int lerr = errno;
    unlink(tmp);
    if (linked < 0 && lerr == EEXIST) /* another process made it first: theirs is the one */
        return install_key_read(path, key, err, errlen) == 1 ? 0 : -1;
    if (linked < 0) {
        snprintf(err, errlen, "%s: cannot create: %s", path, strerror(lerr));
        return -1;
    }
    int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        fsync(dfd);
        close(dfd);
    }
    return 0;
}

/* Raises msg at the script's line (not the wix module's). */
static void install_key_raise(lua_State *L, const char *msg)
{
    char where[300];
    wix_script_where(L, where, sizeof where);
    lua_pushfstring(L, "%s%s", where, msg);
    lua_error(L);
}

/* Pushes the secret the derived keys of this state use (a Lua string kept in
 * the registry, which scripts cannot reach). A dry run reads the installed
 * secret but never makes one, and the in-memory sandbox (wixr test) has
 * nothing that outlives the process: both use one of their own, at random. */
static void install_key_push(lua_State *L, wixr_host *h, const hook_rt *k)
{
    if (lua_rawgetp(L, LUA_REGISTRYINDEX, &install_key_slot) == LUA_TSTRING)
        return;
    lua_pop(L, 1);
    unsigned char key[INSTALL_KEY_LEN];
    char err[4400];
    const char *dir = k->cfg->state_dir ? k->cfg->state_dir : ".wixr";
    const char *db = h->cfg->wix.sandbox_db;
    int in_memory = wix_client_transport(h->client) == TRANSPORT_SANDBOX && db && !strcmp(db, ":memory:");
    int got = 0;
    if (!in_memory) {
        char path[4096];
        if ((size_t)snprintf(path, sizeof path, "%s/installation.key", dir) >= sizeof path)
            install_key_raise(L, "runtime.state_dir: too long for the installation key's path");
        got = install_key_read(path, key, err, sizeof err);
        if (got == 0 && !h->dry_run)
            got = install_key_make(dir, path, key, err, sizeof err) == 0;
        if (got < 0)
            install_key_raise(L, err);
    }
    if (!got && getrandom(key, sizeof key, 0) != (ssize_t)sizeof key)
        luaL_error(L, "no randomness available");
    lua_pushlstring(L, (const char *)key, sizeof key);
    memset(key, 0, sizeof key);
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &install_key_slot);
}

/* The hook's identity among its event's hooks: its declared `id:`, else its
 * position in the file (from 1; disabled ones count, so disabling one keeps
 * the others' keys). The prefixes keep the two kinds apart. */
static void hook_identity(const hook_rt *k, char *out, size_t n)
{
    const wixr_config *c = k->cfg;
    const hook_def *d = k->def;
    if (d->id) {
        snprintf(out, n, "id:%s", d->id);
        return;
    }
    int pos = 0;
    if (c && d >= c->hooks && d < c->hooks + c->nhooks) {
        pos = 1;
        for (const hook_def *e = c->hooks; e < d; e++)
            pos += !strcmp(e->event, d->event);
    }
    snprintf(out, n, "position:%d", pos);
}

static void mac_field(hmac_sha256_ctx *m, const char *s)
{
    size_t n = strlen(s);
    unsigned char len[4] = {(unsigned char)(n >> 24), (unsigned char)(n >> 16), (unsigned char)(n >> 8),
                            (unsigned char)n};
    hmac_sha256_update(m, len, sizeof len); /* length-prefixed: no two field lists read alike */
    hmac_sha256_update(m, s, n);
}

int hooks_next_key(lua_State *L)
{
    hook_run *r = sandbox_current_run(L);
    if (!r || !r->event_id)
        return 0;
    wixr_host *h = host_of(L);
    install_key_push(L, h, r->hook);
    size_t klen;
    const char *secret = lua_tolstring(L, -1, &klen);
    char pos[96], seq[32];
    hook_identity(r->hook, pos, sizeof pos);
    snprintf(seq, sizeof seq, "%d", ++r->keyseq);
    hmac_sha256_ctx m;
    hmac_sha256_init(&m, secret, klen);
    lua_pop(L, 1);
    mac_field(&m, "wixr idempotency key v2");
    mac_field(&m, r->event_id);
    mac_field(&m, r->hook->def->event);
    mac_field(&m, pos);
    mac_field(&m, seq);
    unsigned char x[SHA256_LEN];
    hmac_sha256_final(&m, x);
    x[6] = (unsigned char)((x[6] & 0x0F) | 0x80); /* version 8: custom (RFC 9562) */
    x[8] = (unsigned char)((x[8] & 0x3F) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char out[36];
    int k = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[k++] = '-';
        out[k++] = hex[x[i] >> 4];
        out[k++] = hex[x[i] & 15];
    }
    lua_pushlstring(L, out, 36);
    return 1;
}

