/* auth/recordings.h: the chunks of a session recording, as the node agent uploads
 * them (rec_put, auth/auth.h) and tctl exports them.
 *
 * A chunk is one zstd frame whose content is asciicast v2 lines: UTF-8, each line
 * one JSON value ending in "\n". The first chunk (seq 0) starts with the header, a
 * JSON object whose "version" is 2, with a "width" and "height" of 1 to 65535 (as
 * the format requires); every other line is an event, a JSON array
 * [time (seconds, a non-negative number), code (string), data (string)]. So the
 * chunks of a recording, decompressed and concatenated in order, are the .cast
 * file players read.
 *
 * Depends on lib/ and libzstd only (tctl and the fuzz target use it too). */
#ifndef RP_AUTH_RECORDINGS_H
#define RP_AUTH_RECORDINGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define AUTH_REC_MAX_COMPRESSED (1u << 20) /* bytes of one chunk as uploaded */
#define AUTH_REC_MAX_PLAIN (8u << 20)      /* bytes of one chunk decompressed */
#define AUTH_REC_MAX_LINE_DEPTH 16         /* JSON nesting within one line */

/* What a valid chunk says about itself. */
struct auth_rec_chunk_info {
    size_t plain_len; /* decompressed bytes */
    uint32_t lines;   /* lines, the header included */
    uint64_t last_ms; /* the largest event time, in ms (0 without events) */
    bool has_header;  /* the first line is the header (chunk 0) */
};

/* Decompresses the single zstd frame @data/@len (at most AUTH_REC_MAX_COMPRESSED
 * bytes) and appends its content to @out, refusing more than AUTH_REC_MAX_PLAIN
 * bytes, a second frame, trailing bytes or a truncated frame. 0, RP_EINVAL (with
 * what was wrong), RP_ETOOBIG, RP_ENOMEM. @out is unchanged on error. */
int auth_rec_decompress(const void *data, size_t len, struct rp_buf *out);

/* Checks decompressed chunk content @p/@n: UTF-8, whole lines, each a JSON value
 * of the shape above; the header first if @first (seq 0), nowhere else. Fills
 * @info (may be NULL). 0 or RP_EINVAL naming the line and what was expected. */
int auth_rec_lines_check(const char *p, size_t n, bool first, struct auth_rec_chunk_info *info);

/* auth_rec_decompress, then auth_rec_lines_check: what rec_put accepts. @scratch
 * (may be NULL) receives the content (appended; unchanged on error). */
int auth_rec_chunk_check(const void *data, size_t len, bool first, struct auth_rec_chunk_info *info,
                         struct rp_buf *scratch);

#endif
