/* lib/hashpool.h: a fixed number of worker threads for expensive work (password
 * hashing), with a bounded queue and a deadline to start.
 *
 * An argon2id verification holds tens of MiB and a core for about 100 ms. Run
 * on the thread of each request, N concurrent logins hold N times that memory;
 * run here, at most @workers of them do, whatever N is, and the others wait in
 * a FIFO queue of at most @queue_max. A request that cannot start within its
 * deadline, or finds the queue full, is answered RP_EBUSY without having cost
 * anything but the wait: memory is bounded by the workers, waiting by the
 * deadline.
 *
 * The workers run at a lower scheduling priority (@nice) than the rest of the
 * process, so that a queue full of hashes never delays the Raft loop's
 * heartbeats or a status request: hashing takes the CPU that is left over.
 *
 * The caller's thread blocks in rp_hashpool_run until its job ran or was
 * refused; the job lives on the caller's stack and is never touched by the pool
 * after the call returns. */
#ifndef RP_HASHPOOL_H
#define RP_HASHPOOL_H

#include <stdint.h>

#define RP_HASHPOOL_MAX_WORKERS 64
#define RP_HASHPOOL_MAX_QUEUE 100000

struct rp_hashpool;

struct rp_hashpool_config {
    unsigned workers;   /* 1..RP_HASHPOOL_MAX_WORKERS; 0: rp_hashpool_default_workers() */
    unsigned queue_max; /* jobs waiting to start, 0..RP_HASHPOOL_MAX_QUEUE */
    int nice;           /* added to the workers' nice value, 0..19 */
};

struct rp_hashpool_stats {
    uint64_t ran;       /* jobs that ran */
    uint64_t busy_full; /* refused: the queue was full */
    uint64_t busy_late; /* refused: not started within the deadline */
    unsigned running;   /* now */
    unsigned queued;    /* now */
    unsigned workers;
};

/* min(2, online CPUs): hashing should never take every core of an auth server. */
unsigned rp_hashpool_default_workers(void);

/* Starts the workers. Returns 0, RP_EINVAL naming the bad field, or RP_ENOMEM
 * (threads or memory). Free with rp_hashpool_free. */
int rp_hashpool_new(const struct rp_hashpool_config *cfg, struct rp_hashpool **out);

/* Refuses queued jobs (their callers get RP_ECLOSED), waits for running ones to
 * finish and stops the workers. No thread may call rp_hashpool_run after it. */
void rp_hashpool_free(struct rp_hashpool *p);

/* Runs @fn(@arg) on a worker and returns its result once it has run. @fn runs on
 * another thread: what it sets with rp_err() is carried back to the caller's
 * thread with the code. If the queue is full, or the job has not started
 * @wait_ms after the call, returns RP_EBUSY without running @fn (a message says
 * which); RP_ECLOSED once the pool is being freed. A started job is always waited
 * for: @fn must be bounded in time itself. */
int rp_hashpool_run(struct rp_hashpool *p, int (*fn)(void *arg), void *arg, unsigned wait_ms);

void rp_hashpool_get_stats(struct rp_hashpool *p, struct rp_hashpool_stats *out);

#endif
