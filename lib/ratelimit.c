/* lib/ratelimit.c: token buckets keyed by string; see lib/ratelimit.h.
 *
 * The table is a fixed array of entries allocated once, a hash index of chains
 * (entry indexes, -1 ending a chain) and a doubly linked list in order of last
 * use. Nothing is allocated per request, so a flood of new keys costs the
 * table's capacity and no more.
 *
 * A bucket's tokens are kept multiplied by period_ms, so refilling is the
 * integer product elapsed_ms * average and no rounding drifts over time. */
#include "lib/ratelimit.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lib/errors.h"

#define MAX_PERIOD_MS (366ull * 24 * 3600 * 1000)
#define MAX_BURST 1000000u

struct entry {
    char key[RP_RATELIMIT_KEY_MAX];
    uint64_t hash;
    uint64_t tokens; /* scaled by period_ms */
    uint64_t updated_ms;
    uint64_t pending; /* refusals not reported yet */
    uint64_t last_report_ms;
    bool ever_reported;
    int32_t chain_next;
    int32_t lru_prev, lru_next; /* lru_prev towards the most recently used */
};

struct rp_ratelimit {
    pthread_mutex_t mu;
    struct rp_ratelimit_config cfg;
    uint64_t full; /* burst * period_ms */
    uint64_t sip_k0, sip_k1;
    struct entry *entries;
    int32_t *chains;   /* n_chains heads */
    uint32_t n_chains; /* a power of two */
    int32_t free_head; /* unused entries, linked through chain_next */
    int32_t mru, lru;  /* ends of the use list */
    size_t size;
    uint64_t evicted_pending; /* refusals of evicted keys not reported yet */
    uint64_t evicted_last_report_ms;
    bool evicted_ever_reported;
};

/* ---- SipHash-2-4 ------------------------------------------------------------- */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

static void sip_round(uint64_t v[4])
{
    v[0] += v[1];
    v[1] = rotl(v[1], 13);
    v[1] ^= v[0];
    v[0] = rotl(v[0], 32);
    v[2] += v[3];
    v[3] = rotl(v[3], 16);
    v[3] ^= v[2];
    v[0] += v[3];
    v[3] = rotl(v[3], 21);
    v[3] ^= v[0];
    v[2] += v[1];
    v[1] = rotl(v[1], 17);
    v[1] ^= v[2];
    v[2] = rotl(v[2], 32);
}

static uint64_t siphash(uint64_t k0, uint64_t k1, const uint8_t *p, size_t n)
{
    uint64_t v[4] = {k0 ^ 0x736f6d6570736575ull, k1 ^ 0x646f72616e646f6dull,
                     k0 ^ 0x6c7967656e657261ull, k1 ^ 0x7465646279746573ull};
    size_t whole = n - n % 8;
    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = 0;
        for (int b = 0; b < 8; b++)
            m |= (uint64_t)p[i + b] << (8 * b);
        v[3] ^= m;
        sip_round(v);
        sip_round(v);
        v[0] ^= m;
    }
    uint64_t last = (uint64_t)(n & 0xff) << 56;
    for (size_t b = 0; b < n % 8; b++)
        last |= (uint64_t)p[whole + b] << (8 * b);
    v[3] ^= last;
    sip_round(v);
    sip_round(v);
    v[0] ^= last;
    v[2] ^= 0xff;
    for (int r = 0; r < 4; r++)
        sip_round(v);
    return v[0] ^ v[1] ^ v[2] ^ v[3];
}

/* ---- the table --------------------------------------------------------------- */

