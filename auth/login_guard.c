/* auth/login_guard.c: rate limits, the hashing pool and the dummy hash of
 * password logins; see auth/login_guard.h.
 *
 * Figures. Per source address: 20 logins a minute on average with bursts of 40,
 * Teleport's limit for unauthenticated requests; a person mistyping a password
 * never reaches it, an office behind one NAT address can log in 40 people at
 * once and then one every 3 s. Per user name: 10 a minute with bursts of 20; the
 * lockout (5 failures lock for 30 min) already stops guessing one real user's
 * password, the per-user limit bounds what a name costs the server when it does
 * not lock (an unknown name, or spread over many sources: the lockout writes
 * through Raft on every failure). With 2 workers at about 100 ms a hash, the
 * server checks up to about 1,200 passwords a minute, well above what the
 * limits let one source ask for. */
#include "auth/login_guard.h"

#include <arpa/inet.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/audit.h"
#include "auth/internal.h"
#include "lib/conn.h"
#include "lib/connlimit.h"
#include "lib/errors.h"
#include "lib/hashpool.h"
#include "lib/log.h"
#include "lib/password.h"
#include "lib/ratelimit.h"
#include "lib/util.h"

#define LOGIN_RATE_PERIOD_MS 60000ull
#define REPORT_INTERVAL_MS 60000ull /* one summary per source per minute */
#define ADDRESS_TABLE_KEYS 16384
#define USER_TABLE_KEYS 16384
#define HASH_WORKER_NICE 10 /* hashes take what CPU the Raft loop and requests leave */

struct auth_login_guard {
    struct rp_hashpool *pool;
    unsigned wait_ms;
    struct rp_ratelimit *by_address, *by_user;
    char dummy_hash[RP_PASSWORD_ENCODED_MAX];
    /* Refusals since the last log line (one a minute for the whole server). */
    atomic_uint_fast64_t refused_address, refused_user, refused_busy;
    atomic_uint_fast64_t busy_unreported;      /* busy refusals not in an event yet */
    atomic_int forwarding;                     /* logins being forwarded to the leader */
    uint64_t last_log_ms, last_busy_report_ms; /* duty thread only */
};

/* ---- start and stop ---------------------------------------------------------- */

static int table(uint32_t average, uint32_t burst, uint32_t capacity, struct rp_ratelimit **out)
{
    struct rp_ratelimit_config rc = {.average = average,
                                     .burst = burst,
                                     .period_ms = LOGIN_RATE_PERIOD_MS,
                                     .capacity = capacity,
                                     .report_ms = REPORT_INTERVAL_MS};
    return rp_ratelimit_new(&rc, out);
}

int auth_login_guard_start(struct auth_server *s)
{
    const struct rp_config *cfg = s->cfg;
    struct auth_login_guard *g = calloc(1, sizeof *g);
    if (g == NULL)
        return rp_err(RP_ENOMEM, "login guard");
    g->wait_ms = cfg->password_hash_wait_ms;
    struct rp_hashpool_config pc = {.workers = cfg->password_hash_workers,
                                    .queue_max = cfg->password_hash_queue,
                                    .nice = HASH_WORKER_NICE};
    int rv = rp_hashpool_new(&pc, &g->pool);
    if (rv == 0)
        rv = table(cfg->login_rate_per_address, cfg->login_burst_per_address, ADDRESS_TABLE_KEYS,
                   &g->by_address);
    if (rv == 0)
        rv = table(cfg->login_rate_per_user, cfg->login_burst_per_user, USER_TABLE_KEYS,
                   &g->by_user);
    /* The dummy hash's password is random and forgotten: nothing can match it. */
    char secret[65];
    if (rv == 0)
        rv = rp_random_hex(secret, 32);
    if (rv == 0)
        rv = rp_password_hash(secret, strlen(secret), g->dummy_hash, sizeof g->dummy_hash);
    OPENSSL_cleanse(secret, sizeof secret);
    if (rv != 0) {
        rv = rp_err(rv, "password logins: %s", rp_errmsg());
        s->login = g;
        auth_login_guard_free(s);
        return rv;
    }
    struct rp_hashpool_stats st;
    rp_hashpool_get_stats(g->pool, &st);
    rp_info("auth", "password checks: %u workers, %u queued at most, %u ms to start", st.workers,
            cfg->password_hash_queue, g->wait_ms);
    s->login = g;
    return 0;
}

