/* tools/tunnel-load.c: holds many idle reverse tunnels open to a proxy, each with its own
 * Node identity, so that the proxy's memory per idle tunnel can be measured on the real
 * process (scripts/bench-ssh.sh).
 *
 *   tunnel-load --data-dir=AUTH_DATA_DIR --auth=HOST:PORT --proxy=HOST:PORT
 *               [--tunnels=2000] [--warm=50] [--sign-threads=4]
 *
 * 1. With the admin identity of an auth server's data dir (as tctl uses it), asks auth to
 *    sign --warm + --tunnels Node certificates (sign_host), each for a fresh host id,
 *    all for one P-256 key (the proxy tells tunnels apart by host id; one key keeps the
 *    signing fast). A few threads, each with its own auth client, share the signing.
 * 2. Opens --warm tunnels as an agent does (TLS 1.3 with the Node certificate, ALPN
 *    teleport-reversetunnel, then HTTP/2 as the server side with the agent's settings)
 *    and prints "tunnel-load: warm W open". The baseline is the proxy's memory then, so
 *    that one-time allocations of the proxy's loops and libraries are not counted.
 * 3. On SIGUSR1 opens --tunnels more and prints "tunnel-load: N open" (N = warm +
 *    tunnels). Then holds them all, answering the proxy's PINGs and SETTINGS, and
 *    refusing any stream (nobody should dial these nodes), until SIGTERM or SIGINT,
 *    when it prints "tunnel-load: N still open" and exits 0 (1 if any was lost).
 *    A tunnel the proxy closes is reported at once ("tunnel-load: tunnel I closed").
 *
 * One process and one thread for the tunnels: an epoll loop over non-blocking sockets.
 * Handshakes run one at a time (the proxy limits half-open connections per source
 * address); between them the loop serves what has arrived on the open tunnels.
 * RLIMIT_NOFILE is raised to its hard limit. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"

static const unsigned char tunnel_alpn[] = "\x16teleport-reversetunnel";

/* What the agent announces (agent/tunnel.c), so that the proxy's side of each tunnel is
 * exactly an agent's. */
#define MAX_STREAMS 256
#define STREAM_WINDOW (256 << 10)

struct opts {
    const char *data_dir, *auth, *proxy;
    int tunnels, warm, sign_threads;
};

/* One signed identity: the PEM certificate (malloc'd) of host id `host_id`. */
struct ident {
    char host_id[37];
    char *cert_pem;
};

struct tun {
    int index, fd;
    SSL *ssl;
    nghttp2_session *h2;
    bool open;
};

static volatile sig_atomic_t go_on, stop;

static void on_signal(int sig)
{
    if (sig == SIGUSR1)
        go_on = 1;
    else
        stop = 1;
}

