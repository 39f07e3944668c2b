/* tests/test_conn.c: addresses, dialing and length-prefixed frames over real TLS
 * on 127.0.0.1. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/tls.h"

/* ---- fixture: one CA, a server and a client context ----------------------------- */

static EVP_PKEY *ca_key, *skey, *ckey;
static X509 *ca, *scert, *ccert;
static SSL_CTX *sctx, *cctx;

static void issue(const char *name, const char *role, EVP_PKEY **key, X509 **cert)
{
    char *groups[] = {(char *)role};
    struct rp_identity id = {.name = (char *)name,
                             .groups = groups,
                             .n_groups = 1,
                             .system_role = rp_system_role_from_name(role)};
    if (id.system_role != RP_SYS_NONE)
        id.host_id = (char *)name;
    *key = rp_tls_keygen();
    cr_assert_not_null(*key);
    cr_assert_eq(rp_tls_issue(ca_key, ca, *key, &id, NULL, 0, 3600, cert), 0, "%s", rp_errmsg());
}

static void setup(void)
{
    cr_assert_eq(rp_tls_ca_create("example.com", &ca_key, &ca), 0, "%s", rp_errmsg());
    issue("auth-1", RP_ROLE_AUTH, &skey, &scert);
    issue("auth-2", RP_ROLE_AUTH, &ckey, &ccert);
    sctx = rp_tls_server_ctx(ca, scert, skey, 1);
    cctx = rp_tls_client_ctx(ca, ccert, ckey);
    cr_assert_not_null(sctx, "%s", rp_errmsg());
    cr_assert_not_null(cctx, "%s", rp_errmsg());
    /* Writes to a dead peer must come back as errors, not kill the process. */
    signal(SIGPIPE, SIG_DFL);
}

static void teardown(void)
{
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(skey);
    EVP_PKEY_free(ckey);
    X509_free(ca);
    X509_free(scert);
    X509_free(ccert);
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void join_within(pthread_t th, int seconds)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += seconds;
    cr_assert_eq(pthread_timedjoin_np(th, NULL, &ts), 0, "thread did not finish in %ds", seconds);
}

/* A listener on a free port and one accepted, handshaken connection. */
struct pair {
    int lfd;
    char addr[64];
    struct rp_conn srv, cli;
    int accept_rv;
};

static void *accept_main(void *arg)
{
    struct pair *p = arg;
    struct pollfd pf = {.fd = p->lfd, .events = POLLIN};
    if (poll(&pf, 1, 5000) != 1) {
        p->accept_rv = RP_ETIMEDOUT;
        return NULL;
    }
    int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
    p->accept_rv = fd < 0 ? RP_EIO : rp_conn_accept(&p->srv, sctx, fd, 5000);
    return NULL;
}

static void pair_open(struct pair *p)
{
    memset(p, 0, sizeof *p);
    p->lfd = rp_listen_tcp("127.0.0.1:0", 8);
    cr_assert_geq(p->lfd, 0, "%s", rp_errmsg());
    cr_assert_eq(rp_sock_local_addr(p->lfd, p->addr, sizeof p->addr), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, accept_main, p), 0);
    cr_assert_eq(rp_conn_dial(&p->cli, cctx, p->addr, 5000), 0, "%s", rp_errmsg());
    join_within(th, 10);
    cr_assert_eq(p->accept_rv, 0);
    cr_assert_eq(rp_conn_set_timeout(&p->srv, 5000), 0);
    cr_assert_eq(rp_conn_set_timeout(&p->cli, 5000), 0);
}

static void pair_close(struct pair *p)
{
    rp_conn_close(&p->cli);
    rp_conn_close(&p->srv);
    close(p->lfd);
}

/* Writes raw bytes on the TLS stream, bypassing the framing. */
static void raw_write(struct rp_conn *c, const void *p, size_t n)
{
    size_t w = 0;
    cr_assert_eq(SSL_write_ex(c->ssl, p, n, &w), 1);
    cr_assert_eq(w, n);
}

struct reader {
    struct rp_conn *c;
    struct rp_buf b;
    int rv;
    char err[512];
};

