/* lib/conn.c: blocking TLS connections carrying length-prefixed frames.
 *
 * Connect and handshake run on a non-blocking socket driven by poll() so that a
 * single deadline covers them; afterwards the socket is blocking with
 * SO_RCVTIMEO/SO_SNDTIMEO as set by rp_conn_set_timeout (0: no timeout).
 *
 * The SSL object talks to the socket through a small BIO of our own that sends
 * with MSG_NOSIGNAL: a peer that went away yields EPIPE, never SIGPIPE, whatever
 * the process does with that signal.
 *
 * A connection that failed in the middle of a frame (timeout, oversized length,
 * truncation, TLS error) cannot be resynchronised: it is shut down at once
 * (shutdown(2) both ways, no close_notify) and every later read or write on it
 * returns RP_ECLOSED. The caller still calls rp_conn_close. */
#include "lib/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"

/* Header plus body up to this size go out as one SSL_write (one TLS record). */
#define SMALL_WRITE 16384

/* ---- a socket BIO that never raises SIGPIPE --------------------------------------- */

struct nosig {
    int fd;
    int eof;
};

static int nosig_write(BIO *b, const char *buf, int len)
{
    struct nosig *ns = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    for (;;) {
        ssize_t n = send(ns->fd, buf, (size_t)len, MSG_NOSIGNAL);
        if (n >= 0)
            return (int)n;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_write(b);
        return -1;
    }
}

static int nosig_read(BIO *b, char *buf, int len)
{
    struct nosig *ns = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    for (;;) {
        ssize_t n = recv(ns->fd, buf, (size_t)len, 0);
        if (n > 0)
            return (int)n;
        if (n == 0) {
            ns->eof = 1;
            return 0;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(b);
        return -1;
    }
}

static long nosig_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct nosig *ns = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return ns ? ns->eof : 1;
    case BIO_C_GET_FD:
        if (ns == NULL)
            return -1;
        if (ptr != NULL)
            *(int *)ptr = ns->fd;
        return ns->fd;
    default:
        return 0;
    }
}

static int nosig_create(BIO *b)
{
    struct nosig *ns = calloc(1, sizeof *ns);
    if (ns == NULL)
        return 0;
    ns->fd = -1;
    BIO_set_data(b, ns);
    BIO_set_init(b, 1);
    return 1;
}

static int nosig_destroy(BIO *b)
{
    free(BIO_get_data(b));
    BIO_set_data(b, NULL);
    return 1;
}

static pthread_once_t nosig_once = PTHREAD_ONCE_INIT;
static BIO_METHOD *nosig_method;

static void nosig_init(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                 "raftport socket");
    if (m == NULL)
        return;
    if (!BIO_meth_set_write(m, nosig_write) || !BIO_meth_set_read(m, nosig_read) ||
        !BIO_meth_set_ctrl(m, nosig_ctrl) || !BIO_meth_set_create(m, nosig_create) ||
        !BIO_meth_set_destroy(m, nosig_destroy)) {
        BIO_meth_free(m);
        return;
    }
    nosig_method = m;
}

static BIO *nosig_bio(int fd)
{
    pthread_once(&nosig_once, nosig_init);
    if (nosig_method == NULL)
        return NULL;
    BIO *b = BIO_new(nosig_method);
    if (b == NULL)
        return NULL;
    ((struct nosig *)BIO_get_data(b))->fd = fd;
    return b;
}

/* ---- addresses ---------------------------------------------------------------------- */

