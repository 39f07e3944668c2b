/* tests/test_px_loop.c: the proxy's event loops (timers, posts, watches) and its TLS
 * connections (px_tls: handshake with identity and ALPN, echo, back-pressure, close
 * with flush, handshake deadline), over real sockets and real TLS. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "proxy/conn.h"
#include "proxy/loop.h"

/* Polls @cond (an expression) every 5 ms until @ms pass. */
#define WAIT_FOR(cond, ms)                                                                         \
    do {                                                                                           \
        uint64_t until_ = rp_mono_ms() + (ms);                                                     \
        while (!(cond) && rp_mono_ms() < until_) {                                                 \
            struct timespec ts_ = {0, 5 * 1000000L};                                               \
            nanosleep(&ts_, NULL);                                                                 \
        }                                                                                          \
    } while (0)

/* ---- timers ------------------------------------------------------------------------- */

struct timer_rec {
    struct px_timer t;
    int id;
    atomic_int *order; /* next slot */
    int *fired;        /* fired[slot] = id */
};

static void rec_fire(struct px_timer *t)
{
    struct timer_rec *r = (struct timer_rec *)t;
    int slot = atomic_fetch_add(r->order, 1);
    if (slot < 16)
        r->fired[slot] = r->id;
}

struct timer_setup {
    struct px_loop *l;
    struct timer_rec recs[6];
    atomic_int order;
    int fired[16];
    atomic_bool armed;
};

static void arm_timers(void *arg)
{
    struct timer_setup *s = arg;
    /* delays 60, 20, 40, 10(cancelled), 30, 50 ms: expected order ids 1,4,2,5,0 */
    static const uint64_t delay[6] = {60, 20, 40, 10, 30, 50};
    for (int i = 0; i < 6; i++) {
        s->recs[i].id = i;
        s->recs[i].order = &s->order;
        s->recs[i].fired = s->fired;
        px_timer_arm(s->l, &s->recs[i].t, delay[i], rec_fire);
    }
    px_timer_cancel(&s->recs[3].t);
    px_timer_cancel(&s->recs[3].t);                 /* twice is harmless */
    px_timer_arm(s->l, &s->recs[5].t, 5, rec_fire); /* re-armed earlier */
    atomic_store(&s->armed, true);
}

Test(px_loop, timers_fire_in_due_order_and_cancelled_ones_never)
{
    struct px_loops *ls;
    cr_assert_eq(px_loops_new(&ls, 1), 0, "%s", rp_errmsg());
    cr_assert_eq(px_loops_start(ls), 0);
    struct timer_setup *s = calloc(1, sizeof *s);
    s->l = px_loops_get(ls, 0);
    cr_assert_eq(px_loop_post(s->l, arm_timers, s), 0);
    WAIT_FOR(atomic_load(&s->order) >= 5, 3000);
    struct timespec ts = {0, 100 * 1000000L};
    nanosleep(&ts, NULL); /* a cancelled timer would have fired by now */
    px_loops_stop(ls);
    cr_assert_eq(atomic_load(&s->order), 5, "5 timers fire, the cancelled one not");
    int want[5] = {5, 1, 4, 2, 0};
    for (int i = 0; i < 5; i++)
        cr_assert_eq(s->fired[i], want[i], "slot %d: timer %d fired, expected %d", i, s->fired[i],
                     want[i]);
    free(s);
}

/* ---- posts -------------------------------------------------------------------------- */

struct post_count {
    atomic_int n;
    atomic_int wrong_thread;
    struct px_loop *l;
};

static void count_post(void *arg)
{
    struct post_count *pc = arg;
    if (px_loop_current() != pc->l)
        atomic_fetch_add(&pc->wrong_thread, 1);
    atomic_fetch_add(&pc->n, 1);
}

static void *poster(void *arg)
{
    struct post_count *pc = arg;
    for (int i = 0; i < 5000; i++)
        while (px_loop_post(pc->l, count_post, pc) != 0)
            ;
    return NULL;
}