int rp_ratelimit_new(const struct rp_ratelimit_config *cfg, struct rp_ratelimit **out)
{
    if (cfg->average < 1 || cfg->average > MAX_BURST)
        return rp_err(RP_EINVAL, "rate limit average %u is outside 1..%u", cfg->average, MAX_BURST);
    if (cfg->burst < 1 || cfg->burst > MAX_BURST)
        return rp_err(RP_EINVAL, "rate limit burst %u is outside 1..%u", cfg->burst, MAX_BURST);
    if (cfg->period_ms < 1 || cfg->period_ms > MAX_PERIOD_MS)
        return rp_err(RP_EINVAL, "rate limit period %llu ms is outside 1 ms..366 days",
                      (unsigned long long)cfg->period_ms);
    if (cfg->capacity < 1 || cfg->capacity > RP_RATELIMIT_MAX_CAPACITY)
        return rp_err(RP_EINVAL, "rate limit table capacity %u is outside 1..%u", cfg->capacity,
                      RP_RATELIMIT_MAX_CAPACITY);
    if (cfg->report_ms < 1)
        return rp_err(RP_EINVAL, "rate limit report interval must be at least 1 ms");
    struct rp_ratelimit *rl = calloc(1, sizeof *rl);
    if (rl == NULL)
        return rp_err(RP_ENOMEM, "rate limit table");
    uint64_t seed[2];
    size_t got = 0;
    while (got < sizeof seed) {
        ssize_t r = getrandom((uint8_t *)seed + got, sizeof seed - got, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(rl);
            return rp_err(RP_EIO, "no randomness for the rate limit table's hash key");
        }
        got += (size_t)r;
    }
    rl->sip_k0 = seed[0];
    rl->sip_k1 = seed[1];
    rl->cfg = *cfg;
    rl->full = (uint64_t)cfg->burst * cfg->period_ms;
    rl->n_chains = 1;
    while (rl->n_chains < cfg->capacity)
        rl->n_chains <<= 1;
    /* calloc'd pages are touched only as entries are used: an idle table costs
     * little resident memory whatever its capacity. */
    rl->entries = calloc(cfg->capacity, sizeof *rl->entries);
    rl->chains = malloc(rl->n_chains * sizeof *rl->chains);
    if (rl->entries == NULL || rl->chains == NULL) {
        free(rl->entries);
        free(rl->chains);
        free(rl);
        return rp_err(RP_ENOMEM, "rate limit table of %u keys", cfg->capacity);
    }
    for (uint32_t i = 0; i < rl->n_chains; i++)
        rl->chains[i] = -1;
    for (uint32_t i = 0; i < cfg->capacity; i++)
        rl->entries[i].chain_next = i + 1 < cfg->capacity ? (int32_t)(i + 1) : -1;
    rl->free_head = 0;
    rl->mru = rl->lru = -1;
    pthread_mutex_init(&rl->mu, NULL);
    *out = rl;
    return 0;
}

void rp_ratelimit_free(struct rp_ratelimit *rl)
{
    if (rl == NULL)
        return;
    pthread_mutex_destroy(&rl->mu);
    free(rl->entries);
    free(rl->chains);
    free(rl);
}

static void lru_unlink(struct rp_ratelimit *rl, int32_t i)
{
    struct entry *e = &rl->entries[i];
    if (e->lru_prev >= 0)
        rl->entries[e->lru_prev].lru_next = e->lru_next;
    else
        rl->mru = e->lru_next;
    if (e->lru_next >= 0)
        rl->entries[e->lru_next].lru_prev = e->lru_prev;
    else
        rl->lru = e->lru_prev;
}

static void lru_push_front(struct rp_ratelimit *rl, int32_t i)
{
    struct entry *e = &rl->entries[i];
    e->lru_prev = -1;
    e->lru_next = rl->mru;
    if (rl->mru >= 0)
        rl->entries[rl->mru].lru_prev = i;
    rl->mru = i;
    if (rl->lru < 0)
        rl->lru = i;
}

static void chain_remove(struct rp_ratelimit *rl, int32_t i)
{
    int32_t *link = &rl->chains[rl->entries[i].hash & (rl->n_chains - 1)];
    while (*link != i)
        link = &rl->entries[*link].chain_next;
    *link = rl->entries[i].chain_next;
}

/* The entry of @key, made (full bucket) if absent, evicting the least recently
 * used one when the table is full. */
