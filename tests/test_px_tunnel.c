/* tests/test_px_tunnel.c: reverse tunnels end to end inside one process: the proxy's
 * side (proxy/tunnel.c on real px loops and px_tls connections) and the agent's side
 * (agent/tunnel.c, its thread dialling with a Node certificate), over real TCP, real
 * TLS 1.3 and real HTTP/2, the SSH server replaced by an echo service on the stream's
 * socket. Also: the memory an idle tunnel costs the proxy, measured in a child process
 * holding 2,000 of them. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/tunnel.h"
#include "lib/errors.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "proxy/conn.h"
#include "proxy/loop.h"
#include "proxy/tunnel.h"

#define WAIT_FOR(cond, ms)                                                                         \
    do {                                                                                           \
        uint64_t until_ = rp_mono_ms() + (ms);                                                     \
        while (!(cond) && rp_mono_ms() < until_) {                                                 \
            struct timespec ts_ = {0, 5 * 1000000L};                                               \
            nanosleep(&ts_, NULL);                                                                 \
        }                                                                                          \
    } while (0)

#define HOST_ID "6b1f2a9e-6a0c-4c55-9d3e-0f7a1b2c3d4e"

/* ---- certificates ---------------------------------------------------------------------- */

struct pki {
    EVP_PKEY *ca_key;
    X509 *ca;
    EVP_PKEY *key; /* one key for every certificate: issuing stays fast */
};

static void pki_new(struct pki *p)
{
    cr_assert_eq(rp_tls_ca_create("tun.test", &p->ca_key, &p->ca), 0, "%s", rp_errmsg());
    p->key = rp_tls_keygen();
    cr_assert_not_null(p->key);
}

static void pki_free(struct pki *p)
{
    EVP_PKEY_free(p->ca_key);
    X509_free(p->ca);
    EVP_PKEY_free(p->key);
}

static X509 *issue(struct pki *p, const struct rp_identity *id)
{
    X509 *x = NULL;
    const char *sans[1] = {"localhost"};
    cr_assert_eq(rp_tls_issue(p->ca_key, p->ca, p->key, id, sans, 1, 3600, &x), 0, "%s",
                 rp_errmsg());
    return x;
}

static SSL_CTX *node_ctx(struct pki *p, const char *host_id)
{
    struct rp_identity id = {.name = (char *)host_id,
                             .cluster = "tun.test",
                             .system_role = RP_SYS_NODE,
                             .host_id = (char *)host_id};
    X509 *x = issue(p, &id);
    SSL_CTX *ctx = rp_tls_client_ctx(p->ca, x, p->key);
    X509_free(x);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    return ctx;
}