void auth_login_guard_free(struct auth_server *s)
{
    struct auth_login_guard *g = s->login;
    if (g == NULL)
        return;
    rp_hashpool_free(g->pool);
    rp_ratelimit_free(g->by_address);
    rp_ratelimit_free(g->by_user);
    OPENSSL_cleanse(g->dummy_hash, sizeof g->dummy_hash);
    free(g);
    s->login = NULL;
}

/* ---- refusals in summary ----------------------------------------------------- */

/* One user.login.throttled event (AUDIT_ASYNC: at most one per key per minute,
 * so they cannot flood the queue themselves). */
static void audit_throttled(struct auth_server *s, const char *limit, const char *addr,
                            const char *user, uint64_t count)
{
    struct audit_event e;
    audit_event_init(&e, "user.login.throttled", "T1001W");
    audit_event_str(&e, "limit", limit);
    audit_event_str(&e, "user", user);
    audit_event_str(&e, "addr.remote", addr);
    audit_event_u64(&e, "count", count);
    audit_event_bool(&e, "success", false);
    audit_event_str(&e, "error",
                    strcmp(limit, "busy") == 0 ? "password checks refused: server busy"
                                               : "password logins refused: rate limit exceeded");
    audit_emit(s, &e, AUDIT_ASYNC);
}

static void report_address(void *arg, const char *key, uint64_t count)
{
    audit_throttled(arg, "address", key[0] ? key : "(sources no longer tracked)", NULL, count);
}

static void report_user(void *arg, const char *key, uint64_t count)
{
    audit_throttled(arg, "user", NULL, key[0] ? key : "(users no longer tracked)", count);
}

void auth_login_guard_duty(struct auth_server *s)
{
    struct auth_login_guard *g = s->login;
    if (g == NULL)
        return;
    uint64_t now = rp_mono_ms();
    rp_ratelimit_sweep(g->by_address, now, report_address, s);
    rp_ratelimit_sweep(g->by_user, now, report_user, s);
    if (atomic_load(&g->busy_unreported) != 0 &&
        now - g->last_busy_report_ms >= REPORT_INTERVAL_MS) {
        audit_throttled(s, "busy", NULL, NULL, atomic_exchange(&g->busy_unreported, 0));
        g->last_busy_report_ms = now;
    }
    /* One line a minute at most, the first one as soon as there is something to say. */
    if (now - g->last_log_ms < REPORT_INTERVAL_MS ||
        (atomic_load(&g->refused_address) | atomic_load(&g->refused_user) |
         atomic_load(&g->refused_busy)) == 0)
        return;
    uint64_t a = atomic_exchange(&g->refused_address, 0);
    uint64_t u = atomic_exchange(&g->refused_user, 0);
    uint64_t b = atomic_exchange(&g->refused_busy, 0);
    rp_warn("auth",
            "password logins refused in the last minute: %llu over the per-address limit, "
            "%llu over the per-user limit, %llu busy (user.login.throttled events)",
            (unsigned long long)a, (unsigned long long)u, (unsigned long long)b);
    g->last_log_ms = now;
}

/* ---- admission --------------------------------------------------------------- */

/* The source of "ip:port" / "[ip6]:port" as a limiter key: the IPv4 address (also
 * when it arrives IPv4-mapped on an IPv6 socket, which rp_addr_key_from_sockaddr
 * undoes), or the /64 of an IPv6 address (one host usually holds a whole /64). */
