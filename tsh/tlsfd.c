/* tsh/tlsfd.c: a TLS connection that libssh drives as if it were a socket (tlsfd.h).
 *
 * Reading: OpenSSL reads the socket ahead (up to the read buffer tsh_dial sized) and
 * decrypts one record at a time; libssh's recv() of 4 KiB is an SSL_read out of the
 * current record. A tlsfd polls readable while that record has bytes left, or once
 * SSL_peek could decrypt the next one from what was read ahead; only when neither
 * holds does the TCP socket itself go into the poll.
 *
 * Writing: send() writes TLS records straight from libssh's buffer; what the socket
 * does not take is queued here (the tlsfd then stays writable until 1 MiB waits) and
 * written whenever the tlsfd is polled or sent to again. SSL_MODE_ENABLE_PARTIAL_WRITE
 * and SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER let a record that was cut short be retried
 * from the queue's copy of the same bytes.
 *
 * The socket's writes go through a BIO that sends with MSG_NOSIGNAL: a proxy that
 * vanishes makes the write fail, not the process die of SIGPIPE. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/util.h"
#include "tsh/tlsfd.h"

#define OUT_CAP (1u << 20) /* queued bytes beyond which a tlsfd stops polling writable */
#define MAX_TLSFDS 8
#define SMALL_POLL 16 /* poll sets up to this size are translated on the stack */

struct tlsfd {
    int fd;  /* what libssh holds */
    int tcp; /* the connection to the proxy, non-blocking */
    SSL *ssl;
    uint8_t *out; /* plaintext accepted from send() and not yet in a record */
    size_t out_off, out_len, out_size;
    bool tcp_readable;   /* the last poll saw the socket readable: SSL_peek may progress */
    bool starved;        /* what was read ahead ends in a partial record */
    bool eof;            /* close_notify, or the connection ended: recv gives 0 */
    bool broken;         /* a write failed: send fails */
    bool rd_wants_write; /* OpenSSL must write before it can read on */
    bool wr_wants_read;  /* OpenSSL must read before it can write on */
};

static struct tsh_tlsfd_libc libc;
static bool enabled;
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tlsfd *reg[MAX_TLSFDS];
static atomic_int reg_n;

void tsh_tlsfd_enable(const struct tsh_tlsfd_libc *l)
{
    libc = *l;
    enabled = true;
}

bool tsh_tlsfd_enabled(void)
{
    return enabled;
}

bool tsh_tlsfd_any(void)
{
    return atomic_load_explicit(&reg_n, memory_order_acquire) > 0;
}

static struct tlsfd *find(int fd)
{
    if (fd < 0 || !tsh_tlsfd_any())
        return NULL;
    struct tlsfd *t = NULL;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < MAX_TLSFDS && t == NULL; i++)
        if (reg[i] != NULL && reg[i]->fd == fd)
            t = reg[i];
    pthread_mutex_unlock(&reg_mu);
    return t;
}

bool tsh_tlsfd_is(int fd)
{
    return find(fd) != NULL;
}

/* ---- a socket BIO that never raises SIGPIPE ------------------------------------------- */

static int bio_write(BIO *b, const char *p, int n)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t w = libc.send(fd, p, (size_t)n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EAGAIN || errno == EINTR))
        BIO_set_retry_write(b);
    return (int)w;
}

static int bio_read(BIO *b, char *p, int n)
{
    int fd = (int)(intptr_t)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t r = libc.recv(fd, p, (size_t)n, 0);
    if (r < 0 && (errno == EAGAIN || errno == EINTR))
        BIO_set_retry_read(b);
    return (int)r;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static void bio_method_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "tsh tcp");
    if (m != NULL && BIO_meth_set_write(m, bio_write) == 1 && BIO_meth_set_read(m, bio_read) == 1 &&
        BIO_meth_set_ctrl(m, bio_ctrl) == 1)
        bio_method = m;
    else
        BIO_meth_free(m);
}

