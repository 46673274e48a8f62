/*
 * emu_http.h -- the emulator behind libmicrohttpd (HTTP/1.1, keep-alive).
 */
#ifndef WIXR_EMU_HTTP_H
#define WIXR_EMU_HTTP_H

#include <stddef.h>

#include "emu.h"

typedef struct emu_server emu_server;

/* Starts serving e on host:port (port 0 = pick one). */
emu_server *emu_http_start(emu_t *e, const char *host, int port, char *err, size_t errlen);
int emu_http_port(const emu_server *s);
void emu_http_stop(emu_server *s);

#endif
