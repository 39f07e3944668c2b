/* lib/ratelimit.h: token buckets keyed by string, in a table of bounded size.
 *
 * Each key (a source address, a user name) has a bucket of @burst tokens that
 * refills at @average tokens per @period_ms; a request takes one token or is
 * refused. The table holds at most @capacity keys: when it is full, the key
 * used least recently goes. A key whose bucket has refilled completely carries
 * no information, so evicting it loses nothing; evicting a key that was being
 * limited forgives it its debt, which is why the capacity should be well above
 * the number of sources expected to be limited at once.
 *
 * Refusals are counted per key for reporting (one audit event per key per
 * interval instead of one per refusal): the first refusal after a quiet
 * interval is to be reported at once, later ones are summed and handed out by
 * rp_ratelimit_sweep() once @report_ms has passed since the last report. Counts
 * of evicted keys are not lost: they are summed under the empty key.
 *
 * Keys are hashed with SipHash under a per-table random key, so callers that
 * choose the keys (user names from anonymous requests) cannot aim them all at
 * one chain. Thread-safe: one mutex per table. Time is passed in by the caller
 * (a monotonic clock in ms), which keeps the logic testable. */
#ifndef RP_RATELIMIT_H
#define RP_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RP_RATELIMIT_KEY_MAX 160 /* bytes of a key, NUL included */
#define RP_RATELIMIT_MAX_CAPACITY (1u << 18)

struct rp_ratelimit;

struct rp_ratelimit_config {
    uint32_t average;   /* tokens added per period; >= 1 */
    uint32_t burst;     /* bucket size; >= 1 */
    uint64_t period_ms; /* >= 1 */
    uint32_t capacity;  /* keys kept; 1..RP_RATELIMIT_MAX_CAPACITY */
    uint64_t report_ms; /* shortest time between two reports of one key; >= 1 */
};

/* What rp_ratelimit_take decided. */
struct rp_ratelimit_verdict {
    bool allowed;
    uint64_t retry_after_ms; /* refused: time until a token is there */
    uint64_t report_now;     /* refusals (this one included) to report now; 0: none */
};

/* Makes a table (free it with rp_ratelimit_free). Returns 0, RP_EINVAL naming the
 * bad field, RP_ENOMEM, or RP_EIO (no randomness for the hash key). */
int rp_ratelimit_new(const struct rp_ratelimit_config *cfg, struct rp_ratelimit **out);
void rp_ratelimit_free(struct rp_ratelimit *rl);

/* Takes a token for @key at @now_ms (monotonic; never going backwards for the
 * result to be meaningful) into *@v. Returns 0, or RP_EINVAL if @key is empty or
 * longer than RP_RATELIMIT_KEY_MAX - 1 bytes (no token is taken then). */
int rp_ratelimit_take(struct rp_ratelimit *rl, const char *key, uint64_t now_ms,
                      struct rp_ratelimit_verdict *v);

/* Calls @report(@arg, key, count) for each key whose refusals since its last
 * report are due at @now_ms, and for the refusals of evicted keys (key ""), and
 * forgets those counts. Runs under the table's lock: @report must not call into
 * this table. Returns the number of reports made. */
size_t rp_ratelimit_sweep(struct rp_ratelimit *rl, uint64_t now_ms,
                          void (*report)(void *arg, const char *key, uint64_t count), void *arg);

/* Keys in the table now (for tests and status). */
size_t rp_ratelimit_size(struct rp_ratelimit *rl);

#endif
