/* proxy/loop.c: the proxy's event loops (proxy/loop.h).
 *
 * Each loop is one thread around one epoll set (level-triggered: a callback that leaves
 * bytes unread is simply called again), a binary min-heap of timers, and a queue of
 * posted functions that other threads fill and an eventfd wakes the loop for.
 *
 * A callback may delete, and free, any watch of its loop, including watches whose
 * events are still waiting in the batch epoll_wait returned: px_watch_del clears
 * those entries so that they are never dispatched. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"
#include "proxy/loop.h"

#define LOOP_BATCH 64
#define LOOP_MAX 8

struct post {
    struct post *next;
    void (*fn)(void *arg);
    void *arg;
};

struct px_loop {
    int epfd;
    struct px_watch wake; /* the eventfd posts ring */
    pthread_t thread;
    bool started;
    unsigned index;
    atomic_uint conns;
    atomic_bool stopping;

    /* the timers, a min-heap on due_ms; heap_index is the position + 1 (0: unarmed) */
    struct px_timer **heap;
    size_t n_heap, cap_heap;

    /* the batch being dispatched (px_watch_del clears entries of deleted watches) */
    struct epoll_event *batch;
    int n_batch;

    pthread_mutex_t mu; /* guards the post queue and @closed */
    struct post *head, *tail;
    bool closed;
};

#define STOP_HOOKS 8

struct px_loops {
    unsigned n;
    struct px_loop *loops[LOOP_MAX];
    struct {
        void (*fn)(void *arg);
        void *arg;
    } hooks[STOP_HOOKS];
    unsigned n_hooks;
};

static __thread struct px_loop *current_loop;

/* ---- watches ---------------------------------------------------------------------- */

int px_watch_add(struct px_loop *l, struct px_watch *w, uint32_t events)
{
    struct epoll_event ev = {.events = events, .data.ptr = w};
    w->loop = l;
    w->events = events;
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, w->fd, &ev) != 0)
        return rp_err(RP_EIO, "epoll_ctl add fd %d: %s", w->fd, strerror(errno));
    return 0;
}

int px_watch_mod(struct px_watch *w, uint32_t events)
{
    if (w->events == events)
        return 0;
    struct epoll_event ev = {.events = events, .data.ptr = w};
    if (epoll_ctl(w->loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) != 0)
        return rp_err(RP_EIO, "epoll_ctl mod fd %d: %s", w->fd, strerror(errno));
    w->events = events;
    return 0;
}

void px_watch_del(struct px_watch *w)
{
    struct px_loop *l = w->loop;
    if (l == NULL)
        return;
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, w->fd, NULL);
    for (int i = 0; i < l->n_batch; i++)
        if (l->batch[i].data.ptr == w)
            l->batch[i].data.ptr = NULL;
    w->loop = NULL;
}

/* ---- timers ----------------------------------------------------------------------- */

static void heap_set(struct px_loop *l, size_t i, struct px_timer *t)
{
    l->heap[i] = t;
    t->heap_index = i + 1;
}

static void heap_up(struct px_loop *l, size_t i)
{
    struct px_timer *t = l->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (l->heap[parent]->due_ms <= t->due_ms)
            break;
        heap_set(l, i, l->heap[parent]);
        i = parent;
    }
    heap_set(l, i, t);
}

static void heap_down(struct px_loop *l, size_t i)
{
    struct px_timer *t = l->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= l->n_heap)
            break;
        if (c + 1 < l->n_heap && l->heap[c + 1]->due_ms < l->heap[c]->due_ms)
            c++;
        if (l->heap[c]->due_ms >= t->due_ms)
            break;
        heap_set(l, i, l->heap[c]);
        i = c;
    }
    heap_set(l, i, t);
}

void px_timer_cancel(struct px_timer *t)
{
    if (t->heap_index == 0 || t->loop == NULL)
        return;
    struct px_loop *l = t->loop;
    size_t i = t->heap_index - 1;
    t->heap_index = 0;
    l->n_heap--;
    if (i == l->n_heap)
        return;
    heap_set(l, i, l->heap[l->n_heap]);
    /* The moved timer goes up or down, whichever restores the order. */
    heap_up(l, i);
    heap_down(l, i);
}

