/* tsh/dial.c: a connection to a node through the proxy (design §2), and
 * `tsh proxy ssh`, which hands such a connection to a stock OpenSSH client.
 *
 * TLS to the proxy's web port with ALPN teleport-proxy-ssh and the profile's user
 * certificate; one dial frame out, one answer frame back; after an ok answer the TLS
 * stream is the node's SSH byte stream. libssh wants a plain fd: build/tsh hands it a
 * tlsfd (tsh/tlsfd.h), which libssh reads and writes in this thread. `tsh proxy ssh`
 * (and a program built without tools/tsh_io.c) gets one end of a socketpair instead,
 * and a thread copies bytes between the other end and the TLS connection, both ways,
 * passing each side's end of stream on (TLS close_notify <-> shutdown(SHUT_WR)).
 *
 * The node's host key is only trusted once the host certificate it published
 * verifies against the cluster's host CA from the profile (keys/<proxy>/known_hosts)
 * and certifies that key: the proxy is trusted to route, not to vouch for keys. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/frame.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "lib/version.h"
#include "tsh/ssh.h"
#include "tsh/tlsfd.h"
#include "tsh/tsh.h"

#define DIAL_FRAME_MAX 4096
#define ANSWER_FRAME_MAX (64 * 1024)
#define DIAL_TIMEOUT_S 30
#define PUMP_CHUNK (64 * 1024)
#define TLS_READ_BUF (128 * 1024)
#define TLS_RECORD_MAX 16384
/* After our side ended: how long the proxy gets to end its side. */
#define PUMP_LINGER_MS 2000
static const unsigned char ALPN_PROXY_SSH[] = "\x12teleport-proxy-ssh";

void tsh_dial_answer_free(struct tsh_dial_answer *a)
{
    free(a->host_id);
    free(a->hostname);
    free(a->addr);
    free(a->host_key);
    free(a->host_cert);
    memset(a, 0, sizeof *a);
}

int tsh_dial_frame(const char *target, const char *login, struct rp_buf *out)
{
    struct rp_buf body;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&body);
    rp_mp_packer_init(&pk, &body);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "target", target);
    rp_mp_map_str(&m, "login", login); /* NULL packs nil: the proxy's default */
    rp_mp_map_str(&m, "version", rp_version_self());
    rp_mp_map_end(&m);
    int rv = 0;
    if (body.data == NULL)
        rv = rp_err(RP_ENOMEM, "dial frame");
    else if (body.len > DIAL_FRAME_MAX)
        rv = rp_err(RP_ETOOBIG,
                    "the dial frame for '%.64s' is %zu bytes (at most %d): the "
                    "target or login is too long",
                    target, body.len, DIAL_FRAME_MAX);
    else if (rp_buf_put_be32(out, (uint32_t)body.len) != 0 ||
             rp_buf_append(out, body.data, body.len) != 0)
        rv = rp_err(RP_ENOMEM, "dial frame");
    rp_buf_free(&body);
    return rv;
}

static int refusal(const char *target, const char *code, const char *error)
{
    static const struct {
        const char *code;
        int rv;
        const char *what;
    } t[] = {
        {"not_found", RP_ENOTFOUND,
         "node '%s' not found: run tsh ls to see the nodes you can reach"},
        {"ambiguous", RP_EINVAL,
         "node name '%s' matches several nodes: use the host id or address tsh ls shows"},
        {"access_denied", RP_EDENIED,
         "access denied to node '%s': your roles do not allow this login there (tsh status "
         "shows your roles and logins)"},
        {"unreachable", RP_EUNAVAILABLE,
         "node '%s' cannot be reached from the proxy right now: try again, or check that its "
         "agent runs (tsh ls)"},
        {"busy", RP_EUNAVAILABLE, "the proxy is too busy to connect to node '%s': try again"},
        {"version", RP_EPROTO,
         "the proxy does not serve this tsh version for node '%s': upgrade tsh (tsh version)"},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (strcmp(code, t[i].code) != 0)
            continue;
        if (error != NULL && error[0] != '\0')
            return rp_err(t[i].rv, "%s", error);
        return rp_err(t[i].rv, t[i].what, target);
    }
    return rp_err(RP_EPROTO, "the proxy refused node '%s' (%s): %s", target, code,
                  error != NULL && error[0] ? error : "no reason given");
}