int rp_addr_parse(const char *addr, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *port_s;
    if (addr == NULL || addr[0] == '\0')
        return rp_err(RP_EINVAL, "empty address, want host:port");
    size_t alen = strlen(addr);
    if (alen > 80)
        return rp_err(RP_EINVAL, "address \"%.40s...\" is too long", addr);

    int v6 = 0;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':')
            return rp_err(RP_EINVAL, "address \"%s\": want [ipv6]:port", addr);
        size_t hl = (size_t)(close - addr - 1);
        if (hl == 0 || hl >= sizeof host)
            return rp_err(RP_EINVAL, "address \"%s\": bad IPv6 host", addr);
        memcpy(host, addr + 1, hl);
        host[hl] = '\0';
        port_s = close + 2;
        v6 = 1;
    } else {
        const char *colon = strrchr(addr, ':');
        if (colon == NULL)
            return rp_err(RP_EINVAL, "address \"%s\" has no port, want host:port", addr);
        if (strchr(addr, ':') != colon)
            return rp_err(RP_EINVAL, "address \"%s\": put an IPv6 host in brackets, [::1]:port",
                          addr);
        size_t hl = (size_t)(colon - addr);
        if (hl == 0 || hl >= sizeof host)
            return rp_err(RP_EINVAL, "address \"%s\" has no host, want host:port", addr);
        memcpy(host, addr, hl);
        host[hl] = '\0';
        port_s = colon + 1;
    }

    /* Port: 1 to 5 decimal digits, 0..65535 (0 only makes sense to listen on). */
    size_t pl = strlen(port_s);
    if (pl == 0 || pl > 5)
        return rp_err(RP_EINVAL, "address \"%s\": bad port", addr);
    unsigned port = 0;
    for (size_t i = 0; i < pl; i++) {
        if (port_s[i] < '0' || port_s[i] > '9')
            return rp_err(RP_EINVAL, "address \"%s\": port is not a number", addr);
        port = port * 10 + (unsigned)(port_s[i] - '0');
    }
    if (port > 65535)
        return rp_err(RP_EINVAL, "address \"%s\": port %u out of range", addr, port);

    memset(ss, 0, sizeof *ss);
    if (v6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return rp_err(RP_EINVAL, "address \"%s\": \"%s\" is not an IPv6 address", addr, host);
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        *len = sizeof *s6;
        return 0;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    if (strcmp(host, "localhost") == 0) {
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) {
        return rp_err(RP_EINVAL,
                      "address \"%s\": host \"%s\" is not an IPv4 address, [IPv6] or localhost",
                      addr, host);
    }
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    *len = sizeof *s4;
    return 0;
}

static void format_sockaddr(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(out, outlen, "%s:%u", ip, ntohs(s4->sin_port));
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        snprintf(out, outlen, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        snprintf(out, outlen, "?");
    }
}

int rp_sock_local_addr(int fd, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return rp_err(RP_EIO, "getsockname: %s", strerror(errno));
    format_sockaddr(&ss, out, outlen);
    return 0;
}

int rp_listen_tcp(const char *addr, int backlog)
{
    struct sockaddr_storage ss;
    socklen_t len;
    int rv = rp_addr_parse(addr, &ss, &len);
    if (rv != 0)
        return rv;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return rp_err(RP_EIO, "listen %s: socket: %s", addr, strerror(errno));
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0) {
        rv = rp_err(RP_EIO, "listen %s: SO_REUSEADDR: %s", addr, strerror(errno));
        goto err;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        rv = rp_err(RP_EIO, "listen %s: bind: %s", addr, strerror(errno));
        goto err;
    }
    if (listen(fd, backlog > 0 ? backlog : 128) != 0) {
        rv = rp_err(RP_EIO, "listen %s: %s", addr, strerror(errno));
        goto err;
    }
    return fd;
err:
    close(fd);
    return rv;
}

/* ---- socket helpers ------------------------------------------------------------------ */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_nonblock(int fd, int on)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return -1;
    fl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
    return fcntl(fd, F_SETFL, fl);
}

/* Waits until @fd is ready for @events or @deadline (monotonic ms) passes.
 * 0 when ready, RP_ETIMEDOUT, or RP_EIO. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return RP_ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, left > 1000000 ? 1000000 : (int)left);
        if (n > 0)
            return 0;
        if (n == 0)
            continue; /* re-check the clock */
        if (errno != EINTR)
            return RP_EIO;
    }
}

static void conn_reset(struct rp_conn *c)
{
    c->fd = -1;
    c->ssl = NULL;
    c->max_frame = RP_FRAME_MAX;
    c->max_read = 0;
    c->timeout_ms = 0;
    c->nonblocking = 0;
    c->peer[0] = '\0';
}

/* The first OpenSSL reason, plus the certificate verdict when that failed. */
static void ssl_reason(SSL *ssl, char *out, size_t outlen)
{
    unsigned long e = ERR_peek_last_error();
    if (e == 0) {
        snprintf(out, outlen, "%s", errno ? strerror(errno) : "connection closed by peer");
        return;
    }
    const char *r = ERR_reason_error_string(e);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED && vr != X509_V_OK)
        snprintf(out, outlen, "%s (%s)", r ? r : "certificate verify failed",
                 X509_verify_cert_error_string(vr));
    else if (r != NULL)
        snprintf(out, outlen, "%s", r);
    else
        ERR_error_string_n(e, out, outlen);
}

