/* tests/test_rand.c: jitter comes from a per-process seed (getrandom), so that
 * two processes, even a parent and the child it forked after drawing, never
 * back off on the same schedule. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/util.h"

#define DRAWS 8

/* Forks a child that writes DRAWS numbers of its own sequence to a pipe. */
static void child_sequence(uint64_t out[DRAWS])
{
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        uint64_t v[DRAWS];
        for (int i = 0; i < DRAWS; i++)
            v[i] = rp_rand_u64();
        _exit(write(fds[1], v, sizeof v) == (ssize_t)sizeof v ? 0 : 1);
    }
    close(fds[1]);
    size_t got = 0;
    while (got < sizeof(uint64_t) * DRAWS) {
        ssize_t r = read(fds[0], (char *)out + got, sizeof(uint64_t) * DRAWS - got);
        cr_assert_gt(r, 0, "the child wrote %zu bytes", got);
        got += (size_t)r;
    }
    close(fds[0]);
    int st;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

Test(rand, forked_processes_draw_different_sequences)
{
    /* The parent draws first: its children inherit a seeded state and must not
     * continue it. */
    (void)rp_rand_u64();
    uint64_t a[DRAWS], b[DRAWS], mine[DRAWS];
    child_sequence(a);
    child_sequence(b);
    for (int i = 0; i < DRAWS; i++)
        mine[i] = rp_rand_u64();
    cr_assert(memcmp(a, b, sizeof a) != 0, "two children drew the same sequence");
    cr_assert(memcmp(a, mine, sizeof a) != 0, "a child drew its parent's sequence");
    cr_assert(memcmp(b, mine, sizeof b) != 0, "a child drew its parent's sequence");
}

Test(rand, below_stays_in_range_and_covers_it)
{
    unsigned seen[10] = {0};
    for (int i = 0; i < 10000; i++) {
        uint64_t v = rp_rand_below(10);
        cr_assert_lt(v, 10);
        seen[v]++;
    }
    /* Each value expects 1000; 700 is over 9 standard deviations away. */
    for (int i = 0; i < 10; i++)
        cr_assert_gt(seen[i], 700, "value %d drawn %u times in 10000", i, seen[i]);
    cr_assert_eq(rp_rand_below(0), 0);
    cr_assert_eq(rp_rand_below(1), 0);
}

Test(rand, jitter_adds_at_most_half_the_base)
{
    bool varied = false;
    uint64_t first = rp_jitter_ms(100);
    for (int i = 0; i < 1000; i++) {
        uint64_t v = rp_jitter_ms(100);
        cr_assert(v >= 100 && v <= 150, "jitter of 100 ms gave %llu", (unsigned long long)v);
        varied = varied || v != first;
    }
    cr_assert(varied, "1000 jitters of 100 ms were all %llu", (unsigned long long)first);
    cr_assert_eq(rp_jitter_ms(0), 0);
}

#define THREADS 4
#define PER_THREAD 5000

static void *draw_many(void *arg)
{
    uint64_t *out = arg;
    for (int i = 0; i < PER_THREAD; i++)
        out[i] = rp_rand_u64();
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

Test(rand, threads_never_draw_the_same_number)
{
    /* A racy state would hand two threads the same step of the stream. */
    uint64_t *all = calloc(THREADS * PER_THREAD, sizeof *all);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        cr_assert_eq(pthread_create(&th[t], NULL, draw_many, all + t * PER_THREAD), 0);
    for (int t = 0; t < THREADS; t++)
        pthread_join(th[t], NULL);
    qsort(all, THREADS * PER_THREAD, sizeof *all, cmp_u64);
    for (int i = 1; i < THREADS * PER_THREAD; i++)
        cr_assert_neq(all[i], all[i - 1], "the same number was drawn twice");
    free(all);
}

Test(rand, uuid_v4_has_version_and_variant)
{
    char a[37], b[37];
    cr_assert_eq(rp_uuid_v4(a), 0);
    cr_assert_eq(rp_uuid_v4(b), 0);
    cr_assert_eq(strlen(a), 36);
    cr_assert(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-', "%s", a);
    cr_assert_eq(a[14], '4', "%s", a);
    cr_assert(strchr("89ab", a[19]) != NULL, "%s", a);
    cr_assert_str_neq(a, b);
}
