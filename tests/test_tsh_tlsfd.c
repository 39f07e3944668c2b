/* tests/test_tsh_tlsfd.c: tsh/tlsfd.c, the TLS connection libssh drives as if it were a
 * socket, over a real TLS 1.3 connection on a real loopback TCP connection.
 *
 * The test binary has no interposer (tools/tsh_io.c is linked into build/tsh alone), so
 * each test enables tlsfds itself with libc's poll behind a counting wrapper (the reads
 * of tsh's socket are counted on its read BIO) and calls tsh_tlsfd_poll/_recv/_send as
 * the interposer would for libssh. The "tsh"
 * end is a client SSL set up as tsh/dial.c does (read ahead, 128 KiB read buffer); the
 * "proxy" end is a blocking server SSL whose records are gathered as the proxy's are
 * (rp_tls_gather_writes, which also sends with MSG_NOSIGNAL), driven step by step from
 * the test or by a peer thread. SIGPIPE is left at its default: a write that raised it
 * would kill the test. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tsh/tlsfd.h"

#define MiB (1024u * 1024u)
#define LIBSSH_READ 4096          /* what libssh asks recv() for */
#define TLS_READ_BUF (128 * 1024) /* as tsh/dial.c sizes the client's read buffer */
#define OUT_CAP MiB               /* queued bytes at which a tlsfd stops polling writable */
#define STEP_MS 10000             /* deadline of one step that should take milliseconds */
#define SMALL_SOCKBUF (32 * 1024) /* socket buffers that make a send queue form quickly */
#define MAX_TLSFDS 8              /* tlsfds open at once (tsh/tlsfd.c) */

/* ---- libc behind counters ------------------------------------------------------------- */

static atomic_long real_polls, real_recvs;

static int counting_poll(struct pollfd *fds, nfds_t n, int timeout)
{
    atomic_fetch_add(&real_polls, 1);
    return poll(fds, n, timeout);
}

/* Counts the reads OpenSSL makes of tsh's socket (its read BIO's calls). */
static long counting_read(BIO *b, int oper, const char *argp, size_t len, int argi, long argl,
                          int ret, size_t *processed)
{
    (void)b, (void)argp, (void)len, (void)argi, (void)argl, (void)processed;
    if (oper == BIO_CB_READ)
        atomic_fetch_add(&real_recvs, 1);
    return (oper & BIO_CB_RETURN) ? ret : 1;
}

/* ---- the connection: tsh's end as a tlsfd, the proxy's end as a blocking SSL ---------- */

/* One TLS connection over loopback TCP: tsh's end and the proxy's. */
struct conn {
    SSL *server, *client; /* client: until tsh_tlsfd_open takes it */
    int server_fd, client_tcp, fd;
    int accept_rc;
};

struct fx {
    EVP_PKEY *ca_key, *key;
    X509 *ca;
    SSL_CTX *server_ctx, *client_ctx;
    int lfd;
    struct conn c;                     /* the connection of the test */
    struct conn extra[MAX_TLSFDS + 1]; /* more, for the registry's limit */
    int go[2];                         /* a byte here lets the peer thread start */
    int pipe[2];                       /* an ordinary descriptor pair for the tests that need one */
    pthread_t peer;
    bool peer_running;
    /* the peer thread's job */
    const uint8_t *src; /* what the peer sends, or what it expects to read */
    size_t len;
    size_t read_size;  /* SSL_read size of a reading peer */
    bool answer_close; /* a reading peer answers close_notify with its own */
    bool wait_fin;     /* a reading peer then waits for the TCP connection to end */
    /* its results (read by the test after joining) */
    size_t got;
    long mismatch_at; /* offset of the first byte that differs, -1 if none */
    bool zero_return; /* the peer's SSL_read saw close_notify */
    bool saw_fin;     /* the peer's socket then read end of file */
    bool wrote_all, shut_down, go_timeout;
    int ssl_error; /* SSL_get_error of the call that ended the peer's loop */
    uint8_t *data; /* random bytes of the test (freed at teardown) */
};

static struct fx F;

static void fx_init_disabled(void)
{
    memset(&F, 0, sizeof F);
    F.lfd = -1;
    for (int i = 0; i <= MAX_TLSFDS; i++)
        F.extra[i] = (struct conn){.server_fd = -1, .client_tcp = -1, .fd = -1};
    F.c = F.extra[0];
    F.go[0] = F.go[1] = F.pipe[0] = F.pipe[1] = -1;
    F.mismatch_at = -1;
    cr_assert_eq(pipe2(F.go, O_CLOEXEC), 0);
    cr_assert_eq(rp_tls_ca_create("tlsfd.test", &F.ca_key, &F.ca), 0, "%s", rp_errmsg());
    F.key = rp_tls_keygen();
    cr_assert_not_null(F.key);
    const char *sans[] = {"localhost", "127.0.0.1"};
    struct rp_identity proxy = {.name = "proxy-1",
                                .cluster = "tlsfd.test",
                                .system_role = RP_SYS_PROXY,
                                .host_id = "proxy-1"};
    struct rp_identity user = {.name = "alice", .cluster = "tlsfd.test"};
    X509 *server_cert = NULL, *client_cert = NULL;
    cr_assert_eq(rp_tls_issue(F.ca_key, F.ca, F.key, &proxy, sans, 2, 3600, &server_cert), 0, "%s",
                 rp_errmsg());
    cr_assert_eq(rp_tls_issue(F.ca_key, F.ca, F.key, &user, NULL, 0, 3600, &client_cert), 0, "%s",
                 rp_errmsg());
    F.server_ctx = rp_tls_server_ctx(F.ca, server_cert, F.key, 1);
    F.client_ctx = rp_tls_client_ctx(F.ca, client_cert, F.key);
    X509_free(server_cert);
    X509_free(client_cert);
    cr_assert_not_null(F.server_ctx, "%s", rp_errmsg());
    cr_assert_not_null(F.client_ctx, "%s", rp_errmsg());
}

