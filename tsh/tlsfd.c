/* tsh/tlsfd.c: a TLS connection that libssh drives as if it were a socket (tlsfd.h).
 *
 * Reading: OpenSSL reads the socket ahead (up to the read buffer tsh_dial sized) and
 * decrypts one record at a time; libssh's recv() of 4 KiB is an SSL_read out of the
 * current record. A tlsfd polls readable while that record has bytes left, or once
 * SSL_peek could decrypt the next one from what was read ahead; only when neither
 * holds does the TCP socket itself go into the poll.
 *
 * Writing: send() seals TLS records straight from libssh's buffer; lib/tls_gather.c's
 * BIO sends each at once, with MSG_NOSIGNAL (a proxy that vanishes makes the write
 * fail, not the process die of SIGPIPE). What the socket does not take at once is
 * queued here (the tlsfd then stays writable until 1 MiB waits) and written
 * whenever the tlsfd is polled or sent to again. SSL_MODE_ENABLE_PARTIAL_WRITE and
 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER let a record that was cut short be retried from
 * the queue's copy of the same bytes. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/err.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tsh/tlsfd.h"

#define OUT_CAP (1u << 20) /* queued bytes beyond which a tlsfd stops polling writable */
#define MAX_TLSFDS 8
#define SMALL_POLL 16 /* poll sets up to this size are translated on the stack */

struct tsh_tlsfd {
    int fd;  /* what libssh holds */
    int tcp; /* the connection to the proxy, non-blocking */
    SSL *ssl;
    struct rp_buf out;   /* plaintext accepted from send() and not yet sealed ... */
    size_t out_off;      /* ... from this offset on */
    bool tcp_readable;   /* the last poll saw the socket readable: SSL_peek may progress */
    bool starved;        /* what was read ahead ends in a partial record */
    bool eof;            /* close_notify, or the connection ended: recv gives 0 */
    bool broken;         /* a write failed: send fails */
    bool rd_wants_write; /* OpenSSL must write before it can read on */
    bool wr_wants_read;  /* OpenSSL must read before it can write on */
};

static int (*libc_poll)(struct pollfd *fds, nfds_t n, int timeout);
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct tsh_tlsfd *reg[MAX_TLSFDS];
static atomic_int reg_n;

void tsh_tlsfd_enable(int (*poll_fn)(struct pollfd *fds, nfds_t n, int timeout))
{
    libc_poll = poll_fn;
}

bool tsh_tlsfd_enabled(void)
{
    return libc_poll != NULL;
}

bool tsh_tlsfd_any(void)
{
    return atomic_load_explicit(&reg_n, memory_order_acquire) > 0;
}

struct tsh_tlsfd *tsh_tlsfd_get(int fd)
{
    if (fd < 0 || !tsh_tlsfd_any())
        return NULL;
    struct tsh_tlsfd *t = NULL;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < MAX_TLSFDS && t == NULL; i++)
        if (reg[i] != NULL && reg[i]->fd == fd)
            t = reg[i];
    pthread_mutex_unlock(&reg_mu);
    return t;
}

/* ---- open and close ------------------------------------------------------------------- */

/* Takes @t out of the registry; false if it was not there. */
static bool unregister(struct tsh_tlsfd *t)
{
    bool found = false;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < MAX_TLSFDS && !found; i++) {
        if (reg[i] == t) {
            reg[i] = NULL;
            atomic_fetch_sub_explicit(&reg_n, 1, memory_order_release);
            found = true;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    return found;
}

int tsh_tlsfd_open(SSL *ssl, int tcp, int *fd)
{
    if (!tsh_tlsfd_enabled())
        return rp_err(RP_EIO, "the in-process TLS transport is not available");
    struct tsh_tlsfd *t = calloc(1, sizeof *t);
    if (t == NULL)
        return rp_err(RP_ENOMEM, "tlsfd");
    /* libssh needs a descriptor of its own: a socket whose peer is gone already. */
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        int e = errno;
        free(t);
        return rp_err(RP_EIO, "socketpair: %s", strerror(e));
    }
    close(sp[1]);
    *t = (struct tsh_tlsfd){.fd = sp[0], .tcp = tcp, .ssl = ssl};
    rp_buf_init(&t->out);
    int slot = -1;
    pthread_mutex_lock(&reg_mu);
    for (int i = 0; i < MAX_TLSFDS && slot < 0; i++)
        if (reg[i] == NULL)
            slot = i;
    if (slot >= 0) {
        reg[slot] = t;
        atomic_fetch_add_explicit(&reg_n, 1, memory_order_release);
    }
    pthread_mutex_unlock(&reg_mu);
    int rv = 0;
    if (slot < 0)
        rv = rp_err(RP_EIO, "more than %d connections to the proxy at once", MAX_TLSFDS);
    /* Each record goes out as it is sealed (libssh's own buffer is the burst); the BIO
     * gives the MSG_NOSIGNAL writes. */
    else if ((rv = rp_tls_gather_writes(ssl, tcp, 0)) != 0)
        unregister(t);
    if (rv != 0) {
        close(sp[0]);
        free(t);
        return rv;
    }
    fcntl(tcp, F_SETFL, fcntl(tcp, F_GETFL) | O_NONBLOCK);
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    *fd = sp[0];
    return 0;
}

