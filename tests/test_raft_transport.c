/* tests/test_raft_transport.c: the mutual-TLS raft transport under a real cluster
 * of three nodes on 127.0.0.1, and against peers that must be refused: a node of
 * another CA, raw TLS clients with a foreign certificate, with a cluster
 * certificate lacking the Auth role or with none, plaintext garbage and a peer
 * that says nothing. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/tls.h"
#include "raft/rp_raft.h"
#include "tests/lib/raft_helpers.h"

static struct rt_cluster C;       /* the cluster under test */
static struct rt_cluster FOREIGN; /* a node of another CA */

static void teardown(void)
{
    if (C.root != NULL)
        rt_cluster_destroy(&C);
    if (FOREIGN.root != NULL)
        rt_cluster_destroy(&FOREIGN);
}

static struct rp_node_status status_of(struct rp_node *n)
{
    struct rp_node_status st;
    cr_assert_eq(rp_node_status(n, &st), 0, "status: %s", rp_errmsg());
    return st;
}

static const struct rp_member *member(const struct rp_node_status *st, uint64_t id)
{
    for (unsigned i = 0; i < st->n_members; i++) {
        if (st->members[i].id == id)
            return &st->members[i];
    }
    return NULL;
}

static void apply_range(struct rp_node *n, uint64_t from, uint64_t to)
{
    for (uint64_t v = from; v <= to; v++) {
        uint64_t result = 0;
        int rv = rt_apply_u64(n, v, 5000, &result);
        cr_assert_eq(rv, 0, "apply %llu: %s (%s)", (unsigned long long)v, rp_strerror(rv),
                     rp_errmsg());
        cr_assert_eq(result, v, "apply %llu returned count %llu", (unsigned long long)v,
                     (unsigned long long)result);
    }
}

static void assert_sums(uint64_t want)
{
    for (unsigned i = 0; i < C.n; i++) {
        uint64_t sum;
        if (C.nodes[i].node == NULL)
            continue;
        rt_fsm_read(&C.nodes[i].fsm, NULL, &sum);
        cr_assert_eq(sum, want, "node %u sum %llu, want %llu", i + 1, (unsigned long long)sum,
                     (unsigned long long)want);
    }
}

Test(raft_transport, three_nodes_replicate_transfer_on_stop_and_survive_a_lost_node,
     .fini = teardown, .timeout = 180)
{
    rt_cluster_init(&C, 3, "three");
    /* Elections take >= 2 s here, so a new leader within 1.5 s of a stop can only
     * come from a leadership transfer. */
    C.election_ms = 2000;
    C.heartbeat_ms = 100;
    /* Every connection, both ways, also binds the raft id to the certificate. */
    C.peer_check = rt_check_cn_is_node_id;
    cr_assert_eq(rt_node_start(&C, 0, true), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 0);
    for (unsigned i = 1; i < 3; i++) {
        cr_assert_eq(rt_node_start(&C, i, false), 0, "%s", rp_errmsg());
        int rv = rt_add_voter(&C, 0, i, 30000);
        cr_assert_eq(rv, 0, "node %u: %s (%s)", i + 1, rp_strerror(rv), rp_errmsg());
    }
    struct rp_node_status st = status_of(C.nodes[0].node);
    cr_assert_eq(st.n_members, 3);
    for (unsigned i = 0; i < 3; i++)
        cr_assert_eq(st.members[i].role, RP_MEMBER_VOTER, "member %llu is %s",
                     (unsigned long long)st.members[i].id, rp_member_role_name(st.members[i].role));

    apply_range(C.nodes[0].node, 1, 45);
    /* Large entries cross the TLS pump in many partial reads and writes. */
    static uint8_t big[300 * 1024];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)(i * 7);
    for (uint64_t i = 46; i <= 50; i++) {
        uint64_t result = 0;
        cr_assert_eq(rp_node_apply(C.nodes[0].node, big, sizeof big, 10000, rt_copy_u64, &result),
                     0, "%s", rp_errmsg());
        cr_assert_eq(result, i);
    }
    cr_assert(rt_wait_count(&C, 50, 10000), "all three FSMs applied 50 commands");
    assert_sums(45 * 46 / 2);

    /* Graceful stop of the leader hands leadership over. */
    struct rp_raft_transport_stats ts;
    rp_node_transport_stats(C.nodes[0].node, &ts);
    cr_assert_geq(ts.connected, 2, "the leader dialled both peers over TLS");
    cr_assert_geq(ts.accepted, 1);
    uint64_t t0 = rt_now_ms();
    rt_node_stop(&C, 0);
    int nl = rt_wait_leader(&C, 10000);
    uint64_t elapsed = rt_now_ms() - t0;
    cr_assert(nl == 1 || nl == 2, "a new leader among the remaining nodes (got %d)", nl);
    cr_assert_lt(elapsed, 1500, "new leader after %llu ms: no transfer happened",
                 (unsigned long long)elapsed);

    apply_range(C.nodes[nl].node, 51, 70);
    cr_assert(rt_wait_count(&C, 70, 10000), "two of three still commit");

    /* The old leader rejoins as a follower and catches up. */
    cr_assert_eq(rt_node_start(&C, 0, false), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 70, 20000), "restarted node caught up");
    assert_sums(45 * 46 / 2 + (51 + 70) * 20 / 2);

    /* Lose a follower: the other two keep committing. */
    nl = rt_wait_leader(&C, 10000);
    cr_assert_geq(nl, 0);
    unsigned f = ((unsigned)nl + 1) % 3;
    rt_node_stop(&C, f);
    apply_range(C.nodes[nl].node, 71, 90);
    cr_assert(rt_wait_count(&C, 90, 10000));
    cr_assert_eq(rt_node_start(&C, f, false), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 90, 20000));
    assert_sums(45 * 46 / 2 + (51 + 90) * 40 / 2);
}