int tsh_dial_parse_answer(const char *target, const uint8_t *p, size_t n,
                          struct tsh_dial_answer *ans)
{
    msgpack_unpacked u;
    memset(ans, 0, sizeof *ans);
    if (rp_mp_parse(p, n, &u) != 0)
        return rp_err(RP_EPROTO, "the proxy's answer for '%s' is not msgpack: %s", target,
                      rp_errmsg());
    const msgpack_object *o = &u.data;
    bool ok = false;
    int rv = 0;
    if (o->type != MSGPACK_OBJECT_MAP || rp_mp_get_bool(o, "ok", &ok) != 0) {
        rv = rp_err(RP_EPROTO, "the proxy's answer for '%s' has no 'ok' field", target);
        goto out;
    }
    if (!ok) {
        char *code = NULL, *error = NULL;
        rp_mp_get_strdup(o, "code", &code);
        rp_mp_get_strdup(o, "error", &error);
        rv = refusal(target, code != NULL ? code : "", error);
        free(code);
        free(error);
        goto out;
    }
    bool tunnel = false;
    if (rp_mp_get_strdup(o, "host_id", &ans->host_id) != 0 ||
        rp_mp_get_strdup(o, "host_key", &ans->host_key) != 0 ||
        rp_mp_get_strdup(o, "host_cert", &ans->host_cert) != 0) {
        rv = rp_err(RP_EPROTO,
                    "the proxy's answer for '%s' lacks the node's host id, key or certificate",
                    target);
        goto out;
    }
    if (rp_mp_get_strdup(o, "hostname", &ans->hostname) != 0)
        ans->hostname = strdup(ans->host_id);
    if (rp_mp_get_strdup(o, "addr", &ans->addr) != 0)
        ans->addr = strdup("");
    if (rp_mp_get_bool(o, "tunnel", &tunnel) == 0)
        ans->tunnel = tunnel;
    if (ans->hostname == NULL || ans->addr == NULL)
        rv = rp_err(RP_ENOMEM, "answer");
out:
    if (rv != 0)
        tsh_dial_answer_free(ans);
    msgpack_unpacked_destroy(&u);
    return rv;
}

int tsh_verify_host_cert(const char *known_hosts_text, const char *host_id, const char *host_key,
                         const char *host_cert)
{
    struct rp_ssh_cert cert;
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    char *comment = NULL;
    int rv = rp_ssh_line_split(host_key, &blob, &blob_len, &comment);
    free(comment);
    if (rv != 0)
        return rp_err(RP_EINVAL, "the node's published host key is malformed: %s", rp_errmsg());
    if ((rv = rp_ssh_cert_parse_line(host_cert, &cert, NULL)) != 0) {
        free(blob);
        return rp_err(RP_EINVAL, "the node's published host certificate is malformed: %s",
                      rp_errmsg());
    }
    /* Every "@cert-authority PATTERNS KEY" line is a host CA we trust. */
    rv = RP_EDENIED;
    char why[512] = "the profile holds no host CA (keys/<proxy>/known_hosts): run tsh login";
    const char *line = known_hosts_text;
    while (rv != 0 && line != NULL && *line != '\0') {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        char buf[8192];
        if (len < sizeof buf && strncmp(line, "@cert-authority", 15) == 0) {
            memcpy(buf, line, len);
            buf[len] = '\0';
            char *k = buf + 15;
            k += strspn(k, " \t");
            k += strcspn(k, " \t"); /* the host patterns */
            k += strspn(k, " \t");
            EVP_PKEY *ca = NULL;
            if (rp_ssh_pubkey_parse(k, &ca, NULL) == 0) {
                rv = rp_ssh_cert_check(&cert, ca, RP_SSH_CERT_HOST, (uint64_t)time(NULL), host_id,
                                       NULL);
                if (rv != 0)
                    snprintf(why, sizeof why, "%s", rp_errmsg());
                EVP_PKEY_free(ca);
            }
        }
        line = end != NULL ? end + 1 : NULL;
    }
    if (rv != 0) {
        rv = rp_err(RP_EDENIED,
                    "the host certificate of node %s does not verify against the cluster's host "
                    "CA: %s; refusing to connect",
                    host_id, why);
        goto out;
    }
    struct rp_buf cb;
    rp_buf_init(&cb);
    rv = rp_ssh_pubkey_to_blob(cert.key, &cb);
    if (rv == 0 && (cb.len != blob_len || memcmp(cb.data, blob, blob_len) != 0))
        rv = rp_err(RP_EDENIED,
                    "the host certificate of node %s certifies another key than the host key "
                    "it published: refusing to connect",
                    host_id);
    rp_buf_free(&cb);
out:
    rp_ssh_cert_free(&cert);
    free(blob);
    return rv;
}

