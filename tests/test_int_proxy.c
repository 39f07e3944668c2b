/* tests/test_int_proxy.c: `raftport start --roles=proxy` against a real cluster.
 *
 * The proxy joins with a proxy token and heartbeats its presence; its web port refuses
 * what is not TLS with a clear answer, an unknown ALPN protocol with a TLS alert, and a
 * teleport-proxy-ssh client without a user certificate; a flood of connections that
 * never speak is capped while a real client still gets in; "teleport-auth@" connections
 * reach auth with the client's own mutual TLS; a dial frame reaches a real node agent
 * and then carries its SSH bytes, and unknown or forbidden targets get their codes; an
 * auth server on an older major version stops the proxy unless --skip-version-check. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth/client.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"
#include "tests/lib/proxy_proc.h"

static void teardown(void)
{
    px_stop_all();
    ag_stop_all();
    cluster_teardown();
}

TestSuite(proxy, .init = cluster_setup, .fini = teardown, .timeout = 180);

/* The openssl command's path (cl_run_argv does not search PATH). */
static const char *openssl_path(void)
{
    return access("/usr/bin/openssl", X_OK) == 0 ? "/usr/bin/openssl" : "/usr/local/bin/openssl";
}

/* ---- helpers ------------------------------------------------------------------------- */

/* Starts a one-node cluster and proxy 1 joined with a proxy token. */
static void start_proxy(void)
{
    cluster_start(1);
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    px_spawn(1);
    cr_assert(px_wait_ready(1, 40000), "the proxy did not start");
}