static void *reader_main(void *arg)
{
    struct reader *r = arg;
    r->rv = rp_conn_read_frame(r->c, &r->b);
    snprintf(r->err, sizeof r->err, "%s", rp_errmsg());
    return NULL;
}

/* ---- addresses ------------------------------------------------------------------- */

Test(conn, addr_parse_accepts_ipv4_localhost_and_bracketed_ipv6)
{
    struct sockaddr_storage ss;
    socklen_t len;
    cr_assert_eq(rp_addr_parse("1.2.3.4:5", &ss, &len), 0, "%s", rp_errmsg());
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    cr_assert_eq(ss.ss_family, AF_INET);
    cr_assert_eq(len, sizeof *s4);
    cr_assert_eq(ntohs(s4->sin_port), 5);
    cr_assert_eq(ntohl(s4->sin_addr.s_addr), 0x01020304);

    cr_assert_eq(rp_addr_parse("localhost:3025", &ss, &len), 0);
    cr_assert_eq(ntohl(s4->sin_addr.s_addr), INADDR_LOOPBACK);
    cr_assert_eq(ntohs(s4->sin_port), 3025);

    cr_assert_eq(rp_addr_parse("[::1]:65535", &ss, &len), 0, "%s", rp_errmsg());
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    cr_assert_eq(ss.ss_family, AF_INET6);
    cr_assert_eq(len, sizeof *s6);
    cr_assert_eq(ntohs(s6->sin6_port), 65535);
    cr_assert(IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));
}

Test(conn, addr_parse_refuses_everything_else)
{
    const char *bad[] = {"",
                         "1.2.3.4",
                         "1.2.3.4:",
                         ":5",
                         "1.2.3.4:x",
                         "1.2.3.4:5x",
                         "1.2.3.4:-1",
                         "1.2.3.4:65536",
                         "1.2.3.4:123456",
                         "example.com:80",
                         "::1:5",
                         "[::1]5",
                         "[::1]",
                         "[]:5",
                         "[1.2.3.4]:5",
                         "1.2.3:5",
                         "256.1.1.1:5",
                         "1.2.3.4 :5",
                         " 1.2.3.4:5",
                         "[::1%lo]:5",
                         "localhost:+5"};
    struct sockaddr_storage ss;
    socklen_t len;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rp_err_clear();
        cr_assert_eq(rp_addr_parse(bad[i], &ss, &len), RP_EINVAL, "accepted \"%s\"", bad[i]);
        cr_assert_neq(strlen(rp_errmsg()), 0, "no message for \"%s\"", bad[i]);
    }
    cr_assert_eq(rp_addr_parse(NULL, &ss, &len), RP_EINVAL);
}

Test(conn, listen_on_port_zero_reports_the_port)
{
    int fd = rp_listen_tcp("127.0.0.1:0", 4);
    cr_assert_geq(fd, 0, "%s", rp_errmsg());
    char addr[64];
    cr_assert_eq(rp_sock_local_addr(fd, addr, sizeof addr), 0);
    cr_assert_eq(strncmp(addr, "127.0.0.1:", 10), 0, "%s", addr);
    cr_assert_neq(atoi(addr + 10), 0);
    /* The port is taken now. */
    cr_assert_lt(rp_listen_tcp(addr, 4), 0);
    cr_assert(strstr(rp_errmsg(), addr) != NULL, "%s", rp_errmsg());
    close(fd);
    cr_assert_eq(rp_listen_tcp("nonsense", 4), RP_EINVAL);
}

/* ---- dialing ---------------------------------------------------------------------- */

Test(conn, dial_records_peer_and_refused_port_is_eio, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    cr_assert_str_eq(p.cli.peer, p.addr);
    cr_assert_eq(strncmp(p.srv.peer, "127.0.0.1:", 10), 0, "%s", p.srv.peer);
    cr_assert_eq(p.cli.max_frame, RP_FRAME_MAX);
    pair_close(&p);

    /* Nobody listens there any more. */
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, cctx, p.addr, 2000), RP_EIO);
    cr_assert(strstr(rp_errmsg(), "refused") != NULL, "%s", rp_errmsg());
    rp_conn_close(&c);
    cr_assert_eq(rp_conn_dial(&c, cctx, "127.0.0.1:0", 2000), RP_EINVAL);
}

