/* auth/listener.c: the auth API port (see auth/listener.h).
 *
 * One loop thread owns every connection that is not being served: it accepts,
 * drives TLS handshakes and reads frames with non-blocking I/O on epoll, and
 * enforces deadlines and caps. A connection whose frame is complete leaves the
 * loop (its socket is taken out of epoll) and goes to a queue served by a fixed
 * pool of workers, which run auth_serve_frame (a request may wait up to 10 s on
 * Raft) and write the answer (rp_conn waits in poll() on the non-blocking socket);
 * the worker reads the client's next request itself if it comes within LINGER_MS
 * and no other connection waits for a worker, and otherwise hands the connection
 * back to the loop (so clients are served in turn however many keep sending). A watch stream keeps
 * its thread for its life, so watches run on threads of their own, at most max_watches of them.
 *
 * So a stranger costs an fd and a small struct until it sends bytes, a TLS object
 * while it handshakes (bounded by the caps), and never a thread. Counts, the
 * per-address table and the slots are the loop's alone; workers talk to the loop
 * only through the queues below. */
#include "auth/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/internal.h"
#include "lib/conn.h"
#include "lib/connlimit.h"
#include "lib/errors.h"
#include "lib/frame.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define TICK_MS 200
#define WRITE_TIMEOUT_MS 10000
#define READ_CHUNK 16384
#define KEEP_FRAME_BYTES (64 * 1024)
#define WORKER_STACK (512 * 1024)
#define LINGER_MS 10 /* a worker waits this long for a client's next request */
#define EV_LISTEN UINT64_MAX
#define EV_WAKE (UINT64_MAX - 1)

enum lc_state {
    LC_FRESH,     /* accepted; no byte seen yet, so no TLS object either */
    LC_HANDSHAKE, /* TLS handshake in progress */
    LC_READING,   /* reading a request frame on the loop */
    LC_AWAY,      /* with a worker or a watch thread */
};

struct lconn {
    struct auth_listener *l;
    unsigned idx;
    uint32_t gen; /* bumped when the slot is reused: stale epoll events are ignored */
    enum lc_state state;
    int fd;
    struct rp_conn c; /* c.ssl set from the first byte on */
    struct rp_addr_key key;
    bool unauth;   /* counted in n_unauth and the per-address table */
    bool has_cert; /* handshake finished with a verified client certificate */
    bool done;     /* set by the thread that had it: close when it comes back */
    uint32_t epoll_events;
    uint64_t seq; /* accept order, for evicting the oldest */
    uint64_t deadline_ms;
    uint64_t queued_ms; /* when its frame went to the work queue */
    struct rp_identity ident;
    struct rp_frame_reader fr;
    struct lconn *next; /* in a queue */
};

struct lqueue {
    struct lconn *head, *tail;
};

struct auth_listener {
    struct auth_listener_limits lim;
    struct auth_server *srv;
    SSL_CTX *ctx;
    int listen_fd, epoll_fd, wake_fd;
    bool accept_paused; /* out of descriptors: listen fd out of epoll until the next tick */
    pthread_t loop_thread;
    bool loop_started;
    atomic_bool stopping;

    /* Loop only. */
    struct lconn **slots; /* max_total */
    unsigned n_open, n_unauth;
    uint64_t next_seq;
    uint32_t next_gen;
    struct rp_addr_counts per_addr;
    struct rp_refusal_log refusals;
    uint64_t last_tick;

    /* Between the loop and the threads, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;              /* work queue not empty, or stopping */
    pthread_cond_t idle_cv;              /* busy went down */
    struct lqueue work;                  /* frames to serve from peers with a certificate */
    struct lqueue work_anon;             /* frames from anonymous peers (ping, join, logins) */
    unsigned anon_serving;               /* workers busy with an anonymous frame */
    uint64_t busy_count, busy_logged_ms; /* anonymous frames answered "busy" (under mu) */
    struct lqueue back;                  /* connections handed back to the loop */
    unsigned busy;                       /* workers and watch threads alive */
    unsigned n_watches;

    atomic_ullong stat_accepted, stat_refused, stat_evicted, stat_timed_out;
};

