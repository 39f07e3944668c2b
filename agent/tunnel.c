/* agent/tunnel.c: reverse tunnels, the agent's side (agent/tunnel.h).
 *
 * One thread per proxy runs: dial (TCP, TLS with ALPN teleport-reversetunnel and the
 * node's identity; the proxy must show a Proxy certificate of the cluster), then an
 * nghttp2 server session over the TLS bytes in a poll loop, then the backoff.
 *
 * Flow control, both ways, per stream, so that a slow SSH client or a slow proxy
 * never makes this process hold more than a window per session:
 *   proxy -> SSH server: automatic WINDOW_UPDATEs are off; a DATA chunk is written to
 *     the stream's socket at once and only what the socket took is "consumed"
 *     (nghttp2_session_consume), which is what reopens the proxy's window. What the
 *     socket did not take waits in the stream's buffer, bounded by the window.
 *   SSH server -> proxy: the stream's body is a deferred data source that reads the
 *     socket only when nghttp2 serializes frames, which it does only within the
 *     proxy's window, and this loop asks it to only while less than OUT_HIGH bytes
 *     wait for the TLS socket. */
#include "agent/tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/client.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/tunnel_h2.h"
#include "lib/util.h"

#define LOG "tunnel"
#define DIAL_TIMEOUT_MS 10000
#define MAX_STREAMS 256           /* SETTINGS_MAX_CONCURRENT_STREAMS we announce */
#define STREAM_WINDOW (256 << 10) /* what the proxy may send a stream ahead of the socket */
#define CONN_WINDOW (4 << 20)     /* ... and all streams together */
#define OUT_HIGH (256 << 10)      /* TLS bytes queued before we stop producing frames */
#define READ_CHUNK (16 << 10)
#define STREAM_SOCK_BUF (1 << 20) /* the SSH server's send buffer towards us */
#define MAX_MISSED_PINGS 3
#define HEADER_MAX 256 /* longest header value we keep */

struct tstream {
    struct tunnel *t;
    int32_t id;
    int fd; /* our end of the socket pair; -1 once closed */
    char method[16], authority[HEADER_MAX], client[80];
    bool header_too_long;
    bool answered; /* 200 sent: the body flows */
    bool deferred; /* the body source waits for the socket to be readable */
    bool read_eof; /* the SSH server's side ended: END_STREAM sent */
    bool peer_eof; /* the proxy ended its side: shut our writes once pend is out */
    bool wr_shut;
    bool draining;      /* the stream closed with bytes still for the socket: written, then freed */
    struct rp_buf pend; /* from the proxy, not yet taken by the socket */
    struct tstream *prev, *next;
};

struct tunnel {
    struct agent_tunnels *owner;
    char addr[280];
    pthread_t thread;
    int wake[2];      /* readable once this tunnel stops; never drained */
    atomic_bool stop; /* the agent stops, or discovery dropped this proxy */
    /* One connection's state (reset by each dial): */
    int fd;
    SSL *ssl;
    nghttp2_session *h2;
    struct rp_buf out; /* serialized frames not yet taken by SSL_write */
    size_t out_off;
    bool want_write; /* SSL_write asked for POLLOUT */
    struct tstream *streams;
    size_t n_streams;
    unsigned missed_pings;
    uint64_t next_ping_mono;
    bool up; /* counted in owner->n_up */
};

struct agent_tunnels {
    struct agent_ident *id;
    char *discover_via; /* auth address (the proxy) to list proxies through; NULL: none */
    uint64_t discover_ms;
    pthread_t discoverer;
    bool discovering;
    char **initial; /* the configured proxies: used while discovery finds none */
    size_t n_initial;
    pthread_mutex_t mu; /* tunnels[] and n (the discoverer changes them) */
    int (*serve)(void *arg, int fd, const char *peer);
    void *serve_arg;
    uint64_t keepalive_ms;
    int wake[2]; /* readable once stopping (wakes the discoverer); never drained */
    atomic_bool stop;
    atomic_size_t n_up;
    struct tunnel *tunnels[AGENT_TUNNEL_MAX_PROXIES];
    size_t n;
};

/* ---- streams -------------------------------------------------------------------------- */

static void stream_free(struct tstream *s)
{
    struct tunnel *t = s->t;
    if (s->prev)
        s->prev->next = s->next;
    else
        t->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    t->n_streams--;
    if (s->fd >= 0)
        close(s->fd);
    rp_buf_free(&s->pend);
    free(s);
}

/* Drops the first @n bytes of @b; an emptied buffer gives its memory back (an idle
 * session holds none). */
