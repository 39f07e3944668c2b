/* lib/connlimit.h: what the listening ports share to stay bounded under a flood of
 * connections from strangers: per-address counts of unauthenticated connections,
 * and refusal logging limited to one line per address per minute.
 *
 * An address is the peer's IP without its port: one machine opening thousands of
 * connections is one address. */
#ifndef RP_CONNLIMIT_H
#define RP_CONNLIMIT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct rp_addr_key {
    uint8_t family; /* AF_INET, AF_INET6, or 0 (unknown: all such share one key) */
    uint8_t ip[16];
};

/* The key of peer address @sa (port ignored). */
void rp_addr_key_from_sockaddr(const struct sockaddr *sa, socklen_t len, struct rp_addr_key *out);
/* The IP of @k as text ("127.0.0.2", "::1", "?"). */
void rp_addr_key_format(const struct rp_addr_key *k, char *out, size_t outlen);
bool rp_addr_key_equal(const struct rp_addr_key *a, const struct rp_addr_key *b);

/* ---- per-address counts ------------------------------------------------------------ */

/* Counts of connections per address, for at most @max_tracked addresses at once
 * (an address with a count of 0 takes no room). Not thread-safe: one owner (an event
 * loop) uses it. */
struct rp_addr_counts {
    struct rp_addr_slot {
        struct rp_addr_key key;
        unsigned count; /* 0: free */
    } * slots;          /* owned; open addressing, capacity a power of two */
    size_t cap;
    size_t used;
    size_t max_tracked;
};

/* RP_ENOMEM, or 0. */
int rp_addr_counts_init(struct rp_addr_counts *c, size_t max_tracked);
void rp_addr_counts_free(struct rp_addr_counts *c);
unsigned rp_addr_counts_get(const struct rp_addr_counts *c, const struct rp_addr_key *k);
/* Adds one for @k. RP_EBUSY if @k is new and max_tracked addresses are counted. */
int rp_addr_counts_add(struct rp_addr_counts *c, const struct rp_addr_key *k);
/* Takes one from @k (nothing if its count is 0). */
void rp_addr_counts_remove(struct rp_addr_counts *c, const struct rp_addr_key *k);

/* ---- refusal log --------------------------------------------------------------------- */

#define RP_REFUSAL_WINDOW_MS 60000
#define RP_REFUSAL_SLOTS 128

/* Logs refused or evicted connections at most once per address per window: the
 * first refusal of an address is logged at once, later ones in the window are
 * counted and logged as one line with the count when the window ends (on the next
 * rp_refusal_log_note or rp_refusal_log_flush after it). Addresses beyond
 * RP_REFUSAL_SLOTS share one "other addresses" line per window. Thread-safe. */
struct rp_refusal_log {
    pthread_mutex_t mu;
    char component[16]; /* log component, e.g. "auth" or "raft" */
    char what[48];      /* what is refused, e.g. "auth API connection" */
    struct rp_refusal_slot {
        struct rp_addr_key key;
        bool used;
        uint64_t window_start;
        unsigned count; /* refusals in this window not yet logged */
        char reason[96];
    } slots[RP_REFUSAL_SLOTS];
    uint64_t other_start;
    unsigned other_count, other_addrs;
    uint64_t lines; /* lines written, for tests */
};

void rp_refusal_log_init(struct rp_refusal_log *l, const char *component, const char *what);
void rp_refusal_log_destroy(struct rp_refusal_log *l);
/* Records one refusal of a connection from @k because of @reason, at @now_ms
 * (monotonic). */
void rp_refusal_log_note(struct rp_refusal_log *l, const struct rp_addr_key *k, const char *reason,
                         uint64_t now_ms);
/* Writes the counts of windows that have ended by @now_ms. */
void rp_refusal_log_flush(struct rp_refusal_log *l, uint64_t now_ms);
/* Lines written so far. */
uint64_t rp_refusal_log_lines(struct rp_refusal_log *l);

#endif
