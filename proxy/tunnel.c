/* proxy/tunnel.c: reverse tunnels, the proxy's side (proxy/tunnel.h).
 *
 * A tunnel is one px_tls connection (ALPN teleport-reversetunnel, a Node client
 * certificate) carrying an nghttp2 client session, on the loop that accepted it. Its
 * state belongs to that loop; the registry (host id -> tunnels) is the only shared part,
 * under a mutex. A dial from a worker thread posts a request to the tunnel's loop,
 * which opens a CONNECT stream and pumps it to one end of a socket pair; the worker
 * gets the other end once the agent answered 200.
 *
 * Lifetime: a tunnel leaves the registry (under the mutex) on its own loop, right
 * before it is freed there. A posted dial therefore finds its tunnel again by host id
 * and sequence number under the mutex, on the tunnel's loop: if it is still
 * registered it cannot be freed while the dial uses it.
 *
 * Flow control per stream, as on the agent (agent/tunnel.c): the agent's DATA is
 * consumed (its window reopened) only as the socket pair takes it; our DATA is read
 * from the socket pair only when nghttp2 serializes frames, within the agent's window,
 * and only while less than OUT_HIGH bytes wait in the TLS write queue (on_drained
 * resumes).
 *
 * Memory of an idle tunnel: no stream, no buffered bytes, TLS record buffers released
 * (core's SSL_MODE_RELEASE_BUFFERS), HPACK dynamic tables of size 0 both ways. */
#include "proxy/tunnel.h"

#include <errno.h>
#include <fcntl.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/tunnel_h2.h"
#include "lib/util.h"
#include "proxy/conn.h"
#include "proxy/loop.h"
#include "proxy/proxy.h"

#define LOG "tunnel"
#define BUCKETS 4096
#define STREAM_WINDOW (256 << 10)
#define CONN_WINDOW (4 << 20)
#define OUT_HIGH (256 << 10)
#define READ_CHUNK (16 << 10)
#define MAX_MISSED_PINGS 3
#define MAX_STREAMS_PER_TUNNEL 1024 /* sessions in flight through one tunnel */

struct ptun;

/* One dial, shared by the worker that waits and the loop that opens the stream. */
struct dial_req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;   /* under mu: the waiter and the loop */
    int result; /* under mu: 1 pending, 0 open, < 0 the RP_E* code */
    char why[320];
    bool abandoned; /* under mu: the waiter gave up; the loop drops the stream */
    int loop_fd;    /* the loop's end of the socket pair (the loop owns it once posted) */
    char host_id[40];
    uint64_t seq; /* the tunnel it was meant for */
    char client[80];
    struct px_tunnels *reg;
    /* px_tunnels_open: no socket pair; the stream is joined to a client connection
     * (px_tunnel_stream_join) on the tunnel's loop. */
    bool joined_mode;
    struct px_loop *loop;   /* the tunnel's loop */
    struct pstream *stream; /* joined mode, on the tunnel's loop only: NULL once it ended */
};

struct pstream {
    struct ptun *t;
    int32_t id;
    struct px_watch w; /* the loop's end of the socket pair */
    bool watched;
    struct dial_req *req; /* until the agent answered */
    int status;           /* the agent's :status */
    char why[200];        /* its x-raftport-error */
    bool answered, deferred, read_eof, peer_eof, wr_shut;
    bool draining;      /* the stream closed with bytes still for the socket: written, then freed */
    struct rp_buf pend; /* from the agent, not yet taken by the socket */
    /* Joined mode (px_tunnels_open): the agent's bytes go straight into the client's
     * TLS connection and the client's are read straight into DATA frames. */
    struct dial_req *handle; /* the caller's handle (this stream holds a reference) */
    struct px_tls *client;   /* once joined; NULL before and once it closed */
    bool client_gone;        /* the client closed or was never joined: drop what comes */
    size_t unconsumed;       /* given to the client's queue; window not reopened yet */
    bool corked;             /* the client is corked until the tunnel's read ends */
    struct pstream *prev, *next;
};

struct ptun {
    struct px_tunnels *reg;
    struct px_tls *c;
    uint64_t seq;
    char host_id[40];
    nghttp2_session *h2;
    struct px_timer ping;
    unsigned missed_pings;
    atomic_bool superseded; /* a newer tunnel of the same host registered */
    bool closing;
    struct pstream *streams;
    size_t n_streams;
    bool any_corked;          /* a joined client was corked while reading the agent's frames */
    struct ptun *bucket_next; /* registry, under reg->mu */
};

struct px_tunnels {
    struct proxy *p;
    uint64_t keepalive_ms;
    pthread_mutex_t mu;
    struct ptun *buckets[BUCKETS];
    size_t count;
    uint64_t next_seq;
};

