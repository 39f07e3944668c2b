/* tests/fuzz/fuzz_tsh_sftp.c: libFuzzer target for what tsh scp reads from the node's
 * SFTP server (tsh/sftp_wire.h), which a compromised node chooses byte by byte.
 *
 * Input: the stream of answers as the node would send them. Answers are taken with
 * tsh_sftp_take until it needs more bytes or refuses one, and each is decoded by its
 * type as tsh/scp.c decodes it. Checked:
 * - a taken answer lies inside the input, right after the previous one; its length
 *   field is within TSH_SFTP_MAX_PACKET and agrees with the body's length (one byte of
 *   type, four of request id but for VERSION); it is not taken from any shorter prefix
 *   of the stream (tsh gets the stream in pieces: it must wait for the last byte);
 * - "more bytes needed" means fewer than 5 bytes or fewer than the length says; a
 *   refusal is RP_EPROTO with a message, for a length out of bounds or a missing id;
 * - STATUS, HANDLE and DATA: what is decoded is the string or code at the start of
 *   the body, inside it; handles are 1 to TSH_SFTP_MAX_HANDLE bytes;
 * - ATTRS (alone and in every NAME entry): fields whose flag is clear are zero; the
 *   bytes read are exactly the flagged fields (plus the extended pairs); the same
 *   attributes decode from exactly those bytes, and one byte fewer is refused;
 * - NAME: entries are taken in order, each name and long name inside the body after
 *   the previous entry; a listing read to its end has exactly as many entries as its
 *   count says, one refused has fewer, and reading on after the end or a refusal
 *   gives nothing more. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "tests/fuzz/check.h"
#include "tsh/sftp_wire.h"

static uint32_t be32_at(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static bool inside(const uint8_t *p, size_t n, const uint8_t *start, size_t len)
{
    return p >= start && n <= len && (size_t)(p - start) <= len - n;
}

/* The bytes the fixed fields of attributes with @flags take. */
static size_t attrs_fixed_len(uint32_t flags)
{
    size_t n = 4;
    if (flags & TSH_SFTP_ATTR_SIZE)
        n += 8;
    if (flags & TSH_SFTP_ATTR_UIDGID)
        n += 8;
    if (flags & TSH_SFTP_ATTR_PERMISSIONS)
        n += 4;
    if (flags & TSH_SFTP_ATTR_ACMODTIME)
        n += 8;
    if (flags & TSH_SFTP_ATTR_EXTENDED)
        n += 4;
    return n;
}

static bool attrs_eq(const struct tsh_sftp_attrs *a, const struct tsh_sftp_attrs *b)
{
    return a->flags == b->flags && a->size == b->size && a->perm == b->perm &&
           a->atime == b->atime && a->mtime == b->mtime;
}

/* Attributes just read from @start (@used bytes): checks their shape, and that
 * they decode the same from an exact copy of those bytes and not from one byte less. */
static void check_attrs(const struct tsh_sftp_attrs *a, const uint8_t *start, size_t used)
{
    FUZZ_CHECK((a->flags & TSH_SFTP_ATTR_SIZE) || a->size == 0);
    FUZZ_CHECK((a->flags & TSH_SFTP_ATTR_PERMISSIONS) || a->perm == 0);
    FUZZ_CHECK((a->flags & TSH_SFTP_ATTR_ACMODTIME) || (a->atime == 0 && a->mtime == 0));
    size_t fixed = attrs_fixed_len(a->flags);
    FUZZ_CHECK(used >= fixed);
    if (a->flags & TSH_SFTP_ATTR_EXTENDED) {
        uint32_t pairs = be32_at(start + fixed - 4);
        FUZZ_CHECK(pairs <= TSH_SFTP_MAX_EXTENDED);
        FUZZ_CHECK(used >= fixed + 8 * (size_t)pairs);
    } else {
        FUZZ_CHECK(used == fixed);
    }
    uint8_t *copy = fuzz_dup(start, used);
    struct rp_rd r;
    struct tsh_sftp_attrs again;
    rp_rd_init(&r, copy, used);
    FUZZ_CHECK(tsh_sftp_get_attrs(&r, &again) == 0);
    FUZZ_CHECK(rp_rd_left(&r) == 0);
    FUZZ_CHECK(attrs_eq(&again, a));
    rp_rd_init(&r, copy, used - 1);
    FUZZ_CHECK(tsh_sftp_get_attrs(&r, &again) == RP_EPROTO);
    free(copy);
}

static void check_string(int rv, const uint8_t *body, size_t len, const uint8_t *p, size_t n)
{
    if (rv != 0) {
        FUZZ_CHECK(rv == RP_EPROTO && rp_errmsg()[0] != '\0');
        return;
    }
    FUZZ_CHECK(len >= 4 && be32_at(body) == n);
    FUZZ_CHECK(p == body + 4 && inside(p, n, body, len));
}