void auth_listener_limits_default(struct auth_listener_limits *lim)
{
    lim->max_total = 1024;
    lim->reserve = 128;
    lim->per_addr_max = 64;
    /* A write holds its worker until it has committed, so the workers bound the writes
     * that can share one Raft entry: with 64, 256 clients got no more than 64 did
     * (10,655/s, the rest queued for a worker); with 256, 14,425/s. An idle worker
     * costs a sleeping thread and the stack it touched. */
    lim->workers = 256;
    lim->anon_workers = 8;
    lim->anon_wait_ms = 2000;
    lim->max_watches = 256;
    lim->handshake_ms = AUTH_READ_TIMEOUT_MS;
    lim->anon_idle_ms = 10000;
    lim->idle_ms = AUTH_IDLE_TIMEOUT_MS;
}

static void queue_push(struct lqueue *q, struct lconn *lc)
{
    lc->next = NULL;
    if (q->tail != NULL)
        q->tail->next = lc;
    else
        q->head = lc;
    q->tail = lc;
}

static struct lconn *queue_pop(struct lqueue *q)
{
    struct lconn *lc = q->head;
    if (lc != NULL) {
        q->head = lc->next;
        if (q->head == NULL)
            q->tail = NULL;
        lc->next = NULL;
    }
    return lc;
}

static void wake_loop(struct auth_listener *l)
{
    uint64_t one = 1;
    ssize_t w = write(l->wake_fd, &one, sizeof one);
    (void)w; /* a full counter still wakes the loop */
}

/* ---- connection bookkeeping (loop) ----------------------------------------------------- */

static void set_unauth(struct auth_listener *l, struct lconn *lc, bool unauth)
{
    if (lc->unauth == unauth)
        return;
    if (unauth) {
        l->n_unauth++;
        rp_addr_counts_add(&l->per_addr, &lc->key); /* room checked at accept */
    } else {
        l->n_unauth--;
        rp_addr_counts_remove(&l->per_addr, &lc->key);
    }
    lc->unauth = unauth;
}

static void conn_close(struct auth_listener *l, struct lconn *lc)
{
    set_unauth(l, lc, false);
    if (lc->epoll_events != 0)
        epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, lc->fd, NULL);
    if (lc->c.ssl != NULL || lc->c.fd >= 0) {
        rp_conn_close(&lc->c); /* closes lc->fd */
    } else if (lc->fd >= 0) {
        close(lc->fd);
    }
    rp_identity_free(&lc->ident);
    rp_frame_reader_free(&lc->fr);
    l->slots[lc->idx] = NULL;
    l->n_open--;
    free(lc);
}

static int watch_events(struct auth_listener *l, struct lconn *lc, uint32_t events)
{
    if (lc->epoll_events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)lc->gen << 32 | lc->idx};
    int op = lc->epoll_events == 0 ? EPOLL_CTL_ADD : events == 0 ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(l->epoll_fd, op, lc->fd, &ev) != 0)
        return rp_err(RP_EIO, "epoll_ctl: %s", strerror(errno));
    lc->epoll_events = events;
    return 0;
}

static void refuse_note(struct auth_listener *l, const struct rp_addr_key *k, const char *why)
{
    rp_refusal_log_note(&l->refusals, k, why, rp_mono_ms());
}

/* The unauthenticated connection held by the loop (from @k only, if not NULL) to
 * close first, or NULL: one that never sent a byte before one that did (a real
 * client sends its ClientHello at once, so an operator's handshake outlives a flood
 * of idle sockets from its own machine), then the oldest. Connections with a
 * worker cannot be taken back. */
static struct lconn *oldest_unauth(struct auth_listener *l, const struct rp_addr_key *k)
{
    struct lconn *best = NULL;
    for (unsigned i = 0; i < l->lim.max_total; i++) {
        struct lconn *lc = l->slots[i];
        if (lc == NULL || !lc->unauth || lc->state == LC_AWAY)
            continue;
        if (k != NULL && !rp_addr_key_equal(&lc->key, k))
            continue;
        bool silent = lc->state == LC_FRESH;
        bool best_silent = best != NULL && best->state == LC_FRESH;
        if (best == NULL || (silent && !best_silent) ||
            (silent == best_silent && lc->seq < best->seq))
            best = lc;
    }
    return best;
}

static bool evict_oldest(struct auth_listener *l, const struct rp_addr_key *k, const char *why)
{
    struct lconn *victim = oldest_unauth(l, k);
    if (victim == NULL)
        return false;
    atomic_fetch_add(&l->stat_evicted, 1);
    refuse_note(l, &victim->key, why);
    conn_close(l, victim);
    return true;
}

/* ---- accepting (loop) -------------------------------------------------------------------- */

/* Makes room for one more unauthenticated connection from @k: evicting the oldest
 * one from the same address, or the oldest of all when the shared caps are
 * reached. False if nothing could be evicted (the newcomer is refused). */