static void new_host_id(char out[37])
{
    unsigned char b[16];
    if (RAND_bytes(b, sizeof b) != 1)
        for (size_t i = 0; i < sizeof b; i++)
            b[i] = (unsigned char)rand();
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* ---- 1. signing ------------------------------------------------------------------------ */

struct signer {
    const struct opts *o;
    SSL_CTX *admin;
    const char *ssh_pub, *tls_pub;
    struct ident *ids;
    int n;
    atomic_int *next;
    char *ca_pem; /* the first answer's CA, malloc'd */
    int rv;
    char err[256];
};

static void *sign_main(void *arg)
{
    struct signer *s = arg;
    struct auth_client *c = NULL;
    const char *addrs[1] = {s->o->auth};
    if (auth_client_new(&c, s->admin, addrs, 1) != 0) {
        s->rv = -1;
        snprintf(s->err, sizeof s->err, "connecting to auth %s: %s", s->o->auth, rp_errmsg());
        return NULL;
    }
    for (int i; (i = atomic_fetch_add(s->next, 1)) < s->n;) {
        struct ident *id = &s->ids[i];
        new_host_id(id->host_id);
        char nodename[48];
        snprintf(nodename, sizeof nodename, "tunnel-load-%d", i);
        struct auth_host_sign req = {.host_id = id->host_id,
                                     .nodename = nodename,
                                     .role = "Node",
                                     .ssh_pubkey = s->ssh_pub,
                                     .tls_pubkey = s->tls_pub,
                                     .ttl_ms = 4ull * 3600 * 1000};
        struct auth_certs certs = {0};
        if (auth_client_sign_host(c, &req, &certs) != 0 || certs.tls_cert == NULL) {
            s->rv = -1;
            snprintf(s->err, sizeof s->err, "sign_host of %s: %s", id->host_id,
                     certs.tls_cert == NULL ? "no X.509 certificate in the answer" : rp_errmsg());
            auth_certs_free(&certs);
            break;
        }
        id->cert_pem = certs.tls_cert;
        certs.tls_cert = NULL;
        if (s->ca_pem == NULL && certs.tls_ca != NULL) {
            s->ca_pem = certs.tls_ca;
            certs.tls_ca = NULL;
        }
        auth_certs_free(&certs);
    }
    auth_client_free(c);
    return NULL;
}

/* Signs @n identities for @key. On success *@ca_pem is the CA's PEM (caller frees). */
static int sign_all(const struct opts *o, EVP_PKEY *key, struct ident *ids, int n, char **ca_pem)
{
    SSL_CTX *admin = NULL;
    char *ssh_pub = NULL, *tls_pub = NULL;
    if (auth_load_admin_ctx(o->data_dir, &admin) != 0) {
        fprintf(stderr, "tunnel-load: the admin identity of %s: %s\n", o->data_dir, rp_errmsg());
        return -1;
    }
    if (rp_ssh_pubkey_format(key, NULL, &ssh_pub) != 0 ||
        rp_tls_pubkey_to_pem(key, &tls_pub) != 0) {
        fprintf(stderr, "tunnel-load: formatting the public key: %s\n", rp_errmsg());
        SSL_CTX_free(admin);
        free(ssh_pub);
        return -1;
    }
    int nt = o->sign_threads;
    atomic_int next = 0;
    struct signer *s = calloc((size_t)nt, sizeof *s);
    pthread_t *th = calloc((size_t)nt, sizeof *th);
    int rv = s && th ? 0 : -1;
    for (int t = 0; rv == 0 && t < nt; t++) {
        s[t] = (struct signer){.o = o,
                               .admin = admin,
                               .ssh_pub = ssh_pub,
                               .tls_pub = tls_pub,
                               .ids = ids,
                               .n = n,
                               .next = &next};
        if (pthread_create(&th[t], NULL, sign_main, &s[t]) != 0) {
            nt = t;
            rv = -1;
        }
    }
    *ca_pem = NULL;
    for (int t = 0; t < nt; t++) {
        pthread_join(th[t], NULL);
        if (s[t].rv != 0) {
            fprintf(stderr, "tunnel-load: %s\n", s[t].err);
            rv = -1;
        }
        if (*ca_pem == NULL)
            *ca_pem = s[t].ca_pem;
        else
            free(s[t].ca_pem);
    }
    if (rv == 0 && *ca_pem == NULL) {
        fprintf(stderr, "tunnel-load: auth sent no CA certificate with the host certificates\n");
        rv = -1;
    }
    free(s);
    free(th);
    free(ssh_pub);
    free(tls_pub);
    SSL_CTX_free(admin);
    return rv;
}

/* ---- 2. tunnels ------------------------------------------------------------------------ */

static int refuse_stream(nghttp2_session *h2, const nghttp2_frame *f, void *arg)
{
    (void)arg;
    if (f->hd.type == NGHTTP2_HEADERS)
        nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, f->hd.stream_id, NGHTTP2_REFUSED_STREAM);
    return 0;
}

