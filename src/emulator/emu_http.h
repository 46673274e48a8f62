/*
 * emu_http.h -- the emulator behind libmicrohttpd (HTTP/1.1, keep-alive).
 */
#ifndef WIXR_EMU_HTTP_H
#define WIXR_EMU_HTTP_H

#include <stddef.h>

#include "emu.h"

typedef struct emu_server emu_server;

/* Limits on clients (0 in a field = its default). */
typedef struct emu_http_limits {
    long long request_timeout_ms; /* a request must be complete this long after its connection opened or its
                                     previous request completed (default EMU_HTTP_REQUEST_TIMEOUT_MS) */
    int max_connections_per_ip;   /* default EMU_HTTP_MAX_PER_IP */
    int max_connections;          /* in all; default EMU_HTTP_MAX_CONNECTIONS */
} emu_http_limits;

#define EMU_HTTP_REQUEST_TIMEOUT_MS 10000
#define EMU_HTTP_MAX_CONNECTIONS 512
#define EMU_HTTP_MAX_PER_IP 256

/* Starts serving e on host:port (port 0 = pick one) with the default limits. */
emu_server *emu_http_start(emu_t *e, const char *host, int port, char *err, size_t errlen);
/* The same with these limits (NULL = the defaults). */
emu_server *emu_http_start_limits(emu_t *e, const char *host, int port, const emu_http_limits *lim, char *err,
                                  size_t errlen);
int emu_http_port(const emu_server *s);
void emu_http_stop(emu_server *s);

#endif
