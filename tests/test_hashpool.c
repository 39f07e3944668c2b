/* tests/test_hashpool.c: the bounded worker pool of password checks
 * (lib/hashpool.h): at most N jobs run at once, jobs start in the order they
 * came, a job that cannot start within its deadline or finds the queue full is
 * refused as busy without running, errors travel back with their messages, and
 * argon2's memory goes back to the system after each check. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/errors.h"
#include "lib/hashpool.h"
#include "lib/password.h"

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static struct rp_hashpool *make(unsigned workers, unsigned queue)
{
    struct rp_hashpool_config c = {.workers = workers, .queue_max = queue, .nice = 0};
    struct rp_hashpool *p = NULL;
    cr_assert_eq(rp_hashpool_new(&c, &p), 0, "%s", rp_errmsg());
    return p;
}

/* A job that holds its worker until released, recording when it started. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;
static atomic_int running, max_running, started_seq;

struct gated {
    int order; /* when it started, 1-based */
};

static int gated_job(void *arg)
{
    struct gated *g = arg;
    g->order = atomic_fetch_add(&started_seq, 1) + 1;
    int now = atomic_fetch_add(&running, 1) + 1;
    int seen = atomic_load(&max_running);
    while (now > seen && !atomic_compare_exchange_weak(&max_running, &seen, now))
        ;
    pthread_mutex_lock(&gate_mu);
    while (!gate_open)
        pthread_cond_wait(&gate_cv, &gate_mu);
    pthread_mutex_unlock(&gate_mu);
    atomic_fetch_sub(&running, 1);
    return 0;
}

static void gate_set(bool open)
{
    pthread_mutex_lock(&gate_mu);
    gate_open = open;
    pthread_cond_broadcast(&gate_cv);
    pthread_mutex_unlock(&gate_mu);
}

struct caller {
    struct rp_hashpool *p;
    unsigned wait_ms;
    struct gated job;
    int rv;
    char msg[256];
    pthread_t t;
};

static void *caller_main(void *arg)
{
    struct caller *c = arg;
    c->rv = rp_hashpool_run(c->p, gated_job, &c->job, c->wait_ms);
    snprintf(c->msg, sizeof c->msg, "%s", rp_errmsg());
    return NULL;
}

static void reset_counters(void)
{
    atomic_store(&running, 0);
    atomic_store(&max_running, 0);
    atomic_store(&started_seq, 0);
    gate_set(false);
}

/* Waits (bounded) until the pool reports @queued waiting and @run running. */
static void wait_stats(struct rp_hashpool *p, unsigned queued, unsigned run)
{
    uint64_t deadline = mono_ms() + 5000;
    struct rp_hashpool_stats st;
    do {
        rp_hashpool_get_stats(p, &st);
        if (st.queued == queued && st.running == run)
            return;
        sleep_ms(2);
    } while (mono_ms() < deadline);
    cr_assert_fail("pool never had %u queued and %u running (has %u and %u)", queued, run,
                   st.queued, st.running);
}

Test(hashpool, no_more_jobs_run_at_once_than_workers)
{
    reset_counters();
    struct rp_hashpool *p = make(2, 16);
    struct caller c[8];
    for (int i = 0; i < 8; i++) {
        c[i] = (struct caller){.p = p, .wait_ms = 10000};
        pthread_create(&c[i].t, NULL, caller_main, &c[i]);
        wait_stats(p, i < 2 ? 0 : (unsigned)i - 1, i < 1 ? 1 : 2);
    }
    gate_set(true);
    for (int i = 0; i < 8; i++) {
        pthread_join(c[i].t, NULL);
        cr_assert_eq(c[i].rv, 0, "job %d: %s", i, c[i].msg);
    }
    cr_assert_eq(atomic_load(&max_running), 2, "%d jobs ran at once on 2 workers",
                 atomic_load(&max_running));
    rp_hashpool_free(p);
}

Test(hashpool, jobs_start_in_the_order_they_came)
{
    reset_counters();
    struct rp_hashpool *p = make(1, 16);
    struct caller c[6];
    for (int i = 0; i < 6; i++) {
        c[i] = (struct caller){.p = p, .wait_ms = 10000};
        pthread_create(&c[i].t, NULL, caller_main, &c[i]);
        /* Each caller is queued before the next one comes. */
        wait_stats(p, (unsigned)i, 1);
    }
    gate_set(true);
    for (int i = 0; i < 6; i++) {
        pthread_join(c[i].t, NULL);
        cr_assert_eq(c[i].rv, 0);
        cr_assert_eq(c[i].job.order, i + 1, "caller %d started as number %d", i + 1,
                     c[i].job.order);
    }
    rp_hashpool_free(p);
}