static const unsigned char tunnel_alpn[] = "\x16teleport-reversetunnel";

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    if (SSL_select_next_proto((unsigned char **)out, outlen, tunnel_alpn, sizeof tunnel_alpn - 1,
                              in, inlen) == OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

/* ---- the proxy's side ------------------------------------------------------------------- */

struct proxy_side {
    struct pki *pki;
    SSL_CTX *server;
    struct px_loops *ls;
    struct px_tunnels *reg;
    int lfd, port;
    pthread_t acceptor;
};

struct accept_arg {
    struct proxy_side *ps;
    int fd;
};

static void handshake_done(struct px_tls *c, int rv, void *arg)
{
    struct proxy_side *ps = arg;
    if (rv != 0)
        return;
    px_tunnel_attach_to(c, ps->reg);
}

static void accept_on_loop(void *arg)
{
    struct accept_arg *a = arg;
    px_tls_accept(px_loop_current(), NULL, a->fd, a->ps->server, "127.0.0.1:1", 5000,
                  handshake_done, a->ps, NULL);
    free(a);
}

static void *acceptor_main(void *arg)
{
    struct proxy_side *ps = arg;
    for (;;) {
        int fd = accept4(ps->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
                continue;
            return NULL;
        }
        struct accept_arg *a = malloc(sizeof *a);
        a->ps = ps;
        a->fd = fd;
        if (px_loop_post(px_loops_pick(ps->ls), accept_on_loop, a) != 0) {
            close(fd);
            free(a);
        }
    }
}

static void proxy_start(struct proxy_side *ps, struct pki *pki, uint64_t keepalive_ms)
{
    memset(ps, 0, sizeof *ps);
    ps->pki = pki;
    struct rp_identity id = {.name = "proxy-1",
                             .cluster = "tun.test",
                             .system_role = RP_SYS_PROXY,
                             .host_id = "proxy-1"};
    X509 *x = issue(pki, &id);
    ps->server = rp_tls_server_ctx(pki->ca, x, pki->key, 0);
    X509_free(x);
    cr_assert_not_null(ps->server, "%s", rp_errmsg());
    SSL_CTX_set_alpn_select_cb(ps->server, select_alpn, NULL);
    cr_assert_eq(px_tunnels_new(&ps->reg, NULL), 0);
    px_tunnels_set_keepalive(ps->reg, keepalive_ms);
    cr_assert_eq(px_loops_new(&ps->ls, 2), 0);
    cr_assert_eq(px_loops_start(ps->ls), 0);
    ps->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(ps->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(ps->lfd, 4096), 0);
    socklen_t sl = sizeof sa;
    getsockname(ps->lfd, (struct sockaddr *)&sa, &sl);
    ps->port = ntohs(sa.sin_port);
    pthread_create(&ps->acceptor, NULL, acceptor_main, ps);
}

/* Before stopping the loops: no tunnel left, and a moment for connections that were
 * closed (the peer gone) to be freed on their loops, so that the test leaks nothing. */
static void wait_closed(struct proxy_side *ps)
{
    WAIT_FOR(px_tunnels_count(ps->reg) == 0, 5000);
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
}

/* Stops the acceptor and the loops, then frees the tunnels left (as the proxy does). */
static void proxy_stop(struct proxy_side *ps)
{
    wait_closed(ps);
    shutdown(ps->lfd, SHUT_RDWR);
    pthread_join(ps->acceptor, NULL);
    close(ps->lfd);
    px_loops_stop(ps->ls);
    px_tunnels_free(ps->reg);
    SSL_CTX_free(ps->server);
}

/* ---- the agent's side: an echo service for the SSH server ------------------------------- */

static atomic_int served;
static atomic_int echoing; /* echo threads running */
static atomic_bool refuse_streams;
static char last_peer[80];

static void *echo_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    atomic_fetch_add(&echoing, 1);
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    char buf[32768];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w <= 0)
                goto out;
            off += w;
        }
    }
out:
    close(fd);
    atomic_fetch_sub(&echoing, 1);
    return NULL;
}

static int serve_echo(void *arg, int fd, const char *peer)
{
    (void)arg;
    if (atomic_load(&refuse_streams)) {
        close(fd);
        return rp_err(RP_EBUSY, "64 SSH connections have not authenticated yet");
    }
    snprintf(last_peer, sizeof last_peer, "%s", peer ? peer : "");
    atomic_fetch_add(&served, 1);
    pthread_t t;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_create(&t, &at, echo_main, (void *)(intptr_t)fd);
    pthread_attr_destroy(&at);
    return 0;
}

struct agent_side {
    struct agent_ident id;
    struct agent_tunnels *tunnels;
};

static void agent_start(struct agent_side *as, struct pki *pki, int port, uint64_t keepalive_ms)
{
    memset(as, 0, sizeof *as);
    pthread_mutex_init(&as->id.mu, NULL);
    snprintf(as->id.host_id, sizeof as->id.host_id, "%s", HOST_ID);
    as->id.ctx = node_ctx(pki, HOST_ID);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    const char *proxies[1] = {addr};
    struct agent_tunnels_opts o = {.id = &as->id,
                                   .serve = serve_echo,
                                   .keepalive_ms = keepalive_ms,
                                   .proxies = proxies,
                                   .n_proxies = 1};
    cr_assert_eq(agent_tunnels_start(&as->tunnels, &o), 0, "%s", rp_errmsg());
}

/* Stops the agent's tunnels and waits until the proxy saw them go (so that the proxy
 * stops with no connection open). */
static void agent_stop(struct agent_side *as, struct proxy_side *ps)
{
    agent_tunnels_stop(as->tunnels);
    agent_ident_free(&as->id);
    WAIT_FOR(px_tunnels_count(ps->reg) == 0, 5000);
}

/* ---- a client of the stream -------------------------------------------------------------- */

static uint8_t pattern(size_t i, unsigned seed)
{
    return (uint8_t)((i * 131u + seed * 7u + (i >> 9)) & 0xff);
}

/* Sends @n pattern bytes into @fd (non-blocking) while reading the echo back, reading
 * slowly when @slow (back-pressure through the whole path). True if every byte came
 * back, in order, within 60 s. */
