/* lib/lockout.c: login throttling rules and their msgpack fields. */
#include "lib/lockout.h"

#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"

#define KEY_FAILURES "login_failures"
#define KEY_LOCKED_UNTIL "locked_until_ms"
#define KEY_LAST_FAILURE "last_failure_ms"

const struct rp_lockout_policy rp_lockout_default_policy = {
    .max_failures = RP_LOCKOUT_MAX_FAILURES,
    .lock_ms = RP_LOCKOUT_LOCK_MS,
};

int rp_lockout_policy_check(const struct rp_lockout_policy *pol)
{
    if (pol->max_failures < 1 || pol->max_failures > RP_LOCKOUT_MAX_FAILURES_LIMIT)
        return rp_err(RP_EINVAL, "login lockout max_failures is %u; 1 to %d are allowed",
                      pol->max_failures, RP_LOCKOUT_MAX_FAILURES_LIMIT);
    if (pol->lock_ms < RP_LOCKOUT_MIN_LOCK_MS || pol->lock_ms > RP_LOCKOUT_MAX_LOCK_MS)
        return rp_err(RP_EINVAL,
                      "login lockout interval is %llu ms; %llu ms to %llu ms (7 days) "
                      "are allowed",
                      (unsigned long long)pol->lock_ms, (unsigned long long)RP_LOCKOUT_MIN_LOCK_MS,
                      (unsigned long long)RP_LOCKOUT_MAX_LOCK_MS);
    return 0;
}

uint64_t rp_lockout_is_locked(const struct rp_lockout *s, uint64_t now_ms)
{
    return now_ms < s->locked_until_ms ? s->locked_until_ms - now_ms : 0;
}

bool rp_lockout_record_failure(struct rp_lockout *s, uint64_t now_ms,
                               const struct rp_lockout_policy *pol)
{
    struct rp_lockout_policy p = pol != NULL ? *pol : rp_lockout_default_policy;
    if (p.max_failures < 1)
        p.max_failures = 1;
    if (p.max_failures > RP_LOCKOUT_MAX_FAILURES_LIMIT)
        p.max_failures = RP_LOCKOUT_MAX_FAILURES_LIMIT;
    if (p.lock_ms < RP_LOCKOUT_MIN_LOCK_MS)
        p.lock_ms = RP_LOCKOUT_MIN_LOCK_MS;
    if (p.lock_ms > RP_LOCKOUT_MAX_LOCK_MS)
        p.lock_ms = RP_LOCKOUT_MAX_LOCK_MS;

    if (rp_lockout_is_locked(s, now_ms) > 0)
        return false; /* refused before checking the password: not counted */

    bool lock_expired = s->locked_until_ms != 0; /* and not locked, as checked above */
    /* A clock that stepped back (now before the last failure) keeps the series. */
    bool forgotten = now_ms >= s->last_failure_ms && now_ms - s->last_failure_ms >= p.lock_ms;
    if (s->failures == 0 || lock_expired || forgotten) {
        s->failures = 0;
        s->locked_until_ms = 0;
    }
    if (s->failures < RP_LOCKOUT_MAX_FAILURES_LIMIT)
        s->failures++;
    s->last_failure_ms = now_ms;
    if (s->failures >= p.max_failures) {
        s->locked_until_ms = now_ms + p.lock_ms;
        return true;
    }
    return false;
}

void rp_lockout_record_success(struct rp_lockout *s)
{
    memset(s, 0, sizeof *s);
}

void rp_lockout_pack_fields(msgpack_packer *pk, const struct rp_lockout *s)
{
    rp_mp_kv_u64(pk, KEY_FAILURES, s->failures);
    rp_mp_kv_u64(pk, KEY_LOCKED_UNTIL, s->locked_until_ms);
    rp_mp_kv_u64(pk, KEY_LAST_FAILURE, s->last_failure_ms);
}

/* An absent or nil field reads as 0; any other non-integer is an error. */
static int get_u64_or_zero(const msgpack_object *map, const char *key, uint64_t *v)
{
    int rv = rp_mp_get_u64(map, key, v);
    if (rv == RP_ENOTFOUND) {
        *v = 0;
        return 0;
    }
    return rv;
}

int rp_lockout_decode_fields(const msgpack_object *map, struct rp_lockout *s)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "login lockout state must be a map");
    uint64_t failures, until, last;
    int rv = get_u64_or_zero(map, KEY_FAILURES, &failures);
    if (rv == 0)
        rv = get_u64_or_zero(map, KEY_LOCKED_UNTIL, &until);
    if (rv == 0)
        rv = get_u64_or_zero(map, KEY_LAST_FAILURE, &last);
    if (rv != 0)
        return rp_err(rv, "login lockout state: %s", rp_errmsg());

    if (failures > RP_LOCKOUT_MAX_FAILURES_LIMIT)
        return rp_err(RP_EINVAL, "login lockout state: %s is %llu; at most %d are kept",
                      KEY_FAILURES, (unsigned long long)failures, RP_LOCKOUT_MAX_FAILURES_LIMIT);
    if (failures == 0 && (until != 0 || last != 0))
        return rp_err(RP_EINVAL,
                      "login lockout state: %s is 0 but %s/%s are set; both must be 0 "
                      "without failures",
                      KEY_FAILURES, KEY_LOCKED_UNTIL, KEY_LAST_FAILURE);
    if (failures != 0 && last == 0)
        return rp_err(RP_EINVAL, "login lockout state: %llu failures but no %s",
                      (unsigned long long)failures, KEY_LAST_FAILURE);
    if (until != 0 && until <= last)
        return rp_err(RP_EINVAL, "login lockout state: %s (%llu) is not after %s (%llu)",
                      KEY_LOCKED_UNTIL, (unsigned long long)until, KEY_LAST_FAILURE,
                      (unsigned long long)last);
    if (until != 0 && until - last > RP_LOCKOUT_MAX_LOCK_MS)
        return rp_err(RP_EINVAL,
                      "login lockout state: a lock of %llu ms exceeds the %llu ms "
                      "maximum",
                      (unsigned long long)(until - last),
                      (unsigned long long)RP_LOCKOUT_MAX_LOCK_MS);
    s->failures = (uint32_t)failures;
    s->locked_until_ms = until;
    s->last_failure_ms = last;
    return 0;
}

int rp_lockout_encode(const struct rp_lockout *s, struct rp_buf *b)
{
    /* A fixmap of three short keys and three u64 values is under 96 bytes;
     * reserving first means the packer's writes cannot fail. */
    int rv = rp_buf_reserve(b, 96);
    if (rv != 0)
        return rv;
    msgpack_packer pk;
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, RP_LOCKOUT_FIELDS);
    rp_lockout_pack_fields(&pk, s);
    return 0;
}

int rp_lockout_decode(const void *data, size_t len, struct rp_lockout *s)
{
    msgpack_unpacked u;
    int rv = rp_mp_parse(data, len, &u);
    if (rv != 0)
        return rp_err(rv, "login lockout state: %s", rp_errmsg());
    rv = rp_lockout_decode_fields(&u.data, s);
    msgpack_unpacked_destroy(&u);
    return rv;
}