/* ---- open and close ------------------------------------------------------------------- */

int tsh_tlsfd_open(SSL *ssl, int tcp, int *fd)
{
    int sp[2];
    pthread_once(&bio_once, bio_method_init);
    if (!enabled || bio_method == NULL)
        return rp_err(RP_EIO, "the in-process TLS transport is not available");
    struct tlsfd *t = calloc(1, sizeof *t);
    BIO *bio = BIO_new(bio_method);
    if (t == NULL || bio == NULL) {
        free(t);
        BIO_free(bio);
        return rp_err(RP_ENOMEM, "tlsfd");
    }
    /* libssh needs a descriptor of its own: a socket whose peer is gone already. */
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        int e = errno;
        free(t);
        BIO_free(bio);
        return rp_err(RP_EIO, "socketpair: %s", strerror(e));
    }
    close(sp[1]);
    int slot = -1;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < MAX_TLSFDS && slot < 0; i++)
        if (reg[i] == NULL)
            slot = i;
    if (slot >= 0) {
        t->fd = sp[0];
        t->tcp = tcp;
        t->ssl = ssl;
        reg[slot] = t;
        atomic_fetch_add_explicit(&reg_n, 1, memory_order_release);
    }
    pthread_mutex_unlock(&reg_mu);
    if (slot < 0) {
        close(sp[0]);
        free(t);
        BIO_free(bio);
        return rp_err(RP_EIO, "more than %d connections to the proxy at once", MAX_TLSFDS);
    }
    fcntl(tcp, F_SETFL, fcntl(tcp, F_GETFL) | O_NONBLOCK);
    BIO_set_data(bio, (void *)(intptr_t)tcp);
    BIO_set_init(bio, 1);
    SSL_set_bio(ssl, bio, bio); /* one reference, for both directions */
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    *fd = sp[0];
    return 0;
}

/* What a failed SSL call means for @t. */
static void ssl_failed(struct tlsfd *t, int r, bool reading)
{
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        if (reading)
            t->starved = true;
        else
            t->wr_wants_read = true;
        return;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        if (reading)
            t->rd_wants_write = true;
        return;
    }
    /* close_notify, the socket's end without one, or a TLS error: the stream ends. */
    ERR_clear_error();
    t->eof = true;
    if (!reading)
        t->broken = true;
}

static void flush(struct tlsfd *t)
{
    t->wr_wants_read = false;
    while (t->out_off < t->out_len && !t->broken) {
        size_t n = t->out_len - t->out_off;
        int w = SSL_write(t->ssl, t->out + t->out_off, n > INT_MAX ? INT_MAX : (int)n);
        if (w <= 0) {
            ssl_failed(t, w, false);
            break;
        }
        t->out_off += (size_t)w;
    }
    if (t->out_off == t->out_len || t->broken)
        t->out_off = t->out_len = 0;
}

/* Polls @t's socket for @events until @until_ms (monotonic); false once it passed. */
static bool wait_socket(struct tlsfd *t, short events, uint64_t until_ms)
{
    uint64_t now = rp_mono_ms();
    if (now >= until_ms)
        return false;
    struct pollfd p = {t->tcp, events, 0};
    int rc = libc.poll(&p, 1, (int)(until_ms - now));
    return rc > 0 || (rc < 0 && errno == EINTR);
}