static bool echo_roundtrip(int fd, size_t n, unsigned seed, bool slow)
{
    size_t sent = 0, got = 0;
    uint8_t out[16384], in[16384];
    uint64_t deadline = rp_mono_ms() + 60000;
    bool shut = false;
    while (got < n && rp_mono_ms() < deadline) {
        struct pollfd p = {fd, (short)(POLLIN | (sent < n ? POLLOUT : 0)), 0};
        poll(&p, 1, 100);
        if (sent < n && (p.revents & POLLOUT)) {
            size_t k = n - sent < sizeof out ? n - sent : sizeof out;
            for (size_t i = 0; i < k; i++)
                out[i] = pattern(sent + i, seed);
            ssize_t w = send(fd, out, k, MSG_NOSIGNAL);
            if (w > 0)
                sent += (size_t)w;
        }
        if (sent == n && !shut) {
            shutdown(fd, SHUT_WR);
            shut = true;
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            ssize_t r = read(fd, in, slow ? 512 : sizeof in);
            if (r == 0) {
                fprintf(stderr, "echo: EOF after %zu of %zu bytes (sent %zu)\n", got, n, sent);
                return false;
            }
            for (ssize_t i = 0; i < r; i++)
                if (in[i] != pattern(got + (size_t)i, seed)) {
                    fprintf(stderr, "echo: byte %zu differs\n", got + (size_t)i);
                    return false;
                }
            if (r > 0)
                got += (size_t)r;
            if (slow) {
                struct timespec ts = {0, 200000L};
                nanosleep(&ts, NULL);
            }
        }
    }
    if (got != n)
        fprintf(stderr, "echo: %zu of %zu bytes back in time (sent %zu)\n", got, n, sent);
    return got == n;
}

/* ---- tests -------------------------------------------------------------------------------- */

Test(px_tunnel, a_dial_carries_bytes_both_ways_and_names_the_client)
{
    struct pki pki;
    struct proxy_side ps;
    struct agent_side as;
    pki_new(&pki);
    proxy_start(&ps, &pki, 30000);
    agent_start(&as, &pki, ps.port, 30000);
    WAIT_FOR(px_tunnels_has(ps.reg, HOST_ID) && agent_tunnels_up(as.tunnels) == 1, 10000);
    cr_assert(px_tunnels_has(ps.reg, HOST_ID), "the agent's tunnel registered");
    cr_assert_eq(px_tunnels_count(ps.reg), 1);
    cr_assert_eq(agent_tunnels_up(as.tunnels), 1);

    int fd = -1;
    cr_assert_eq(px_tunnels_dial(ps.reg, HOST_ID, "203.0.113.9:5555", 5000, &fd), 0, "%s",
                 rp_errmsg());
    cr_assert(echo_roundtrip(fd, 4 << 20, 1, false), "4 MiB echoed intact");
    close(fd);
    cr_assert_str_eq(last_peer, "203.0.113.9:5555", "the client's address reached the node");

    /* A reader slower than the writer: the windows hold the bytes back, nothing is lost. */
    cr_assert_eq(px_tunnels_dial(ps.reg, HOST_ID, "203.0.113.9:5556", 5000, &fd), 0);
    cr_assert(echo_roundtrip(fd, 1 << 20, 2, true), "1 MiB through a slow reader intact");
    close(fd);
    agent_stop(&as, &ps);
    cr_assert(!px_tunnels_has(ps.reg, HOST_ID), "a stopped agent's tunnel leaves the registry");
    proxy_stop(&ps);
    pki_free(&pki);
}

struct conc {
    struct px_tunnels *reg;
    int index;
    bool ok;
};

static void *one_session(void *arg)
{
    struct conc *c = arg;
    int fd = -1;
    char client[32];
    snprintf(client, sizeof client, "198.51.100.%d:40000", c->index + 1);
    if (px_tunnels_dial(c->reg, HOST_ID, client, 10000, &fd) != 0)
        return NULL;
    c->ok = echo_roundtrip(fd, 256 << 10, (unsigned)c->index + 10, false);
    close(fd);
    return NULL;
}

