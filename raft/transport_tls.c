/* raft/transport_tls.c: libraft's peer transport over mutual TLS 1.3.
 *
 * libraft's own raft_uv_tcp is plaintext and takes anyone. This transport only
 * hands libraft a connection once the peer has completed a TLS 1.3 handshake with
 * a certificate from the cluster CA carrying the Auth system role, and (when
 * inbound) has sent a valid preamble naming its raft id and address.
 *
 * Design: one small thread per connection. The thread connects or accepts, runs
 * the handshake, checks the identity and exchanges the preamble under a deadline,
 * then creates a socketpair: libraft gets one end as a uv_pipe_t on the loop
 * thread, and the thread pumps bytes between the other end and the TLS socket
 * with non-blocking I/O and poll(). Peers are a handful, so a thread each is
 * cheap and keeps every TLS call out of the loop thread.
 *
 * Strangers cannot starve members: at most MAX_HANDSHAKING inbound connections
 * handshake at once, MAX_HANDSHAKING_PER_ADDR of them from one address, each within
 * the handshake deadline; when either cap is reached, the oldest handshake that has
 * not yet shown an Auth certificate is closed to make room for the newcomer, so a
 * member reconnecting always gets a slot. Refusals are logged once per address per
 * minute with a count (lib/connlimit.h).
 *
 * Threads tell the loop about progress through a list guarded by a mutex and a
 * uv_async_t; the loop alone invokes libraft's callbacks, creates uv handles and
 * joins finished threads. Closing writes to an eventfd every thread polls, so all
 * of them stop promptly; the close callback fires once the last one is joined.
 *
 * Wire preamble (after TLS, connecting side -> accepting side, big endian):
 *   u32 magic "RPRF" | u16 version (1) | u64 raft id | u16 address length | address
 * Reply (accepting side -> connecting side): u32 magic "RPRA" | u8 status (0 = ok).
 *
 * The loop thread (and any thread writing to libraft's pipes) must have SIGPIPE
 * blocked or ignored: a peer that goes away makes writes fail with EPIPE. */
#include "raft/rp_raft.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/x509.h>

#include "lib/buf.h"
#include "lib/connlimit.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/util.h"

#define PREAMBLE_MAGIC 0x52505246u /* "RPRF" */
#define ACK_MAGIC 0x52505241u      /* "RPRA" */
#define PREAMBLE_VERSION 1
#define PREAMBLE_FIXED RP_RAFT_PREAMBLE_HEAD_LEN /* magic + version + id + address length */
#define ADDR_MAX RP_RAFT_PREAMBLE_ADDR_MAX
#define ACK_LEN 5

#define DEFAULT_HANDSHAKE_MS 5000
#define LINGER_MS 10000 /* half-closed connection must finish within this */
#define PUMP_BUF (64 * 1024)
#define MAX_HANDSHAKING 32         /* inbound connections not yet past the preamble */
#define MAX_HANDSHAKING_PER_ADDR 8 /* of those, from one address */
#define MAX_CONNS 256
#define THREAD_STACK (512 * 1024)
#define PEER_ERR_SLOTS 32

struct tr;

struct conn {
    struct tr *tr;
    pthread_t thread;
    bool inbound;
    int tcp_fd; /* thread-owned */
    int ux_fd;  /* thread's end of the socketpair */
    int lr_fd;  /* libraft's end; handed to the loop with the handshake result */
    SSL *ssl;

    /* Outbound: the request being served. Inbound: what the peer claimed. */
    struct raft_uv_connect *req;
    raft_uv_connect_cb cb;
    raft_id peer_id;
    char peer_addr[ADDR_MAX + 1]; /* raft address (claimed or dialled) */
    char net_addr[80];            /* "ip:port" of the TCP peer, for messages */

    int hs_status;          /* 0 or an RP_E* code; written before ev_hs is set */
    struct rp_addr_key key; /* inbound: the peer's address, for the per-address cap */
    uint64_t seq;           /* inbound: accept order, for evicting the oldest */

    /* Under tr->mu. */
    bool proven;  /* inbound: showed a verified certificate with the Auth role */
    bool evicted; /* inbound: closed by the loop to make room; not a refusal to log */
    bool ev_hs, ev_exit, in_notify;
    bool hs_taken; /* ev_hs already handed to the loop */
    struct conn *notify_next;

    /* Loop thread only. */
    bool handshaking; /* inbound, counted in n_handshaking and hs_per_addr */
    bool take_hs, take_exit;
    struct conn *batch_next; /* notified batch being processed */
    struct conn *next;       /* all connections */
};

struct peer_err {
    raft_id id;
    char msg[160];
};

struct tr {
    struct raft_uv_transport *t;
    uv_loop_t *loop;
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
    raft_id id;
    char address[ADDR_MAX + 1];
    char bind_address[ADDR_MAX + 1];
    unsigned handshake_ms;
    rp_raft_peer_check_fn check;
    void *check_arg;

    int stop_fd; /* eventfd: readable once closing */
    int listen_fd;
    uv_poll_t listen_poll;
    bool listening;
    uv_async_t async;
    raft_uv_accept_cb accept_cb;
    raft_uv_transport_close_cb close_cb;
    bool closing;       /* close requested (loop) */
    bool finishing;     /* final handles being closed (loop) */
    bool closed;        /* close completed (loop) */
    bool free_on_close; /* rp_raft_tls_transport_close called before close completed */
    unsigned pending_handles;

    struct conn *conns; /* loop only */
    unsigned n_conns;
    unsigned n_handshaking;
    struct rp_addr_counts hs_per_addr; /* loop only: handshaking inbound per address */
    uint64_t next_seq;
    /* Refused and evicted inbound connections: one line per address per minute. */
    struct rp_refusal_log refusals;

    pthread_mutex_t mu;
    struct conn *notify_head;
    struct conn *notify_tail;
    struct peer_err peer_errs[PEER_ERR_SLOTS];

    uint64_t n_accepted, n_refused, n_connected, n_connect_failed; /* atomics */
};

static void stat_inc(uint64_t *p)
{
    __atomic_add_fetch(p, 1, __ATOMIC_RELAXED);
}

/* ---- small helpers ------------------------------------------------------ */