/* ---- TCP and TLS ---------------------------------------------------------------------- */

static int split_hostport(const char *hp, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon = strrchr(hp, ':');
    if (colon == NULL || colon[1] == '\0')
        return rp_err(RP_EINVAL, "proxy address '%s' is not HOST:PORT", hp);
    const char *h = hp;
    size_t hl = (size_t)(colon - hp);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl == 0 || hl >= hn || strlen(colon + 1) >= pn)
        return rp_err(RP_EINVAL, "proxy address '%s' is not HOST:PORT", hp);
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, pn, "%s", colon + 1);
    return 0;
}

static int tcp_connect(const char *hostport, char *host, size_t hn, int *out)
{
    char port[16];
    int rv = split_hostport(hostport, host, hn, port, sizeof port);
    if (rv != 0)
        return rv;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *ai = NULL;
    int gai = getaddrinfo(host, port, &hints, &ai);
    if (gai != 0)
        return rp_err(RP_EUNAVAILABLE, "cannot resolve the proxy %s: %s", hostport,
                      gai_strerror(gai));
    int err = 0;
    for (struct addrinfo *a = ai; a != NULL; a = a->ai_next) {
        int fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0 && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            continue;
        }
        struct pollfd p = {fd, POLLOUT, 0};
        int prc = poll(&p, 1, DIAL_TIMEOUT_S * 1000);
        socklen_t sl = sizeof err;
        if (prc <= 0) {
            err = ETIMEDOUT;
        } else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0) {
            err = errno;
        }
        if (err != 0) {
            close(fd);
            continue;
        }
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct timeval tv = {.tv_sec = DIAL_TIMEOUT_S};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        freeaddrinfo(ai);
        *out = fd;
        return 0;
    }
    freeaddrinfo(ai);
    return rp_err(RP_EUNAVAILABLE, "cannot connect to the proxy %s: %s", hostport,
                  strerror(err ? err : ECONNREFUSED));
}

static const char *tls_reason(void)
{
    static __thread char buf[256];
    unsigned long e = ERR_get_error();
    if (e == 0)
        return "connection closed";
    ERR_error_string_n(e, buf, sizeof buf);
    ERR_clear_error();
    return buf;
}

static int ssl_write_all(SSL *ssl, const void *p, size_t n)
{
    size_t done = 0;
    while (done < n) {
        int w = SSL_write(ssl, (const char *)p + done, (int)(n - done));
        if (w <= 0)
            return -1;
        done += (size_t)w;
    }
    return 0;
}

/* ---- the pump thread ------------------------------------------------------------------ */

struct pump {
    SSL *ssl;
    int tls_fd;
    int local_fd;
};

/* Copies bytes between the socketpair end and TLS until both directions ended. The
 * TLS socket is non-blocking here: one thread does both directions of one SSL. */