static void buf_drop_front(struct rp_buf *b, size_t n)
{
    if (n >= b->len) {
        rp_buf_free(b);
        rp_buf_init(b);
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

/* Reopens the proxy's windows by @n bytes taken by the socket: the stream's and the
 * connection's, or the connection's alone once the stream closed. */
static void consumed(struct tstream *s, size_t n)
{
    if (s->draining)
        nghttp2_session_consume_connection(s->t->h2, n);
    else
        nghttp2_session_consume(s->t->h2, s->id, n);
}

/* Writes what the stream holds from the proxy to its socket; consumes what was taken.
 * After the proxy's END_STREAM and once all is written, shuts the socket's write side.
 * Returns true if it freed a draining stream (the caller must not touch @s then). */
static bool stream_flush(struct tstream *s)
{
    size_t off = 0;
    bool dead = false;
    while (s->fd >= 0 && off < s->pend.len) {
        ssize_t n = send(s->fd, s->pend.data + off, s->pend.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* The SSH server closed its end: nobody will read the rest. */
        dead = true;
        break;
    }
    if (dead) {
        if (!s->draining)
            nghttp2_submit_rst_stream(s->t->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        off = s->pend.len;
    }
    if (off > 0) {
        consumed(s, off);
        buf_drop_front(&s->pend, off);
    }
    if (s->draining && s->pend.len == 0) {
        stream_free(s);
        return true;
    }
    if (s->peer_eof && s->pend.len == 0 && !s->wr_shut && s->fd >= 0) {
        shutdown(s->fd, SHUT_WR);
        s->wr_shut = true;
    }
    return false;
}

/* The body of the stream's response: what the SSH server writes to its end. */
static ssize_t body_read(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)h2;
    (void)id;
    (void)ud;
    struct tstream *s = src->ptr;
    for (;;) {
        ssize_t n = read(s->fd, buf, len);
        if (n > 0)
            return n;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            s->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
        /* EOF or a dead socket: our side of the stream ends. */
        s->read_eof = true;
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        return 0;
    }
}

static int submit_refusal(struct tunnel *t, struct tstream *s, const char *status,
                          const char *reason)
{
    nghttp2_nv nv[2] = {
        {(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"x-raftport-error", (uint8_t *)reason, 16, strlen(reason),
         NGHTTP2_NV_FLAG_NONE},
    };
    rp_warn(LOG, "tunnel %s: refused stream %d (%s): %s", t->addr, s->id, status, reason);
    return nghttp2_submit_response(t->h2, s->id, nv, 2, NULL);
}

/* A complete request header block: a CONNECT to this node's SSH server. */
static int on_request(struct tunnel *t, struct tstream *s)
{
    const char *host_id = t->owner->id->host_id;
    size_t hl = strlen(host_id);
    if (strcmp(s->method, "CONNECT") != 0)
        return submit_refusal(t, s, "405", "only CONNECT streams are served");
    if (s->header_too_long || strncmp(s->authority, host_id, hl) != 0 ||
        (s->authority[hl] != '\0' && strcmp(s->authority + hl, ":22") != 0))
        return submit_refusal(t, s, "404",
                              "this node serves only its own SSH server "
                              "(:authority HOST_ID:22)");
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0)
        return submit_refusal(t, s, "503", "out of sockets");
    /* Room for the SSH server to run ahead of this thread (it writes a 32 KiB packet
     * at a time): this thread then finds several packets per wakeup and sends them in
     * one corked burst, and the SSH server waits for room less often. What the socket
     * holds is bounded by the SSH channel's window all the same. */
    int sndbuf = STREAM_SOCK_BUF;
    setsockopt(sp[1], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    /* The SSH server owns sp[1] from here, also when it fails. */
    int rv = t->owner->serve(t->owner->serve_arg, sp[1], s->client[0] ? s->client : NULL);
    if (rv != 0) {
        close(sp[0]);
        return submit_refusal(t, s, "503", rp_errmsg());
    }
    fcntl(sp[0], F_SETFL, fcntl(sp[0], F_GETFL) | O_NONBLOCK);
    s->fd = sp[0];
    s->answered = true;
    nghttp2_nv nv[1] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider body = {.source.ptr = s, .read_callback = body_read};
    rp_debug(LOG, "tunnel %s: session stream %d from %s", t->addr, s->id,
             s->client[0] ? s->client : "?");
    return nghttp2_submit_response(t->h2, s->id, nv, 1, &body);
}

/* ---- nghttp2 callbacks ---------------------------------------------------------------- */

static int on_begin_headers(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    struct tunnel *t = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct tstream *s = calloc(1, sizeof *s);
    if (s == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
    s->t = t;
    s->id = f->hd.stream_id;
    s->fd = -1;
    rp_buf_init(&s->pend);
    s->next = t->streams;
    if (t->streams)
        t->streams->prev = s;
    t->streams = s;
    t->n_streams++;
    nghttp2_session_set_stream_user_data(h2, s->id, s);
    return 0;
}

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL)
        return 0;
    char *dst = NULL;
    size_t cap = 0;
    if (namelen == 7 && memcmp(name, ":method", 7) == 0) {
        dst = s->method;
        cap = sizeof s->method;
    } else if (namelen == 10 && memcmp(name, ":authority", 10) == 0) {
        dst = s->authority;
        cap = sizeof s->authority;
    } else if (namelen == 17 && memcmp(name, "x-raftport-client", 17) == 0) {
        dst = s->client;
        cap = sizeof s->client;
    }
    if (dst == NULL)
        return 0;
    if (valuelen >= cap) {
        s->header_too_long = true;
        return 0;
    }
    memcpy(dst, value, valuelen);
    dst[valuelen] = '\0';
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    struct tunnel *t = ud;
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
        t->missed_pings = 0;
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_REQUEST &&
        on_request(t, s) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
        s->peer_eof = true;
        stream_flush(s);
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *h2, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    (void)flags;
    (void)ud;
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL || s->fd < 0 || !s->answered) {
        nghttp2_session_consume(h2, id, len); /* nobody to give it to */
        return 0;
    }
    if (rp_buf_append(&s->pend, data, len) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    stream_flush(s);
    return 0;
}

static int on_stream_close(nghttp2_session *h2, int32_t id, uint32_t code, void *ud)
{
    (void)ud;
    struct tstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(h2, id, NULL);
    s->draining = true;
    if (code != NGHTTP2_NO_ERROR || s->fd < 0) {
        /* Reset: what the socket did not take is dropped, its window given back. */
        consumed(s, s->pend.len);
        stream_free(s);
        return 0;
    }
    /* A clean end: the last bytes still reach the SSH server, then the socket closes. */
    s->peer_eof = true;
    stream_flush(s);
    return 0;
}

/* ---- the connection ------------------------------------------------------------------- */

/* Dials @t->addr: TCP, then TLS with the node's identity and our ALPN, within
 * DIAL_TIMEOUT_MS. Checks that the proxy chose the tunnel protocol and is a Proxy of
 * the cluster. */
static int dial(struct tunnel *t)
{
    char host[280], port[16];
    const char *colon = strrchr(t->addr, ':');
    if (colon == NULL || colon == t->addr || (size_t)(colon - t->addr) >= sizeof host)
        return rp_err(RP_EINVAL, "proxy address %s: expected HOST:PORT", t->addr);
    size_t hl = (size_t)(colon - t->addr);
    memcpy(host, t->addr, hl);
    host[hl] = '\0';
    if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0)
        return rp_err(RP_EUNAVAILABLE, "proxy %s: %s", t->addr, gai_strerror(gai));
    uint64_t deadline = rp_mono_ms() + DIAL_TIMEOUT_MS;
    int fd = -1, err = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            err = errno;
            close(fd);
            fd = -1;
            continue;
        }
        struct pollfd p[2] = {{fd, POLLOUT, 0}, {t->wake[0], POLLIN, 0}};
        uint64_t now = rp_mono_ms();
        int n = poll(p, 2, now < deadline ? (int)(deadline - now) : 0);
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (n <= 0 || p[1].revents || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) != 0 ||
            soerr != 0) {
            err = n == 0 ? ETIMEDOUT : soerr ? soerr : p[1].revents ? ECANCELED : errno;
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd < 0)
        return rp_err(RP_EUNAVAILABLE, "cannot reach proxy %s: %s", t->addr, strerror(err));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);

    SSL_CTX *ctx = agent_ident_ctx(t->owner->id, NULL);
    SSL *ssl = ctx ? SSL_new(ctx) : NULL;
    SSL_CTX_free(ctx);
    static const unsigned char alpn[] = "\x16" AGENT_TUNNEL_ALPN;
    if (ssl == NULL || SSL_set_alpn_protos(ssl, alpn, sizeof alpn - 1) != 0 ||
        SSL_set_fd(ssl, fd) != 1) {
        SSL_free(ssl);
        close(fd);
        ERR_clear_error();
        return rp_err(RP_ENOMEM, "proxy %s: TLS setup failed", t->addr);
    }
    if (rp_tls_gather_writes(ssl, fd, RP_TLS_GATHER_BYTES) != 0) {
        SSL_free(ssl);
        close(fd);
        return rp_err(RP_ENOMEM, "proxy %s: TLS setup failed", t->addr);
    }
    SSL_set_mode(ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                          SSL_MODE_RELEASE_BUFFERS);
    int rv = 0;
    for (;;) {
        int r = SSL_connect(ssl);
        if (r == 1)
            break;
        int e = SSL_get_error(ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            unsigned long code = ERR_get_error();
            char why[160] = "connection closed";
            if (code != 0)
                ERR_error_string_n(code, why, sizeof why);
            long vr = SSL_get_verify_result(ssl);
            rv = rp_err(RP_ETLS, "TLS with proxy %s failed: %s%s%s", t->addr, why,
                        vr != X509_V_OK ? "; certificate: " : "",
                        vr != X509_V_OK ? X509_verify_cert_error_string(vr) : "");
            break;
        }
        struct pollfd p[2] = {{fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, 0},
                              {t->wake[0], POLLIN, 0}};
        uint64_t now = rp_mono_ms();
        if (now >= deadline || poll(p, 2, (int)(deadline - now)) <= 0 || p[1].revents) {
            rv = rp_err(RP_ETIMEDOUT, "TLS with proxy %s: no handshake within %d ms", t->addr,
                        DIAL_TIMEOUT_MS);
            break;
        }
    }
    ERR_clear_error();
    const unsigned char *sel = NULL;
    unsigned sel_len = 0;
    if (rv == 0) {
        SSL_get0_alpn_selected(ssl, &sel, &sel_len);
        if (sel_len != sizeof AGENT_TUNNEL_ALPN - 1 || memcmp(sel, AGENT_TUNNEL_ALPN, sel_len) != 0)
            rv = rp_err(RP_EPROTO,
                        "%s did not accept ALPN %s: is it a proxy's tunnel or web "
                        "address (proxy_service.tunnel_listen_addr)?",
                        t->addr, AGENT_TUNNEL_ALPN);
    }
    struct rp_identity peer = {0};
    if (rv == 0 && (rp_tls_peer_identity(ssl, &peer) != 0 || !rp_identity_is(&peer, RP_SYS_PROXY)))
        rv = rp_err(RP_EDENIED, "%s is not a proxy of this cluster (its certificate is %s)",
                    t->addr, peer.name ? "not a Proxy identity" : "missing or not the cluster's");
    rp_identity_free(&peer);
    if (rv != 0) {
        SSL_free(ssl);
        close(fd);
        return rv;
    }
    t->fd = fd;
    t->ssl = ssl;
    return 0;
}