/* Runs SSL_connect/SSL_accept on the non-blocking socket until done or @deadline. */
static int handshake(struct rp_conn *c, int is_server, int64_t deadline)
{
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = is_server ? SSL_accept(c->ssl) : SSL_connect(c->ssl);
        if (r == 1)
            return 0;
        int e = SSL_get_error(c->ssl, r);
        short ev;
        if (e == SSL_ERROR_WANT_READ) {
            ev = POLLIN;
        } else if (e == SSL_ERROR_WANT_WRITE) {
            ev = POLLOUT;
        } else {
            char why[256];
            ssl_reason(c->ssl, why, sizeof why);
            ERR_clear_error();
            return rp_err(RP_ETLS, "tls handshake with %s failed: %s", c->peer, why);
        }
        int rv = wait_fd(c->fd, ev, deadline);
        if (rv == RP_ETIMEDOUT)
            return rp_err(RP_ETIMEDOUT, "tls handshake with %s timed out", c->peer);
        if (rv != 0)
            return rp_err(RP_EIO, "tls handshake with %s: poll: %s", c->peer, strerror(errno));
    }
}

static int conn_usable(struct rp_conn *c);
static void conn_break(struct rp_conn *c);

/* Wraps @c->fd (non-blocking, connected) in TLS, without handshaking yet. */
static int conn_wrap_tls(struct rp_conn *c, SSL_CTX *ctx, int is_server)
{
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL) {
        ERR_clear_error();
        return rp_err(RP_ENOMEM, "%s: SSL_new failed", c->peer);
    }
    BIO *b = nosig_bio(c->fd);
    if (b == NULL) {
        ERR_clear_error();
        return rp_err(RP_ENOMEM, "%s: socket BIO failed", c->peer);
    }
    SSL_set_bio(c->ssl, b, b); /* takes @b */
    if (is_server)
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    /* One recv per request instead of two (record header, then body). Whoever polls
     * the socket for frames must first drain what OpenSSL buffered (rp_conn_pending). */
    SSL_set_read_ahead(c->ssl, 1);
    return 0;
}

/* Whether SSL error @e (from SSL_get_error) means the peer went away: a clean
 * close_notify, an EOF without one, or a bare EOF on the socket. Reads the error queue
 * and errno as the failed call left them. */
