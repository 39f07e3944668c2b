/* proxy/conn.c: TLS connections of the proxy's loops (proxy/conn.h).
 *
 * A connection goes through three states: the server handshake (deadline bound), open
 * (the module reads and writes), and closing (flushing the write queue, then
 * close_notify, also deadline bound). It ends once, in finish(), which tells the
 * handshake callback or the module and frees everything.
 *
 * The module's callbacks may close or abort the connection; so may anything else on the
 * loop. The end is therefore never run inside a callback or inside the caller of
 * px_tls_close/abort: it is marked, and run when the event handler unwinds or, outside
 * any handler, from a timer of 0 ms. */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "proxy/conn.h"

/* How long a closing connection may take to flush what it queued. */
#define CLOSE_FLUSH_MS 5000
/* The largest record payload SSL_write is given at once. */
#define WRITE_CHUNK 16384

enum state { ST_HANDSHAKE, ST_OPEN, ST_CLOSING };

struct px_tls_priv {
    enum state state;
    bool paused;
    bool corked;              /* px_tls_cork: writes only queue */
    bool dead;                /* finish() is due */
    bool write_wants_in;      /* SSL_write needs the socket readable */
    bool read_wants_out;      /* SSL_read needs the socket writable */
    unsigned busy;            /* nesting of our own handlers: finish() waits for 0 */
    int end_rv;               /* the reason handed to the handshake callback */
    struct px_timer deadline; /* handshake or closing flush */
    struct px_timer kick;     /* 0 ms: deferred finish, or buffered plaintext to deliver */
    px_tls_handshake_fn hs_done;
    void *hs_arg;
    struct px_tls *c;                /* back to the connection, for the timers */
    struct px_tls_priv *prev, *next; /* every connection (all_mu) */
    /* the write queue: bytes [off, wq.len) of wq; freed when empty */
    struct rp_buf wq;
    size_t off;
    /* px_tls_move: what runs on the new loop once the connection is watched there */
    void (*moved)(struct px_tls *c, void *arg);
    void *moved_arg;
};

/* Every connection, so that a stopping proxy can end those its loops still hold. */
static pthread_mutex_t all_mu = PTHREAD_MUTEX_INITIALIZER;
static struct px_tls_priv *all_head;

static void all_add(struct px_tls_priv *pv)
{
    pthread_mutex_lock(&all_mu);
    pv->prev = NULL;
    pv->next = all_head;
    if (all_head)
        all_head->prev = pv;
    all_head = pv;
    pthread_mutex_unlock(&all_mu);
}

static void all_del(struct px_tls_priv *pv)
{
    pthread_mutex_lock(&all_mu);
    if (pv->prev)
        pv->prev->next = pv->next;
    else
        all_head = pv->next;
    if (pv->next)
        pv->next->prev = pv->prev;
    pthread_mutex_unlock(&all_mu);
}

static struct px_tls *of_watch(struct px_watch *w)
{
    return (struct px_tls *)((char *)w - offsetof(struct px_tls, w));
}

static void finish(struct px_tls *c);
static void update_events(struct px_tls *c);

/* ---- ending --------------------------------------------------------------------- */

static void on_event(struct px_watch *w, uint32_t events);

static struct px_tls *of_kick(struct px_timer *t)
{
    return ((struct px_tls_priv *)((char *)t - offsetof(struct px_tls_priv, kick)))->c;
}

static void kick_fire(struct px_timer *t)
{
    struct px_tls *c = of_kick(t);
    struct px_tls_priv *pv = c->priv;
    if (pv->dead) {
        finish(c);
        return;
    }
    if (pv->state == ST_HANDSHAKE) {
        on_event(&c->w, 0);
        return;
    }
    /* Decrypted bytes left in the SSL after a pause: epoll will not report them. */
    if (pv->state == ST_OPEN && !pv->paused && c->on_readable != NULL && SSL_has_pending(c->ssl)) {
        pv->busy++;
        c->on_readable(c);
        pv->busy--;
        if (pv->dead)
            finish(c);
        else
            update_events(c);
    }
}

/* Marks @c to end with @rv (for a handshake callback) and schedules the end. */
static void mark_dead(struct px_tls *c, int rv)
{
    struct px_tls_priv *pv = c->priv;
    if (pv->dead)
        return;
    pv->dead = true;
    pv->end_rv = rv;
    if (pv->busy == 0)
        px_timer_arm(c->w.loop, &pv->kick, 0, kick_fire);
}

