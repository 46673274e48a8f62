/*
 * config.c -- the YAML configuration (see config.h).
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../yaml/ytree.h"

#ifndef WIXR_HOME
#define WIXR_HOME "."
#endif

static const char *const top_keys[] = {"wix", "runtime", "hooks", "serve", "poller", NULL};
static const char *const wix_keys[] = {"transport", "base_url", "api_key_file", "account_id", "timeout_ms",
                                       "connect_timeout_ms", "retry", "rate_limit", "concurrency", "sandbox",
                                       "audit", NULL};
static const char *const retry_keys[] = {"attempts", "base_ms", "max_ms", "total_ms", NULL};
static const char *const rate_keys[] = {"requests", "per_seconds", NULL};
static const char *const sandbox_keys[] = {"db", "catalog", "delivery_delay_ms", NULL};

const char *config_transport_name(wix_transport t)
{
    return t == TRANSPORT_HTTP ? "http" : t == TRANSPORT_SANDBOX ? "sandbox" : "auto";
}

static int set_str(char **dst, const char *v)
{
    char *p = strdup(v);
    if (!p)
        return -1;
    free(*dst);
    *dst = p;
    return 0;
}

static int file_exists(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* Expands ${NAME} in a scalar; an unset variable is an error. */
static int expand(const ydoc *d, const ynode *n, char **out, char *err, size_t errlen)
{
    size_t cap = n->len + 64, k = 0;
    char *o = malloc(cap);
    if (!o)
        return yerr(d, n, err, errlen, "out of memory");
    for (const char *p = n->str; *p;) {
        if (p[0] == '$' && p[1] == '{') {
            const char *end = strchr(p + 2, '}');
            if (!end) {
                free(o);
                return yerr(d, n, err, errlen, "unterminated ${...} reference");
            }
            char name[128];
            size_t nl = (size_t)(end - p - 2);
            if (nl == 0 || nl >= sizeof name) {
                free(o);
                return yerr(d, n, err, errlen, "bad ${...} reference");
            }
            memcpy(name, p + 2, nl);
            name[nl] = '\0';
            const char *v = getenv(name);
            if (!v) {
                free(o);
                return yerr(d, n, err, errlen, "${%s} is not set in the environment", name);
            }
            size_t vl = strlen(v);
            if (k + vl + 1 > cap) {
                cap = (k + vl + 1) * 2;
                char *q = realloc(o, cap);
                if (!q) {
                    free(o);
                    return yerr(d, n, err, errlen, "out of memory");
                }
                o = q;
            }
            memcpy(o + k, v, vl);
            k += vl;
            p = end + 1;
        } else {
            if (k + 2 > cap) {
                cap *= 2;
                char *q = realloc(o, cap);
                if (!q) {
                    free(o);
                    return yerr(d, n, err, errlen, "out of memory");
                }
                o = q;
            }
            o[k++] = *p++;
        }
    }
    o[k] = '\0';
    *out = o;
    return 0;
}

static int get_string(const ydoc *d, const ynode *n, const char *field, char **dst, char *err, size_t errlen)
{
    if (ynode_expect(d, n, Y_SCALAR, field, err, errlen) < 0)
        return -1;
    char *v = NULL;
    if (expand(d, n, &v, err, errlen) < 0)
        return -1;
    free(*dst);
    *dst = v;
    return 0;
}

static int get_long(const ydoc *d, const ynode *n, const char *field, long long lo, long long hi, long *dst,
                    char *err, size_t errlen)
{
    long long v;
    if (ynode_int(d, n, field, lo, hi, &v, err, errlen) < 0)
        return -1;
    *dst = (long)v;
    return 0;
}