static void fx_init(void)
{
    fx_init_disabled();
    tsh_tlsfd_enable(counting_poll);
}

static void go_signal(void)
{
    if (F.go[1] >= 0) {
        close(F.go[1]); /* end of file wakes the peer as a byte would */
        F.go[1] = -1;
    }
}

static void conn_free(struct conn *c)
{
    SSL_free(c->server);
    SSL_free(c->client);
    if (c->server_fd >= 0)
        close(c->server_fd);
    if (c->client_tcp >= 0)
        close(c->client_tcp);
    *c = (struct conn){.server_fd = -1, .client_tcp = -1, .fd = -1};
}

static void fx_fini(void)
{
    /* A tlsfd closed with no linger closes the TCP socket: a peer blocked on its
     * end sees the connection end. shutdown() covers a peer that never got so far. */
    if (F.c.fd >= 0 && tsh_tlsfd_get(F.c.fd) != NULL)
        tsh_tlsfd_close(F.c.fd, 0);
    for (int i = 0; i <= MAX_TLSFDS; i++)
        if (F.extra[i].fd >= 0 && tsh_tlsfd_get(F.extra[i].fd) != NULL)
            tsh_tlsfd_close(F.extra[i].fd, 0);
    if (F.peer_running) {
        go_signal();
        if (F.c.server_fd >= 0)
            shutdown(F.c.server_fd, SHUT_RDWR);
        pthread_join(F.peer, NULL);
        F.peer_running = false;
    }
    conn_free(&F.c);
    for (int i = 0; i <= MAX_TLSFDS; i++)
        conn_free(&F.extra[i]);
    if (F.lfd >= 0)
        close(F.lfd);
    for (int i = 0; i < 2; i++) {
        if (F.go[i] >= 0)
            close(F.go[i]);
        if (F.pipe[i] >= 0)
            close(F.pipe[i]);
    }
    SSL_CTX_free(F.server_ctx);
    SSL_CTX_free(F.client_ctx);
    X509_free(F.ca);
    EVP_PKEY_free(F.ca_key);
    EVP_PKEY_free(F.key);
    free(F.data);
    memset(&F, 0, sizeof F);
}

static void *accept_main(void *arg)
{
    struct conn *c = arg;
    c->accept_rc = SSL_accept(c->server);
    return NULL;
}

/* Connects a new tsh end to the proxy's listening socket over TCP and TLS 1.3 into @c,
 * without registering it. @sockbuf > 0 makes the client's send buffer that small. */
