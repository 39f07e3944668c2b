/* lib/lockout.h: login throttling as pure logic on a small state.
 *
 * Teleport locks a local user for AccountLockInterval (30 min) after
 * MaxLoginAttempts (5) failed logins. Here that rule is a function of
 * (state, now, policy) with no storage and no clock of its own: the auth
 * service reads the user's state, calls these functions with the leader's
 * time, and replicates the resulting state like any other write, so every
 * replica agrees on whether a user is locked.
 *
 * Rules:
 *   - a failure while locked is not counted (the attempt is refused before
 *     the password is checked);
 *   - failures older than @lock_ms (the same interval, as in Teleport) are
 *     forgotten: a new failure after such a gap starts a new count at 1;
 *   - the @max_failures-th counted failure locks until now + @lock_ms;
 *   - a failure after the lock has expired starts a new count at 1;
 *   - a successful login resets everything. */
#ifndef RP_LOCKOUT_H
#define RP_LOCKOUT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"

#define RP_LOCKOUT_MAX_FAILURES 5              /* Teleport's MaxLoginAttempts */
#define RP_LOCKOUT_LOCK_MS (30ull * 60 * 1000) /* Teleport's AccountLockInterval */

/* Bounds a policy (e.g. from raftport.yaml) must lie within. */
#define RP_LOCKOUT_MAX_FAILURES_LIMIT 1000
#define RP_LOCKOUT_MIN_LOCK_MS 1000ull                   /* 1 s */
#define RP_LOCKOUT_MAX_LOCK_MS (7ull * 24 * 3600 * 1000) /* 7 days */

/* The replicated state of one user. All zero: no failures, not locked. */
struct rp_lockout {
    uint32_t failures;        /* counted failures in the current series */
    uint64_t locked_until_ms; /* wall-clock ms the lock ends at; 0 if never locked */
    uint64_t last_failure_ms; /* wall-clock ms of the last counted failure; 0 if none */
};

struct rp_lockout_policy {
    uint32_t max_failures; /* failures that lock; 1..RP_LOCKOUT_MAX_FAILURES_LIMIT */
    uint64_t lock_ms;      /* lock length and failure memory; MIN_LOCK_MS..MAX_LOCK_MS */
};

/* {5, 30 min}. */
extern const struct rp_lockout_policy rp_lockout_default_policy;

/* Checks @pol against the bounds. Returns 0 or RP_EINVAL naming the bad value. */
int rp_lockout_policy_check(const struct rp_lockout_policy *pol);

/* Milliseconds the lock of @s still lasts at @now_ms; 0 if not locked. */
uint64_t rp_lockout_is_locked(const struct rp_lockout *s, uint64_t now_ms);

/* Records a failed login at @now_ms under @pol (NULL for the default; an
 * unchecked policy is clamped into the bounds). Returns true if this failure
 * locked the user. A failure while locked changes nothing and returns false.
 * @now_ms is the leader's wall clock (never 0: 0 means "no failure" in @s). */
bool rp_lockout_record_failure(struct rp_lockout *s, uint64_t now_ms,
                               const struct rp_lockout_policy *pol);

/* Records a successful login: clears @s. */
void rp_lockout_record_success(struct rp_lockout *s);

/* The state as fields of a msgpack map the caller is packing: packs
 * RP_LOCKOUT_FIELDS key/value pairs ("login_failures", "locked_until_ms",
 * "last_failure_ms"), which the caller counts in its map header. */
#define RP_LOCKOUT_FIELDS 3
void rp_lockout_pack_fields(msgpack_packer *pk, const struct rp_lockout *s);

/* Reads the fields above from @map (a parsed map, e.g. a user's status).
 * Absent (or nil) fields read as 0, so a record without them is "no failures".
 * Returns 0, or RP_EINVAL if a field is not a non-negative integer, the count
 * exceeds RP_LOCKOUT_MAX_FAILURES_LIMIT, or the fields contradict each other
 * (a lock or failure time without failures, failures without a time, a lock
 * ending before the failure that caused it); @s is unchanged on error. */
int rp_lockout_decode_fields(const msgpack_object *map, struct rp_lockout *s);

/* The state alone as a msgpack map of those fields, appended to @b. Returns 0 or RP_ENOMEM. */
int rp_lockout_encode(const struct rp_lockout *s, struct rp_buf *b);
/* Parses untrusted bytes (rp_mp_parse) holding such a map. Returns 0 or RP_EINVAL. */
int rp_lockout_decode(const void *data, size_t len, struct rp_lockout *s);

#endif