/* ---- the registry --------------------------------------------------------------------- */

static size_t bucket_of(const char *host_id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)host_id; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return (size_t)(h % BUCKETS);
}

/* The newest tunnel of @host_id. Under mu. */
static struct ptun *newest(struct px_tunnels *r, const char *host_id)
{
    struct ptun *best = NULL;
    for (struct ptun *t = r->buckets[bucket_of(host_id)]; t != NULL; t = t->bucket_next)
        if (strcmp(t->host_id, host_id) == 0 && (best == NULL || t->seq > best->seq))
            best = t;
    return best;
}

static void registry_add(struct px_tunnels *r, struct ptun *t)
{
    pthread_mutex_lock(&r->mu);
    t->seq = ++r->next_seq;
    size_t b = bucket_of(t->host_id);
    for (struct ptun *o = r->buckets[b]; o != NULL; o = o->bucket_next)
        if (strcmp(o->host_id, t->host_id) == 0)
            atomic_store(&o->superseded, true);
    t->bucket_next = r->buckets[b];
    r->buckets[b] = t;
    r->count++;
    pthread_mutex_unlock(&r->mu);
}

static void registry_remove(struct px_tunnels *r, struct ptun *t)
{
    pthread_mutex_lock(&r->mu);
    for (struct ptun **pp = &r->buckets[bucket_of(t->host_id)]; *pp != NULL;
         pp = &(*pp)->bucket_next)
        if (*pp == t) {
            *pp = t->bucket_next;
            r->count--;
            break;
        }
    pthread_mutex_unlock(&r->mu);
}

int px_tunnels_new(struct px_tunnels **out, struct proxy *p)
{
    struct px_tunnels *r = calloc(1, sizeof *r);
    *out = NULL;
    if (r == NULL)
        return rp_err(RP_ENOMEM, "tunnel registry");
    r->p = p;
    const struct rp_config *cfg = p ? proxy_config(p) : NULL;
    r->keepalive_ms = cfg && cfg->keep_alive_interval_ms ? cfg->keep_alive_interval_ms : 30000;
    pthread_mutex_init(&r->mu, NULL);
    *out = r;
    return 0;
}

void px_tunnels_set_keepalive(struct px_tunnels *t, uint64_t ms)
{
    t->keepalive_ms = ms ? ms : 30000;
}

static void stream_free(struct pstream *s);

void px_tunnels_free(struct px_tunnels *r)
{
    if (r == NULL)
        return;
    /* The loops stopped (and are freed): no thread touches a tunnel any more, and their
     * watches and timers must not be touched either. What each tunnel holds of its own
     * (streams, socket pairs, the HTTP/2 session) goes; its px_tls is the proxy core's,
     * detached here so that nothing calls into us later. */
    for (size_t b = 0; b < BUCKETS; b++) {
        struct ptun *t = r->buckets[b];
        while (t != NULL) {
            struct ptun *next = t->bucket_next;
            while (t->streams != NULL) {
                t->streams->watched = false;
                t->streams->client = NULL; /* the core ends the connection itself */
                stream_free(t->streams);
            }
            nghttp2_session_del(t->h2);
            t->c->mod = NULL;
            t->c->on_readable = NULL;
            t->c->on_drained = NULL;
            t->c->on_close = NULL;
            free(t);
            t = next;
        }
    }
    pthread_mutex_destroy(&r->mu);
    free(r);
}

bool px_tunnels_has(struct px_tunnels *r, const char *host_id)
{
    pthread_mutex_lock(&r->mu);
    bool has = newest(r, host_id) != NULL;
    pthread_mutex_unlock(&r->mu);
    return has;
}