Test(conn, dial_times_out_when_server_never_handshakes, .init = setup, .fini = teardown,
     .timeout = 30)
{
    /* The kernel completes the TCP connect from the backlog; nobody answers TLS. */
    int lfd = rp_listen_tcp("127.0.0.1:0", 4);
    char addr[64];
    rp_sock_local_addr(lfd, addr, sizeof addr);
    struct rp_conn c;
    int64_t t0 = now_ms();
    cr_assert_eq(rp_conn_dial(&c, cctx, addr, 300), RP_ETIMEDOUT, "%s", rp_errmsg());
    int64_t took = now_ms() - t0;
    cr_assert(took >= 290 && took < 3000, "took %lld ms", (long long)took);
    cr_assert(strstr(rp_errmsg(), "timed out") != NULL, "%s", rp_errmsg());
    rp_conn_close(&c);
    close(lfd);
}

Test(conn, accept_times_out_when_client_never_handshakes, .init = setup, .fini = teardown,
     .timeout = 30)
{
    int lfd = rp_listen_tcp("127.0.0.1:0", 4);
    char addr[64];
    rp_sock_local_addr(lfd, addr, sizeof addr);
    struct sockaddr_storage ss;
    socklen_t len;
    rp_addr_parse(addr, &ss, &len);
    int cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(cfd, (struct sockaddr *)&ss, len), 0);
    int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(fd, 0);
    struct rp_conn c;
    int64_t t0 = now_ms();
    cr_assert_eq(rp_conn_accept(&c, sctx, fd, 300), RP_ETIMEDOUT);
    int64_t took = now_ms() - t0;
    cr_assert(took >= 290 && took < 3000, "took %lld ms", (long long)took);
    cr_assert_eq(c.fd, -1); /* the fd was taken and closed */
    rp_conn_close(&c);
    close(cfd);
    close(lfd);
}

/* ---- frames ----------------------------------------------------------------------- */

Test(conn, frames_round_trip_small_and_one_mebibyte, .init = setup, .fini = teardown, .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    struct rp_buf b;
    rp_buf_init(&b);

    cr_assert_eq(rp_conn_write_frame(&p.cli, "\x81\xa1k\x01", 4), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), 0, "%s", rp_errmsg());
    cr_assert_eq(b.len, 4);
    cr_assert_eq(memcmp(b.data, "\x81\xa1k\x01", 4), 0);

    /* Several frames back to back, boundaries kept; sizes around the record size. */
    size_t sizes[] = {1, 16379, 16380, 16381, 70000};
    uint8_t *big = malloc(1 << 20);
    for (size_t i = 0; i < (1u << 20); i++)
        big[i] = (uint8_t)(i * 2654435761u >> 13);
    for (size_t i = 0; i < 5; i++)
        cr_assert_eq(rp_conn_write_frame(&p.srv, big, sizes[i]), 0, "%s", rp_errmsg());
    for (size_t i = 0; i < 5; i++) {
        cr_assert_eq(rp_conn_read_frame(&p.cli, &b), 0, "%s", rp_errmsg());
        cr_assert_eq(b.len, sizes[i]);
        cr_assert_eq(memcmp(b.data, big, sizes[i]), 0);
    }

    /* 1 MiB: the reader runs in a thread while the writer writes. */
    struct reader r = {.c = &p.srv};
    rp_buf_init(&r.b);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, reader_main, &r), 0);
    cr_assert_eq(rp_conn_write_frame(&p.cli, big, 1 << 20), 0, "%s", rp_errmsg());
    join_within(th, 20);
    cr_assert_eq(r.rv, 0, "%s", r.err);
    cr_assert_eq(r.b.len, 1u << 20);
    cr_assert_eq(memcmp(r.b.data, big, 1 << 20), 0);
    rp_buf_free(&r.b);

    free(big);
    rp_buf_free(&b);
    pair_close(&p);
}