static bool stats_show_refusals(void *arg)
{
    struct rp_raft_transport_stats home, foreign;
    (void)arg;
    rp_node_transport_stats(C.nodes[0].node, &home);
    rp_node_transport_stats(FOREIGN.nodes[0].node, &foreign);
    return home.refused >= 3 && home.connect_failed >= 3 && foreign.refused >= 3 &&
           foreign.connect_failed >= 3;
}

Test(raft_transport, node_of_another_ca_is_refused_both_ways, .fini = teardown, .timeout = 60)
{
    rt_cluster_init(&C, 1, "home");
    rt_cluster_init(&FOREIGN, 1, "foreign");
    FOREIGN.nodes[0].id = 4;
    cr_assert_eq(rt_node_start(&C, 0, true), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_node_start(&FOREIGN, 0, true), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 0);
    cr_assert_eq(rt_wait_leader(&FOREIGN, 10000), 0);
    struct rp_node *home = C.nodes[0].node, *foreign = FOREIGN.nodes[0].node;
    uint64_t home_term = status_of(home).term, foreign_term = status_of(foreign).term;

    /* Each side believes the other is a member and tries to replicate to it. */
    cr_assert_eq(rp_node_add(home, 4, FOREIGN.nodes[0].addr, 5000), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_node_add(foreign, 1, C.nodes[0].addr, 5000), 0, "%s", rp_errmsg());
    cr_assert(rt_wait(stats_show_refusals, NULL, 20000), "both sides refused the other");

    struct rp_raft_transport_stats hs, fs;
    rp_node_transport_stats(home, &hs);
    rp_node_transport_stats(foreign, &fs);
    cr_assert_eq(hs.accepted, 0, "no connection from the foreign node reached libraft");
    cr_assert_eq(hs.connected, 0);
    cr_assert_eq(fs.accepted, 0);
    cr_assert_eq(fs.connected, 0);

    struct rp_node_status st = status_of(home);
    cr_assert_eq(st.state, RAFT_LEADER);
    cr_assert(st.ready);
    cr_assert_eq(st.term, home_term, "no raft message from the foreign node was processed");
    const struct rp_member *m = member(&st, 4);
    cr_assert_not_null(m);
    cr_assert_neq(m->role, RP_MEMBER_VOTER);
    cr_assert_eq(m->match_index, 0);
    st = status_of(foreign);
    cr_assert_eq(st.term, foreign_term);
    cr_assert_eq(rt_apply_u64(home, 1, 5000, NULL), 0, "the cluster stays healthy: %s",
                 rp_errmsg());
}

/* ---- raw clients ---------------------------------------------------------------- */

static int port_of(const char *addr)
{
    const char *colon = strrchr(addr, ':');
    return atoi(colon + 1);
}

static int tcp_dial(const char *addr)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port_of(addr))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect %s: %s", addr,
                 strerror(errno));
    struct timeval tv = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

/* A TLS 1.3 client that trusts anything and presents @cert (may be NULL). */
static SSL_CTX *raw_ctx(X509 *cert, EVP_PKEY *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    cr_assert_not_null(ctx);
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (cert != NULL) {
        cr_assert_eq(SSL_CTX_use_certificate(ctx, cert), 1);
        cr_assert_eq(SSL_CTX_use_PrivateKey(ctx, key), 1);
    }
    return ctx;
}

