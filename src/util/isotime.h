/*
 * isotime.h -- wall-clock milliseconds and their ISO-8601 form
 * ("2021-12-02T15:45:30.941Z"), as the API, the logs and the journal write them.
 */
#ifndef WIXR_ISOTIME_H
#define WIXR_ISOTIME_H

#define ISO_TIME_LEN 64

/* Milliseconds since the epoch (CLOCK_REALTIME). */
long long iso_now_ms(void);
/* Writes ms as YYYY-MM-DDThh:mm:ss.sssZ (UTC). */
void iso_format_ms(long long ms, char out[ISO_TIME_LEN]);

#endif