size_t px_tunnels_count(struct px_tunnels *r)
{
    pthread_mutex_lock(&r->mu);
    size_t n = r->count;
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* ---- dial requests --------------------------------------------------------------------- */

static void req_release(struct dial_req *q)
{
    pthread_mutex_lock(&q->mu);
    bool last = --q->refs == 0;
    pthread_mutex_unlock(&q->mu);
    if (!last)
        return;
    if (q->loop_fd >= 0)
        close(q->loop_fd);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

/* Tells the waiter the outcome (0 or a negative code with @why). Returns false if the
 * waiter had given up already. */
static bool req_finish(struct dial_req *q, int result, const char *why)
{
    pthread_mutex_lock(&q->mu);
    bool wanted = !q->abandoned;
    q->result = result;
    if (why != NULL)
        snprintf(q->why, sizeof q->why, "%s", why);
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    return wanted;
}

/* ---- streams --------------------------------------------------------------------------- */

static void pump_out(struct ptun *t);

static struct pstream *of_stream_watch(struct px_watch *w)
{
    return (struct pstream *)((char *)w - offsetof(struct pstream, w));
}

static void stream_events(struct pstream *s)
{
    if (!s->watched)
        return;
    uint32_t ev = 0;
    if (s->answered && s->deferred && !s->read_eof && !s->draining)
        ev |= EPOLLIN;
    if (s->pend.len > 0)
        ev |= EPOLLOUT;
    px_watch_mod(&s->w, ev);
}

static void stream_unwatch(struct pstream *s)
{
    if (s->watched) {
        px_watch_del(&s->w);
        s->watched = false;
    }
}

static void stream_free(struct pstream *s)
{
    struct ptun *t = s->t;
    if (s->prev)
        s->prev->next = s->next;
    else
        t->streams = s->next;
    if (s->next)
        s->next->prev = s->prev;
    t->n_streams--;
    stream_unwatch(s);
    if (s->w.fd >= 0)
        close(s->w.fd);
    if (s->req != NULL) {
        req_finish(s->req, RP_EUNAVAILABLE,
                   "the tunnel closed the stream before the node answered");
        req_release(s->req);
    }
    if (s->handle != NULL) {
        struct dial_req *h = s->handle;
        if (s->corked && s->client != NULL)
            px_tls_uncork(s->client);
        /* Bytes the client never took still count against the tunnel's window. */
        if (s->unconsumed + s->pend.len > 0)
            nghttp2_session_consume_connection(t->h2, s->unconsumed + s->pend.len);
        h->stream = NULL;
        if (s->client != NULL && !s->wr_shut)
            px_tls_close(s->client); /* what it was sent is flushed first */
        req_release(h);
    }
    rp_buf_free(&s->pend);
    free(s);
}

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

/* Reopens the agent's windows by @n bytes taken by the socket: the stream's and the
 * connection's, or the connection's alone once the stream closed. */
static void consumed(struct pstream *s, size_t n)
{
    if (s->draining)
        nghttp2_session_consume_connection(s->t->h2, n);
    else
        nghttp2_session_consume(s->t->h2, s->id, n);
}

/* Joined mode: reopens the agent's window by what the client's connection took, as
 * long as its queue is short (else when it drains: px_tunnel_stream_client_drained). */
static void joined_settle(struct pstream *s)
{
    if (s->unconsumed > 0 && s->client != NULL && px_tls_pending(s->client) < OUT_HIGH) {
        consumed(s, s->unconsumed);
        s->unconsumed = 0;
    }
}

/* Joined mode's stream_flush: what waited for the client goes to its connection; the
 * node's end of the stream ends the client's connection once that is written. Returns
 * true if it freed the stream. */
static bool joined_flush(struct pstream *s)
{
    if (s->client_gone) {
        consumed(s, s->pend.len + s->unconsumed);
        s->unconsumed = 0;
        rp_buf_free(&s->pend);
        rp_buf_init(&s->pend);
        if (s->draining) {
            stream_free(s);
            return true;
        }
        return false;
    }
    if (s->client == NULL)
        return false; /* not joined yet: the bytes wait, bounded by the stream's window */
    if (s->pend.len > 0) {
        size_t n = s->pend.len;
        if (px_tls_write(s->client, s->pend.data, n) == 0)
            s->unconsumed += n;
        else
            consumed(s, n); /* the client is closing: its on_close resets the stream */
        rp_buf_free(&s->pend);
        rp_buf_init(&s->pend);
    }
    joined_settle(s);
    if (s->peer_eof && !s->wr_shut) {
        s->wr_shut = true;
        px_tls_close(s->client);
    }
    if (s->draining) {
        consumed(s, s->unconsumed);
        s->unconsumed = 0;
        stream_free(s);
        return true;
    }
    return false;
}

/* Writes what the agent sent to the socket pair; consumes what it took. Returns true
 * if it freed a draining stream (the caller must not touch @s then). */
static bool stream_flush(struct pstream *s)
{
    if (s->handle != NULL)
        return joined_flush(s);
    size_t off = 0;
    bool dead = false;
    while (s->w.fd >= 0 && off < s->pend.len) {
        ssize_t n = send(s->w.fd, s->pend.data + off, s->pend.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
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
    if (s->draining && (s->pend.len == 0 || !s->watched)) {
        consumed(s, s->pend.len);
        stream_free(s);
        return true;
    }
    if (s->peer_eof && s->pend.len == 0 && !s->wr_shut && s->w.fd >= 0) {
        shutdown(s->w.fd, SHUT_WR);
        s->wr_shut = true;
    }
    stream_events(s);
    return false;
}

static void on_stream_event(struct px_watch *w, uint32_t events)
{
    struct pstream *s = of_stream_watch(w);
    struct ptun *t = s->t;
    if (events & (EPOLLERR | EPOLLHUP)) {
        /* The socket pair is done for: stop watching (level-triggered HUP would spin);
         * the reads and writes below see EOF or EPIPE and end the stream. */
        stream_unwatch(s);
        if (!s->answered)
            s->deferred = false;
    }
    if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && stream_flush(s)) {
        pump_out(t); /* the connection window may have reopened */
        return;
    }
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && s->deferred && s->answered && !s->draining) {
        s->deferred = false;
        nghttp2_session_resume_data(t->h2, s->id);
        stream_events(s);
    }
    pump_out(t);
}

static ssize_t body_read(nghttp2_session *h2, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    (void)h2;
    (void)id;
    (void)ud;
    struct pstream *s = src->ptr;
    if (!s->answered) {
        /* Nothing flows before the agent accepted (the caller does not have its end). */
        s->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (s->handle != NULL) {
        /* Joined: the client's bytes are read straight into the frame. */
        if (s->client == NULL) {
            if (s->client_gone)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets the stream */
            s->deferred = true;
            return NGHTTP2_ERR_DEFERRED;
        }
        ssize_t n = px_tls_read(s->client, buf, len);
        if (n > 0)
            return n;
        if (n == RP_EAGAIN) {
            s->deferred = true;
            px_tls_pause_reading(s->client, false);
            return NGHTTP2_ERR_DEFERRED;
        }
        if (n == 0) {
            s->read_eof = true;
            *flags |= NGHTTP2_DATA_FLAG_EOF;
            px_tls_pause_reading(s->client, true);
            return 0;
        }
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the client failed: reset */
    }
    for (;;) {
        ssize_t n = read(s->w.fd, buf, len);
        if (n > 0)
            return n;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            s->deferred = true;
            stream_events(s);
            return NGHTTP2_ERR_DEFERRED;
        }
        s->read_eof = true;
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        stream_events(s);
        return 0;
    }
}

/* ---- nghttp2 callbacks ----------------------------------------------------------------- */

static int on_header(nghttp2_session *h2, const nghttp2_frame *f, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *ud)
{
    (void)flags;
    (void)ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_RESPONSE)
        return 0;
    struct pstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL)
        return 0;
    if (namelen == 7 && memcmp(name, ":status", 7) == 0) {
        s->status = 0;
        for (size_t i = 0; i < valuelen && i < 3; i++)
            s->status = s->status * 10 + (value[i] >= '0' && value[i] <= '9' ? value[i] - '0' : 0);
    } else if (namelen == 16 && memcmp(name, "x-raftport-error", 16) == 0) {
        size_t n = valuelen < sizeof s->why - 1 ? valuelen : sizeof s->why - 1;
        /* Printable bytes only: it goes to logs and to a user's terminal. */
        for (size_t i = 0; i < n; i++)
            s->why[i] = value[i] >= 0x20 && value[i] < 0x7f ? (char)value[i] : '?';
        s->why[n] = '\0';
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *h2, const nghttp2_frame *f, void *ud)
{
    struct ptun *t = ud;
    if (f->hd.type == NGHTTP2_PING && (f->hd.flags & NGHTTP2_FLAG_ACK)) {
        t->missed_pings = 0;
        return 0;
    }
    if (f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA)
        return 0;
    struct pstream *s = nghttp2_session_get_stream_user_data(h2, f->hd.stream_id);
    if (s == NULL)
        return 0;
    if (f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_RESPONSE &&
        s->req != NULL) {
        struct dial_req *q = s->req;
        s->req = NULL;
        if (s->status == 200) {
            s->answered = true;
            if (!req_finish(q, 0, NULL))
                nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
            else if (s->deferred) {
                s->deferred = false;
                nghttp2_session_resume_data(h2, s->id);
            }
        } else {
            char why[300];
            snprintf(why, sizeof why, "node %s refused the session (%d): %s", t->host_id, s->status,
                     s->why[0] ? s->why : "no reason given");
            req_finish(q, s->status == 503 ? RP_EBUSY : RP_EUNAVAILABLE, why);
            nghttp2_submit_rst_stream(h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_CANCEL);
        }
        req_release(q);
        stream_events(s);
    }
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
    struct pstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL || !s->answered || s->client_gone || (s->handle == NULL && s->w.fd < 0)) {
        nghttp2_session_consume(h2, id, len);
        return 0;
    }
    if (s->client != NULL && s->pend.len == 0) {
        /* Joined: straight into the client's TLS connection, corked until the read of
         * the agent's bytes ends (uncork_clients), so that DATA frames cut by TLS
         * records leave as full records. */
        if (!s->corked) {
            px_tls_cork(s->client);
            s->corked = true;
            s->t->any_corked = true;
        }
        if (px_tls_write(s->client, data, len) != 0) {
            nghttp2_session_consume(h2, id, len); /* closing: its on_close resets */
            return 0;
        }
        s->unconsumed += len;
        joined_settle(s);
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
    struct pstream *s = nghttp2_session_get_stream_user_data(h2, id);
    if (s == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(h2, id, NULL);
    s->draining = true;
    if (s->handle != NULL) {
        if (code != NGHTTP2_NO_ERROR)
            stream_free(s); /* reset: the client's connection ends */
        else {
            s->peer_eof = true;
            joined_flush(s); /* delivered, then freed (at once if the client is gone) */
        }
        return 0;
    }
    if (code != NGHTTP2_NO_ERROR || s->w.fd < 0 || !s->watched) {
        /* Reset: what the socket did not take is dropped, its window given back. */
        consumed(s, s->pend.len);
        stream_free(s);
        return 0;
    }
    /* A clean end: the last bytes still reach the client, then the socket closes. */
    s->peer_eof = true;
    stream_flush(s);
    return 0;
}

/* ---- the tunnel's connection ------------------------------------------------------------ */

/* Serializes frames into the TLS write queue while it is under OUT_HIGH (on_drained
 * calls again), and closes a tunnel whose session is over. */
static void pump_out(struct ptun *t)
{
    if (t->closing)
        return;
    /* Frames are gathered (corked) and leave in full TLS records: a DATA frame is its
     * payload plus a 9-byte header, and written alone each would cost two records. */
    px_tls_cork(t->c);
    while (px_tls_pending(t->c) < OUT_HIGH) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(t->h2, &p);
        if (n < 0) {
            rp_warn(LOG, "tunnel of node %s (%s): HTTP/2: %s", t->host_id, t->c->peer,
                    nghttp2_strerror((int)n));
            t->closing = true;
            px_tls_uncork(t->c);
            px_tls_abort(t->c);
            return;
        }
        if (n == 0)
            break;
        if (px_tls_write(t->c, p, (size_t)n) != 0) {
            t->closing = true;
            px_tls_uncork(t->c);
            return; /* the connection is closing; on_close follows */
        }
    }
    px_tls_uncork(t->c);
    if (!nghttp2_session_want_read(t->h2) && !nghttp2_session_want_write(t->h2)) {
        rp_info(LOG, "tunnel of node %s (%s) ended by the agent", t->host_id, t->c->peer);
        t->closing = true;
        px_tls_close(t->c);
    }
}

/* Writes what joined clients were given while the agent's frames were read. */
static void uncork_clients(struct ptun *t)
{
    if (!t->any_corked)
        return;
    t->any_corked = false;
    for (struct pstream *s = t->streams; s != NULL; s = s->next)
        if (s->corked) {
            s->corked = false;
            if (s->client != NULL) {
                px_tls_uncork(s->client);
                joined_settle(s);
            }
        }
}

static void on_readable(struct px_tls *c)
{
    struct ptun *t = c->mod;
    uint8_t buf[READ_CHUNK];
    for (;;) {
        ssize_t r = px_tls_read(c, buf, sizeof buf);
        if (r == RP_EAGAIN)
            break;
        if (r <= 0) {
            if (r == 0)
                rp_info(LOG, "tunnel of node %s (%s) closed by the agent", t->host_id, c->peer);
            else
                rp_warn(LOG, "tunnel of node %s (%s): %s", t->host_id, c->peer, rp_errmsg());
            t->closing = true;
            uncork_clients(t);
            px_tls_close(c);
            return;
        }
        ssize_t used = nghttp2_session_mem_recv(t->h2, buf, (size_t)r);
        if (used < 0) {
            rp_warn(LOG, "tunnel of node %s (%s): bad HTTP/2: %s", t->host_id, c->peer,
                    nghttp2_strerror((int)used));
            t->closing = true;
            uncork_clients(t);
            px_tls_abort(c);
            return;
        }
        if (px_tls_pending(c) >= OUT_HIGH) {
            /* The agent reads too slowly: take nothing more from it (its PINGs and
             * WINDOW_UPDATEs included) until what we owe it is written. */
            px_tls_pause_reading(c, true);
            break;
        }
    }
    uncork_clients(t);
    pump_out(t);
}

static void on_drained(struct px_tls *c)
{
    pump_out(c->mod);
    if (px_tls_pending(c) < OUT_HIGH)
        px_tls_pause_reading(c, false);
}

static void on_close(struct px_tls *c)
{
    struct ptun *t = c->mod;
    registry_remove(t->reg, t);
    px_timer_cancel(&t->ping);
    while (t->streams != NULL)
        stream_free(t->streams);
    nghttp2_session_del(t->h2);
    rp_info(LOG, "reverse tunnel of node %s (%s) closed", t->host_id, c->peer);
    free(t);
}

static void ping_fire(struct px_timer *tm)
{
    struct ptun *t = (struct ptun *)((char *)tm - offsetof(struct ptun, ping));
    if (t->closing)
        return;
    if (t->missed_pings >= MAX_MISSED_PINGS) {
        rp_warn(LOG, "tunnel of node %s (%s): %u keepalive pings went unanswered; closing it",
                t->host_id, t->c->peer, t->missed_pings);
        t->closing = true;
        px_tls_abort(t->c);
        return;
    }
    if (atomic_load(&t->superseded) && t->n_streams == 0) {
        rp_info(LOG, "tunnel of node %s (%s) replaced by a newer one; closing it", t->host_id,
                t->c->peer);
        t->closing = true;
        px_tls_close(t->c);
        return;
    }
    t->missed_pings++;
    nghttp2_submit_ping(t->h2, NGHTTP2_FLAG_NONE, NULL);
    px_timer_arm(t->c->w.loop, &t->ping, t->reg->keepalive_ms, ping_fire);
    pump_out(t);
}

static int session_new(struct ptun *t)
{
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb) != 0)
        return RP_ENOMEM;
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_data_source_read_length_callback(cb, rp_tunnel_h2_frame_len);
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cb);
        return RP_ENOMEM;
    }
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 0);
    /* The agent may not open streams (it is the server): nothing to reserve for them. */
    nghttp2_option_set_max_reserved_remote_streams(opt, 0);
    int r = nghttp2_session_client_new2(&t->h2, cb, t, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (r != 0)
        return RP_ENOMEM;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW},
        {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, RP_TUNNEL_FRAME_MAX},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, 0},
    };
    if (nghttp2_submit_settings(t->h2, NGHTTP2_FLAG_NONE, iv, sizeof iv / sizeof iv[0]) != 0 ||
        nghttp2_session_set_local_window_size(t->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0)
        return RP_ENOMEM;
    return 0;
}

