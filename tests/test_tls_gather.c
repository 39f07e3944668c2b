/* tests/test_tls_gather.c: lib/tls_gather.c, the write BIO that sends an SSL's records
 * together, over a real TLS 1.3 connection on a socket pair.
 *
 * What must hold: records written with SSL_write stay in the BIO (the peer's socket
 * receives nothing) until the buffer fills or the owner pushes; a push sends them in
 * order; the buffer is gone once everything went; with a size of 0 each record leaves
 * at once. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <openssl/rand.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/tls.h"

struct pair {
    SSL *writer, *reader;
    int wfd, rfd;
};

/* A handshaken TLS 1.3 pair on a non-blocking socket pair; the writer's records are
 * gathered in @bytes. */
static void pair_open(struct pair *p, size_t bytes)
{
    EVP_PKEY *ca_key = NULL, *key = rp_tls_keygen();
    X509 *ca = NULL, *cert = NULL;
    cr_assert_not_null(key);
    cr_assert_eq(rp_tls_ca_create("gather.test", &ca_key, &ca), 0, "%s", rp_errmsg());
    struct rp_identity id = {.name = "node-1",
                             .cluster = "gather.test",
                             .system_role = RP_SYS_NODE,
                             .host_id = "node-1"};
    cr_assert_eq(rp_tls_issue(ca_key, ca, key, &id, NULL, 0, 3600, &cert), 0, "%s", rp_errmsg());
    SSL_CTX *sctx = rp_tls_server_ctx(ca, cert, key, 1);
    SSL_CTX *cctx = rp_tls_client_ctx(ca, cert, key);
    cr_assert(sctx != NULL && cctx != NULL, "%s", rp_errmsg());
    int sp[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp), 0);
    p->wfd = sp[0];
    p->rfd = sp[1];
    p->writer = SSL_new(cctx);
    p->reader = SSL_new(sctx);
    cr_assert_eq(SSL_set_fd(p->writer, p->wfd), 1);
    cr_assert_eq(SSL_set_fd(p->reader, p->rfd), 1);
    cr_assert_eq(rp_tls_gather_writes(p->writer, p->wfd, bytes), 0, "%s", rp_errmsg());
    SSL_set_mode(p->writer, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* Both ends step in turn until both finished: no thread needed. */
    int wc = 0, ac = 0;
    for (int i = 0; i < 1000 && (wc != 1 || ac != 1); i++) {
        if (wc != 1)
            wc = SSL_connect(p->writer);
        if (ac != 1)
            ac = SSL_accept(p->reader);
    }
    cr_assert(wc == 1 && ac == 1, "handshake did not finish");
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(ca_key);
    /* The server's session ticket (if any) and handshake tail are read now. */
    char c;
    SSL_read(p->writer, &c, 1);
}

static void pair_close(struct pair *p)
{
    SSL_free(p->writer);
    SSL_free(p->reader);
    close(p->wfd);
    close(p->rfd);
}

static int arrived(const struct pair *p)
{
    int n = -1;
    cr_assert_eq(ioctl(p->rfd, FIONREAD, &n), 0);
    return n;
}

/* Reads @len bytes from the reader and compares them with @want. */
static void read_all(struct pair *p, const uint8_t *want, size_t len)
{
    uint8_t *got = malloc(len);
    size_t n = 0;
    while (n < len) {
        int r = SSL_read(p->reader, got + n, (int)(len - n));
        cr_assert_gt(r, 0, "the reader stopped after %zu of %zu bytes", n, len);
        n += (size_t)r;
    }
    cr_assert_eq(memcmp(got, want, len), 0, "the bytes arrived changed or out of order");
    free(got);
}