static int load_wix(const ydoc *d, const ynode *w, wixr_config *c, char *err, size_t errlen)
{
    wix_settings *s = &c->wix;
    if (ynode_expect(d, w, Y_MAP, "wix", err, errlen) < 0 ||
        ymap_check_keys(d, w, wix_keys, "wix", err, errlen) < 0)
        return -1;
    ynode *n;
    if ((n = ymap_get(w, "transport"))) {
        const char *t;
        if (ynode_str(d, n, "wix.transport", &t, err, errlen) < 0)
            return -1;
        if (!strcmp(t, "auto"))
            s->transport = TRANSPORT_AUTO;
        else if (!strcmp(t, "http"))
            s->transport = TRANSPORT_HTTP;
        else if (!strcmp(t, "sandbox"))
            s->transport = TRANSPORT_SANDBOX;
        else
            return yerr(d, n, err, errlen, "wix.transport: '%s' is not auto, http or sandbox", t);
    }
    if ((n = ymap_get(w, "base_url")) && get_string(d, n, "wix.base_url", &s->base_url, err, errlen) < 0)
        return -1;
    if ((n = ymap_get(w, "account_id")) && get_string(d, n, "wix.account_id", &s->account_id, err, errlen) < 0)
        return -1;
    if ((n = ymap_get(w, "api_key_file"))) {
        char *p = NULL;
        if (get_string(d, n, "wix.api_key_file", &p, err, errlen) < 0)
            return -1;
        if (p[0] != '/' && c->dir) {
            char full[PATH_MAX];
            snprintf(full, sizeof full, "%s/%s", c->dir, p);
            free(p);
            p = strdup(full);
        }
        free(s->api_key_file);
        s->api_key_file = p;
        if (!p || !file_exists(p))
            return yerr(d, n, err, errlen, "wix.api_key_file: %s does not exist", p ? p : "?");
    }
    if ((n = ymap_get(w, "timeout_ms")) && get_long(d, n, "wix.timeout_ms", 1, 3600000, &s->timeout_ms, err, errlen) < 0)
        return -1;
    if ((n = ymap_get(w, "connect_timeout_ms")) &&
        get_long(d, n, "wix.connect_timeout_ms", 1, 600000, &s->connect_timeout_ms, err, errlen) < 0)
        return -1;
    if ((n = ymap_get(w, "concurrency"))) {
        long v;
        if (get_long(d, n, "wix.concurrency", 1, 4096, &v, err, errlen) < 0)
            return -1;
        s->concurrency = (int)v;
    }
    if ((n = ymap_get(w, "audit")) && get_string(d, n, "wix.audit", &s->audit, err, errlen) < 0)
        return -1;
    if ((n = ymap_get(w, "retry"))) {
        if (ynode_expect(d, n, Y_MAP, "wix.retry", err, errlen) < 0 ||
            ymap_check_keys(d, n, retry_keys, "wix.retry", err, errlen) < 0)
            return -1;
        ynode *m;
        long v;
        if ((m = ymap_get(n, "attempts"))) {
            if (get_long(d, m, "wix.retry.attempts", 1, 100, &v, err, errlen) < 0)
                return -1;
            s->retry_attempts = (int)v;
        }
        if ((m = ymap_get(n, "base_ms")) && get_long(d, m, "wix.retry.base_ms", 0, 600000, &s->retry_base_ms, err, errlen) < 0)
            return -1;
        if ((m = ymap_get(n, "max_ms")) && get_long(d, m, "wix.retry.max_ms", 0, 3600000, &s->retry_max_ms, err, errlen) < 0)
            return -1;
        if ((m = ymap_get(n, "total_ms")) &&
            get_long(d, m, "wix.retry.total_ms", 0, 86400000, &s->retry_total_ms, err, errlen) < 0)
            return -1;
    }
    if ((n = ymap_get(w, "rate_limit"))) {
        if (ynode_expect(d, n, Y_MAP, "wix.rate_limit", err, errlen) < 0 ||
            ymap_check_keys(d, n, rate_keys, "wix.rate_limit", err, errlen) < 0)
            return -1;
        ynode *m;
        long v;
        if ((m = ymap_get(n, "requests"))) {
            if (get_long(d, m, "wix.rate_limit.requests", 0, 1000000, &v, err, errlen) < 0)
                return -1;
            s->rate_limit = (int)v;
        }
        if ((m = ymap_get(n, "per_seconds"))) {
            if (get_long(d, m, "wix.rate_limit.per_seconds", 1, 86400, &v, err, errlen) < 0)
                return -1;
            s->rate_window_ms = v * 1000;
        }
    }
    if ((n = ymap_get(w, "sandbox"))) {
        if (ynode_expect(d, n, Y_MAP, "wix.sandbox", err, errlen) < 0 ||
            ymap_check_keys(d, n, sandbox_keys, "wix.sandbox", err, errlen) < 0)
            return -1;
        ynode *m;
        if ((m = ymap_get(n, "db")) && get_string(d, m, "wix.sandbox.db", &s->sandbox_db, err, errlen) < 0)
            return -1;
        if ((m = ymap_get(n, "catalog"))) {
            if (get_string(d, m, "wix.sandbox.catalog", &s->sandbox_catalog, err, errlen) < 0)
                return -1;
            if (s->sandbox_catalog[0] != '/' && c->dir) {
                char full[PATH_MAX];
                snprintf(full, sizeof full, "%s/%s", c->dir, s->sandbox_catalog);
                set_str(&s->sandbox_catalog, full);
            }
            if (!file_exists(s->sandbox_catalog))
                return yerr(d, m, err, errlen, "wix.sandbox.catalog: %s does not exist", s->sandbox_catalog);
        }
        if ((m = ymap_get(n, "delivery_delay_ms"))) {
            long long v;
            if (ynode_int(d, m, "wix.sandbox.delivery_delay_ms", -1, 86400000LL * 365, &v, err, errlen) < 0)
                return -1;
            s->sandbox_delivery_delay_ms = v;
        }
    }
    return 0;
}

