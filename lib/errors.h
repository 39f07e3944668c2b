/* lib/errors.h: the one error space every Raftport layer returns.
 *
 * Functions return 0 or a negative RP_E* code. A short message explaining the
 * failure (with the values involved) is kept per thread and read with
 * rp_errmsg(); the function that fails sets it, callers pass the code up. */
#ifndef RP_ERRORS_H
#define RP_ERRORS_H

#include <stddef.h>

enum {
    RP_OK = 0,
    RP_ENOMEM = -1,        /* allocation failed */
    RP_EINVAL = -2,        /* malformed input: frame, command, config, resource */
    RP_EIO = -3,           /* local I/O failed (disk, socket) */
    RP_ENOTFOUND = -4,     /* no such resource, member, token */
    RP_EEXISTS = -5,       /* create of a present resource */
    RP_ECONFLICT = -6,     /* compare-and-swap or conditional delete on a stale revision */
    RP_ETIMEDOUT = -7,     /* deadline passed before an answer */
    RP_ENOTLEADER = -8,    /* this server does not lead and could not forward */
    RP_EUNKNOWN = -9,      /* the write may or may not have been applied (leadership lost) */
    RP_EDENIED = -10,      /* the caller's identity is not allowed to do this */
    RP_EPROTO = -11,       /* peer spoke a protocol we do not accept */
    RP_ENOSPC = -12,       /* data_dir is too full to accept writes */
    RP_EUNAVAILABLE = -13, /* no auth server could be reached / no leader */
    RP_ECLOSED = -14,      /* connection or object closed */
    RP_ETOOBIG = -15,      /* frame or value larger than the limit */
    RP_EBUSY = -16,        /* another change is in flight; retry later */
    RP_ETLS = -17,         /* TLS handshake or certificate check failed */
    RP_EAGAIN = -18,       /* nothing available now on a non-blocking source; try later */
};

/* Stable lower-case name of @code ("not_found", "conflict", ...), used on the wire. */
const char *rp_strerror(int code);
/* Maps a wire name back to its code; unknown names map to RP_EPROTO. */
int rp_error_from_name(const char *name);

/* Sets this thread's error message (printf format) and returns @code, so that
 * `return rp_err(RP_EINVAL, "frame of %zu bytes exceeds %zu", n, max);` reads well. */
int rp_err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* This thread's last message; never NULL (empty when none was set). */
const char *rp_errmsg(void);
/* Clears this thread's message. */
void rp_err_clear(void);

#endif