Test(px_loop, posts_from_many_threads_all_run_on_the_loop_thread)
{
    struct px_loops *ls;
    cr_assert_eq(px_loops_new(&ls, 2), 0);
    cr_assert_eq(px_loops_count(ls), 2);
    cr_assert_eq(px_loops_start(ls), 0);
    struct post_count pc = {.l = px_loops_get(ls, 1)};
    cr_assert_eq(px_loop_index(pc.l), 1);
    cr_assert_null(px_loop_current(), "the test thread is no loop");
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, poster, &pc);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    WAIT_FOR(atomic_load(&pc.n) == 20000, 5000);
    cr_assert_eq(atomic_load(&pc.n), 20000);
    cr_assert_eq(atomic_load(&pc.wrong_thread), 0);
    px_loops_stop(ls);
}

Test(px_loop, post_after_stop_is_refused_and_loops_pick_the_least_loaded)
{
    struct px_loops *ls;
    cr_assert_eq(px_loops_new(&ls, 3), 0);
    px_loop_conn_add(px_loops_get(ls, 0));
    px_loop_conn_add(px_loops_get(ls, 2));
    cr_assert_eq(px_loops_pick(ls), px_loops_get(ls, 1));
    px_loop_conn_add(px_loops_get(ls, 1));
    px_loop_conn_add(px_loops_get(ls, 1));
    px_loop_conn_del(px_loops_get(ls, 2));
    cr_assert_eq(px_loops_pick(ls), px_loops_get(ls, 2));
    cr_assert_eq(px_loops_start(ls), 0);
    px_loops_stop(ls);
}

/* ---- watches ------------------------------------------------------------------------ */

struct pipe_watch {
    struct px_watch w;
    struct px_watch other; /* deleted by the first callback: must never be dispatched */
    atomic_int bytes;
    atomic_int other_calls;
    atomic_bool deleted;
};

static void other_event(struct px_watch *w, uint32_t ev)
{
    struct pipe_watch *pw = (struct pipe_watch *)((char *)w - offsetof(struct pipe_watch, other));
    atomic_fetch_add(&pw->other_calls, 1);
    char buf[64];
    while (read(w->fd, buf, sizeof buf) > 0)
        ;
}

static void pipe_event(struct px_watch *w, uint32_t ev)
{
    struct pipe_watch *pw = (struct pipe_watch *)w;
    char buf[64];
    ssize_t n = read(w->fd, buf, sizeof buf);
    if (n > 0)
        atomic_fetch_add(&pw->bytes, (int)n);
    if (!atomic_load(&pw->deleted)) {
        px_watch_del(&pw->other);
        atomic_store(&pw->deleted, true);
    }
    if (n == 0)
        px_watch_del(w);
}

static void add_watches(void *arg)
{
    struct pipe_watch *pw = arg;
    struct px_loop *l = px_loop_current();
    cr_assert_eq(px_watch_add(l, &pw->w, EPOLLIN), 0);
    cr_assert_eq(px_watch_add(l, &pw->other, EPOLLIN), 0);
}

Test(px_loop, watches_deliver_bytes_and_a_deleted_watch_is_never_called)
{
    struct px_loops *ls;
    cr_assert_eq(px_loops_new(&ls, 1), 0);
    cr_assert_eq(px_loops_start(ls), 0);
    int p1[2], p2[2];
    cr_assert_eq(pipe2(p1, O_NONBLOCK), 0);
    cr_assert_eq(pipe2(p2, O_NONBLOCK), 0);
    /* Both readable before the loop first waits: one batch holds both events. */
    cr_assert_eq(write(p1[1], "abc", 3), 3);
    cr_assert_eq(write(p2[1], "xyz", 3), 3);
    struct pipe_watch pw = {.w = {.fd = p1[0], .on_event = pipe_event},
                            .other = {.fd = p2[0], .on_event = other_event}};
    cr_assert_eq(px_loop_post(px_loops_get(ls, 0), add_watches, &pw), 0);
    WAIT_FOR(atomic_load(&pw.bytes) == 3, 3000);
    cr_assert_eq(write(p1[1], "defg", 4), 4);
    cr_assert_eq(write(p2[1], "more", 4), 4);
    WAIT_FOR(atomic_load(&pw.bytes) == 7, 3000);
    cr_assert_eq(atomic_load(&pw.bytes), 7);
    px_loops_stop(ls);
    /* The other watch may have run before the first deleted it (same batch, its turn
     * first), but never after: at most once. */
    cr_assert_leq(atomic_load(&pw.other_calls), 1);
    for (int i = 0; i < 2; i++) {
        close(p1[i]);
        close(p2[i]);
    }
}