static void source_key(const char *remote, char *out, size_t outlen)
{
    struct sockaddr_storage ss;
    socklen_t len;
    struct rp_addr_key k;
    if (rp_addr_parse(remote, &ss, &len) != 0) {
        snprintf(out, outlen, "%s", remote[0] ? remote : "?");
        return;
    }
    rp_addr_key_from_sockaddr((const struct sockaddr *)&ss, len, &k);
    if (k.family == AF_INET6)
        memset(k.ip + 8, 0, 8);
    rp_addr_key_format(&k, out, outlen);
    if (k.family == AF_INET6 && strlen(out) + 4 < outlen)
        strcat(out, "/64");
}

int auth_login_admit_address(struct auth_server *s, const char *remote)
{
    struct auth_login_guard *g = s->login;
    char key[80];
    struct rp_ratelimit_verdict v;
    source_key(remote ? remote : "?", key, sizeof key);
    int rv = rp_ratelimit_take(g->by_address, key, rp_mono_ms(), &v);
    if (rv != 0 || v.allowed)
        return rv;
    atomic_fetch_add(&g->refused_address, 1);
    if (v.report_now)
        audit_throttled(s, "address", key, NULL, v.report_now);
    return rp_err(RP_EBUSY, "too many login attempts from %s; try again in %llu s", key,
                  (unsigned long long)(v.retry_after_ms + 999) / 1000);
}

int auth_login_admit_user(struct auth_server *s, const char *user, const char *remote)
{
    struct auth_login_guard *g = s->login;
    struct rp_ratelimit_verdict v;
    int rv = rp_ratelimit_take(g->by_user, user, rp_mono_ms(), &v);
    if (rv != 0 || v.allowed)
        return rv;
    atomic_fetch_add(&g->refused_user, 1);
    if (v.report_now) {
        char key[80];
        source_key(remote ? remote : "?", key, sizeof key);
        audit_throttled(s, "user", key, user, v.report_now);
    }
    return rp_err(RP_EBUSY, "too many login attempts for this user; try again in %llu s",
                  (unsigned long long)(v.retry_after_ms + 999) / 1000);
}

int auth_login_forward_begin(struct auth_server *s)
{
    struct auth_login_guard *g = s->login;
    if (atomic_fetch_add(&g->forwarding, 1) < AUTH_FWD_POOL / 2)
        return 0;
    atomic_fetch_sub(&g->forwarding, 1);
    atomic_fetch_add(&g->refused_busy, 1);
    atomic_fetch_add(&g->busy_unreported, 1);
    return rp_err(RP_EBUSY,
                  "server busy: %d logins are already being passed to the leader; try "
                  "again in a few seconds",
                  AUTH_FWD_POOL / 2);
}

void auth_login_forward_end(struct auth_server *s)
{
    atomic_fetch_sub(&s->login->forwarding, 1);
}

/* ---- the check ----------------------------------------------------------------- */

struct verify_job {
    const char *pw;
    size_t n;
    const char *hash;
};

static int verify_job_run(void *arg)
{
    const struct verify_job *j = arg;
    return rp_password_verify(j->pw, j->n, j->hash);
}

int auth_login_verify(struct auth_server *s, const char *pw, size_t n, const char *hash)
{
    struct auth_login_guard *g = s->login;
    struct verify_job j = {.pw = pw, .n = n, .hash = hash ? hash : g->dummy_hash};
    int rv = rp_hashpool_run(g->pool, verify_job_run, &j, g->wait_ms);
    if (rv == RP_EBUSY || rv == RP_ECLOSED) {
        atomic_fetch_add(&g->refused_busy, 1);
        atomic_fetch_add(&g->busy_unreported, 1);
        return rp_err(RP_EBUSY, "%s", rp_errmsg());
    }
    if (rv == RP_EINVAL) {
        /* The stored hash is unusable (tampered, or from elsewhere): the user cannot
         * log in with a password until it is reset. Said here, never to the caller. */
        rp_warn("auth", "stored password hash refused: %s", rp_errmsg());
        return rp_err(RP_EDENIED, "password does not match");
    }
    if (rv == 0 && hash == NULL)
        rv = rp_err(RP_EDENIED, "password does not match");
    return rv;
}