static bool make_room(struct auth_listener *l, const struct rp_addr_key *k)
{
    unsigned max_unauth = l->lim.max_total - l->lim.reserve;
    if (rp_addr_counts_get(&l->per_addr, k) >= l->lim.per_addr_max &&
        !evict_oldest(l, k,
                      "too many unauthenticated connections from this address; oldest closed"))
        return false;
    if ((l->n_unauth >= max_unauth || l->n_open >= l->lim.max_total) &&
        !evict_oldest(l, NULL, "unauthenticated connections at the global cap; oldest closed"))
        return false;
    /* The address table holds max_total addresses, more than n_unauth can reach:
     * adding this one cannot fail. */
    return true;
}

static void accept_one(struct auth_listener *l, int fd, const struct sockaddr_storage *ss,
                       socklen_t len)
{
    struct rp_addr_key key;
    rp_addr_key_from_sockaddr((const struct sockaddr *)ss, len, &key);
    if (!make_room(l, &key)) {
        atomic_fetch_add(&l->stat_refused, 1);
        refuse_note(l, &key, "no connection slot free");
        close(fd);
        return;
    }
    unsigned idx = 0;
    while (idx < l->lim.max_total && l->slots[idx] != NULL)
        idx++;
    struct lconn *lc = idx < l->lim.max_total ? calloc(1, sizeof *lc) : NULL;
    if (lc == NULL) {
        atomic_fetch_add(&l->stat_refused, 1);
        refuse_note(l, &key, "no connection slot free");
        close(fd);
        return;
    }
    lc->l = l;
    lc->idx = idx;
    lc->gen = ++l->next_gen;
    lc->state = LC_FRESH;
    lc->fd = fd;
    lc->c.fd = -1;
    lc->key = key;
    lc->seq = l->next_seq++;
    lc->deadline_ms = rp_mono_ms() + l->lim.handshake_ms;
    rp_frame_reader_init(&lc->fr, RP_FRAME_ANON_MAX);
    l->slots[idx] = lc;
    l->n_open++;
    set_unauth(l, lc, true);
    atomic_fetch_add(&l->stat_accepted, 1);
    /* Nothing is allocated for TLS until the peer sends its first byte. */
    if (watch_events(l, lc, EPOLLIN) != 0) {
        rp_warn("auth", "api connection: %s", rp_errmsg());
        conn_close(l, lc);
    }
}

static void on_listen(struct auth_listener *l)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(l->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            accept_one(l, fd, &ss, len);
            continue;
        }
        if (errno == EINTR || errno == ECONNABORTED)
            continue;
        if (errno == EMFILE || errno == ENFILE) {
            /* Out of descriptors: free one from a stranger if we can, otherwise stop
             * accepting until the next tick instead of spinning on the listener. */
            struct rp_addr_key none = {0};
            if (evict_oldest(l, NULL, "out of file descriptors; oldest unauthenticated closed"))
                continue;
            refuse_note(l, &none, "out of file descriptors");
            epoll_ctl(l->epoll_fd, EPOLL_CTL_DEL, l->listen_fd, NULL);
            l->accept_paused = true;
            return;
        }
        if (errno != EAGAIN && errno != EWOULDBLOCK)
            rp_warn("auth", "accept: %s", strerror(errno));
        return;
    }
}

/* ---- handshake and reading (loop) ----------------------------------------------------------- */

static void hand_to_worker(struct auth_listener *l, struct lconn *lc)
{
    watch_events(l, lc, 0);
    lc->state = LC_AWAY;
    lc->queued_ms = rp_mono_ms();
    pthread_mutex_lock(&l->mu);
    queue_push(lc->has_cert ? &l->work : &l->work_anon, lc);
    pthread_cond_signal(&l->work_cv);
    pthread_mutex_unlock(&l->mu);
}

/* Tells the peer why its frame was refused, if the socket takes it at once. */
static void reply_refusal(struct lconn *lc, int code, const char *msg)
{
    struct rp_buf out;
    rp_buf_init(&out);
    auth_reply_error(&out, code, msg);
    /* On the loop thread: a peer that does not read must not hold it (1 ms at most). */
    rp_conn_set_timeout(&lc->c, 1);
    rp_conn_write_frame(&lc->c, out.data, out.len);
    rp_buf_free(&out);
}

/* Reads what has arrived, exactly up to the end of the current frame (the rest
 * stays in the socket or in OpenSSL until this one is served). */