static int ssl_error_is_eof(int e)
{
    return e == SSL_ERROR_ZERO_RETURN ||
           (e == SSL_ERROR_SSL &&
            ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
           (e == SSL_ERROR_SYSCALL && errno == 0);
}

/* The read limit once the handshake is done: a server keeps unauthenticated peers
 * to small frames, so announcing a large one costs them a closed connection. */
static void set_read_limit(struct rp_conn *c, int is_server)
{
    c->max_read = 0;
    if (is_server && SSL_get0_peer_certificate(c->ssl) == NULL)
        c->max_read = RP_FRAME_ANON_MAX;
}

/* Wraps @c->fd (non-blocking, connected) in TLS and completes the handshake. */
static int conn_start_tls(struct rp_conn *c, SSL_CTX *ctx, int is_server, int64_t deadline)
{
    int rv = conn_wrap_tls(c, ctx, is_server);
    if (rv != 0)
        return rv;
    rv = handshake(c, is_server, deadline);
    if (rv != 0) {
        /* A failed handshake has sent its alert; no close_notify after it. */
        SSL_set_quiet_shutdown(c->ssl, 1);
        return rv;
    }
    set_read_limit(c, is_server);
    if (set_nonblock(c->fd, 0) != 0)
        return rp_err(RP_EIO, "%s: fcntl: %s", c->peer, strerror(errno));
    c->nonblocking = 0;
    return 0;
}

int rp_conn_dial(struct rp_conn *c, SSL_CTX *ctx, const char *addr, int timeout_ms)
{
    return rp_conn_dial_from(c, ctx, NULL, addr, timeout_ms);
}

int rp_conn_dial_from(struct rp_conn *c, SSL_CTX *ctx, const char *src, const char *addr,
                      int timeout_ms)
{
    conn_reset(c);
    struct sockaddr_storage ss;
    socklen_t len;
    int rv = rp_addr_parse(addr, &ss, &len);
    if (rv != 0)
        return rv;
    in_port_t port = ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                             : ((struct sockaddr_in6 *)&ss)->sin6_port;
    if (port == 0)
        return rp_err(RP_EINVAL, "dial %s: port 0", addr);
    if (timeout_ms <= 0)
        return rp_err(RP_EINVAL, "dial %s: timeout %d ms must be positive", addr, timeout_ms);
    format_sockaddr(&ss, c->peer, sizeof c->peer);
    int64_t deadline = mono_ms() + timeout_ms;

    c->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        return rp_err(RP_EIO, "dial %s: socket: %s", addr, strerror(errno));
    if (src != NULL) {
        /* "host" or "host:port"; port 0 (or none) lets the kernel pick one. */
        char with_port[80];
        snprintf(with_port, sizeof with_port, strchr(src, ':') ? "%s" : "%s:0", src);
        struct sockaddr_storage from;
        socklen_t from_len;
        if ((rv = rp_addr_parse(with_port, &from, &from_len)) != 0 ||
            bind(c->fd, (struct sockaddr *)&from, from_len) != 0) {
            rv = rp_err(RP_EIO, "dial %s from %s: %s", addr, src,
                        rv != 0 ? rp_errmsg() : strerror(errno));
            goto err;
        }
    }
    if (connect(c->fd, (struct sockaddr *)&ss, len) != 0) {
        if (errno != EINPROGRESS && errno != EINTR) {
            rv = rp_err(RP_EIO, "dial %s: %s", addr, strerror(errno));
            goto err;
        }
        rv = wait_fd(c->fd, POLLOUT, deadline);
        if (rv == RP_ETIMEDOUT) {
            rv = rp_err(RP_ETIMEDOUT, "dial %s: connect timed out after %d ms", addr, timeout_ms);
            goto err;
        }
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (rv != 0 || getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0) {
            rv = rp_err(RP_EIO, "dial %s: %s", addr, strerror(errno));
            goto err;
        }
        if (soerr != 0) {
            rv = rp_err(RP_EIO, "dial %s: %s", addr, strerror(soerr));
            goto err;
        }
    }
    rv = conn_start_tls(c, ctx, 0, deadline);
    if (rv != 0)
        goto err;
    return 0;
err:
    rp_conn_close(c);
    return rv;
}

/* Takes @fd into @c and makes it non-blocking. */
static int conn_take_accepted(struct rp_conn *c, int fd)
{
    conn_reset(c);
    c->fd = fd;
    if (fd < 0)
        return rp_err(RP_EINVAL, "accept: bad descriptor %d", fd);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getpeername(fd, (struct sockaddr *)&ss, &len) == 0)
        format_sockaddr(&ss, c->peer, sizeof c->peer);
    else
        snprintf(c->peer, sizeof c->peer, "?");
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) != 0 || set_nonblock(fd, 1) != 0)
        return rp_err(RP_EIO, "accept from %s: fcntl: %s", c->peer, strerror(errno));
    c->nonblocking = 1;
    return 0;
}

int rp_conn_accept(struct rp_conn *c, SSL_CTX *ctx, int fd, int timeout_ms)
{
    int rv = conn_take_accepted(c, fd);
    if (rv != 0)
        goto err;
    if (timeout_ms <= 0) {
        rv = rp_err(RP_EINVAL, "accept: timeout %d ms must be positive", timeout_ms);
        goto err;
    }
    int64_t deadline = mono_ms() + timeout_ms;
    rv = conn_start_tls(c, ctx, 1, deadline);
    if (rv != 0)
        goto err;
    return 0;
err:
    rp_conn_close(c);
    return rv;
}

int rp_conn_accept_start(struct rp_conn *c, SSL_CTX *ctx, int fd)
{
    int rv = conn_take_accepted(c, fd);
    if (rv == 0)
        rv = conn_wrap_tls(c, ctx, 1);
    if (rv != 0)
        rp_conn_close(c);
    return rv;
}

int rp_conn_handshake_step(struct rp_conn *c, short *events)
{
    *events = 0;
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        set_read_limit(c, SSL_is_server(c->ssl));
        return 0;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        *events = POLLIN;
        return 1;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        *events = POLLOUT;
        return 1;
    }
    char why[256];
    ssl_reason(c->ssl, why, sizeof why);
    ERR_clear_error();
    SSL_set_quiet_shutdown(c->ssl, 1);
    return rp_err(RP_ETLS, "tls handshake with %s failed: %s", c->peer, why);
}

