/* proxy/hello.c: the ClientHello reader of proxy/hello.h.
 *
 * A ClientHello may be split over several handshake records; the fragments are
 * gathered into one bounded buffer first, then the message is read with the bounded
 * reader of lib/buf.h, which never steps outside what it was given. */
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "proxy/hello.h"

#define REC_HANDSHAKE 22
#define HS_CLIENT_HELLO 1
#define EXT_SERVER_NAME 0
#define EXT_ALPN 16
/* RFC 8446 5.1: a TLSPlaintext fragment is at most 2^14 bytes. */
#define MAX_RECORD 16384

static int read_alpn(struct rp_rd *ext, struct px_hello *out)
{
    uint16_t list_len;
    const uint8_t *list;
    if (rp_rd_be16(ext, &list_len) != 0 || list_len < 2 || rp_rd_bytes(ext, list_len, &list) != 0)
        return rp_err(RP_EPROTO, "ClientHello: malformed ALPN extension");
    struct rp_rd r;
    rp_rd_init(&r, list, list_len);
    while (rp_rd_left(&r) > 0) {
        uint8_t len;
        const uint8_t *name;
        if (rp_rd_u8(&r, &len) != 0 || len == 0 || rp_rd_bytes(&r, len, &name) != 0)
            return rp_err(RP_EPROTO, "ClientHello: malformed ALPN protocol name");
        if (out->n_alpn == PX_HELLO_MAX_ALPN) {
            out->alpn_truncated = true;
            continue;
        }
        memcpy(out->alpn[out->n_alpn], name, len);
        out->alpn[out->n_alpn][len] = '\0';
        out->alpn_len[out->n_alpn] = len;
        out->n_alpn++;
    }
    return 0;
}

static int read_sni(struct rp_rd *ext, struct px_hello *out)
{
    uint16_t list_len;
    const uint8_t *list;
    if (rp_rd_be16(ext, &list_len) != 0 || rp_rd_bytes(ext, list_len, &list) != 0)
        return rp_err(RP_EPROTO, "ClientHello: malformed server_name extension");
    struct rp_rd r;
    rp_rd_init(&r, list, list_len);
    while (rp_rd_left(&r) > 0) {
        uint8_t type;
        uint16_t len;
        const uint8_t *name;
        if (rp_rd_u8(&r, &type) != 0 || rp_rd_be16(&r, &len) != 0 ||
            rp_rd_bytes(&r, len, &name) != 0)
            return rp_err(RP_EPROTO, "ClientHello: malformed server_name entry");
        if (type == 0 && out->sni[0] == '\0' && len > 0 && len < sizeof out->sni &&
            memchr(name, 0, len) == NULL) {
            memcpy(out->sni, name, len);
            out->sni[len] = '\0';
        }
    }
    return 0;
}

/* Reads the ClientHello body (after the 4-byte handshake header). */
static int read_body(const uint8_t *p, size_t n, struct px_hello *out)
{
    struct rp_rd r;
    uint16_t version, cs_len, ext_len;
    uint8_t sid_len, comp_len;
    rp_rd_init(&r, p, n);
    if (rp_rd_be16(&r, &version) != 0 || rp_rd_skip(&r, 32) != 0 || rp_rd_u8(&r, &sid_len) != 0 ||
        sid_len > 32 || rp_rd_skip(&r, sid_len) != 0 || rp_rd_be16(&r, &cs_len) != 0 ||
        cs_len < 2 || cs_len % 2 != 0 || rp_rd_skip(&r, cs_len) != 0 ||
        rp_rd_u8(&r, &comp_len) != 0 || comp_len < 1 || rp_rd_skip(&r, comp_len) != 0)
        return rp_err(RP_EPROTO, "ClientHello: malformed legacy fields");
    if ((version >> 8) != 3)
        return rp_err(RP_EPROTO, "ClientHello: version 0x%04x is not TLS", version);
    if (rp_rd_left(&r) == 0)
        return 0; /* no extensions at all: a TLS 1.2-era client without ALPN */
    const uint8_t *exts;
    if (rp_rd_be16(&r, &ext_len) != 0 || rp_rd_bytes(&r, ext_len, &exts) != 0 ||
        rp_rd_left(&r) != 0)
        return rp_err(RP_EPROTO, "ClientHello: extensions do not fill the message");
    struct rp_rd e;
    rp_rd_init(&e, exts, ext_len);
    bool seen_alpn = false, seen_sni = false;
    while (rp_rd_left(&e) > 0) {
        uint16_t type, len;
        const uint8_t *body;
        if (rp_rd_be16(&e, &type) != 0 || rp_rd_be16(&e, &len) != 0 ||
            rp_rd_bytes(&e, len, &body) != 0)
            return rp_err(RP_EPROTO, "ClientHello: malformed extension header");
        struct rp_rd one;
        rp_rd_init(&one, body, len);
        int rv = 0;
        if (type == EXT_ALPN) {
            /* RFC 8446 4.2: one extension of a type at most. */
            if (seen_alpn)
                return rp_err(RP_EPROTO, "ClientHello: two ALPN extensions");
            seen_alpn = true;
            rv = read_alpn(&one, out);
        } else if (type == EXT_SERVER_NAME) {
            if (seen_sni)
                return rp_err(RP_EPROTO, "ClientHello: two server_name extensions");
            seen_sni = true;
            rv = read_sni(&one, out);
        }
        if (rv != 0)
            return rv;
    }
    return 0;
}