static void read_frames(struct auth_listener *l, struct lconn *lc)
{
    uint8_t buf[READ_CHUNK];
    for (;;) {
        size_t need = rp_frame_reader_need(&lc->fr);
        if (need == 0) {
            hand_to_worker(l, lc); /* a frame is ready already */
            return;
        }
        size_t got;
        short events;
        int rv =
            rp_conn_read_some(&lc->c, buf, need < sizeof buf ? need : sizeof buf, &got, &events);
        if (rv == 1) {
            watch_events(l, lc, events == POLLOUT ? EPOLLOUT : EPOLLIN);
            return;
        }
        if (rv != 0) {
            conn_close(l, lc);
            return;
        }
        size_t used;
        rv = rp_frame_reader_feed(&lc->fr, buf, got, &used);
        if (rv < 0) {
            char why[256];
            snprintf(why, sizeof why, "%s", rp_errmsg());
            if (lc->has_cert)
                rp_warn("auth", "api connection %s: closing: %s", lc->c.peer, why);
            else
                refuse_note(l, &lc->key, why);
            reply_refusal(lc, rv, why);
            conn_close(l, lc);
            return;
        }
        /* A peer with a certificate that is sending keeps its connection; an
         * anonymous one must finish its frame within its deadline. */
        if (lc->has_cert)
            lc->deadline_ms = rp_mono_ms() + l->lim.idle_ms;
        if (rv == 1) {
            hand_to_worker(l, lc);
            return;
        }
    }
}

static void start_reading(struct auth_listener *l, struct lconn *lc)
{
    lc->state = LC_READING;
    lc->deadline_ms = rp_mono_ms() + (lc->has_cert ? l->lim.idle_ms : l->lim.anon_idle_ms);
    read_frames(l, lc);
}

static void step_handshake(struct auth_listener *l, struct lconn *lc)
{
    short events;
    int rv = rp_conn_handshake_step(&lc->c, &events);
    if (rv == 1) {
        watch_events(l, lc, events == POLLOUT ? EPOLLOUT : EPOLLIN);
        return;
    }
    if (rv != 0) {
        refuse_note(l, &lc->key, rp_errmsg());
        conn_close(l, lc);
        return;
    }
    /* The socket stays non-blocking; the threads' writes wait in poll() for at most
     * this long (the loop never waits). */
    if (rp_conn_set_timeout(&lc->c, WRITE_TIMEOUT_MS) != 0) {
        conn_close(l, lc);
        return;
    }
    if (rp_tls_peer_identity(lc->c.ssl, &lc->ident) == 0) {
        lc->has_cert = true;
        set_unauth(l, lc, false);
        rp_frame_reader_set_limit(&lc->fr, RP_FRAME_MAX);
    }
    start_reading(l, lc);
}

static void on_conn_event(struct auth_listener *l, struct lconn *lc, uint32_t events)
{
    switch (lc->state) {
    case LC_FRESH:
        if (!(events & EPOLLIN)) {
            conn_close(l, lc); /* hung up before saying anything */
            return;
        }
        /* The socket is already non-blocking; rp_conn takes it from here. */
        if (rp_conn_accept_start(&lc->c, l->ctx, lc->fd) != 0) {
            lc->fd = -1; /* closed by rp_conn_accept_start */
            refuse_note(l, &lc->key, rp_errmsg());
            conn_close(l, lc);
            return;
        }
        lc->state = LC_HANDSHAKE;
        step_handshake(l, lc);
        return;
    case LC_HANDSHAKE:
        step_handshake(l, lc);
        return;
    case LC_READING:
        read_frames(l, lc);
        return;
    case LC_AWAY:
        return;
    }
}

/* Connections back from the threads: closed, or read again at once (the next
 * request may already sit in OpenSSL's buffer, where epoll cannot see it). */
static void take_back(struct auth_listener *l)
{
    pthread_mutex_lock(&l->mu);
    struct lqueue q = l->back;
    l->back.head = l->back.tail = NULL;
    pthread_mutex_unlock(&l->mu);
    struct lconn *lc;
    while ((lc = queue_pop(&q)) != NULL) {
        lc->epoll_events = 0;
        if (lc->done || atomic_load(&l->stopping)) {
            conn_close(l, lc);
            continue;
        }
        start_reading(l, lc); /* the thread took the frame it served */
    }
}