static int h2_new(struct tun *t)
{
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, refuse_stream);
    int r = nghttp2_session_server_new(&t->h2, cb, t);
    nghttp2_session_callbacks_del(cb);
    if (r != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0},
    };
    return nghttp2_submit_settings(t->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) == 0
               ? 0
               : -1;
}

/* Writes every frame nghttp2 has; a full socket buffer is waited out (frames here are a
 * few dozen bytes, so that happens only if the proxy stops reading). 0 or -1. */
static int flush_out(struct tun *t)
{
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(t->h2, &p);
        if (n < 0)
            return -1;
        if (n == 0)
            return 0;
        for (ssize_t off = 0; off < n;) {
            int w = SSL_write(t->ssl, p + off, (int)(n - off));
            if (w > 0) {
                off += w;
                continue;
            }
            int e = SSL_get_error(t->ssl, w);
            if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
                return -1;
            struct pollfd pf = {t->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 0};
            if (poll(&pf, 1, 5000) <= 0)
                return -1;
        }
    }
}

/* Reads what has arrived and answers it. 0, or -1 when the tunnel is gone. */
static int serve(struct tun *t)
{
    uint8_t buf[4096];
    for (;;) {
        int r = SSL_read(t->ssl, buf, sizeof buf);
        if (r <= 0) {
            int e = SSL_get_error(t->ssl, r);
            ERR_clear_error();
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                break;
            return -1;
        }
        if (nghttp2_session_mem_recv(t->h2, buf, (size_t)r) < 0)
            return -1;
    }
    return flush_out(t);
}

static void tun_close(struct tun *t, int ep)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, t->fd, NULL);
    nghttp2_session_del(t->h2);
    SSL_free(t->ssl);
    close(t->fd);
    t->h2 = NULL;
    t->ssl = NULL;
    t->fd = -1;
    t->open = false;
}

static int resolve(const char *addr, struct sockaddr_storage *sa, socklen_t *sl)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || (size_t)(colon - addr) >= sizeof host)
        return -1;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
    if (getaddrinfo(host, colon + 1, &hints, &res) != 0)
        return -1;
    memcpy(sa, res->ai_addr, res->ai_addrlen);
    *sl = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Connects tunnel @t (blocking handshake with a deadline), then makes it non-blocking
 * and adds it to @ep. 0, or -1 with the reason printed. */
static int tun_open(struct tun *t, SSL_CTX *ctx, X509 *cert, EVP_PKEY *key,
                    const struct sockaddr_storage *sa, socklen_t sl, int ep)
{
    t->fd = socket(sa->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (t->fd < 0) {
        fprintf(stderr, "tunnel-load: socket for tunnel %d: %s\n", t->index, strerror(errno));
        return -1;
    }
    struct timeval tv = {20, 0};
    setsockopt(t->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(t->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(t->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(t->fd, (const struct sockaddr *)sa, sl) != 0) {
        fprintf(stderr, "tunnel-load: tunnel %d: connect: %s\n", t->index, strerror(errno));
        close(t->fd);
        return -1;
    }
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL || SSL_use_certificate(t->ssl, cert) != 1 ||
        SSL_use_PrivateKey(t->ssl, key) != 1 ||
        SSL_set_alpn_protos(t->ssl, tunnel_alpn, sizeof tunnel_alpn - 1) != 0 ||
        SSL_set_fd(t->ssl, t->fd) != 1) {
        fprintf(stderr, "tunnel-load: tunnel %d: setting up TLS failed\n", t->index);
        goto fail;
    }
    SSL_set_mode(t->ssl, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_connect(t->ssl) != 1) {
        char why[200] = "closed by the proxy";
        unsigned long code = ERR_get_error();
        if (code != 0)
            ERR_error_string_n(code, why, sizeof why);
        fprintf(stderr, "tunnel-load: tunnel %d: TLS handshake: %s\n", t->index, why);
        goto fail;
    }
    const unsigned char *proto;
    unsigned proto_len;
    SSL_get0_alpn_selected(t->ssl, &proto, &proto_len);
    if (proto_len != sizeof tunnel_alpn - 2 || memcmp(proto, tunnel_alpn + 1, proto_len) != 0) {
        fprintf(stderr, "tunnel-load: tunnel %d: the proxy did not select %s\n", t->index,
                tunnel_alpn + 1);
        goto fail;
    }
    fcntl(t->fd, F_SETFL, fcntl(t->fd, F_GETFL) | O_NONBLOCK);
    if (h2_new(t) != 0 || flush_out(t) != 0) {
        fprintf(stderr, "tunnel-load: tunnel %d: HTTP/2 preface not sent\n", t->index);
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = t};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, t->fd, &ev) != 0)
        goto fail;
    t->open = true;
    return 0;
fail:
    ERR_clear_error();
    if (t->h2)
        nghttp2_session_del(t->h2);
    SSL_free(t->ssl);
    close(t->fd);
    t->h2 = NULL;
    t->ssl = NULL;
    t->fd = -1;
    return -1;
}