int px_hello_parse(const uint8_t *p, size_t n, struct px_hello *out)
{
    /* the handshake message, gathered from its records */
    uint8_t msg[PX_HELLO_MAX_BYTES + 4];
    size_t have = 0, need = 0; /* need: 0 until the handshake header is known */
    size_t off = 0;
    memset(out, 0, sizeof *out);
    for (;;) {
        if (n - off < 5) {
            /* Judge what prefix there is, so garbage is refused at its first bytes. */
            if (n - off >= 1 && p[off] != REC_HANDSHAKE)
                return rp_err(RP_EPROTO, "not a TLS handshake record (first byte 0x%02x)", p[off]);
            if (n - off >= 2 && p[off + 1] != 3)
                return rp_err(RP_EPROTO, "not a TLS record (version byte 0x%02x)", p[off + 1]);
            return RP_EAGAIN;
        }
        const uint8_t *h = p + off;
        size_t rec_len = (size_t)h[3] << 8 | h[4];
        if (h[0] != REC_HANDSHAKE)
            return rp_err(RP_EPROTO, "not a TLS handshake record (type 0x%02x)", h[0]);
        if (h[1] != 3 || h[2] > 4)
            return rp_err(RP_EPROTO, "not a TLS record (version 0x%02x%02x)", h[1], h[2]);
        if (rec_len == 0 || rec_len > MAX_RECORD)
            return rp_err(RP_EPROTO, "TLS record of %zu bytes (expected 1..%d)", rec_len,
                          MAX_RECORD);
        off += 5;
        size_t avail = n - off < rec_len ? n - off : rec_len;
        /* Take what this record holds of the message (never more than the message). */
        size_t want = need ? need - have : sizeof msg - have;
        size_t take = avail < want ? avail : want;
        if (take > sizeof msg - have)
            return rp_err(RP_ETOOBIG, "ClientHello larger than %d bytes", PX_HELLO_MAX_BYTES);
        memcpy(msg + have, p + off, take);
        have += take;
        if (need == 0 && have >= 4) {
            if (msg[0] != HS_CLIENT_HELLO)
                return rp_err(RP_EPROTO, "first handshake message is of type %u, not ClientHello",
                              msg[0]);
            size_t body = (size_t)msg[1] << 16 | (size_t)msg[2] << 8 | msg[3];
            if (body > PX_HELLO_MAX_BYTES)
                return rp_err(RP_ETOOBIG, "ClientHello of %zu bytes (at most %d accepted)", body,
                              PX_HELLO_MAX_BYTES);
            need = 4 + body;
            if (have > need)
                have = need; /* the record's rest belongs to later messages */
        }
        if (need != 0 && have >= need)
            return read_body(msg + 4, need - 4, out);
        if (avail < rec_len)
            return RP_EAGAIN; /* the record is not all here yet */
        off += rec_len;
    }
}

bool px_hello_offers(const struct px_hello *h, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < h->n_alpn; i++)
        if (h->alpn_len[i] == len && memcmp(h->alpn[i], name, len) == 0)
            return true;
    return false;
}

bool px_hello_offers_prefix(const struct px_hello *h, const char *prefix)
{
    size_t len = strlen(prefix);
    for (size_t i = 0; i < h->n_alpn; i++)
        if (h->alpn_len[i] >= len && memcmp(h->alpn[i], prefix, len) == 0)
            return true;
    return false;
}