static void decode_names(const uint8_t *body, size_t len)
{
    struct tsh_sftp_names it;
    int rv = tsh_sftp_names_begin(&it, body, len);
    if (rv != 0) {
        FUZZ_CHECK(rv == RP_EPROTO && len < 4);
        return;
    }
    FUZZ_CHECK(it.count == be32_at(body));
    const uint8_t *after = body + 4; /* where the previous entry ended */
    uint32_t decoded = 0;
    struct tsh_sftp_name e;
    while ((rv = tsh_sftp_names_next(&it, &e)) == 1) {
        decoded++;
        FUZZ_CHECK(e.name == after + 4 && inside(e.name, e.name_len, body, len));
        FUZZ_CHECK(e.longname == e.name + e.name_len + 4);
        FUZZ_CHECK(inside(e.longname, e.longname_len, body, len));
        const uint8_t *attrs_at = e.longname + e.longname_len;
        const uint8_t *end = body + it.r.off;
        FUZZ_CHECK(end > attrs_at && end <= body + len);
        check_attrs(&e.attrs, attrs_at, (size_t)(end - attrs_at));
        after = end;
    }
    FUZZ_CHECK(decoded == it.taken);
    if (rv == 0) {
        FUZZ_CHECK(decoded == it.count);
        /* Each entry takes at least 12 bytes, so no count a body cannot hold passes. */
        FUZZ_CHECK((size_t)decoded * 12 <= len - 4);
    } else {
        FUZZ_CHECK(rv == RP_EPROTO && decoded < it.count);
    }
    FUZZ_CHECK(tsh_sftp_names_next(&it, &e) == rv);
    FUZZ_CHECK(e.name == NULL && e.name_len == 0);
}

static void decode(const struct tsh_sftp_packet *pk)
{
    const uint8_t *body = pk->body;
    size_t len = pk->body_len;
    switch (pk->type) {
    case TSH_SFTP_STATUS: {
        uint32_t code = 0xdeadbeef;
        int rv = tsh_sftp_decode_status(body, len, &code);
        FUZZ_CHECK(rv == (len >= 4 ? 0 : RP_EPROTO));
        FUZZ_CHECK(rv == 0 ? code == be32_at(body) : code == 0xdeadbeef);
        break;
    }
    case TSH_SFTP_HANDLE: {
        const uint8_t *h = NULL;
        size_t hl = 0;
        int rv = tsh_sftp_decode_handle(body, len, &h, &hl);
        check_string(rv, body, len, h, hl);
        if (rv == 0)
            FUZZ_CHECK(hl >= 1 && hl <= TSH_SFTP_MAX_HANDLE);
        break;
    }
    case TSH_SFTP_DATA: {
        const uint8_t *p = NULL;
        size_t n = 0;
        int rv = tsh_sftp_decode_data(body, len, &p, &n);
        check_string(rv, body, len, p, n);
        break;
    }
    case TSH_SFTP_ATTRS: {
        struct tsh_sftp_attrs a;
        struct rp_rd r;
        rp_rd_init(&r, body, len);
        int rv = tsh_sftp_get_attrs(&r, &a);
        struct tsh_sftp_attrs b;
        FUZZ_CHECK(tsh_sftp_decode_attrs(body, len, &b) == rv);
        if (rv == 0) {
            FUZZ_CHECK(attrs_eq(&a, &b));
            check_attrs(&a, body, r.off);
        } else {
            FUZZ_CHECK(rv == RP_EPROTO);
        }
        break;
    }
    case TSH_SFTP_NAME:
        decode_names(body, len);
        break;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0, at = 0;
    struct tsh_sftp_packet pk;
    int rv;
    for (;;) {
        at = off;
        rv = tsh_sftp_take(data, size, &off, &pk);
        if (rv != 1)
            break;
        uint32_t plen = be32_at(data + at);
        FUZZ_CHECK(plen >= 1 && plen <= TSH_SFTP_MAX_PACKET);
        FUZZ_CHECK(off == at + 4 + plen && off <= size);
        FUZZ_CHECK(pk.type == data[at + 4]);
        size_t head = pk.type == TSH_SFTP_VERSION ? 1 : 5;
        FUZZ_CHECK(plen >= head && pk.body_len == plen - head);
        FUZZ_CHECK(pk.body == data + at + 4 + head && inside(pk.body, pk.body_len, data, size));
        FUZZ_CHECK(pk.type == TSH_SFTP_VERSION ? pk.id == 0 : pk.id == be32_at(data + at + 5));
        /* Not taken from one byte less of the stream: tsh waits for all of it. */
        struct tsh_sftp_packet early;
        size_t early_off = at;
        FUZZ_CHECK(tsh_sftp_take(data, off - 1, &early_off, &early) == 0 && early_off == at);
        /* The body alone, in a buffer of exactly its size, so a read past it is seen. */
        struct tsh_sftp_packet exact = pk;
        uint8_t *copy = fuzz_dup(pk.body, pk.body_len);
        exact.body = copy;
        decode(&exact);
        free(copy);
    }
    if (rv == 0) {
        FUZZ_CHECK(off == at);
        FUZZ_CHECK(size - at < 5 || 4 + (size_t)be32_at(data + at) > size - at);
        return 0;
    }
    FUZZ_CHECK(rv == RP_EPROTO && rp_errmsg()[0] != '\0');
    FUZZ_CHECK(size - at >= 5);
    uint32_t plen = be32_at(data + at);
    if (off == at) {
        /* A length out of bounds: the stream cannot be followed past it. */
        FUZZ_CHECK(plen < 1 || plen > TSH_SFTP_MAX_PACKET);
    } else {
        /* An answer too short for its request id, stepped over whole. */
        FUZZ_CHECK(plen < 5 && data[at + 4] != TSH_SFTP_VERSION && off == at + 4 + plen);
    }
    return 0;
}