/* Serves the open tunnels for up to @timeout_ms; returns how many were lost. */
static int pump(int ep, int timeout_ms)
{
    struct epoll_event evs[256];
    int n = epoll_wait(ep, evs, 256, timeout_ms), lost = 0;
    for (int i = 0; i < n; i++) {
        struct tun *t = evs[i].data.ptr;
        if (serve(t) != 0) {
            printf("tunnel-load: tunnel %d closed\n", t->index);
            fflush(stdout);
            tun_close(t, ep);
            lost++;
        }
    }
    return lost;
}

static int open_range(struct tun *tuns, struct ident *ids, int from, int to, SSL_CTX *ctx,
                      EVP_PKEY *key, const struct sockaddr_storage *sa, socklen_t sl, int ep,
                      int *lost)
{
    for (int i = from; i < to && !stop; i++) {
        X509 *cert = NULL;
        if (rp_tls_cert_from_pem(ids[i].cert_pem, strlen(ids[i].cert_pem), &cert) != 0) {
            fprintf(stderr, "tunnel-load: certificate %d: %s\n", i, rp_errmsg());
            return -1;
        }
        tuns[i].index = i;
        int rv = tun_open(&tuns[i], ctx, cert, key, sa, sl, ep);
        X509_free(cert);
        free(ids[i].cert_pem);
        ids[i].cert_pem = NULL;
        if (rv != 0)
            return -1;
        *lost += pump(ep, 0);
    }
    return 0;
}

static int count_open(const struct tun *tuns, int n)
{
    int k = 0;
    for (int i = 0; i < n; i++)
        k += tuns[i].open;
    return k;
}

static void usage(void)
{
    fprintf(stderr, "usage: tunnel-load --data-dir=AUTH_DATA_DIR --auth=HOST:PORT "
                    "--proxy=HOST:PORT [--tunnels=2000] [--warm=50] [--sign-threads=4]\n");
}

