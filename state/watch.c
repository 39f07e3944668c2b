/* state/watch.c: watch streams and the hub that feeds them.
 *
 * Apply publishes each entry's events once its transaction has committed: into
 * a ring of recent events (so a watcher can resume from a revision it has) and
 * into the bounded queue of every watcher whose filter matches. One mutex (the
 * hub's) guards the ring, the watcher list and every queue.
 *
 * A new watcher registers and opens its read transaction under that mutex.
 * Every entry committed before the transaction began is in the transaction;
 * every entry committed after it is published after the registration, so it
 * reaches the queue. An entry can be committed but not yet published at that
 * moment: its events are dropped by revision (<= the transaction's applied
 * index). So nothing is missed and nothing is seen twice.
 *
 * The init snapshot is read lazily from a cursor in state_watch_next, one
 * resource per call, never all at once.
 *
 * Each watch has an eventfd that is readable whenever state_watch_next would not
 * time out: the publisher writes it when a queue goes from empty to not empty
 * (or overflows, or the watch is cancelled); the consumer drains it, under the
 * mutex, only when it finds nothing to return. */
#define STATE_INTERNAL
#include "state/state.h"

#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"

enum phase {
    PH_INIT,      /* reading the init snapshot from the cursor */
    PH_INIT_DONE, /* INIT_DONE is next */
    PH_STREAM,    /* queued events */
    PH_CLOSED,    /* REINIT returned, cancelled or failed: RP_ECLOSED from now on */
};

struct state_watch {
    struct state *s;
    struct state_watch *prev, *next; /* in the hub's list */
    int efd;

    /* Filter (immutable after open). */
    char **kinds; /* sorted, no duplicates */
    size_t n_kinds;
    char *prefix;
    size_t prefix_len;

    /* Under the hub mutex. */
    struct state__ev **q;
    unsigned q_cap, q_head, q_len;
    size_t q_bytes;     /* resource bytes of the queued events (at most STATE__RING_BYTES) */
    uint64_t skip_upto; /* events at or below this revision are already covered */
    bool overflowed;
    bool cancelled;

    /* The consumer's (the thread calling state_watch_next). */
    enum phase phase;
    uint64_t init_rev;  /* INIT_DONE revision */
    uint64_t delivered; /* last revision delivered in full */
    MDB_txn *txn;
    MDB_cursor *cur;
    size_t kind_idx;
    bool need_seek;
    uint8_t seek[STATE__KEY_MAX + 1];
    size_t seek_len;
};

/* ---- Events ------------------------------------------------------------- */

struct state__ev *state__ev_new(enum state_event_type type, uint64_t revision, const char *kind,
                                size_t kind_len, const char *name, size_t name_len, uint8_t *alloc,
                                size_t res_off, size_t res_len)
{
    struct state__ev *ev = malloc(sizeof *ev + kind_len + 1 + name_len + 1);
    if (ev == NULL) {
        free(alloc);
        return NULL;
    }
    ev->refs = 1;
    ev->type = type;
    ev->revision = revision;
    ev->alloc = alloc;
    ev->res_off = res_off;
    ev->res_len = res_len;
    ev->kind_len = (uint8_t)kind_len;
    ev->name_len = (uint16_t)name_len;
    memcpy(ev->key, kind, kind_len);
    ev->key[kind_len] = '\0';
    memcpy(ev->key + kind_len + 1, name, name_len);
    ev->key[kind_len + 1 + name_len] = '\0';
    return ev;
}

void state__ev_free(struct state__ev *ev)
{
    if (ev == NULL)
        return;
    free(ev->alloc);
    free(ev);
}

static void ev_unref(struct state__ev *ev)
{
    if (--ev->refs == 0)
        state__ev_free(ev);
}

void state_event_init(struct state_event *ev)
{
    memset(ev, 0, sizeof *ev);
    rp_buf_init(&ev->res);
}

void state_event_free(struct state_event *ev)
{
    rp_buf_free(&ev->res);
}

/* ---- Hub ---------------------------------------------------------------- */

int state__hub_init(struct state__hub *h, unsigned ring_cap, uint64_t applied)
{
    memset(h, 0, sizeof *h);
    h->ring = calloc(ring_cap, sizeof *h->ring);
    if (h->ring == NULL)
        return rp_err(RP_ENOMEM, "allocating the event ring");
    h->ring_cap = ring_cap;
    h->ring_floor = applied;
    h->published = applied;
    pthread_mutex_init(&h->mu, NULL);
    return 0;
}