static void put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Our transport preamble claiming raft id @id at @addr, followed by a libraft
 * AppendEntries heartbeat for @term: if it reached libraft, the node's term
 * would jump to @term. Returns the length written to @out (>= 160 bytes). */
static size_t forged_stream(uint8_t *out, uint64_t id, const char *addr, uint64_t term)
{
    size_t alen = strlen(addr), off = 0;
    put_be(out, 0x52505246u, 4);
    put_be(out + 4, 1, 2);
    put_be(out + 6, id, 8);
    put_be(out + 14, alen, 2);
    memcpy(out + 16, addr, alen);
    off = 16 + alen;
    put_le64(out + off, 1); /* RAFT_IO_APPEND_ENTRIES */
    put_le64(out + off + 8, 48);
    off += 16;
    put_le64(out + off, term);
    for (int i = 1; i < 6; i++)
        put_le64(out + off + 8 * i, 0); /* prev index/term, commit, no entries */
    return off + 48;
}

/* Connects with @ctx, sends the forged stream and reports whether the server
 * accepted the preamble (sent its 5-byte reply) or cut the connection. */
static bool raw_tls_attempt(SSL_CTX *ctx, const char *addr, uint64_t claim_id, uint64_t term)
{
    int fd = tcp_dial(addr);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    bool accepted = false;
    if (SSL_connect(ssl) == 1) {
        uint8_t buf[256];
        size_t n = forged_stream(buf, claim_id, "127.0.0.1:1", term);
        /* In TLS 1.3 the client finishes before the server has judged its
         * certificate: the refusal shows up on the first read. */
        SSL_write(ssl, buf, (int)n);
        uint8_t ack[5];
        int r = SSL_read(ssl, ack, sizeof ack);
        if (r == 5 && memcmp(ack, "RPRA\0", 5) == 0)
            accepted = true;
        else
            cr_assert(r <= 0 && errno != EAGAIN && errno != EWOULDBLOCK,
                      "the server must close the connection, not stall");
    }
    ERR_clear_error();
    SSL_free(ssl);
    close(fd);
    return accepted;
}

struct refused_arg {
    struct rp_node *n;
    uint64_t want;
};

static bool refused_at_least(void *p)
{
    struct refused_arg *a = p;
    struct rp_raft_transport_stats s;
    rp_node_transport_stats(a->n, &s);
    return s.refused >= a->want;
}

static bool term_at_least_1000(void *p)
{
    struct rp_node_status st;
    return rp_node_status(p, &st) == 0 && st.term >= 1000;
}