static void conn_connect(struct conn *c, int sockbuf)
{
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    cr_assert_eq(getsockname(F.lfd, (struct sockaddr *)&a, &alen), 0);
    c->client_tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(c->client_tcp, 0);
    if (sockbuf > 0)
        cr_assert_eq(setsockopt(c->client_tcp, SOL_SOCKET, SO_SNDBUF, &sockbuf, sizeof sockbuf), 0);
    cr_assert_eq(connect(c->client_tcp, (struct sockaddr *)&a, sizeof a), 0, "connect: %s",
                 strerror(errno));
    c->server_fd = accept4(F.lfd, NULL, NULL, SOCK_CLOEXEC);
    cr_assert_geq(c->server_fd, 0, "accept: %s", strerror(errno));
    /* The proxy's end never blocks for ever, whatever the tlsfd does. */
    struct timeval tv = {20, 0};
    setsockopt(c->server_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->server_fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    c->server = SSL_new(F.server_ctx);
    cr_assert_not_null(c->server);
    cr_assert_eq(SSL_set_fd(c->server, c->server_fd), 1);
    cr_assert_eq(rp_tls_gather_writes(c->server, c->server_fd, RP_TLS_GATHER_BYTES), 0, "%s",
                 rp_errmsg());
    c->client = SSL_new(F.client_ctx);
    cr_assert_not_null(c->client);
    cr_assert_eq(SSL_set_fd(c->client, c->client_tcp), 1);
    SSL_set_default_read_buffer_len(c->client, TLS_READ_BUF); /* as tsh/dial.c */
    SSL_set_read_ahead(c->client, 1);
    BIO_set_callback_ex(SSL_get_rbio(c->client), counting_read);

    pthread_t th;
    cr_assert_eq(pthread_create(&th, NULL, accept_main, c), 0);
    int rc = SSL_connect(c->client);
    if (rc != 1)
        shutdown(c->server_fd, SHUT_RDWR);
    pthread_join(th, NULL);
    cr_assert_eq(rc, 1, "client handshake failed (%d)", SSL_get_error(c->client, rc));
    cr_assert_eq(c->accept_rc, 1, "server handshake failed");
    cr_assert_eq(SSL_version(c->client), TLS1_3_VERSION);
}

/* Registers @c's tsh end as a tlsfd (which then owns its SSL and socket). */
static void conn_open(struct conn *c)
{
    cr_assert_eq(tsh_tlsfd_open(c->client, c->client_tcp, &c->fd), 0, "%s", rp_errmsg());
    c->client = NULL;
    c->client_tcp = -1;
}

/* The proxy listens on 127.0.0.1 (an ephemeral port) and F.c is connected to it.
 * @sockbuf > 0 makes the client's send and the server's receive buffers that small. */
static void pair_connect(int sockbuf)
{
    F.lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(F.lfd, 0);
    if (sockbuf > 0) /* accepted sockets inherit it */
        cr_assert_eq(setsockopt(F.lfd, SOL_SOCKET, SO_RCVBUF, &sockbuf, sizeof sockbuf), 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(F.lfd, (struct sockaddr *)&a, sizeof a), 0, "bind: %s", strerror(errno));
    cr_assert_eq(listen(F.lfd, MAX_TLSFDS + 2), 0);
    conn_connect(&F.c, sockbuf);
}

/* pair_connect, then tsh's end becomes the tlsfd F.c.fd. */
static void pair_open(int sockbuf)
{
    pair_connect(sockbuf);
    conn_open(&F.c);
}

static uint8_t *random_bytes(size_t n)
{
    F.data = malloc(n);
    cr_assert_not_null(F.data);
    cr_assert_eq(RAND_bytes(F.data, (int)n), 1);
    return F.data;
}

/* The proxy's end writes @n bytes, pushing its gathered records. */
static void peer_write(const uint8_t *p, size_t n)
{
    while (n > 0) {
        int w = SSL_write(F.c.server, p, n > 64 * 1024 ? 64 * 1024 : (int)n);
        cr_assert_gt(w, 0, "the proxy's SSL_write failed (%d)", SSL_get_error(F.c.server, w));
        cr_assert_eq(rp_tls_gather_push(F.c.server), 1);
        p += w;
        n -= (size_t)w;
    }
}

static void start_peer(void *(*fn)(void *))
{
    cr_assert_eq(pthread_create(&F.peer, NULL, fn, NULL), 0);
    F.peer_running = true;
}

static void join_peer(void)
{
    if (F.peer_running) {
        pthread_join(F.peer, NULL);
        F.peer_running = false;
    }
}

/* Peer thread: sends F.src[0..F.len) as the proxy does (64 KiB writes, gathered), then
 * close_notify. */
static void *peer_sender(void *arg)
{
    (void)arg;
    size_t off = 0;
    while (off < F.len) {
        size_t n = F.len - off > 64 * 1024 ? 64 * 1024 : F.len - off;
        int w = SSL_write(F.c.server, F.src + off, (int)n);
        if (w <= 0 || rp_tls_gather_push(F.c.server) != 1) {
            F.ssl_error = w <= 0 ? SSL_get_error(F.c.server, w) : SSL_ERROR_SYSCALL;
            return NULL;
        }
        off += (size_t)w;
    }
    F.wrote_all = true;
    F.shut_down = SSL_shutdown(F.c.server) >= 0;
    return NULL;
}

/* Peer thread: once F.go is signalled, reads with SSL_read of F.read_size until
 * close_notify, comparing every byte with F.src; then answers close_notify
 * (F.answer_close) or waits for the TCP connection to end (F.wait_fin). */
static void *peer_reader(void *arg)
{
    (void)arg;
    struct pollfd g = {F.go[0], POLLIN, 0};
    if (poll(&g, 1, 30000) != 1) {
        F.go_timeout = true;
        return NULL;
    }
    uint8_t *buf = malloc(F.read_size);
    if (buf == NULL)
        return NULL;
    for (;;) {
        int r = SSL_read(F.c.server, buf, (int)F.read_size);
        if (r <= 0) {
            F.ssl_error = SSL_get_error(F.c.server, r);
            F.zero_return = F.ssl_error == SSL_ERROR_ZERO_RETURN;
            break;
        }
        if (F.mismatch_at < 0 &&
            (F.got + (size_t)r > F.len || memcmp(buf, F.src + F.got, (size_t)r) != 0)) {
            size_t i = 0;
            while (F.got + i < F.len && i < (size_t)r && buf[i] == F.src[F.got + i])
                i++;
            F.mismatch_at = (long)(F.got + i);
        }
        F.got += (size_t)r;
    }
    free(buf);
    ERR_clear_error();
    if (F.zero_return && F.answer_close)
        F.shut_down = SSL_shutdown(F.c.server) >= 0;
    if (F.zero_return && F.wait_fin) {
        struct pollfd p = {F.c.server_fd, POLLIN, 0};
        char c;
        F.saw_fin = poll(&p, 1, 30000) == 1 && recv(F.c.server_fd, &c, 1, 0) == 0;
    }
    return NULL;
}

/* Reads the tlsfd as libssh does (poll for POLLIN, then recv of 4 KiB) until the end of
 * the stream, checking each byte against @expect; returns how many recv calls it took. */
static size_t read_to_end(const uint8_t *expect, size_t len)
{
    uint8_t buf[LIBSSH_READ];
    size_t got = 0, reads = 0;
    for (;;) {
        struct pollfd p = {F.c.fd, POLLIN, 0};
        int rc = tsh_tlsfd_poll(&p, 1, STEP_MS);
        cr_assert_eq(rc, 1, "the tlsfd was not readable within %d ms after %zu bytes", STEP_MS,
                     got);
        cr_assert(p.revents & POLLIN);
        ssize_t n = tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0);
        reads++;
        cr_assert_geq(n, 0, "recv failed after POLLIN: %s", strerror(errno));
        if (n == 0)
            break;
        cr_assert_leq(got + (size_t)n, len, "more bytes arrived than were sent");
        cr_assert_eq(memcmp(buf, expect + got, (size_t)n), 0, "bytes differ within [%zu, %zu)", got,
                     got + (size_t)n);
        got += (size_t)n;
    }
    cr_assert_eq(got, len, "the stream ended after %zu of %zu bytes", got, len);
    return reads;
}

/* ---- 1: reading --------------------------------------------------------------------------- */

