/*
 * listen.c -- where the HTTP fronts listen: a HOST:PORT setting read, the
 * IPv4 address, and the libmicrohttpd daemon both run (see http.h).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int http_listen_parse(const char *listen, char *host, size_t hostlen, int *port)
{
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen || (size_t)(colon - listen) >= hostlen)
        return -1;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (*end || colon[1] == '\0' || p < 0 || p > 65535)
        return -2;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    if (!strcmp(host, "localhost"))
        strcpy(host, "127.0.0.1");
    *port = (int)p;
    return 0;
}

int http_is_loopback(const char *host)
{
    return !strcmp(host, "127.0.0.1") || !strncmp(host, "127.", 4) || !strcmp(host, "localhost");
}

int http_ipv4(const char *host, int port, struct sockaddr_in *addr)
{
    *addr = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    return inet_pton(AF_INET, host, &addr->sin_addr) == 1 ? 0 : -1;
}

struct MHD_Daemon *http_start(const http_daemon_options *o)
{
    /* function pointers go as intptr_t in an option array (microhttpd.h, MHD_OPTION_ARRAY) */
    struct MHD_OptionItem opts[] = {
        {MHD_OPTION_SOCK_ADDR, 0, (void *)o->addr},
        {MHD_OPTION_CONNECTION_TIMEOUT, (intptr_t)o->idle_timeout_s, NULL},
        {MHD_OPTION_CONNECTION_LIMIT, (intptr_t)o->max_connections, NULL},
        {MHD_OPTION_PER_IP_CONNECTION_LIMIT, (intptr_t)o->max_per_ip, NULL},
        {MHD_OPTION_NOTIFY_CONNECTION, (intptr_t)http_watch_notify, o->watch},
        {MHD_OPTION_NOTIFY_COMPLETED, (intptr_t)o->completed, o->cls},
        {MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, NULL},
        {o->unescape ? MHD_OPTION_UNESCAPE_CALLBACK : MHD_OPTION_END, (intptr_t)o->unescape, NULL},
        {MHD_OPTION_END, 0, NULL},
    };
    return MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                            ntohs(o->addr->sin_port), NULL, NULL, o->handler, o->cls, MHD_OPTION_ARRAY, opts,
                            MHD_OPTION_END);
}

int http_bound_port(struct MHD_Daemon *d, int asked)
{
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    return info ? info->port : asked;
}