static void ring_clear(struct state__hub *h)
{
    for (unsigned i = 0; i < h->ring_len; i++)
        ev_unref(h->ring[(h->ring_head + i) % h->ring_cap]);
    h->ring_len = 0;
    h->ring_head = 0;
    h->ring_bytes = 0;
}

void state__hub_close(struct state__hub *h)
{
    if (h->ring == NULL)
        return;
    ring_clear(h);
    free(h->ring);
    h->ring = NULL;
    pthread_mutex_destroy(&h->mu);
}

static void signal_fd(struct state_watch *w)
{
    uint64_t one = 1;
    ssize_t r = write(w->efd, &one, sizeof one);
    (void)r; /* EAGAIN only if the counter is saturated: it is readable anyway */
}

static void drain_fd(struct state_watch *w)
{
    uint64_t v;
    ssize_t r = read(w->efd, &v, sizeof v);
    (void)r; /* EAGAIN when already drained */
}

static bool kind_wanted(const struct state_watch *w, const char *kind)
{
    if (w->n_kinds == 0)
        return true;
    size_t lo = 0, hi = w->n_kinds;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(w->kinds[mid], kind);
        if (c == 0)
            return true;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return false;
}

static bool matches(const struct state_watch *w, const struct state__ev *ev)
{
    if (!kind_wanted(w, ev->key))
        return false;
    return w->prefix_len == 0 ||
           (ev->name_len >= w->prefix_len &&
            memcmp(ev->key + ev->kind_len + 1, w->prefix, w->prefix_len) == 0);
}

static void q_push(struct state_watch *w, struct state__ev *ev)
{
    w->q[(w->q_head + w->q_len) % w->q_cap] = ev;
    w->q_len++;
    w->q_bytes += ev->res_len;
    ev->refs++;
}

static void q_clear(struct state_watch *w)
{
    while (w->q_len > 0) {
        w->q_bytes -= w->q[w->q_head]->res_len;
        ev_unref(w->q[w->q_head]);
        w->q_head = (w->q_head + 1) % w->q_cap;
        w->q_len--;
    }
}

/* The queue is full at an event of @rev: the watcher keeps only whole revisions,
 * so the queued events of @rev go too, and it ends with REINIT once drained. */
static void overflow(struct state_watch *w, uint64_t rev)
{
    while (w->q_len > 0) {
        unsigned last = (w->q_head + w->q_len - 1) % w->q_cap;
        if (w->q[last]->revision < rev)
            break;
        w->q_bytes -= w->q[last]->res_len;
        ev_unref(w->q[last]);
        w->q_len--;
    }
    w->overflowed = true;
    signal_fd(w);
}

static void deliver(struct state_watch *w, struct state__ev *ev)
{
    if (w->overflowed || w->cancelled || ev->revision <= w->skip_upto || !matches(w, ev))
        return;
    /* Full by count, or by bytes: a watcher that falls behind by 64 MiB of resources
     * starts over, as one behind by watch_queue_len events does. */
    if (w->q_len == w->q_cap || w->q_bytes + ev->res_len > STATE__RING_BYTES) {
        overflow(w, ev->revision);
        return;
    }
    q_push(w, ev);
    if (w->q_len == 1)
        signal_fd(w);
}

void state__hub_publish(struct state *s, struct state__ev **evs, size_t n, uint64_t index)
{
    struct state__hub *h = &s->hub;
    pthread_mutex_lock(&h->mu);
    for (size_t i = 0; i < n; i++) {
        struct state__ev *ev = evs[i];
        for (struct state_watch *w = h->watchers; w != NULL; w = w->next)
            deliver(w, ev);
        /* The ring takes over the reference apply had, dropping its oldest events
         * while it is full by count or by bytes. */
        while (h->ring_len > 0 &&
               (h->ring_len == h->ring_cap || h->ring_bytes + ev->res_len > STATE__RING_BYTES)) {
            struct state__ev *old = h->ring[h->ring_head];
            if (old->revision > h->ring_floor)
                h->ring_floor = old->revision;
            h->ring_bytes -= old->res_len;
            ev_unref(old);
            h->ring_head = (h->ring_head + 1) % h->ring_cap;
            h->ring_len--;
        }
        h->ring[(h->ring_head + h->ring_len) % h->ring_cap] = ev;
        h->ring_len++;
        h->ring_bytes += ev->res_len;
    }
    h->published = index;
    pthread_mutex_unlock(&h->mu);
}

