/* lib/connlimit.c: per-address connection counts and rate-limited refusal logging
 * (see lib/connlimit.h).
 *
 * The counts table has a fixed capacity chosen at init, so a flood from many
 * addresses cannot grow it: past max_tracked addresses a new one is refused, which
 * the callers treat like any cap. Deletion uses backward shifting, so no tombstones
 * accumulate under churn. */
#include "lib/connlimit.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/log.h"

void rp_addr_key_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct rp_addr_key *out)
{
    memset(out, 0, sizeof *out);
    if (sa == NULL)
        return;
    if (sa->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        out->family = AF_INET;
        memcpy(out->ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    } else if (sa->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a)) {
            /* ::ffff:1.2.3.4 is the IPv4 peer 1.2.3.4 on a dual-stack socket. */
            out->family = AF_INET;
            memcpy(out->ip, a->s6_addr + 12, 4);
        } else {
            out->family = AF_INET6;
            memcpy(out->ip, a->s6_addr, 16);
        }
    }
}

void rp_addr_key_format(const struct rp_addr_key *k, char *out, size_t outlen)
{
    if (k->family == AF_INET || k->family == AF_INET6) {
        if (inet_ntop(k->family, k->ip, out, (socklen_t)outlen) != NULL)
            return;
    }
    snprintf(out, outlen, "?");
}

bool rp_addr_key_equal(const struct rp_addr_key *a, const struct rp_addr_key *b)
{
    return a->family == b->family && memcmp(a->ip, b->ip, sizeof a->ip) == 0;
}