static void finish(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    struct px_loop *l = c->w.loop;
    px_timer_cancel(&pv->deadline);
    px_timer_cancel(&pv->kick);
    px_watch_del(&c->w);
    if (pv->state == ST_HANDSHAKE) {
        if (pv->hs_done != NULL)
            pv->hs_done(c, pv->end_rv ? pv->end_rv : RP_ECLOSED, pv->hs_arg);
    } else if (c->on_close != NULL) {
        c->on_close(c);
    }
    all_del(pv);
    SSL_free(c->ssl);
    close(c->w.fd);
    if (c->ident != NULL) {
        rp_identity_free(c->ident);
        free(c->ident);
    }
    rp_buf_free(&pv->wq);
    free(pv);
    free(c);
    if (l != NULL)
        px_loop_conn_del(l);
}

/* ---- writing -------------------------------------------------------------------- */

/* Records are gathered and sent together (rp_tls_gather_writes): a burst of DATA frames
 * for one client leaves in one send(), not one per 16 KiB record. */
static size_t held(const struct px_tls *c)
{
    return rp_tls_gather_held(c->ssl);
}

/* Sends the gathered records the socket takes now. False if the connection failed. */
static bool push(struct px_tls *c)
{
    if (rp_tls_gather_push(c->ssl) >= 0)
        return true;
    rp_debug("proxy", "%s: TLS write failed (%s)", c->peer, strerror(errno));
    mark_dead(c, RP_EIO);
    return false;
}