void px_tunnel_attach_to(struct px_tls *c, struct px_tunnels *reg)
{
    if (reg == NULL || !rp_identity_is(c->ident, RP_SYS_NODE) || c->ident->host_id == NULL ||
        c->ident->host_id[0] == '\0' ||
        strlen(c->ident->host_id) >= sizeof((struct ptun *)0)->host_id) {
        rp_warn(LOG, "refused a reverse tunnel from %s: %s", c->peer,
                c->ident == NULL ? "no client certificate (a node's identity is required)"
                                 : "its certificate is not a Node identity of this cluster");
        px_tls_close(c);
        return;
    }
    struct ptun *t = calloc(1, sizeof *t);
    if (t == NULL || session_new(t) != 0) {
        if (t != NULL)
            nghttp2_session_del(t->h2);
        free(t);
        rp_warn(LOG, "reverse tunnel from %s: out of memory", c->peer);
        px_tls_abort(c);
        return;
    }
    t->reg = reg;
    t->c = c;
    snprintf(t->host_id, sizeof t->host_id, "%s", c->ident->host_id);
    atomic_init(&t->superseded, false);
    c->mod = t;
    c->on_readable = on_readable;
    c->on_drained = on_drained;
    c->on_close = on_close;
    registry_add(reg, t);
    rp_info(LOG, "reverse tunnel of node %s from %s", t->host_id, c->peer);
    px_timer_arm(c->w.loop, &t->ping, reg->keepalive_ms, ping_fire);
    pump_out(t); /* the connection preface and our SETTINGS */
}