static int tcp_connect_from(const char *src_ip, const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t len;
    cr_assert_eq(rp_addr_parse(addr, &ss, &len), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    if (src_ip != NULL) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        inet_pton(AF_INET, src_ip, &src.sin_addr);
        cr_assert_eq(bind(fd, (struct sockaddr *)&src, sizeof src), 0, "bind %s", src_ip);
    }
    cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0, "connect %s: %s", addr,
                 strerror(errno));
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Everything the peer sends until it closes (at most @cap - 1 bytes), NUL-terminated. */
static size_t read_all(int fd, char *buf, size_t cap)
{
    size_t got = 0;
    while (got + 1 < cap) {
        ssize_t n = read(fd, buf + got, cap - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    buf[got] = '\0';
    return got;
}

/* The cluster CA (node 1's data_dir). */
static X509 *cluster_ca(void)
{
    char path[600];
    X509 *ca = NULL;
    snprintf(path, sizeof path, "%s/keys/ca.crt", CL->nodes[1].dir);
    cr_assert_eq(rp_tls_read_cert(path, &ca), 0, "%s", rp_errmsg());
    return ca;
}

/* A client context from `tctl auth sign --format=file` (NULL: no certificate, only
 * the CA) offering @alpn (wire format). */
static SSL_CTX *client_ctx(const char *user, const unsigned char *alpn, size_t alpn_len)
{
    X509 *ca = cluster_ca(), *cert = NULL;
    EVP_PKEY *key = NULL;
    if (user != NULL) {
        char path[600], *text = NULL;
        size_t n;
        snprintf(path, sizeof path, "%s/%s.id", CL->dir, user);
        cr_assert_eq(rp_read_file(path, 1 << 20, &text, &n), 0, "%s", rp_errmsg());
        const char *kb = strstr(text, "-----BEGIN OPENSSH PRIVATE KEY-----");
        const char *ke = kb ? strstr(kb, "-----END OPENSSH PRIVATE KEY-----") : NULL;
        const char *c1 = strstr(text, "-----BEGIN CERTIFICATE-----");
        const char *c2 = c1 ? strstr(c1 + 1, "-----BEGIN CERTIFICATE-----") : NULL;
        cr_assert(kb && ke && c1 && c2, "%s is not an identity file", path);
        cr_assert_eq(rp_ssh_privkey_parse(kb, (size_t)(ke - kb) + 33, &key, NULL), 0, "%s",
                     rp_errmsg());
        cr_assert_eq(rp_tls_cert_from_pem(c1, (size_t)(c2 - c1), &cert), 0);
        free(text);
    }
    SSL_CTX *ctx = rp_tls_client_ctx(ca, cert, key);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    if (alpn != NULL)
        cr_assert_eq(SSL_CTX_set_alpn_protos(ctx, alpn, (unsigned)alpn_len), 0);
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}

static const unsigned char alpn_ssh[] = "\x12teleport-proxy-ssh";

/* A TLS connection to proxy 1 (from @src_ip when not NULL); NULL if the handshake
 * failed, with the reason in @why. */
static SSL *tls_connect(SSL_CTX *ctx, const char *src_ip, char *why, size_t why_len)
{
    int fd = tcp_connect_from(src_ip, PX[1].web_addr);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    ERR_clear_error();
    if (SSL_connect(ssl) != 1) {
        ERR_error_string_n(ERR_get_error(), why, why_len);
        SSL_free(ssl);
        close(fd);
        return NULL;
    }
    return ssl;
}

static void tls_close(SSL *ssl)
{
    int fd = SSL_get_fd(ssl);
    SSL_free(ssl);
    close(fd);
}

static void ssl_read_exact(SSL *ssl, void *buf, size_t n)
{
    size_t got = 0;
    while (got < n) {
        int r = SSL_read(ssl, (char *)buf + got, (int)(n - got));
        cr_assert_gt(r, 0, "the proxy closed after %zu of %zu bytes", got, n);
        got += (size_t)r;
    }
}

/* Sends a dial frame {target, login, version} and reads the answer into @ans/@u
 * (destroy @u). */
static void dial_frame(SSL *ssl, const char *target, const char *login, struct rp_buf *ans,
                       msgpack_unpacked *u)
{
    struct rp_buf b;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "target", target);
    rp_mp_map_str(&m, "login", login);
    rp_mp_map_str(&m, "version", "0.1.0");
    rp_mp_map_end(&m);
    uint8_t hdr[4] = {(uint8_t)(b.len >> 24), (uint8_t)(b.len >> 16), (uint8_t)(b.len >> 8),
                      (uint8_t)b.len};
    cr_assert_eq(SSL_write(ssl, hdr, 4), 4);
    cr_assert_eq(SSL_write(ssl, b.data, (int)b.len), (int)b.len);
    rp_buf_free(&b);
    uint8_t h[4];
    ssl_read_exact(ssl, h, 4);
    uint32_t len = (uint32_t)h[0] << 24 | (uint32_t)h[1] << 16 | (uint32_t)h[2] << 8 | h[3];
    cr_assert(len > 0 && len <= 65536, "answer of %u bytes", len);
    rp_buf_init(ans);
    cr_assert_eq(rp_buf_reserve(ans, len), 0);
    ssl_read_exact(ssl, ans->data, len);
    ans->len = len;
    cr_assert_eq(rp_mp_parse(ans->data, ans->len, u), 0, "the answer is not msgpack");
}

/* The answer's string field @key as a C string (static buffer). */
static const char *field(const msgpack_object *m, const char *key)
{
    static char buf[4][1024];
    static int k;
    char *out = buf[k++ % 4];
    const char *s;
    size_t n;
    out[0] = '\0';
    if (rp_mp_get_str(m, key, &s, &n) == 0 && n < 1024) {
        memcpy(out, s, n);
        out[n] = '\0';
    }
    return out;
}

static bool answer_ok(const msgpack_object *m)
{
    bool ok = false;
    return rp_mp_get_bool(m, "ok", &ok) == 0 && ok;
}

/* One whole dial exchange: the answer's code ("" for ok) into @code. */
static void dial_code(SSL_CTX *ctx, const char *src_ip, const char *target, const char *login,
                      char *code, size_t n)
{
    char why[256];
    SSL *ssl = tls_connect(ctx, src_ip, why, sizeof why);
    cr_assert_not_null(ssl, "TLS handshake with the proxy failed: %s", why);
    struct rp_buf ans;
    msgpack_unpacked u;
    dial_frame(ssl, target, login, &ans, &u);
    snprintf(code, n, "%s", answer_ok(&u.data) ? "" : field(&u.data, "code"));
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&ans);
    tls_close(ssl);
}