int rp_conn_read_some(struct rp_conn *c, void *p, size_t n, size_t *got, short *events)
{
    *got = 0;
    *events = 0;
    int rv = conn_usable(c);
    if (rv != 0)
        return rv;
    ERR_clear_error();
    errno = 0;
    if (SSL_read_ex(c->ssl, p, n, got) == 1)
        return 0;
    int e = SSL_get_error(c->ssl, 0);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        *events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return 1;
    }
    int eof = ssl_error_is_eof(e);
    char why[256];
    ssl_reason(c->ssl, why, sizeof why);
    ERR_clear_error();
    conn_break(c);
    if (eof)
        return rp_err(RP_ECLOSED, "%s closed the connection", c->peer);
    return rp_err(RP_EIO, "reading from %s: %s", c->peer, why);
}

int rp_conn_pending(struct rp_conn *c)
{
    return c != NULL && c->ssl != NULL && SSL_has_pending(c->ssl);
}

int rp_conn_set_blocking(struct rp_conn *c, int blocking)
{
    if (c == NULL || c->fd < 0)
        return rp_err(RP_ECLOSED, "connection is closed");
    if (set_nonblock(c->fd, !blocking) != 0)
        return rp_err(RP_EIO, "%s: fcntl: %s", c->peer, strerror(errno));
    c->nonblocking = !blocking;
    return 0;
}

void rp_conn_close(struct rp_conn *c)
{
    if (c == NULL)
        return;
    if (c->ssl != NULL) {
        if (c->fd >= 0 && !SSL_get_quiet_shutdown(c->ssl) && SSL_is_init_finished(c->ssl)) {
            /* One non-blocking attempt at close_notify; we do not wait for the peer's. */
            set_nonblock(c->fd, 1);
            SSL_shutdown(c->ssl);
        }
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
}

int rp_conn_set_timeout(struct rp_conn *c, int timeout_ms)
{
    if (c == NULL || c->fd < 0)
        return rp_err(RP_ECLOSED, "set timeout on a closed connection");
    if (timeout_ms < 0)
        return rp_err(RP_EINVAL, "timeout %d ms is negative", timeout_ms);
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    if (setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
        setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0)
        return rp_err(RP_EIO, "%s: setting timeout: %s", c->peer, strerror(errno));
    c->timeout_ms = timeout_ms;
    return 0;
}

/* ---- frames ------------------------------------------------------------------------- */

/* Marks @c unusable after a failure that lost the frame boundary: the socket is
 * shut down both ways (the peer sees EOF) and no close_notify will be sent. */
static void conn_break(struct rp_conn *c)
{
    if (c->ssl != NULL)
        SSL_set_quiet_shutdown(c->ssl, 1);
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_RDWR);
}

static int conn_usable(struct rp_conn *c)
{
    if (c == NULL || c->ssl == NULL || c->fd < 0)
        return rp_err(RP_ECLOSED, "connection is closed");
    if (SSL_get_quiet_shutdown(c->ssl))
        return rp_err(RP_ECLOSED, "connection to %s was closed after an earlier error", c->peer);
    return 0;
}

/* On a non-blocking socket, waits until the socket is ready for what SSL error @e
 * asks, within the connection's timeout (as SO_RCVTIMEO / SO_SNDTIMEO do on a
 * blocking one). 0 when ready, RP_ETIMEDOUT or RP_EIO. */
static int wait_ssl(struct rp_conn *c, int e)
{
    int64_t deadline = c->timeout_ms > 0 ? mono_ms() + c->timeout_ms : INT64_MAX / 2;
    return wait_fd(c->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, deadline);
}

/* Reads exactly @n bytes. @started says whether part of the frame was already
 * read (an EOF or timeout then breaks the connection). */
static int read_full(struct rp_conn *c, uint8_t *p, size_t n, int started)
{
    size_t got = 0;
    while (got < n) {
        size_t r = 0;
        ERR_clear_error();
        errno = 0;
        if (SSL_read_ex(c->ssl, p + got, n - got, &r) == 1) {
            got += r;
            continue;
        }
        int e = SSL_get_error(c->ssl, 0);
        int mid = started || got > 0;
        if ((e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) && c->nonblocking &&
            wait_ssl(c, e) == 0)
            continue;
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            /* The timeout expired. Before any byte of a frame the connection is
             * intact and the caller may read again; mid-frame it is not. */
            ERR_clear_error();
            if (mid)
                conn_break(c);
            return rp_err(RP_ETIMEDOUT, "reading from %s timed out%s", c->peer,
                          mid ? " in the middle of a frame" : "");
        }
        int eof = ssl_error_is_eof(e);
        char why[256];
        ssl_reason(c->ssl, why, sizeof why);
        ERR_clear_error();
        conn_break(c);
        if (eof && !mid)
            return rp_err(RP_ECLOSED, "%s closed the connection", c->peer);
        if (eof)
            return rp_err(RP_EIO,
                          "%s closed the connection in the middle of a frame (%zu of %zu bytes)",
                          c->peer, got, n);
        return rp_err(RP_EIO, "reading from %s: %s", c->peer, why);
    }
    return 0;
}