/* Splits "host:port" or "[v6]:port" into @host and @port. */
static int split_hostport(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon;
    const char *h = addr;
    size_t hl;
    if (addr[0] == '[') {
        const char *close = strchr(addr, ']');
        if (close == NULL || close[1] != ':')
            return rp_err(RP_EINVAL, "address \"%s\": expected [ipv6]:port", addr);
        h = addr + 1;
        hl = (size_t)(close - h);
        colon = close + 1;
    } else {
        colon = strrchr(addr, ':');
        if (colon == NULL)
            return rp_err(RP_EINVAL, "address \"%s\": expected host:port", addr);
        hl = (size_t)(colon - addr);
    }
    if (hl == 0 || hl >= hostlen)
        return rp_err(RP_EINVAL, "address \"%s\": bad host", addr);
    memcpy(host, h, hl);
    host[hl] = '\0';
    const char *p = colon + 1;
    size_t pl = strlen(p);
    if (pl == 0 || pl >= portlen || strspn(p, "0123456789") != pl || atoi(p) < 1 || atoi(p) > 65535)
        return rp_err(RP_EINVAL, "address \"%s\": bad port", addr);
    memcpy(port, p, pl + 1);
    return 0;
}

/* Prefixes this thread's error message with @what (copying it first: rp_err
 * writes into the buffer rp_errmsg() points at). */
static int err_wrap(int code, const char *what)
{
    char inner[256];
    snprintf(inner, sizeof inner, "%s", rp_errmsg());
    return rp_err(code, "%s: %s", what, inner);
}

static void format_sockaddr(const struct sockaddr *sa, socklen_t len, char *out, size_t outlen)
{
    char host[64], serv[8];
    if (getnameinfo(sa, len, host, sizeof host, serv, sizeof serv,
                    NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        snprintf(out, outlen, "?");
        return;
    }
    if (sa->sa_family == AF_INET6)
        snprintf(out, outlen, "[%s]:%s", host, serv);
    else
        snprintf(out, outlen, "%s:%s", host, serv);
}

static void set_tcp_options(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    int idle = 15, intvl = 5, cnt = 3;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    /* Unacknowledged data for this long means the peer is gone: fail the
     * connection so libraft reconnects instead of queueing forever. */
    unsigned user_timeout = 30000;
    setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
}

/* Waits until @fd is ready for @events, the deadline passes or the transport
 * closes. */
static int wait_fd(struct conn *c, int fd, short events, uint64_t deadline)
{
    for (;;) {
        uint64_t now = rp_mono_ms();
        if (now >= deadline)
            return rp_err(RP_ETIMEDOUT, "handshake timed out after %u ms", c->tr->handshake_ms);
        struct pollfd p[2] = {{.fd = fd, .events = events},
                              {.fd = c->tr->stop_fd, .events = POLLIN}};
        int n = poll(p, 2, (int)(deadline - now));
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return rp_err(RP_EIO, "poll: %s", strerror(errno));
        }
        if (p[1].revents)
            return rp_err(RP_ECLOSED, "transport closing");
        if (p[0].revents)
            return 0;
    }
}

/* Describes why the last SSL call on @c failed. Clears the error queue. */
static void tls_reason(struct conn *c, int ret, int err, int saved_errno, char *out, size_t n)
{
    unsigned long e = ERR_peek_last_error();
    char buf[160] = "";
    if (e != 0) {
        const char *reason = ERR_reason_error_string(e);
        snprintf(buf, sizeof buf, "%s", reason ? reason : "unknown TLS error");
    } else if (err == SSL_ERROR_SYSCALL) {
        snprintf(buf, sizeof buf, "%s",
                 (ret == 0 || saved_errno == 0) ? "connection closed by peer"
                                                : strerror(saved_errno));
    } else if (err == SSL_ERROR_ZERO_RETURN) {
        snprintf(buf, sizeof buf, "connection closed by peer");
    } else {
        snprintf(buf, sizeof buf, "TLS error %d", err);
    }
    long vr = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
    if (vr != X509_V_OK)
        snprintf(out, n, "%s (%s)", buf, X509_verify_cert_error_string(vr));
    else
        snprintf(out, n, "%s", buf);
    ERR_clear_error();
}

/* Runs one SSL operation to completion under the handshake deadline. @op returns
 * what SSL_do_handshake / SSL_read / SSL_write return. */
static int tls_until_done(struct conn *c, int (*op)(struct conn *, void *, size_t), void *p,
                          size_t len, uint64_t deadline, const char *what, int *out)
{
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int r = op(c, p, len);
        if (r > 0) {
            *out = r;
            return 0;
        }
        int saved = errno;
        int err = SSL_get_error(c->ssl, r);
        int rv;
        if (err == SSL_ERROR_WANT_READ) {
            rv = wait_fd(c, c->tcp_fd, POLLIN, deadline);
        } else if (err == SSL_ERROR_WANT_WRITE) {
            rv = wait_fd(c, c->tcp_fd, POLLOUT, deadline);
        } else {
            char reason[256];
            tls_reason(c, r, err, saved, reason, sizeof reason);
            return rp_err(RP_ETLS, "%s failed: %s", what, reason);
        }
        if (rv != 0)
            return rv;
    }
}

static int op_handshake(struct conn *c, void *p, size_t len)
{
    (void)p;
    (void)len;
    return SSL_do_handshake(c->ssl);
}

static int op_read(struct conn *c, void *p, size_t len)
{
    return SSL_read(c->ssl, p, (int)len);
}

static int op_write(struct conn *c, void *p, size_t len)
{
    return SSL_write(c->ssl, p, (int)len);
}

static int tls_read_exact(struct conn *c, void *p, size_t len, uint64_t deadline)
{
    size_t got = 0;
    while (got < len) {
        int n;
        int rv = tls_until_done(c, op_read, (uint8_t *)p + got, len - got, deadline,
                                "reading preamble", &n);
        if (rv != 0)
            return rv;
        got += (size_t)n;
    }
    return 0;
}

static int tls_write_all(struct conn *c, const void *p, size_t len, uint64_t deadline)
{
    size_t put = 0;
    while (put < len) {
        int n;
        int rv = tls_until_done(c, op_write, (uint8_t *)p + put, len - put, deadline,
                                "writing preamble", &n);
        if (rv != 0)
            return rv;
        put += (size_t)n;
    }
    return 0;
}

/* The certificate chain was verified by the SSL_CTX; insist on it anyway, then on
 * the Auth role, then on the caller's own check. */