Test(conn, write_refuses_empty_and_oversized_frames, .init = setup, .fini = teardown, .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    cr_assert_eq(rp_conn_write_frame(&p.cli, "x", 0), RP_EINVAL);
    p.cli.max_frame = 8;
    cr_assert_eq(rp_conn_write_frame(&p.cli, "123456789", 9), RP_ETOOBIG);
    cr_assert_eq(rp_conn_write_frame(&p.cli, "12345678", 8), 0, "%s", rp_errmsg());
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), 0, "%s", rp_errmsg());
    cr_assert_eq(b.len, 8);
    rp_buf_free(&b);
    pair_close(&p);
}

Test(conn, oversized_length_is_refused_unread_and_closes, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    p.srv.max_frame = 1024;
    /* A header announcing 1025 bytes; the body never comes, and must not be awaited. */
    raw_write(&p.cli, "\0\0\x04\x01", 4);
    struct rp_buf b;
    rp_buf_init(&b);
    int64_t t0 = now_ms();
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ETOOBIG);
    cr_assert_lt(now_ms() - t0, 2000);
    cr_assert(strstr(rp_errmsg(), "1025") != NULL, "%s", rp_errmsg());
    cr_assert_eq(b.len, 0);
    /* Closed: the server refuses further use, the client sees the end. */
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ECLOSED);
    cr_assert_eq(rp_conn_write_frame(&p.srv, "x", 1), RP_ECLOSED);
    int rv = rp_conn_read_frame(&p.cli, &b);
    cr_assert(rv == RP_ECLOSED || rv == RP_EIO, "client read %d: %s", rv, rp_errmsg());

    /* The default limit applies to a 4 GiB announcement too. */
    rp_buf_free(&b);
    pair_close(&p);
    pair_open(&p);
    raw_write(&p.cli, "\xff\xff\xff\xff", 4);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ETOOBIG);
    rp_buf_free(&b);
    pair_close(&p);
}

Test(conn, zero_length_frame_is_invalid, .init = setup, .fini = teardown, .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    raw_write(&p.cli, "\0\0\0\0", 4);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "empty frame") != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ECLOSED);
    rp_buf_free(&b);
    pair_close(&p);
}

Test(conn, truncated_frame_is_eio_and_clean_close_is_eclosed, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    struct rp_buf b;
    rp_buf_init(&b);
    /* 100 bytes announced, 10 sent, then close_notify. */
    raw_write(&p.cli,
              "\0\0\0d"
              "0123456789",
              14);
    rp_conn_close(&p.cli);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_EIO);
    cr_assert(strstr(rp_errmsg(), "middle of a frame") != NULL, "%s", rp_errmsg());
    pair_close(&p);

    /* A header cut short is truncation too. */
    pair_open(&p);
    raw_write(&p.cli, "\0\0", 2);
    rp_conn_close(&p.cli);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_EIO);
    pair_close(&p);

    /* Close between frames: a clean end. */
    pair_open(&p);
    cr_assert_eq(rp_conn_write_frame(&p.cli, "last", 4), 0);
    rp_conn_close(&p.cli);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ECLOSED, "%s", rp_errmsg());
    pair_close(&p);

    /* Without close_notify (TCP FIN only, as when a peer is killed): still ECLOSED
     * between frames, EIO inside one. */
    pair_open(&p);
    shutdown(p.cli.fd, SHUT_WR);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ECLOSED, "%s", rp_errmsg());
    pair_close(&p);
    pair_open(&p);
    raw_write(&p.cli,
              "\0\0\0d"
              "0123456789",
              14);
    shutdown(p.cli.fd, SHUT_WR);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_EIO, "%s", rp_errmsg());
    pair_close(&p);
    rp_buf_free(&b);
}

Test(conn, read_times_out_and_stays_usable_between_frames, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_set_timeout(&p.srv, 200), 0);
    int64_t t0 = now_ms();
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ETIMEDOUT);
    int64_t took = now_ms() - t0;
    cr_assert(took >= 150 && took < 3000, "took %lld ms", (long long)took);
    /* Nothing of a frame was read: the next frame still arrives whole. */
    cr_assert_eq(rp_conn_write_frame(&p.cli, "late", 4), 0);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), 0, "%s", rp_errmsg());
    cr_assert_eq(b.len, 4);

    /* Half a frame then silence: timeout, and the connection is done. */
    raw_write(&p.cli,
              "\0\0\0\x10"
              "abc",
              7);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ETIMEDOUT);
    cr_assert(strstr(rp_errmsg(), "middle of a frame") != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ECLOSED);
    rp_buf_free(&b);
    pair_close(&p);
}

