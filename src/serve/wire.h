/*
 * wire.h -- the messages between the supervisor of `wixr serve` (or of
 * `wixr fire --batch`) and its worker processes, over a stream socket.
 *
 * A message is [u32 length][u8 type][fields], each field [u32 length][bytes][NUL]:
 * a field reads as a C string and also as bytes (JSON, text). Writers queue
 * messages in an outbox and flush it; readers take whole messages out of an
 * inbox. Nothing here allocates per message beyond the two buffers.
 */
#ifndef WIXR_WIRE_H
#define WIXR_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "../util/buf.h"

enum wire_type {
    WIRE_HELLO = 1,   /* worker -> supervisor: ok ("1"/"0"), the load errors */
    WIRE_RUN,         /* supervisor -> worker: seq, id, name, data, attempt */
    WIRE_DONE,        /* worker -> supervisor: see worker.h */
    WIRE_POLL,        /* supervisor -> worker: seq, watermark ("" none), account ("" none) */
    WIRE_POLL_DONE,   /* worker -> supervisor: seq, ok ("1"/"0"), the result JSON or the error */
    WIRE_RATE_ASK,    /* worker -> supervisor: may a request go now? */
    WIRE_RATE_ANSWER, /* supervisor -> worker: the wait in ms ("0": go, counted) */
    WIRE_STATS,       /* worker -> supervisor: a JSON object of counters */
    WIRE_RETIRE,      /* supervisor -> worker: take no more work; leave when idle */
    WIRE_LOAD,        /* supervisor -> worker: a reload: load the configuration's rules again, beside those
                         in force: gen */
    WIRE_LOADED,      /* worker -> supervisor: gen, ok ("1"/"0"), the load errors, hooks kept ("12") */
    WIRE_SWAP,        /* supervisor -> worker: the rules loaded for gen are in force from the next RUN */
    WIRE_DROP,        /* supervisor -> worker: the rules loaded for gen are dropped */
};

#define WIRE_MAX_FIELDS 12
#define WIRE_MAX_MESSAGE (256u * 1024 * 1024)

typedef struct wire {
    int fd;
    buf_t in, out;
    size_t in_at;                 /* start of the first message not taken yet */
    size_t out_at;                /* bytes of out already written */
} wire;

typedef struct wire_msg {
    int type;
    int n;
    const char *f[WIRE_MAX_FIELDS]; /* NUL-terminated, inside the wire's inbox */
    size_t len[WIRE_MAX_FIELDS];
} wire_msg;

void wire_init(wire *w, int fd);
void wire_free(wire *w);
/* Queues a message; len[i] == (size_t)-1 means strlen(f[i]) (NULL: ""). Returns -1 when out of memory. */
int wire_put(wire *w, int type, int n, const char *const *f, const size_t *len);
/* Writes what it can without blocking (fd O_NONBLOCK), or all of it (blocking fd). -1: the peer is gone. */
int wire_flush(wire *w);
int wire_pending(const wire *w);
/* Reads what is there: 1 read something, 0 nothing to read now, -1 end of stream or error. */
int wire_fill(wire *w);
/* The next whole message: 1 (m filled, valid until the next wire_fill), 0 none yet, -1 malformed. */
int wire_next(wire *w, wire_msg *m);
/* Blocks until a message of this type arrives; the others read meanwhile stay
 * queued for wire_next. 1 got it, -1 the peer is gone or the stream is malformed. */
int wire_wait_for(wire *w, int type, wire_msg *m);

#endif