static int check_peer_identity(struct conn *c, raft_id id, const char *address)
{
    struct rp_identity ident;
    int rv;
    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK)
        return rp_err(RP_ETLS, "certificate not verified: %s", X509_verify_cert_error_string(vr));
    memset(&ident, 0, sizeof ident);
    rv = rp_tls_peer_identity(c->ssl, &ident);
    if (rv != 0)
        return err_wrap(RP_EDENIED, "no usable certificate");
    if (!rp_identity_is(&ident, RP_SYS_AUTH)) {
        rv = rp_err(RP_EDENIED, "certificate (CN=%s) has no %s role", ident.name ? ident.name : "?",
                    RP_ROLE_AUTH);
        goto out;
    }
    if (c->tr->check != NULL) {
        rp_err_clear();
        rv = c->tr->check(c->tr->check_arg, &ident, id, address, c->inbound);
        if (rv != 0) {
            if (rp_errmsg()[0] == '\0')
                rp_err(rv, "peer check refused certificate CN=%s", ident.name ? ident.name : "?");
            goto out;
        }
    }
    rv = 0;
out:
    rp_identity_free(&ident);
    return rv;
}

/* A flood of strangers must not flood the log: refusals are counted per address
 * and logged at most once a minute for each (lib/connlimit.h). */
static void log_refusal(struct tr *tr, const struct rp_addr_key *key, const char *why)
{
    rp_refusal_log_note(&tr->refusals, key, why, rp_mono_ms());
}

/* libraft retries a failed connect every second: log a failure only when it
 * differs from the previous one to that peer, and log the recovery. */
static void log_connect_result(struct tr *tr, raft_id id, const char *addr, const char *why)
{
    struct peer_err *slot = NULL;
    bool changed;
    pthread_mutex_lock(&tr->mu);
    for (int i = 0; i < PEER_ERR_SLOTS; i++) {
        if (tr->peer_errs[i].id == id) {
            slot = &tr->peer_errs[i];
            break;
        }
    }
    if (slot == NULL) {
        for (int i = 0; i < PEER_ERR_SLOTS; i++) {
            if (tr->peer_errs[i].id == 0) {
                slot = &tr->peer_errs[i];
                slot->id = id;
                slot->msg[0] = '\0';
                break;
            }
        }
    }
    if (slot == NULL) {
        changed = true;
    } else {
        changed = strncmp(slot->msg, why ? why : "", sizeof slot->msg - 1) != 0;
        snprintf(slot->msg, sizeof slot->msg, "%s", why ? why : "");
    }
    pthread_mutex_unlock(&tr->mu);
    if (!changed)
        return;
    if (why != NULL)
        rp_warn("raft", "raft peer %llu (%s): connect failed: %s", (unsigned long long)id, addr,
                why);
    else
        rp_info("raft", "raft peer %llu (%s): connected", (unsigned long long)id, addr);
}

/* ---- handshakes (connection thread) -------------------------------------- */

static int new_ssl(struct conn *c, SSL_CTX *ctx)
{
    c->ssl = SSL_new(ctx);
    if (c->ssl == NULL)
        return rp_err(RP_ENOMEM, "SSL_new failed");
    SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_set_fd(c->ssl, c->tcp_fd) != 1)
        return rp_err(RP_ENOMEM, "SSL_set_fd failed");
    return 0;
}

static int dial(struct conn *c, uint64_t deadline)
{
    char host[ADDR_MAX + 1], port[8];
    struct addrinfo hints, *res = NULL, *ai;
    int rv = split_hostport(c->peer_addr, host, sizeof host, port, sizeof port);
    if (rv != 0)
        return rv;
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0)
        return rp_err(RP_EIO, "cannot resolve %s: %s", host, gai_strerror(gai));
    rv = rp_err(RP_EIO, "no address for %s", host);
    for (ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rv = rp_err(RP_EIO, "socket: %s", strerror(errno));
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            rv = rp_err(RP_EIO, "connect: %s", strerror(errno));
            close(fd);
            continue;
        }
        c->tcp_fd = fd;
        rv = wait_fd(c, fd, POLLOUT, deadline);
        if (rv == 0) {
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            if (soerr == 0) {
                format_sockaddr(ai->ai_addr, ai->ai_addrlen, c->net_addr, sizeof c->net_addr);
                break;
            }
            rv = rp_err(RP_EIO, "connect: %s", strerror(soerr));
        }
        close(fd);
        c->tcp_fd = -1;
        if (rv == RP_ECLOSED || rv == RP_ETIMEDOUT)
            break;
    }
    freeaddrinfo(res);
    if (c->tcp_fd < 0)
        return rv;
    set_tcp_options(c->tcp_fd);
    return 0;
}

static int handshake_outbound(struct conn *c, uint64_t deadline)
{
    struct tr *tr = c->tr;
    int n, rv;

    rv = dial(c, deadline);
    if (rv != 0)
        return rv;
    rv = new_ssl(c, tr->client_ctx);
    if (rv != 0)
        return rv;
    SSL_set_connect_state(c->ssl);
    rv = tls_until_done(c, op_handshake, NULL, 0, deadline, "tls handshake", &n);
    if (rv != 0)
        return rv;
    rv = check_peer_identity(c, c->peer_id, c->peer_addr);
    if (rv != 0)
        return rv;

    struct rp_buf pre;
    size_t alen = strlen(tr->address);
    rp_buf_init(&pre);
    rv = rp_buf_put_be32(&pre, PREAMBLE_MAGIC);
    if (rv == 0) {
        uint8_t ver[2] = {0, PREAMBLE_VERSION};
        uint8_t len[2] = {(uint8_t)(alen >> 8), (uint8_t)alen};
        rv = rp_buf_append(&pre, ver, 2);
        if (rv == 0)
            rv = rp_buf_put_be64(&pre, tr->id);
        if (rv == 0)
            rv = rp_buf_append(&pre, len, 2);
        if (rv == 0)
            rv = rp_buf_append(&pre, tr->address, alen);
    }
    if (rv == 0)
        rv = tls_write_all(c, pre.data, pre.len, deadline);
    rp_buf_free(&pre);
    if (rv != 0)
        return rv;

    uint8_t ack[ACK_LEN];
    rv = tls_read_exact(c, ack, sizeof ack, deadline);
    if (rv != 0)
        return rv;
    struct rp_rd rd;
    uint32_t magic;
    uint8_t status;
    rp_rd_init(&rd, ack, sizeof ack);
    rp_rd_be32(&rd, &magic);
    rp_rd_u8(&rd, &status);
    if (magic != ACK_MAGIC)
        return rp_err(RP_EPROTO, "peer is not a raftport raft endpoint (bad reply magic)");
    if (status != 0)
        return rp_err(RP_EDENIED, "peer refused our preamble (status %u)", status);
    return 0;
}

static bool printable(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i] <= 0x20 || p[i] >= 0x7f)
            return false;
    }
    return true;
}