Test(conn, write_times_out_when_peer_does_not_read, .init = setup, .fini = teardown, .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    /* 16 MiB cannot fit in the loopback socket buffers while the server sleeps. */
    size_t n = RP_FRAME_MAX;
    uint8_t *big = calloc(1, n);
    cr_assert_eq(rp_conn_set_timeout(&p.cli, 300), 0);
    int64_t t0 = now_ms();
    cr_assert_eq(rp_conn_write_frame(&p.cli, big, n), RP_ETIMEDOUT, "%s", rp_errmsg());
    cr_assert_lt(now_ms() - t0, 10000);
    /* Part of a record went out: the stream is lost. */
    cr_assert_eq(rp_conn_write_frame(&p.cli, "x", 1), RP_ECLOSED);
    free(big);
    pair_close(&p);
}

Test(conn, writing_to_a_closed_peer_fails_without_sigpipe, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    /* The peer goes away without reading; SIGPIPE is at its default (fatal). */
    rp_conn_close(&p.srv);
    char chunk[4096];
    memset(chunk, 'z', sizeof chunk);
    int rv = 0;
    for (int i = 0; i < 10000 && rv == 0; i++)
        rv = rp_conn_write_frame(&p.cli, chunk, sizeof chunk);
    cr_assert(rv == RP_EIO || rv == RP_ECLOSED, "write returned %d: %s", rv, rp_errmsg());
    cr_assert_eq(rp_conn_write_frame(&p.cli, "x", 1), RP_ECLOSED);
    pair_close(&p);
}

Test(conn, close_is_idempotent_and_ops_after_close_are_eclosed, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    rp_conn_close(&p.cli);
    rp_conn_close(&p.cli);
    cr_assert_eq(p.cli.fd, -1);
    cr_assert_null(p.cli.ssl);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&p.cli, &b), RP_ECLOSED);
    cr_assert_eq(rp_conn_write_frame(&p.cli, "x", 1), RP_ECLOSED);
    cr_assert_eq(rp_conn_set_timeout(&p.cli, 10), RP_ECLOSED);
    pair_close(&p);
}

/* Many clients at once against one accept loop, each echoing frames: the shared
 * SSL_CTXs and everything else must hold up under threads. */
#define N_CLIENTS 8
#define N_FRAMES 50

struct echo_server {
    int lfd;
    int handled;
};

static void *echo_conn_main(void *arg)
{
    struct rp_conn *c = arg;
    struct rp_buf b;
    rp_buf_init(&b);
    rp_conn_set_timeout(c, 10000);
    while (rp_conn_read_frame(c, &b) == 0) {
        if (rp_conn_write_frame(c, b.data, b.len) != 0)
            break;
    }
    rp_buf_free(&b);
    rp_conn_close(c);
    free(c);
    return NULL;
}