Test(tlsfd, bytes_from_the_proxy_arrive_intact_in_4k_reads_with_few_real_polls, .init = fx_init,
     .fini = fx_fini, .timeout = 60)
{
    pair_open(0);
    F.len = 8 * MiB;
    F.src = random_bytes(F.len);
    atomic_store(&real_polls, 0);
    atomic_store(&real_recvs, 0);
    start_peer(peer_sender);
    size_t reads = read_to_end(F.src, F.len);
    long polls = atomic_load(&real_polls), recvs = atomic_load(&real_recvs);
    join_peer();
    cr_assert(F.wrote_all && F.shut_down, "the proxy's end failed (%d)", F.ssl_error);
    cr_log_info("8 MiB: %zu recv() of 4 KiB, %ld real poll(), %ld real recv()", reads, polls,
                recvs);
    /* A 16 KiB record serves four 4 KiB reads and what was read ahead serves several
     * records, all without a system call; the socketpair design made one poll per read. */
    cr_assert_geq(reads, 8 * MiB / LIBSSH_READ);
    cr_assert_lt(polls * 4, (long)reads, "%ld real polls for %zu reads", polls, reads);
    cr_assert_lt(recvs * 2, (long)reads, "%ld real recvs for %zu reads", recvs, reads);
}

Test(tlsfd, recv_never_blocks_and_says_eagain_until_bytes_are_decrypted, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    pair_open(0);
    char buf[LIBSSH_READ];
    uint64_t t0 = rp_mono_ms();
    errno = 0;
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), -1);
    cr_assert_eq(errno, EAGAIN);
    cr_assert_lt(rp_mono_ms() - t0, 2000, "recv blocked");
    struct pollfd p = {F.c.fd, POLLIN, 0};
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, 0), 0, "nothing was sent, yet the tlsfd polls readable");
    p = (struct pollfd){F.c.fd, POLLIN | POLLOUT, 0};
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, STEP_MS), 1);
    cr_assert_eq(p.revents, POLLOUT, "an idle tlsfd is writable only (revents %#x)", p.revents);
    p = (struct pollfd){F.c.fd, POLLIN, 0};

    peer_write((const uint8_t *)"hello, tsh", 10);
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, STEP_MS), 1);
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, 5, MSG_PEEK), 5,
                 "MSG_PEEK returns what waits");
    cr_assert_eq(memcmp(buf, "hello", 5), 0);
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), 10,
                 "a peek leaves the bytes");
    cr_assert_eq(memcmp(buf, "hello, tsh", 10), 0);
    errno = 0;
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), -1);
    cr_assert_eq(errno, EAGAIN);

    cr_assert_null(tsh_tlsfd_get(F.go[0]), "a pipe is no tlsfd");
}

Test(tlsfd, poll_reports_a_record_that_a_recv_already_read_ahead, .init = fx_init, .fini = fx_fini,
     .timeout = 30)
{
    pair_connect(0);
    int tcp = F.c.client_tcp;
    conn_open(&F.c);
    char buf[LIBSSH_READ];
    errno = 0;
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), -1,
                 "nothing was sent yet");
    cr_assert_eq(errno, EAGAIN);

    /* Two full records in one send; wait for them on the TCP socket itself, so that
     * the tlsfd's own poll plays no part in reading them. */
    const size_t len = 2 * 16384;
    const uint8_t *data = random_bytes(len);
    peer_write(data, len);
    struct pollfd t = {tcp, POLLIN, 0};
    cr_assert_eq(poll(&t, 1, STEP_MS), 1);
    int queued = 0;
    cr_assert_eq(ioctl(tcp, FIONREAD, &queued), 0);
    cr_assert_gt(queued, (int)len, "both records arrived together (%d bytes)", queued);

    /* recv without a poll first: SSL_read reads both records ahead and serves the first. */
    for (size_t off = 0; off < 16384; off += sizeof buf) {
        cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0),
                     (ssize_t)sizeof buf);
        cr_assert_eq(memcmp(buf, data + off, sizeof buf), 0);
    }
    /* The second record waits in OpenSSL, not in the socket: the tlsfd is readable. */
    struct pollfd p = {F.c.fd, POLLIN, 0};
    uint64_t t0 = rp_mono_ms();
    int rc = tsh_tlsfd_poll(&p, 1, 2000);
    uint64_t took = rp_mono_ms() - t0;
    cr_assert_eq(rc, 1, "a record read ahead did not poll readable (poll gave %d after %llu ms)",
                 rc, (unsigned long long)took);
    cr_assert(p.revents & POLLIN);
    for (size_t off = 16384; off < len; off += sizeof buf) {
        cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0),
                     (ssize_t)sizeof buf);
        cr_assert_eq(memcmp(buf, data + off, sizeof buf), 0);
    }
}

Test(tlsfd, bytes_read_ahead_before_open_are_served_by_the_first_poll, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    /* tsh_dial reads the proxy's answer with SSL_read before it registers the
     * connection; the SSH server's first bytes may already sit behind it. */
    pair_connect(0);
    static const char answer[] = "dial answer", banner[] = "SSH-2.0-node\r\n";
    cr_assert_eq(SSL_write(F.c.server, answer, sizeof answer - 1), (int)sizeof answer - 1);
    cr_assert_eq(SSL_write(F.c.server, banner, sizeof banner - 1), (int)sizeof banner - 1);
    cr_assert_eq(rp_tls_gather_push(F.c.server), 1); /* both records in one send */
    char buf[64];
    cr_assert_eq(SSL_read(F.c.client, buf, sizeof buf), (int)sizeof answer - 1);
    cr_assert_eq(memcmp(buf, answer, sizeof answer - 1), 0);
    cr_assert(SSL_has_pending(F.c.client), "the banner's record was read ahead with the answer");
    conn_open(&F.c);
    struct pollfd p = {F.c.fd, POLLIN, 0};
    uint64_t t0 = rp_mono_ms();
    int rc = tsh_tlsfd_poll(&p, 1, STEP_MS);
    uint64_t took = rp_mono_ms() - t0;
    cr_assert_eq(rc, 1, "the banner did not poll readable");
    cr_assert(p.revents & POLLIN);
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0),
                 (ssize_t)sizeof banner - 1);
    cr_assert_eq(memcmp(buf, banner, sizeof banner - 1), 0);
    /* The record was in OpenSSL's buffer: poll must not have waited on the socket. */
    cr_assert_lt(took, STEP_MS / 2, "poll took %llu ms", (unsigned long long)took);
}