/* What a failed SSL call means for @t. */
static void ssl_failed(struct tsh_tlsfd *t, int r, bool reading)
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

/* Seals @n bytes into records; returns how many were taken before OpenSSL asked to
 * wait (or the connection failed: t->broken). */
static size_t seal(struct tsh_tlsfd *t, const uint8_t *p, size_t n)
{
    size_t done = 0;
    t->wr_wants_read = false;
    while (done < n && !t->broken) {
        size_t left = n - done;
        int w = SSL_write(t->ssl, p + done, left > INT_MAX ? INT_MAX : (int)left);
        if (w <= 0) {
            ssl_failed(t, w, false);
            break;
        }
        done += (size_t)w;
    }
    return done;
}

/* Sends the gathered records the socket takes now. */
static void push(struct tsh_tlsfd *t)
{
    if (!t->broken && rp_tls_gather_push(t->ssl) < 0)
        t->broken = t->eof = true;
}

/* Bytes accepted from send() and not yet on the socket. */
static size_t queued(struct tsh_tlsfd *t)
{
    return t->out.len - t->out_off + rp_tls_gather_held(t->ssl);
}

static void flush(struct tsh_tlsfd *t)
{
    t->out_off += seal(t, t->out.data + t->out_off, t->out.len - t->out_off);
    if (t->out_off == t->out.len || t->broken)
        t->out_off = t->out.len = 0;
    push(t);
}

/* Polls @t's socket for @events until @until_ms (monotonic); false once it passed. */
static bool wait_socket(struct tsh_tlsfd *t, short events, uint64_t until_ms)
{
    uint64_t now = rp_mono_ms();
    if (now >= until_ms)
        return false;
    struct pollfd p = {t->tcp, events, 0};
    int rc = libc_poll(&p, 1, (int)(until_ms - now));
    return rc > 0 || (rc < 0 && errno == EINTR);
}

bool tsh_tlsfd_close(int fd, int linger_ms)
{
    struct tsh_tlsfd *t = tsh_tlsfd_get(fd);
    if (t == NULL || !unregister(t))
        return false;
    uint64_t until = rp_mono_ms() + (uint64_t)linger_ms;
    while (queued(t) > 0 && !t->broken) {
        flush(t);
        if (queued(t) > 0 && !wait_socket(t, t->wr_wants_read ? POLLIN : POLLOUT, until))
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
    rp_buf_free(&t->out);
    free(t);
    return true;
}

/* ---- recv, send, poll ----------------------------------------------------------------- */

ssize_t tsh_tlsfd_recv(struct tsh_tlsfd *t, void *buf, size_t len, int flags)
{
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

ssize_t tsh_tlsfd_send(struct tsh_tlsfd *t, const void *buf, size_t len)
{
    if (t->broken) {
        errno = EPIPE;
        return -1;
    }
    size_t done = t->out.len == t->out_off ? seal(t, buf, len) : 0;
    if (!t->broken && done < len &&
        rp_buf_queue(&t->out, &t->out_off, (const uint8_t *)buf + done, len - done) != 0) {
        errno = ENOMEM;
        return done > 0 ? (ssize_t)done : -1;
    }
    push(t);
    if (t->broken && done < len) {
        errno = EPIPE;
        return done > 0 ? (ssize_t)done : -1;
    }
    return (ssize_t)len;
}

/* What @t is ready for among @events, decrypting the next record if it may. */
static short ready(struct tsh_tlsfd *t, short events)
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
    if ((events & POLLOUT) && (t->broken || queued(t) < OUT_CAP))
        r |= POLLOUT;
    return r;
}

/* The socket events @t needs polled to make progress on @events. */
static short needs(struct tsh_tlsfd *t, short events)
{
    short e = 0;
    if (((events & POLLIN) && !t->eof) || t->wr_wants_read)
        e |= POLLIN;
    if (queued(t) > 0 || t->rd_wants_write)
        e |= POLLOUT;
    return e;
}

static int remaining_ms(int timeout, uint64_t start)
{
    if (timeout <= 0)
        return timeout < 0 ? -1 : 0;
    uint64_t spent = rp_mono_ms() - start;
    return spent >= (uint64_t)timeout ? 0 : timeout - (int)spent;
}

int tsh_tlsfd_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    if (!tsh_tlsfd_any())
        return libc_poll(fds, n, timeout);
    struct pollfd small[SMALL_POLL], *real = small;
    struct tsh_tlsfd *tsmall[SMALL_POLL], **ts = tsmall;
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
        ts[i] = tsh_tlsfd_get(fds[i].fd);
        all_ours = all_ours && ts[i] != NULL;
    }
    /* The clock is read only for a wait that has a time limit. */
    uint64_t start = timeout > 0 ? rp_mono_ms() : 0;
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
        rc = libc_poll(real, n, nready > 0 ? 0 : remaining_ms(timeout, start));
        if (rc < 0)
            break;
        nready = 0;
        for (nfds_t i = 0; i < n; i++) {
            struct tsh_tlsfd *t = ts[i];
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