/* ---- px_tls --------------------------------------------------------------------------- */

struct pki {
    EVP_PKEY *ca_key;
    X509 *ca;
    SSL_CTX *server;
    SSL_CTX *client;    /* with a user certificate "alice" */
    SSL_CTX *anonymous; /* no certificate */
};

static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    static const unsigned char ours[] = "\x04"
                                        "echo";
    if (SSL_select_next_proto((unsigned char **)out, outlen, ours, 5, in, inlen) ==
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_OK;
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static SSL_CTX *issue_ctx(struct pki *p, const struct rp_identity *id, bool server)
{
    EVP_PKEY *k = rp_tls_keygen();
    X509 *x = NULL;
    const char *sans[1] = {"localhost"};
    cr_assert_eq(rp_tls_issue(p->ca_key, p->ca, k, id, sans, 1, 3600, &x), 0, "%s", rp_errmsg());
    SSL_CTX *ctx = server ? rp_tls_server_ctx(p->ca, x, k, 0) : rp_tls_client_ctx(p->ca, x, k);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    EVP_PKEY_free(k);
    X509_free(x);
    return ctx;
}

static void pki_new(struct pki *p)
{
    cr_assert_eq(rp_tls_ca_create("px.test", &p->ca_key, &p->ca), 0);
    struct rp_identity proxy = {
        .name = "proxy-1", .cluster = "px.test", .system_role = RP_SYS_PROXY, .host_id = "proxy-1"};
    p->server = issue_ctx(p, &proxy, true);
    SSL_CTX_set_alpn_select_cb(p->server, select_alpn, NULL);
    char *roles[1] = {"dev"}, *logins[1] = {"root"};
    struct rp_identity alice = {.name = "alice",
                                .groups = roles,
                                .n_groups = 1,
                                .logins = logins,
                                .n_logins = 1,
                                .cluster = "px.test"};
    p->client = issue_ctx(p, &alice, false);
    p->anonymous = rp_tls_client_ctx(p->ca, NULL, NULL);
    static const unsigned char alpn[] = "\x04"
                                        "echo";
    SSL_CTX_set_alpn_protos(p->client, alpn, 5);
    SSL_CTX_set_alpn_protos(p->anonymous, alpn, 5);
}

static void pki_free(struct pki *p)
{
    SSL_CTX_free(p->server);
    SSL_CTX_free(p->client);
    SSL_CTX_free(p->anonymous);
    EVP_PKEY_free(p->ca_key);
    X509_free(p->ca);
}

/* The server side: an echo module that pauses reading while more than @limit bytes
 * are queued, counting what it saw. */
struct server {
    struct px_loops *ls;
    struct pki pki;
    int lfd;
    int port;
    uint64_t hs_deadline_ms;
    size_t limit;
    atomic_int handshakes_ok, handshakes_failed, closes, drained;
    atomic_int paused_seen;
    char ident_name[64];
    char alpn[32];
    atomic_bool hold; /* the module reads nothing while set */
};

struct echo {
    struct server *s;
};

static void echo_readable(struct px_tls *c)
{
    struct echo *e = c->mod;
    if (atomic_load(&e->s->hold)) {
        px_tls_pause_reading(c, true);
        return;
    }
    char buf[4096];
    for (;;) {
        if (px_tls_pending(c) > e->s->limit) {
            atomic_fetch_add(&e->s->paused_seen, 1);
            px_tls_pause_reading(c, true);
            return;
        }
        ssize_t n = px_tls_read(c, buf, sizeof buf);
        if (n == RP_EAGAIN)
            return;
        if (n <= 0) {
            px_tls_close(c);
            return;
        }
        if (n == 4 && memcmp(buf, "QUIT", 4) == 0) {
            px_tls_write(c, "BYE", 3);
            px_tls_close(c);
            return;
        }
        px_tls_write(c, buf, (size_t)n);
    }
}

static void echo_drained(struct px_tls *c)
{
    struct echo *e = c->mod;
    atomic_fetch_add(&e->s->drained, 1);
    px_tls_pause_reading(c, false);
}

static void echo_close(struct px_tls *c)
{
    struct echo *e = c->mod;
    atomic_fetch_add(&e->s->closes, 1);
    free(e);
}

static void handshake_done(struct px_tls *c, int rv, void *arg)
{
    struct server *s = arg;
    if (rv != 0) {
        atomic_fetch_add(&s->handshakes_failed, 1);
        return;
    }
    snprintf(s->ident_name, sizeof s->ident_name, "%s", c->ident ? c->ident->name : "");
    snprintf(s->alpn, sizeof s->alpn, "%s", c->alpn);
    struct echo *e = calloc(1, sizeof *e);
    e->s = s;
    c->mod = e;
    c->on_readable = echo_readable;
    c->on_drained = echo_drained;
    c->on_close = echo_close;
    atomic_fetch_add(&s->handshakes_ok, 1);
}

struct accept_arg {
    struct server *s;
    int fd;
};

static void accept_on_loop(void *arg)
{
    struct accept_arg *a = arg;
    struct px_tls *c = NULL;
    int rv = px_tls_accept(px_loop_current(), NULL, a->fd, a->s->pki.server, "127.0.0.1:1",
                           a->s->hs_deadline_ms, handshake_done, a->s, &c);
    cr_assert_eq(rv, 0, "%s", rp_errmsg());
    free(a);
}

static void *acceptor(void *arg)
{
    struct server *s = arg;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return NULL;
        struct accept_arg *a = malloc(sizeof *a);
        a->s = s;
        a->fd = fd;
        px_loop_post(px_loops_pick(s->ls), accept_on_loop, a);
    }
}