Test(raft_transport, raw_clients_without_auth_identity_never_reach_libraft, .fini = teardown,
     .timeout = 60)
{
    /* Our raw clients write to sockets the server has already cut. */
    signal(SIGPIPE, SIG_IGN);
    rt_cluster_init(&C, 1, "raw");
    C.peer_check = rt_check_cn_is_node_id;
    cr_assert_eq(rt_node_start(&C, 0, true), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 0);
    struct rp_node *n = C.nodes[0].node;
    const char *addr = C.nodes[0].addr;
    uint64_t term = status_of(n).term;
    struct refused_arg ra = {.n = n};

    /* A peer that connects and says nothing is dropped at the handshake deadline;
     * it runs alongside the others. */
    int silent = tcp_dial(addr);

    /* Certificate from another CA (with the Auth role). */
    struct rt_pki other;
    rt_pki_new(&other, "other");
    EVP_PKEY *k;
    X509 *x;
    rt_pki_issue(&other, "node-66", RP_ROLE_AUTH, &k, &x);
    SSL_CTX *ctx = raw_ctx(x, k);
    cr_assert_not(raw_tls_attempt(ctx, addr, 66, 1000), "foreign CA accepted");
    SSL_CTX_free(ctx);
    EVP_PKEY_free(k);
    X509_free(x);
    rt_pki_free(&other);
    ra.want = 1;
    cr_assert(rt_wait(refused_at_least, &ra, 5000));

    /* The cluster's CA, but a proxy's role. */
    rt_pki_issue(&C.pki, "proxy-1", RP_ROLE_PROXY, &k, &x);
    ctx = raw_ctx(x, k);
    cr_assert_not(raw_tls_attempt(ctx, addr, 66, 1000), "certificate without Auth accepted");
    SSL_CTX_free(ctx);
    EVP_PKEY_free(k);
    X509_free(x);
    ra.want = 2;
    cr_assert(rt_wait(refused_at_least, &ra, 5000));

    /* No certificate at all. */
    ctx = raw_ctx(NULL, NULL);
    cr_assert_not(raw_tls_attempt(ctx, addr, 66, 1000), "anonymous client accepted");
    SSL_CTX_free(ctx);
    ra.want = 3;
    cr_assert(rt_wait(refused_at_least, &ra, 5000));

    /* Plaintext: an HTTP request followed by raft bytes. */
    {
        int fd = tcp_dial(addr);
        uint8_t buf[256];
        const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        size_t n0 = strlen(http);
        memcpy(buf, http, n0);
        size_t n1 = forged_stream(buf + n0, 66, "127.0.0.1:1", 1000);
        ssize_t w = write(fd, buf, n0 + n1);
        cr_assert_eq((size_t)w, n0 + n1);
        char tmp[512];
        ssize_t r;
        do {
            r = read(fd, tmp, sizeof tmp);
        } while (r > 0);
        cr_assert(r == 0 || errno == ECONNRESET, "plaintext peer was not cut off: %s",
                  strerror(errno));
        close(fd);
    }
    ra.want = 4;
    cr_assert(rt_wait(refused_at_least, &ra, 5000));

    /* The silent peer is dropped once the 5 s handshake deadline passes. */
    ra.want = 5;
    cr_assert(rt_wait(refused_at_least, &ra, 10000), "silent peer not dropped");
    char tmp[16];
    ssize_t r = read(silent, tmp, sizeof tmp);
    cr_assert(r == 0 || (r < 0 && errno == ECONNRESET), "silent peer's socket closed");
    close(silent);

    /* A cluster Auth certificate, but claiming another server's raft id. */
    rt_pki_issue(&C.pki, "node-66", RP_ROLE_AUTH, &k, &x);
    ctx = raw_ctx(x, k);
    cr_assert_not(raw_tls_attempt(ctx, addr, 67, 1000), "id not bound to the certificate");
    ra.want = 6;
    cr_assert(rt_wait(refused_at_least, &ra, 5000));

    struct rp_raft_transport_stats s;
    rp_node_transport_stats(n, &s);
    cr_assert_eq(s.accepted, 0, "no refused connection was handed to libraft");
    struct rp_node_status st = status_of(n);
    cr_assert_eq(st.term, term, "no forged raft message was processed");
    cr_assert_eq(st.state, RAFT_LEADER);
    cr_assert_eq(rt_apply_u64(n, 1, 5000, NULL), 0, "%s", rp_errmsg());

    /* Control: the same bytes from a peer with a cluster Auth certificate do reach
     * libraft (and move its term), so the checks above were what stopped them. */
    cr_assert(raw_tls_attempt(ctx, addr, 66, 1000), "a valid Auth peer is accepted");
    SSL_CTX_free(ctx);
    EVP_PKEY_free(k);
    X509_free(x);
    cr_assert(rt_wait(term_at_least_1000, n, 5000), "the forged heartbeat reached libraft");
    rp_node_transport_stats(n, &s);
    cr_assert_eq(s.accepted, 1);
}

/* A listener that never accepts: connections complete in the kernel backlog and
 * then hear nothing, so a TLS handshake against it hangs until its deadline. */
static int blackhole_listen(char *addr, size_t len)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t sl = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 16), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
    snprintf(addr, len, "127.0.0.1:%d", ntohs(sa.sin_port));
    return fd;
}

static bool has_pending_connection(void *p)
{
    struct pollfd pf = {.fd = *(int *)p, .events = POLLIN};
    return poll(&pf, 1, 0) == 1;
}

Test(raft_transport, stop_cancels_pending_handshakes_both_ways, .fini = teardown, .timeout = 60)
{
    rt_cluster_init(&C, 1, "cancel");
    cr_assert_eq(rt_node_start(&C, 0, true), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 0);

    /* Outbound: a member whose address answers TCP but never TLS. */
    char hole[64];
    int lfd = blackhole_listen(hole, sizeof hole);
    cr_assert_eq(rp_node_add(C.nodes[0].node, 5, hole, 5000), 0, "%s", rp_errmsg());
    cr_assert(rt_wait(has_pending_connection, &lfd, 10000), "the leader dials the member");
    /* Inbound: a peer that connects and never speaks. */
    int silent = tcp_dial(C.nodes[0].addr);

    /* Both handshakes would wait 5 s for their deadline; stop must not. */
    uint64_t t0 = rt_now_ms();
    rt_node_stop(&C, 0);
    uint64_t took = rt_now_ms() - t0;
    cr_assert_lt(took, 2000, "stop took %llu ms with handshakes pending", (unsigned long long)took);
    char tmp[8];
    ssize_t r = read(silent, tmp, sizeof tmp);
    cr_assert(r == 0 || (r < 0 && errno == ECONNRESET), "inbound handshake was dropped");
    close(silent);
    close(lfd);
}