static ssize_t ssl_error(struct tunnel *t, int r, const char *what)
{
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return RP_EAGAIN;
    unsigned long code = ERR_get_error();
    char why[160] = "connection closed";
    if (code != 0)
        ERR_error_string_n(code, why, sizeof why);
    else if (e == SSL_ERROR_SYSCALL && errno != 0)
        snprintf(why, sizeof why, "%s", strerror(errno));
    ERR_clear_error();
    return rp_err(RP_EIO, "%s: %s", what, why);
}

/* Reads what TLS has and feeds it to nghttp2. 0, or RP_EIO/RP_EPROTO: the tunnel ends. */
static int pump_in(struct tunnel *t)
{
    uint8_t buf[READ_CHUNK];
    for (;;) {
        int r = SSL_read(t->ssl, buf, sizeof buf);
        if (r <= 0) {
            ssize_t rv = ssl_error(t, r, "reading from the proxy");
            return rv == RP_EAGAIN ? 0 : (int)rv;
        }
        ssize_t used = nghttp2_session_mem_recv(t->h2, buf, (size_t)r);
        if (used < 0)
            return rp_err(RP_EPROTO, "HTTP/2 from the proxy: %s", nghttp2_strerror((int)used));
    }
}

/* Serializes frames (while less than OUT_HIGH waits) and writes what TLS takes. The
 * records of a burst are gathered and sent together at the end (rp_tls_gather_writes),
 * not one send() (and one wakeup of the proxy) per 16 KiB record. */