/* `tctl users add NAME --roles=ROLES [--logins=LOGINS]` and its identity file. */
static void make_user(const char *user, const char *roles, const char *logins)
{
    char r[128], l[128], u[64], path[600], *out = NULL;
    snprintf(r, sizeof r, "--roles=%s", roles);
    snprintf(l, sizeof l, "--logins=%s", logins ? logins : "");
    snprintf(u, sizeof u, "--user=%s", user);
    snprintf(path, sizeof path, "%s/%s.id", CL->dir, user);
    cr_assert_eq(run_tctl(1, &out, "users", "add", user, r, logins ? l : NULL, NULL), 0,
                 "users add %s: %s", user, out);
    free(out);
    cr_assert_eq(run_tctl(1, &out, "auth", "sign", u, "--format=file", "-o", path, NULL), 0,
                 "auth sign %s: %s", user, out);
    free(out);
}

/* ---- presence ------------------------------------------------------------------------- */

struct presence {
    char host_id[64];
    char addr[128], tunnel_addr[128];
    bool found;
};

static bool proxy_listed(void *arg)
{
    struct presence *p = arg;
    struct auth_client *c = node_client(1);
    struct auth_reply r = {0};
    const msgpack_object *items = NULL;
    p->found = false;
    if (auth_client_list(c, "proxy", NULL, 0, 0, &r, &items, NULL) == 0 && items != NULL &&
        items->type == MSGPACK_OBJECT_ARRAY)
        for (uint32_t i = 0; i < items->via.array.size; i++) {
            const msgpack_object *res = &items->via.array.ptr[i];
            if (strcmp(field(rp_mp_get(res, "metadata"), "name"), p->host_id) != 0)
                continue;
            const msgpack_object *spec = rp_mp_get(res, "spec");
            snprintf(p->addr, sizeof p->addr, "%s", field(spec, "addr"));
            snprintf(p->tunnel_addr, sizeof p->tunnel_addr, "%s", field(spec, "tunnel_addr"));
            p->found = true;
        }
    auth_reply_free(&r);
    auth_client_free(c);
    return p->found;
}

Test(proxy, joins_with_a_proxy_token_and_heartbeats_its_presence)
{
    start_proxy();
    cr_assert(px_log_contains(1, "joined cluster"), "the proxy joined with its token");
    struct presence pr = {0};
    px_host_id(1, pr.host_id, sizeof pr.host_id);
    cr_assert(wait_until(15000, proxy_listed, &pr), "proxy/%s is not in presence", pr.host_id);
    cr_assert_str_eq(pr.addr, PX[1].web_addr);
    cr_assert_str_eq(pr.tunnel_addr, PX[1].tunnel_addr);
    /* Its certificate is a Proxy identity that names 127.0.0.1 (the default web
     * certificate): an OpenSSL client checking the host name accepts it. */
    SSL_CTX *ctx = client_ctx(NULL, alpn_ssh, sizeof alpn_ssh - 1);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    char why[256];
    int fd = tcp_connect_from(NULL, PX[1].web_addr);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    SSL_set1_host(ssl, "127.0.0.1");
    cr_assert_eq(SSL_connect(ssl), 1, "host name check of the web certificate failed: %s",
                 ERR_error_string(ERR_get_error(), why));
    struct rp_identity id;
    cr_assert_eq(rp_identity_from_cert(SSL_get0_peer_certificate(ssl), &id), 0);
    cr_assert_eq(id.system_role, RP_SYS_PROXY);
    rp_identity_free(&id);
    /* SIGTERM stops it cleanly, also while it holds connections in every state: this
     * TLS one waiting for its dial frame, a silent TCP one, and a pass-through to auth
     * (under AddressSanitizer, px_stop_all then finds no leak report in its log). */
    int silent = tcp_connect_from(NULL, PX[1].web_addr);
    char alpn[128];
    int an = snprintf(alpn + 1, sizeof alpn - 1, "teleport-auth@%s", CL->cluster_name);
    alpn[0] = (char)an;
    SSL_CTX *pctx = client_ctx(NULL, (const unsigned char *)alpn, (size_t)an + 1);
    const char *addrs[1] = {PX[1].web_addr};
    struct auth_client *c = NULL;
    struct auth_ping ping;
    cr_assert_eq(auth_client_new(&c, pctx, addrs, 1), 0);
    cr_assert_eq(auth_client_ping(c, &ping), 0, "ping through the pass-through: %s", rp_errmsg());
    int st = px_term(1, 10000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "exit status %d", st);
    auth_client_free(c);
    SSL_CTX_free(pctx);
    close(silent);
    tls_close(ssl);
    SSL_CTX_free(ctx);
    cluster_pass();
}

