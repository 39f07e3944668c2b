/* tsh/sftp_wire.h: the bytes tsh scp reads from the node's SFTP server (SFTP version 3,
 * draft-ietf-secsh-filexfer-02, what OpenSSH's sftp-server speaks): the framing of its
 * answers and the answers themselves.
 *
 * These bytes are untrusted: a compromised node chooses every one of them. So the
 * decoding lives here, apart from the channel (tsh/scp.c), where a fuzz target
 * (tests/fuzz/fuzz_tsh_sftp.c) reaches it without a session. No function here does
 * I/O, allocates or keeps state; each reads only inside the byte range it is given,
 * and every pointer it hands back borrows from that range. Bytes after what a function
 * decodes are left alone (the caller decides whether they matter; tsh ignores them).
 *
 * Errors: 0 (or 1, said where) on success, else a negative RP_E* code with a message
 * (lib/errors.h) that names what the node sent wrong. */
#ifndef TSH_SFTP_WIRE_H
#define TSH_SFTP_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* The longest answer taken (its length field), the server's own limit. */
#define TSH_SFTP_MAX_PACKET (256 * 1024 + 1024)
/* sftp-server's handles are a few bytes; a longer one is a protocol error. */
#define TSH_SFTP_MAX_HANDLE 256
/* Extended attribute pairs read (and skipped) in one set of attributes. */
#define TSH_SFTP_MAX_EXTENDED 1024

/* The answer types tsh reads. */
enum {
    TSH_SFTP_VERSION = 2,
    TSH_SFTP_STATUS = 101,
    TSH_SFTP_HANDLE = 102,
    TSH_SFTP_DATA = 103,
    TSH_SFTP_NAME = 104,
    TSH_SFTP_ATTRS = 105,
};

/* The flags of a set of attributes: which fields follow. */
enum {
    TSH_SFTP_ATTR_SIZE = 1,
    TSH_SFTP_ATTR_UIDGID = 2,
    TSH_SFTP_ATTR_PERMISSIONS = 4,
    TSH_SFTP_ATTR_ACMODTIME = 8,
    TSH_SFTP_ATTR_EXTENDED = 0x80000000u,
};

/* A file's attributes; a field is meaningful only when its flag is set (and zero when
 * it is not). The owner and the extended pairs are read over, not kept. */
struct tsh_sftp_attrs {
    uint32_t flags;
    uint64_t size;
    uint32_t perm;
    uint32_t atime, mtime;
};

/* One answer, borrowed from the buffer it was taken from. */
struct tsh_sftp_packet {
    uint8_t type;
    uint32_t id; /* 0 for VERSION, which has none */
    const uint8_t *body;
    size_t body_len;
};

/* Takes the answer that starts at @buf + *@off (@len bytes in @buf in all) into @pk.
 * Returns 1 and moves *@off past it when it is whole; 0 when more bytes are needed
 * (nothing moves); RP_EPROTO for a length of 0 or over TSH_SFTP_MAX_PACKET (*@off does
 * not move: the stream cannot be followed further) or for an answer other than VERSION
 * too short for its request id (*@off moves past it, as past any whole answer). */
int tsh_sftp_take(const uint8_t *buf, size_t len, size_t *off, struct tsh_sftp_packet *pk);

/* A string (uint32 length, bytes) at @r: *@p borrows its bytes. RP_EPROTO when
 * truncated. */
int tsh_sftp_get_str(struct rp_rd *r, const uint8_t **p, size_t *n);

/* A set of attributes at @r into @a. RP_EPROTO when truncated or with more than
 * TSH_SFTP_MAX_EXTENDED extended pairs. */
int tsh_sftp_get_attrs(struct rp_rd *r, struct tsh_sftp_attrs *a);

/* The body of a STATUS answer: its code into *@code (untouched on error). RP_EPROTO
 * when shorter than a code. */
int tsh_sftp_decode_status(const uint8_t *body, size_t len, uint32_t *code);

/* The body of a HANDLE answer: *@h borrows the handle, of 1 to TSH_SFTP_MAX_HANDLE
 * bytes; RP_EPROTO otherwise. */
int tsh_sftp_decode_handle(const uint8_t *body, size_t len, const uint8_t **h, size_t *hl);

/* The body of a DATA answer: *@p borrows the data, *@n bytes (possibly 0: whether that
 * many answer the read is the caller's check). */
int tsh_sftp_decode_data(const uint8_t *body, size_t len, const uint8_t **p, size_t *n);

/* The body of an ATTRS answer into @a (tsh_sftp_get_attrs). */
int tsh_sftp_decode_attrs(const uint8_t *body, size_t len, struct tsh_sftp_attrs *a);

/* The entries of a NAME answer, read one at a time: a caller that acts on each entry as
 * it comes keeps what it took before a malformed one. */
struct tsh_sftp_names {
    struct rp_rd r;
    uint32_t count; /* entries the answer says it holds */
    uint32_t taken; /* entries taken so far */
    int failed;     /* the error that ended the reading, or 0 */
};

struct tsh_sftp_name {
    const uint8_t *name; /* not NUL-terminated; any bytes, '/' and NUL included */
    size_t name_len;
    const uint8_t *longname; /* the `ls -l` line, unused by tsh */
    size_t longname_len;
    struct tsh_sftp_attrs attrs;
};

/* Starts reading the body of a NAME answer (@body must outlive @it). RP_EPROTO when it
 * has no count. */
int tsh_sftp_names_begin(struct tsh_sftp_names *it, const uint8_t *body, size_t len);

/* The next entry into @e: 1 when there was one, 0 when all it->count were taken,
 * RP_EPROTO for a malformed entry (and again for every call after it). */
int tsh_sftp_names_next(struct tsh_sftp_names *it, struct tsh_sftp_name *e);

#endif
