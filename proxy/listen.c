/* proxy/listen.c: the proxy's TLS ports: accepting, bounding unauthenticated
 * connections, routing by the ALPN protocols of the ClientHello, and the raw pass-through
 * of "teleport-auth@" connections to an auth server.
 *
 * A connection is "pending" from accept until its TLS handshake is done (or, for the
 * pass-through, until the auth server is connected): it has proven nothing yet. Pending
 * connections are bounded in all (PX_PENDING_MAX) and per source address
 * (PX_PENDING_PER_ADDR); a new one over a bound evicts the oldest pending one (of its
 * address, or of all), so a flood of connections that never speak cannot lock out a
 * client that does. Each also has PX_HANDSHAKE_MS to finish.
 *
 * The ClientHello is read with MSG_PEEK, so nothing is consumed: the pass-through hands
 * the auth server the client's bytes exactly as sent, and OpenSSL reads the same hello
 * again for our own TLS. The peek watch is edge-triggered (the bytes stay in the socket,
 * so a level-triggered watch would fire without end while a hello is incomplete).
 *
 * The pending list is shared by the loops (a mutex); each pending connection itself is
 * touched only by its loop. An eviction of another loop's connection is posted to that
 * loop by id, which the loop looks up in its own list: the evicted connection may have
 * finished meanwhile, and then the id is simply not found. */
#include <errno.h>
#include <netdb.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>

#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"
#include "proxy/hello.h"
#include "proxy/internal.h"
#include "proxy/tunnel.h"

#define MAX_LOOPS 8
/* Accepts per listener event: fairness between loops and the rest of the loop's work. */
#define ACCEPT_BURST 64
/* How long a refused garbage connection is drained before it is closed. */
#define LINGER_MS 2000
/* Garbage is logged once per address per minute; this many addresses are remembered. */
#define GARBAGE_LOG_SLOTS 64
/* Connecting to one auth server of the pass-through. */
#define AUTH_CONNECT_MS 3000
/* Bytes the pass-through reads at once (kept only while the other side is slow). */
#define PIPE_CHUNK 16384
/* Pass-through connections at once, per client address and in all. Auth sees them all
 * coming from the proxy's address, so its own per-address bounds cannot tell one client
 * of the proxy from another: the proxy bounds them per client. */
#define PIPE_PER_ADDR 256
#define PIPE_MAX 20000
#define PIPE_ADDR_BUCKETS 4096

struct px_listen;

struct listener {
    struct px_listen *owner;
    int fd;
    bool tunnel_only;  /* the tunnel port: teleport-reversetunnel only */
    bool allow_tunnel; /* the web port also serves tunnels (same address) */
    char addr[300];
    struct px_watch w[MAX_LOOPS];
    unsigned n_w;
};

enum pend_state { P_PEEK, P_LINGER, P_TLS, P_AUTH };

struct pending {
    /* the shared list, oldest first (owner->mu) */
    struct pending *prev, *next;
    bool listed;
    uint64_t id;
    char ip[64];
    /* the loop's own */
    struct pending *lnext;
    struct px_loop *loop;
    struct px_listen *owner;
    struct listener *lst;
    enum pend_state state;
    int fd;
    struct px_watch w;
    struct px_timer deadline;
    uint64_t started_ms;
    char peer[64];
    struct px_tls *tls;
};

struct addr_count {
    struct addr_count *next;
    char ip[64];
    unsigned n;
};

/* An auth server of the pass-through, resolved at start. */
struct auth_target {
    char name[64]; /* as configured */
    struct sockaddr_storage sa;
    socklen_t len;
};

#define MAX_AUTH_TARGETS 32

struct px_listen {
    struct proxy *p;
    SSL_CTX *ctx;
    struct auth_target auth[MAX_AUTH_TARGETS];
    size_t n_auth;
    struct listener ls[2];
    size_t n_ls;
    unsigned n_loops;
    bool loops_running;
    atomic_uint_fast64_t next_id;
    pthread_mutex_t mu;
    struct pending *head, *tail; /* oldest first */
    size_t n_pending;
    struct pending *local[MAX_LOOPS]; /* each loop's pending connections (its thread only) */
    struct {
        char ip[66]; /* a kind letter, then the address */
        uint64_t last_ms;
    } garbage_log[GARBAGE_LOG_SLOTS];
    atomic_uint_fast64_t accepted, evicted, garbage, no_alpn, hs_failed, passthrough;
    struct pipe *pipes; /* every pass-through connection (mu) */
    /* open pass-through connections per client address (mu) */
    struct addr_count *pipe_addrs[PIPE_ADDR_BUCKETS];
    size_t n_pipes;
    /* stopping: listener watches removed by each loop */
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cv;
    unsigned stopped_loops;
};

/* ---- module defaults ------------------------------------------------------------------- */

/* Until proxy/web.c is linked in, this keeps the proxy whole: a connection for the web
 * API is refused, said in the log. Its own (strong) definition replaces it. (The
 * reverse tunnels' defaults are gone: proxy/tunnel.c defines them, and a weak default
 * in libraftport.a could keep its object out of the link.) */
__attribute__((weak)) void px_web_attach(struct px_tls *c)
{
    rp_warn("proxy", "%s: the web API is not part of this build; closing", c->peer);
    px_tls_close(c);
}

/* ---- the pending list ------------------------------------------------------------------- */