int rp_raft_preamble_head(const uint8_t head[RP_RAFT_PREAMBLE_HEAD_LEN], uint64_t self_id,
                          uint64_t *id, size_t *addr_len)
{
    struct rp_rd rd;
    uint32_t magic;
    uint16_t version, alen;
    uint64_t claimed;

    rp_rd_init(&rd, head, RP_RAFT_PREAMBLE_HEAD_LEN);
    int rv = rp_rd_be32(&rd, &magic);
    if (rv == 0)
        rv = rp_rd_be16(&rd, &version);
    if (rv == 0)
        rv = rp_rd_be64(&rd, &claimed);
    if (rv == 0)
        rv = rp_rd_be16(&rd, &alen);
    if (rv != 0)
        return rv;
    if (magic != PREAMBLE_MAGIC)
        return rp_err(RP_EPROTO, "bad preamble magic 0x%08x", magic);
    if (version != PREAMBLE_VERSION)
        return rp_err(RP_EPROTO, "unsupported preamble version %u", version);
    if (claimed == 0 || claimed == self_id)
        return rp_err(RP_EPROTO, "preamble claims invalid raft id %llu",
                      (unsigned long long)claimed);
    if (alen == 0 || alen > ADDR_MAX)
        return rp_err(RP_EPROTO, "preamble address length %u out of range 1..%d", alen, ADDR_MAX);
    *id = claimed;
    *addr_len = alen;
    return 0;
}

int rp_raft_preamble_addr(const uint8_t *p, size_t n, char addr[RP_RAFT_PREAMBLE_ADDR_MAX + 1])
{
    char host[ADDR_MAX + 1], port[8];

    addr[0] = '\0';
    if (n == 0 || n > ADDR_MAX)
        return rp_err(RP_EPROTO, "preamble address length %zu out of range 1..%d", n, ADDR_MAX);
    if (!printable(p, n))
        return rp_err(RP_EPROTO, "preamble address is not printable");
    memcpy(addr, p, n);
    addr[n] = '\0';
    if (split_hostport(addr, host, sizeof host, port, sizeof port) != 0) {
        addr[0] = '\0';
        return err_wrap(RP_EPROTO, "preamble");
    }
    return 0;
}

/* Inbound: identity first (before any claim is known), so nothing an
 * unauthorised peer sends is even parsed; then the preamble, then the caller's
 * check with the claimed id and address, then our reply. */
static int inbound_identity_and_preamble(struct conn *c, uint64_t deadline)
{
    struct tr *tr = c->tr;
    struct rp_identity ident;
    int rv;

    long vr = SSL_get_verify_result(c->ssl);
    if (vr != X509_V_OK)
        return rp_err(RP_ETLS, "certificate not verified: %s", X509_verify_cert_error_string(vr));
    memset(&ident, 0, sizeof ident);
    rv = rp_tls_peer_identity(c->ssl, &ident);
    if (rv != 0)
        return err_wrap(RP_EDENIED, "no usable certificate");
    if (!rp_identity_is(&ident, RP_SYS_AUTH)) {
        rv = rp_err(RP_EDENIED, "certificate (CN=%s) has no %s role", ident.name ? ident.name : "?",
                    RP_ROLE_AUTH);
        goto out;
    }
    /* A member: from now on no stranger can evict this handshake. */
    pthread_mutex_lock(&tr->mu);
    c->proven = true;
    pthread_mutex_unlock(&tr->mu);

    uint8_t fixed[PREAMBLE_FIXED];
    uint64_t id;
    size_t alen;
    rv = tls_read_exact(c, fixed, sizeof fixed, deadline);
    if (rv == 0)
        rv = rp_raft_preamble_head(fixed, tr->id, &id, &alen);
    if (rv != 0)
        goto out;
    uint8_t addr[ADDR_MAX];
    rv = tls_read_exact(c, addr, alen, deadline);
    if (rv == 0)
        rv = rp_raft_preamble_addr(addr, alen, c->peer_addr);
    if (rv != 0)
        goto out;
    c->peer_id = id;
    if (tr->check != NULL) {
        rp_err_clear();
        rv = tr->check(tr->check_arg, &ident, id, c->peer_addr, true);
        if (rv != 0) {
            if (rp_errmsg()[0] == '\0')
                rp_err(rv, "peer check refused CN=%s as raft id %llu",
                       ident.name ? ident.name : "?", (unsigned long long)id);
            goto out;
        }
    }
    uint8_t ack[ACK_LEN] = {(uint8_t)(ACK_MAGIC >> 24), (uint8_t)(ACK_MAGIC >> 16),
                            (uint8_t)(ACK_MAGIC >> 8), (uint8_t)ACK_MAGIC, 0};
    rv = tls_write_all(c, ack, sizeof ack, deadline);
out:
    rp_identity_free(&ident);
    return rv;
}

static int handshake_inbound(struct conn *c, uint64_t deadline)
{
    int n, rv;
    rv = new_ssl(c, c->tr->server_ctx);
    if (rv != 0)
        return rv;
    SSL_set_accept_state(c->ssl);
    rv = tls_until_done(c, op_handshake, NULL, 0, deadline, "tls handshake", &n);
    if (rv != 0)
        return rv;
    return inbound_identity_and_preamble(c, deadline);
}

/* ---- pumping (connection thread) ----------------------------------------- */

struct half {
    uint8_t *p;
    size_t off, len;
};

/* Moves bytes both ways between the TLS connection and libraft's socketpair
 * until both directions are closed, an error occurs, or the transport closes.
 * A clean EOF in one direction is passed on as a half-close (close_notify one
 * way, shutdown(SHUT_WR) the other); anything else tears both down. */
