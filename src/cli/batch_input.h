/*
 * batch_input.h -- the events of `wixr fire --batch`, read from NDJSON as
 * they are needed.
 *
 * The input is read in slices, never whole: memory stays flat in the number
 * of events, the first events run while the rest are still being read, and
 * a pipe that is slow to write never stops the caller (it reads only when
 * poll says the pipe has something). A line is one event,
 * {"event": NAME, "id": ID, "data": {...}}; a malformed one, or one longer
 * than the line cap, is reported on standard error as "SRC:LINE: why (line
 * skipped)", counted, and skipped.
 */
#ifndef WIXR_BATCH_INPUT_H
#define WIXR_BATCH_INPUT_H

#include <stddef.h>

typedef struct batch_event {
    long line;
    char *name, *id, *data;       /* id NULL: none given; data: a JSON object's text */
    int state;                    /* the id's state in the journal (-1: not there), once looked up */
} batch_event;

typedef struct batch_input batch_input;

/* Opens src ("-": standard input). Lines longer than max_line bytes are
 * malformed. NULL with err filled when it cannot be opened. */
batch_input *batch_input_open(const char *src, size_t max_line, char *err, size_t errlen);
void batch_input_close(batch_input *in);

/* The next event: 1 with *out set (the caller frees it with
 * batch_event_free), 0 when a pipe has nothing more yet (poll
 * batch_input_fd for input, then call batch_input_readable), -1 at the end
 * of the input (or a read error: batch_input_error). */
int batch_input_next(batch_input *in, batch_event **out);
/* The descriptor to poll for more input, or -1 when none is needed now. */
int batch_input_fd(const batch_input *in);
void batch_input_readable(batch_input *in);

/* Name for messages ("<stdin>" for standard input). */
const char *batch_input_name(const batch_input *in);
long batch_input_malformed(const batch_input *in);
/* The share of a regular file read so far (0..1); -1 for a pipe or terminal. */
double batch_input_done(const batch_input *in);
/* The read error that ended the input ("" when none). */
const char *batch_input_error(const batch_input *in);

void batch_event_free(batch_event *e);

#endif