void state__hub_reset(struct state *s, uint64_t applied)
{
    struct state__hub *h = &s->hub;
    pthread_mutex_lock(&h->mu);
    ring_clear(h);
    h->ring_floor = applied;
    h->published = applied;
    /* The state jumped: no watcher can be brought from where it is to here with
     * events. Each gets what it has queued, then REINIT. */
    for (struct state_watch *w = h->watchers; w != NULL; w = w->next) {
        if (!w->overflowed) {
            w->overflowed = true;
            signal_fd(w);
        }
    }
    pthread_mutex_unlock(&h->mu);
}

/* ---- Open / close ------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void free_filter(struct state_watch *w)
{
    for (size_t i = 0; i < w->n_kinds; i++)
        free(w->kinds[i]);
    free(w->kinds);
    free(w->prefix);
}

static int copy_filter(struct state_watch *w, const struct state_watch_opts *o)
{
    if (o->prefix != NULL) {
        w->prefix_len = strlen(o->prefix);
        if (w->prefix_len > STATE_NAME_MAX)
            return rp_err(RP_EINVAL, "watch prefix longer than %d bytes", STATE_NAME_MAX);
        if ((w->prefix = strdup(o->prefix)) == NULL)
            return rp_err(RP_ENOMEM, "allocating a watch");
    }
    if (o->kinds == NULL || o->n_kinds == 0)
        return 0;
    if ((w->kinds = calloc(o->n_kinds, sizeof *w->kinds)) == NULL)
        return rp_err(RP_ENOMEM, "allocating a watch");
    for (size_t i = 0; i < o->n_kinds; i++) {
        if (o->kinds[i] == NULL || !state__kind_ok(o->kinds[i], strlen(o->kinds[i])))
            return rp_err(RP_EINVAL, "watch kind %zu is not 1-63 bytes of [a-z0-9_]", i);
        /* Dropping duplicates: a kind named twice must not be listed twice. */
        bool dup = false;
        for (size_t j = 0; j < w->n_kinds; j++)
            dup = dup || strcmp(w->kinds[j], o->kinds[i]) == 0;
        if (dup)
            continue;
        if ((w->kinds[w->n_kinds] = strdup(o->kinds[i])) == NULL)
            return rp_err(RP_ENOMEM, "allocating a watch");
        w->n_kinds++;
    }
    qsort(w->kinds, w->n_kinds, sizeof *w->kinds, cmp_str);
    return 0;
}

/* Under the hub mutex: resumes from the ring if it holds every event after
 * @start_rev and they fit in the queue. */
static bool try_resume(struct state_watch *w, uint64_t start_rev)
{
    struct state__hub *h = &w->s->hub;
    if (start_rev == 0 || start_rev < h->ring_floor)
        return false;
    unsigned n = 0;
    size_t bytes = 0;
    for (unsigned i = 0; i < h->ring_len; i++) {
        struct state__ev *ev = h->ring[(h->ring_head + i) % h->ring_cap];
        if (ev->revision > start_rev && matches(w, ev)) {
            n++;
            bytes += ev->res_len;
        }
    }
    if (n > w->q_cap || bytes > STATE__RING_BYTES)
        return false;
    for (unsigned i = 0; i < h->ring_len; i++) {
        struct state__ev *ev = h->ring[(h->ring_head + i) % h->ring_cap];
        if (ev->revision > start_rev && matches(w, ev))
            q_push(w, ev);
    }
    /* A client that has seen more than we have applied waits for us to catch up. */
    w->skip_upto = start_rev > h->published ? start_rev : h->published;
    w->init_rev = start_rev;
    w->phase = PH_INIT_DONE;
    return true;
}

static void set_first_seek(struct state_watch *w)
{
    w->need_seek = true;
    w->seek_len = 0;
    if (w->n_kinds > 0) {
        const char *k = w->kinds[w->kind_idx];
        w->seek_len =
            state__res_key(w->seek, k, strlen(k), w->prefix ? w->prefix : "", w->prefix_len);
    }
}

/* Under the hub mutex: pins the init snapshot. */
static int start_init(struct state_watch *w)
{
    struct state *s = w->s;
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &w->txn);
    if (rc != 0)
        return state__lmdb_err(rc, "starting a watch");
    int rv = state__read_applied(s, w->txn, &w->init_rev);
    if (rv == 0 && (rc = mdb_cursor_open(w->txn, s->dbi[STATE__DB_RES], &w->cur)) != 0)
        rv = state__lmdb_err(rc, "starting a watch");
    if (rv != 0) {
        mdb_txn_abort(w->txn);
        w->txn = NULL;
        return rv;
    }
    w->skip_upto = w->init_rev;
    w->phase = PH_INIT;
    w->kind_idx = 0;
    set_first_seek(w);
    return 0;
}