Test(proxy, https_keypairs_replace_the_web_certificate)
{
    cluster_start(1);
    char key[600], crt[600], subj[64];
    snprintf(key, sizeof key, "%s/web.key", CL->dir);
    snprintf(crt, sizeof crt, "%s/web.crt", CL->dir);
    snprintf(subj, sizeof subj, "/CN=proxy.example.com");
    char *argv[] = {(char *)openssl_path(),
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-keyout",
                    key,
                    "-out",
                    crt,
                    "-subj",
                    subj,
                    "-days",
                    "1",
                    NULL};
    struct cl_run r;
    cl_run_argv(argv, 30000, &r);
    cr_assert_eq(r.status, 0, "openssl req: %s", r.err);
    cl_run_free(&r);
    char token[128], extra[1400];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    snprintf(extra, sizeof extra, "  https_keypairs:\n  - {key_file: %s, cert_file: %s}\n", key,
             crt);
    px_prepare(1, token, extra);
    px_spawn(1);
    cr_assert(px_wait_ready(1, 40000), "the proxy did not start");
    /* A client that trusts nothing in particular sees the configured certificate, and
     * ALPN routing works as before. */
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_alpn_protos(ctx, alpn_ssh, sizeof alpn_ssh - 1);
    char why[256];
    SSL *ssl = tls_connect(ctx, NULL, why, sizeof why);
    cr_assert_not_null(ssl, "%s", why);
    char cn[128] = "";
    X509_NAME_get_text_by_NID(X509_get_subject_name(SSL_get0_peer_certificate(ssl)), NID_commonName,
                              cn, sizeof cn);
    cr_assert_str_eq(cn, "proxy.example.com");
    struct rp_buf ans;
    msgpack_unpacked u;
    dial_frame(ssl, "node1", "root", &ans, &u);
    cr_assert_str_eq(field(&u.data, "code"), "access_denied");
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&ans);
    tls_close(ssl);
    SSL_CTX_free(ctx);
    cluster_pass();
}

/* ---- bad input ------------------------------------------------------------------------ */