static void tick(struct auth_listener *l, uint64_t now)
{
    for (unsigned i = 0; i < l->lim.max_total; i++) {
        struct lconn *lc = l->slots[i];
        if (lc == NULL || lc->state == LC_AWAY || now < lc->deadline_ms)
            continue;
        atomic_fetch_add(&l->stat_timed_out, 1);
        if (lc->state == LC_FRESH || lc->state == LC_HANDSHAKE)
            refuse_note(l, &lc->key, "tls handshake not finished in time");
        else if (!lc->has_cert)
            refuse_note(l, &lc->key, "anonymous connection sent no whole request in time");
        conn_close(l, lc);
    }
    rp_refusal_log_flush(&l->refusals, now);
    if (l->accept_paused) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = EV_LISTEN};
        if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, l->listen_fd, &ev) == 0)
            l->accept_paused = false;
    }
}

static void *loop_main(void *arg)
{
    struct auth_listener *l = arg;
    struct epoll_event evs[128];
    while (!atomic_load(&l->stopping)) {
        int n = epoll_wait(l->epoll_fd, evs, 128, TICK_MS);
        if (n < 0 && errno != EINTR) {
            rp_error("auth", "api loop: epoll_wait: %s", strerror(errno));
            break;
        }
        for (int i = 0; i < n; i++) {
            uint64_t d = evs[i].data.u64;
            if (d == EV_LISTEN) {
                on_listen(l);
            } else if (d == EV_WAKE) {
                uint64_t v;
                ssize_t r = read(l->wake_fd, &v, sizeof v);
                (void)r;
                take_back(l);
            } else {
                unsigned idx = (unsigned)(d & 0xffffffffu);
                struct lconn *lc = idx < l->lim.max_total ? l->slots[idx] : NULL;
                if (lc != NULL && lc->gen == (uint32_t)(d >> 32))
                    on_conn_event(l, lc, evs[i].events);
            }
        }
        uint64_t now = rp_mono_ms();
        if (now - l->last_tick >= TICK_MS) {
            l->last_tick = now;
            tick(l, now);
        }
    }
    /* Stopping: close what the loop holds; wake threads blocked on their sockets
     * (they hand their connections back, and auth_listener_stop closes them). */
    for (unsigned i = 0; i < l->lim.max_total; i++) {
        struct lconn *lc = l->slots[i];
        if (lc == NULL)
            continue;
        if (lc->state == LC_AWAY)
            shutdown(lc->fd, SHUT_RDWR);
        else
            conn_close(l, lc);
    }
    return NULL;
}

/* ---- workers ----------------------------------------------------------------------------- */

static void give_back(struct auth_listener *l, struct lconn *lc)
{
    pthread_mutex_lock(&l->mu);
    queue_push(&l->back, lc);
    pthread_mutex_unlock(&l->mu);
    wake_loop(l);
}

static void thread_exit(struct auth_listener *l, bool watch)
{
    pthread_mutex_lock(&l->mu);
    l->busy--;
    if (watch)
        l->n_watches--;
    pthread_cond_broadcast(&l->idle_cv);
    pthread_mutex_unlock(&l->mu);
}

static void *watch_main(void *arg)
{
    struct lconn *lc = arg;
    struct auth_listener *l = lc->l;
    struct rp_buf out;
    rp_buf_init(&out);
    struct rp_identity *caller = lc->has_cert ? &lc->ident : NULL;
    if (auth_serve_frame(l->srv, &lc->c, caller, rp_frame_reader_frame(&lc->fr), &out) == 1)
        lc->done = true; /* a watch stream ends with its connection */
    else if (rp_conn_write_frame(&lc->c, out.data, out.len) != 0)
        lc->done = true; /* refused before streaming (denied, bad arguments): answered */
    rp_frame_reader_next(&lc->fr, KEEP_FRAME_BYTES);
    rp_buf_free(&out);
    give_back(l, lc);
    thread_exit(l, true);
    return NULL;
}

static bool frame_is_watch(const struct rp_buf *frame)
{
    msgpack_unpacked u;
    if (rp_mp_parse(frame->data, frame->len, &u) != 0)
        return false;
    const char *m;
    size_t n;
    bool watch = u.data.type == MSGPACK_OBJECT_MAP && rp_mp_get_str(&u.data, "m", &m, &n) == 0 &&
                 n == 5 && memcmp(m, "watch", 5) == 0;
    msgpack_unpacked_destroy(&u);
    return watch;
}

/* Starts a watch thread for @lc, or answers that there are too many. True if the
 * thread took the connection. */
