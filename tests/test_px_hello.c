/* tests/test_px_hello.c: the ClientHello reader (proxy/hello.c) on real ClientHellos
 * made by OpenSSL client objects (and, in the fuzz corpus, by `openssl s_client`),
 * re-fragmented, truncated, and on garbage. */
#include <criterion/criterion.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "proxy/hello.h"

/* The first flight of an OpenSSL client offering @alpn (wire format, may be NULL) and
 * server name @sni (may be NULL), into @out; returns its length. */
static size_t client_hello(const unsigned char *alpn, size_t alpn_len, const char *sni,
                           int max_version, uint8_t *out, size_t cap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    cr_assert_not_null(ctx);
    if (max_version)
        SSL_CTX_set_max_proto_version(ctx, max_version);
    if (alpn)
        cr_assert_eq(SSL_CTX_set_alpn_protos(ctx, alpn, (unsigned)alpn_len), 0);
    SSL *ssl = SSL_new(ctx);
    BIO *rb = BIO_new(BIO_s_mem()), *wb = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, rb, wb);
    if (sni)
        SSL_set_tlsext_host_name(ssl, sni);
    cr_assert_eq(SSL_connect(ssl), -1);
    cr_assert_eq(SSL_get_error(ssl, -1), SSL_ERROR_WANT_READ);
    int n = BIO_read(wb, out, (int)cap);
    cr_assert_gt(n, 0);
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    return (size_t)n;
}

static const unsigned char three[] = "\x12teleport-proxy-ssh\x08http/1.1\x16teleport-reversetunnel";

Test(px_hello, a_real_client_hello_yields_its_alpn_names_in_order_and_the_server_name)
{
    uint8_t buf[4096];
    size_t n = client_hello(three, sizeof three - 1, "proxy.example.com", 0, buf, sizeof buf);
    struct px_hello h;
    cr_assert_eq(px_hello_parse(buf, n, &h), 0, "%s", rp_errmsg());
    cr_assert_eq(h.n_alpn, 3);
    cr_assert_str_eq(h.alpn[0], "teleport-proxy-ssh");
    cr_assert_str_eq(h.alpn[1], "http/1.1");
    cr_assert_str_eq(h.alpn[2], "teleport-reversetunnel");
    cr_assert_str_eq(h.sni, "proxy.example.com");
    cr_assert(px_hello_offers(&h, "http/1.1"));
    cr_assert_not(px_hello_offers(&h, "http/1"), "exact match only");
    cr_assert(px_hello_offers_prefix(&h, "teleport-"));
    cr_assert_not(px_hello_offers_prefix(&h, "teleport-auth@"));
}

Test(px_hello, a_tls12_hello_and_one_without_alpn_parse)
{
    uint8_t buf[4096];
    static const unsigned char auth[] = "\x15teleport-auth@cluster";
    size_t n = client_hello(auth, sizeof auth - 1, NULL, TLS1_2_VERSION, buf, sizeof buf);
    struct px_hello h;
    cr_assert_eq(px_hello_parse(buf, n, &h), 0, "%s", rp_errmsg());
    cr_assert(px_hello_offers_prefix(&h, "teleport-auth@"));
    cr_assert_str_eq(h.sni, "");
    n = client_hello(NULL, 0, NULL, 0, buf, sizeof buf);
    cr_assert_eq(px_hello_parse(buf, n, &h), 0, "%s", rp_errmsg());
    cr_assert_eq(h.n_alpn, 0);
}

Test(px_hello, every_prefix_of_a_hello_asks_for_more_bytes)
{
    uint8_t buf[4096];
    size_t n = client_hello(three, sizeof three - 1, "x", 0, buf, sizeof buf);
    struct px_hello h;
    for (size_t cut = 0; cut < n; cut++)
        cr_assert_eq(px_hello_parse(buf, cut, &h), RP_EAGAIN, "prefix of %zu of %zu bytes", cut, n);
    cr_assert_eq(px_hello_parse(buf, n, &h), 0);
}

/* Re-frames the handshake message of the single record @in into records of @size bytes
 * (at most) into @out. */
static size_t refragment(const uint8_t *in, size_t n, size_t size, uint8_t *out)
{
    size_t body = n - 5, o = 0;
    for (size_t off = 0; off < body; off += size) {
        size_t len = body - off < size ? body - off : size;
        out[o++] = 22;
        out[o++] = 3;
        out[o++] = 1;
        out[o++] = (uint8_t)(len >> 8);
        out[o++] = (uint8_t)len;
        memcpy(out + o, in + 5 + off, len);
        o += len;
    }
    return o;
}