/* Body bytes read per step before the buffer grows again. */
#define READ_STEP (64u * 1024)

int rp_conn_read_frame(struct rp_conn *c, struct rp_buf *out)
{
    int rv = conn_usable(c);
    if (rv != 0)
        return rv;
    rp_buf_reset(out);
    uint8_t hdr[4];
    if ((rv = read_full(c, hdr, sizeof hdr, 0)) != 0)
        return rv;
    uint32_t len = (uint32_t)hdr[0] << 24 | (uint32_t)hdr[1] << 16 | (uint32_t)hdr[2] << 8 | hdr[3];
    size_t max = c->max_frame ? c->max_frame : RP_FRAME_MAX;
    if (c->max_read != 0 && c->max_read < max)
        max = c->max_read;
    if (len == 0) {
        conn_break(c);
        return rp_err(RP_EINVAL, "%s sent an empty frame", c->peer);
    }
    if (len > max) {
        conn_break(c);
        return rp_err(RP_ETOOBIG, "%s sent a frame of %u bytes, limit %zu: connection closed",
                      c->peer, len, max);
    }
    /* The buffer grows with what arrives (at most doubling), not with what was
     * announced: a peer that announces 16 MiB and stalls holds little. */
    while (out->len < len) {
        size_t step = len - out->len;
        size_t grow = out->len > READ_STEP ? out->len : READ_STEP;
        if (step > grow)
            step = grow;
        if ((rv = rp_buf_reserve(out, step)) != 0) {
            conn_break(c);
            rp_buf_reset(out);
            return rv;
        }
        if ((rv = read_full(c, out->data + out->len, step, 1)) != 0) {
            rp_buf_reset(out);
            return rv;
        }
        out->len += step;
    }
    return 0;
}

static int write_all(struct rp_conn *c, const void *p, size_t n)
{
    for (;;) {
        ERR_clear_error();
        errno = 0;
        size_t w = 0;
        /* A retry after WANT_* passes the same buffer and length, as OpenSSL wants. */
        if (SSL_write_ex(c->ssl, p, n, &w) == 1 && w == n)
            return 0;
        int e = SSL_get_error(c->ssl, 0);
        if ((e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) && c->nonblocking &&
            wait_ssl(c, e) == 0)
            continue;
        char why[256];
        ssl_reason(c->ssl, why, sizeof why);
        ERR_clear_error();
        /* A partly written record cannot be taken back: the stream is lost either way. */
        conn_break(c);
        if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
            return rp_err(RP_ETIMEDOUT, "writing to %s timed out", c->peer);
        return rp_err(RP_EIO, "writing to %s: %s", c->peer, why);
    }
}

int rp_conn_write_frame(struct rp_conn *c, const void *p, size_t n)
{
    int rv = conn_usable(c);
    if (rv != 0)
        return rv;
    size_t max = c->max_frame ? c->max_frame : RP_FRAME_MAX;
    if (n == 0 || p == NULL)
        return rp_err(RP_EINVAL, "refusing to send an empty frame to %s", c->peer);
    if (n > max || n > UINT32_MAX)
        return rp_err(RP_ETOOBIG, "frame of %zu bytes to %s exceeds the limit %zu", n, c->peer,
                      max);
    /* Header and the start of the body share one record; a large body follows. */
    uint8_t first[SMALL_WRITE];
    size_t head = n < sizeof first - 4 ? n : sizeof first - 4;
    first[0] = (uint8_t)(n >> 24);
    first[1] = (uint8_t)(n >> 16);
    first[2] = (uint8_t)(n >> 8);
    first[3] = (uint8_t)n;
    memcpy(first + 4, p, head);
    if ((rv = write_all(c, first, head + 4)) != 0)
        return rv;
    if (head < n)
        return write_all(c, (const uint8_t *)p + head, n - head);
    return 0;
}