/* ---- 2: writing --------------------------------------------------------------------------- */

Test(tlsfd, send_takes_everything_and_pollout_stops_at_1_mib_queued_until_the_proxy_drains,
     .init = fx_init, .fini = fx_fini, .timeout = 60)
{
    pair_open(SMALL_SOCKBUF);
    F.len = 6 * MiB;
    F.src = random_bytes(F.len);
    F.read_size = 1024; /* a slow reader: a quarter of a record per SSL_read */
    F.answer_close = true;
    start_peer(peer_reader); /* it waits for F.go: the proxy reads nothing yet */

    const size_t chunk = 64 * 1024;
    size_t sent = 0;
    struct pollfd p = {F.c.fd, POLLOUT, 0};
    for (;;) {
        cr_assert_lt(sent, F.len, "the tlsfd stayed writable with nothing read for %zu bytes",
                     sent);
        int rc = tsh_tlsfd_poll(&p, 1, 0);
        cr_assert_geq(rc, 0);
        if (rc == 0)
            break;
        cr_assert(p.revents & POLLOUT);
        cr_assert_eq(tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), F.src + sent, chunk), (ssize_t)chunk);
        sent += chunk;
    }
    cr_log_info("POLLOUT stopped after %zu bytes sent to a proxy that reads nothing", sent);
    /* What the kernel holds is far below 1 MiB with these socket buffers: the rest is
     * the tlsfd's queue, which must have reached the cap, and not much more. */
    cr_assert_geq(sent, OUT_CAP, "POLLOUT stopped with under 1 MiB queued (%zu sent)", sent);
    cr_assert_lt(sent, OUT_CAP + chunk + MiB, "POLLOUT went on long past 1 MiB (%zu sent)", sent);
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, 200), 0, "writable while the proxy still reads nothing");

    /* send accepts everything even beyond the cap: libssh never sees a short write. */
    cr_assert_eq(tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), F.src + sent, 3 * chunk),
                 (ssize_t)(3 * chunk));
    sent += 3 * chunk;

    go_signal(); /* the proxy starts reading, slowly */
    size_t waits = 0;
    while (sent < F.len) {
        int rc = tsh_tlsfd_poll(&p, 1, STEP_MS);
        cr_assert_eq(rc, 1, "not writable again within %d ms while the proxy reads", STEP_MS);
        cr_assert(p.revents & POLLOUT);
        size_t n = F.len - sent < chunk ? F.len - sent : chunk;
        cr_assert_eq(tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), F.src + sent, n), (ssize_t)n);
        sent += n;
        waits++;
    }
    uint64_t t0 = rp_mono_ms();
    cr_assert(tsh_tlsfd_close(F.c.fd, 30000), "the tlsfd was not registered");
    uint64_t took = rp_mono_ms() - t0;
    join_peer();
    cr_assert_not(F.go_timeout);
    cr_assert_eq(F.mismatch_at, -1, "the proxy read different bytes from offset %ld",
                 F.mismatch_at);
    cr_assert_eq(F.got, F.len, "the proxy read %zu of %zu bytes", F.got, F.len);
    cr_assert(F.zero_return, "the proxy's read ended with %d, not close_notify", F.ssl_error);
    cr_assert(F.shut_down);
    /* The proxy answered close_notify: close does not sit out its linger. */
    cr_assert_lt(took, 15000, "close took %llu ms though the proxy answered",
                 (unsigned long long)took);
    cr_log_info("%zu sends after the proxy began reading; close took %llu ms", waits,
                (unsigned long long)took);
}

/* ---- 3: the end of the stream ------------------------------------------------------------ */

Test(tlsfd, close_notify_reads_as_end_of_stream_after_all_data, .init = fx_init, .fini = fx_fini,
     .timeout = 30)
{
    pair_open(0);
    const size_t len = 20000;
    const uint8_t *data = random_bytes(len);
    peer_write(data, len);
    cr_assert_geq(SSL_shutdown(F.c.server), 0);
    read_to_end(data, len);
    /* The end stays the end: polled again it is readable and reads 0. */
    struct pollfd p = {F.c.fd, POLLIN, 0};
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, 0), 1);
    cr_assert(p.revents & POLLIN);
    char c;
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), &c, 1, 0), 0);
}

Test(tlsfd, tcp_close_without_close_notify_reads_as_end_of_stream, .init = fx_init, .fini = fx_fini,
     .timeout = 30)
{
    pair_open(0);
    const size_t len = 20000;
    const uint8_t *data = random_bytes(len);
    peer_write(data, len);
    /* The proxy's process dies: no close_notify, the kernel ends the connection. */
    SSL_free(F.c.server);
    F.c.server = NULL;
    close(F.c.server_fd);
    F.c.server_fd = -1;
    read_to_end(data, len);
}

/* ---- 4: closing --------------------------------------------------------------------------- */