Test(hashpool, job_not_started_within_its_deadline_is_busy_and_never_runs)
{
    reset_counters();
    struct rp_hashpool *p = make(1, 16);
    struct caller hold = {.p = p, .wait_ms = 10000};
    pthread_create(&hold.t, NULL, caller_main, &hold);
    wait_stats(p, 0, 1);
    struct caller late = {.p = p, .wait_ms = 200};
    uint64_t t0 = mono_ms();
    caller_main(&late);
    uint64_t took = mono_ms() - t0;
    cr_assert_eq(late.rv, RP_EBUSY, "a job that could not start was not refused: %d", late.rv);
    cr_assert(strstr(late.msg, "could not start within 200 ms") != NULL, "message: %s", late.msg);
    cr_assert(took >= 190 && took < 5000, "refused after %llu ms for a 200 ms deadline",
              (unsigned long long)took);
    struct rp_hashpool_stats st;
    rp_hashpool_get_stats(p, &st);
    cr_assert_eq(st.queued, 0, "the refused job stayed in the queue");
    cr_assert_eq(st.busy_late, 1);
    gate_set(true);
    pthread_join(hold.t, NULL);
    cr_assert_eq(late.job.order, 0, "the refused job ran anyway");
    rp_hashpool_get_stats(p, &st);
    cr_assert_eq(st.ran, 1);
    rp_hashpool_free(p);
}

Test(hashpool, full_queue_is_busy_at_once)
{
    reset_counters();
    struct rp_hashpool *p = make(1, 2);
    struct caller c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = (struct caller){.p = p, .wait_ms = 10000};
        pthread_create(&c[i].t, NULL, caller_main, &c[i]);
        wait_stats(p, (unsigned)i, 1);
    }
    struct caller extra = {.p = p, .wait_ms = 10000};
    uint64_t t0 = mono_ms();
    caller_main(&extra);
    cr_assert_eq(extra.rv, RP_EBUSY);
    cr_assert(mono_ms() - t0 < 1000, "a full queue made the caller wait");
    cr_assert(strstr(extra.msg, "already waiting") != NULL, "message: %s", extra.msg);
    gate_set(true);
    for (int i = 0; i < 3; i++) {
        pthread_join(c[i].t, NULL);
        cr_assert_eq(c[i].rv, 0);
    }
    rp_hashpool_free(p);
}

static int failing_job(void *arg)
{
    return rp_err(RP_EDENIED, "job %s said no", (const char *)arg);
}

Test(hashpool, errors_and_messages_come_back_to_the_caller)
{
    struct rp_hashpool *p = make(1, 4);
    rp_err_clear();
    cr_assert_eq(rp_hashpool_run(p, failing_job, "seven", 1000), RP_EDENIED);
    cr_assert_str_eq(rp_errmsg(), "job seven said no");
    rp_hashpool_free(p);
}

static void *open_gate_later(void *arg)
{
    sleep_ms(100);
    gate_set(true);
    return arg;
}

Test(hashpool, queued_jobs_are_refused_when_the_pool_stops)
{
    reset_counters();
    struct rp_hashpool *p = make(1, 4);
    struct caller c[3];
    for (int i = 0; i < 3; i++) {
        c[i] = (struct caller){.p = p, .wait_ms = 10000};
        pthread_create(&c[i].t, NULL, caller_main, &c[i]);
        wait_stats(p, (unsigned)i, 1);
    }
    /* Free waits for the running job: the gate opens from another thread meanwhile. */
    pthread_t opener;
    pthread_create(&opener, NULL, open_gate_later, NULL);
    rp_hashpool_free(p);
    for (int i = 0; i < 3; i++)
        pthread_join(c[i].t, NULL);
    pthread_join(opener, NULL);
    cr_assert_eq(c[0].rv, 0, "the running job did not finish: %s", c[0].msg);
    cr_assert_eq(c[1].rv, RP_ECLOSED);
    cr_assert_eq(c[2].rv, RP_ECLOSED);
    cr_assert_eq(c[1].job.order + c[2].job.order, 0, "a refused job ran");
}

/* VmRSS of this process, in KiB. */
static long vm_rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kib = -1;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
            break;
    if (f)
        fclose(f);
    return kib;
}

struct verify_arg {
    const char *hash;
    int rv;
};

static int verify_job(void *arg)
{
    struct verify_arg *v = arg;
    v->rv = rp_password_verify("not the password at all", 23, v->hash);
    return 0;
}

/* argon2 allocates its 64 MiB per check: after the checks it must be gone again,
 * not kept by the allocator (the auth server's RSS bound depends on it). */
Test(hashpool, argon2_memory_is_returned_after_each_check)
{
    char hash[RP_PASSWORD_ENCODED_MAX];
    cr_assert_eq(rp_password_hash("the dummy password", 18, hash, sizeof hash), 0);
    struct rp_hashpool *p = make(2, 8);
    long before = vm_rss_kib();
    for (int i = 0; i < 6; i++) {
        struct verify_arg v = {.hash = hash};
        cr_assert_eq(rp_hashpool_run(p, verify_job, &v, 10000), 0);
        cr_assert_eq(v.rv, RP_EDENIED);
    }
    /* With smaller parameters too, which glibc's malloc would keep in an arena. */
    struct rp_password_params small = {16384, 1, 1};
    cr_assert_eq(rp_password_hash_params("the dummy password", 18, &small, hash, sizeof hash), 0);
    for (int i = 0; i < 4; i++) {
        struct verify_arg v = {.hash = hash};
        cr_assert_eq(rp_hashpool_run(p, verify_job, &v, 10000), 0);
    }
    long after = vm_rss_kib();
    cr_assert(before > 0 && after > 0);
    cr_assert_lt(after - before, 8 * 1024, "RSS grew by %ld KiB over 10 checks (before %ld KiB)",
                 after - before, before);
    rp_hashpool_free(p);
}