Test(tls_gather, records_wait_for_a_push_and_then_leave_together_in_order)
{
    struct pair p;
    pair_open(&p, RP_TLS_GATHER_BYTES);
    uint8_t data[3 * 16384];
    RAND_bytes(data, sizeof data);
    cr_assert_eq(arrived(&p), 0);
    for (size_t off = 0; off < sizeof data; off += 16384)
        cr_assert_eq(SSL_write(p.writer, data + off, 16384), 16384);
    cr_assert_eq(arrived(&p), 0, "three records were sent before the push");
    size_t held = rp_tls_gather_held(p.writer);
    cr_assert_gt(held, sizeof data, "the records (with their headers and tags) wait");
    cr_assert_eq(rp_tls_gather_push(p.writer), 1);
    cr_assert_eq(rp_tls_gather_held(p.writer), 0);
    cr_assert_eq((size_t)arrived(&p), held, "one push sent every record");
    read_all(&p, data, sizeof data);
    pair_close(&p);
}

Test(tls_gather, a_full_buffer_is_sent_without_a_push)
{
    struct pair p;
    pair_open(&p, RP_TLS_GATHER_BYTES);
    static uint8_t data[5 * 16384];
    RAND_bytes(data, sizeof data);
    for (size_t off = 0; off < sizeof data; off += 16384)
        cr_assert_eq(SSL_write(p.writer, data + off, 16384), 16384);
    cr_assert_geq(arrived(&p), RP_TLS_GATHER_BYTES, "a full buffer left at once");
    cr_assert_lt(rp_tls_gather_held(p.writer), RP_TLS_GATHER_BYTES);
    cr_assert_eq(rp_tls_gather_push(p.writer), 1);
    read_all(&p, data, sizeof data);
    pair_close(&p);
}

Test(tls_gather, a_push_to_a_full_socket_keeps_the_rest_for_later)
{
    struct pair p;
    pair_open(&p, RP_TLS_GATHER_BYTES);
    int small = 4096;
    setsockopt(p.wfd, SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    setsockopt(p.rfd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    static uint8_t data[4 * 16384];
    RAND_bytes(data, sizeof data);
    size_t sent = 0;
    while (sent < sizeof data) {
        int w = SSL_write(p.writer, data + sent, (int)(sizeof data - sent));
        if (w <= 0)
            break; /* the socket and the buffer are full */
        sent += (size_t)w;
    }
    cr_assert_gt(sent, 0);
    cr_assert_eq(rp_tls_gather_push(p.writer), 0, "the socket is full: push must say so");
    cr_assert_gt(rp_tls_gather_held(p.writer), 0);
    /* The reader drains; pushes (and the writes OpenSSL retries) finish the job. */
    uint8_t *got = malloc(sizeof data);
    size_t n = 0;
    for (int i = 0; i < 100000 && n < sizeof data; i++) {
        if (sent < sizeof data) {
            int w = SSL_write(p.writer, data + sent, (int)(sizeof data - sent));
            if (w > 0)
                sent += (size_t)w;
        }
        cr_assert_geq(rp_tls_gather_push(p.writer), 0);
        int r = SSL_read(p.reader, got + n, (int)(sizeof data - n));
        if (r > 0)
            n += (size_t)r;
    }
    cr_assert_eq(n, sizeof data, "only %zu of %zu bytes arrived", n, sizeof data);
    cr_assert_eq(memcmp(got, data, sizeof data), 0);
    cr_assert_eq(rp_tls_gather_held(p.writer), 0);
    free(got);
    pair_close(&p);
}

Test(tls_gather, size_zero_sends_each_record_at_once)
{
    struct pair p;
    pair_open(&p, 0);
    uint8_t data[1000];
    RAND_bytes(data, sizeof data);
    cr_assert_eq(SSL_write(p.writer, data, sizeof data), (int)sizeof data);
    cr_assert_gt(arrived(&p), (int)sizeof data, "the record left without a push");
    cr_assert_eq(rp_tls_gather_held(p.writer), 0);
    cr_assert_eq(rp_tls_gather_push(p.writer), 1);
    read_all(&p, data, sizeof data);
    pair_close(&p);
}