Test(tlsfd, close_flushes_the_queue_sends_close_notify_and_returns_within_linger, .init = fx_init,
     .fini = fx_fini, .timeout = 60)
{
    pair_open(SMALL_SOCKBUF);
    F.len = 3 * MiB;
    F.src = random_bytes(F.len);
    F.read_size = 16 * 1024;
    F.wait_fin = true; /* the proxy never sends its own close_notify */
    start_peer(peer_reader);
    for (size_t off = 0; off < F.len; off += 64 * 1024)
        cr_assert_eq(tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), F.src + off, 64 * 1024), 64 * 1024);
    struct pollfd p = {F.c.fd, POLLOUT, 0};
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, 0), 0, "over 1 MiB should be queued here");
    cr_assert(tsh_tlsfd_any());

    go_signal();
    const int linger = 1500;
    uint64_t t0 = rp_mono_ms();
    cr_assert(tsh_tlsfd_close(F.c.fd, linger), "the tlsfd was not registered");
    uint64_t took = rp_mono_ms() - t0;
    cr_assert_not(tsh_tlsfd_get(F.c.fd) != NULL);
    cr_assert_not(tsh_tlsfd_any());
    join_peer();
    cr_assert_not(F.go_timeout);
    cr_assert_eq(F.mismatch_at, -1, "the proxy read different bytes from offset %ld",
                 F.mismatch_at);
    cr_assert_eq(F.got, F.len, "the queue was not flushed: the proxy read %zu of %zu bytes", F.got,
                 F.len);
    cr_assert(F.zero_return, "the proxy's read ended with %d, not close_notify", F.ssl_error);
    cr_assert(F.saw_fin, "the TCP connection did not end after close");
    cr_assert_lt(took, (uint64_t)linger + 2000, "close took %llu ms with a linger of %d ms",
                 (unsigned long long)took, linger);
    cr_log_info("close with an unanswered close_notify took %llu ms (linger %d ms)",
                (unsigned long long)took, linger);
}

Test(tlsfd, close_returns_within_linger_when_the_proxy_reads_nothing, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    pair_open(SMALL_SOCKBUF);
    const size_t len = 3 * MiB;
    const uint8_t *data = random_bytes(len);
    for (size_t off = 0; off < len; off += 64 * 1024)
        cr_assert_eq(tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), data + off, 64 * 1024), 64 * 1024);
    /* The queue can never drain: close gives up at its linger and still frees it all. */
    const int linger = 500;
    uint64_t t0 = rp_mono_ms();
    cr_assert(tsh_tlsfd_close(F.c.fd, linger));
    uint64_t took = rp_mono_ms() - t0;
    cr_assert_not(tsh_tlsfd_any());
    cr_assert_lt(took, (uint64_t)linger + 2000, "close took %llu ms with a linger of %d ms",
                 (unsigned long long)took, linger);
}

static atomic_bool stop_streaming;

/* Peer thread: sends as fast as it can until stop_streaming or the connection fails. */
static void *peer_streamer(void *arg)
{
    (void)arg;
    static uint8_t block[64 * 1024];
    while (!atomic_load(&stop_streaming)) {
        int w = SSL_write(F.c.server, block, sizeof block);
        if (w <= 0 || rp_tls_gather_push(F.c.server) != 1)
            break;
    }
    return NULL;
}

Test(tlsfd, close_returns_within_linger_while_the_proxy_keeps_sending, .init = fx_init,
     .fini = fx_fini, .timeout = 60)
{
    pair_open(0);
    start_peer(peer_streamer);
    uint64_t t0 = rp_mono_ms();
    bool ok = tsh_tlsfd_close(F.c.fd, 300);
    uint64_t took = rp_mono_ms() - t0;
    atomic_store(&stop_streaming, true);
    join_peer();
    cr_log_info("close while the proxy streams took %llu ms (linger 300 ms)",
                (unsigned long long)took);
    cr_assert(ok);
    /* close reads and drops what comes until the proxy's close_notify, but only for
     * its linger: a proxy that keeps sending does not hold it. */
    cr_assert_lt(took, 300 + 2000, "close took %llu ms with a linger of 300 ms",
                 (unsigned long long)took);
}

Test(tlsfd, close_of_an_ordinary_descriptor_returns_false_and_leaves_it_open, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    pair_open(0); /* a tlsfd is open: the registry is searched, not skipped */
    cr_assert_eq(pipe2(F.pipe, O_CLOEXEC), 0);
    cr_assert_not(tsh_tlsfd_close(F.pipe[0], 100));
    cr_assert_not(tsh_tlsfd_close(F.pipe[1], 100));
    cr_assert_neq(fcntl(F.pipe[0], F_GETFD), -1, "tsh_tlsfd_close closed a pipe");
    cr_assert_neq(fcntl(F.pipe[1], F_GETFD), -1, "tsh_tlsfd_close closed a pipe");
    char c = 0;
    cr_assert_eq(write(F.pipe[1], "x", 1), 1);
    cr_assert_eq(read(F.pipe[0], &c, 1), 1);
    cr_assert_eq(c, 'x', "the pipe no longer works");
    cr_assert((tsh_tlsfd_get(F.c.fd) != NULL), "the tlsfd itself was touched");
    cr_assert_not(tsh_tlsfd_close(-1, 0));
}

/* ---- 5: poll sets mixing tlsfds and other descriptors ------------------------------------ */