static void unlist_locked(struct px_listen *o, struct pending *pd)
{
    if (!pd->listed)
        return;
    if (pd->prev)
        pd->prev->next = pd->next;
    else
        o->head = pd->next;
    if (pd->next)
        pd->next->prev = pd->prev;
    else
        o->tail = pd->prev;
    pd->prev = pd->next = NULL;
    pd->listed = false;
    o->n_pending--;
}

struct evict_msg {
    struct px_listen *owner;
    uint64_t id;
};

static void pending_end(struct pending *pd);

/* On the victim's loop: closes it if it is still pending. */
static void evict_on_loop(void *arg)
{
    struct evict_msg *m = arg;
    unsigned li = px_loop_index(px_loop_current());
    for (struct pending *pd = m->owner->local[li]; pd != NULL; pd = pd->lnext) {
        if (pd->id != m->id)
            continue;
        rp_debug("proxy", "%s: evicted: too many connections not past the handshake", pd->peer);
        if (pd->state == P_TLS)
            px_tls_abort(pd->tls); /* its handshake callback ends it */
        else
            pending_end(pd);
        break;
    }
    free(m);
}

static void evict(struct px_listen *o, struct pending *victim)
{
    atomic_fetch_add(&o->evicted, 1);
    struct evict_msg *m = malloc(sizeof *m);
    if (m == NULL)
        return;
    m->owner = o;
    m->id = victim->id;
    if (px_loop_post(victim->loop, evict_on_loop, m) != 0)
        free(m);
}

/* Lists @pd, evicting the oldest pending connection of its address, or of all, when a
 * bound is reached. */
static void list_pending(struct px_listen *o, struct pending *pd)
{
    pthread_mutex_lock(&o->mu);
    size_t same = 0;
    struct pending *oldest_same = NULL;
    for (struct pending *q = o->head; q != NULL; q = q->next)
        if (strcmp(q->ip, pd->ip) == 0) {
            if (oldest_same == NULL)
                oldest_same = q;
            same++;
        }
    struct pending *victim = NULL;
    if (same >= PX_PENDING_PER_ADDR)
        victim = oldest_same;
    else if (o->n_pending >= PX_PENDING_MAX)
        victim = o->head;
    if (victim != NULL) {
        unlist_locked(o, victim);
        evict(o, victim);
    }
    pd->prev = o->tail;
    pd->next = NULL;
    if (o->tail)
        o->tail->next = pd;
    else
        o->head = pd;
    o->tail = pd;
    pd->listed = true;
    o->n_pending++;
    pthread_mutex_unlock(&o->mu);
}

static void unlist(struct pending *pd)
{
    pthread_mutex_lock(&pd->owner->mu);
    unlist_locked(pd->owner, pd);
    pthread_mutex_unlock(&pd->owner->mu);
}

/* Removes @pd from its loop's list and frees it (its fd is the caller's business). */
static void pending_free(struct pending *pd)
{
    unlist(pd);
    struct pending **pp = &pd->owner->local[px_loop_index(pd->loop)];
    while (*pp != NULL && *pp != pd)
        pp = &(*pp)->lnext;
    if (*pp == pd)
        *pp = pd->lnext;
    px_timer_cancel(&pd->deadline);
    px_loop_conn_del(pd->loop);
    free(pd);
}

/* Ends a pending connection that owns its fd (peek or linger). */
static void pending_end(struct pending *pd)
{
    if (pd->w.loop != NULL)
        px_watch_del(&pd->w);
    if (pd->fd >= 0)
        close(pd->fd);
    pending_free(pd);
}

/* ---- refusing garbage --------------------------------------------------------------------- */

/* True (and remembers it) if a refusal of @kind from @ip was not logged within the last
 * minute. */
static bool garbage_log_due(struct px_listen *o, char kind, const char *raw_ip)
{
    char ip[66];
    snprintf(ip, sizeof ip, "%c%s", kind, raw_ip);
    uint64_t now = rp_mono_ms();
    bool due = true;
    pthread_mutex_lock(&o->mu);
    size_t oldest = 0;
    for (size_t i = 0; i < GARBAGE_LOG_SLOTS; i++) {
        if (strcmp(o->garbage_log[i].ip, ip) == 0) {
            due = now - o->garbage_log[i].last_ms >= 60000;
            if (due)
                o->garbage_log[i].last_ms = now;
            pthread_mutex_unlock(&o->mu);
            return due;
        }
        if (o->garbage_log[i].last_ms < o->garbage_log[oldest].last_ms)
            oldest = i;
    }
    snprintf(o->garbage_log[oldest].ip, sizeof o->garbage_log[oldest].ip, "%s", ip);
    o->garbage_log[oldest].last_ms = now;
    pthread_mutex_unlock(&o->mu);
    return due;
}