static void end_init(struct state_watch *w)
{
    if (w->cur != NULL)
        mdb_cursor_close(w->cur);
    if (w->txn != NULL)
        mdb_txn_abort(w->txn);
    w->cur = NULL;
    w->txn = NULL;
}

int state_watch_open(struct state *s, const struct state_watch_opts *opts, struct state_watch **out)
{
    static const struct state_watch_opts defaults = {0};
    struct state_watch *w = calloc(1, sizeof *w);
    int rv;
    if (w == NULL)
        return rp_err(RP_ENOMEM, "allocating a watch");
    if (opts == NULL)
        opts = &defaults;
    w->s = s;
    w->efd = -1;
    if ((rv = copy_filter(w, opts)) != 0)
        goto err;
    w->q_cap = s->opts.watch_queue_len;
    if ((w->q = calloc(w->q_cap, sizeof *w->q)) == NULL) {
        rv = rp_err(RP_ENOMEM, "allocating a watch queue of %u", w->q_cap);
        goto err;
    }
    if ((w->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) < 0) {
        rv = rp_err(RP_EIO, "eventfd: %s", strerror(errno));
        goto err;
    }

    struct state__hub *h = &s->hub;
    pthread_mutex_lock(&h->mu);
    if (!try_resume(w, opts->start_rev) && (rv = start_init(w)) != 0) {
        pthread_mutex_unlock(&h->mu);
        goto err;
    }
    w->next = h->watchers;
    if (h->watchers != NULL)
        h->watchers->prev = w;
    h->watchers = w;
    signal_fd(w); /* at least INIT_DONE is ready */
    pthread_mutex_unlock(&h->mu);
    *out = w;
    return 0;

err:
    if (w->efd >= 0)
        close(w->efd);
    free(w->q);
    free_filter(w);
    free(w);
    return rv;
}

void state_watch_cancel(struct state_watch *w)
{
    struct state__hub *h = &w->s->hub;
    pthread_mutex_lock(&h->mu);
    w->cancelled = true;
    signal_fd(w);
    pthread_mutex_unlock(&h->mu);
}

void state_watch_close(struct state_watch *w)
{
    if (w == NULL)
        return;
    struct state__hub *h = &w->s->hub;
    pthread_mutex_lock(&h->mu);
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        h->watchers = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    q_clear(w);
    pthread_mutex_unlock(&h->mu);
    end_init(w);
    close(w->efd);
    free(w->q);
    free_filter(w);
    free(w);
}

int state_watch_fd(struct state_watch *w)
{
    return w->efd;
}

/* ---- Next --------------------------------------------------------------- */

static int fill(struct state_event *ev, enum state_event_type type, uint64_t rev, const char *kind,
                size_t kl, const char *name, size_t nl, const void *res, size_t res_len)
{
    ev->type = type;
    ev->revision = rev;
    memcpy(ev->kind, kind, kl);
    ev->kind[kl] = '\0';
    memcpy(ev->name, name, nl);
    ev->name[nl] = '\0';
    rp_buf_reset(&ev->res);
    return rp_buf_append(&ev->res, res, res_len);
}

/* Moves the init cursor to the next resource the filter wants. 0 with @k/@v set,
 * 1 when the snapshot is exhausted, <0 on error. Keys are kind \0 name, so a
 * kind's names are contiguous and kind \1 sorts right after them. */
static int init_advance(struct state_watch *w, MDB_val *k, MDB_val *v)
{
    for (;;) {
        int rc;
        if (w->need_seek) {
            k->mv_size = w->seek_len;
            k->mv_data = w->seek;
            rc = mdb_cursor_get(w->cur, k, v, w->seek_len ? MDB_SET_RANGE : MDB_FIRST);
            w->need_seek = false;
        } else {
            rc = mdb_cursor_get(w->cur, k, v, MDB_NEXT);
        }
        if (rc == MDB_NOTFOUND)
            goto next_kind;
        if (rc != 0)
            return state__lmdb_err(rc, "reading the watch snapshot");

        const uint8_t *key = k->mv_data;
        const uint8_t *z = memchr(key, '\0', k->mv_size);
        if (z == NULL)
            continue;
        size_t kl = (size_t)(z - key);
        const uint8_t *name = z + 1;
        size_t nl = k->mv_size - kl - 1;

        if (w->n_kinds > 0) {
            const char *want = w->kinds[w->kind_idx];
            if (kl != strlen(want) || memcmp(key, want, kl) != 0)
                goto next_kind;
        }
        if (w->prefix_len == 0)
            return 0;
        size_t m = nl < w->prefix_len ? nl : w->prefix_len;
        int c = memcmp(name, w->prefix, m);
        if (c == 0 && nl >= w->prefix_len)
            return 0;
        if (c < 0 || (c == 0 && nl < w->prefix_len)) {
            /* Before the prefix range of this kind: jump to it. */
            memcpy(w->seek, key, kl + 1);
            memcpy(w->seek + kl + 1, w->prefix, w->prefix_len);
            w->seek_len = kl + 1 + w->prefix_len;
            w->need_seek = true;
            continue;
        }
        /* Past the prefix range of this kind. */
        if (w->n_kinds > 0)
            goto next_kind;
        memcpy(w->seek, key, kl);
        w->seek[kl] = '\1';
        w->seek_len = kl + 1;
        w->need_seek = true;
        continue;

    next_kind:
        if (w->n_kinds == 0 || ++w->kind_idx >= w->n_kinds)
            return 1;
        set_first_seek(w);
    }
}