void px_tunnel_attach(struct px_tls *c)
{
    px_tunnel_attach_to(c, c->proxy ? proxy_tunnels(c->proxy) : NULL);
}

/* ---- dialling -------------------------------------------------------------------------- */

/* On the tunnel's loop: opens the CONNECT stream of @arg (a dial_req holding a
 * reference for us). */
static void dial_on_loop(void *arg)
{
    struct dial_req *q = arg;
    struct px_tunnels *reg = q->reg;
    pthread_mutex_lock(&reg->mu);
    struct ptun *t = NULL;
    for (struct ptun *o = reg->buckets[bucket_of(q->host_id)]; o != NULL; o = o->bucket_next)
        if (o->seq == q->seq)
            t = o;
    pthread_mutex_unlock(&reg->mu);
    /* Registered and on this loop: it is freed only here, after leaving the registry. */
    if (t == NULL || t->closing || t->c->w.loop != px_loop_current()) {
        req_finish(q, RP_EUNAVAILABLE, "the node's tunnel closed before the session started");
        req_release(q);
        return;
    }
    if (t->n_streams >= MAX_STREAMS_PER_TUNNEL) {
        req_finish(q, RP_EBUSY, "the node's tunnel carries as many sessions as it may");
        req_release(q);
        return;
    }
    pthread_mutex_lock(&q->mu);
    bool abandoned = q->abandoned;
    pthread_mutex_unlock(&q->mu);
    struct pstream *s = abandoned ? NULL : calloc(1, sizeof *s);
    if (s == NULL) {
        req_finish(q, abandoned ? RP_ETIMEDOUT : RP_ENOMEM, "out of memory");
        req_release(q);
        return;
    }
    s->t = t;
    s->w.fd = q->loop_fd;
    q->loop_fd = -1;
    s->w.on_event = on_stream_event;
    s->req = q;
    if (q->joined_mode) {
        pthread_mutex_lock(&q->mu);
        q->refs++; /* the stream's own, until it ends */
        pthread_mutex_unlock(&q->mu);
        s->handle = q;
        q->stream = s;
    }
    rp_buf_init(&s->pend);
    char authority[64];
    snprintf(authority, sizeof authority, "%s:22", t->host_id);
    nghttp2_nv nv[] = {
        {(uint8_t *)":method", (uint8_t *)"CONNECT", 7, 7, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)":authority", (uint8_t *)authority, 10, strlen(authority),
         NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"x-raftport-client", (uint8_t *)q->client, 17, strlen(q->client),
         NGHTTP2_NV_FLAG_NONE},
    };
    nghttp2_data_provider body = {.source.ptr = s, .read_callback = body_read};
    s->next = t->streams;
    if (t->streams)
        t->streams->prev = s;
    t->streams = s;
    t->n_streams++;
    int32_t id = nghttp2_submit_request(t->h2, NULL, nv, sizeof nv / sizeof nv[0], &body, s);
    if (id < 0) {
        char why[120];
        snprintf(why, sizeof why, "cannot open a stream: %s", nghttp2_strerror(id));
        req_finish(q, RP_EUNAVAILABLE, why);
        s->req = NULL;
        req_release(q);
        stream_free(s);
        return;
    }
    s->id = id;
    /* A joined stream has no socket pair to watch: the client's connection is its end. */
    if (!q->joined_mode) {
        if (px_watch_add(t->c->w.loop, &s->w, 0) == 0)
            s->watched = true;
        else
            nghttp2_submit_rst_stream(t->h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
    }
    pump_out(t);
}

