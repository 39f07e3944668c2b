/* proxy/loop.h: the proxy's event loops.
 *
 * The proxy runs a few loop threads (one per core by default), each an epoll set
 * with timers and a queue of functions posted from other threads. Everything a
 * connection owns (its fd, its SSL, its HTTP/2 session, its buffers) belongs to the
 * one loop it was given to: only that loop's thread touches it, so no connection
 * state needs a lock. Other threads hand work to a loop with px_loop_post.
 *
 * The listening sockets are shared by every loop (EPOLLEXCLUSIVE); an accepted
 * connection stays on the loop that accepted it. */
#ifndef RP_PROXY_LOOP_H
#define RP_PROXY_LOOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct px_loop;

/* One fd watched by a loop. Embed it in the owner's struct and recover the owner with
 * container_of-style arithmetic in the callback. */
struct px_watch {
    int fd;
    uint32_t events; /* EPOLLIN | EPOLLOUT (level-triggered) */
    struct px_loop *loop;
    /* Called on the loop's thread with the epoll events that fired (EPOLLERR and
     * EPOLLHUP are always reported). The callback may px_watch_del (and free) its
     * watch; it must not touch it afterwards. */
    void (*on_event)(struct px_watch *w, uint32_t events);
};

/* Adds @w (fd and on_event set by the caller) to @l for @events. Loop thread only
 * (or before px_loops_start). RP_EIO with the reason. */
int px_watch_add(struct px_loop *l, struct px_watch *w, uint32_t events);
/* Changes the events of @w (a no-op when unchanged). Loop thread only. */
int px_watch_mod(struct px_watch *w, uint32_t events);
/* Removes @w from its loop; the fd is not closed. Safe to call from @w's callback.
 * Loop thread only. */
void px_watch_del(struct px_watch *w);

/* A one-shot timer of a loop. Embed it; zero-initialised is "not armed". */
struct px_timer {
    uint64_t due_ms; /* monotonic */
    size_t heap_index;
    struct px_loop *loop;
    void (*on_fire)(struct px_timer *t);
};
/* Arms (or re-arms) @t to fire @delay_ms from now on @l. Loop thread only. */
void px_timer_arm(struct px_loop *l, struct px_timer *t, uint64_t delay_ms,
                  void (*on_fire)(struct px_timer *t));
void px_timer_cancel(struct px_timer *t); /* an unarmed timer is fine */

/* Runs @fn(@arg) on @l's thread soon. Any thread. RP_ENOMEM, or RP_ECLOSED once the
 * loop is stopping (then @fn is not called and the caller still owns @arg). */
int px_loop_post(struct px_loop *l, void (*fn)(void *arg), void *arg);

/* The loop whose thread is the caller's, or NULL on any other thread. */
struct px_loop *px_loop_current(void);
/* The index of @l among the loops (0..n-1), e.g. for per-loop tables. */
unsigned px_loop_index(const struct px_loop *l);

/* ---- the set of loops ------------------------------------------------------------------ */

struct px_loops;
/* Creates @n loops (0: the number of online CPUs, at most 8) without starting them. */
int px_loops_new(struct px_loops **out, unsigned n);
unsigned px_loops_count(const struct px_loops *ls);
struct px_loop *px_loops_get(struct px_loops *ls, unsigned i);
/* The loop with the fewest connections (px_loop_conn_add/_del), for a new outbound
 * connection. */
struct px_loop *px_loops_pick(struct px_loops *ls);
void px_loop_conn_add(struct px_loop *l);
void px_loop_conn_del(struct px_loop *l);
/* Starts one thread per loop. */
int px_loops_start(struct px_loops *ls);
/* Stops the threads (posted functions still queued are dropped: each post owner must
 * tolerate that), joins them, runs the stop hooks, and frees the loops. Watches are not
 * closed: their owners close them before or in a stop hook. NULL is fine. */
void px_loops_stop(struct px_loops *ls);
/* Registers @fn(@arg) to run in px_loops_stop once the loop threads ended and before the
 * loops are freed (in the caller's thread, in the order registered): where owners close
 * what their loops still hold (watches, timers). At most 8. RP_ENOSPC beyond. */
int px_loops_on_stop(struct px_loops *ls, void (*fn)(void *arg), void *arg);

#endif