Test(proxy, garbage_and_unknown_alpn_and_missing_certificates_are_refused_clearly)
{
    start_proxy();
    char buf[4096];

    /* An SSH client on the TLS port is told where SSH goes. */
    int fd = tcp_connect_from(NULL, PX[1].web_addr);
    cr_assert_eq(write(fd, "SSH-2.0-OpenSSH_9.2\r\n", 21), 21);
    read_all(fd, buf, sizeof buf);
    close(fd);
    cr_assert(strstr(buf, "this is the TLS port; use ssh -J") != NULL, "answer: %s", buf);

    /* Plain HTTP gets a 400 saying to use https. */
    fd = tcp_connect_from(NULL, PX[1].web_addr);
    const char *get = "GET / HTTP/1.1\r\nHost: proxy\r\n\r\n";
    cr_assert_eq(write(fd, get, strlen(get)), (ssize_t)strlen(get));
    read_all(fd, buf, sizeof buf);
    close(fd);
    cr_assert(strncmp(buf, "HTTP/1.0 400", 12) == 0 && strstr(buf, "https") != NULL, "answer: %s",
              buf);

    /* Other bytes: closed without an answer. */
    fd = tcp_connect_from(NULL, PX[1].web_addr);
    cr_assert_eq(write(fd, "\x00\x01\x02garbage", 10), 10);
    cr_assert_eq(read_all(fd, buf, sizeof buf), 0);
    close(fd);

    /* Only protocols the port does not serve: a no_application_protocol alert. */
    static const unsigned char h2[] = "\x02h2\x08spdy/3.1";
    SSL_CTX *ctx = client_ctx(NULL, h2, sizeof h2 - 1);
    char why[256] = "";
    SSL *ssl = tls_connect(ctx, NULL, why, sizeof why);
    cr_assert_null(ssl, "a handshake offering only h2 succeeded");
    cr_assert(strstr(why, "no application protocol") != NULL, "refused with: %s", why);
    SSL_CTX_free(ctx);

    /* teleport-proxy-ssh without a certificate: the TLS handshake works (web clients
     * need none), the dial is refused as access_denied, saying to log in. */
    ctx = client_ctx(NULL, alpn_ssh, sizeof alpn_ssh - 1);
    ssl = tls_connect(ctx, NULL, why, sizeof why);
    cr_assert_not_null(ssl, "%s", why);
    struct rp_buf ans;
    msgpack_unpacked u;
    dial_frame(ssl, "node1", "root", &ans, &u);
    cr_assert_not(answer_ok(&u.data));
    cr_assert_str_eq(field(&u.data, "code"), "access_denied");
    cr_assert(strstr(field(&u.data, "error"), "tsh login") != NULL, "%s", field(&u.data, "error"));
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&ans);
    tls_close(ssl);

    /* A frame over 4096 bytes is refused before its body is read. */
    ssl = tls_connect(ctx, NULL, why, sizeof why);
    cr_assert_not_null(ssl, "%s", why);
    cr_assert_eq(SSL_write(ssl, "\x00\x10\x00\x00", 4), 4);
    uint8_t h[4];
    ssl_read_exact(ssl, h, 4);
    uint32_t alen = (uint32_t)h[2] << 8 | h[3];
    cr_assert(h[0] == 0 && h[1] == 0 && alen > 0 && alen < sizeof buf);
    ssl_read_exact(ssl, buf, alen);
    cr_assert_eq(rp_mp_parse(buf, alen, &u), 0);
    cr_assert_str_eq(field(&u.data, "code"), "version");
    cr_assert(strstr(field(&u.data, "error"), "1..4096") != NULL, "%s", field(&u.data, "error"));
    msgpack_unpacked_destroy(&u);
    tls_close(ssl);

    /* And `openssl s_client -alpn teleport-proxy-ssh` without a certificate, sending a
     * dial frame on its standard input, reads the refusal. */
    struct rp_buf frame;
    msgpack_packer fpk;
    struct rp_mp_map fm;
    rp_buf_init(&frame);
    rp_mp_packer_init(&fpk, &frame);
    rp_mp_map_begin(&fpk, &fm);
    rp_mp_map_str(&fm, "target", "node1");
    rp_mp_map_str(&fm, "login", "root");
    rp_mp_map_str(&fm, "version", "0.1.0");
    rp_mp_map_end(&fm);
    char script[2048], *o = script;
    o += sprintf(o, "printf '\\000\\000\\000\\%03o", (unsigned)frame.len);
    for (size_t i = 0; i < frame.len; i++)
        o += sprintf(o, "\\%03o", frame.data[i]);
    sprintf(
        o,
        "' | %s s_client -connect %s -alpn teleport-proxy-ssh -quiet -ign_eof 2>&1 | tr -d '\\000'",
        openssl_path(), PX[1].web_addr);
    rp_buf_free(&frame);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    struct cl_run r;
    cl_run_argv(argv, 30000, &r);
    cr_assert_neq(r.status, -1, "s_client hung");
    cr_assert(memmem(r.out, strlen(r.out), "access_denied", 13) != NULL,
              "s_client did not read the refusal: %s", r.out);
    cl_run_free(&r);

    /* The proxy is still healthy: a client handshake still works. */
    ssl = tls_connect(ctx, NULL, why, sizeof why);
    cr_assert_not_null(ssl, "after the bad input: %s", why);
    tls_close(ssl);
    SSL_CTX_free(ctx);
    cr_assert(px_alive(1));
    cr_assert(px_log_contains(1, "an SSH client on the TLS port"));
    cr_assert(px_log_contains(1, "no ALPN protocol this port serves"));
    cluster_pass();
}

