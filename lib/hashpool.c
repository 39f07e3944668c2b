/* lib/hashpool.c: a bounded worker pool with a deadline to start; see
 * lib/hashpool.h.
 *
 * One mutex guards the queue and every job's state; each job has its own
 * condition variable (on the caller's stack), so a worker wakes exactly the
 * caller whose job changed. A worker signals a job's condition while holding
 * the mutex and touches the job no more after unlocking: the caller, which
 * destroys the job once it sees it done, can only look after that unlock. */
#include "lib/hashpool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"

enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_REFUSED };

struct job {
    int (*fn)(void *arg);
    void *arg;
    enum job_state state;
    int rv;
    char msg[256]; /* the worker's rp_errmsg() when rv != 0 */
    pthread_cond_t cv;
    struct job *next;
};

struct rp_hashpool {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* workers wait for jobs */
    pthread_cond_t left_cv; /* rp_hashpool_free waits for the callers to leave */
    unsigned callers;       /* threads inside rp_hashpool_run */
    struct job *head, *tail;
    unsigned queued, running;
    unsigned queue_max;
    int nice;
    bool stop;
    unsigned n_workers;
    pthread_t workers[RP_HASHPOOL_MAX_WORKERS];
    uint64_t ran, busy_full, busy_late;
};

unsigned rp_hashpool_default_workers(void)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1)
        cores = 1;
    return cores < 2 ? (unsigned)cores : 2;
}

static void *worker_main(void *arg)
{
    struct rp_hashpool *p = arg;
    /* Per thread on Linux: only this worker yields. Raising one's own nice value
     * needs no privilege; if it fails anyway the pool still works, just greedier. */
    if (p->nice > 0)
        (void)setpriority(PRIO_PROCESS, (id_t)gettid(), p->nice);
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (p->head == NULL && !p->stop)
            pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->head == NULL)
            break;
        struct job *j = p->head;
        p->head = j->next;
        if (p->head == NULL)
            p->tail = NULL;
        p->queued--;
        p->running++;
        j->state = JOB_RUNNING;
        pthread_cond_signal(&j->cv);
        pthread_mutex_unlock(&p->mu);

        rp_err_clear();
        int rv = j->fn(j->arg);
        char msg[sizeof j->msg];
        snprintf(msg, sizeof msg, "%s", rv != 0 ? rp_errmsg() : "");

        pthread_mutex_lock(&p->mu);
        p->running--;
        p->ran++;
        j->rv = rv;
        memcpy(j->msg, msg, sizeof msg);
        j->state = JOB_DONE;
        pthread_cond_signal(&j->cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int rp_hashpool_new(const struct rp_hashpool_config *cfg, struct rp_hashpool **out)
{
    unsigned workers = cfg->workers ? cfg->workers : rp_hashpool_default_workers();
    if (workers > RP_HASHPOOL_MAX_WORKERS)
        return rp_err(RP_EINVAL, "hash pool of %u workers; at most %d are allowed", workers,
                      RP_HASHPOOL_MAX_WORKERS);
    if (cfg->queue_max > RP_HASHPOOL_MAX_QUEUE)
        return rp_err(RP_EINVAL, "hash pool queue of %u jobs; at most %d are allowed",
                      cfg->queue_max, RP_HASHPOOL_MAX_QUEUE);
    if (cfg->nice < 0 || cfg->nice > 19)
        return rp_err(RP_EINVAL, "hash pool nice value %d is outside 0..19", cfg->nice);
    struct rp_hashpool *p = calloc(1, sizeof *p);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "hash pool");
    p->queue_max = cfg->queue_max;
    p->nice = cfg->nice;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_cond_init(&p->left_cv, NULL);
    for (unsigned i = 0; i < workers; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        /* argon2 keeps its memory on the heap; the stack needs little. */
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int rc = pthread_create(&p->workers[i], &attr, worker_main, p);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            rp_hashpool_free(p);
            return rp_err(RP_ENOMEM, "hash pool: cannot start worker %u of %u: %s", i + 1, workers,
                          strerror(rc));
        }
        p->n_workers++;
    }
    *out = p;
    return 0;
}

void rp_hashpool_free(struct rp_hashpool *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    for (struct job *j = p->head; j; j = j->next) {
        j->state = JOB_REFUSED;
        pthread_cond_signal(&j->cv);
    }
    p->head = p->tail = NULL;
    p->queued = 0;
    pthread_cond_broadcast(&p->work_cv);
    /* Refused callers still need the mutex to return, and running jobs need the
     * workers: the pool goes only once every caller has left. */
    while (p->callers > 0)
        pthread_cond_wait(&p->left_cv, &p->mu);
    pthread_mutex_unlock(&p->mu);
    for (unsigned i = 0; i < p->n_workers; i++)
        pthread_join(p->workers[i], NULL);
    pthread_cond_destroy(&p->work_cv);
    pthread_cond_destroy(&p->left_cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int rp_hashpool_run(struct rp_hashpool *p, int (*fn)(void *arg), void *arg, unsigned wait_ms)
{
    struct job j = {.fn = fn, .arg = arg, .state = JOB_QUEUED};
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j.cv, &ca);
    pthread_condattr_destroy(&ca);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += wait_ms / 1000;
    deadline.tv_nsec += (long)(wait_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }

    int rv;
    pthread_mutex_lock(&p->mu);
    p->callers++;
    if (p->stop) {
        rv = rp_err(RP_ECLOSED, "the hash pool is shutting down");
        goto out;
    }
    if (p->queued >= p->queue_max && p->running + p->queued >= p->n_workers) {
        p->busy_full++;
        rv = rp_err(RP_EBUSY,
                    "server busy: %u password checks are already waiting; try again "
                    "in a few seconds",
                    p->queued);
        goto out;
    }
    if (p->tail)
        p->tail->next = &j;
    else
        p->head = &j;
    p->tail = &j;
    p->queued++;
    pthread_cond_signal(&p->work_cv);
    while (j.state == JOB_QUEUED) {
        if (pthread_cond_timedwait(&j.cv, &p->mu, &deadline) == ETIMEDOUT &&
            j.state == JOB_QUEUED) {
            /* Still waiting: take it out of the queue, nobody has seen it. */
            struct job **link = &p->head, *prev = NULL;
            while (*link != &j) {
                prev = *link;
                link = &(*link)->next;
            }
            *link = j.next;
            if (p->tail == &j)
                p->tail = prev;
            p->queued--;
            p->busy_late++;
            rv = rp_err(RP_EBUSY,
                        "server busy: the password check could not start within %u ms; "
                        "try again in a few seconds",
                        wait_ms);
            goto out;
        }
    }
    while (j.state == JOB_RUNNING)
        pthread_cond_wait(&j.cv, &p->mu);
    if (j.state == JOB_REFUSED)
        rv = rp_err(RP_ECLOSED, "the hash pool is shutting down");
    else if (j.rv != 0)
        rv = rp_err(j.rv, "%s", j.msg);
    else
        rv = 0;
out:
    if (--p->callers == 0 && p->stop)
        pthread_cond_broadcast(&p->left_cv);
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&j.cv);
    return rv;
}

void rp_hashpool_get_stats(struct rp_hashpool *p, struct rp_hashpool_stats *out)
{
    pthread_mutex_lock(&p->mu);
    *out = (struct rp_hashpool_stats){.ran = p->ran,
                                      .busy_full = p->busy_full,
                                      .busy_late = p->busy_late,
                                      .running = p->running,
                                      .queued = p->queued,
                                      .workers = p->n_workers};
    pthread_mutex_unlock(&p->mu);
}