static int pump_out(struct tunnel *t)
{
    int rv = 0;
    for (;;) {
        while (t->out.len - t->out_off < OUT_HIGH) {
            const uint8_t *p;
            ssize_t n = nghttp2_session_mem_send(t->h2, &p);
            if (n < 0) {
                rv = rp_err(RP_EPROTO, "HTTP/2: %s", nghttp2_strerror((int)n));
                goto out;
            }
            if (n == 0)
                break;
            if (rp_buf_queue(&t->out, &t->out_off, p, (size_t)n) != 0) {
                rv = rp_err(RP_ENOMEM, "tunnel output");
                goto out;
            }
        }
        if (t->out_off == t->out.len) {
            rp_buf_reset(&t->out);
            t->out_off = 0;
            t->want_write = false;
            goto out;
        }
        size_t left = t->out.len - t->out_off;
        int r =
            SSL_write(t->ssl, t->out.data + t->out_off, left > INT32_MAX ? INT32_MAX : (int)left);
        if (r <= 0) {
            ssize_t e = ssl_error(t, r, "writing to the proxy");
            t->want_write = e == RP_EAGAIN;
            rv = e == RP_EAGAIN ? 0 : (int)e;
            goto out;
        }
        t->out_off += (size_t)r;
    }
out:
    if (rv == 0) {
        int p = rp_tls_gather_push(t->ssl);
        if (p < 0)
            rv = rp_err(RP_EIO, "writing to the proxy %s: %s", t->addr, strerror(errno));
        else if (p == 0)
            t->want_write = true;
    }
    return rv;
}

