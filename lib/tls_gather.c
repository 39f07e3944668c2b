/* lib/tls_gather.c: TLS records gathered and sent together (lib/tls.h).
 *
 * OpenSSL writes each record (16 KiB at most) to its BIO as soon as it is sealed; with
 * a socket BIO that is one send() per record, and on loopback each send() also runs
 * the receiver's side of TCP and wakes it. Under the SSL's write side this BIO keeps
 * the records in a buffer (RP_TLS_GATHER_BYTES for the proxy and the agent) and sends
 * them in one call when the buffer fills or the owner pushes (after each burst of
 * writes). With a size of 0 it sends each record at once, as a socket BIO would, but
 * with MSG_NOSIGNAL. The buffer exists
 * only while records wait, so an idle connection holds none. OpenSSL flushes the BIO
 * itself after handshake flights and alerts. Reading stays on the socket BIO that
 * SSL_set_fd made. */
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/errors.h"
#include "lib/tls.h"

struct gather {
    int fd;
    size_t size;  /* bytes gathered before a send; 0: each record is sent at once */
    uint8_t *buf; /* @size bytes, or NULL while nothing waits */
    size_t off, len;
};

/* Sends what @g holds. 1 when all went, 0 when the socket is full, -1 on an error. */
static int gather_send(struct gather *g)
{
    while (g->len > g->off) {
        ssize_t w = send(g->fd, g->buf + g->off, g->len - g->off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0)
            return errno == EAGAIN ? 0 : -1;
        g->off += (size_t)w;
    }
    free(g->buf);
    g->buf = NULL;
    g->off = g->len = 0;
    return 1;
}

static int gather_write(BIO *b, const char *p, int n)
{
    struct gather *g = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (g->size == 0) {
        ssize_t w = send(g->fd, p, (size_t)n, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            BIO_set_retry_write(b);
        return (int)w;
    }
    if (g->buf != NULL && g->len == g->size) {
        int s = gather_send(g);
        if (s < 0)
            return -1;
        if (s == 0 && g->off == 0) {
            BIO_set_retry_write(b);
            return -1;
        }
        if (s == 0) { /* make room: the unsent tail moves to the front */
            memmove(g->buf, g->buf + g->off, g->len - g->off);
            g->len -= g->off;
            g->off = 0;
        }
    }
    if (g->buf == NULL && (g->buf = malloc(g->size)) == NULL)
        return -1;
    size_t room = g->size - g->len;
    size_t take = (size_t)n < room ? (size_t)n : room;
    memcpy(g->buf + g->len, p, take);
    g->len += take;
    return (int)take;
}

static long gather_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct gather *g = BIO_get_data(b);
    (void)num;
    switch (cmd) {
    case BIO_CTRL_FLUSH: {
        BIO_clear_retry_flags(b);
        int s = gather_send(g);
        if (s == 0)
            BIO_set_retry_write(b);
        return s > 0 ? 1 : -1;
    }
    case BIO_CTRL_WPENDING:
        return (long)(g->len - g->off);
    case BIO_C_GET_FD:
        if (ptr != NULL)
            *(int *)ptr = g->fd;
        return g->fd;
    default:
        return 0;
    }
}

static int gather_destroy(BIO *b)
{
    struct gather *g = BIO_get_data(b);
    if (g != NULL) {
        free(g->buf);
        free(g);
    }
    BIO_set_data(b, NULL);
    return 1;
}

static BIO_METHOD *gather_method;
static pthread_once_t gather_once = PTHREAD_ONCE_INIT;

static void gather_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "gathered writes");
    if (m != NULL && BIO_meth_set_write(m, gather_write) == 1 &&
        BIO_meth_set_ctrl(m, gather_ctrl) == 1 && BIO_meth_set_destroy(m, gather_destroy) == 1)
        gather_method = m;
    else
        BIO_meth_free(m);
}

int rp_tls_gather_writes(SSL *ssl, int fd, size_t bytes)
{
    pthread_once(&gather_once, gather_method_init);
    struct gather *g = calloc(1, sizeof *g);
    BIO *b = gather_method != NULL ? BIO_new(gather_method) : NULL;
    if (g == NULL || b == NULL) {
        free(g);
        BIO_free(b);
        return rp_err(RP_ENOMEM, "TLS write buffer");
    }
    g->fd = fd;
    g->size = bytes;
    BIO_set_data(b, g);
    BIO_set_init(b, 1);
    SSL_set0_wbio(ssl, b); /* drops the socket BIO's write reference; it still reads */
    return 0;
}

size_t rp_tls_gather_held(SSL *ssl)
{
    return (size_t)BIO_wpending(SSL_get_wbio(ssl));
}

int rp_tls_gather_push(SSL *ssl)
{
    BIO *w = SSL_get_wbio(ssl);
    if (BIO_wpending(w) == 0 || BIO_flush(w) > 0)
        return 1;
    return BIO_should_retry(w) ? 0 : -1;
}
