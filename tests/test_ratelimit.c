/* tests/test_ratelimit.c: token buckets keyed by string (lib/ratelimit.h).
 *
 * Time is passed in, so every rule is checked exactly, without sleeping. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/ratelimit.h"

static struct rp_ratelimit *make(uint32_t average, uint32_t burst, uint64_t period_ms,
                                 uint32_t capacity, uint64_t report_ms)
{
    struct rp_ratelimit_config c = {.average = average,
                                    .burst = burst,
                                    .period_ms = period_ms,
                                    .capacity = capacity,
                                    .report_ms = report_ms};
    struct rp_ratelimit *rl = NULL;
    cr_assert_eq(rp_ratelimit_new(&c, &rl), 0, "%s", rp_errmsg());
    return rl;
}

static bool take(struct rp_ratelimit *rl, const char *key, uint64_t now)
{
    struct rp_ratelimit_verdict v;
    cr_assert_eq(rp_ratelimit_take(rl, key, now, &v), 0, "%s", rp_errmsg());
    return v.allowed;
}

Test(ratelimit, burst_is_allowed_then_refused)
{
    struct rp_ratelimit *rl = make(20, 40, 60000, 16, 60000);
    for (int i = 0; i < 40; i++)
        cr_assert(take(rl, "10.0.0.1", 1000), "request %d of the burst refused", i + 1);
    struct rp_ratelimit_verdict v;
    cr_assert_eq(rp_ratelimit_take(rl, "10.0.0.1", 1000, &v), 0);
    cr_assert_not(v.allowed, "request 41 of a burst of 40 allowed");
    /* 20 a minute: the next token is 3 s away. */
    cr_assert_eq(v.retry_after_ms, 3000);
    rp_ratelimit_free(rl);
}

Test(ratelimit, bucket_refills_at_the_average_rate_up_to_the_burst)
{
    struct rp_ratelimit *rl = make(20, 40, 60000, 16, 60000);
    for (int i = 0; i < 40; i++)
        take(rl, "a", 0);
    cr_assert_not(take(rl, "a", 2999), "a token appeared before 3 s");
    cr_assert(take(rl, "a", 3000), "no token after 3 s");
    cr_assert_not(take(rl, "a", 3000));
    /* Ten minutes idle: the bucket is full again, and not fuller than the burst. */
    int allowed = 0;
    for (int i = 0; i < 100; i++)
        allowed += take(rl, "a", 603000);
    cr_assert_eq(allowed, 40, "after a long idle period %d were allowed, not the burst of 40",
                 allowed);
    rp_ratelimit_free(rl);
}

Test(ratelimit, refill_has_no_rounding_drift)
{
    /* 7 per 1000 ms: one token every 142.857 ms. Over 10 s exactly 70 are added to
     * the burst of 5 (taking one a ms, the bucket is never full again, so nothing
     * is lost at the cap). */
    struct rp_ratelimit *rl = make(7, 5, 1000, 4, 1000);
    int allowed = 0;
    for (uint64_t t = 0; t <= 10000; t++)
        allowed += take(rl, "k", t);
    cr_assert_eq(allowed, 5 + 70, "allowed %d in 10 s at 7/s with a burst of 5", allowed);
    rp_ratelimit_free(rl);
}

Test(ratelimit, keys_are_independent)
{
    struct rp_ratelimit *rl = make(1, 2, 60000, 16, 60000);
    cr_assert(take(rl, "alice", 0) && take(rl, "alice", 0));
    cr_assert_not(take(rl, "alice", 0));
    cr_assert(take(rl, "bob", 0), "bob was refused for alice's requests");
    rp_ratelimit_free(rl);
}

Test(ratelimit, table_evicts_the_least_recently_used_key)
{
    struct rp_ratelimit *rl = make(1, 1, 60000, 3, 60000);
    cr_assert(take(rl, "a", 0) && take(rl, "b", 1) && take(rl, "c", 2));
    cr_assert_not(take(rl, "a", 3)); /* a is now the most recently used */
    cr_assert_eq(rp_ratelimit_size(rl), 3);
    cr_assert(take(rl, "d", 4)); /* evicts b, the least recently used */
    cr_assert_eq(rp_ratelimit_size(rl), 3, "the table grew past its capacity");
    cr_assert_not(take(rl, "a", 5), "a was evicted instead of b");
    cr_assert_not(take(rl, "c", 6), "c was evicted instead of b");
    cr_assert(take(rl, "b", 7), "b was kept: its empty bucket is still there");
    rp_ratelimit_free(rl);
}