static int session_new(struct tunnel *t)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return rp_err(RP_ENOMEM, "HTTP/2 session");
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, rp_tunnel_h2_frame_len);
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return rp_err(RP_ENOMEM, "HTTP/2 session");
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 0);
    int r = nghttp2_session_server_new2(&t->h2, cb, t, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (r != 0)
        return rp_err(RP_ENOMEM, "HTTP/2 session: %s", nghttp2_strerror(r));
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, RP_TUNNEL_FRAME_MAX},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0},
    };
    if (nghttp2_submit_settings(t->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(t->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0)
        return rp_err(RP_ENOMEM, "HTTP/2 settings");
    return 0;
}

static void connection_close(struct tunnel *t)
{
    while (t->streams)
        stream_free(t->streams);
    nghttp2_session_del(t->h2);
    t->h2 = NULL;
    if (t->ssl) {
        SSL_shutdown(t->ssl); /* close_notify, best effort on a non-blocking socket */
        SSL_free(t->ssl);
        t->ssl = NULL;
    }
    if (t->fd >= 0)
        close(t->fd);
    t->fd = -1;
    rp_buf_free(&t->out);
    rp_buf_init(&t->out);
    t->out_off = 0;
    t->want_write = false;
    t->missed_pings = 0;
    if (t->up) {
        atomic_fetch_sub(&t->owner->n_up, 1);
        t->up = false;
    }
}

/* Runs one established tunnel until it ends (returns why) or the agent stops (0). */
static int serve(struct tunnel *t)
{
    struct agent_tunnels *o = t->owner;
    int rv = session_new(t);
    if (rv != 0)
        return rv;
    t->up = true;
    atomic_fetch_add(&o->n_up, 1);
    rp_info(LOG, "reverse tunnel to %s established", t->addr);
    t->next_ping_mono = rp_mono_ms() + o->keepalive_ms;
    struct pollfd *pfd = NULL;
    struct tstream **who = NULL;
    size_t cap = 0;
    while (!atomic_load(&t->stop)) {
        if ((rv = pump_out(t)) != 0)
            break;
        if (!nghttp2_session_want_read(t->h2) && !nghttp2_session_want_write(t->h2) &&
            t->out_off == t->out.len) {
            rv = rp_err(RP_ECLOSED, "the proxy ended the HTTP/2 session (GOAWAY)");
            break;
        }
        if (cap < t->n_streams + 2) {
            size_t want = t->n_streams + 16;
            struct pollfd *np = realloc(pfd, want * sizeof *np);
            if (np == NULL) {
                rv = rp_err(RP_ENOMEM, "tunnel poll set");
                break;
            }
            pfd = np;
            struct tstream **nw = realloc(who, want * sizeof *nw);
            if (nw == NULL) {
                rv = rp_err(RP_ENOMEM, "tunnel poll set");
                break;
            }
            who = nw;
            cap = want;
        }
        size_t n = 0;
        pfd[n++] = (struct pollfd){t->fd, (short)(POLLIN | (t->want_write ? POLLOUT : 0)), 0};
        pfd[n++] = (struct pollfd){t->wake[0], POLLIN, 0};
        for (struct tstream *s = t->streams; s != NULL; s = s->next) {
            short ev = 0;
            if (s->fd >= 0 && s->deferred && !s->read_eof && !s->draining)
                ev |= POLLIN;
            if (s->fd >= 0 && s->pend.len > 0)
                ev |= POLLOUT;
            if (ev == 0)
                continue;
            who[n] = s;
            pfd[n++] = (struct pollfd){s->fd, ev, 0};
        }
        uint64_t now = rp_mono_ms();
        int timeout = SSL_pending(t->ssl) > 0   ? 0
                      : t->next_ping_mono > now ? (int)(t->next_ping_mono - now)
                                                : 0;
        int pr = poll(pfd, n, timeout);
        if (pr < 0 && errno != EINTR) {
            rv = rp_err(RP_EIO, "poll: %s", strerror(errno));
            break;
        }
        if (pr > 0 && pfd[1].revents)
            break; /* stopping */
        /* Streams first: a stream freed by pump_in must not be looked at after it. */
        for (size_t i = 2; pr > 0 && i < n; i++) {
            struct tstream *s = who[i];
            if ((pfd[i].revents & (POLLOUT | POLLERR | POLLHUP)) && stream_flush(s))
                continue; /* freed */
            if ((pfd[i].revents & (POLLIN | POLLERR | POLLHUP)) && s->deferred && !s->draining) {
                s->deferred = false;
                nghttp2_session_resume_data(t->h2, s->id);
            }
        }
        if (SSL_pending(t->ssl) > 0 || (pr > 0 && pfd[0].revents)) {
            if ((rv = pump_in(t)) != 0)
                break;
        }
        now = rp_mono_ms();
        if (now >= t->next_ping_mono) {
            if (t->missed_pings >= MAX_MISSED_PINGS) {
                rv = rp_err(RP_ETIMEDOUT, "%u keepalive pings (every %llu ms) went unanswered",
                            t->missed_pings, (unsigned long long)o->keepalive_ms);
                break;
            }
            t->missed_pings++;
            nghttp2_submit_ping(t->h2, NGHTTP2_FLAG_NONE, NULL);
            t->next_ping_mono = now + o->keepalive_ms;
        }
    }
    if (atomic_load(&t->stop) && t->h2 != NULL) {
        /* A polite end: the proxy learns at once that this tunnel is gone. */
        nghttp2_session_terminate_session(t->h2, NGHTTP2_NO_ERROR);
        pump_out(t);
        rv = 0;
    }
    free(pfd);
    free(who);
    return rv;
}

/* Waits @ms or until *@stop (with @wake_fd readable). */
static void nap(atomic_bool *stop, int wake_fd, uint64_t ms)
{
    uint64_t until = rp_mono_ms() + ms;
    while (!atomic_load(stop)) {
        uint64_t now = rp_mono_ms();
        if (now >= until)
            return;
        struct pollfd p = {wake_fd, POLLIN, 0};
        poll(&p, 1, (int)(until - now));
    }
}

static void *tunnel_main(void *arg)
{
    struct tunnel *t = arg;
    struct agent_tunnels *o = t->owner;
    uint64_t backoff = AGENT_TUNNEL_MIN_BACKOFF_MS;
    while (!atomic_load(&t->stop)) {
        int rv = dial(t);
        if (rv == 0) {
            uint64_t started = rp_mono_ms();
            rv = serve(t);
            connection_close(t);
            if (atomic_load(&t->stop))
                break;
            /* A tunnel that held for a while was healthy: start the backoff over. */
            if (rp_mono_ms() - started > 2 * o->keepalive_ms ||
                rp_mono_ms() - started > AGENT_TUNNEL_MAX_BACKOFF_MS)
                backoff = AGENT_TUNNEL_MIN_BACKOFF_MS;
        }
        if (atomic_load(&t->stop))
            break;
        uint64_t delay = rp_jitter_ms(backoff);
        if (delay > AGENT_TUNNEL_MAX_BACKOFF_MS)
            delay = AGENT_TUNNEL_MAX_BACKOFF_MS;
        rp_warn(LOG, "reverse tunnel to %s: %s; dialling again in %llu ms", t->addr,
                rv != 0 ? rp_errmsg() : "closed", (unsigned long long)delay);
        nap(&t->stop, t->wake[0], delay);
        backoff =
            backoff * 2 > AGENT_TUNNEL_MAX_BACKOFF_MS ? AGENT_TUNNEL_MAX_BACKOFF_MS : backoff * 2;
    }
    return NULL;
}

/* ---- the set of tunnels ------------------------------------------------------------------ */

/* Starts a tunnel to @addr. Under ts->mu. */
static int tunnel_add(struct agent_tunnels *ts, const char *addr)
{
    if (ts->n == AGENT_TUNNEL_MAX_PROXIES)
        return rp_err(RP_ETOOBIG, "more than %d proxies: %s gets no tunnel",
                      AGENT_TUNNEL_MAX_PROXIES, addr);
    if (strlen(addr) >= sizeof((struct tunnel *)0)->addr)
        return rp_err(RP_EINVAL, "proxy address %.64s...: too long", addr);
    struct tunnel *t = calloc(1, sizeof *t);
    if (t == NULL)
        return rp_err(RP_ENOMEM, "reverse tunnel to %s", addr);
    t->owner = ts;
    t->fd = -1;
    rp_buf_init(&t->out);
    atomic_init(&t->stop, false);
    snprintf(t->addr, sizeof t->addr, "%s", addr);
    if (pipe2(t->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        free(t);
        return rp_err(RP_EIO, "reverse tunnel to %s: pipe: %s", addr, strerror(errno));
    }
    if (pthread_create(&t->thread, NULL, tunnel_main, t) != 0) {
        close(t->wake[0]);
        close(t->wake[1]);
        free(t);
        return rp_err(RP_ENOMEM, "reverse tunnel to %s: no thread", addr);
    }
    ts->tunnels[ts->n++] = t;
    return 0;
}

/* Stops and frees @t (no longer in ts->tunnels). */
static void tunnel_end(struct tunnel *t)
{
    atomic_store(&t->stop, true);
    char b = 1;
    if (write(t->wake[1], &b, 1) < 0) {
        /* non-blocking, one byte is enough: a full pipe already wakes */
    }
    pthread_join(t->thread, NULL);
    rp_buf_free(&t->out);
    close(t->wake[0]);
    close(t->wake[1]);
    free(t);
}

/* Makes the tunnels those to the @n addresses of @want: starts the missing, ends the
 * others. */
static void reconcile(struct agent_tunnels *ts, char **want, size_t n)
{
    struct tunnel *gone[AGENT_TUNNEL_MAX_PROXIES];
    size_t n_gone = 0;
    pthread_mutex_lock(&ts->mu);
    for (size_t i = 0; i < ts->n;) {
        bool keep = false;
        for (size_t j = 0; j < n && !keep; j++)
            keep = strcmp(ts->tunnels[i]->addr, want[j]) == 0;
        if (keep) {
            i++;
            continue;
        }
        rp_info(LOG, "proxy %s is no longer in the cluster's proxies: closing its tunnel",
                ts->tunnels[i]->addr);
        gone[n_gone++] = ts->tunnels[i];
        ts->tunnels[i] = ts->tunnels[--ts->n];
    }
    for (size_t j = 0; j < n; j++) {
        bool have = false;
        for (size_t i = 0; i < ts->n && !have; i++)
            have = strcmp(ts->tunnels[i]->addr, want[j]) == 0;
        if (!have) {
            rp_info(LOG, "proxy %s found in the cluster's proxies: opening a tunnel to it",
                    want[j]);
            if (tunnel_add(ts, want[j]) != 0)
                rp_warn(LOG, "%s", rp_errmsg());
        }
    }
    pthread_mutex_unlock(&ts->mu);
    for (size_t i = 0; i < n_gone; i++)
        tunnel_end(gone[i]);
}

/* The tunnel addresses of the proxies in @items (an array of proxy resources):
 * spec.tunnel_addr of each, else none from it. Returns the count (at most @max);
 * each string is malloc'd. */
static size_t proxy_addrs(const msgpack_object *items, char **out, size_t max)
{
    size_t n = 0;
    if (items == NULL || items->type != MSGPACK_OBJECT_ARRAY)
        return 0;
    for (uint32_t i = 0; i < items->via.array.size && n < max; i++) {
        const msgpack_object *spec = rp_mp_get(&items->via.array.ptr[i], "spec");
        const char *a = NULL;
        size_t al = 0;
        if (spec == NULL || rp_mp_get_str(spec, "tunnel_addr", &a, &al) != 0 || al == 0 ||
            al >= 280 || memchr(a, ':', al) == NULL || memchr(a, '\0', al) != NULL)
            continue;
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strlen(out[j]) == al && memcmp(out[j], a, al) == 0;
        if (!dup && (out[n] = strndup(a, al)) != NULL)
            n++;
    }
    return n;
}

/* At start and every discover_ms: lists the cluster's proxies (through the configured
 * proxy, as every auth call of an agent in proxy mode) and keeps one tunnel to each;
 * while the list is empty, the configured proxies are used; while it cannot be had,
 * the tunnels stay as they are. */
static void *discover_main(void *arg)
{
    struct agent_tunnels *ts = arg;
    for (bool first = true; !atomic_load(&ts->stop); first = false) {
        if (!first)
            nap(&ts->stop, ts->wake[0], ts->discover_ms);
        if (atomic_load(&ts->stop))
            break;
        SSL_CTX *ctx = agent_ident_ctx(ts->id, NULL);
        struct auth_client *c = NULL;
        const char *addrs[1] = {ts->discover_via};
        char *found[AGENT_TUNNEL_MAX_PROXIES];
        size_t n = 0;
        bool listed = false;
        if (ctx != NULL && auth_client_new(&c, ctx, addrs, 1) == 0) {
            auth_client_set_timeout(c, 10000);
            struct auth_reply reply;
            const msgpack_object *items = NULL;
            if (auth_client_list(c, "proxy", NULL, 0, 0, &reply, &items, NULL) == 0) {
                n = proxy_addrs(items, found, AGENT_TUNNEL_MAX_PROXIES);
                listed = true;
                auth_reply_free(&reply);
            } else {
                rp_debug(LOG, "listing the cluster's proxies: %s", rp_errmsg());
            }
        }
        auth_client_free(c);
        SSL_CTX_free(ctx);
        /* Not asked (auth or the proxy away): the tunnels stay as they are. */
        if (n > 0)
            reconcile(ts, found, n);
        else if (listed)
            reconcile(ts, ts->initial, ts->n_initial);
        for (size_t i = 0; i < n; i++)
            free(found[i]);
    }
    return NULL;
}

/* ---- start and stop ------------------------------------------------------------------- */

int agent_tunnels_start(struct agent_tunnels **out, const struct agent_tunnels_opts *o)
{
    *out = NULL;
    if (o->id == NULL || o->serve == NULL || o->n_proxies == 0 ||
        o->n_proxies > AGENT_TUNNEL_MAX_PROXIES)
        return rp_err(RP_EINVAL,
                      "reverse tunnels: an identity, an SSH server and 1 to %d proxies "
                      "are required (got %zu proxies)",
                      AGENT_TUNNEL_MAX_PROXIES, o->n_proxies);
    struct agent_tunnels *ts = calloc(1, sizeof *ts);
    if (ts == NULL || (ts->initial = calloc(o->n_proxies, sizeof *ts->initial)) == NULL) {
        free(ts);
        return rp_err(RP_ENOMEM, "reverse tunnels");
    }
    ts->id = o->id;
    ts->serve = o->serve;
    ts->serve_arg = o->serve_arg;
    ts->keepalive_ms = o->keepalive_ms ? o->keepalive_ms : 30000;
    ts->discover_ms = o->discover_ms ? o->discover_ms : AGENT_TUNNEL_DISCOVER_MS;
    atomic_init(&ts->stop, false);
    atomic_init(&ts->n_up, 0);
    pthread_mutex_init(&ts->mu, NULL);
    if (pipe2(ts->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        pthread_mutex_destroy(&ts->mu);
        free(ts->initial);
        free(ts);
        return rp_err(RP_EIO, "reverse tunnels: pipe: %s", strerror(errno));
    }
    int rv = 0;
    for (size_t i = 0; i < o->n_proxies && rv == 0; i++) {
        if ((ts->initial[i] = strdup(o->proxies[i])) == NULL)
            rv = rp_err(RP_ENOMEM, "reverse tunnels");
        else
            ts->n_initial++;
    }
    pthread_mutex_lock(&ts->mu);
    for (size_t i = 0; i < ts->n_initial && rv == 0; i++)
        rv = tunnel_add(ts, ts->initial[i]);
    pthread_mutex_unlock(&ts->mu);
    if (rv == 0 && o->discover_via != NULL) {
        if ((ts->discover_via = strdup(o->discover_via)) == NULL)
            rv = rp_err(RP_ENOMEM, "reverse tunnels");
        else if (pthread_create(&ts->discoverer, NULL, discover_main, ts) != 0)
            rv = rp_err(RP_ENOMEM, "reverse tunnels: no thread for discovery");
        else
            ts->discovering = true;
    }
    if (rv != 0) {
        agent_tunnels_stop(ts);
        return rv;
    }
    *out = ts;
    return 0;
}

size_t agent_tunnels_up(struct agent_tunnels *t)
{
    return t ? atomic_load(&t->n_up) : 0;
}

void agent_tunnels_stop(struct agent_tunnels *ts)
{
    if (ts == NULL)
        return;
    atomic_store(&ts->stop, true);
    char b = 1;
    if (write(ts->wake[1], &b, 1) < 0) {
        /* non-blocking, one byte is enough: a full pipe already wakes */
    }
    if (ts->discovering)
        pthread_join(ts->discoverer, NULL);
    /* The discoverer is gone: nobody else changes the set now. */
    for (size_t i = 0; i < ts->n; i++)
        tunnel_end(ts->tunnels[i]);
    for (size_t i = 0; i < ts->n_initial; i++)
        free(ts->initial[i]);
    free(ts->initial);
    free(ts->discover_via);
    close(ts->wake[0]);
    close(ts->wake[1]);
    pthread_mutex_destroy(&ts->mu);
    free(ts);
}