static int32_t entry_for(struct rp_ratelimit *rl, const char *key, size_t n, uint64_t now)
{
    uint64_t h = siphash(rl->sip_k0, rl->sip_k1, (const uint8_t *)key, n);
    int32_t *head = &rl->chains[h & (rl->n_chains - 1)];
    for (int32_t i = *head; i >= 0; i = rl->entries[i].chain_next) {
        struct entry *e = &rl->entries[i];
        if (e->hash == h && strcmp(e->key, key) == 0) {
            lru_unlink(rl, i);
            lru_push_front(rl, i);
            return i;
        }
    }
    int32_t i = rl->free_head;
    if (i >= 0) {
        rl->free_head = rl->entries[i].chain_next;
        rl->size++;
    } else {
        i = rl->lru;
        rl->evicted_pending += rl->entries[i].pending;
        lru_unlink(rl, i);
        chain_remove(rl, i);
    }
    struct entry *e = &rl->entries[i];
    memset(e, 0, sizeof *e);
    memcpy(e->key, key, n + 1);
    e->hash = h;
    e->tokens = rl->full;
    e->updated_ms = now;
    e->chain_next = *head;
    *head = i;
    lru_push_front(rl, i);
    return i;
}

static void refill(const struct rp_ratelimit *rl, struct entry *e, uint64_t now)
{
    if (now <= e->updated_ms)
        return;
    uint64_t elapsed = now - e->updated_ms;
    uint64_t room = rl->full - e->tokens;
    if (elapsed >= (room + rl->cfg.average - 1) / rl->cfg.average)
        e->tokens = rl->full;
    else
        e->tokens += elapsed * rl->cfg.average;
    e->updated_ms = now;
}

int rp_ratelimit_take(struct rp_ratelimit *rl, const char *key, uint64_t now_ms,
                      struct rp_ratelimit_verdict *v)
{
    memset(v, 0, sizeof *v);
    size_t n = key ? strnlen(key, RP_RATELIMIT_KEY_MAX) : 0;
    if (n == 0 || n == RP_RATELIMIT_KEY_MAX)
        return rp_err(RP_EINVAL, "rate limit key must be 1 to %d bytes", RP_RATELIMIT_KEY_MAX - 1);
    pthread_mutex_lock(&rl->mu);
    struct entry *e = &rl->entries[entry_for(rl, key, n, now_ms)];
    refill(rl, e, now_ms);
    const uint64_t one = rl->cfg.period_ms;
    if (e->tokens >= one) {
        e->tokens -= one;
        v->allowed = true;
    } else {
        v->retry_after_ms = (one - e->tokens + rl->cfg.average - 1) / rl->cfg.average;
        e->pending++;
        if (!e->ever_reported || now_ms - e->last_report_ms >= rl->cfg.report_ms) {
            v->report_now = e->pending;
            e->pending = 0;
            e->last_report_ms = now_ms;
            e->ever_reported = true;
        }
    }
    pthread_mutex_unlock(&rl->mu);
    return 0;
}

size_t rp_ratelimit_sweep(struct rp_ratelimit *rl, uint64_t now_ms,
                          void (*report)(void *arg, const char *key, uint64_t count), void *arg)
{
    size_t made = 0;
    pthread_mutex_lock(&rl->mu);
    for (int32_t i = rl->mru; i >= 0; i = rl->entries[i].lru_next) {
        struct entry *e = &rl->entries[i];
        if (e->pending > 0 && now_ms - e->last_report_ms >= rl->cfg.report_ms) {
            report(arg, e->key, e->pending);
            e->pending = 0;
            e->last_report_ms = now_ms;
            made++;
        }
    }
    if (rl->evicted_pending > 0 &&
        (!rl->evicted_ever_reported || now_ms - rl->evicted_last_report_ms >= rl->cfg.report_ms)) {
        report(arg, "", rl->evicted_pending);
        rl->evicted_pending = 0;
        rl->evicted_last_report_ms = now_ms;
        rl->evicted_ever_reported = true;
        made++;
    }
    pthread_mutex_unlock(&rl->mu);
    return made;
}

size_t rp_ratelimit_size(struct rp_ratelimit *rl)
{
    pthread_mutex_lock(&rl->mu);
    size_t n = rl->size;
    pthread_mutex_unlock(&rl->mu);
    return n;
}