static pthread_t acceptor_thread;

static void close_all_on_stop(void *arg)
{
    px_tls_close_all(arg);
}

static void server_start(struct server *s)
{
    pki_new(&s->pki);
    cr_assert_eq(px_loops_new(&s->ls, 2), 0);
    cr_assert_eq(px_loops_on_stop(s->ls, close_all_on_stop, s->ls), 0);
    cr_assert_eq(px_loops_start(s->ls), 0);
    s->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(s->lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(s->lfd, 16), 0);
    socklen_t sl = sizeof sa;
    getsockname(s->lfd, (struct sockaddr *)&sa, &sl);
    s->port = ntohs(sa.sin_port);
    if (s->hs_deadline_ms == 0)
        s->hs_deadline_ms = 5000;
    pthread_create(&acceptor_thread, NULL, acceptor, s);
}

static void server_stop(struct server *s)
{
    shutdown(s->lfd, SHUT_RDWR);
    pthread_join(acceptor_thread, NULL);
    close(s->lfd);
    px_loops_stop(s->ls);
    pki_free(&s->pki);
}

static SSL *client_connect(struct server *s, SSL_CTX *ctx)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)s->port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    cr_assert_eq(SSL_connect(ssl), 1, "client handshake");
    return ssl;
}

static void client_close(SSL *ssl)
{
    int fd = SSL_get_fd(ssl);
    SSL_free(ssl);
    close(fd);
}

static void read_exact(SSL *ssl, char *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        int r = SSL_read(ssl, buf + got, (int)(n - got));
        cr_assert_gt(r, 0, "read %zu of %zu bytes", got, n);
        got += (size_t)r;
    }
}

Test(px_tls, handshake_gives_the_module_the_client_identity_and_alpn)
{
    struct server s = {.limit = 1 << 20};
    server_start(&s);
    SSL *ssl = client_connect(&s, s.pki.client);
    cr_assert_eq(SSL_write(ssl, "hello", 5), 5);
    char buf[8];
    read_exact(ssl, buf, 5);
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_str_eq(s.ident_name, "alice");
    cr_assert_str_eq(s.alpn, "echo");
    client_close(ssl);
    WAIT_FOR(atomic_load(&s.closes) == 1, 3000);
    cr_assert_eq(atomic_load(&s.closes), 1, "on_close once when the peer goes away");

    ssl = client_connect(&s, s.pki.anonymous);
    cr_assert_eq(SSL_write(ssl, "x", 1), 1);
    read_exact(ssl, buf, 1);
    cr_assert_str_eq(s.ident_name, "", "no certificate, no identity");
    client_close(ssl);
    server_stop(&s);
}