Test(px_hello, a_hello_split_over_many_records_is_gathered)
{
    uint8_t buf[4096], frag[8192];
    size_t n = client_hello(three, sizeof three - 1, NULL, 0, buf, sizeof buf);
    size_t sizes[4] = {1, 3, 50, 200};
    for (int i = 0; i < 4; i++) {
        size_t m = refragment(buf, n, sizes[i], frag);
        struct px_hello h;
        cr_assert_eq(px_hello_parse(frag, m, &h), 0, "records of %zu: %s", sizes[i], rp_errmsg());
        cr_assert_eq(h.n_alpn, 3);
        cr_assert_str_eq(h.alpn[2], "teleport-reversetunnel");
        cr_assert_eq(px_hello_parse(frag, m - 1, &h), RP_EAGAIN);
    }
}

Test(px_hello, garbage_is_refused_at_its_first_bytes)
{
    struct px_hello h;
    cr_assert_eq(px_hello_parse((const uint8_t *)"S", 1, &h), RP_EPROTO);
    cr_assert_eq(px_hello_parse((const uint8_t *)"SSH-2.0-OpenSSH_9.2\r\n", 21, &h), RP_EPROTO);
    cr_assert_eq(px_hello_parse((const uint8_t *)"GET / HTTP/1.1\r\n", 16, &h), RP_EPROTO);
    cr_assert_eq(px_hello_parse((const uint8_t *)"\x16\x09", 2, &h), RP_EPROTO);
    /* a TLS alert record, not a handshake */
    cr_assert_eq(px_hello_parse((const uint8_t *)"\x15\x03\x03\x00\x02\x02\x28", 7, &h), RP_EPROTO);
    /* a handshake record holding a ServerHello */
    cr_assert_eq(px_hello_parse((const uint8_t *)"\x16\x03\x03\x00\x04\x02\x00\x00\x00", 9, &h),
                 RP_EPROTO);
    cr_assert_eq(px_hello_parse(NULL, 0, &h), RP_EAGAIN);
}

Test(px_hello, a_hello_announcing_more_than_16_kib_is_refused_before_it_arrives)
{
    const uint8_t big[9] = {22, 3, 1, 0, 4, 1, 0x01, 0x00, 0x01}; /* 65537 bytes announced */
    struct px_hello h;
    cr_assert_eq(px_hello_parse(big, sizeof big, &h), RP_ETOOBIG);
    const uint8_t rec[5] = {22, 3, 1, 0x50, 0x00}; /* a record over 2^14 */
    cr_assert_eq(px_hello_parse(rec, sizeof rec, &h), RP_EPROTO);
}

Test(px_hello, lengths_that_point_past_the_message_are_refused)
{
    uint8_t buf[4096];
    size_t n = client_hello(three, sizeof three - 1, NULL, 0, buf, sizeof buf);
    /* Find the ALPN extension (type 0x0010) and make its list longer than it is. */
    size_t at = 0;
    for (size_t i = 5 + 4 + 2 + 32; i + 6 < n; i++)
        if (buf[i] == 0 && buf[i + 1] == 16 && buf[i + 4] == 0 && buf[i + 5] == sizeof three - 1) {
            at = i;
            break;
        }
    cr_assert_neq(at, 0, "the ALPN extension is in the hello");
    buf[at + 5] = 0xff;
    struct px_hello h;
    cr_assert_eq(px_hello_parse(buf, n, &h), RP_EPROTO);
}

Test(px_hello, more_alpn_names_than_kept_are_counted_as_truncated)
{
    unsigned char many[20 * 4];
    size_t m = 0;
    for (int i = 0; i < 20; i++) {
        many[m++] = 3;
        many[m++] = 'p';
        many[m++] = (unsigned char)('a' + i);
        many[m++] = 'x';
    }
    uint8_t buf[4096];
    size_t n = client_hello(many, m, NULL, 0, buf, sizeof buf);
    struct px_hello h;
    cr_assert_eq(px_hello_parse(buf, n, &h), 0, "%s", rp_errmsg());
    cr_assert_eq(h.n_alpn, PX_HELLO_MAX_ALPN);
    cr_assert(h.alpn_truncated);
    cr_assert_str_eq(h.alpn[15], "ppx");
}