int main(int argc, char **argv)
{
    struct opts o = {.tunnels = 2000, .warm = 50, .sign_threads = 4};
    static const struct option lo[] = {{"data-dir", required_argument, NULL, 'd'},
                                       {"auth", required_argument, NULL, 'a'},
                                       {"proxy", required_argument, NULL, 'p'},
                                       {"tunnels", required_argument, NULL, 'n'},
                                       {"warm", required_argument, NULL, 'w'},
                                       {"sign-threads", required_argument, NULL, 't'},
                                       {NULL, 0, NULL, 0}};
    for (int c; (c = getopt_long(argc, argv, "", lo, NULL)) != -1;) {
        switch (c) {
        case 'd':
            o.data_dir = optarg;
            break;
        case 'a':
            o.auth = optarg;
            break;
        case 'p':
            o.proxy = optarg;
            break;
        case 'n':
            o.tunnels = atoi(optarg);
            break;
        case 'w':
            o.warm = atoi(optarg);
            break;
        case 't':
            o.sign_threads = atoi(optarg);
            break;
        default:
            usage();
            return 2;
        }
    }
    if (!o.data_dir || !o.auth || !o.proxy || o.tunnels < 1 || o.tunnels > 100000 || o.warm < 0 ||
        o.warm > 10000 || o.sign_threads < 1 || o.sign_threads > 64) {
        usage();
        return 2;
    }
    rp_log_set_level(RP_LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa_sig = {.sa_handler = on_signal};
    sigaction(SIGUSR1, &sa_sig, NULL);
    sigaction(SIGTERM, &sa_sig, NULL);
    sigaction(SIGINT, &sa_sig, NULL);

    int total = o.warm + o.tunnels;
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        setrlimit(RLIMIT_NOFILE, &nofile);
    }
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < (rlim_t)total + 64) {
        fprintf(stderr, "tunnel-load: %d tunnels need %d descriptors; RLIMIT_NOFILE is %llu\n",
                total, total + 64, (unsigned long long)nofile.rlim_cur);
        return 1;
    }
    struct sockaddr_storage sa;
    socklen_t sl;
    if (resolve(o.proxy, &sa, &sl) != 0) {
        fprintf(stderr, "tunnel-load: --proxy=%s: expected HOST:PORT that resolves\n", o.proxy);
        return 2;
    }

    EVP_PKEY *key = rp_tls_keygen();
    struct ident *ids = calloc((size_t)total, sizeof *ids);
    struct tun *tuns = calloc((size_t)total, sizeof *tuns);
    char *ca_pem = NULL;
    if (key == NULL || ids == NULL || tuns == NULL) {
        fprintf(stderr, "tunnel-load: out of memory\n");
        return 1;
    }
    uint64_t t0 = rp_mono_ms();
    if (sign_all(&o, key, ids, total, &ca_pem) != 0)
        return 1;
    fprintf(stderr, "tunnel-load: %d Node identities signed in %.1f s\n", total,
            (double)(rp_mono_ms() - t0) / 1000.0);

    X509 *ca = NULL;
    SSL_CTX *ctx = NULL;
    if (rp_tls_cert_from_pem(ca_pem, strlen(ca_pem), &ca) != 0 ||
        (ctx = rp_tls_client_ctx(ca, NULL, NULL)) == NULL) {
        fprintf(stderr, "tunnel-load: the cluster CA: %s\n", rp_errmsg());
        return 1;
    }
    free(ca_pem);
    int ep = epoll_create1(EPOLL_CLOEXEC), lost = 0;
    t0 = rp_mono_ms();
    if (open_range(tuns, ids, 0, o.warm, ctx, key, &sa, sl, ep, &lost) != 0)
        return 1;
    printf("tunnel-load: warm %d open\n", count_open(tuns, o.warm));
    fflush(stdout);
    while (!go_on && !stop)
        lost += pump(ep, 100);
    if (!stop) {
        if (open_range(tuns, ids, o.warm, total, ctx, key, &sa, sl, ep, &lost) != 0)
            return 1;
        printf("tunnel-load: %d open (%d opened in %.1f s)\n", count_open(tuns, total), total,
               (double)(rp_mono_ms() - t0) / 1000.0);
        fflush(stdout);
    }
    while (!stop)
        lost += pump(ep, 200);
    int still = count_open(tuns, total);
    printf("tunnel-load: %d still open, %d lost\n", still, lost);
    fflush(stdout);
    for (int i = 0; i < total; i++)
        if (tuns[i].open)
            tun_close(&tuns[i], ep);
    close(ep);
    SSL_CTX_free(ctx);
    X509_free(ca);
    EVP_PKEY_free(key);
    for (int i = 0; i < total; i++)
        free(ids[i].cert_pem);
    free(ids);
    free(tuns);
    return lost == 0 && still == total ? 0 : 1;
}