static void *echo_server_main(void *arg)
{
    struct echo_server *s = arg;
    pthread_t th[N_CLIENTS];
    int n = 0;
    while (n < N_CLIENTS) {
        struct pollfd pf = {.fd = s->lfd, .events = POLLIN};
        if (poll(&pf, 1, 10000) != 1)
            break;
        int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
            break;
        struct rp_conn *c = malloc(sizeof *c);
        if (rp_conn_accept(c, sctx, fd, 5000) != 0) {
            free(c);
            continue;
        }
        pthread_create(&th[n++], NULL, echo_conn_main, c);
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    s->handled = n;
    return NULL;
}

struct client {
    const char *addr;
    int id;
    int rv;
    char err[256];
};

static void *client_main(void *arg)
{
    struct client *cl = arg;
    struct rp_conn c;
    struct rp_buf b;
    rp_buf_init(&b);
    cl->rv = rp_conn_dial(&c, cctx, cl->addr, 5000);
    if (cl->rv == 0)
        rp_conn_set_timeout(&c, 10000);
    for (int i = 0; cl->rv == 0 && i < N_FRAMES; i++) {
        char msg[64];
        int n = snprintf(msg, sizeof msg, "client %d frame %d", cl->id, i);
        cl->rv = rp_conn_write_frame(&c, msg, (size_t)n);
        if (cl->rv == 0)
            cl->rv = rp_conn_read_frame(&c, &b);
        if (cl->rv == 0 && (b.len != (size_t)n || memcmp(b.data, msg, (size_t)n) != 0))
            cl->rv = RP_EPROTO;
    }
    snprintf(cl->err, sizeof cl->err, "%s", rp_errmsg());
    rp_buf_free(&b);
    rp_conn_close(&c);
    return NULL;
}

Test(conn, concurrent_clients_echo_frames, .init = setup, .fini = teardown, .timeout = 60)
{
    struct echo_server s = {.lfd = rp_listen_tcp("127.0.0.1:0", 64)};
    cr_assert_geq(s.lfd, 0);
    char addr[64];
    rp_sock_local_addr(s.lfd, addr, sizeof addr);
    pthread_t sth, cth[N_CLIENTS];
    struct client cl[N_CLIENTS];
    cr_assert_eq(pthread_create(&sth, NULL, echo_server_main, &s), 0);
    for (int i = 0; i < N_CLIENTS; i++) {
        cl[i] = (struct client){.addr = addr, .id = i};
        cr_assert_eq(pthread_create(&cth[i], NULL, client_main, &cl[i]), 0);
    }
    for (int i = 0; i < N_CLIENTS; i++)
        join_within(cth[i], 30);
    join_within(sth, 30);
    for (int i = 0; i < N_CLIENTS; i++)
        cr_assert_eq(cl[i].rv, 0, "client %d: %d %s", i, cl[i].rv, cl[i].err);
    cr_assert_eq(s.handled, N_CLIENTS);
    close(s.lfd);
}

/* ---- limits for peers without a certificate, and the non-blocking server steps ---- */

struct anon_pair {
    int lfd;
    char addr[64];
    SSL_CTX *opt_sctx;  /* server: client certificate optional */
    SSL_CTX *anon_cctx; /* client: no certificate */
    struct rp_conn srv, cli;
    int accept_rv;
    bool steps; /* accept with rp_conn_accept_start / rp_conn_handshake_step */
};

static void *anon_accept_main(void *arg)
{
    struct anon_pair *p = arg;
    struct pollfd pf = {.fd = p->lfd, .events = POLLIN};
    if (poll(&pf, 1, 5000) != 1) {
        p->accept_rv = RP_ETIMEDOUT;
        return NULL;
    }
    int fd = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (!p->steps) {
        p->accept_rv = rp_conn_accept(&p->srv, p->opt_sctx, fd, 5000);
        return NULL;
    }
    p->accept_rv = rp_conn_accept_start(&p->srv, p->opt_sctx, fd);
    for (int i = 0; i < 100 && p->accept_rv == 0; i++) {
        short ev;
        int rv = rp_conn_handshake_step(&p->srv, &ev);
        if (rv == 0)
            return NULL;
        if (rv < 0) {
            p->accept_rv = rv;
            return NULL;
        }
        struct pollfd sp = {.fd = p->srv.fd, .events = ev};
        poll(&sp, 1, 100);
    }
    if (p->accept_rv == 0)
        p->accept_rv = RP_ETIMEDOUT;
    return NULL;
}

static void anon_pair_open(struct anon_pair *p, bool steps)
{
    memset(p, 0, sizeof *p);
    p->steps = steps;
    p->opt_sctx = rp_tls_server_ctx(ca, scert, skey, 0);
    cr_assert_not_null(p->opt_sctx, "%s", rp_errmsg());
    p->anon_cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(p->anon_cctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(p->anon_cctx, SSL_VERIFY_NONE, NULL);
    p->lfd = rp_listen_tcp("127.0.0.1:0", 8);
    cr_assert_geq(p->lfd, 0, "%s", rp_errmsg());
    cr_assert_eq(rp_sock_local_addr(p->lfd, p->addr, sizeof p->addr), 0);
    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, anon_accept_main, p), 0);
    cr_assert_eq(rp_conn_dial(&p->cli, p->anon_cctx, p->addr, 5000), 0, "%s", rp_errmsg());
    join_within(th, 10);
    cr_assert_eq(p->accept_rv, 0, "%s", rp_strerror(p->accept_rv));
    cr_assert_eq(rp_conn_set_timeout(&p->cli, 5000), 0);
}