static void pump(struct conn *c)
{
    struct half a = {0};                 /* TLS -> libraft */
    struct half b = {0};                 /* libraft -> TLS */
    bool t_eof = false, u_eof = false;   /* read side finished */
    bool u_shut = false, t_shut = false; /* EOF passed on */
    uint64_t linger_deadline = 0;
    const char *why = NULL;
    char reason[256];

    a.p = malloc(PUMP_BUF);
    b.p = malloc(PUMP_BUF);
    if (a.p == NULL || b.p == NULL) {
        why = "out of memory";
        goto out;
    }

    for (;;) {
        bool progress = false;
        short tls_ev = 0, ux_ev = 0;

        /* TLS -> buffer a. SSL_read is tried whenever there is room, since
         * OpenSSL may hold decrypted bytes that poll() cannot see. */
        if (!t_eof && a.len < PUMP_BUF) {
            ERR_clear_error();
            errno = 0;
            int r = SSL_read(c->ssl, a.p + a.len, (int)(PUMP_BUF - a.len));
            if (r > 0) {
                a.len += (size_t)r;
                progress = true;
            } else {
                int saved = errno;
                int err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_READ) {
                    tls_ev |= POLLIN;
                } else if (err == SSL_ERROR_WANT_WRITE) {
                    tls_ev |= POLLOUT;
                } else if (err == SSL_ERROR_ZERO_RETURN) {
                    t_eof = true;
                    progress = true;
                } else {
                    tls_reason(c, r, err, saved, reason, sizeof reason);
                    why = reason;
                    goto out;
                }
            }
        }
        /* buffer a -> libraft */
        if (a.off < a.len) {
            ssize_t n = send(c->ux_fd, a.p + a.off, a.len - a.off, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                a.off += (size_t)n;
                if (a.off == a.len)
                    a.off = a.len = 0;
                progress = true;
            } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                ux_ev |= POLLOUT;
            } else if (n < 0 && errno == EINTR) {
                progress = true;
            } else {
                /* libraft closed its end: nobody will read what we hold. */
                why = "local stream closed";
                goto graceful;
            }
        }
        if (t_eof && a.len == 0 && !u_shut) {
            shutdown(c->ux_fd, SHUT_WR);
            u_shut = true;
            progress = true;
        }
        /* libraft -> buffer b */
        if (!u_eof && b.len == 0) {
            ssize_t n = recv(c->ux_fd, b.p, PUMP_BUF, MSG_DONTWAIT);
            if (n > 0) {
                b.off = 0;
                b.len = (size_t)n;
                progress = true;
            } else if (n == 0) {
                u_eof = true;
                progress = true;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                ux_ev |= POLLIN;
            } else if (errno == EINTR) {
                progress = true;
            } else {
                why = "local stream reset";
                goto out;
            }
        }
        /* buffer b -> TLS. With partial writes enabled SSL_write returns as soon
         * as one record is out; after WANT_* it is retried with the same bytes. */
        if (b.off < b.len) {
            ERR_clear_error();
            errno = 0;
            int r = SSL_write(c->ssl, b.p + b.off, (int)(b.len - b.off));
            if (r > 0) {
                b.off += (size_t)r;
                if (b.off == b.len)
                    b.off = b.len = 0;
                progress = true;
            } else {
                int saved = errno;
                int err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_WRITE) {
                    tls_ev |= POLLOUT;
                } else if (err == SSL_ERROR_WANT_READ) {
                    tls_ev |= POLLIN;
                } else {
                    tls_reason(c, r, err, saved, reason, sizeof reason);
                    why = reason;
                    goto out;
                }
            }
        }
        if (u_eof && b.len == 0 && !t_shut) {
            ERR_clear_error();
            int r = SSL_shutdown(c->ssl);
            if (r >= 0) {
                t_shut = true;
                progress = true;
            } else {
                int err = SSL_get_error(c->ssl, r);
                if (err == SSL_ERROR_WANT_WRITE) {
                    tls_ev |= POLLOUT;
                } else if (err == SSL_ERROR_WANT_READ) {
                    tls_ev |= POLLIN;
                } else {
                    ERR_clear_error();
                    t_shut = true; /* the peer is gone already */
                    progress = true;
                }
            }
        }
        if (t_shut && u_shut)
            goto out; /* both directions closed cleanly */
        if ((t_eof || u_eof) && linger_deadline == 0)
            linger_deadline = rp_mono_ms() + LINGER_MS;
        if (progress)
            continue;

        int timeout = -1;
        if (linger_deadline != 0) {
            uint64_t now = rp_mono_ms();
            if (now >= linger_deadline) {
                why = "half-closed connection lingered too long";
                goto out;
            }
            timeout = (int)(linger_deadline - now);
        }
        struct pollfd p[3] = {
            {.fd = c->tcp_fd, .events = tls_ev},
            {.fd = c->ux_fd, .events = ux_ev},
            {.fd = c->tr->stop_fd, .events = POLLIN},
        };
        int n = poll(p, 3, timeout);
        if (n < 0 && errno != EINTR) {
            why = "poll failed";
            goto out;
        }
        if (n > 0 && p[2].revents) {
            why = "transport closing";
            goto out;
        }
        /* Errors and hang-ups on either fd surface through the next read or
         * write attempt. */
    }

graceful:
    /* Tell the peer we are done; best effort, never blocks for long. */
    ERR_clear_error();
    SSL_shutdown(c->ssl);
    ERR_clear_error();
out:
    if (why != NULL)
        rp_debug("raft", "raft peer %llu (%s): connection closed: %s",
                 (unsigned long long)c->peer_id, c->net_addr, why);
    free(a.p);
    free(b.p);
}

/* ---- connection thread --------------------------------------------------- */

static void notify(struct conn *c, bool exited)
{
    struct tr *tr = c->tr;
    pthread_mutex_lock(&tr->mu);
    if (exited)
        c->ev_exit = true;
    else
        c->ev_hs = true;
    if (!c->in_notify) {
        c->in_notify = true;
        c->notify_next = NULL;
        if (tr->notify_tail != NULL)
            tr->notify_tail->notify_next = c;
        else
            tr->notify_head = c;
        tr->notify_tail = c;
    }
    pthread_mutex_unlock(&tr->mu);
    /* The loop closes the async handle only after joining every thread, so it
     * is still open here. */
    uv_async_send(&tr->async);
}

static int make_pair(struct conn *c)
{
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return rp_err(RP_EIO, "socketpair: %s", strerror(errno));
    int fl = fcntl(sv[0], F_GETFL);
    fcntl(sv[0], F_SETFL, fl | O_NONBLOCK);
    c->ux_fd = sv[0];
    c->lr_fd = sv[1];
    return 0;
}