/* Opens a CONNECT stream to @host_id's newest tunnel and waits for the agent's answer:
 * with @joined a stream for px_tunnel_stream_join (*@out, a reference), else one
 * pumped to a socket pair (*@fd, the caller's end). */
static int tunnels_dial(struct px_tunnels *reg, const char *host_id, const char *client_addr,
                        int timeout_ms, bool joined, int *fd, struct dial_req **out)
{
    if (fd != NULL)
        *fd = -1;
    if (out != NULL)
        *out = NULL;
    if (host_id == NULL || strlen(host_id) >= sizeof((struct dial_req *)0)->host_id)
        return rp_err(RP_EINVAL, "host id: expected a node's UUID");
    pthread_mutex_lock(&reg->mu);
    struct ptun *t = newest(reg, host_id);
    uint64_t seq = t ? t->seq : 0;
    struct px_loop *loop = t ? t->c->w.loop : NULL;
    pthread_mutex_unlock(&reg->mu);
    if (t == NULL)
        return rp_err(RP_ENOTFOUND, "node %s has no reverse tunnel to this proxy", host_id);
    struct dial_req *q = calloc(1, sizeof *q);
    int sp[2] = {-1, -1};
    if (q == NULL)
        return rp_err(RP_ENOMEM, "dial through the tunnel of node %s", host_id);
    if (!joined && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sp) != 0) {
        free(q);
        return rp_err(RP_EIO, "dial through the tunnel of node %s: socketpair: %s", host_id,
                      strerror(errno));
    }
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    q->refs = 2;
    q->result = 1;
    q->reg = reg;
    q->loop_fd = sp[1];
    q->seq = seq;
    q->joined_mode = joined;
    q->loop = loop;
    snprintf(q->host_id, sizeof q->host_id, "%s", host_id);
    snprintf(q->client, sizeof q->client, "%s", client_addr ? client_addr : "");
    if (px_loop_post(loop, dial_on_loop, q) != 0) {
        q->refs = 1;
        req_release(q);
        if (sp[0] >= 0)
            close(sp[0]);
        return rp_err(RP_EUNAVAILABLE, "node %s: the proxy is stopping", host_id);
    }
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000u;
    until.tv_sec += (time_t)(ns / 1000000000u);
    until.tv_nsec = (long)(ns % 1000000000u);
    pthread_mutex_lock(&q->mu);
    while (q->result == 1)
        if (pthread_cond_timedwait(&q->cv, &q->mu, &until) == ETIMEDOUT)
            break;
    int result = q->result;
    char why[320];
    snprintf(why, sizeof why, "%s", q->why);
    if (result == 1)
        q->abandoned = true;
    pthread_mutex_unlock(&q->mu);
    if (result == 0) {
        if (joined) {
            *out = q; /* our reference becomes the caller's */
        } else {
            req_release(q);
            *fd = sp[0];
        }
        return 0;
    }
    req_release(q);
    /* Our end closed: the loop sees EOF and ends the stream if it opened one. */
    if (sp[0] >= 0)
        close(sp[0]);
    if (result == 1)
        return rp_err(RP_ETIMEDOUT, "node %s did not answer through its tunnel within %d ms",
                      host_id, timeout_ms);
    return rp_err(result, "%s", why);
}