bool tsh_tlsfd_close(int fd, int linger_ms)
{
    struct tlsfd *t = NULL;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < MAX_TLSFDS && t == NULL; i++) {
        if (reg[i] != NULL && reg[i]->fd == fd) {
            t = reg[i];
            reg[i] = NULL;
            atomic_fetch_sub_explicit(&reg_n, 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&reg_mu);
    if (t == NULL)
        return false;
    uint64_t until = rp_mono_ms() + (uint64_t)linger_ms;
    while (t->out_len > 0 && !t->broken) {
        flush(t);
        if (t->out_len > 0 && !wait_socket(t, t->wr_wants_read ? POLLIN : POLLOUT, until))
            break;
    }
    /* close_notify, then the proxy's own end (as the socketpair thread waited for it):
     * a socket closed with bytes unread would reset the connection. */
    if (!t->broken) {
        int s = SSL_shutdown(t->ssl);
        while (s < 0 && SSL_get_error(t->ssl, s) == SSL_ERROR_WANT_WRITE &&
               wait_socket(t, POLLOUT, until))
            s = SSL_shutdown(t->ssl);
        while (s == 0) { /* ours is sent: read (and drop) until theirs arrives */
            char sink[4096];
            int r = SSL_read(t->ssl, sink, sizeof sink);
            if (r > 0 && rp_mono_ms() >= until)
                break; /* a proxy that keeps sending does not hold us past the linger */
            if (r > 0)
                continue;
            int e = SSL_get_error(t->ssl, r);
            if ((e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) ||
                !wait_socket(t, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, until))
                break;
        }
        ERR_clear_error();
    }
    SSL_free(t->ssl);
    close(t->tcp);
    close(t->fd);
    free(t->out);
    free(t);
    return true;
}

/* ---- recv, send, poll ----------------------------------------------------------------- */

ssize_t tsh_tlsfd_recv(int fd, void *buf, size_t len, int flags)
{
    struct tlsfd *t = find(fd);
    if (t == NULL) {
        errno = EBADF;
        return -1;
    }
    if (len == 0)
        return 0;
    if (t->eof && SSL_pending(t->ssl) == 0)
        return 0;
    int n = len > INT_MAX ? INT_MAX : (int)len;
    int r = (flags & MSG_PEEK) ? SSL_peek(t->ssl, buf, n) : SSL_read(t->ssl, buf, n);
    if (r > 0) {
        /* OpenSSL may have read the socket ahead: whether a whole record waits is no
         * longer known, and poll must look (SSL_peek) before it waits on the socket. */
        t->starved = false;
        return r;
    }
    ssl_failed(t, r, true);
    if (t->eof)
        return 0;
    errno = EAGAIN;
    return -1;
}

ssize_t tsh_tlsfd_send(int fd, const void *buf, size_t len)
{
    struct tlsfd *t = find(fd);
    if (t == NULL) {
        errno = EBADF;
        return -1;
    }
    if (t->broken) {
        errno = EPIPE;
        return -1;
    }
    size_t done = 0;
    if (t->out_len == 0) {
        t->wr_wants_read = false;
        while (done < len) {
            size_t n = len - done;
            int w = SSL_write(t->ssl, (const uint8_t *)buf + done, n > INT_MAX ? INT_MAX : (int)n);
            if (w <= 0) {
                ssl_failed(t, w, false);
                break;
            }
            done += (size_t)w;
        }
        if (t->broken) {
            errno = EPIPE;
            return done > 0 ? (ssize_t)done : -1;
        }
    }
    if (done == len)
        return (ssize_t)len;
    size_t rest = len - done;
    if (t->out_off > 0 && t->out_off == t->out_len)
        t->out_off = t->out_len = 0;
    if (t->out_len + rest > t->out_size) {
        if (t->out_off > 0) {
            memmove(t->out, t->out + t->out_off, t->out_len - t->out_off);
            t->out_len -= t->out_off;
            t->out_off = 0;
        }
        if (t->out_len + rest > t->out_size) {
            size_t size = t->out_size ? t->out_size : 64 * 1024;
            while (size < t->out_len + rest)
                size *= 2;
            uint8_t *p = realloc(t->out, size);
            if (p == NULL) {
                errno = ENOMEM;
                return done > 0 ? (ssize_t)done : -1;
            }
            t->out = p;
            t->out_size = size;
        }
    }
    memcpy(t->out + t->out_len, (const uint8_t *)buf + done, rest);
    t->out_len += rest;
    return (ssize_t)len;
}

/* What @t is ready for among @events, decrypting the next record if it may. */
static short ready(struct tlsfd *t, short events)
{
    short r = 0;
    if (events & POLLIN) {
        if (!t->eof && SSL_pending(t->ssl) == 0 &&
            (t->tcp_readable || (!t->starved && SSL_has_pending(t->ssl)))) {
            char c;
            t->tcp_readable = t->starved = false;
            int p = SSL_peek(t->ssl, &c, 1);
            if (p <= 0)
                ssl_failed(t, p, true);
        }
        if (t->eof || SSL_pending(t->ssl) > 0)
            r |= POLLIN;
    }
    if ((events & POLLOUT) && (t->broken || t->out_len - t->out_off < OUT_CAP))
        r |= POLLOUT;
    return r;
}

/* The socket events @t needs polled to make progress on @events. */
static short needs(struct tlsfd *t, short events)
{
    short e = 0;
    if (((events & POLLIN) && !t->eof) || t->wr_wants_read)
        e |= POLLIN;
    if (t->out_len > t->out_off || t->rd_wants_write)
        e |= POLLOUT;
    return e;
}

static int remaining_ms(int timeout, uint64_t start)
{
    if (timeout < 0)
        return -1;
    uint64_t spent = rp_mono_ms() - start;
    return spent >= (uint64_t)timeout ? 0 : timeout - (int)spent;
}

int tsh_tlsfd_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    struct pollfd small[SMALL_POLL], *real = small;
    struct tlsfd *tsmall[SMALL_POLL], **ts = tsmall;
    if (n > SMALL_POLL) {
        real = malloc(n * sizeof *real);
        ts = malloc(n * sizeof *ts);
        if (real == NULL || ts == NULL) {
            free(real);
            free(ts);
            errno = ENOMEM;
            return -1;
        }
    }
    bool all_ours = true;
    for (nfds_t i = 0; i < n; i++) {
        ts[i] = find(fds[i].fd);
        all_ours = all_ours && ts[i] != NULL;
    }
    uint64_t start = rp_mono_ms();
    int rc;
    for (;;) {
        int nready = 0;
        for (nfds_t i = 0; i < n; i++) {
            fds[i].revents = 0;
            if (ts[i] != NULL && (fds[i].revents = ready(ts[i], fds[i].events)) != 0)
                nready++;
        }
        if (nready > 0 && all_ours) {
            rc = nready;
            break;
        }
        for (nfds_t i = 0; i < n; i++) {
            real[i] = fds[i];
            if (ts[i] != NULL) {
                short e = needs(ts[i], fds[i].events);
                real[i] = (struct pollfd){e ? ts[i]->tcp : -1, e, 0};
            }
        }
        rc = libc.poll(real, n, nready > 0 ? 0 : remaining_ms(timeout, start));
        if (rc < 0)
            break;
        nready = 0;
        for (nfds_t i = 0; i < n; i++) {
            struct tlsfd *t = ts[i];
            if (t == NULL) {
                fds[i].revents = real[i].revents;
            } else {
                short re = real[i].revents;
                if (re & (POLLIN | POLLHUP | POLLERR)) {
                    t->tcp_readable = true;
                    if (t->wr_wants_read)
                        flush(t);
                }
                if (re & (POLLOUT | POLLHUP | POLLERR)) {
                    if (t->rd_wants_write) {
                        t->rd_wants_write = false;
                        t->tcp_readable = true;
                    }
                    flush(t);
                }
                fds[i].revents = ready(t, fds[i].events);
            }
            if (fds[i].revents != 0)
                nready++;
        }
        rc = nready;
        if (nready > 0 || remaining_ms(timeout, start) == 0)
            break;
    }
    if (real != small) {
        free(real);
        free(ts);
    }
    return rc;
}