Test(px_tunnel, twenty_concurrent_sessions_share_one_tunnel)
{
    struct pki pki;
    struct proxy_side ps;
    struct agent_side as;
    pki_new(&pki);
    proxy_start(&ps, &pki, 30000);
    agent_start(&as, &pki, ps.port, 30000);
    WAIT_FOR(px_tunnels_has(ps.reg, HOST_ID), 10000);
    atomic_store(&served, 0);
    struct conc c[20];
    pthread_t th[20];
    for (int i = 0; i < 20; i++) {
        c[i] = (struct conc){.reg = ps.reg, .index = i};
        pthread_create(&th[i], NULL, one_session, &c[i]);
    }
    for (int i = 0; i < 20; i++)
        pthread_join(th[i], NULL);
    for (int i = 0; i < 20; i++)
        cr_assert(c[i].ok, "session %d echoed its 256 KiB intact", i);
    cr_assert_eq(atomic_load(&served), 20);
    cr_assert_eq(px_tunnels_count(ps.reg), 1, "all over one tunnel");
    agent_stop(&as, &ps);
    proxy_stop(&ps);
    pki_free(&pki);
}

Test(px_tunnel, refusals_name_their_reason)
{
    struct pki pki;
    struct proxy_side ps;
    struct agent_side as;
    pki_new(&pki);
    proxy_start(&ps, &pki, 30000);
    int fd = -1;
    cr_assert_eq(px_tunnels_dial(ps.reg, HOST_ID, "x", 1000, &fd), RP_ENOTFOUND,
                 "no tunnel yet: not found");
    agent_start(&as, &pki, ps.port, 30000);
    WAIT_FOR(px_tunnels_has(ps.reg, HOST_ID), 10000);
    atomic_store(&refuse_streams, true);
    int rv = px_tunnels_dial(ps.reg, HOST_ID, "192.0.2.1:1", 5000, &fd);
    cr_assert_eq(rv, RP_EBUSY, "the node's 503 comes back as busy (got %d: %s)", rv, rp_errmsg());
    cr_assert(strstr(rp_errmsg(), "have not authenticated yet") != NULL,
              "the node's reason is passed on: %s", rp_errmsg());
    cr_assert_eq(fd, -1);
    atomic_store(&refuse_streams, false);
    cr_assert_eq(px_tunnels_dial(ps.reg, HOST_ID, "192.0.2.1:2", 5000, &fd), 0,
                 "the tunnel still serves after a refusal");
    cr_assert(echo_roundtrip(fd, 1000, 3, false));
    close(fd);
    agent_stop(&as, &ps);
    proxy_stop(&ps);
    pki_free(&pki);
}

/* A TLS client with @ctx and the tunnel ALPN; returns the SSL (blocking socket). */
static SSL *raw_client(SSL_CTX *ctx, int port, int *fd_out)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                             .sin_port = htons((uint16_t)port)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    SSL *ssl = SSL_new(ctx);
    SSL_set_alpn_protos(ssl, tunnel_alpn, sizeof tunnel_alpn - 1);
    SSL_set_fd(ssl, fd);
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    cr_assert_eq(SSL_connect(ssl), 1, "handshake");
    *fd_out = fd;
    return ssl;
}

Test(px_tunnel, a_user_certificate_cannot_open_a_tunnel)
{
    struct pki pki;
    struct proxy_side ps;
    pki_new(&pki);
    proxy_start(&ps, &pki, 30000);
    char *roles[1] = {"admin"}, *logins[1] = {"root"};
    struct rp_identity alice = {.name = "alice",
                                .groups = roles,
                                .n_groups = 1,
                                .logins = logins,
                                .n_logins = 1,
                                .cluster = "tun.test"};
    X509 *x = issue(&pki, &alice);
    SSL_CTX *ctx = rp_tls_client_ctx(pki.ca, x, pki.key);
    X509_free(x);
    int fd;
    SSL *ssl = raw_client(ctx, ps.port, &fd);
    /* The proxy closes at once: the first read ends. */
    char buf[256];
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    int r = SSL_read(ssl, buf, sizeof buf);
    cr_assert_leq(r, 0, "the proxy sent nothing over a user's tunnel and closed it");
    cr_assert_eq(px_tunnels_count(ps.reg), 0);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    proxy_stop(&ps);
    pki_free(&pki);
}