Test(proxy, a_half_open_flood_from_one_address_is_capped_and_others_still_get_in)
{
    start_proxy();
    enum { FLOOD = 300 };
    static int fds[FLOOD];
    for (int i = 0; i < FLOOD; i++)
        fds[i] = tcp_connect_from("127.0.0.1", PX[1].web_addr);
    /* A client from another address is not slowed by the flood at all. */
    SSL_CTX *ctx = client_ctx(NULL, alpn_ssh, sizeof alpn_ssh - 1);
    char code[64];
    uint64_t t0 = rp_mono_ms();
    dial_code(ctx, "127.0.0.2", "node1", "root", code, sizeof code);
    cr_assert_str_eq(code, "access_denied", "the exchange completed");
    /* And one from the flooding address gets in too: the oldest silent ones make room. */
    dial_code(ctx, "127.0.0.1", "node1", "root", code, sizeof code);
    cr_assert_str_eq(code, "access_denied");
    cr_assert_lt(rp_mono_ms() - t0, 8000, "the legitimate clients waited for the flood");
    /* At most 64 of the silent connections are still open. */
    cl_sleep_ms(300);
    int open_ = 0;
    for (int i = 0; i < FLOOD; i++) {
        char b;
        ssize_t n = recv(fds[i], &b, 1, MSG_DONTWAIT);
        if (n < 0 && errno == EAGAIN)
            open_++;
        close(fds[i]);
    }
    cr_assert_leq(open_, 64, "%d silent connections from one address kept", open_);
    SSL_CTX_free(ctx);
    cr_assert(px_alive(1));
    cluster_pass();
}

/* Resident memory of process @pid in KiB (VmRSS). */
static long rss_kib(pid_t pid)
{
    char path[64], line[256];
    long kib = -1;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    fclose(f);
    return kib;
}

Test(proxy, an_idle_tls_connection_costs_the_proxy_little_memory)
{
    start_proxy();
    enum { N = 1000 };
    static SSL *conns[N];
    SSL_CTX *ctx = client_ctx(NULL, alpn_ssh, sizeof alpn_ssh - 1);
    char why[256];
    /* Warm up the allocator and the loops with a few first. */
    for (int i = 0; i < 20; i++) {
        SSL *s = tls_connect(ctx, NULL, why, sizeof why);
        cr_assert_not_null(s, "%s", why);
        tls_close(s);
    }
    cl_sleep_ms(200);
    long before = rss_kib(PX[1].pid);
    for (int i = 0; i < N; i++) {
        conns[i] = tls_connect(ctx, NULL, why, sizeof why);
        cr_assert_not_null(conns[i], "connection %d: %s", i, why);
    }
    cl_sleep_ms(200);
    long after = rss_kib(PX[1].pid);
    double per = (double)(after - before) * 1024.0 / N;
    cr_log_info("proxy RSS %ld KiB -> %ld KiB with %d idle TLS connections: %.0f bytes each",
                before, after, N, per);
    fprintf(stderr, "figure: %.0f bytes of proxy memory per idle TLS connection (%d open)\n", per,
            N);
#ifndef __SANITIZE_ADDRESS__
    /* (Under AddressSanitizer, redzones and the quarantine make the figure meaningless.) */
    cr_assert_lt(per, 64 * 1024.0, "%.0f bytes per idle connection", per);
#endif
    for (int i = 0; i < N; i++)
        tls_close(conns[i]);
    SSL_CTX_free(ctx);
    cr_assert(px_alive(1));
    cluster_pass();
}

/* ---- pass-through --------------------------------------------------------------------- */