static bool start_watch(struct auth_listener *l, struct lconn *lc, struct rp_buf *out)
{
    pthread_mutex_lock(&l->mu);
    bool room = l->n_watches < l->lim.max_watches && !atomic_load(&l->stopping);
    if (room) {
        l->n_watches++;
        l->busy++;
    }
    pthread_mutex_unlock(&l->mu);
    if (room) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, WORKER_STACK);
        int rv = pthread_create(&t, &attr, watch_main, lc);
        pthread_attr_destroy(&attr);
        if (rv == 0)
            return true;
        thread_exit(l, true);
    }
    char msg[128];
    snprintf(msg, sizeof msg, "this auth server already serves %u watch streams; retry later",
             l->lim.max_watches);
    auth_reply_error(out, RP_EBUSY, msg);
    return false;
}

/* After an answer to a client with a certificate: reads its next request on this
 * thread if it arrives within LINGER_MS, so a client that
 * sends requests back to back does not pay a trip through the loop for each. True
 * when a whole frame is ready; false to hand the connection back (a frame begun
 * here is kept in the reader and finished by the loop). */
/* Are other connections' frames waiting for a worker? */
static bool others_queued(struct auth_listener *l)
{
    pthread_mutex_lock(&l->mu);
    bool queued = l->work.head != NULL;
    pthread_mutex_unlock(&l->mu);
    return queued;
}

static bool next_frame_soon(struct auth_listener *l, struct lconn *lc, struct rp_buf *out)
{
    /* Lingering on one client is only for when nobody else waits: a client that sends
     * its next request at once would otherwise keep its worker for good, and with more
     * busy clients than workers the rest would never be served. */
    if (!lc->has_cert || atomic_load(&l->stopping) || others_queued(l))
        return false;
    uint8_t buf[READ_CHUNK];
    bool waited = false;
    /* Poll before reading unless OpenSSL holds bytes already: the next request is
     * rarely there the moment the answer went out. */
    bool try_read = rp_conn_pending(&lc->c);
    for (;;) {
        if (!try_read) {
            struct pollfd p = {.fd = lc->c.fd, .events = POLLIN};
            if (waited || poll(&p, 1, LINGER_MS) <= 0)
                return false;
            waited = true;
        }
        try_read = true;
        size_t need = rp_frame_reader_need(&lc->fr);
        size_t got;
        short events;
        int rv =
            rp_conn_read_some(&lc->c, buf, need < sizeof buf ? need : sizeof buf, &got, &events);
        if (rv == 1) {
            try_read = false;
            continue;
        }
        if (rv != 0) {
            lc->done = true;
            return false;
        }
        size_t used;
        rv = rp_frame_reader_feed(&lc->fr, buf, got, &used);
        if (rv < 0) {
            rp_warn("auth", "api connection %s: closing: %s", lc->c.peer, rp_errmsg());
            auth_reply_error(out, rv, rp_errmsg());
            rp_conn_write_frame(&lc->c, out->data, out->len);
            lc->done = true;
            return false;
        }
        if (rv == 1)
            return true;
    }
}

/* Serves the ready frame of @lc (and those that follow at once), then hands the
 * connection back to the loop, or to a watch thread. */
static void serve(struct auth_listener *l, struct lconn *lc, struct rp_buf *out)
{
    for (;;) {
        const struct rp_buf *frame = rp_frame_reader_frame(&lc->fr);
        if (frame_is_watch(frame)) {
            if (start_watch(l, lc, out))
                return; /* the watch thread has it now */
        } else {
            struct rp_identity *caller = lc->has_cert ? &lc->ident : NULL;
            if (auth_serve_frame(l->srv, &lc->c, caller, frame, out) == 1) {
                lc->done = true;
                break;
            }
        }
        if (rp_conn_write_frame(&lc->c, out->data, out->len) != 0) {
            lc->done = true;
            break;
        }
        rp_frame_reader_next(&lc->fr, KEEP_FRAME_BYTES);
        if (!next_frame_soon(l, lc, out))
            break;
    }
    /* Keep big answers from pinning memory in an idle worker. */
    if (out->cap > KEEP_FRAME_BYTES)
        rp_buf_free(out);
    give_back(l, lc);
}

/* An anonymous frame that waited longer than anon_wait_ms for a worker is answered
 * "busy" unserved: under a flood of strangers the queue then drains at once instead
 * of making every caller wait, and the caller knows to try again later. Logged once
 * a minute with the count. */
