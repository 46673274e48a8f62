/*
 * isotime.c -- see isotime.h.
 */
#include "isotime.h"

#include <string.h>
#include <time.h>

long long iso_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put2(char *o, int v)
{
    o[0] = (char)('0' + v / 10 % 10);
    o[1] = (char)('0' + v % 10);
}

void iso_format_ms(long long ms, char out[ISO_TIME_LEN])
{
    /* The date and time to the second change once a second: they are worked
     * out then, and reused (per thread) for every call within that second. */
    static __thread long long cached_sec = -1;
    static __thread char cached[ISO_TIME_LEN];
    long long sec = ms >= 0 ? ms / 1000 : (ms - 999) / 1000;
    int milli = (int)(ms - sec * 1000);
    if (sec != cached_sec) {
        time_t t = (time_t)sec;
        struct tm tm;
        gmtime_r(&t, &tm);
        if (tm.tm_year < -1900 || tm.tm_year > 8099)
            tm.tm_year = 70;
        int year = tm.tm_year + 1900;
        put2(cached, year / 100);
        put2(cached + 2, year % 100);
        cached[4] = '-';
        put2(cached + 5, tm.tm_mon + 1);
        cached[7] = '-';
        put2(cached + 8, tm.tm_mday);
        cached[10] = 'T';
        put2(cached + 11, tm.tm_hour);
        cached[13] = ':';
        put2(cached + 14, tm.tm_min);
        cached[16] = ':';
        put2(cached + 17, tm.tm_sec);
        cached[19] = '.';
        cached_sec = sec;
    }
    memcpy(out, cached, 20);
    out[20] = (char)('0' + milli / 100);
    put2(out + 21, milli % 100);
    out[23] = 'Z';
    out[24] = '\0';
}
