/*
 * config.h -- wixr's configuration: the YAML file (strict; errors are
 * file:line:col) overlaid by the environment.
 *
 * Precedence for the wix connection: environment (WIX_API_KEY,
 * WIX_ACCOUNT_ID, WIX_BASE_URL) > config file > built-in defaults.
 * The API key is held here and handed only to the HTTP transport; it is
 * never printed, logged or stored.
 */
#ifndef WIXR_CONFIG_H
#define WIXR_CONFIG_H

#include <stddef.h>

typedef enum { TRANSPORT_AUTO, TRANSPORT_HTTP, TRANSPORT_SANDBOX } wix_transport;

typedef struct wix_settings {
    wix_transport transport;
    char *base_url;               /* default https://www.wixapis.com */
    char *api_key;                /* secret */
    char *api_key_file;
    char *account_id;             /* default wix-account-id */
    long timeout_ms;              /* whole request */
    long connect_timeout_ms;
    int retry_attempts;           /* attempts in all, >= 1 */
    long retry_base_ms, retry_max_ms, retry_total_ms;
    int rate_limit;               /* requests per window; 0 = off */
    long rate_window_ms;
    int concurrency;              /* requests in flight at once */
    char *sandbox_db;
    char *sandbox_catalog;
    long long sandbox_delivery_delay_ms;
    char *audit;                  /* NULL off, "-" stderr, else a file (appended) */
} wix_settings;

typedef struct wixr_config {
    char *path;                   /* NULL when no file was read */
    char *dir;                    /* the file's folder (scripts are relative to it) */
    wix_settings wix;
} wixr_config;

/* Fills defaults, reads path (NULL: the first of $WIXR_CONFIG, ./wixr.yaml,
 * ./config/wixr.yaml that exists, or none), then the environment.
 * Returns 0, or -1 with "file:line:col: message" in err. */
int config_load(wixr_config *c, const char *path, char *err, size_t errlen);
void config_free(wixr_config *c);
const char *config_transport_name(wix_transport t);

#endif
