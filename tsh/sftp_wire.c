/* tsh/sftp_wire.c: decoding of the node's SFTP answers (tsh/sftp_wire.h).
 *
 * Every read goes through struct rp_rd, which checks each length against what is left
 * before it moves; a length field is never used to compute a pointer by hand. */
#include "tsh/sftp_wire.h"

#include <string.h>

#include "lib/errors.h"

int tsh_sftp_take(const uint8_t *buf, size_t len, size_t *off, struct tsh_sftp_packet *pk)
{
    memset(pk, 0, sizeof *pk);
    /* Measured before anything is computed from @buf: an empty buffer may be NULL. */
    if (*off > len || len - *off < 5)
        return 0;
    struct rp_rd r;
    uint32_t plen;
    rp_rd_init(&r, buf + *off, len - *off);
    rp_rd_be32(&r, &plen);
    if (plen < 1 || plen > TSH_SFTP_MAX_PACKET)
        return rp_err(RP_EPROTO, "the node's SFTP server sent a packet of %u bytes (at most %d)",
                      plen, TSH_SFTP_MAX_PACKET);
    /* Measured first: a partial answer is the usual case in a transfer, not an error. */
    const uint8_t *whole;
    if (rp_rd_left(&r) < plen || rp_rd_bytes(&r, plen, &whole) != 0)
        return 0;
    /* The whole answer is here: it is taken (stepped over) whether or not it is
     * well-formed, so that the stream stays in step with the requests. */
    *off += 4 + (size_t)plen;
    rp_rd_init(&r, whole, plen);
    rp_rd_u8(&r, &pk->type);
    if (pk->type != TSH_SFTP_VERSION && rp_rd_be32(&r, &pk->id) != 0)
        return rp_err(RP_EPROTO, "the node's SFTP server sent a packet without a request id");
    pk->body_len = rp_rd_left(&r);
    rp_rd_bytes(&r, pk->body_len, &pk->body);
    return 1;
}

int tsh_sftp_get_str(struct rp_rd *r, const uint8_t **p, size_t *n)
{
    uint32_t len;
    if (rp_rd_be32(r, &len) != 0 || rp_rd_bytes(r, len, p) != 0)
        return rp_err(RP_EPROTO, "the node's SFTP server sent a truncated string");
    *n = len;
    return 0;
}

int tsh_sftp_get_attrs(struct rp_rd *r, struct tsh_sftp_attrs *a)
{
    memset(a, 0, sizeof a[0]);
    uint32_t u32;
    if (rp_rd_be32(r, &a->flags) != 0)
        goto bad;
    if ((a->flags & TSH_SFTP_ATTR_SIZE) && rp_rd_be64(r, &a->size) != 0)
        goto bad;
    if ((a->flags & TSH_SFTP_ATTR_UIDGID) && (rp_rd_be32(r, &u32) != 0 || rp_rd_be32(r, &u32) != 0))
        goto bad;
    if ((a->flags & TSH_SFTP_ATTR_PERMISSIONS) && rp_rd_be32(r, &a->perm) != 0)
        goto bad;
    if ((a->flags & TSH_SFTP_ATTR_ACMODTIME) &&
        (rp_rd_be32(r, &a->atime) != 0 || rp_rd_be32(r, &a->mtime) != 0))
        goto bad;
    if (a->flags & TSH_SFTP_ATTR_EXTENDED) {
        /* The pairs are only stepped over; the bound keeps that walk short whatever
         * the count says. */
        uint32_t n;
        if (rp_rd_be32(r, &n) != 0 || n > TSH_SFTP_MAX_EXTENDED)
            goto bad;
        for (uint32_t i = 0; i < 2 * n; i++) {
            const uint8_t *p;
            size_t l;
            if (tsh_sftp_get_str(r, &p, &l) != 0)
                goto bad;
        }
    }
    return 0;
bad:
    return rp_err(RP_EPROTO, "the node's SFTP server sent malformed file attributes");
}

int tsh_sftp_decode_status(const uint8_t *body, size_t len, uint32_t *code)
{
    struct rp_rd r;
    uint32_t c;
    rp_rd_init(&r, body, len);
    if (rp_rd_be32(&r, &c) != 0)
        return rp_err(RP_EPROTO, "the node's SFTP server sent a status without its code");
    *code = c;
    return 0;
}

int tsh_sftp_decode_handle(const uint8_t *body, size_t len, const uint8_t **h, size_t *hl)
{
    struct rp_rd r;
    rp_rd_init(&r, body, len);
    int rv = tsh_sftp_get_str(&r, h, hl);
    if (rv != 0)
        return rv;
    if (*hl == 0 || *hl > TSH_SFTP_MAX_HANDLE)
        return rp_err(RP_EPROTO, "the node's SFTP server sent a handle of %zu bytes", *hl);
    return 0;
}

int tsh_sftp_decode_data(const uint8_t *body, size_t len, const uint8_t **p, size_t *n)
{
    struct rp_rd r;
    rp_rd_init(&r, body, len);
    return tsh_sftp_get_str(&r, p, n);
}

int tsh_sftp_decode_attrs(const uint8_t *body, size_t len, struct tsh_sftp_attrs *a)
{
    struct rp_rd r;
    rp_rd_init(&r, body, len);
    return tsh_sftp_get_attrs(&r, a);
}

int tsh_sftp_names_begin(struct tsh_sftp_names *it, const uint8_t *body, size_t len)
{
    memset(it, 0, sizeof *it);
    rp_rd_init(&it->r, body, len);
    if (rp_rd_be32(&it->r, &it->count) != 0) {
        it->failed = RP_EPROTO;
        return rp_err(RP_EPROTO, "the node's SFTP server sent a malformed directory listing");
    }
    return 0;
}

int tsh_sftp_names_next(struct tsh_sftp_names *it, struct tsh_sftp_name *e)
{
    memset(e, 0, sizeof *e);
    if (it->failed != 0)
        return rp_err(it->failed, "the node's SFTP server sent a malformed directory listing");
    if (it->taken == it->count)
        return 0;
    int rv = tsh_sftp_get_str(&it->r, &e->name, &e->name_len);
    if (rv == 0)
        rv = tsh_sftp_get_str(&it->r, &e->longname, &e->longname_len);
    if (rv == 0)
        rv = tsh_sftp_get_attrs(&it->r, &e->attrs);
    if (rv != 0) {
        it->failed = rv;
        return rv;
    }
    it->taken++;
    return 1;
}