static void linger_event(struct px_watch *w, uint32_t events)
{
    struct pending *pd = (struct pending *)((char *)w - offsetof(struct pending, w));
    char sink[4096];
    for (;;) {
        ssize_t n = recv(pd->fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        break; /* EOF or error */
    }
    pending_end(pd);
}

/* Answers @msg (may be NULL), shuts our side, and drains what the client still sends
 * for a moment: closing with unread bytes would reset the connection and could destroy
 * the answer before the client reads it. */
static void refuse(struct pending *pd, const char *msg)
{
    if (msg != NULL) {
        ssize_t n = send(pd->fd, msg, strlen(msg), MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n; /* a full socket buffer on a fresh connection: the client hears nothing */
    }
    shutdown(pd->fd, SHUT_WR);
    pd->state = P_LINGER;
    px_watch_del(&pd->w);
    pd->w.on_event = linger_event;
    if (px_watch_add(pd->loop, &pd->w, EPOLLIN) != 0) {
        pending_end(pd);
        return;
    }
    uint64_t left = pd->started_ms + PX_HANDSHAKE_MS - rp_mono_ms();
    if (left > LINGER_MS || (int64_t)left < 0)
        left = LINGER_MS;
    px_timer_arm(pd->loop, &pd->deadline, left, pd->deadline.on_fire);
    linger_event(&pd->w, EPOLLIN);
}

static bool prefix_of(const uint8_t *buf, size_t n, const char *word)
{
    size_t wl = strlen(word);
    return memcmp(buf, word, n < wl ? n : wl) == 0;
}

/* Garbage before TLS (design §1). Returns true when the connection was refused, false
 * when more bytes are needed to tell what it is. */
static bool garbage(struct pending *pd, const uint8_t *buf, size_t n)
{
    static const char *const http_verbs[] = {"GET ",    "POST ",    "HEAD ", "PUT ",
                                             "DELETE ", "OPTIONS ", "PATCH "};
    static const char ssh_answer[] =
        "raftport proxy: this is the TLS port; use ssh -J user@HOST:3023\r\n";
    static const char http_answer[] =
        "HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
        "raftport proxy: this port speaks HTTPS only; use https:// in the address\r\n";
    struct px_listen *o = pd->owner;
    const char *answer = NULL, *what = "bytes that are not TLS";
    bool maybe = false;
    if (prefix_of(buf, n, "SSH-")) {
        if (n < 4)
            maybe = true;
        answer = ssh_answer;
        what = "an SSH client";
    }
    for (size_t i = 0; answer == NULL && i < sizeof http_verbs / sizeof http_verbs[0]; i++)
        if (prefix_of(buf, n, http_verbs[i])) {
            if (n < strlen(http_verbs[i]))
                maybe = true;
            answer = http_answer;
            what = "plain HTTP";
        }
    if (maybe)
        return false;
    atomic_fetch_add(&o->garbage, 1);
    if (garbage_log_due(o, 'g', pd->ip))
        rp_warn("proxy", "%s: %s on the TLS port %s; refused (logged once a minute per address)",
                pd->peer, what, pd->lst->addr);
    refuse(pd, answer);
    return true;
}

/* ---- the auth pass-through ------------------------------------------------------------------ */

/* One direction of a pipe: bytes read from one socket not yet written to the other. */
struct half {
    uint8_t *buf; /* malloc'd only while the writer is slow */
    size_t off, len;
    bool eof; /* the reading side ended; the writing side is shut once flushed */
    bool shut;
};

struct pipe {
    struct pipe *prev, *next; /* owner->pipes */
    struct px_loop *loop;
    struct px_listen *owner;
    struct px_watch cw, aw; /* client, auth */
    struct px_timer connect_timer;
    struct half c2a, a2c;
    size_t tried; /* owner->auth tried so far */
    bool connected;
    char peer[64];
    char ip[64];
    char auth[64];
};

static size_t addr_bucket(const char *ip)
{
    size_t h = 5381;
    for (; *ip; ip++)
        h = h * 33 + (unsigned char)*ip;
    return h % PIPE_ADDR_BUCKETS;
}

/* Counts one more pipe of @ip; false (nothing counted) over a bound. */
static bool pipe_admit(struct px_listen *o, const char *ip)
{
    bool ok = false;
    pthread_mutex_lock(&o->mu);
    struct addr_count **pp = &o->pipe_addrs[addr_bucket(ip)];
    while (*pp != NULL && strcmp((*pp)->ip, ip) != 0)
        pp = &(*pp)->next;
    if (o->n_pipes < PIPE_MAX && (*pp == NULL || (*pp)->n < PIPE_PER_ADDR)) {
        if (*pp == NULL && (*pp = calloc(1, sizeof **pp)) != NULL)
            snprintf((*pp)->ip, sizeof(*pp)->ip, "%s", ip);
        if (*pp != NULL) {
            (*pp)->n++;
            o->n_pipes++;
            ok = true;
        }
    }
    pthread_mutex_unlock(&o->mu);
    return ok;
}

static void pipe_release(struct px_listen *o, const char *ip)
{
    pthread_mutex_lock(&o->mu);
    struct addr_count **pp = &o->pipe_addrs[addr_bucket(ip)];
    while (*pp != NULL && strcmp((*pp)->ip, ip) != 0)
        pp = &(*pp)->next;
    if (*pp != NULL) {
        o->n_pipes--;
        if (--(*pp)->n == 0) {
            struct addr_count *gone = *pp;
            *pp = gone->next;
            free(gone);
        }
    }
    pthread_mutex_unlock(&o->mu);
}

static void pipe_close(struct pipe *pp)
{
    px_timer_cancel(&pp->connect_timer);
    if (pp->cw.loop)
        px_watch_del(&pp->cw);
    if (pp->aw.loop)
        px_watch_del(&pp->aw);
    close(pp->cw.fd);
    if (pp->aw.fd >= 0)
        close(pp->aw.fd);
    free(pp->c2a.buf);
    free(pp->a2c.buf);
    pthread_mutex_lock(&pp->owner->mu);
    if (pp->prev)
        pp->prev->next = pp->next;
    else
        pp->owner->pipes = pp->next;
    if (pp->next)
        pp->next->prev = pp->prev;
    pthread_mutex_unlock(&pp->owner->mu);
    pipe_release(pp->owner, pp->ip);
    px_loop_conn_del(pp->loop);
    free(pp);
}

/* Moves bytes @from -> @to through @h. Returns false if the pipe failed. */
static bool pump(int from, int to, struct half *h)
{
    if (h->len > h->off) {
        ssize_t w = send(to, h->buf + h->off, h->len - h->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return false;
        if (w > 0)
            h->off += (size_t)w;
        if (h->off < h->len)
            return true;
        free(h->buf);
        h->buf = NULL;
        h->off = h->len = 0;
    }
    while (!h->eof) {
        uint8_t tmp[PIPE_CHUNK];
        ssize_t n = recv(from, tmp, sizeof tmp, MSG_DONTWAIT);
        if (n == 0) {
            h->eof = true;
            break;
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            if (errno == ECONNRESET)
                return false;
            return false;
        }
        ssize_t w = send(to, tmp, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EINTR)
            return false;
        if (w < 0)
            w = 0;
        if (w < n) {
            /* The writer is slow: keep the rest, stop reading until it drains. */
            h->buf = malloc((size_t)(n - w));
            if (h->buf == NULL)
                return false;
            memcpy(h->buf, tmp + w, (size_t)(n - w));
            h->off = 0;
            h->len = (size_t)(n - w);
            return true;
        }
    }
    if (h->eof && h->len == h->off && !h->shut) {
        shutdown(to, SHUT_WR);
        h->shut = true;
    }
    return true;
}

static void pipe_events(struct pipe *pp)
{
    uint32_t ce = 0, ae = 0;
    if (!pp->c2a.eof && pp->c2a.len == pp->c2a.off)
        ce |= EPOLLIN;
    if (!pp->a2c.eof && pp->a2c.len == pp->a2c.off)
        ae |= EPOLLIN;
    if (pp->a2c.len > pp->a2c.off)
        ce |= EPOLLOUT;
    if (pp->c2a.len > pp->c2a.off)
        ae |= EPOLLOUT;
    px_watch_mod(&pp->cw, ce);
    px_watch_mod(&pp->aw, ae);
}

static void pipe_run(struct pipe *pp)
{
    if (!pump(pp->cw.fd, pp->aw.fd, &pp->c2a) || !pump(pp->aw.fd, pp->cw.fd, &pp->a2c)) {
        pipe_close(pp);
        return;
    }
    if (pp->c2a.shut && pp->a2c.shut) {
        pipe_close(pp);
        return;
    }
    pipe_events(pp);
}

static void pipe_connect_next(struct pipe *pp);

static void pipe_auth_event(struct px_watch *w, uint32_t events)
{
    struct pipe *pp = (struct pipe *)((char *)w - offsetof(struct pipe, aw));
    if (!pp->connected) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &el) != 0)
            err = errno;
        if (err != 0 || (events & (EPOLLERR | EPOLLHUP))) {
            rp_info("proxy", "%s: pass-through: auth server %s: %s; trying the next", pp->peer,
                    pp->auth, strerror(err ? err : ECONNREFUSED));
            pipe_connect_next(pp);
            return;
        }
        pp->connected = true;
        px_timer_cancel(&pp->connect_timer);
        /* The client's bytes (its ClientHello first) are read only now. */
        px_watch_mod(&pp->cw, EPOLLIN);
        rp_debug("proxy", "%s: passed through to auth server %s", pp->peer, pp->auth);
    }
    pipe_run(pp);
}