static void answer_busy(struct auth_listener *l, struct lconn *lc, struct rp_buf *out)
{
    if (rp_conn_set_timeout(&lc->c, 1000) == 0) {
        auth_reply_error(out, RP_EBUSY,
                         "busy: too many requests without a client certificate are waiting; "
                         "try again in a moment");
        if (rp_conn_write_frame(&lc->c, out->data, out->len) != 0)
            lc->done = true;
        rp_conn_set_timeout(&lc->c, WRITE_TIMEOUT_MS);
    } else {
        lc->done = true;
    }
    /* The frame is answered: drop it, or the loop would hand it to a worker again. */
    rp_frame_reader_next(&lc->fr, KEEP_FRAME_BYTES);
    uint64_t now = rp_mono_ms(), n = 0;
    pthread_mutex_lock(&l->mu);
    l->busy_count++;
    if (now - l->busy_logged_ms >= 60000) {
        n = l->busy_count;
        l->busy_count = 0;
        l->busy_logged_ms = now;
    }
    pthread_mutex_unlock(&l->mu);
    if (n > 0)
        rp_warn("auth",
                "%llu requests without a client certificate answered busy after waiting "
                "%u ms for a worker (logged at most once a minute)",
                (unsigned long long)n, l->lim.anon_wait_ms);
    give_back(l, lc);
}

static void *worker_main(void *arg)
{
    struct auth_listener *l = arg;
    struct rp_buf out;
    rp_buf_init(&out);
    for (;;) {
        pthread_mutex_lock(&l->mu);
        /* Anonymous frames (logins wait on the hashing pool, joins on Raft) may hold at
         * most anon_workers workers at once: the rest stay free for callers with a
         * certificate, so a flood of strangers never delays tctl or a forwarded write. */
        for (;;) {
            bool anon_ok = l->work_anon.head != NULL && l->anon_serving < l->lim.anon_workers;
            if (l->work.head != NULL || anon_ok || atomic_load(&l->stopping))
                break;
            pthread_cond_wait(&l->work_cv, &l->mu);
        }
        struct lconn *lc = queue_pop(&l->work);
        bool anon = false;
        if (lc == NULL && (l->anon_serving < l->lim.anon_workers || atomic_load(&l->stopping))) {
            lc = queue_pop(&l->work_anon);
            anon = lc != NULL;
            l->anon_serving += anon;
        }
        pthread_mutex_unlock(&l->mu);
        if (lc == NULL)
            break; /* stopping and nothing queued */
        if (atomic_load(&l->stopping)) {
            lc->done = true;
            give_back(l, lc);
        } else if (anon && rp_mono_ms() - lc->queued_ms > l->lim.anon_wait_ms) {
            answer_busy(l, lc, &out);
        } else {
            serve(l, lc, &out);
        }
        if (anon) {
            pthread_mutex_lock(&l->mu);
            l->anon_serving--;
            pthread_cond_signal(&l->work_cv);
            pthread_mutex_unlock(&l->mu);
        }
    }
    rp_buf_free(&out);
    thread_exit(l, false);
    return NULL;
}

/* ---- lifecycle ----------------------------------------------------------------------------- */

int auth_listener_open(struct auth_listener **out, const char *addr,
                       const struct auth_listener_limits *lim)
{
    struct auth_listener *l = calloc(1, sizeof *l);
    int rv;
    if (l == NULL)
        return rp_err(RP_ENOMEM, "auth listener");
    if (lim != NULL)
        l->lim = *lim;
    else
        auth_listener_limits_default(&l->lim);
    if (l->lim.anon_wait_ms == 0)
        l->lim.anon_wait_ms = 2000;
    if (l->lim.anon_workers == 0 || l->lim.anon_workers >= l->lim.workers)
        l->lim.anon_workers = l->lim.workers > 1 ? l->lim.workers / 2 : 1;
    if (l->lim.max_total == 0 || l->lim.reserve >= l->lim.max_total || l->lim.workers == 0 ||
        l->lim.per_addr_max == 0) {
        free(l);
        return rp_err(RP_EINVAL,
                      "auth listener limits: want max_total > reserve, per_addr_max > 0 and "
                      "workers > 0");
    }
    l->listen_fd = l->epoll_fd = l->wake_fd = -1;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->work_cv, NULL);
    pthread_cond_init(&l->idle_cv, NULL);
    rp_refusal_log_init(&l->refusals, "auth", "auth API connection");
    l->slots = calloc(l->lim.max_total, sizeof *l->slots);
    if (l->slots == NULL || rp_addr_counts_init(&l->per_addr, l->lim.max_total) != 0) {
        rv = rp_err(RP_ENOMEM, "auth listener: %u connection slots", l->lim.max_total);
        goto err;
    }
    l->listen_fd = rp_listen_tcp(addr, 1024);
    if (l->listen_fd < 0) {
        rv = l->listen_fd;
        goto err;
    }
    *out = l;
    return 0;