static void anon_pair_close(struct anon_pair *p)
{
    rp_conn_close(&p->cli);
    rp_conn_close(&p->srv);
    close(p->lfd);
    SSL_CTX_free(p->opt_sctx);
    SSL_CTX_free(p->anon_cctx);
}

Test(conn, peer_without_certificate_may_send_only_small_frames, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct anon_pair p;
    anon_pair_open(&p, false);
    cr_assert_eq(p.srv.max_read, RP_FRAME_ANON_MAX);
    cr_assert_eq(rp_conn_set_timeout(&p.srv, 5000), 0);
    uint8_t *body = calloc(1, RP_FRAME_ANON_MAX);
    cr_assert_eq(rp_conn_write_frame(&p.cli, body, RP_FRAME_ANON_MAX), 0, "%s", rp_errmsg());
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), 0, "a frame at the limit: %s", rp_errmsg());
    cr_assert_eq(b.len, RP_FRAME_ANON_MAX);
    /* One byte more is refused from the header, without waiting for the body. */
    raw_write(&p.cli, "\0\0\x20\x01", 4);
    int64_t t0 = now_ms();
    cr_assert_eq(rp_conn_read_frame(&p.srv, &b), RP_ETOOBIG);
    cr_assert_lt(now_ms() - t0, 2000);
    free(body);
    rp_buf_free(&b);
    anon_pair_close(&p);
}

Test(conn, peer_with_certificate_may_send_frames_up_to_the_full_limit, .init = setup,
     .fini = teardown, .timeout = 30)
{
    struct pair p;
    pair_open(&p);
    cr_assert_eq(p.srv.max_read, 0, "no lower read limit for a verified client");
    pair_close(&p);
}

Test(conn, server_handshake_and_reads_run_in_non_blocking_steps, .init = setup, .fini = teardown,
     .timeout = 30)
{
    struct anon_pair p;
    anon_pair_open(&p, true);
    cr_assert_eq(p.srv.max_read, RP_FRAME_ANON_MAX, "the read limit is set by the last step");
    uint8_t got[64];
    size_t n = 0;
    short ev;
    /* Nothing sent yet: the read waits for the socket instead of blocking. */
    cr_assert_eq(rp_conn_read_some(&p.srv, got, sizeof got, &n, &ev), 1);
    cr_assert_eq(ev, POLLIN);
    cr_assert_eq(rp_conn_write_frame(&p.cli, "hello", 5), 0);
    size_t total = 0;
    for (int i = 0; i < 50 && total < 9; i++) {
        int rv = rp_conn_read_some(&p.srv, got + total, sizeof got - total, &n, &ev);
        cr_assert_geq(rv, 0, "%s", rp_errmsg());
        if (rv == 1) {
            struct pollfd sp = {.fd = p.srv.fd, .events = ev};
            poll(&sp, 1, 100);
            continue;
        }
        total += n;
    }
    cr_assert_eq(total, 9);
    cr_assert_eq(memcmp(got, "\0\0\0\x05hello", 9), 0);
    /* The peer leaving shows as RP_ECLOSED. */
    rp_conn_close(&p.cli);
    int rv = 1;
    for (int i = 0; i < 50 && rv == 1; i++) {
        rv = rp_conn_read_some(&p.srv, got, sizeof got, &n, &ev);
        if (rv == 1) {
            struct pollfd sp = {.fd = p.srv.fd, .events = ev};
            poll(&sp, 1, 100);
        }
    }
    cr_assert_eq(rv, RP_ECLOSED, "%s", rp_errmsg());
    anon_pair_close(&p);
}