static void *conn_main(void *arg)
{
    struct conn *c = arg;
    struct tr *tr = c->tr;
    sigset_t set;
    int rv;

    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    uint64_t deadline = rp_mono_ms() + tr->handshake_ms;
    rv = c->inbound ? handshake_inbound(c, deadline) : handshake_outbound(c, deadline);
    if (rv == 0)
        rv = make_pair(c);
    if (c->inbound) {
        if (rv != 0) {
            pthread_mutex_lock(&tr->mu);
            bool evicted = c->evicted;
            pthread_mutex_unlock(&tr->mu);
            stat_inc(&tr->n_refused);
            if (rv != RP_ECLOSED && !evicted)
                log_refusal(tr, &c->key, rp_errmsg());
        }
    } else {
        if (rv != 0)
            stat_inc(&tr->n_connect_failed);
        if (rv != RP_ECLOSED)
            log_connect_result(tr, c->peer_id, c->peer_addr, rv != 0 ? rp_errmsg() : NULL);
    }
    c->hs_status = rv;
    notify(c, false);

    if (rv == 0)
        pump(c);

    if (c->ssl != NULL)
        SSL_free(c->ssl);
    c->ssl = NULL;
    /* Under mu: the loop may be shutting this socket down to evict it. */
    pthread_mutex_lock(&tr->mu);
    if (c->tcp_fd >= 0)
        close(c->tcp_fd);
    c->tcp_fd = -1;
    pthread_mutex_unlock(&tr->mu);
    if (c->ux_fd >= 0)
        close(c->ux_fd);
    c->ux_fd = -1;
    ERR_clear_error();
    notify(c, true);
    return NULL;
}

/* ---- loop side ----------------------------------------------------------- */

static void free_handle_cb(uv_handle_t *h)
{
    raft_free(h);
}

/* Wraps libraft's end of the socketpair in a uv_pipe_t allocated with
 * raft_malloc (libraft releases streams with raft_free). Takes @fd. */
static struct uv_stream_s *make_stream(struct tr *tr, int fd)
{
    uv_pipe_t *p = raft_malloc(sizeof *p);
    int rv;
    if (p == NULL) {
        close(fd);
        return NULL;
    }
    rv = uv_pipe_init(tr->loop, p, 0);
    if (rv != 0) {
        raft_free(p);
        close(fd);
        rp_error("raft", "uv_pipe_init: %s", uv_strerror(rv));
        return NULL;
    }
    rv = uv_pipe_open(p, fd);
    if (rv != 0) {
        uv_close((uv_handle_t *)p, free_handle_cb);
        close(fd);
        rp_error("raft", "uv_pipe_open: %s", uv_strerror(rv));
        return NULL;
    }
    return (struct uv_stream_s *)p;
}

/* The inbound connection @c no longer counts as handshaking (done or evicted). */
static void end_handshaking(struct tr *tr, struct conn *c)
{
    if (!c->handshaking)
        return;
    c->handshaking = false;
    tr->n_handshaking--;
    rp_addr_counts_remove(&tr->hs_per_addr, &c->key);
}

/* Closes the oldest inbound handshake that has not shown an Auth certificate
 * (from @key only, if not NULL), to make room for a newcomer: strangers that stall
 * can then never hold every slot against a member that reconnects. True if one
 * was evicted. */
static bool evict_oldest_stranger(struct tr *tr, const struct rp_addr_key *key, const char *why)
{
    struct conn *victim = NULL;
    pthread_mutex_lock(&tr->mu);
    for (struct conn *c = tr->conns; c != NULL; c = c->next) {
        if (!c->handshaking || c->proven || c->evicted)
            continue;
        if (key != NULL && !rp_addr_key_equal(&c->key, key))
            continue;
        if (victim == NULL || c->seq < victim->seq)
            victim = c;
    }
    if (victim != NULL) {
        victim->evicted = true;
        /* The thread closes tcp_fd under mu, so it is still open here. */
        if (victim->tcp_fd >= 0)
            shutdown(victim->tcp_fd, SHUT_RDWR);
    }
    pthread_mutex_unlock(&tr->mu);
    if (victim == NULL)
        return false;
    end_handshaking(tr, victim);
    log_refusal(tr, &victim->key, why);
    return true;
}

static void deliver_handshake(struct tr *tr, struct conn *c)
{
    struct uv_stream_s *stream;
    int fd = c->lr_fd;
    c->lr_fd = -1;

    if (c->inbound) {
        end_handshaking(tr, c);
        if (c->hs_status != 0)
            return;
        if (tr->closing || tr->accept_cb == NULL) {
            close(fd);
            return;
        }
        stream = make_stream(tr, fd);
        if (stream == NULL)
            return; /* the thread sees the pipe close and exits */
        stat_inc(&tr->n_accepted);
        rp_debug("raft", "raft peer %llu (%s) connected from %s", (unsigned long long)c->peer_id,
                 c->peer_addr, c->net_addr);
        tr->accept_cb(tr->t, c->peer_id, c->peer_addr, stream);
        return;
    }

    struct raft_uv_connect *req = c->req;
    raft_uv_connect_cb cb = c->cb;
    c->req = NULL;
    if (tr->closing) {
        if (fd >= 0)
            close(fd);
        cb(req, NULL, RAFT_CANCELED);
        return;
    }
    if (c->hs_status != 0) {
        cb(req, NULL, RAFT_NOCONNECTION);
        return;
    }
    stream = make_stream(tr, fd);
    if (stream == NULL) {
        cb(req, NULL, RAFT_NOCONNECTION);
        return;
    }
    stat_inc(&tr->n_connected);
    cb(req, stream, 0);
}

static void on_handle_closed(uv_handle_t *h);

static void maybe_finish_close(struct tr *tr)
{
    if (!tr->closing || tr->finishing || tr->n_conns > 0)
        return;
    tr->finishing = true;
    tr->pending_handles++;
    uv_close((uv_handle_t *)&tr->async, on_handle_closed);
}

static void unlink_conn(struct tr *tr, struct conn *c)
{
    struct conn **pp = &tr->conns;
    while (*pp != NULL && *pp != c)
        pp = &(*pp)->next;
    if (*pp == c)
        *pp = c->next;
    tr->n_conns--;
}

static void on_async(uv_async_t *h)
{
    struct tr *tr = h->data;
    struct conn *batch = NULL, **tail = &batch, *c, *next;

    /* Take the notified connections with a snapshot of their events. The batch
     * is linked through batch_next: a thread may re-queue its connection (and
     * rewrite notify_next) as soon as the lock is released. */
    pthread_mutex_lock(&tr->mu);
    for (c = tr->notify_head; c != NULL; c = c->notify_next) {
        c->in_notify = false;
        c->take_hs = c->ev_hs && !c->hs_taken;
        if (c->take_hs)
            c->hs_taken = true;
        c->take_exit = c->ev_exit;
        c->batch_next = NULL;
        *tail = c;
        tail = &c->batch_next;
    }
    tr->notify_head = tr->notify_tail = NULL;
    pthread_mutex_unlock(&tr->mu);

    for (c = batch; c != NULL; c = next) {
        next = c->batch_next;
        if (c->take_hs)
            deliver_handshake(tr, c);
        if (c->take_exit) {
            pthread_join(c->thread, NULL);
            if (c->lr_fd >= 0)
                close(c->lr_fd);
            unlink_conn(tr, c);
            free(c);
        }
    }
    rp_refusal_log_flush(&tr->refusals, rp_mono_ms());
    maybe_finish_close(tr);
}