Test(px_tls, close_flushes_what_was_queued_then_sends_close_notify)
{
    struct server s = {.limit = 1 << 20};
    server_start(&s);
    SSL *ssl = client_connect(&s, s.pki.client);
    cr_assert_eq(SSL_write(ssl, "QUIT", 4), 4);
    char buf[8];
    read_exact(ssl, buf, 3);
    cr_assert_eq(memcmp(buf, "BYE", 3), 0);
    int r = SSL_read(ssl, buf, sizeof buf);
    cr_assert_eq(r, 0);
    cr_assert_eq(SSL_get_error(ssl, r), SSL_ERROR_ZERO_RETURN, "a clean close_notify");
    client_close(ssl);
    WAIT_FOR(atomic_load(&s.closes) == 1, 3000);
    cr_assert_eq(atomic_load(&s.closes), 1);
    server_stop(&s);
}

Test(px_tls, a_client_that_does_not_read_makes_the_module_pause_and_nothing_is_lost)
{
    struct server s = {.limit = 256 * 1024};
    server_start(&s);
    SSL *ssl = client_connect(&s, s.pki.client);
    int fd = SSL_get_fd(ssl);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    /* Write 32 MiB reading nothing until writing blocks: the echo queue fills, the
     * module pauses, TCP pushes back on the writer. Then read and write in turns:
     * all 32 MiB come back. */
    const size_t total = 32u << 20;
    static char chunk[16384], buf[65536];
    memset(chunk, 'z', sizeof chunk);
    size_t sent = 0, got = 0, sent_when_blocked = 0;
    bool reading = false;
    uint64_t deadline = rp_mono_ms() + 30000;
    while (got < total && rp_mono_ms() < deadline) {
        bool progress = false;
        if (sent < total) {
            int r = SSL_write(ssl, chunk, sizeof chunk);
            if (r > 0) {
                sent += (size_t)r;
                progress = true;
            } else if (!reading && atomic_load(&s.paused_seen) > 0) {
                reading = true;
                sent_when_blocked = sent;
            }
        }
        if (reading) {
            int r = SSL_read(ssl, buf, sizeof buf);
            if (r > 0) {
                for (int i = 0; i < r; i++)
                    cr_assert_eq(buf[i], 'z');
                got += (size_t)r;
                progress = true;
            }
        }
        if (!progress) {
            struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < total ? POLLOUT : 0)};
            poll(&pfd, 1, 20);
        }
    }
    cr_assert(reading, "the module paused and the writer blocked");
    cr_assert_lt(sent_when_blocked, total, "the writer was held back");
    cr_assert_eq(got, total, "every byte came back (%zu of %zu)", got, total);
    cr_assert_gt(atomic_load(&s.drained), 0, "on_drained resumed the module");
    client_close(ssl);
    server_stop(&s);
}

Test(px_tls, a_client_that_never_finishes_the_handshake_is_cut_at_the_deadline)
{
    struct server s = {.limit = 1 << 20, .hs_deadline_ms = 300};
    server_start(&s);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)s.port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(write(fd, "\x16\x03\x01", 3), 3); /* the start of a record, no more */
    WAIT_FOR(atomic_load(&s.handshakes_failed) == 1, 5000);
    cr_assert_eq(atomic_load(&s.handshakes_failed), 1);
    char b;
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    cr_assert_eq(read(fd, &b, 1), 0, "the proxy closed the socket");
    close(fd);
    server_stop(&s);
}

Test(px_tls, stopping_the_loops_ends_every_open_connection_through_on_close)
{
    struct server s = {.limit = 1 << 20};
    server_start(&s);
    SSL *a = client_connect(&s, s.pki.client);
    SSL *b = client_connect(&s, s.pki.anonymous);
    char buf[4];
    cr_assert_eq(SSL_write(a, "ping", 4), 4);
    read_exact(a, buf, 4);
    cr_assert_eq(SSL_write(b, "ping", 4), 4);
    read_exact(b, buf, 4);
    cr_assert_eq(atomic_load(&s.closes), 0);
    server_stop(&s);
    /* The modules freed their state (echo_close) for both: nothing is left behind. */
    cr_assert_eq(atomic_load(&s.closes), 2);
    client_close(a);
    client_close(b);
}