static int init_step(struct state_watch *w, struct state_event *ev)
{
    MDB_val k, v;
    int rv = init_advance(w, &k, &v);
    if (rv != 0) {
        end_init(w);
        if (rv == 1) {
            w->phase = PH_INIT_DONE;
            return 1;
        }
        w->phase = PH_CLOSED;
        return rv;
    }
    const uint8_t *key = k.mv_data;
    size_t kl = strlen((const char *)key); /* the key holds a NUL: bounded */
    if (v.mv_size < STATE__VAL_HDR) {
        end_init(w);
        w->phase = PH_CLOSED;
        return rp_err(RP_EIO, "stored resource value of %zu bytes is too short", v.mv_size);
    }
    return fill(ev, STATE_EV_INIT_PUT, state__get_be64(v.mv_data), (const char *)key, kl,
                (const char *)key + kl + 1, k.mv_size - kl - 1,
                (const uint8_t *)v.mv_data + STATE__VAL_HDR, v.mv_size - STATE__VAL_HDR);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int state_watch_next(struct state_watch *w, struct state_event *ev, int timeout_ms)
{
    struct state__hub *h = &w->s->hub;
    uint64_t deadline = timeout_ms > 0 ? mono_ms() + (uint64_t)timeout_ms : 0;
    int rv;
    for (;;) {
        pthread_mutex_lock(&h->mu);
        if (w->cancelled || w->phase == PH_CLOSED) {
            bool cancelled = w->cancelled;
            w->phase = PH_CLOSED;
            pthread_mutex_unlock(&h->mu);
            end_init(w);
            return rp_err(RP_ECLOSED, cancelled ? "watch cancelled" : "watch ended");
        }
        if (w->phase == PH_INIT) {
            pthread_mutex_unlock(&h->mu);
            rv = init_step(w, ev);
            if (rv == 1)
                continue;
            return rv;
        }
        if (w->phase == PH_INIT_DONE) {
            w->phase = PH_STREAM;
            w->delivered = w->init_rev;
            pthread_mutex_unlock(&h->mu);
            return fill(ev, STATE_EV_INIT_DONE, w->init_rev, "", 0, "", 0, NULL, 0);
        }
        if (w->q_len > 0) {
            struct state__ev *e = w->q[w->q_head];
            w->q_head = (w->q_head + 1) % w->q_cap;
            w->q_len--;
            w->q_bytes -= e->res_len;
            w->delivered = e->revision;
            rv = fill(ev, e->type, e->revision, e->key, e->kind_len, e->key + e->kind_len + 1,
                      e->name_len, e->alloc ? e->alloc + e->res_off : NULL, e->res_len);
            ev_unref(e);
            pthread_mutex_unlock(&h->mu);
            return rv;
        }
        if (w->overflowed) {
            w->phase = PH_CLOSED;
            pthread_mutex_unlock(&h->mu);
            return fill(ev, STATE_EV_REINIT, w->delivered, "", 0, "", 0, NULL, 0);
        }
        drain_fd(w);
        pthread_mutex_unlock(&h->mu);

        int wait = -1;
        if (timeout_ms == 0)
            return rp_err(RP_ETIMEDOUT, "no watch event");
        if (timeout_ms > 0) {
            uint64_t now = mono_ms();
            if (now >= deadline)
                return rp_err(RP_ETIMEDOUT, "no watch event within %d ms", timeout_ms);
            wait = (int)(deadline - now);
        }
        struct pollfd p = {.fd = w->efd, .events = POLLIN};
        if (poll(&p, 1, wait) < 0 && errno != EINTR)
            return rp_err(RP_EIO, "poll: %s", strerror(errno));
    }
}