static int read_key_file(const char *path, char **out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read the API key file: %s", path, strerror(errno));
        return -1;
    }
    char line[8192];
    size_t n = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    line[n] = '\0';
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' '))
        line[--n] = '\0';
    if (!n) {
        snprintf(err, errlen, "%s: the API key file is empty", path);
        return -1;
    }
    return set_str(out, line);
}

int config_load(wixr_config *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    wix_settings *s = &c->wix;
    s->transport = TRANSPORT_AUTO;
    s->timeout_ms = 30000;
    s->connect_timeout_ms = 10000;
    s->retry_attempts = 5;
    s->retry_base_ms = 200;
    s->retry_max_ms = 10000;
    s->retry_total_ms = 60000;
    s->rate_limit = 200;
    s->rate_window_ms = 60000;
    s->concurrency = 16;
    s->sandbox_delivery_delay_ms = 0;
    if (set_str(&s->base_url, "https://www.wixapis.com") < 0 || set_str(&s->sandbox_db, ".wixr/sandbox.db") < 0 ||
        set_str(&s->sandbox_catalog, WIXR_HOME "/config/catalog.yaml") < 0)
        goto oom;
    const char *home = getenv("WIXR_HOME");
    if (home && *home) {
        char cat[PATH_MAX];
        snprintf(cat, sizeof cat, "%s/config/catalog.yaml", home);
        set_str(&s->sandbox_catalog, cat);
    }

    if (!path) {
        const char *env = getenv("WIXR_CONFIG");
        if (env && *env)
            path = env;
        else if (file_exists("wixr.yaml"))
            path = "wixr.yaml";
        else if (file_exists("config/wixr.yaml"))
            path = "config/wixr.yaml";
    }
    if (path) {
        ydoc *d = ytree_load_file(path, err, errlen);
        if (!d)
            goto fail;
        c->path = strdup(path);
        const char *slash = strrchr(path, '/');
        c->dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
        int rc = 0;
        if (d->root) {
            rc = ynode_expect(d, d->root, Y_MAP, "configuration", err, errlen);
            if (rc == 0)
                rc = ymap_check_keys(d, d->root, top_keys, "the configuration", err, errlen);
            ynode *w = ymap_get(d->root, "wix");
            if (rc == 0 && w)
                rc = load_wix(d, w, c, err, errlen);
        }
        ytree_free(d);
        if (rc < 0)
            goto fail;
    }

    const char *v;
    if ((v = getenv("WIX_BASE_URL")) && *v && set_str(&s->base_url, v) < 0)
        goto oom;
    if ((v = getenv("WIX_ACCOUNT_ID")) && *v && set_str(&s->account_id, v) < 0)
        goto oom;
    if ((v = getenv("WIX_API_KEY")) && *v) {
        if (set_str(&s->api_key, v) < 0)
            goto oom;
    } else if (s->api_key_file && read_key_file(s->api_key_file, &s->api_key, err, errlen) < 0) {
        goto fail;
    }
    /* A trailing slash on the base URL would double the one every path starts with. */
    size_t bl = strlen(s->base_url);
    while (bl > 0 && s->base_url[bl - 1] == '/')
        s->base_url[--bl] = '\0';
    return 0;
oom:
    snprintf(err, errlen, "out of memory");
fail:
    config_free(c);
    return -1;
}

void config_free(wixr_config *c)
{
    wix_settings *s = &c->wix;
    if (s->api_key) {
        /* scrub the secret before giving the memory back */
        volatile char *p = s->api_key;
        while (*p)
            *p++ = 0;
    }
    free(s->api_key);
    free(s->api_key_file);
    free(s->base_url);
    free(s->account_id);
    free(s->sandbox_db);
    free(s->sandbox_catalog);
    free(s->audit);
    free(c->path);
    free(c->dir);
    memset(c, 0, sizeof *c);
}