static void pipe_client_event(struct px_watch *w, uint32_t events)
{
    struct pipe *pp = (struct pipe *)((char *)w - offsetof(struct pipe, cw));
    if (!pp->connected) {
        if (events & (EPOLLERR | EPOLLHUP))
            pipe_close(pp);
        return;
    }
    pipe_run(pp);
}

static void pipe_connect_timeout(struct px_timer *t)
{
    struct pipe *pp = (struct pipe *)((char *)t - offsetof(struct pipe, connect_timer));
    rp_info("proxy", "%s: pass-through: auth server %s did not accept within %d ms", pp->peer,
            pp->auth, AUTH_CONNECT_MS);
    pipe_connect_next(pp);
}

/* Connects to the next auth server, or gives up when all were tried. */
static void pipe_connect_next(struct pipe *pp)
{
    if (pp->aw.loop)
        px_watch_del(&pp->aw);
    if (pp->aw.fd >= 0)
        close(pp->aw.fd);
    pp->aw.fd = -1;
    while (pp->tried < pp->owner->n_auth) {
        const struct auth_target *t = &pp->owner->auth[pp->tried++];
        snprintf(pp->auth, sizeof pp->auth, "%s", t->name);
        int fd = socket(t->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
            continue;
        if (connect(fd, (const struct sockaddr *)&t->sa, t->len) != 0 && errno != EINPROGRESS) {
            rp_info("proxy", "%s: pass-through: auth server %s: %s", pp->peer, t->name,
                    strerror(errno));
            close(fd);
            continue;
        }
        pp->aw.fd = fd;
        pp->aw.on_event = pipe_auth_event;
        if (px_watch_add(pp->loop, &pp->aw, EPOLLOUT) != 0) {
            close(fd);
            pp->aw.fd = -1;
            continue;
        }
        px_timer_arm(pp->loop, &pp->connect_timer, AUTH_CONNECT_MS, pipe_connect_timeout);
        return;
    }
    rp_warn("proxy", "%s: pass-through: no auth server accepted a connection; closing", pp->peer);
    pipe_close(pp);
}

/* Turns the pending @pd (a ClientHello offering teleport-auth@) into a pipe. */
static void start_passthrough(struct pending *pd)
{
    if (!pipe_admit(pd->owner, pd->ip)) {
        if (garbage_log_due(pd->owner, 'p', pd->ip))
            rp_warn("proxy",
                    "%s: pass-through to auth refused: %d connections from this address (or "
                    "%d in all) are open",
                    pd->peer, PIPE_PER_ADDR, PIPE_MAX);
        refuse(pd, NULL);
        return;
    }
    struct pipe *pp = calloc(1, sizeof *pp);
    int fd = pd->fd;
    px_watch_del(&pd->w);
    pd->fd = -1;
    struct px_loop *l = pd->loop;
    /* No longer pending: the auth server authenticates it (the pipe's loop keeps the
     * connection's count). */
    px_loop_conn_add(l);
    struct px_listen *o = pd->owner;
    if (pp != NULL) {
        snprintf(pp->peer, sizeof pp->peer, "%s", pd->peer);
        snprintf(pp->ip, sizeof pp->ip, "%s", pd->ip);
    } else {
        pipe_release(o, pd->ip);
    }
    pending_free(pd);
    if (pp == NULL) {
        close(fd);
        px_loop_conn_del(l);
        return;
    }
    atomic_fetch_add(&o->passthrough, 1);
    pp->loop = l;
    pp->owner = o;
    pthread_mutex_lock(&o->mu);
    pp->next = o->pipes;
    if (o->pipes)
        o->pipes->prev = pp;
    o->pipes = pp;
    pthread_mutex_unlock(&o->mu);
    pp->cw.fd = fd;
    pp->cw.on_event = pipe_client_event;
    pp->aw.fd = -1;
    if (px_watch_add(l, &pp->cw, 0) != 0) {
        pp->cw.loop = NULL;
        pipe_close(pp);
        return;
    }
    pipe_connect_next(pp);
}

/* ---- TLS -------------------------------------------------------------------------------- */

static void handshake_done(struct px_tls *c, int rv, void *arg)
{
    struct pending *pd = arg;
    struct px_listen *o = pd->owner;
    bool tunnel_only = pd->lst->tunnel_only;
    pd->fd = -1; /* the px_tls owns it */
    pending_free(pd);
    if (rv != 0) {
        atomic_fetch_add(&o->hs_failed, 1);
        rp_debug("proxy", "%s", rp_errmsg());
        return;
    }
    c->proxy = o->p;
    if (strcmp(c->alpn, PX_ALPN_SSH) == 0) {
        px_dial_attach(c);
    } else if (strcmp(c->alpn, PX_ALPN_TUNNEL) == 0) {
        px_tunnel_attach(c);
    } else if (tunnel_only) {
        rp_info("proxy", "%s: no ALPN protocol offered on the tunnel port (expected %s); closing",
                c->peer, PX_ALPN_TUNNEL);
        px_tls_close(c);
    } else {
        px_web_attach(c);
    }
}

/* ALPN selection: the client's first protocol this port serves; none is a fatal
 * no_application_protocol alert (RFC 7301 3.2). */
static int select_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg)
{
    (void)arg;
    struct px_tls *c = SSL_get_app_data(ssl);
    struct pending *pd = c ? px_tls_handshake_arg(c) : NULL;
    if (pd == NULL)
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    const struct listener *lst = pd->lst;
    for (unsigned i = 0; i < inlen;) {
        unsigned len = in[i];
        if (len == 0 || i + 1 + len > inlen)
            break;
        const unsigned char *name = in + i + 1;
        bool ok = false;
        if (len == strlen(PX_ALPN_TUNNEL) && memcmp(name, PX_ALPN_TUNNEL, len) == 0)
            ok = lst->tunnel_only || lst->allow_tunnel;
        else if (!lst->tunnel_only &&
                 ((len == strlen(PX_ALPN_SSH) && memcmp(name, PX_ALPN_SSH, len) == 0) ||
                  (len == strlen(PX_ALPN_HTTP) && memcmp(name, PX_ALPN_HTTP, len) == 0)))
            ok = true;
        if (ok) {
            *out = name;
            *outlen = (unsigned char)len;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    atomic_fetch_add(&pd->owner->no_alpn, 1);
    if (garbage_log_due(pd->owner, 'a', pd->ip))
        rp_warn("proxy",
                "%s: no ALPN protocol this port serves (%s) was offered; refused with "
                "a TLS alert",
                pd->peer,
                lst->tunnel_only
                    ? PX_ALPN_TUNNEL
                    : (lst->allow_tunnel ? PX_ALPN_HTTP ", " PX_ALPN_SSH ", " PX_ALPN_TUNNEL
                                         : PX_ALPN_HTTP ", " PX_ALPN_SSH));
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static void start_tls(struct pending *pd)
{
    px_watch_del(&pd->w);
    px_timer_cancel(&pd->deadline);
    pd->state = P_TLS;
    uint64_t spent = rp_mono_ms() - pd->started_ms;
    uint64_t left = spent >= PX_HANDSHAKE_MS ? 1 : PX_HANDSHAKE_MS - spent;
    int fd = pd->fd;
    int rv = px_tls_accept(pd->loop, pd->owner->p, fd, pd->owner->ctx, pd->peer, left,
                           handshake_done, pd, &pd->tls);
    if (rv != 0) {
        /* px_tls_accept closed the fd */
        pd->fd = -1;
        rp_warn("proxy", "%s: %s", pd->peer, rp_errmsg());
        pending_free(pd);
    }
}

/* ---- peeking ------------------------------------------------------------------------------ */

static __thread uint8_t peek_buf[PX_HELLO_PEEK_BYTES];

static void peek_event(struct px_watch *w, uint32_t events)
{
    struct pending *pd = (struct pending *)((char *)w - offsetof(struct pending, w));
    ssize_t n = recv(pd->fd, peek_buf, sizeof peek_buf, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
        pending_end(pd); /* went away before saying anything */
        return;
    }
    if (n < 0) {
        if (events & (EPOLLERR | EPOLLHUP))
            pending_end(pd);
        return;
    }
    struct px_hello hello;
    int rv = px_hello_parse(peek_buf, (size_t)n, &hello);
    if (rv == RP_EAGAIN) {
        if ((size_t)n == sizeof peek_buf || (events & EPOLLHUP)) {
            refuse(pd, NULL);
        }
        return; /* edge-triggered: the next bytes wake us */
    }
    if (rv == RP_EPROTO) {
        if (!garbage(pd, peek_buf, (size_t)n) && (events & EPOLLHUP))
            pending_end(pd);
        return;
    }
    if (rv != 0) {
        atomic_fetch_add(&pd->owner->garbage, 1);
        if (garbage_log_due(pd->owner, 'g', pd->ip))
            rp_warn("proxy", "%s: %s; refused", pd->peer, rp_errmsg());
        refuse(pd, NULL);
        return;
    }
    if (px_hello_offers_prefix(&hello, PX_ALPN_AUTH_PREFIX) && !pd->lst->tunnel_only)
        start_passthrough(pd);
    else
        start_tls(pd);
}

static void pending_deadline(struct px_timer *t)
{
    struct pending *pd = (struct pending *)((char *)t - offsetof(struct pending, deadline));
    if (pd->state == P_PEEK) {
        atomic_fetch_add(&pd->owner->hs_failed, 1);
        rp_debug("proxy", "%s: no TLS ClientHello within %d s; closing", pd->peer,
                 PX_HANDSHAKE_MS / 1000);
    }
    pending_end(pd);
}

/* ---- accepting ------------------------------------------------------------------------------ */

static void peer_name(const struct sockaddr_storage *ss, char *ip, size_t iplen, char *peer,
                      size_t peerlen)
{
    unsigned port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        inet_ntop(AF_INET, &a->sin_addr, ip, (socklen_t)iplen);
        port = ntohs(a->sin_port);
        snprintf(peer, peerlen, "%.46s:%u", ip, port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        inet_ntop(AF_INET6, &a->sin6_addr, ip, (socklen_t)iplen);
        port = ntohs(a->sin6_port);
        snprintf(peer, peerlen, "[%.46s]:%u", ip, port);
    } else {
        snprintf(ip, iplen, "?");
        snprintf(peer, peerlen, "?");
    }
}

static void accept_one(struct listener *lst, struct px_loop *l, int fd,
                       const struct sockaddr_storage *ss)
{
    struct px_listen *o = lst->owner;
    struct pending *pd = calloc(1, sizeof *pd);
    if (pd == NULL) {
        close(fd);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pd->id = atomic_fetch_add(&o->next_id, 1) + 1;
    pd->loop = l;
    pd->owner = o;
    pd->lst = lst;
    pd->state = P_PEEK;
    pd->fd = fd;
    pd->started_ms = rp_mono_ms();
    peer_name(ss, pd->ip, sizeof pd->ip, pd->peer, sizeof pd->peer);
    pd->w.fd = fd;
    pd->w.on_event = peek_event;
    unsigned li = px_loop_index(l);
    pd->lnext = o->local[li];
    o->local[li] = pd;
    px_loop_conn_add(l);
    list_pending(o, pd);
    atomic_fetch_add(&o->accepted, 1);
    pd->deadline.on_fire = pending_deadline;
    px_timer_arm(l, &pd->deadline, PX_HANDSHAKE_MS, pending_deadline);
    if (px_watch_add(l, &pd->w, EPOLLIN | EPOLLET) != 0) {
        rp_warn("proxy", "%s: %s", pd->peer, rp_errmsg());
        pd->w.loop = NULL;
        pending_end(pd);
        return;
    }
    peek_event(&pd->w, EPOLLIN);
}

static void listener_event(struct px_watch *w, uint32_t events)
{
    struct listener *lst = NULL;
    /* Which listener: the watch is one of the array of its struct. */
    unsigned li = px_loop_index(w->loop);
    lst = (struct listener *)((char *)(w - li) - offsetof(struct listener, w));
    struct px_loop *l = w->loop;
    for (int i = 0; i < ACCEPT_BURST; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lst->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                rp_warn("proxy", "%s: accept: %s (raise the open file limit)", lst->addr,
                        strerror(errno));
            return;
        }
        accept_one(lst, l, fd, &ss);
    }
}

/* ---- the web certificate -------------------------------------------------------------------- */

static SSL_CTX *keypair_ctx(struct proxy *p, const struct rp_config_keypair *kp)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        rp_err(RP_ENOMEM, "TLS context");
        return NULL;
    }
    /* Browsers may still speak TLS 1.2 to the web port; the cluster's own clients use
     * TLS 1.3. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    if (SSL_CTX_use_certificate_chain_file(ctx, kp->cert_file) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, kp->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
        char why[200];
        ERR_error_string_n(ERR_get_error(), why, sizeof why);
        rp_err(RP_ETLS,
               "proxy_service.https_keypairs: %s / %s: %s (expected a PEM certificate chain and "
               "its private key)",
               kp->cert_file, kp->key_file, why);
        SSL_CTX_free(ctx);
        return NULL;
    }
    X509_STORE_add_cert(SSL_CTX_get_cert_store(ctx), proxy_ca(p));
    SSL_CTX_add_client_CA(ctx, proxy_ca(p));
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
}

static SSL_CTX *build_ctx(struct proxy *p)
{
    const struct rp_config *cfg = proxy_config(p);
    SSL_CTX *ctx = NULL;
    if (cfg->n_https_keypairs > 0) {
        if (cfg->n_https_keypairs > 1)
            rp_warn("proxy", "proxy_service.https_keypairs: only the first pair is used");
        ctx = keypair_ctx(p, &cfg->https_keypairs[0]);
    } else {
        char path[1200];
        X509 *cert = NULL;
        EVP_PKEY *key = NULL;
        proxy_key_path(p, "node.crt", path, sizeof path);
        int rv = rp_tls_read_cert(path, &cert);
        proxy_key_path(p, "node.key", path, sizeof path);
        if (rv == 0)
            rv = rp_tls_read_key(path, &key);
        if (rv == 0 && (ctx = rp_tls_server_ctx(proxy_ca(p), cert, key, 0)) == NULL)
            rp_err(RP_ETLS, "web TLS context: %s", rp_errmsg());
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_alpn_select_cb(ctx, select_alpn, NULL);
    /* No resumption: each ticket costs a write per connection and memory per idle
     * tunnel, and the proxy's clients hold long connections. */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    return ctx;
}

/* ---- start and stop ----------------------------------------------------------------------- */

static void watch_listeners_on(struct px_listen *o, unsigned li)
{
    struct px_loop *l = px_loops_get(proxy_loops(o->p), li);
    for (size_t k = 0; k < o->n_ls; k++) {
        struct listener *lst = &o->ls[k];
        lst->w[li].fd = lst->fd;
        lst->w[li].on_event = listener_event;
        /* One loop is woken per new connection, not all of them. */
        if (px_watch_add(l, &lst->w[li], EPOLLIN | EPOLLEXCLUSIVE) != 0)
            rp_warn("proxy", "%s: loop %u does not accept: %s", lst->addr, li, rp_errmsg());
    }
}

/* Resolves the configured auth servers once (the loops must not block on DNS): every
 * address of each, in order. A name that does not resolve is left out, with a warning. */
static void resolve_auth(struct px_listen *o)
{
    const char *const *addrs;
    size_t n = proxy_auth_addrs(o->p, &addrs);
    for (size_t i = 0; i < n && o->n_auth < MAX_AUTH_TARGETS; i++) {
        char host[256], port[8];
        const char *colon = strrchr(addrs[i], ':');
        size_t hl = colon ? (size_t)(colon - addrs[i]) : 0;
        const char *h = addrs[i];
        if (hl > 2 && h[0] == '[' && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        if (colon == NULL || hl == 0 || hl >= sizeof host || strlen(colon + 1) >= sizeof port)
            continue;
        memcpy(host, h, hl);
        host[hl] = '\0';
        snprintf(port, sizeof port, "%s", colon + 1);
        struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res;
        int g = getaddrinfo(host, port, &hints, &res);
        if (g != 0) {
            rp_warn("proxy", "pass-through: auth server %s does not resolve (%s); left out",
                    addrs[i], gai_strerror(g));
            continue;
        }
        for (struct addrinfo *ai = res; ai != NULL && o->n_auth < MAX_AUTH_TARGETS;
             ai = ai->ai_next) {
            struct auth_target *t = &o->auth[o->n_auth++];
            snprintf(t->name, sizeof t->name, "%s", addrs[i]);
            memcpy(&t->sa, ai->ai_addr, ai->ai_addrlen);
            t->len = ai->ai_addrlen;
        }
        freeaddrinfo(res);
    }
}

static int listener_open(struct px_listen *o, struct listener *lst, const char *addr)
{
    lst->owner = o;
    lst->fd = rp_listen_tcp(addr, 1024);
    if (lst->fd < 0)
        return lst->fd;
    int fl = fcntl(lst->fd, F_GETFL);
    if (fl < 0 || fcntl(lst->fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return rp_err(RP_EIO, "listen %s: non-blocking: %s", addr, strerror(errno));
    char actual[300];
    if (rp_sock_local_addr(lst->fd, actual, sizeof actual) == 0)
        snprintf(lst->addr, sizeof lst->addr, "%s", actual);
    else
        snprintf(lst->addr, sizeof lst->addr, "%s", addr);
    return 0;
}

int px_listen_start(struct proxy *p, struct px_listen **out)
{
    const struct rp_config *cfg = proxy_config(p);
    struct px_listen *o = calloc(1, sizeof *o);
    *out = NULL;
    if (o == NULL)
        return rp_err(RP_ENOMEM, "listeners");
    o->p = p;
    o->ls[0].fd = o->ls[1].fd = -1;
    pthread_mutex_init(&o->mu, NULL);
    pthread_mutex_init(&o->stop_mu, NULL);
    pthread_cond_init(&o->stop_cv, NULL);
    o->n_loops = px_loops_count(proxy_loops(p));
    *out = o; /* from here px_listen_free cleans up */
    resolve_auth(o);
    if ((o->ctx = build_ctx(p)) == NULL)
        return rp_errmsg()[0] ? RP_ETLS : rp_err(RP_ETLS, "web TLS context");
    bool shared = strcmp(cfg->tunnel_listen_addr, cfg->web_listen_addr) == 0;
    int rv = listener_open(o, &o->ls[0], cfg->web_listen_addr);
    if (rv != 0)
        return rp_err(rv, "proxy_service.web_listen_addr: %s", rp_errmsg());
    o->ls[0].allow_tunnel = shared;
    o->n_ls = 1;
    if (!shared) {
        if ((rv = listener_open(o, &o->ls[1], cfg->tunnel_listen_addr)) != 0)
            return rp_err(rv, "proxy_service.tunnel_listen_addr: %s", rp_errmsg());
        o->ls[1].tunnel_only = true;
        o->n_ls = 2;
    }
    for (unsigned li = 0; li < o->n_loops; li++)
        watch_listeners_on(o, li);
    o->loops_running = true; /* the caller starts the loops next */
    return 0;
}

const char *px_listen_web_addr(const struct px_listen *l)
{
    return l->ls[0].addr;
}

void px_listen_stats(struct px_listen *l, struct px_listen_stats *out)
{
    pthread_mutex_lock(&l->mu);
    out->pending = l->n_pending;
    pthread_mutex_unlock(&l->mu);
    out->accepted = atomic_load(&l->accepted);
    out->evicted = atomic_load(&l->evicted);
    out->garbage = atomic_load(&l->garbage);
    out->no_alpn_match = atomic_load(&l->no_alpn);
    out->handshake_failed = atomic_load(&l->hs_failed);
    out->passthrough = atomic_load(&l->passthrough);
}

static void unwatch_on_loop(void *arg)
{
    struct px_listen *o = arg;
    unsigned li = px_loop_index(px_loop_current());
    for (size_t k = 0; k < o->n_ls; k++)
        if (o->ls[k].w[li].loop != NULL)
            px_watch_del(&o->ls[k].w[li]);
    pthread_mutex_lock(&o->stop_mu);
    o->stopped_loops++;
    pthread_cond_broadcast(&o->stop_cv);
    pthread_mutex_unlock(&o->stop_mu);
}

void px_listen_stop(struct px_listen *o)
{
    if (o == NULL || o->n_ls == 0)
        return;
    /* Each loop drops its own watches (a watch is its loop's), then the sockets go. */
    unsigned posted = 0;
    for (unsigned li = 0; li < o->n_loops; li++)
        if (px_loop_post(px_loops_get(proxy_loops(o->p), li), unwatch_on_loop, o) == 0)
            posted++;
    pthread_mutex_lock(&o->stop_mu);
    uint64_t until = rp_mono_ms() + 5000;
    while (o->stopped_loops < posted && rp_mono_ms() < until) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&o->stop_cv, &o->stop_mu, &ts);
    }
    pthread_mutex_unlock(&o->stop_mu);
    for (size_t k = 0; k < o->n_ls; k++) {
        if (o->ls[k].fd >= 0)
            close(o->ls[k].fd);
        o->ls[k].fd = -1;
    }
}

void px_listen_close_all(struct px_listen *o)
{
    if (o == NULL)
        return;
    for (;;) {
        pthread_mutex_lock(&o->mu);
        struct pipe *pp = o->pipes;
        pthread_mutex_unlock(&o->mu);
        if (pp == NULL)
            return;
        pipe_close(pp);
    }
}

void px_listen_free(struct px_listen *o)
{
    if (o == NULL)
        return;
    for (size_t k = 0; k < 2; k++)
        if (o->ls[k].fd >= 0)
            close(o->ls[k].fd);
    /* Connections still pending belonged to loops that no longer run. */
    for (unsigned li = 0; li < MAX_LOOPS; li++) {
        struct pending *pd = o->local[li];
        while (pd != NULL) {
            struct pending *next = pd->lnext;
            if (pd->state == P_PEEK || pd->state == P_LINGER)
                close(pd->fd);
            free(pd);
            pd = next;
        }
    }
    for (size_t b = 0; b < PIPE_ADDR_BUCKETS; b++)
        while (o->pipe_addrs[b] != NULL) {
            struct addr_count *next = o->pipe_addrs[b]->next;
            free(o->pipe_addrs[b]);
            o->pipe_addrs[b] = next;
        }
    SSL_CTX_free(o->ctx);
    pthread_mutex_destroy(&o->mu);
    pthread_mutex_destroy(&o->stop_mu);
    pthread_cond_destroy(&o->stop_cv);
    free(o);
}
