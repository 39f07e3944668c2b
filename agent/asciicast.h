/* agent/asciicast.h: asciicast v2 lines (docs.asciinema.org/manual/asciicast/v2).
 *
 * A recording is newline-delimited JSON: one header object, then one event per line,
 * [seconds_since_start, code, data]. Terminal output is arbitrary bytes, JSON strings
 * are UTF-8: a UTF-8 sequence a program wrote across two reads is carried from one
 * event to the next (struct agent_cast_utf8, one per stream), and bytes that can never
 * be UTF-8 become U+FFFD, one per maximal ill-formed subpart (as Unicode recommends and
 * Python's "replace" decoder does), so every line parses in any JSON reader. Control
 * characters are written \u00XX.
 *
 * Pure functions appending to an rp_buf; no I/O, no global state. */
#ifndef RP_AGENT_ASCIICAST_H
#define RP_AGENT_ASCIICAST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Event codes of asciicast v2. */
#define AGENT_CAST_OUTPUT 'o'
#define AGENT_CAST_INPUT 'i'
#define AGENT_CAST_RESIZE 'r'
#define AGENT_CAST_MARKER 'm'

/* The most data bytes agent_cast_event_max_line is meant for; callers split larger
 * writes so that one line stays small (agent/recorder.c cuts chunks between lines). */
#define AGENT_CAST_MAX_EVENT_DATA (32u * 1024)

struct agent_cast_header {
    unsigned width, height;
    uint64_t timestamp_s; /* start, seconds since the epoch */
    const char *term;     /* env.TERM; NULL: omitted */
    const char *shell;    /* env.SHELL; NULL: omitted */
    const char *title;    /* NULL: omitted */
    const char *command;  /* NULL: omitted (an interactive shell) */
};

/* The incomplete UTF-8 sequence a stream's last write ended with (at most 3 bytes of a
 * well-formed prefix). Zero-initialise it. */
struct agent_cast_utf8 {
    uint8_t tail[3];
    uint8_t len;
};

/* Appends the header line (ending in '\n') to @b. Strings are escaped like data.
 * Returns 0 or RP_ENOMEM; @b is unchanged on error. */
int agent_cast_header(struct rp_buf *b, const struct agent_cast_header *h);

/* Appends the event line [t, "@code", data] for @n bytes at @p written at @t_us
 * microseconds after the start, to @b. With @carry (a stream's state), the bytes it
 * holds come first and a trailing incomplete UTF-8 sequence goes back into it instead
 * of being written; without (NULL), @p is complete and a trailing fragment is U+FFFD.
 * When nothing is left to write (every byte carried), no line is appended. Returns 0
 * or RP_ENOMEM; @b is unchanged on error. */
int agent_cast_event(struct rp_buf *b, uint64_t t_us, char code, struct agent_cast_utf8 *carry,
                     const void *p, size_t n);
/* Writes out what @carry holds (as U+FFFD: the stream ended inside a sequence) as an
 * event at @t_us, and empties it. No line when @carry is empty. */
int agent_cast_event_flush(struct rp_buf *b, uint64_t t_us, char code,
                           struct agent_cast_utf8 *carry);
/* [t, "r", "COLSxROWS"]. */
int agent_cast_resize(struct rp_buf *b, uint64_t t_us, unsigned cols, unsigned rows);

/* An upper bound of the bytes agent_cast_event appends for @n data bytes. */
size_t agent_cast_event_max_line(size_t n);

/* Appends @n bytes as a quoted JSON string (complete: no carry). */
int agent_cast_json_string(struct rp_buf *b, const void *p, size_t n);

/* Reads the time of the event line at @line (@n bytes, without or with its '\n'):
 * "[SECONDS.FRACTION, ..." into *@t_us. RP_EINVAL if the line does not start so. */
int agent_cast_line_time(const char *line, size_t n, uint64_t *t_us);

#endif