void px_timer_arm(struct px_loop *l, struct px_timer *t, uint64_t delay_ms,
                  void (*on_fire)(struct px_timer *t))
{
    px_timer_cancel(t);
    if (l->n_heap == l->cap_heap) {
        size_t cap = l->cap_heap ? l->cap_heap * 2 : 64;
        struct px_timer **h = realloc(l->heap, cap * sizeof *h);
        if (h == NULL) {
            /* Without room the timer cannot be kept; a timer guards a deadline, so
             * firing it at once is the safe failure. */
            rp_error("proxy", "loop %u: out of memory for timers", l->index);
            t->loop = l;
            t->on_fire = on_fire;
            on_fire(t);
            return;
        }
        l->heap = h;
        l->cap_heap = cap;
    }
    t->loop = l;
    t->on_fire = on_fire;
    t->due_ms = rp_mono_ms() + delay_ms;
    l->heap[l->n_heap] = t;
    t->heap_index = l->n_heap + 1;
    l->n_heap++;
    heap_up(l, l->n_heap - 1);
}

/* Fires every timer that is due; returns the epoll timeout until the next one. */
static int run_timers(struct px_loop *l)
{
    uint64_t now = rp_mono_ms();
    /* A timer armed by a firing one for 0 ms waits for the next turn, so that a
     * callback re-arming itself cannot starve the sockets. */
    size_t budget = l->n_heap;
    while (l->n_heap > 0 && budget-- > 0) {
        struct px_timer *t = l->heap[0];
        if (t->due_ms > now)
            break;
        px_timer_cancel(t);
        t->on_fire(t);
    }
    if (l->n_heap == 0)
        return -1;
    uint64_t due = l->heap[0]->due_ms;
    now = rp_mono_ms();
    return due <= now ? 0 : (due - now > 60000 ? 60000 : (int)(due - now));
}

/* ---- posts ------------------------------------------------------------------------ */

int px_loop_post(struct px_loop *l, void (*fn)(void *arg), void *arg)
{
    struct post *p = malloc(sizeof *p);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "posting to loop %u", l->index);
    p->next = NULL;
    p->fn = fn;
    p->arg = arg;
    pthread_mutex_lock(&l->mu);
    if (l->closed) {
        pthread_mutex_unlock(&l->mu);
        free(p);
        return rp_err(RP_ECLOSED, "loop %u is stopping", l->index);
    }
    bool was_empty = l->head == NULL;
    if (l->tail)
        l->tail->next = p;
    else
        l->head = p;
    l->tail = p;
    pthread_mutex_unlock(&l->mu);
    if (was_empty) {
        uint64_t one = 1;
        ssize_t n = write(l->wake.fd, &one, sizeof one);
        (void)n; /* EAGAIN: the counter is already non-zero, the loop wakes anyway */
    }
    return 0;
}

static void run_posts(struct px_watch *w, uint32_t events)
{
    struct px_loop *l = (struct px_loop *)((char *)w - offsetof(struct px_loop, wake));
    uint64_t v;
    ssize_t n = read(l->wake.fd, &v, sizeof v);
    (void)n;
    (void)events;
    pthread_mutex_lock(&l->mu);
    struct post *p = l->head;
    l->head = l->tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (p != NULL) {
        struct post *next = p->next;
        p->fn(p->arg);
        free(p);
        p = next;
    }
}

/* ---- the thread ------------------------------------------------------------------- */

struct px_loop *px_loop_current(void)
{
    return current_loop;
}

unsigned px_loop_index(const struct px_loop *l)
{
    return l->index;
}

void px_loop_conn_add(struct px_loop *l)
{
    atomic_fetch_add(&l->conns, 1);
}

void px_loop_conn_del(struct px_loop *l)
{
    atomic_fetch_sub(&l->conns, 1);
}

static void *loop_thread(void *arg)
{
    struct px_loop *l = arg;
    struct epoll_event evs[LOOP_BATCH];
    current_loop = l;
    pthread_setname_np(pthread_self(), "px-loop");
    while (!atomic_load(&l->stopping)) {
        int timeout = run_timers(l);
        int n = epoll_wait(l->epfd, evs, LOOP_BATCH, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rp_error("proxy", "loop %u: epoll_wait: %s", l->index, strerror(errno));
            break;
        }
        l->batch = evs;
        l->n_batch = n;
        for (int i = 0; i < n && !atomic_load(&l->stopping); i++) {
            struct px_watch *w = evs[i].data.ptr;
            if (w != NULL)
                w->on_event(w, evs[i].events);
        }
        l->batch = NULL;
        l->n_batch = 0;
    }
    current_loop = NULL;
    return NULL;
}