static void tr_free(struct tr *tr)
{
    if (tr->listen_fd >= 0)
        close(tr->listen_fd);
    if (tr->stop_fd >= 0)
        close(tr->stop_fd);
    SSL_CTX_free(tr->server_ctx);
    SSL_CTX_free(tr->client_ctx);
    rp_addr_counts_free(&tr->hs_per_addr);
    rp_refusal_log_destroy(&tr->refusals);
    pthread_mutex_destroy(&tr->mu);
    free(tr);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct tr *tr = h->data;
    tr->pending_handles--;
    if (!tr->finishing || tr->pending_handles > 0)
        return;
    if (tr->listen_fd >= 0) {
        close(tr->listen_fd);
        tr->listen_fd = -1;
    }
    tr->closed = true;
    /* The callback may call rp_raft_tls_transport_close, which frees @tr when
     * closed is set: read what we need first, touch nothing after. */
    bool free_now = tr->free_on_close;
    raft_uv_transport_close_cb cb = tr->close_cb;
    struct raft_uv_transport *t = tr->t;
    tr->close_cb = NULL;
    if (cb != NULL)
        cb(t);
    if (free_now)
        tr_free(tr);
}

static void begin_close(struct tr *tr)
{
    uint64_t one = 1;
    if (tr->closing)
        return;
    tr->closing = true;
    /* Every connection thread polls stop_fd: they all wake and wind down. */
    ssize_t w = write(tr->stop_fd, &one, sizeof one);
    (void)w;
    if (tr->listening) {
        uv_poll_stop(&tr->listen_poll);
        tr->pending_handles++;
        uv_close((uv_handle_t *)&tr->listen_poll, on_handle_closed);
        tr->listening = false;
    }
    maybe_finish_close(tr);
}

static int spawn(struct tr *tr, struct conn *c)
{
    pthread_attr_t attr;
    int rv;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, THREAD_STACK);
    rv = pthread_create(&c->thread, &attr, conn_main, c);
    pthread_attr_destroy(&attr);
    if (rv != 0)
        return rp_err(RP_ENOMEM, "pthread_create: %s", strerror(rv));
    c->next = tr->conns;
    tr->conns = c;
    tr->n_conns++;
    return 0;
}

static struct conn *conn_new(struct tr *tr, bool inbound)
{
    struct conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return NULL;
    c->tr = tr;
    c->inbound = inbound;
    c->tcp_fd = -1;
    c->ux_fd = -1;
    c->lr_fd = -1;
    snprintf(c->net_addr, sizeof c->net_addr, "?");
    return c;
}

static void on_listen_readable(uv_poll_t *h, int status, int events)
{
    struct tr *tr = h->data;
    (void)events;
    if (status < 0) {
        rp_error("raft", "raft listener: poll: %s", uv_strerror(status));
        return;
    }
    rp_refusal_log_flush(&tr->refusals, rp_mono_ms());
    for (int i = 0; i < 64 && !tr->closing; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        char who[80];
        int fd = accept4(tr->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                rp_warn("raft", "raft listener: accept: %s", strerror(errno));
            return;
        }
        format_sockaddr((struct sockaddr *)&ss, len, who, sizeof who);
        struct rp_addr_key key;
        rp_addr_key_from_sockaddr((struct sockaddr *)&ss, len, &key);
        /* Room for one more handshake: the oldest stranger from the same address
         * goes first, then the oldest stranger of all. */
        bool room = true;
        if (rp_addr_counts_get(&tr->hs_per_addr, &key) >= MAX_HANDSHAKING_PER_ADDR)
            room = evict_oldest_stranger(tr, &key,
                                         "too many handshakes from this address; oldest closed");
        if (room && tr->n_handshaking >= MAX_HANDSHAKING)
            room = evict_oldest_stranger(tr, NULL, "handshake slots full; oldest stranger closed");
        if (!room || tr->n_conns >= MAX_CONNS) {
            stat_inc(&tr->n_refused);
            log_refusal(tr, &key, "too many connections in progress");
            close(fd);
            continue;
        }
        struct conn *c = conn_new(tr, true);
        if (c == NULL) {
            stat_inc(&tr->n_refused);
            close(fd);
            continue;
        }
        c->tcp_fd = fd;
        c->key = key;
        c->seq = tr->next_seq++;
        snprintf(c->net_addr, sizeof c->net_addr, "%s", who);
        set_tcp_options(fd);
        if (spawn(tr, c) != 0) {
            stat_inc(&tr->n_refused);
            log_refusal(tr, &key, rp_errmsg());
            close(fd);
            free(c);
            continue;
        }
        c->handshaking = true;
        tr->n_handshaking++;
        rp_addr_counts_add(&tr->hs_per_addr, &key); /* at most MAX_HANDSHAKING addresses */
    }
}

/* ---- struct raft_uv_transport methods ------------------------------------- */

static int tr_init(struct raft_uv_transport *t, raft_id id, const char *address)
{
    struct tr *tr = t->impl;
    if (strlen(address) > ADDR_MAX) {
        snprintf(t->errmsg, sizeof t->errmsg, "address longer than %d bytes", ADDR_MAX);
        return RAFT_NAMETOOLONG;
    }
    tr->id = id;
    snprintf(tr->address, sizeof tr->address, "%s", address);
    return 0;
}

static int tr_listen(struct raft_uv_transport *t, raft_uv_accept_cb cb)
{
    struct tr *tr = t->impl;
    const char *addr = tr->bind_address[0] ? tr->bind_address : tr->address;
    char host[ADDR_MAX + 1], port[8];
    struct addrinfo hints, *res = NULL;
    int fd = -1, rv, one = 1;

    if (split_hostport(addr, host, sizeof host, port, sizeof port) != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "%s", rp_errmsg());
        return RAFT_INVALID;
    }
    memset(&hints, 0, sizeof hints);
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    rv = getaddrinfo(host, port, &hints, &res);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "resolve %.200s: %s", addr, gai_strerror(rv));
        return RAFT_IOERR;
    }
    fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto sys_err;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) != 0)
        goto sys_err;
    if (listen(fd, 64) != 0)
        goto sys_err;
    freeaddrinfo(res);
    res = NULL;

    rv = uv_poll_init(tr->loop, &tr->listen_poll, fd);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "uv_poll_init: %s", uv_strerror(rv));
        close(fd);
        return RAFT_IOERR;
    }
    tr->listen_poll.data = tr;
    tr->listen_fd = fd;
    tr->listening = true;
    tr->accept_cb = cb;
    rv = uv_poll_start(&tr->listen_poll, UV_READABLE, on_listen_readable);
    if (rv != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "uv_poll_start: %s", uv_strerror(rv));
        return RAFT_IOERR; /* close() releases the handle and the socket */
    }
    rp_info("raft", "raft peer listener on %s (mutual TLS)", addr);
    return 0;