static void *pump_main(void *arg)
{
    struct pump *pm = arg;
    SSL *ssl = pm->ssl;
    char *to_tls = malloc(PUMP_CHUNK), *to_local = malloc(PUMP_CHUNK);
    size_t tls_len = 0, tls_off = 0, loc_len = 0, loc_off = 0;
    bool local_eof = false, tls_eof = false, close_sent = false, broken = false;
    bool write_wants_read = false, write_wants_write = false, read_wants_write = false;
    fcntl(pm->tls_fd, F_SETFL, fcntl(pm->tls_fd, F_GETFL) | O_NONBLOCK);
    fcntl(pm->local_fd, F_SETFL, fcntl(pm->local_fd, F_GETFL) | O_NONBLOCK);
    if (to_tls == NULL || to_local == NULL)
        broken = true;
    uint64_t linger_until = 0;
    while (!broken) {
        /* TLS -> local: records (16 KiB at most each) gathered into one write. */
        if (!tls_eof && loc_off == loc_len) {
            loc_off = loc_len = 0;
            read_wants_write = false;
            while (loc_len + TLS_RECORD_MAX <= PUMP_CHUNK) {
                int r = SSL_read(ssl, to_local + loc_len, (int)(PUMP_CHUNK - loc_len));
                if (r > 0) {
                    loc_len += (size_t)r;
                    continue;
                }
                int e = SSL_get_error(ssl, r);
                if (e == SSL_ERROR_WANT_WRITE) {
                    read_wants_write = true;
                } else if (e != SSL_ERROR_WANT_READ) {
                    tls_eof = true; /* close_notify, or the connection ended */
                    ERR_clear_error();
                }
                break;
            }
        }
        while (loc_off < loc_len) {
            ssize_t w = write(pm->local_fd, to_local + loc_off, loc_len - loc_off);
            if (w < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            if (w <= 0) {
                broken = true; /* the caller closed its end */
                break;
            }
            loc_off += (size_t)w;
        }
        if (loc_off == loc_len)
            loc_off = loc_len = 0;
        if (tls_eof && loc_len == 0)
            shutdown(pm->local_fd, SHUT_WR);

        /* local -> TLS */
        if (!local_eof && tls_len == 0) {
            ssize_t r = read(pm->local_fd, to_tls, PUMP_CHUNK);
            if (r > 0) {
                tls_len = (size_t)r;
                tls_off = 0;
            } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                local_eof = true;
            }
        }
        write_wants_read = write_wants_write = false;
        /* TLS writes a record (16 KiB at most) per write(): a burst of them leaves in
         * full-sized segments while the socket is corked, not one segment (and one
         * wakeup of the proxy) per record. */
        bool corked = tls_len - tls_off > TLS_RECORD_MAX;
        if (corked)
            setsockopt(pm->tls_fd, IPPROTO_TCP, TCP_CORK, &(int){1}, sizeof(int));
        while (tls_off < tls_len) {
            int w = SSL_write(ssl, to_tls + tls_off, (int)(tls_len - tls_off));
            if (w > 0) {
                tls_off += (size_t)w;
                continue;
            }
            int e = SSL_get_error(ssl, w);
            if (e == SSL_ERROR_WANT_READ)
                write_wants_read = true;
            else if (e == SSL_ERROR_WANT_WRITE)
                write_wants_write = true;
            else
                broken = true;
            break;
        }
        if (corked)
            setsockopt(pm->tls_fd, IPPROTO_TCP, TCP_CORK, &(int){0}, sizeof(int));
        if (tls_off == tls_len)
            tls_off = tls_len = 0;
        if (local_eof && tls_len == 0 && !close_sent) {
            SSL_shutdown(ssl); /* close_notify: our half ends */
            close_sent = true;
            linger_until = rp_mono_ms() + PUMP_LINGER_MS;
        }
        if (local_eof && tls_eof && tls_len == 0 && loc_len == 0)
            break;
        /* Our side is gone and the proxy has not ended its side in a while: stop. */
        if (close_sent && rp_mono_ms() > linger_until)
            break;
        /* Records already read (read-ahead) do not make the socket readable. */
        if (SSL_has_pending(ssl) && loc_len == 0 && !tls_eof)
            continue;
        struct pollfd p[2];
        p[0] = (struct pollfd){pm->tls_fd, 0, 0};
        if ((!tls_eof && loc_len == 0) || write_wants_read)
            p[0].events |= POLLIN;
        if (write_wants_write || read_wants_write)
            p[0].events |= POLLOUT;
        p[1] = (struct pollfd){pm->local_fd, 0, 0};
        if (!local_eof && tls_len == 0)
            p[1].events |= POLLIN;
        if (loc_len > 0)
            p[1].events |= POLLOUT;
        if (poll(p, 2, close_sent ? 500 : 30000) < 0 && errno != EINTR)
            break;
    }
    free(to_tls);
    free(to_local);
    SSL_free(ssl);
    close(pm->tls_fd);
    close(pm->local_fd);
    free(pm);
    return NULL;
}