Test(px_tunnel, a_silent_agent_is_dropped_after_three_missed_pings)
{
    struct pki pki;
    struct proxy_side ps;
    pki_new(&pki);
    proxy_start(&ps, &pki, 100);
    SSL_CTX *ctx = node_ctx(&pki, HOST_ID);
    int fd;
    SSL *ssl = raw_client(ctx, ps.port, &fd);
    WAIT_FOR(px_tunnels_has(ps.reg, HOST_ID), 5000);
    cr_assert(px_tunnels_has(ps.reg, HOST_ID), "the tunnel registered");
    /* It answers nothing (not even SETTINGS): 3 pings 100 ms apart, then closed. */
    uint64_t t0 = rp_mono_ms();
    WAIT_FOR(!px_tunnels_has(ps.reg, HOST_ID), 5000);
    cr_assert(!px_tunnels_has(ps.reg, HOST_ID), "the silent tunnel was closed");
    cr_assert_geq(rp_mono_ms() - t0, 200, "not before the pings had their chance");
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    proxy_stop(&ps);
    pki_free(&pki);
}

Test(px_tunnel, a_newer_tunnel_of_the_same_node_takes_the_sessions)
{
    struct pki pki;
    struct proxy_side ps;
    struct agent_side as;
    pki_new(&pki);
    proxy_start(&ps, &pki, 200);
    SSL_CTX *ctx = node_ctx(&pki, HOST_ID);
    int fd;
    SSL *stale = raw_client(ctx, ps.port, &fd); /* an old tunnel that serves nothing */
    WAIT_FOR(px_tunnels_count(ps.reg) == 1, 5000);
    agent_start(&as, &pki, ps.port, 200);
    WAIT_FOR(agent_tunnels_up(as.tunnels) == 1 && px_tunnels_count(ps.reg) == 2, 10000);
    int sfd = -1;
    cr_assert_eq(px_tunnels_dial(ps.reg, HOST_ID, "192.0.2.7:7", 5000, &sfd), 0, "%s", rp_errmsg());
    cr_assert(echo_roundtrip(sfd, 10000, 4, false), "the dial went to the newer tunnel");
    close(sfd);
    /* The replaced one is closed once idle (at its next ping, or by missing pings). */
    WAIT_FOR(px_tunnels_count(ps.reg) == 1, 5000);
    cr_assert_eq(px_tunnels_count(ps.reg), 1);
    cr_assert(px_tunnels_has(ps.reg, HOST_ID));
    agent_stop(&as, &ps);
    SSL_free(stale);
    close(fd);
    SSL_CTX_free(ctx);
    proxy_stop(&ps);
    pki_free(&pki);
}

/* ---- a client connection joined to a stream, as proxy/dial.c joins tsh's --------------- */

struct joined {
    struct px_tunnel_stream *h;
    atomic_bool joined, closed;
};

static void j_readable(struct px_tls *c)
{
    struct joined *j = c->mod;
    px_tunnel_stream_client_readable(j->h, c);
}

static void j_drained(struct px_tls *c)
{
    struct joined *j = c->mod;
    px_tunnel_stream_client_drained(j->h);
}

static void j_closed(struct px_tls *c)
{
    struct joined *j = c->mod;
    if (atomic_load(&j->joined))
        px_tunnel_stream_client_closed(j->h);
    else
        px_tunnel_stream_drop(j->h);
    atomic_store(&j->closed, true);
}

static void j_moved(struct px_tls *c, void *arg)
{
    struct joined *j = arg;
    cr_assert_eq(px_loop_current(), px_tunnel_stream_loop(j->h), "moved to the tunnel's loop");
    if (px_tunnel_stream_join(j->h, c) == 0)
        atomic_store(&j->joined, true);
    else
        px_tls_close(c);
}

static void j_move(void *arg)
{
    struct px_tls *c = arg;
    struct joined *j = c->mod;
    if (px_tls_move(c, px_tunnel_stream_loop(j->h), j_moved, j) != 0)
        px_tls_close(c);
}

static void j_handshake(struct px_tls *c, int rv, void *arg)
{
    if (rv != 0)
        return;
    c->mod = arg;
    c->on_readable = j_readable;
    c->on_drained = j_drained;
    c->on_close = j_closed;
    px_tls_pause_reading(c, true);
    /* Not from inside the connection's own callback: from a posted function. */
    px_loop_post(px_loop_current(), j_move, c);
}

struct j_accept {
    struct proxy_side *ps;
    int fd;
    struct joined *j;
};

static void j_accept_on_loop(void *arg)
{
    struct j_accept *a = arg;
    px_tls_accept(px_loop_current(), NULL, a->fd, a->ps->server, "192.0.2.50:1", 5000, j_handshake,
                  a->j, NULL);
    free(a);
}