sys_err:
    snprintf(t->errmsg, sizeof t->errmsg, "listen on %.200s: %s", addr, strerror(errno));
    if (fd >= 0)
        close(fd);
    if (res != NULL)
        freeaddrinfo(res);
    return RAFT_IOERR;
}

static int tr_connect(struct raft_uv_transport *t, struct raft_uv_connect *req, raft_id id,
                      const char *address, raft_uv_connect_cb cb)
{
    struct tr *tr = t->impl;
    struct conn *c;
    if (tr->closing)
        return RAFT_CANCELED;
    if (strlen(address) > ADDR_MAX) {
        snprintf(t->errmsg, sizeof t->errmsg, "address longer than %d bytes", ADDR_MAX);
        return RAFT_NAMETOOLONG;
    }
    if (tr->n_conns >= MAX_CONNS) {
        snprintf(t->errmsg, sizeof t->errmsg, "too many connections");
        return RAFT_NOCONNECTION;
    }
    c = conn_new(tr, false);
    if (c == NULL)
        return RAFT_NOMEM;
    c->req = req;
    c->cb = cb;
    c->peer_id = id;
    snprintf(c->peer_addr, sizeof c->peer_addr, "%s", address);
    snprintf(c->net_addr, sizeof c->net_addr, "%s", address);
    if (spawn(tr, c) != 0) {
        snprintf(t->errmsg, sizeof t->errmsg, "%s", rp_errmsg());
        free(c);
        return RAFT_NOMEM;
    }
    return 0;
}

static void tr_close(struct raft_uv_transport *t, raft_uv_transport_close_cb cb)
{
    struct tr *tr = t->impl;
    tr->close_cb = cb;
    begin_close(tr);
}

/* ---- public API -------------------------------------------------------------- */

int rp_raft_tls_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, SSL_CTX *server_ctx,
                               SSL_CTX *client_ctx)
{
    struct tr *tr;
    int rv;
    if (t == NULL || loop == NULL || server_ctx == NULL || client_ctx == NULL)
        return rp_err(RP_EINVAL, "raft transport: loop and both TLS contexts are required");
    tr = calloc(1, sizeof *tr);
    if (tr == NULL)
        return rp_err(RP_ENOMEM, "raft transport: out of memory");
    tr->t = t;
    tr->loop = loop;
    tr->listen_fd = -1;
    tr->handshake_ms = DEFAULT_HANDSHAKE_MS;
    tr->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (tr->stop_fd < 0) {
        rv = rp_err(RP_EIO, "raft transport: eventfd: %s", strerror(errno));
        free(tr);
        return rv;
    }
    if (rp_addr_counts_init(&tr->hs_per_addr, MAX_HANDSHAKING) != 0) {
        close(tr->stop_fd);
        free(tr);
        return rp_err(RP_ENOMEM, "raft transport: out of memory");
    }
    pthread_mutex_init(&tr->mu, NULL);
    rp_refusal_log_init(&tr->refusals, "raft", "raft peer connection");
    rv = uv_async_init(loop, &tr->async, on_async);
    if (rv != 0) {
        close(tr->stop_fd);
        rp_addr_counts_free(&tr->hs_per_addr);
        rp_refusal_log_destroy(&tr->refusals);
        pthread_mutex_destroy(&tr->mu);
        free(tr);
        return rp_err(RP_EIO, "raft transport: uv_async_init: %s", uv_strerror(rv));
    }
    tr->async.data = tr;
    SSL_CTX_up_ref(server_ctx);
    SSL_CTX_up_ref(client_ctx);
    tr->server_ctx = server_ctx;
    tr->client_ctx = client_ctx;

    memset(t, 0, sizeof *t);
    t->impl = tr;
    t->init = tr_init;
    t->listen = tr_listen;
    t->connect = tr_connect;
    t->close = tr_close;
    return 0;
}

void rp_raft_tls_transport_close(struct raft_uv_transport *t)
{
    struct tr *tr = t->impl;
    if (tr == NULL)
        return;
    t->impl = NULL;
    if (tr->closed) {
        tr_free(tr);
        return;
    }
    /* Never closed through its close method (e.g. raft never started): close
     * now; the memory goes once the loop has run the handle callbacks. */
    tr->free_on_close = true;
    begin_close(tr);
}

void rp_raft_tls_transport_set_peer_check(struct raft_uv_transport *t, rp_raft_peer_check_fn fn,
                                          void *arg)
{
    struct tr *tr = t->impl;
    tr->check = fn;
    tr->check_arg = arg;
}

int rp_raft_tls_transport_set_bind_address(struct raft_uv_transport *t, const char *address)
{
    struct tr *tr = t->impl;
    char host[ADDR_MAX + 1], port[8];
    if (strlen(address) > ADDR_MAX)
        return rp_err(RP_EINVAL, "bind address longer than %d bytes", ADDR_MAX);
    int rv = split_hostport(address, host, sizeof host, port, sizeof port);
    if (rv != 0)
        return rv;
    snprintf(tr->bind_address, sizeof tr->bind_address, "%s", address);
    return 0;
}

void rp_raft_tls_transport_set_handshake_timeout(struct raft_uv_transport *t, unsigned ms)
{
    struct tr *tr = t->impl;
    tr->handshake_ms = ms > 0 ? ms : DEFAULT_HANDSHAKE_MS;
}

void rp_raft_tls_transport_stats(struct raft_uv_transport *t, struct rp_raft_transport_stats *out)
{
    struct tr *tr = t->impl;
    memset(out, 0, sizeof *out);
    if (tr == NULL)
        return;
    out->accepted = __atomic_load_n(&tr->n_accepted, __ATOMIC_RELAXED);
    out->refused = __atomic_load_n(&tr->n_refused, __ATOMIC_RELAXED);
    out->connected = __atomic_load_n(&tr->n_connected, __ATOMIC_RELAXED);
    out->connect_failed = __atomic_load_n(&tr->n_connect_failed, __ATOMIC_RELAXED);
}