/* The pump threads of this process by the caller's fd, so that tsh_dial_close can wait
 * for the TLS connection's end: a process that exits while its pump is inside
 * SSL_free would leave OpenSSL half torn down. */
#define MAX_PUMPS 8
static pthread_mutex_t pumps_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    bool used;
    int fd;
    pthread_t th;
} pumps[MAX_PUMPS];

static bool pump_register(int fd, pthread_t th)
{
    bool ok = false;
    pthread_mutex_lock(&pumps_mu);
    for (int i = 0; i < MAX_PUMPS && !ok; i++) {
        if (!pumps[i].used) {
            pumps[i].used = true;
            pumps[i].fd = fd;
            pumps[i].th = th;
            ok = true;
        }
    }
    pthread_mutex_unlock(&pumps_mu);
    return ok;
}

void tsh_dial_close(int fd)
{
    if (fd < 0 || tsh_tlsfd_close(fd, PUMP_LINGER_MS))
        return;
    bool found = false;
    pthread_t th;
    pthread_mutex_lock(&pumps_mu);
    for (int i = 0; i < MAX_PUMPS && !found; i++) {
        if (pumps[i].used && pumps[i].fd == fd) {
            pumps[i].used = false;
            th = pumps[i].th;
            found = true;
        }
    }
    pthread_mutex_unlock(&pumps_mu);
    close(fd); /* the pump sees our end close and ends the TLS connection */
    if (!found)
        return;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += PUMP_LINGER_MS / 1000 + 1;
    if (pthread_timedjoin_np(th, NULL, &until) != 0)
        pthread_detach(th);
}

/* ---- tsh_dial ------------------------------------------------------------------------- */

static int dial(const struct tsh_profile *p, const char *target, const char *login, bool pump,
                struct tsh_dial_answer *ans, int *fd);

int tsh_dial(const struct tsh_profile *p, const char *target, const char *login,
             struct tsh_dial_answer *ans, int *fd)
{
    return dial(p, target, login, false, ans, fd);
}