/* Opens a joined stream to the node and a TLS client connected to it through a socket
 * pair, accepted on the loop that is NOT the tunnel's (so that the connection moves).
 * Returns the client's SSL over a non-blocking *@fd. */
static SSL *joined_client(struct proxy_side *ps, SSL_CTX *cctx, struct joined *j, int *fd)
{
    memset(j, 0, sizeof *j);
    /* As in the proxy process: a client gone mid-write is an error return. */
    signal(SIGPIPE, SIG_IGN);
    cr_assert_eq(px_tunnels_open(ps->reg, HOST_ID, "198.51.100.77:7", 5000, &j->h), 0, "%s",
                 rp_errmsg());
    struct px_loop *tl = px_tunnel_stream_loop(j->h);
    struct px_loop *other =
        px_loops_get(ps->ls, 0) == tl ? px_loops_get(ps->ls, 1) : px_loops_get(ps->ls, 0);
    int sp[2];
    cr_assert_eq(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    fcntl(sp[1], F_SETFL, fcntl(sp[1], F_GETFL) | O_NONBLOCK);
    struct j_accept *a = malloc(sizeof *a);
    *a = (struct j_accept){.ps = ps, .fd = sp[1], .j = j};
    cr_assert_eq(px_loop_post(other, j_accept_on_loop, a), 0);
    SSL *ssl = SSL_new(cctx);
    SSL_set_fd(ssl, sp[0]);
    cr_assert_eq(SSL_connect(ssl), 1, "the client's handshake");
    fcntl(sp[0], F_SETFL, fcntl(sp[0], F_GETFL) | O_NONBLOCK);
    *fd = sp[0];
    WAIT_FOR(atomic_load(&j->joined) || atomic_load(&j->closed), 5000);
    cr_assert(atomic_load(&j->joined), "the client's connection joined the stream");
    return ssl;
}

/* echo_roundtrip over a non-blocking TLS client: @n pattern bytes out, the same back,
 * read slowly when @slow; then close_notify both ways when @finish. */
static bool ssl_echo(SSL *ssl, int fd, size_t n, unsigned seed, bool slow, bool finish)
{
    size_t sent = 0, got = 0, chunk = 0;
    uint8_t out[16384], in[16384];
    uint64_t deadline = rp_mono_ms() + 60000;
    while (got < n && rp_mono_ms() < deadline) {
        struct pollfd p = {fd, (short)(POLLIN | (sent < n ? POLLOUT : 0)), 0};
        poll(&p, 1, 50);
        if (sent < n) {
            if (chunk == 0) { /* a retried SSL_write must offer the same bytes */
                chunk = n - sent < sizeof out ? n - sent : sizeof out;
                for (size_t i = 0; i < chunk; i++)
                    out[i] = pattern(sent + i, seed);
            }
            int w = SSL_write(ssl, out, (int)chunk);
            if (w > 0) {
                sent += (size_t)w;
                chunk = 0;
            }
        }
        for (;;) {
            int r = SSL_read(ssl, in, slow ? 512 : (int)sizeof in);
            if (r <= 0) {
                int e = SSL_get_error(ssl, r);
                if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                    fprintf(stderr, "ssl_echo: end after %zu of %zu bytes\n", got, n);
                    return false;
                }
                break;
            }
            for (int i = 0; i < r; i++)
                if (in[i] != pattern(got + (size_t)i, seed)) {
                    fprintf(stderr, "ssl_echo: byte %zu differs\n", got + (size_t)i);
                    return false;
                }
            got += (size_t)r;
            if (slow) {
                struct timespec ts = {0, 200000L};
                nanosleep(&ts, NULL);
                break;
            }
        }
    }
    if (got != n) {
        fprintf(stderr, "ssl_echo: %zu of %zu bytes back in time\n", got, n);
        return false;
    }
    if (!finish)
        return true;
    /* Our end: close_notify; the node's echo ends in turn, and the proxy's close_notify
     * is the end of the stream. */
    SSL_shutdown(ssl);
    while (rp_mono_ms() < deadline) {
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, 50);
        int r = SSL_read(ssl, in, sizeof in);
        if (r > 0)
            return false; /* nothing more was due */
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_ZERO_RETURN)
            return true;
        if (e != SSL_ERROR_WANT_READ) {
            fprintf(stderr, "ssl_echo: the end was not a close_notify (SSL error %d)\n", e);
            return false;
        }
    }
    return false;
}