int px_tunnels_dial(struct px_tunnels *reg, const char *host_id, const char *client_addr,
                    int timeout_ms, int *fd)
{
    return tunnels_dial(reg, host_id, client_addr, timeout_ms, false, fd, NULL);
}

/* ---- streams joined to a client connection --------------------------------------------- */

int px_tunnels_open(struct px_tunnels *reg, const char *host_id, const char *client_addr,
                    int timeout_ms, struct px_tunnel_stream **out)
{
    struct dial_req *q;
    int rv = tunnels_dial(reg, host_id, client_addr, timeout_ms, true, NULL, &q);
    *out = rv == 0 ? (struct px_tunnel_stream *)q : NULL;
    return rv;
}

struct px_loop *px_tunnel_stream_loop(const struct px_tunnel_stream *h)
{
    return ((const struct dial_req *)h)->loop;
}

int px_tunnel_stream_join(struct px_tunnel_stream *h, struct px_tls *c)
{
    struct dial_req *q = (struct dial_req *)h;
    struct pstream *s = q->stream;
    if (px_loop_current() != q->loop || c->w.loop != q->loop)
        return rp_err(RP_EINVAL, "a tunnel stream joins a connection on the tunnel's loop only");
    if (s == NULL)
        return rp_err(RP_EUNAVAILABLE, "node %s: its tunnel closed before the session started",
                      q->host_id);
    struct ptun *t = s->t;
    s->client = c;
    if (joined_flush(s))
        return 0; /* the node had ended already: delivered, the client is closing */
    /* The frame source asked for bytes before there was a client: let it read. */
    px_tls_pause_reading(c, !s->deferred);
    pump_out(t);
    return 0;
}

