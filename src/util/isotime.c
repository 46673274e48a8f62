/*
 * isotime.c -- see isotime.h.
 */
#include "isotime.h"

#include <stdio.h>
#include <time.h>

long long iso_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void iso_format_ms(long long ms, char out[ISO_TIME_LEN])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    if (tm.tm_year < -1900 || tm.tm_year > 8099)
        tm.tm_year = 70;
    snprintf(out, ISO_TIME_LEN, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}