/* A proxy side, an agent whose tunnel is up, and a client TLS context. */
struct rig {
    struct pki pki;
    struct proxy_side ps;
    struct agent_side as;
    SSL_CTX *cctx;
    bool agent_stopped;
};

static void rig_start(struct rig *r, const char *client_name)
{
    memset(r, 0, sizeof *r);
    pki_new(&r->pki);
    proxy_start(&r->ps, &r->pki, 30000);
    agent_start(&r->as, &r->pki, r->ps.port, 30000);
    WAIT_FOR(px_tunnels_has(r->ps.reg, HOST_ID), 10000);
    r->cctx = node_ctx(&r->pki, client_name);
}

static void rig_stop(struct rig *r)
{
    SSL_CTX_free(r->cctx);
    if (!r->agent_stopped)
        agent_stop(&r->as, &r->ps);
    proxy_stop(&r->ps);
    pki_free(&r->pki);
}

Test(px_tunnel, a_joined_client_moves_to_the_tunnels_loop_and_its_bytes_flow_both_ways)
{
    struct rig r;
    rig_start(&r, "client-1");
    struct joined j;
    int fd;
    SSL *ssl = joined_client(&r.ps, r.cctx, &j, &fd);
    cr_assert(ssl_echo(ssl, fd, 8 << 20, 21, false, true),
              "8 MiB echoed intact, then close_notify both ways");
    WAIT_FOR(atomic_load(&j.closed) && atomic_load(&echoing) == 0, 5000);
    cr_assert(atomic_load(&j.closed), "the proxy closed the client once the node ended");
    cr_assert_eq(atomic_load(&echoing), 0, "the node's session ended");
    cr_assert_str_eq(last_peer, "198.51.100.77:7", "the client's address reached the node");
    SSL_free(ssl);
    close(fd);

    /* A reader slower than the writer: the stream's window holds the bytes back. */
    ssl = joined_client(&r.ps, r.cctx, &j, &fd);
    cr_assert(ssl_echo(ssl, fd, 1 << 20, 22, true, true), "1 MiB through a slow reader intact");
    SSL_free(ssl);
    close(fd);
    WAIT_FOR(atomic_load(&j.closed), 5000);
    rig_stop(&r);
}

Test(px_tunnel, a_joined_client_that_goes_away_ends_the_nodes_session)
{
    struct rig r;
    rig_start(&r, "client-2");
    struct joined j;
    int fd;
    SSL *ssl = joined_client(&r.ps, r.cctx, &j, &fd);
    cr_assert(ssl_echo(ssl, fd, 64 << 10, 23, false, false));
    /* Gone without a word, mid-session, with bytes of ours still in flight. */
    uint8_t junk[4096] = {0};
    SSL_write(ssl, junk, sizeof junk);
    SSL_free(ssl);
    close(fd);
    WAIT_FOR(atomic_load(&j.closed) && atomic_load(&echoing) == 0, 10000);
    cr_assert(atomic_load(&j.closed), "the proxy saw the client go");
    cr_assert_eq(atomic_load(&echoing), 0, "the node's side of the stream was ended");
    /* The tunnel still serves. */
    ssl = joined_client(&r.ps, r.cctx, &j, &fd);
    cr_assert(ssl_echo(ssl, fd, 100000, 24, false, true), "the next session works");
    SSL_free(ssl);
    close(fd);
    WAIT_FOR(atomic_load(&j.closed), 5000);
    rig_stop(&r);
}

Test(px_tunnel, the_tunnel_going_away_closes_its_joined_clients)
{
    struct rig r;
    rig_start(&r, "client-3");
    struct joined j;
    int fd;
    SSL *ssl = joined_client(&r.ps, r.cctx, &j, &fd);
    cr_assert(ssl_echo(ssl, fd, 32 << 10, 25, false, false));
    agent_stop(&r.as, &r.ps);
    r.agent_stopped = true;
    /* The client reads the end (close_notify or EOF), not a hang. */
    uint64_t until = rp_mono_ms() + 10000;
    int e = SSL_ERROR_WANT_READ;
    uint8_t buf[1024];
    while (e == SSL_ERROR_WANT_READ && rp_mono_ms() < until) {
        struct pollfd p = {fd, POLLIN, 0};
        poll(&p, 1, 50);
        int got = SSL_read(ssl, buf, sizeof buf);
        e = got > 0 ? SSL_ERROR_WANT_READ : SSL_get_error(ssl, got);
    }
    cr_assert_neq(e, SSL_ERROR_WANT_READ, "the client's connection ended with the tunnel");
    WAIT_FOR(atomic_load(&j.closed), 5000);
    cr_assert(atomic_load(&j.closed));
    SSL_free(ssl);
    close(fd);
    rig_stop(&r);
}