static int dial(const struct tsh_profile *p, const char *target, const char *login, bool pump,
                struct tsh_dial_answer *ans, int *fd)
{
    memset(ans, 0, sizeof *ans);
    *fd = -1;
    char host[256];
    int tcp = -1, sp[2] = {-1, -1};
    SSL *ssl = NULL;
    struct rp_buf frame;
    struct rp_frame_reader fr;
    char *known_hosts = NULL;
    size_t kh_len = 0;
    rp_buf_init(&frame);
    rp_frame_reader_init(&fr, ANSWER_FRAME_MAX);
    int rv = tsh_dial_frame(target, login, &frame);
    if (rv != 0)
        goto out;
    if ((rv = rp_read_file(p->known_hosts_path, 1 << 20, &known_hosts, &kh_len)) != 0) {
        rv = rp_err(RP_EINVAL, "cannot read the cluster's host CA from %s: run tsh login again",
                    p->known_hosts_path);
        goto out;
    }
    SSL_CTX *ctx = tsh_profile_tls_ctx(p);
    if (ctx == NULL) {
        rv = rp_err(RP_ETLS, "%s", rp_errmsg());
        goto out;
    }
    if ((rv = tcp_connect(p->proxy, host, sizeof host, &tcp)) != 0) {
        SSL_CTX_free(ctx);
        goto out;
    }
    ssl = SSL_new(ctx);
    SSL_CTX_free(ctx); /* the SSL holds its own reference */
    if (ssl == NULL || SSL_set_fd(ssl, tcp) != 1 ||
        SSL_set_alpn_protos(ssl, ALPN_PROXY_SSH, sizeof ALPN_PROXY_SSH - 1) != 0) {
        rv = rp_err(RP_ETLS, "cannot set up TLS to the proxy %s", p->proxy);
        goto out;
    }
    struct in6_addr a6;
    struct in_addr a4;
    if (inet_pton(AF_INET, host, &a4) != 1 && inet_pton(AF_INET6, host, &a6) != 1)
        SSL_set_tlsext_host_name(ssl, host);
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    /* One read() takes every record that has arrived (up to TLS_READ_BUF bytes), not
     * a header and then a body for each: a bulk copy's records come in bursts. The
     * buffer is sized before the handshake allocates it. */
    SSL_set_default_read_buffer_len(ssl, TLS_READ_BUF);
    SSL_set_read_ahead(ssl, 1);
    if (SSL_connect(ssl) != 1) {
        long vr = SSL_get_verify_result(ssl);
        rv = rp_err(RP_ETLS, "TLS to the proxy %s failed: %s%s%s", p->proxy, tls_reason(),
                    vr != X509_V_OK ? "; certificate: " : "",
                    vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
        goto out;
    }
    const unsigned char *sel = NULL;
    unsigned sel_len = 0;
    SSL_get0_alpn_selected(ssl, &sel, &sel_len);
    if (sel_len != sizeof ALPN_PROXY_SSH - 2 || memcmp(sel, ALPN_PROXY_SSH + 1, sel_len) != 0) {
        rv = rp_err(RP_EPROTO,
                    "the proxy %s does not take SSH sessions (it did not accept ALPN "
                    "teleport-proxy-ssh): is --proxy the proxy's web address?",
                    p->proxy);
        goto out;
    }
    if (ssl_write_all(ssl, frame.data, frame.len) != 0) {
        rv = rp_err(RP_EIO, "cannot send the dial request to the proxy %s: %s", p->proxy,
                    tls_reason());
        goto out;
    }
    /* The answer, byte-exact: what follows it is the node's SSH stream. */
    for (;;) {
        uint8_t buf[4096];
        size_t need = rp_frame_reader_need(&fr);
        int r = SSL_read(ssl, buf, (int)(need < sizeof buf ? need : sizeof buf));
        if (r <= 0) {
            rv = rp_err(RP_EIO, "the proxy %s closed the connection before answering for '%s'",
                        p->proxy, target);
            goto out;
        }
        size_t used = 0;
        int fr_rv = rp_frame_reader_feed(&fr, buf, (size_t)r, &used);
        if (fr_rv < 0) {
            rv = rp_err(RP_EPROTO, "the proxy %s sent a malformed answer: %s", p->proxy,
                        rp_errmsg());
            goto out;
        }
        if (fr_rv == 1)
            break;
    }
    const struct rp_buf *body = rp_frame_reader_frame(&fr);
    if ((rv = tsh_dial_parse_answer(target, body->data, body->len, ans)) != 0)
        goto out;
    if ((rv = tsh_verify_host_cert(known_hosts, ans->host_id, ans->host_key, ans->host_cert)) != 0)
        goto out;
    if (!pump && tsh_tlsfd_enabled()) {
        /* libssh reads the TLS connection in this thread (tsh/tlsfd.h). */
        if ((rv = tsh_tlsfd_open(ssl, tcp, fd)) != 0)
            goto out;
        ssl = NULL;
        tcp = -1;
        goto out;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
        rv = rp_err(RP_EIO, "socketpair: %s", strerror(errno));
        goto out;
    }
    struct timeval none = {0};
    setsockopt(tcp, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
    setsockopt(tcp, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
    struct pump *pm = malloc(sizeof *pm);
    if (pm == NULL) {
        rv = rp_err(RP_ENOMEM, "pump");
        goto out;
    }
    *pm = (struct pump){.ssl = ssl, .tls_fd = tcp, .local_fd = sp[1]};
    pthread_t th;
    /* The pump never takes a signal meant for the session (SIGWINCH, SIGINT...). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int prc = pthread_create(&th, NULL, pump_main, pm);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (prc == 0 && !pump_register(sp[0], th))
        pthread_detach(th); /* more dials than slots: this one is not waited for */
    if (prc != 0) {
        free(pm);
        rv = rp_err(RP_EIO, "cannot start the connection thread: %s", strerror(prc));
        goto out;
    }
    ssl = NULL;
    tcp = sp[1] = -1;
    *fd = sp[0];
    sp[0] = -1;
out:
    if (rv != 0)
        tsh_dial_answer_free(ans);
    if (ssl != NULL)
        SSL_free(ssl);
    if (tcp >= 0)
        close(tcp);
    for (int i = 0; i < 2; i++)
        if (sp[i] >= 0)
            close(sp[i]);
    rp_frame_reader_free(&fr);
    rp_buf_free(&frame);
    free(known_hosts);
    return rv;
}

/* ---- tsh proxy ssh -------------------------------------------------------------------- */

/* Copies stdin to @fd and @fd to stdout until the node's side ends (what an OpenSSH
 * ProxyCommand does). */
static int relay_stdio(int fd)
{
    static char up[PUMP_CHUNK], down[PUMP_CHUNK];
    size_t up_len = 0, up_off = 0;
    bool in_eof = false;
    for (;;) {
        struct pollfd p[3] = {{in_eof || up_len > 0 ? -1 : 0, POLLIN, 0},
                              {fd, POLLIN | (up_len > 0 ? POLLOUT : 0), 0},
                              {-1, 0, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return rp_err(RP_EIO, "poll: %s", strerror(errno));
        }
        if (p[0].revents) {
            ssize_t n = read(0, up, sizeof up);
            if (n > 0) {
                up_len = (size_t)n;
                up_off = 0;
            } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
                in_eof = true;
                shutdown(fd, SHUT_WR);
            }
        }
        if (up_len > 0 && (p[1].revents & (POLLOUT | POLLERR | POLLHUP))) {
            ssize_t n = write(fd, up + up_off, up_len - up_off);
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                return rp_err(RP_EIO, "the connection to the node broke: %s", strerror(errno));
            if (n > 0)
                up_off += (size_t)n;
            if (up_off == up_len)
                up_len = up_off = 0;
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(fd, down, sizeof down);
            if (n == 0)
                return 0; /* the node's side ended */
            if (n < 0 && errno != EAGAIN && errno != EINTR)
                return rp_err(RP_EIO, "the connection to the node broke: %s", strerror(errno));
            for (ssize_t off = 0; n > 0 && off < n;) {
                ssize_t w = write(1, down + off, (size_t)(n - off));
                if (w < 0 && errno == EINTR)
                    continue;
                if (w <= 0)
                    return 0; /* ssh went away */
                off += w;
            }
        }
    }
}

/* Records @key_line (verified against the host CA just before) for the name ssh looks
 * up (@host, or [host]:port for another port than 22) in the profile's known_hosts, so
 * that a stock ssh through `tsh proxy ssh` can check the node's plain host key: libssh
 * nodes cannot present host certificates, so @cert-authority alone never matches. The
 * file is rewritten atomically under a lock (concurrent ssh sessions), a line for the
 * same name replaced. */
static int remember_host_key(const struct tsh_profile *p, const char *host, const char *port,
                             const char *key_line)
{
    char name[700], lock[TSH_PATH_MAX + 8];
    if (port != NULL && strcmp(port, "22") != 0)
        snprintf(name, sizeof name, "[%s]:%s", host, port);
    else
        snprintf(name, sizeof name, "%s", host);
    if (strpbrk(name, " \t\r\n") != NULL)
        return rp_err(RP_EINVAL, "host name '%s' holds blanks", name);
    snprintf(lock, sizeof lock, "%s.lock", p->known_hosts_path);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0 || flock(lfd, LOCK_EX) != 0) {
        if (lfd >= 0)
            close(lfd);
        return rp_err(RP_EIO, "cannot lock %s: %s", lock, strerror(errno));
    }
    char *old = NULL;
    size_t old_len = 0;
    struct rp_buf out;
    rp_buf_init(&out);
    int rv = rp_read_file(p->known_hosts_path, 16 << 20, &old, &old_len);
    if (rv == RP_ENOTFOUND || (rv != 0 && !rp_file_exists(p->known_hosts_path)))
        rv = 0;
    size_t nl = strlen(name);
    bool present = false;
    for (const char *l = old; rv == 0 && l != NULL && *l != '\0';) {
        const char *end = strchr(l, '\n');
        size_t len = end != NULL ? (size_t)(end - l) : strlen(l);
        bool same_name = len > nl && strncmp(l, name, nl) == 0 && l[nl] == ' ';
        if (same_name && strlen(key_line) == len - nl - 1 &&
            strncmp(l + nl + 1, key_line, len - nl - 1) == 0)
            present = true;
        if (!same_name) {
            rp_buf_append(&out, l, len);
            rp_buf_append(&out, "\n", 1);
        }
        l = end != NULL ? end + 1 : NULL;
    }
    if (rv == 0 && !present) {
        rp_buf_printf(&out, "%s %s\n", name, key_line);
        if (out.data == NULL || rp_write_file(p->known_hosts_path, out.data, out.len, 0600) != 0)
            rv = rp_err(RP_EIO, "cannot update %s: %s", p->known_hosts_path, rp_errmsg());
    }
    free(old);
    rp_buf_free(&out);
    flock(lfd, LOCK_UN);
    close(lfd);
    return rv;
}

int tsh_cmd_proxy_ssh(int argc, char **argv, const struct tsh_globals *gin)
{
    enum { O_CLUSTER = 300 };
    static const struct option own[] = {{"cluster", required_argument, NULL, O_CLUSTER},
                                        {NULL, 0, NULL, 0}};
    struct tsh_globals g = *gin;
    struct tsh_flags fl;
    const char *cluster = NULL;
    int c;
    tsh_flags_init(&fl, &g, argc, argv, own, NULL, false);
    while ((c = tsh_flags_next(&fl)) > 0) {
        if (c == O_CLUSTER)
            cluster = optarg;
        else
            return tsh_usage_error(&fl, "unexpected flag");
    }
    char **args = NULL;
    int nargs = 0;
    int done = tsh_flags_done(&fl, c, 1, 1, &args, &nargs);
    if (done >= 0)
        return done;
    /* [login@]host[:port], as ssh's %r@%h:%p gives it. */
    char spec[600], *login = NULL, *host = spec;
    snprintf(spec, sizeof spec, "%s", args[0]);
    char *at = strrchr(spec, '@');
    if (at != NULL) {
        *at = '\0';
        login = spec;
        host = at + 1;
    }
    char *port = NULL;
    char *colon = strrchr(host, ':');
    if (colon != NULL && strchr(host, ']') < colon) {
        *colon = '\0';
        port = colon + 1;
    }
    if (host[0] == '\0' || (login != NULL && login[0] == '\0'))
        return tsh_usage_error(&fl, "'%s': expected [LOGIN@]HOST[:PORT]", args[0]);
    struct tsh_profile p;
    if (tsh_require_profile(&g, "tsh proxy ssh", &p) != 0)
        return 1;
    if (cluster != NULL && strcmp(cluster, p.cluster) != 0) {
        fprintf(stderr,
                "tsh proxy ssh: cluster '%s' is not the cluster of this profile ('%s'): "
                "log in to its proxy with tsh login --proxy=...\n",
                cluster, p.cluster);
        return 1;
    }
    char ssh_host[600];
    snprintf(ssh_host, sizeof ssh_host, "%s", host);
    /* ssh's host is "node.CLUSTER" under tsh config's Host pattern: the node is the
     * part before the cluster's name. */
    size_t hl = strlen(host), cl = strlen(p.cluster);
    if (cl > 0 && hl > cl + 1 && host[hl - cl - 1] == '.' && strcmp(host + hl - cl, p.cluster) == 0)
        host[hl - cl - 1] = '\0';
    /* Port 22 is only ssh's default, not a choice: the proxy uses the node's own. */
    char target[700];
    if (port != NULL && strcmp(port, "22") != 0)
        snprintf(target, sizeof target, "%s:%s", host, port);
    else
        snprintf(target, sizeof target, "%s", host);
    struct tsh_dial_answer ans;
    int fd = -1;
    /* The socketpair and its thread: ssh reads our stdin and stdout, not libssh. */
    if (dial(&p, target, login, true, &ans, &fd) != 0) {
        fprintf(stderr, "tsh proxy ssh: %s\n", rp_errmsg());
        return 1;
    }
    if (remember_host_key(&p, ssh_host, port, ans.host_key) != 0)
        fprintf(stderr, "tsh proxy ssh: warning: %s (ssh may not recognise the node's key)\n",
                rp_errmsg());
    signal(SIGPIPE, SIG_IGN);
    int rv = relay_stdio(fd);
    if (rv != 0)
        fprintf(stderr, "tsh proxy ssh: %s\n", rp_errmsg());
    tsh_dial_close(fd);
    tsh_dial_answer_free(&ans);
    return rv == 0 ? 0 : 1;
}