Test(tlsfd, poll_mixing_a_tlsfd_and_a_pipe_reports_each_ones_readiness, .init = fx_init,
     .fini = fx_fini, .timeout = 60)
{
    pair_open(0);
    cr_assert_eq(pipe2(F.pipe, O_CLOEXEC), 0);
    struct pollfd p[2];
    char buf[LIBSSH_READ];
    uint8_t block[8192];
    cr_assert_eq(RAND_bytes(block, sizeof block), 1);

    /* only the pipe */
    cr_assert_eq(write(F.pipe[1], "x", 1), 1);
    p[0] = (struct pollfd){F.c.fd, POLLIN, 0};
    p[1] = (struct pollfd){F.pipe[0], POLLIN, 0};
    cr_assert_eq(tsh_tlsfd_poll(p, 2, STEP_MS), 1);
    cr_assert_eq(p[0].revents, 0, "the tlsfd polled %#x with nothing sent", p[0].revents);
    cr_assert(p[1].revents & POLLIN);
    cr_assert_eq(read(F.pipe[0], buf, 1), 1);

    /* only the tlsfd */
    peer_write(block, sizeof block);
    p[0] = (struct pollfd){F.c.fd, POLLIN, 0};
    p[1] = (struct pollfd){F.pipe[0], POLLIN, 0};
    cr_assert_eq(tsh_tlsfd_poll(p, 2, STEP_MS), 1);
    cr_assert(p[0].revents & POLLIN);
    cr_assert_eq(p[1].revents, 0, "the empty pipe polled %#x", p[1].revents);
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), LIBSSH_READ);
    cr_assert_eq(memcmp(buf, block, LIBSSH_READ), 0);

    /* both: decrypted bytes still wait in the tlsfd, and the pipe has a byte */
    cr_assert_eq(write(F.pipe[1], "y", 1), 1);
    p[0] = (struct pollfd){F.c.fd, POLLIN, 0};
    p[1] = (struct pollfd){F.pipe[0], POLLIN, 0};
    cr_assert_eq(tsh_tlsfd_poll(p, 2, STEP_MS), 2);
    cr_assert(p[0].revents & POLLIN);
    cr_assert(p[1].revents & POLLIN);
    cr_assert_eq(read(F.pipe[0], buf, 1), 1);

    /* the tlsfd alone again: its waiting bytes answer at once, the pipe is not waited for */
    p[0] = (struct pollfd){F.c.fd, POLLIN, 0};
    p[1] = (struct pollfd){F.pipe[0], POLLIN, 0};
    uint64_t t0 = rp_mono_ms();
    cr_assert_eq(tsh_tlsfd_poll(p, 2, STEP_MS), 1);
    uint64_t took = rp_mono_ms() - t0;
    cr_assert(p[0].revents & POLLIN);
    cr_assert_eq(p[1].revents, 0);
    cr_assert_lt(took, STEP_MS / 2, "poll waited %llu ms though the tlsfd had bytes",
                 (unsigned long long)took);
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), LIBSSH_READ);
    cr_assert_eq(memcmp(buf, block + LIBSSH_READ, LIBSSH_READ), 0);
}

Test(tlsfd, poll_with_nothing_ready_returns_0_after_the_timeout, .init = fx_init, .fini = fx_fini,
     .timeout = 30)
{
    pair_open(0);
    cr_assert_eq(pipe2(F.pipe, O_CLOEXEC), 0);
    struct pollfd p[2] = {{F.c.fd, POLLIN, 0}, {F.pipe[0], POLLIN, 0}};
    uint64_t t0 = rp_mono_ms();
    int rc = tsh_tlsfd_poll(p, 2, 300);
    uint64_t mixed_ms = rp_mono_ms() - t0;
    short re0 = p[0].revents, re1 = p[1].revents;
    cr_assert_eq(rc, 0);
    cr_assert_eq(re0, 0);
    cr_assert_eq(re1, 0);
    cr_assert_lt(mixed_ms, 3000, "a 300 ms poll took %llu ms", (unsigned long long)mixed_ms);

    struct pollfd one = {F.c.fd, POLLIN, 0};
    t0 = rp_mono_ms();
    rc = tsh_tlsfd_poll(&one, 1, 300);
    uint64_t alone_ms = rp_mono_ms() - t0;
    cr_assert_eq(rc, 0);
    cr_assert_eq(one.revents, 0);
    cr_assert_lt(alone_ms, 3000, "a 300 ms poll took %llu ms", (unsigned long long)alone_ms);
}

Test(tlsfd, poll_sets_larger_than_16_are_translated_too, .init = fx_init, .fini = fx_fini,
     .timeout = 30)
{
    pair_open(0);
    cr_assert_eq(pipe2(F.pipe, O_CLOEXEC), 0);
    struct pollfd p[20];
    for (int i = 0; i < 19; i++)
        p[i] = (struct pollfd){F.pipe[0], POLLIN, 0};
    p[19] = (struct pollfd){F.c.fd, POLLIN, 0};
    cr_assert_eq(tsh_tlsfd_poll(p, 20, 100), 0);
    peer_write((const uint8_t *)"twenty", 6);
    /* No timeout: only the tlsfd's readiness may end this poll. */
    cr_assert_eq(tsh_tlsfd_poll(p, 20, -1), 1);
    for (int i = 0; i < 19; i++)
        cr_assert_eq(p[i].revents, 0, "entry %d (the empty pipe) polled %#x", i, p[i].revents);
    cr_assert(p[19].revents & POLLIN);
    char buf[8];
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), buf, sizeof buf, 0), 6);
    cr_assert_eq(memcmp(buf, "twenty", 6), 0);
}

/* ---- 6: a proxy that vanished ------------------------------------------------------------ */

/* Sends until the tlsfd reports the connection failed; asserts that is -1/EPIPE within
 * STEP_MS, and that the tlsfd then reads as ended and still closes. */
static void send_until_epipe(void)
{
    uint8_t block[64 * 1024];
    memset(block, 'z', sizeof block);
    uint64_t until = rp_mono_ms() + STEP_MS;
    ssize_t n;
    size_t accepted = 0;
    for (;;) {
        errno = 0;
        n = tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), block, sizeof block);
        if (n < 0)
            break;
        cr_assert_gt(n, 0);
        accepted += (size_t)n;
        if ((size_t)n < sizeof block) {
            /* Records went out before the socket failed: a socket's short count, after
             * which the connection is failed for good. */
            errno = 0;
            n = tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), block, sizeof block);
            cr_assert_eq(n, -1, "a short send (the connection failed) then accepted %zd", n);
            break;
        }
        cr_assert_lt(rp_mono_ms(), until, "send still accepted bytes %d ms after the proxy left",
                     STEP_MS);
        struct pollfd p = {F.c.fd, POLLOUT, 0};
        cr_assert_geq(tsh_tlsfd_poll(&p, 1, 50), 0); /* drives the queue into the socket */
    }
    cr_assert_eq(errno, EPIPE, "send failed with %s, not EPIPE", strerror(errno));
    cr_log_info("send failed after %zu bytes were accepted", accepted);
    errno = 0;
    cr_assert_eq(tsh_tlsfd_send(tsh_tlsfd_get(F.c.fd), block, 1), -1,
                 "a failed tlsfd stays failed");
    cr_assert_eq(errno, EPIPE);
    struct pollfd p = {F.c.fd, POLLIN | POLLOUT, 0};
    cr_assert_eq(tsh_tlsfd_poll(&p, 1, STEP_MS), 1);
    cr_assert(p.revents & POLLIN, "the end of the stream polls readable");
    char c;
    cr_assert_eq(tsh_tlsfd_recv(tsh_tlsfd_get(F.c.fd), &c, 1, 0), 0);
    uint64_t t0 = rp_mono_ms();
    cr_assert(tsh_tlsfd_close(F.c.fd, 5000));
    cr_assert_lt(rp_mono_ms() - t0, 2500, "closing a failed connection waited for it");
}