/* ---- memory ------------------------------------------------------------------------------ */

static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    long kib = -1;
    while (f != NULL && fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f != NULL)
        fclose(f);
    return kib;
}

/* Opens @n tunnels with distinct Node identities, as an agent does: TLS, the tunnel
 * ALPN, then the server's preface (an empty SETTINGS) and the ACK of the proxy's. */
static void open_idle_tunnels(struct pki *pki, int port, int from, int n, SSL **ssl, int *fds)
{
    static const unsigned char preface[18] = {0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0};
    for (int i = from; i < from + n; i++) {
        char host[40];
        snprintf(host, sizeof host, "00000000-0000-4000-8000-%012d", i);
        SSL_CTX *ctx = node_ctx(pki, host);
        ssl[i] = raw_client(ctx, port, &fds[i]);
        SSL_CTX_free(ctx);
        cr_assert_eq(SSL_write(ssl[i], preface, sizeof preface), (int)sizeof preface);
    }
}

Test(px_tunnel, an_idle_tunnel_costs_the_proxy_less_than_64_KiB, .timeout = 300)
{
    enum { WARM = 50, N = 2000 };
#ifdef __SANITIZE_ADDRESS__
    cr_skip_test("memory is measured without AddressSanitizer's shadow and redzones");
#endif
    struct pki pki;
    pki_new(&pki);
    int ready[2], go[2];
    cr_assert_eq(pipe(ready), 0);
    cr_assert_eq(pipe(go), 0);
    pid_t child = fork();
    cr_assert_geq(child, 0);
    if (child == 0) {
        /* The proxy's side alone in this process, so that its RSS is the proxy's. */
        struct proxy_side ps;
        proxy_start(&ps, &pki, 600000);
        int port = ps.port;
        if (write(ready[1], &port, sizeof port) != sizeof port)
            _exit(1);
        char b;
        while (read(go[0], &b, 1) == 1) {
            size_t n = px_tunnels_count(ps.reg);
            if (write(ready[1], &n, sizeof n) != sizeof n)
                _exit(1);
        }
        _exit(0);
    }
    int port = 0;
    cr_assert_eq(read(ready[0], &port, sizeof port), (ssize_t)sizeof port);
    SSL **ssl = calloc(WARM + N, sizeof *ssl);
    int *fds = calloc(WARM + N, sizeof *fds);
    size_t count = 0;
    /* A few first, so that the loops' and libraries' one-time allocations are counted
     * before the baseline. */
    open_idle_tunnels(&pki, port, 0, WARM, ssl, fds);
    for (int tries = 0; tries < 500 && count != WARM; tries++) {
        cr_assert_eq(write(go[1], "?", 1), 1);
        cr_assert_eq(read(ready[0], &count, sizeof count), (ssize_t)sizeof count);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(count, WARM);
    struct timespec settle = {0, 300 * 1000000L};
    nanosleep(&settle, NULL);
    long before = rss_kib(child);
    open_idle_tunnels(&pki, port, WARM, N, ssl, fds);
    for (int tries = 0; tries < 1000 && count != WARM + N; tries++) {
        cr_assert_eq(write(go[1], "?", 1), 1);
        cr_assert_eq(read(ready[0], &count, sizeof count), (ssize_t)sizeof count);
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    cr_assert_eq(count, WARM + N, "all %d tunnels registered", WARM + N);
    nanosleep(&settle, NULL);
    long after = rss_kib(child);
    double per = (double)(after - before) * 1024.0 / N;
    fprintf(stderr,
            "idle tunnels: proxy RSS %ld KiB with %d tunnels, %ld KiB with %d: %.0f bytes "
            "(%.1f KiB) per idle tunnel\n",
            before, WARM, after, WARM + N, per, per / 1024.0);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    for (int i = 0; i < WARM + N; i++) {
        SSL_free(ssl[i]);
        close(fds[i]);
    }
    free(ssl);
    free(fds);
    cr_assert_lt(per, 64.0 * 1024, "%.0f bytes per idle tunnel (target: under 64 KiB)", per);
}