err:
    auth_listener_free(l);
    return rv;
}

int auth_listener_start(struct auth_listener *l, struct auth_server *s, SSL_CTX *ctx)
{
    l->srv = s;
    l->ctx = ctx;
    l->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (l->epoll_fd < 0 || l->wake_fd < 0)
        return rp_err(RP_EIO, "auth listener: epoll/eventfd: %s", strerror(errno));
    int fl = fcntl(l->listen_fd, F_GETFL);
    if (fl < 0 || fcntl(l->listen_fd, F_SETFL, fl | O_NONBLOCK) != 0)
        return rp_err(RP_EIO, "auth listener: fcntl: %s", strerror(errno));
    struct epoll_event lev = {.events = EPOLLIN, .data.u64 = EV_LISTEN};
    struct epoll_event wev = {.events = EPOLLIN, .data.u64 = EV_WAKE};
    if (epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, l->listen_fd, &lev) != 0 ||
        epoll_ctl(l->epoll_fd, EPOLL_CTL_ADD, l->wake_fd, &wev) != 0)
        return rp_err(RP_EIO, "auth listener: epoll_ctl: %s", strerror(errno));

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, WORKER_STACK);
    for (unsigned i = 0; i < l->lim.workers; i++) {
        pthread_t t;
        pthread_mutex_lock(&l->mu);
        l->busy++;
        pthread_mutex_unlock(&l->mu);
        if (pthread_create(&t, &attr, worker_main, l) != 0) {
            thread_exit(l, false);
            pthread_attr_destroy(&attr);
            return rp_err(RP_ENOMEM, "auth listener: cannot start worker %u", i);
        }
    }
    pthread_attr_destroy(&attr);
    if (pthread_create(&l->loop_thread, NULL, loop_main, l) != 0)
        return rp_err(RP_ENOMEM, "auth listener: cannot start the loop thread");
    l->loop_started = true;
    return 0;
}

int auth_listener_stop(struct auth_listener *l, int wait_ms)
{
    atomic_store(&l->stopping, true);
    if (l->wake_fd >= 0)
        wake_loop(l);
    if (l->loop_started) {
        pthread_join(l->loop_thread, NULL);
        l->loop_started = false;
    }
    if (l->listen_fd >= 0) {
        close(l->listen_fd);
        l->listen_fd = -1;
    }
    rp_info("auth",
            "auth API port closed: %llu connections accepted, %llu refused, %llu evicted, "
            "%llu timed out",
            (unsigned long long)atomic_load(&l->stat_accepted),
            (unsigned long long)atomic_load(&l->stat_refused),
            (unsigned long long)atomic_load(&l->stat_evicted),
            (unsigned long long)atomic_load(&l->stat_timed_out));
    struct timespec dl;
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += wait_ms / 1000;
    dl.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&l->mu);
    pthread_cond_broadcast(&l->work_cv);
    for (;;) {
        /* The loop is gone: close what the threads hand back ourselves. */
        struct lconn *lc;
        while ((lc = queue_pop(&l->back)) != NULL) {
            lc->epoll_events = 0;
            conn_close(l, lc);
        }
        if (l->busy == 0)
            break;
        if (pthread_cond_clockwait(&l->idle_cv, &l->mu, CLOCK_MONOTONIC, &dl) == ETIMEDOUT)
            break;
    }
    struct lconn *lc;
    while ((lc = queue_pop(&l->back)) != NULL) {
        lc->epoll_events = 0;
        conn_close(l, lc);
    }
    int busy = (int)l->busy;
    pthread_mutex_unlock(&l->mu);
    return busy;
}

void auth_listener_free(struct auth_listener *l)
{
    if (l == NULL)
        return;
    if (l->slots != NULL) {
        for (unsigned i = 0; i < l->lim.max_total; i++) {
            if (l->slots[i] != NULL)
                conn_close(l, l->slots[i]);
        }
    }
    if (l->listen_fd >= 0)
        close(l->listen_fd);
    if (l->epoll_fd >= 0)
        close(l->epoll_fd);
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    free(l->slots);
    rp_addr_counts_free(&l->per_addr);
    rp_refusal_log_destroy(&l->refusals);
    pthread_cond_destroy(&l->work_cv);
    pthread_cond_destroy(&l->idle_cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}