Test(ratelimit, many_keys_stay_within_capacity)
{
    struct rp_ratelimit *rl = make(1, 1, 60000, 100, 60000);
    char key[32];
    for (int i = 0; i < 10000; i++) {
        snprintf(key, sizeof key, "user-%d", i);
        cr_assert(take(rl, key, (uint64_t)i), "new key %s refused", key);
    }
    cr_assert_eq(rp_ratelimit_size(rl), 100);
    /* The last 100 keys are the ones kept. */
    cr_assert_not(take(rl, "user-9999", 10000));
    cr_assert_not(take(rl, "user-9900", 10000));
    rp_ratelimit_free(rl);
}

struct reports {
    char keys[8][RP_RATELIMIT_KEY_MAX];
    uint64_t counts[8];
    int n;
};

static void collect(void *arg, const char *key, uint64_t count)
{
    struct reports *r = arg;
    cr_assert_lt(r->n, 8);
    snprintf(r->keys[r->n], sizeof r->keys[0], "%s", key);
    r->counts[r->n++] = count;
}

Test(ratelimit, refusals_are_reported_first_at_once_then_summed_per_interval)
{
    struct rp_ratelimit *rl = make(1, 1, 60000, 16, 60000);
    struct rp_ratelimit_verdict v;
    take(rl, "x", 0);
    rp_ratelimit_take(rl, "x", 10, &v);
    cr_assert(!v.allowed && v.report_now == 1, "the first refusal is not reported at once");
    for (int i = 0; i < 99; i++) {
        rp_ratelimit_take(rl, "x", 20 + (uint64_t)i, &v);
        cr_assert_eq(v.report_now, 0, "refusal %d reported on its own", i + 2);
    }
    struct reports r = {.n = 0};
    cr_assert_eq(rp_ratelimit_sweep(rl, 60009, collect, &r), 0, "reported before the interval");
    cr_assert_eq(rp_ratelimit_sweep(rl, 60010, collect, &r), 1);
    cr_assert_str_eq(r.keys[0], "x");
    cr_assert_eq(r.counts[0], 99);
    cr_assert_eq(rp_ratelimit_sweep(rl, 200000, collect, &r), 0, "reported twice");
    rp_ratelimit_free(rl);
}

Test(ratelimit, refusals_of_evicted_keys_are_still_reported)
{
    struct rp_ratelimit *rl = make(1, 1, 60000, 2, 60000);
    struct rp_ratelimit_verdict v;
    take(rl, "a", 0);
    rp_ratelimit_take(rl, "a", 1, &v); /* reported at once */
    rp_ratelimit_take(rl, "a", 2, &v); /* pending */
    rp_ratelimit_take(rl, "a", 3, &v); /* pending */
    take(rl, "b", 4);
    take(rl, "c", 5); /* evicts a with 2 pending */
    struct reports r = {.n = 0};
    cr_assert_eq(rp_ratelimit_sweep(rl, 6, collect, &r), 1);
    cr_assert_str_eq(r.keys[0], "", "evicted refusals are reported under the empty key");
    cr_assert_eq(r.counts[0], 2);
    rp_ratelimit_free(rl);
}

Test(ratelimit, bad_keys_and_configs_are_refused)
{
    struct rp_ratelimit *rl = make(1, 1, 1000, 2, 1000);
    struct rp_ratelimit_verdict v;
    char long_key[RP_RATELIMIT_KEY_MAX + 1];
    memset(long_key, 'k', sizeof long_key - 1);
    long_key[sizeof long_key - 1] = '\0';
    cr_assert_eq(rp_ratelimit_take(rl, "", 0, &v), RP_EINVAL);
    cr_assert_eq(rp_ratelimit_take(rl, long_key, 0, &v), RP_EINVAL);
    cr_assert_eq(rp_ratelimit_size(rl), 0);
    rp_ratelimit_free(rl);
    struct rp_ratelimit_config bad[] = {
        {.average = 0, .burst = 1, .period_ms = 1, .capacity = 1, .report_ms = 1},
        {.average = 1, .burst = 0, .period_ms = 1, .capacity = 1, .report_ms = 1},
        {.average = 1, .burst = 1, .period_ms = 0, .capacity = 1, .report_ms = 1},
        {.average = 1, .burst = 1, .period_ms = 1, .capacity = 0, .report_ms = 1},
        {.average = 1,
         .burst = 1,
         .period_ms = 1,
         .capacity = RP_RATELIMIT_MAX_CAPACITY + 1,
         .report_ms = 1},
        {.average = 1, .burst = 1, .period_ms = 1, .capacity = 1, .report_ms = 0},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct rp_ratelimit *x = NULL;
        cr_assert_eq(rp_ratelimit_new(&bad[i], &x), RP_EINVAL, "config %zu accepted", i);
    }
}