/* Writes what the socket takes now. Returns false if the connection failed. */
static bool flush(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    pv->write_wants_in = false;
    while (pv->wq.len > pv->off) {
        size_t n = pv->wq.len - pv->off;
        if (n > WRITE_CHUNK)
            n = WRITE_CHUNK;
        ERR_clear_error();
        int w = SSL_write(c->ssl, pv->wq.data + pv->off, (int)n);
        if (w > 0) {
            pv->off += (size_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_WANT_READ) {
            pv->write_wants_in = true;
            break;
        }
        rp_debug("proxy", "%s: TLS write failed (SSL error %d, %s)", c->peer, e, strerror(errno));
        mark_dead(c, RP_EIO);
        return false;
    }
    if (pv->off == pv->wq.len) {
        rp_buf_free(&pv->wq);
        pv->off = 0;
    }
    return push(c);
}

/* Appends @n bytes to the write queue. Compacting it is safe:
 * SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets a retried write come from another address. */
static int enqueue(struct px_tls *c, const uint8_t *p, size_t n)
{
    return rp_buf_queue(&c->priv->wq, &c->priv->off, p, n);
}

int px_tls_write(struct px_tls *c, const void *p, size_t n)
{
    struct px_tls_priv *pv = c->priv;
    const uint8_t *b = p;
    if (pv->dead || pv->state != ST_OPEN)
        return rp_err(RP_ECLOSED, "connection from %s is closing", c->peer);
    /* With nothing queued, the caller's bytes go to SSL_write as they are: a bulk
     * stream is copied into the queue only when the socket is full. A record SSL_write
     * could not send whole is retried later from the queue with the same bytes (the
     * moving-buffer mode allows the new address). */
    if (pv->corked)
        return enqueue(c, b, n);
    pv->write_wants_in = false;
    while (n > 0 && pv->wq.len == pv->off) {
        int chunk = n > WRITE_CHUNK ? WRITE_CHUNK : (int)n;
        ERR_clear_error();
        int w = SSL_write(c->ssl, b, chunk);
        if (w > 0) {
            b += w;
            n -= (size_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_READ)
            pv->write_wants_in = true;
        else if (e != SSL_ERROR_WANT_WRITE) {
            rp_debug("proxy", "%s: TLS write failed (SSL error %d, %s)", c->peer, e,
                     strerror(errno));
            mark_dead(c, RP_EIO);
            return rp_err(RP_ECLOSED, "connection from %s failed", c->peer);
        }
        break;
    }
    if (n > 0) {
        if (enqueue(c, b, n) != 0)
            return RP_ENOMEM;
        if (!flush(c))
            return rp_err(RP_ECLOSED, "connection from %s failed", c->peer);
    } else if (!push(c)) {
        return rp_err(RP_ECLOSED, "connection from %s failed", c->peer);
    }
    update_events(c);
    return 0;
}

void px_tls_cork(struct px_tls *c)
{
    c->priv->corked = true;
}

void px_tls_uncork(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    if (!pv->corked)
        return;
    pv->corked = false;
    if (pv->dead || pv->state != ST_OPEN || pv->wq.len == pv->off)
        return;
    if (flush(c))
        update_events(c);
}

size_t px_tls_pending(const struct px_tls *c)
{
    return c->priv->wq.len - c->priv->off;
}

/* ---- reading -------------------------------------------------------------------- */

ssize_t px_tls_read(struct px_tls *c, void *buf, size_t n)
{
    struct px_tls_priv *pv = c->priv;
    if (pv->dead || pv->state != ST_OPEN)
        return rp_err(RP_ECLOSED, "connection from %s is closing", c->peer);
    if (n > INT32_MAX)
        n = INT32_MAX;
    ERR_clear_error();
    int r = SSL_read(c->ssl, buf, (int)n);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        return RP_EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        pv->read_wants_out = true;
        update_events(c);
        return RP_EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        if (ERR_peek_error() == 0 && (r == 0 || errno == ECONNRESET || errno == EPIPE))
            return 0; /* EOF without close_notify: a peer that just went away */
        /* fall through */
    default: {
        unsigned long err = ERR_peek_error();
        char why[160];
        ERR_error_string_n(err, why, sizeof why);
        mark_dead(c, RP_ETLS);
        return rp_err(RP_ETLS, "reading from %s: %s", c->peer, err ? why : strerror(errno));
    }
    }
}

void px_tls_pause_reading(struct px_tls *c, bool paused)
{
    struct px_tls_priv *pv = c->priv;
    if (pv->paused == paused)
        return;
    pv->paused = paused;
    if (pv->dead)
        return;
    update_events(c);
    if (!paused && pv->busy == 0 && SSL_has_pending(c->ssl))
        px_timer_arm(c->w.loop, &pv->kick, 0, kick_fire);
}

/* Once our handlers returned: ends @c if it was marked dead, else watches what it now
 * waits for, and delivers plaintext the SSL holds (epoll cannot report it). */
static void after_callbacks(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    if (pv->dead) {
        finish(c);
        return;
    }
    update_events(c);
    if (pv->state == ST_OPEN && !pv->paused && c->on_readable != NULL && SSL_has_pending(c->ssl))
        px_timer_arm(c->w.loop, &pv->kick, 0, kick_fire);
}

/* ---- moving to another loop ----------------------------------------------------- */

static void move_arrive(void *arg)
{
    struct px_tls *c = arg;
    struct px_tls_priv *pv = c->priv;
    struct px_loop *l = px_loop_current();
    if (px_watch_add(l, &c->w, 0) != 0) {
        pv->dead = true; /* not watched: finish() only drops what it holds */
        pv->end_rv = RP_EIO;
        finish(c);
        return;
    }
    void (*moved)(struct px_tls *, void *) = pv->moved;
    pv->moved = NULL;
    pv->busy++;
    moved(c, pv->moved_arg);
    pv->busy--;
    after_callbacks(c);
}

int px_tls_move(struct px_tls *c, struct px_loop *to, void (*moved)(struct px_tls *c, void *arg),
                void *arg)
{
    struct px_tls_priv *pv = c->priv;
    struct px_loop *from = c->w.loop;
    if (pv->dead || pv->state != ST_OPEN || pv->busy > 0 || from == NULL)
        return rp_err(RP_EINVAL, "connection from %s cannot move now (closing or in a callback)",
                      c->peer);
    if (to == from) {
        moved(c, arg);
        return 0;
    }
    px_timer_cancel(&pv->kick);
    px_timer_cancel(&pv->deadline);
    px_watch_del(&c->w);
    px_loop_conn_del(from);
    px_loop_conn_add(to);
    pv->moved = moved;
    pv->moved_arg = arg;
    /* In transit no loop watches it; w.loop names the new loop so that a proxy stopping
     * meanwhile still finds it (px_tls_close_all) when the posted arrival is dropped. */
    c->w.loop = to;
    if (px_loop_post(to, move_arrive, c) != 0) {
        px_loop_conn_del(to);
        px_loop_conn_add(from);
        px_watch_add(from, &c->w, 0); /* sets w.loop back, for the end below */
        pv->moved = NULL;
        mark_dead(c, RP_ECLOSED);
        return rp_err(RP_ECLOSED, "connection from %s: the proxy is stopping", c->peer);
    }
    return 0;
}

/* ---- closing -------------------------------------------------------------------- */

static void deadline_fire(struct px_timer *t)
{
    struct px_tls_priv *pv =
        (struct px_tls_priv *)((char *)t - offsetof(struct px_tls_priv, deadline));
    struct px_tls *c = pv->c;
    if (pv->state == ST_HANDSHAKE)
        rp_err(RP_ETIMEDOUT, "TLS handshake with %s did not finish in time", c->peer);
    else
        rp_debug("proxy", "%s: closing connection could not flush in time", c->peer);
    mark_dead(c, RP_ETIMEDOUT);
}

void px_tls_abort(struct px_tls *c)
{
    if (!c->priv->dead)
        rp_err(RP_ECLOSED, "connection from %s aborted", c->peer);
    mark_dead(c, RP_ECLOSED);
}

static void send_close_notify(struct px_tls *c)
{
    ERR_clear_error();
    SSL_shutdown(c->ssl); /* one non-blocking try: the peer may be gone already */
    mark_dead(c, 0);
}

void px_tls_close(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    if (pv->dead || pv->state == ST_CLOSING)
        return;
    if (pv->state == ST_HANDSHAKE) {
        mark_dead(c, RP_ECLOSED);
        return;
    }
    pv->state = ST_CLOSING;
    px_timer_arm(c->w.loop, &pv->deadline, CLOSE_FLUSH_MS, deadline_fire);
    if (!flush(c))
        return;
    if (pv->wq.len == pv->off && held(c) == 0) {
        send_close_notify(c);
        return;
    }
    update_events(c);
}

/* ---- events --------------------------------------------------------------------- */

static void update_events(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    if (pv->dead || c->w.loop == NULL)
        return;
    uint32_t ev = 0;
    bool queued = pv->wq.len > pv->off || held(c) > 0;
    switch (pv->state) {
    case ST_HANDSHAKE:
        return; /* set by the handshake step itself */
    case ST_OPEN:
        if ((!pv->paused && c->on_readable != NULL) || pv->write_wants_in)
            ev |= EPOLLIN;
        if (queued || pv->read_wants_out)
            ev |= EPOLLOUT;
        break;
    case ST_CLOSING:
        ev = EPOLLOUT | (pv->write_wants_in ? EPOLLIN : 0);
        break;
    }
    if (px_watch_mod(&c->w, ev) != 0)
        mark_dead(c, RP_EIO);
}

static void handshake_step(struct px_tls *c)
{
    struct px_tls_priv *pv = c->priv;
    ERR_clear_error();
    int r = SSL_accept(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ) {
            px_watch_mod(&c->w, EPOLLIN);
            return;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            px_watch_mod(&c->w, EPOLLOUT);
            return;
        }
        unsigned long err = ERR_peek_error();
        char why[200];
        if (err != 0)
            ERR_error_string_n(err, why, sizeof why);
        else
            snprintf(why, sizeof why, "%s", errno ? strerror(errno) : "peer closed");
        rp_err(RP_ETLS, "TLS handshake with %s failed: %s", c->peer, why);
        pv->end_rv = RP_ETLS;
        pv->dead = true;
        return;
    }
    px_timer_cancel(&pv->deadline);
    const unsigned char *proto = NULL;
    unsigned plen = 0;
    SSL_get0_alpn_selected(c->ssl, &proto, &plen);
    if (plen > 0 && plen < sizeof c->alpn) {
        memcpy(c->alpn, proto, plen);
        c->alpn[plen] = '\0';
    }
    X509 *peer = SSL_get0_peer_certificate(c->ssl);
    if (peer != NULL && SSL_get_verify_result(c->ssl) == X509_V_OK) {
        c->ident = calloc(1, sizeof *c->ident);
        if (c->ident == NULL || rp_identity_from_cert(peer, c->ident) != 0) {
            free(c->ident);
            c->ident = NULL;
            pv->end_rv = RP_ETLS;
            pv->dead = true;
            rp_err(RP_ETLS, "%s: client certificate without a readable identity", c->peer);
            return;
        }
    }
    pv->state = ST_OPEN;
    px_tls_handshake_fn done = pv->hs_done;
    pv->hs_done = NULL;
    done(c, 0, pv->hs_arg);
    update_events(c);
}

