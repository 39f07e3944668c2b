/* agent/sftp_audit.h: audit events for the file operations of an SFTP channel.
 *
 * A passive observer of the two byte streams the SSH server pumps between a client
 * and OpenSSH's sftp-server: it is fed copies of the bytes after they were handed on,
 * never alters or holds them, and accepts them split anywhere. It reads SFTP version
 * 3 (draft-ietf-secsh-filexfer-02, OpenSSH's extensions) and reports one event per
 * file operation, Teleport-style (event "sftp", field `action`):
 *
 *   open      a file opened (path, flags "read,write,append,create,truncate,excl"),
 *             reported with the server's answer: error set when it failed
 *   close     a file handle closed: path, flags, and the bytes the server returned
 *             to READs of it and accepted from WRITEs to it (READ and WRITE requests
 *             are never reported one by one: a 100 MiB copy is thousands of them)
 *   opendir, remove, mkdir, rmdir, setstat (also lsetstat and fsetstat: path,
 *             attributes "mode=0644 size=0 uid=0 gid=0 atime=.. mtime=.."), rename
 *             (path, target_path; posix-rename too), symlink (path: the link,
 *             target_path: what it points to), link (hardlink@openssh.com),
 *             copy-data (path: the source handle's file, target_path: the destination's)
 *
 * Each is reported when the server answers (error: the status, as "no such file"),
 * or at once when it cannot be tracked (below). Lookups that change nothing (stat,
 * lstat, realpath, readlink, readdir, statvfs) are not reported.
 *
 * Memory is bounded whatever the client sends: a packet is buffered up to
 * SFTP_AUDIT_HEAD_CAP bytes (WRITE and DATA payloads are skipped, never buffered);
 * at most SFTP_AUDIT_PENDING requests awaiting an answer and SFTP_AUDIT_HANDLES open
 * handles are tracked, with at most SFTP_AUDIT_STR_BUDGET bytes of paths between
 * them. A request beyond those bounds is reported at once, without its outcome; the
 * bytes of a handle beyond them are not counted. Events per channel stop at the
 * limit given to sftp_audit_new, after one event with action "events_truncated".
 *
 * A stream that is not SFTP (a packet length above SFTP_AUDIT_MAX_PACKET, which
 * sftp-server refuses too, or fields that overrun their packet) stops the observer:
 * the feed that found it returns RP_EINVAL once, with the reason in rp_errmsg(), and
 * every later call does nothing. sftp-server exits on such a stream itself, so a
 * client cannot continue a session unaudited by sending one.
 *
 * Not thread-safe: one observer is fed by one thread. */
#ifndef RP_AGENT_SFTP_AUDIT_H
#define RP_AGENT_SFTP_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SFTP_AUDIT_MAX_PACKET (256u * 1024) /* OpenSSH's SFTP_MAX_MSG_LENGTH */
#define SFTP_AUDIT_HEAD_CAP (10u * 1024)    /* bytes of a client packet buffered */
#define SFTP_AUDIT_PENDING 1024u
#define SFTP_AUDIT_HANDLES 256u
#define SFTP_AUDIT_STR_BUDGET (256u * 1024)
#define SFTP_AUDIT_PATH_MAX 4096u /* longer paths are reported cut, ending in "..." */
#define SFTP_AUDIT_DEFAULT_EVENTS 1000u

/* One file operation. Strings are the observer's, valid during the callback; paths are
 * printable UTF-8 (control characters and invalid bytes replaced by '?'). */
struct sftp_audit_event {
    const char *action;
    const char *path;        /* NULL when the operation has none */
    const char *target_path; /* rename, symlink, link, copy-data; else NULL */
    const char *flags;       /* open and close; else NULL */
    const char *attributes;  /* setstat; else NULL */
    const char *error;       /* NULL: succeeded (or not tracked); else the server's status */
    bool has_bytes;          /* close: the two counts below are set */
    uint64_t bytes_read, bytes_written;
};

typedef void (*sftp_audit_emit_fn)(void *arg, const struct sftp_audit_event *ev);

struct sftp_audit;

/* A new observer that reports through @emit(@arg, ...), at most @max_events events
 * (0: SFTP_AUDIT_DEFAULT_EVENTS) plus the truncation notice. *@out is the caller's
 * (sftp_audit_free). Returns 0 or RP_ENOMEM. */
int sftp_audit_new(struct sftp_audit **out, sftp_audit_emit_fn emit, void *arg,
                   uint32_t max_events);

/* Bytes the client sent to sftp-server (@from_client) or sftp-server sent to the
 * client. Returns 0; RP_EINVAL the first time the stream turns out not to be SFTP
 * (the observer stops: see above). May call the emit function. */
int sftp_audit_feed(struct sftp_audit *a, bool from_client, const void *p, size_t n);

/* The channel is over: reports a close, with its byte counts, for every handle left
 * open (a transfer cut short), then nothing more. */
void sftp_audit_finish(struct sftp_audit *a);

/* Events reported so far (the truncation notice included). */
uint32_t sftp_audit_events(const struct sftp_audit *a);

/* Frees @a without reporting anything (NULL is ignored). */
void sftp_audit_free(struct sftp_audit *a);

#endif