/* FNV-1a over the key. */
static uint64_t key_hash(const struct rp_addr_key *k)
{
    uint64_t h = 1469598103934665603ull ^ k->family;
    for (size_t i = 0; i < sizeof k->ip; i++) {
        h ^= k->ip[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* ---- counts ---------------------------------------------------------------------------- */

int rp_addr_counts_init(struct rp_addr_counts *c, size_t max_tracked)
{
    size_t cap = 16;
    while (cap < 2 * max_tracked)
        cap *= 2;
    c->slots = calloc(cap, sizeof *c->slots);
    if (c->slots == NULL)
        return rp_err(RP_ENOMEM, "address table of %zu slots", cap);
    c->cap = cap;
    c->used = 0;
    c->max_tracked = max_tracked;
    return 0;
}

void rp_addr_counts_free(struct rp_addr_counts *c)
{
    free(c->slots);
    c->slots = NULL;
    c->cap = c->used = 0;
}

/* The slot holding @k, or the free slot where it would go. */
static size_t find_slot(const struct rp_addr_counts *c, const struct rp_addr_key *k)
{
    size_t i = (size_t)key_hash(k) & (c->cap - 1);
    while (c->slots[i].count != 0 && !rp_addr_key_equal(&c->slots[i].key, k))
        i = (i + 1) & (c->cap - 1);
    return i;
}

unsigned rp_addr_counts_get(const struct rp_addr_counts *c, const struct rp_addr_key *k)
{
    return c->slots[find_slot(c, k)].count;
}

int rp_addr_counts_add(struct rp_addr_counts *c, const struct rp_addr_key *k)
{
    size_t i = find_slot(c, k);
    if (c->slots[i].count == 0) {
        if (c->used >= c->max_tracked)
            return rp_err(RP_EBUSY, "connections from %zu addresses already counted", c->used);
        c->slots[i].key = *k;
        c->used++;
    }
    c->slots[i].count++;
    return 0;
}

void rp_addr_counts_remove(struct rp_addr_counts *c, const struct rp_addr_key *k)
{
    size_t i = find_slot(c, k);
    if (c->slots[i].count == 0)
        return;
    if (--c->slots[i].count > 0)
        return;
    c->used--;
    /* Backward-shift deletion: pull later members of the probe run into the hole. */
    size_t hole = i, j = i;
    for (;;) {
        j = (j + 1) & (c->cap - 1);
        if (c->slots[j].count == 0)
            break;
        size_t home = (size_t)key_hash(&c->slots[j].key) & (c->cap - 1);
        /* Move j into the hole unless its home lies cyclically in (hole, j]. */
        bool stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
        if (stays)
            continue;
        c->slots[hole] = c->slots[j];
        c->slots[j].count = 0;
        hole = j;
    }
}

/* ---- refusal log ------------------------------------------------------------------------- */

void rp_refusal_log_init(struct rp_refusal_log *l, const char *component, const char *what)
{
    memset(l, 0, sizeof *l);
    pthread_mutex_init(&l->mu, NULL);
    snprintf(l->component, sizeof l->component, "%s", component);
    snprintf(l->what, sizeof l->what, "%s", what);
}

void rp_refusal_log_destroy(struct rp_refusal_log *l)
{
    pthread_mutex_destroy(&l->mu);
}

/* A line to write once the lock is released (logging may block on stderr). */
struct pending_line {
    char text[256];
};

static void flush_locked(struct rp_refusal_log *l, uint64_t now, struct pending_line *lines,
                         size_t max_lines, size_t *n_lines)
{
    for (size_t i = 0; i < RP_REFUSAL_SLOTS; i++) {
        struct rp_refusal_slot *s = &l->slots[i];
        if (!s->used || now - s->window_start < RP_REFUSAL_WINDOW_MS)
            continue;
        if (s->count == 0) {
            s->used = false; /* a quiet window: the next refusal is logged at once */
            continue;
        }
        if (*n_lines >= max_lines)
            continue; /* left for the next flush */
        char ip[64];
        rp_addr_key_format(&s->key, ip, sizeof ip);
        snprintf(lines[*n_lines].text, sizeof lines[*n_lines].text,
                 "%u more %ss from %s refused since the last line about it (last: %s)", s->count,
                 l->what, ip, s->reason);
        (*n_lines)++;
        s->count = 0;
        s->window_start = now;
    }
    if (l->other_count > 0 && now - l->other_start >= RP_REFUSAL_WINDOW_MS &&
        *n_lines < max_lines) {
        snprintf(lines[*n_lines].text, sizeof lines[*n_lines].text,
                 "%u %ss from up to %u other addresses refused since the last line about them",
                 l->other_count, l->what, l->other_addrs);
        (*n_lines)++;
        l->other_count = 0;
        l->other_addrs = 0;
        l->other_start = now;
    }
}

static void write_lines(struct rp_refusal_log *l, struct pending_line *lines, size_t n)
{
    for (size_t i = 0; i < n; i++)
        rp_warn(l->component, "%s", lines[i].text);
}

void rp_refusal_log_note(struct rp_refusal_log *l, const struct rp_addr_key *k, const char *reason,
                         uint64_t now_ms)
{
    /* At most: the windows that ended (one per slot), the other-addresses line and
     * this refusal's own line; kept small by flushing often. */
    static const size_t max_lines = 8;
    struct pending_line lines[8];
    size_t n = 0;
    pthread_mutex_lock(&l->mu);
    flush_locked(l, now_ms, lines, max_lines - 1, &n);
    struct rp_refusal_slot *slot = NULL, *free_slot = NULL;
    for (size_t i = 0; i < RP_REFUSAL_SLOTS; i++) {
        if (l->slots[i].used && rp_addr_key_equal(&l->slots[i].key, k)) {
            slot = &l->slots[i];
            break;
        }
        if (!l->slots[i].used && free_slot == NULL)
            free_slot = &l->slots[i];
    }
    if (slot != NULL) {
        slot->count++;
        snprintf(slot->reason, sizeof slot->reason, "%s", reason);
    } else if (free_slot != NULL) {
        free_slot->used = true;
        free_slot->key = *k;
        free_slot->window_start = now_ms;
        free_slot->count = 0;
        snprintf(free_slot->reason, sizeof free_slot->reason, "%s", reason);
        char ip[64];
        rp_addr_key_format(k, ip, sizeof ip);
        snprintf(lines[n].text, sizeof lines[n].text,
                 "%s from %s refused: %s (further refusals from it are counted, one line a "
                 "minute)",
                 l->what, ip, reason);
        n++;
    } else {
        if (l->other_count == 0)
            l->other_start = now_ms;
        l->other_count++;
        l->other_addrs++; /* an upper bound: the same address may be counted twice */
    }
    l->lines += n;
    pthread_mutex_unlock(&l->mu);
    write_lines(l, lines, n);
}

void rp_refusal_log_flush(struct rp_refusal_log *l, uint64_t now_ms)
{
    struct pending_line lines[8];
    size_t n = 0;
    pthread_mutex_lock(&l->mu);
    flush_locked(l, now_ms, lines, 8, &n);
    l->lines += n;
    pthread_mutex_unlock(&l->mu);
    write_lines(l, lines, n);
}

uint64_t rp_refusal_log_lines(struct rp_refusal_log *l)
{
    pthread_mutex_lock(&l->mu);
    uint64_t n = l->lines;
    pthread_mutex_unlock(&l->mu);
    return n;
}