static void on_event(struct px_watch *w, uint32_t events)
{
    struct px_tls *c = of_watch(w);
    struct px_tls_priv *pv = c->priv;
    pv->busy++;
    if (pv->state == ST_HANDSHAKE) {
        handshake_step(c);
    } else if (!pv->dead) {
        if ((events & EPOLLOUT) || pv->write_wants_in) {
            bool had = pv->wq.len > pv->off;
            pv->read_wants_out = false;
            if (flush(c) && had && pv->wq.len == pv->off && pv->state == ST_OPEN &&
                c->on_drained != NULL)
                c->on_drained(c);
        }
        if (!pv->dead && pv->state == ST_OPEN && (events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
            if (!pv->paused && c->on_readable != NULL)
                c->on_readable(c);
            else if (events & (EPOLLHUP | EPOLLERR))
                mark_dead(c, RP_ECLOSED); /* nobody will read the end: do not spin on it */
        }
        if (!pv->dead && pv->state == ST_CLOSING) {
            if (events & (EPOLLHUP | EPOLLERR))
                mark_dead(c, RP_ECLOSED);
            else if (flush(c) && pv->wq.len == pv->off && held(c) == 0)
                send_close_notify(c);
        }
    }
    pv->busy--;
    if (pv->busy > 0)
        return;
    after_callbacks(c);
}

/* ---- accepting ------------------------------------------------------------------ */

int px_tls_accept(struct px_loop *l, struct proxy *p, int fd, SSL_CTX *ctx, const char *peer,
                  uint64_t deadline_ms, px_tls_handshake_fn done, void *arg, struct px_tls **out)
{
    struct px_tls *c = calloc(1, sizeof *c);
    struct px_tls_priv *pv = calloc(1, sizeof *pv);
    SSL *ssl = SSL_new(ctx);
    int rv = RP_ENOMEM;
    if (c == NULL || pv == NULL || ssl == NULL) {
        rp_err(rv, "TLS connection from %s", peer);
        goto fail;
    }
    SSL_set_read_ahead(ssl, 1);
    SSL_set_default_read_buffer_len(ssl, 64 * 1024);
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_set_fd(ssl, fd) != 1) {
        rv = rp_err(RP_ETLS, "SSL_set_fd for %s", peer);
        goto fail;
    }
    if (rp_tls_gather_writes(ssl, fd, RP_TLS_GATHER_BYTES) != 0) {
        rp_err(rv, "TLS write buffer for %s", peer);
        goto fail;
    }
    SSL_set_app_data(ssl, c);
    c->ssl = ssl;
    c->proxy = p;
    c->priv = pv;
    c->w.fd = fd;
    c->w.on_event = on_event;
    snprintf(c->peer, sizeof c->peer, "%s", peer);
    pv->c = c;
    pv->state = ST_HANDSHAKE;
    pv->hs_done = done;
    pv->hs_arg = arg;
    if ((rv = px_watch_add(l, &c->w, EPOLLIN)) != 0)
        goto fail;
    px_loop_conn_add(l);
    all_add(pv);
    px_timer_arm(l, &pv->deadline, deadline_ms, deadline_fire);
    if (out != NULL)
        *out = c;
    /* The ClientHello is usually waiting already (the listener peeked it): try at once,
     * but from a timer, so that the callback never runs inside this call. */
    px_timer_arm(l, &pv->kick, 0, kick_fire);
    return 0;
fail:
    SSL_free(ssl);
    close(fd);
    free(pv);
    free(c);
    return rv;
}

void px_tls_close_all(struct px_loops *ls)
{
    for (;;) {
        struct px_tls *c = NULL;
        pthread_mutex_lock(&all_mu);
        for (struct px_tls_priv *pv = all_head; pv != NULL && c == NULL; pv = pv->next)
            for (unsigned i = 0; i < px_loops_count(ls) && c == NULL; i++)
                if (pv->c->w.loop == px_loops_get(ls, i))
                    c = pv->c;
        pthread_mutex_unlock(&all_mu);
        if (c == NULL)
            return;
        if (!c->priv->dead) {
            c->priv->dead = true;
            c->priv->end_rv = RP_ECLOSED;
            rp_err(RP_ECLOSED, "the proxy is stopping");
        }
        finish(c);
    }
}

void *px_tls_handshake_arg(const struct px_tls *c)
{
    return c->priv->hs_arg;
}

bool px_tls_in_handshake(const struct px_tls *c)
{
    return c->priv->state == ST_HANDSHAKE && !c->priv->dead;
}
