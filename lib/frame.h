/* lib/frame.h: an incremental decoder of length-prefixed frames, with no I/O.
 *
 * A frame is a 4-byte big-endian length (1..limit) followed by that many bytes.
 * Bytes are fed as they arrive, in pieces of any size; the decoder says when a
 * whole frame is ready. Its memory grows with the bytes that arrived, never with
 * the length a peer announced: a peer that announces 16 MiB and sends 10 bytes
 * costs 10 bytes (plus slack), and a length above the limit is refused as soon as
 * its 4th header byte is seen, before any of the body is taken. */
#ifndef RP_FRAME_H
#define RP_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

struct rp_frame_reader {
    size_t limit; /* largest body accepted */
    uint8_t hdr[4];
    size_t hdr_len;     /* header bytes seen of the current frame */
    uint32_t want;      /* body length announced (valid once hdr_len == 4) */
    struct rp_buf body; /* owned: the body so far; whole once a frame is ready */
    int failed;         /* the stream broke (oversized / empty frame): no more frames */
};

/* Starts an empty reader accepting bodies of 1..@limit bytes (@limit <= UINT32_MAX). */
void rp_frame_reader_init(struct rp_frame_reader *r, size_t limit);
/* Frees the body buffer; the reader may be initialised again. */
void rp_frame_reader_free(struct rp_frame_reader *r);
/* Changes the limit for frames whose header has not been read completely yet. */
void rp_frame_reader_set_limit(struct rp_frame_reader *r, size_t limit);

/* Takes bytes from @p[0..@n) up to the end of the current frame; *@used says how
 * many were taken (the rest belong to later frames: feed them after taking this
 * one). Returns 1 when a whole frame is ready (read it with rp_frame_reader_frame,
 * then call rp_frame_reader_next), 0 when more bytes are needed, RP_ETOOBIG for a
 * length above the limit, RP_EINVAL for a zero length, RP_ENOMEM. After an error
 * the reader stays failed: every later call returns the same error. */
int rp_frame_reader_feed(struct rp_frame_reader *r, const uint8_t *p, size_t n, size_t *used);
/* The ready frame's body (borrowed: valid until rp_frame_reader_next or _free). */
const struct rp_buf *rp_frame_reader_frame(const struct rp_frame_reader *r);
/* Drops the ready frame and starts on the next one. A body buffer that grew past
 * @keep_bytes is released, so one large frame does not pin memory on an idle
 * connection. */
void rp_frame_reader_next(struct rp_frame_reader *r, size_t keep_bytes);
/* Bytes that would complete the current header or body: what a reader that must
 * not take bytes of the next frame may read now. 0 when a frame is ready or the
 * reader failed. */
size_t rp_frame_reader_need(const struct rp_frame_reader *r);
/* True between the first header byte of a frame and the frame being ready. */
int rp_frame_reader_in_frame(const struct rp_frame_reader *r);
/* Bytes currently allocated for the body (what the reader costs in memory). */
size_t rp_frame_reader_allocated(const struct rp_frame_reader *r);

#endif