static void loop_free(struct px_loop *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->closed = true;
    struct post *p = l->head;
    l->head = l->tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (p != NULL) {
        struct post *next = p->next;
        free(p);
        p = next;
    }
    if (l->wake.fd >= 0)
        close(l->wake.fd);
    if (l->epfd >= 0)
        close(l->epfd);
    free(l->heap);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static int loop_new(struct px_loop **out, unsigned index)
{
    struct px_loop *l = calloc(1, sizeof *l);
    if (l == NULL)
        return rp_err(RP_ENOMEM, "loop");
    l->index = index;
    l->wake.fd = -1;
    pthread_mutex_init(&l->mu, NULL);
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (l->epfd < 0) {
        int e = errno;
        loop_free(l);
        return rp_err(RP_EIO, "epoll_create1: %s", strerror(e));
    }
    l->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wake.fd < 0) {
        int e = errno;
        loop_free(l);
        return rp_err(RP_EIO, "eventfd: %s", strerror(e));
    }
    l->wake.on_event = run_posts;
    int rv = px_watch_add(l, &l->wake, EPOLLIN);
    if (rv != 0) {
        loop_free(l);
        return rv;
    }
    *out = l;
    return 0;
}

int px_loops_new(struct px_loops **out, unsigned n)
{
    if (n == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        n = cpus < 1 ? 1 : (unsigned)cpus;
    }
    if (n > LOOP_MAX)
        n = LOOP_MAX;
    struct px_loops *ls = calloc(1, sizeof *ls);
    if (ls == NULL)
        return rp_err(RP_ENOMEM, "loops");
    for (unsigned i = 0; i < n; i++) {
        int rv = loop_new(&ls->loops[i], i);
        if (rv != 0) {
            px_loops_stop(ls);
            return rv;
        }
        ls->n++;
    }
    *out = ls;
    return 0;
}

unsigned px_loops_count(const struct px_loops *ls)
{
    return ls->n;
}

struct px_loop *px_loops_get(struct px_loops *ls, unsigned i)
{
    return i < ls->n ? ls->loops[i] : NULL;
}

struct px_loop *px_loops_pick(struct px_loops *ls)
{
    struct px_loop *best = ls->loops[0];
    unsigned least = atomic_load(&best->conns);
    for (unsigned i = 1; i < ls->n; i++) {
        unsigned c = atomic_load(&ls->loops[i]->conns);
        if (c < least) {
            least = c;
            best = ls->loops[i];
        }
    }
    return best;
}

int px_loops_start(struct px_loops *ls)
{
    for (unsigned i = 0; i < ls->n; i++) {
        struct px_loop *l = ls->loops[i];
        int e = pthread_create(&l->thread, NULL, loop_thread, l);
        if (e != 0)
            return rp_err(RP_EIO, "starting loop thread %u: %s", i, strerror(e));
        l->started = true;
    }
    return 0;
}

void px_loops_stop(struct px_loops *ls)
{
    if (ls == NULL)
        return;
    for (unsigned i = 0; i < ls->n; i++) {
        struct px_loop *l = ls->loops[i];
        pthread_mutex_lock(&l->mu);
        l->closed = true;
        pthread_mutex_unlock(&l->mu);
        atomic_store(&l->stopping, true);
        uint64_t one = 1;
        ssize_t n = write(l->wake.fd, &one, sizeof one);
        (void)n;
    }
    for (unsigned i = 0; i < ls->n; i++)
        if (ls->loops[i]->started)
            pthread_join(ls->loops[i]->thread, NULL);
    for (unsigned k = 0; k < ls->n_hooks; k++)
        ls->hooks[k].fn(ls->hooks[k].arg);
    for (unsigned i = 0; i < ls->n; i++)
        loop_free(ls->loops[i]);
    free(ls);
}

int px_loops_on_stop(struct px_loops *ls, void (*fn)(void *arg), void *arg)
{
    if (ls->n_hooks == STOP_HOOKS)
        return rp_err(RP_ENOSPC, "at most %d stop hooks", STOP_HOOKS);
    ls->hooks[ls->n_hooks].fn = fn;
    ls->hooks[ls->n_hooks].arg = arg;
    ls->n_hooks++;
    return 0;
}