Test(tlsfd, send_after_the_proxy_reset_fails_with_epipe_without_sigpipe, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    pair_open(0);
    struct linger lg = {1, 0}; /* close() sends a reset */
    cr_assert_eq(setsockopt(F.c.server_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    SSL_free(F.c.server);
    F.c.server = NULL;
    close(F.c.server_fd);
    F.c.server_fd = -1;
    send_until_epipe();
}

Test(tlsfd, send_after_the_proxy_closed_fails_with_epipe_without_sigpipe, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    pair_open(0);
    SSL_free(F.c.server);
    F.c.server = NULL;
    close(F.c.server_fd); /* a plain end of file; what tsh sends next is answered by a reset */
    F.c.server_fd = -1;
    send_until_epipe();
}

/* ---- the registry ------------------------------------------------------------------------- */

Test(tlsfd, the_registry_knows_open_tlsfds_and_forgets_closed_ones, .init = fx_init,
     .fini = fx_fini, .timeout = 30)
{
    cr_assert(tsh_tlsfd_enabled());
    cr_assert_not(tsh_tlsfd_any());
    cr_assert_not(tsh_tlsfd_get(0) != NULL);
    pair_connect(0);
    int tcp = F.c.client_tcp;
    cr_assert_not(tsh_tlsfd_get(tcp) != NULL);
    conn_open(&F.c);
    cr_assert(tsh_tlsfd_any());
    cr_assert(tsh_tlsfd_get(F.c.fd) != NULL);
    cr_assert_neq(F.c.fd, tcp, "libssh gets a descriptor of its own, not the TCP socket");
    cr_assert_not(tsh_tlsfd_get(tcp) != NULL);
    cr_assert_not(tsh_tlsfd_get(-1) != NULL);
    cr_assert(tsh_tlsfd_close(F.c.fd, 0));
    cr_assert_not(tsh_tlsfd_get(F.c.fd) != NULL);
    cr_assert_not(tsh_tlsfd_any());
    cr_assert_not(tsh_tlsfd_close(F.c.fd, 0), "a tlsfd closes once");
}

Test(tlsfd, open_refuses_until_an_interposer_enabled_tlsfds, .init = fx_init_disabled,
     .fini = fx_fini, .timeout = 30)
{
    cr_assert_not(tsh_tlsfd_enabled());
    pair_connect(0);
    int fd = -1;
    cr_assert_eq(tsh_tlsfd_open(F.c.client, F.c.client_tcp, &fd), RP_EIO);
    cr_assert_eq(fd, -1);
    cr_assert_not(tsh_tlsfd_any());
    /* Nothing was taken: the SSL still works on its socket (and fx_fini frees both). */
    peer_write((const uint8_t *)"still mine", 10);
    char buf[16];
    int r = SSL_read(F.c.client, buf, sizeof buf);
    cr_assert_eq(r, 10);
    cr_assert_eq(memcmp(buf, "still mine", 10), 0);
    cr_assert_eq(fcntl(F.c.client_tcp, F_GETFD) != -1, true);
}

Test(tlsfd, open_refuses_a_ninth_tlsfd_and_leaves_it_to_its_caller, .init = fx_init,
     .fini = fx_fini, .timeout = 60)
{
    pair_open(0);
    for (int i = 0; i < MAX_TLSFDS - 1; i++) {
        conn_connect(&F.extra[i], 0);
        conn_open(&F.extra[i]);
        cr_assert(tsh_tlsfd_get(F.extra[i].fd) != NULL);
        cr_assert_neq(F.extra[i].fd, F.c.fd);
    }
    struct conn *ninth = &F.extra[MAX_TLSFDS - 1];
    conn_connect(ninth, 0);
    int fd = -1;
    cr_assert_eq(tsh_tlsfd_open(ninth->client, ninth->client_tcp, &fd), RP_EIO);
    cr_assert_eq(fd, -1);
    /* Nothing was taken: the refused SSL still works on its socket. */
    cr_assert_eq(SSL_write(ninth->server, "ninth", 5), 5);
    cr_assert_eq(rp_tls_gather_push(ninth->server), 1);
    char buf[8];
    cr_assert_eq(SSL_read(ninth->client, buf, sizeof buf), 5);
    cr_assert_eq(memcmp(buf, "ninth", 5), 0);
    /* A closed tlsfd frees its slot; the others stay registered. */
    cr_assert(tsh_tlsfd_close(F.extra[0].fd, 0));
    F.extra[0].fd = -1;
    conn_open(ninth);
    cr_assert(tsh_tlsfd_get(ninth->fd) != NULL);
    cr_assert(tsh_tlsfd_get(F.c.fd) != NULL);
    for (int i = 1; i < MAX_TLSFDS - 1; i++)
        cr_assert(tsh_tlsfd_get(F.extra[i].fd) != NULL);
}