void px_tunnel_stream_client_readable(struct px_tunnel_stream *h, struct px_tls *c)
{
    struct dial_req *q = (struct dial_req *)h;
    struct pstream *s = q->stream;
    /* Read only when a DATA frame wants bytes (body_read resumes reading on EAGAIN):
     * the agent's window is the back-pressure towards the client. */
    px_tls_pause_reading(c, true);
    if (s == NULL || s->client != c)
        return;
    if (s->deferred && s->answered && !s->draining && !s->read_eof) {
        s->deferred = false;
        nghttp2_session_resume_data(s->t->h2, s->id);
        pump_out(s->t);
    }
}

void px_tunnel_stream_client_drained(struct px_tunnel_stream *h)
{
    struct dial_req *q = (struct dial_req *)h;
    struct pstream *s = q->stream;
    if (s == NULL || s->unconsumed == 0)
        return;
    joined_settle(s);
    pump_out(s->t); /* the WINDOW_UPDATE */
}

/* The client is gone (or never came): what the agent sends is dropped and the stream
 * reset, unless it ended already. */
static void client_gone(struct dial_req *q)
{
    struct pstream *s = q->stream;
    if (s == NULL)
        return;
    struct ptun *t = s->t;
    int32_t id = s->id;
    bool ended = s->read_eof && s->peer_eof;
    if (s->corked && s->client != NULL)
        px_tls_uncork(s->client);
    s->corked = false;
    s->client = NULL;
    s->client_gone = true;
    if (!joined_flush(s) && !ended)
        nghttp2_submit_rst_stream(t->h2, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    pump_out(t);
}

void px_tunnel_stream_client_closed(struct px_tunnel_stream *h)
{
    struct dial_req *q = (struct dial_req *)h;
    client_gone(q);
    req_release(q);
}

static void drop_on_loop(void *arg)
{
    struct dial_req *q = arg;
    client_gone(q);
    req_release(q);
}

void px_tunnel_stream_drop(struct px_tunnel_stream *h)
{
    struct dial_req *q = (struct dial_req *)h;
    if (q == NULL)
        return;
    if (px_loop_current() == q->loop) {
        drop_on_loop(q);
        return;
    }
    if (px_loop_post(q->loop, drop_on_loop, q) != 0)
        req_release(q); /* stopping: px_tunnels_free ends the stream */
}