Test(proxy, teleport_auth_alpn_reaches_auth_with_the_clients_own_mutual_tls)
{
    start_proxy();
    make_user("alice", "editor", NULL);
    char alpn[128];
    int n = snprintf(alpn + 1, sizeof alpn - 1, "teleport-auth@%s", CL->cluster_name);
    alpn[0] = (char)n;
    SSL_CTX *ctx = client_ctx("alice", (const unsigned char *)alpn, (size_t)n + 1);
    const char *addrs[1] = {PX[1].web_addr};
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, ctx, addrs, 1), 0);
    auth_client_set_timeout(c, 10000);
    /* A user-only method: it succeeds only if auth saw alice's certificate. */
    struct auth_reply r = {0};
    const msgpack_object *res = NULL;
    int rv = auth_client_get(c, "role", "editor", 0, &r, &res, NULL);
    cr_assert_eq(rv, 0, "get role/editor through the proxy: %s", rp_errmsg());
    cr_assert_str_eq(field(rp_mp_get(res, "metadata"), "name"), "editor");
    auth_reply_free(&r);
    struct auth_ping ping;
    cr_assert_eq(auth_client_ping(c, &ping), 0);
    cr_assert_str_eq(ping.cluster_name, CL->cluster_name);
    auth_client_free(c);
    SSL_CTX_free(ctx);
    /* Without a certificate, auth itself refuses what needs one: nothing of the
     * proxy's own identity is lent to the client. */
    ctx = client_ctx(NULL, (const unsigned char *)alpn, (size_t)n + 1);
    cr_assert_eq(auth_client_new(&c, ctx, addrs, 1), 0);
    auth_client_set_timeout(c, 10000);
    rv = auth_client_get(c, "role", "editor", 0, &r, &res, NULL);
    cr_assert_neq(rv, 0, "an anonymous client read a role through the pass-through");
    auth_reply_free(&r);
    auth_client_free(c);
    SSL_CTX_free(ctx);
    cluster_pass();
}

/* ---- dialing nodes ----------------------------------------------------------------------- */

struct known {
    SSL_CTX *ctx;
    char code[64];
};

static bool node_known(void *arg)
{
    struct known *k = arg;
    dial_code(k->ctx, NULL, "node1", "root", k->code, sizeof k->code);
    return strcmp(k->code, "not_found") != 0;
}

static bool bob_refused(void *arg)
{
    struct known *k = arg;
    dial_code(k->ctx, NULL, "node1", "root", k->code, sizeof k->code);
    return strcmp(k->code, "access_denied") == 0;
}

Test(proxy, a_dial_reaches_a_node_and_unknown_or_forbidden_targets_get_their_codes)
{
    start_proxy();
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare(1, token, NULL);
    ag_spawn(1);
    bool up = ag_wait_log(1, "node agent running", 30000);
    if (!up)
        ag_print_log_tail(1, 30);
    cr_assert(up, "the node agent did not start");
    make_user("bob", "access", "root");
    make_user("carol", "auditor", NULL);

    SSL_CTX *bob = client_ctx("bob", alpn_ssh, sizeof alpn_ssh - 1);
    struct known k = {.ctx = bob};
    cr_assert(wait_until(20000, node_known, &k), "the proxy never learned node1 (last: %s)",
              k.code);
    cr_assert_str_eq(k.code, "", "bob may reach node1 as root");

    /* ok: the node's published host key, then its SSH server's banner. */
    char why[256], host_id[64], pubpath[600], *pub = NULL;
    size_t pn;
    snprintf(pubpath, sizeof pubpath, "%s/keys/ssh_host_key.pub", AG[1].dir);
    cr_assert_eq(rp_read_file(pubpath, 65536, &pub, &pn), 0);
    pub[strcspn(pub, "\n")] = '\0';
    SSL *ssl = tls_connect(bob, NULL, why, sizeof why);
    cr_assert_not_null(ssl, "%s", why);
    struct rp_buf ans;
    msgpack_unpacked u;
    dial_frame(ssl, "node1", "root", &ans, &u);
    cr_assert(answer_ok(&u.data), "dial refused: %s", field(&u.data, "error"));
    cr_assert_str_eq(field(&u.data, "hostname"), "node1");
    cr_assert_str_eq(field(&u.data, "addr"), AG[1].ssh_addr);
    cr_assert_str_eq(field(&u.data, "host_key"), pub);
    cr_assert(strncmp(field(&u.data, "host_cert"), "ssh-ed25519-cert-v01@openssh.com ", 33) == 0);
    snprintf(host_id, sizeof host_id, "%s", field(&u.data, "host_id"));
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&ans);
    char banner[8];
    ssl_read_exact(ssl, banner, 8);
    cr_assert(memcmp(banner, "SSH-2.0-", 8) == 0, "the node's SSH banner did not come back");
    /* Bytes go the other way too: our banner, then the node's key exchange. */
    const char *ours = "SSH-2.0-raftport_test\r\n";
    cr_assert_eq(SSL_write(ssl, ours, (int)strlen(ours)), (int)strlen(ours));
    char more[256];
    cr_assert_gt(SSL_read(ssl, more, sizeof more), 0);
    tls_close(ssl);
    free(pub);

    /* The host id and the address name the same node. */
    char code[64];
    dial_code(bob, NULL, host_id, "root", code, sizeof code);
    cr_assert_str_eq(code, "");
    dial_code(bob, NULL, AG[1].ssh_addr, "root", code, sizeof code);
    cr_assert_str_eq(code, "");
    /* A node nobody knows. */
    dial_code(bob, NULL, "no-such-node", "root", code, sizeof code);
    cr_assert_str_eq(code, "not_found");
    /* A login bob's certificate does not hold. */
    dial_code(bob, NULL, "node1", "postgres", code, sizeof code);
    cr_assert_str_eq(code, "access_denied");
    /* carol's roles allow no login at all. */
    SSL_CTX *carol = client_ctx("carol", alpn_ssh, sizeof alpn_ssh - 1);
    dial_code(carol, NULL, "node1", "root", code, sizeof code);
    cr_assert_str_eq(code, "access_denied");
    /* A lock on bob is enforced at the proxy. */
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "lock", "--user=bob", "--message=test lock", NULL), 0, "%s",
                 out);
    free(out);
    struct known lk = {.ctx = bob};
    cr_assert(wait_until(15000, bob_refused, &lk), "the lock on bob was not enforced (last: %s)",
              lk.code);
    SSL_CTX_free(bob);
    SSL_CTX_free(carol);
    cluster_pass();
}

/* ---- versions ------------------------------------------------------------------------------ */

Test(proxy, an_auth_server_on_an_older_major_stops_the_proxy_unless_skip_version_check)
{
    /* Auth announces 1.4.0; the proxy runs as 2.0.0. */
    setenv("RAFTPORT_VERSION_OVERRIDE", "1.4.0", 1);
    cluster_start(1);
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    static const char *const env[] = {"RAFTPORT_VERSION_OVERRIDE=2.0.0", NULL};
    px_spawn_with(1, NULL, env);
    uint64_t until = cl_now_ms() + 40000;
    while (px_alive(1) && cl_now_ms() < until)
        cl_sleep_ms(50);
    cr_assert_not(px_alive(1), "the proxy kept running against an older auth");
    cr_assert(WIFEXITED(PX[1].last_status) && WEXITSTATUS(PX[1].last_status) != 0);
    cr_assert(px_log_contains(1, "auth server version 1.4.0 is older than this proxy's 2.0.0"),
              "the refusal names both versions");
    cr_assert(px_log_contains(1, "--skip-version-check"));
    static const char *const skip[] = {"--skip-version-check", NULL};
    px_spawn_with(1, skip, env);
    cr_assert(px_wait_ready(1, 40000), "--skip-version-check did not let the proxy start");
    cr_assert(px_log_contains(1, "starting anyway"));
    unsetenv("RAFTPORT_VERSION_OVERRIDE");
    cluster_pass();
}
