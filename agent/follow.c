/* agent/follow.c: keeps the node's cache in step with auth through a watch stream.
 *
 * One thread. Each connection starts with the stream's init snapshot, collected
 * aside and swapped into the cache whole at init_done (so the cache never holds half
 * of one state and half of another), then applies puts and deletes as they come. The
 * stream may come from any auth server: the client tries the configured ones and
 * those ping names. When none answers, or the stream ends, the thread waits with
 * exponential backoff and jitter (rp_jitter_ms, seeded per process, so a fleet that
 * lost auth together does not come back in step) and tries again, for ever; the
 * cache on disk serves meanwhile. */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define FIRST_BACKOFF_MS 250
#define POLL_MS 500 /* how often a quiet stream looks at the stop flag */
/* A stream quiet this long is probed: auth sends nothing on an idle stream, so a
 * server that hangs (rather than closes) would otherwise hold the node forever. */
#define PROBE_MS 60000

struct agent_follow {
    struct agent_cache *cache;
    struct agent_ident *id;
    char (*addrs)[64];
    size_t n_addrs;
    uint64_t max_backoff_ms;
    const char *const *kinds; /* static lists: the node's, or the proxy's */
    size_t n_kinds;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_bool stop;
};

/* What a node follows; a proxy follows agent_follow_proxy_kinds. */
static const char *const watched[] = {"cert_authority", "role", "lock", "cluster_name"};
const char *const agent_follow_proxy_kinds[AGENT_FOLLOW_PROXY_N_KINDS] = {
    "cert_authority", "role", "lock", "cluster_name", "node", "proxy", "user"};

/* Waits @ms or until stop; true if stopping. */
static bool wait_or_stop(struct agent_follow *f, uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&f->mu);
    while (!atomic_load(&f->stop) && pthread_cond_timedwait(&f->cv, &f->mu, &ts) != ETIMEDOUT)
        ;
    pthread_mutex_unlock(&f->mu);
    return atomic_load(&f->stop);
}

/* kind, name (NUL-terminated copies) and the re-encoded res of one event. */
static int event_fields(const msgpack_object *ev, char *kind, size_t kl, char *name, size_t nl,
                        struct rp_buf *res)
{
    const char *s;
    size_t n;
    if (rp_mp_get_str(ev, "kind", &s, &n) != 0 || n == 0 || n >= kl || memchr(s, 0, n))
        return rp_err(RP_EPROTO, "watch event without a kind");
    memcpy(kind, s, n);
    kind[n] = '\0';
    if (rp_mp_get_str(ev, "name", &s, &n) != 0 || n == 0 || n >= nl || memchr(s, 0, n))
        return rp_err(RP_EPROTO, "watch event without a name");
    memcpy(name, s, n);
    name[n] = '\0';
    if (res == NULL)
        return 0;
    const msgpack_object *r = rp_mp_get(ev, "res");
    if (r == NULL || r->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EPROTO, "watch event %s/%s without a resource", kind, name);
    rp_buf_reset(res);
    return rp_mp_pack_object(res, r);
}

/* One stream, from connecting to its end. Returns 0 if it ended because of stop,
 * else why it ended; *@synced says whether it delivered a whole init snapshot. */
static int follow_once(struct agent_follow *f, struct auth_client *c, bool *synced)
{
    struct rp_buf req, res;
    msgpack_packer pk;
    struct auth_watch *w = NULL;
    struct agent_cache *staging = NULL;
    struct auth_ping ping;
    int rv;
    *synced = false;
    /* A ping first: it proves a server answers with our identity and teaches the
     * client the current members before the stream picks one. */
    if ((rv = auth_client_ping(c, &ping)) != 0)
        return rv;
    rp_buf_init(&req);
    rp_buf_init(&res);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "watch");
    rp_mp_pack_str(&pk, "kinds");
    msgpack_pack_array(&pk, (uint32_t)f->n_kinds);
    for (size_t i = 0; i < f->n_kinds; i++)
        rp_mp_pack_str(&pk, f->kinds[i]);
    rv = auth_client_watch(c, req.data, req.len, &w);
    rp_buf_free(&req);
    if (rv != 0)
        return rv;
    if ((rv = agent_cache_open(&staging, NULL)) != 0)
        goto out;
    size_t n_init = 0;
    uint64_t last_heard = rp_mono_ms();
    while (!atomic_load(&f->stop)) {
        msgpack_unpacked ev;
        rv = auth_watch_next(w, &ev, POLL_MS);
        if (rv == RP_ETIMEDOUT) {
            msgpack_unpacked_destroy(&ev);
            rv = 0;
            if (rp_mono_ms() - last_heard < PROBE_MS)
                continue;
            struct auth_ping again;
            if (auth_client_ping(c, &again) != 0 || strcmp(again.server_id, ping.server_id) != 0) {
                rv = rp_err(RP_EUNAVAILABLE,
                            "auth server %s stopped answering (a quiet stream "
                            "probed by ping)",
                            ping.server_id);
                break;
            }
            last_heard = rp_mono_ms();
            continue;
        }
        last_heard = rp_mono_ms();
        if (rv != 0) {
            msgpack_unpacked_destroy(&ev);
            rv = rp_err(rv, "watch stream: %s", rp_errmsg());
            break;
        }
        const char *t;
        size_t tn;
        uint64_t rev = 0;
        char kind[64], name[256];
        rp_mp_get_u64(&ev.data, "rev", &rev);
        if (rp_mp_get_str(&ev.data, "ev", &t, &tn) != 0) {
            rv = rp_err(RP_EPROTO, "watch event without 'ev'");
        } else if (tn == 8 && memcmp(t, "init_put", 8) == 0) {
            rv = event_fields(&ev.data, kind, sizeof kind, name, sizeof name, &res);
            /* A resource the cache refuses is skipped, not fatal: one odd record must
             * not keep a node from every other change. */
            if (rv == 0 && agent_cache_put_rev(staging, kind, name, res.data, res.len, rev) != 0)
                rp_warn("follow", "skipping %s/%s: %s", kind, name, rp_errmsg());
            n_init++;
        } else if (tn == 9 && memcmp(t, "init_done", 9) == 0) {
            agent_cache_replace(f->cache, staging, rev);
            *synced = true;
            rp_info("follow", "cache in step with auth at revision %llu (%zu resources)",
                    (unsigned long long)rev, n_init);
        } else if (tn == 3 && memcmp(t, "put", 3) == 0) {
            rv = event_fields(&ev.data, kind, sizeof kind, name, sizeof name, &res);
            if (rv == 0 && agent_cache_put_rev(f->cache, kind, name, res.data, res.len, rev) != 0)
                rp_warn("follow", "skipping %s/%s: %s", kind, name, rp_errmsg());
            else if (rv == 0)
                rp_info("follow", "cache: %s/%s updated (revision %llu)", kind, name,
                        (unsigned long long)rev);
        } else if (tn == 6 && memcmp(t, "delete", 6) == 0) {
            rv = event_fields(&ev.data, kind, sizeof kind, name, sizeof name, NULL);
            if (rv == 0) {
                agent_cache_delete(f->cache, kind, name, rev);
                rp_info("follow", "cache: %s/%s deleted (revision %llu)", kind, name,
                        (unsigned long long)rev);
            }
        } else if (tn == 6 && memcmp(t, "reinit", 6) == 0) {
            rv = rp_err(RP_ECLOSED, "the auth server asked for a new snapshot");
        }
        msgpack_unpacked_destroy(&ev);
        if (rv != 0)
            break;
    }
    if (atomic_load(&f->stop))
        rv = 0;
    else if (rv == 0)
        rv = rp_err(RP_ECLOSED, "watch stream ended");
out:
    agent_cache_free(staging);
    auth_watch_close(w);
    rp_buf_free(&res);
    return rv;
}

static void *follow_main(void *arg)
{
    struct agent_follow *f = arg;
    struct auth_client *c = NULL;
    uint64_t generation = 0, backoff = FIRST_BACKOFF_MS;
    unsigned attempt = 0;
    while (!atomic_load(&f->stop)) {
        uint64_t gen;
        SSL_CTX *ctx = agent_ident_ctx(f->id, &gen);
        if (c == NULL || gen != generation) {
            /* A renewed identity: dial with the new certificate from now on. */
            const char *addrs[RP_CONFIG_MAX_AUTH_SERVERS];
            for (size_t i = 0; i < f->n_addrs; i++)
                addrs[i] = f->addrs[i];
            auth_client_free(c);
            c = NULL;
            if (auth_client_new(&c, ctx, addrs, f->n_addrs) != 0)
                c = NULL;
            generation = gen;
            if (c != NULL)
                auth_client_set_timeout(c, 5000);
        }
        SSL_CTX_free(ctx);
        bool synced = false;
        int rv = c != NULL ? follow_once(f, c, &synced) : rp_err(RP_ENOMEM, "auth client");
        if (atomic_load(&f->stop))
            break;
        if (synced) {
            backoff = FIRST_BACKOFF_MS;
            attempt = 0;
        }
        attempt++;
        uint64_t delay = rp_jitter_ms(backoff);
        if (delay > f->max_backoff_ms)
            delay = f->max_backoff_ms;
        rp_warn("follow",
                "no watch stream from auth (%s, code %s); retrying in %llu ms (attempt %u)%s",
                rp_errmsg(), rp_strerror(rv), (unsigned long long)delay, attempt,
                agent_cache_from_disk(f->cache) ? "; serving from the cache on disk" : "");
        backoff = backoff * 2 > f->max_backoff_ms ? f->max_backoff_ms : backoff * 2;
        if (wait_or_stop(f, delay))
            break;
    }
    auth_client_free(c);
    return NULL;
}

int agent_follow_start(struct agent_follow **out, struct agent_cache *cache, struct agent_ident *id,
                       const char *const *addrs, size_t n_addrs, uint64_t max_backoff_ms)
{
    return agent_follow_start_kinds(out, cache, id, addrs, n_addrs, max_backoff_ms, watched,
                                    sizeof watched / sizeof watched[0]);
}

int agent_follow_start_kinds(struct agent_follow **out, struct agent_cache *cache,
                             struct agent_ident *id, const char *const *addrs, size_t n_addrs,
                             uint64_t max_backoff_ms, const char *const *kinds, size_t n_kinds)
{
    struct agent_follow *f = calloc(1, sizeof *f);
    *out = NULL;
    if (f == NULL || n_addrs == 0 || n_addrs > RP_CONFIG_MAX_AUTH_SERVERS ||
        (f->addrs = calloc(n_addrs, sizeof *f->addrs)) == NULL) {
        free(f);
        return rp_err(n_addrs == 0 ? RP_EINVAL : RP_ENOMEM, "follow: %zu auth servers", n_addrs);
    }
    for (size_t i = 0; i < n_addrs; i++)
        snprintf(f->addrs[i], sizeof f->addrs[i], "%s", addrs[i]);
    f->n_addrs = n_addrs;
    f->cache = cache;
    f->id = id;
    f->kinds = kinds;
    f->n_kinds = n_kinds;
    f->max_backoff_ms = max_backoff_ms ? max_backoff_ms : AGENT_MAX_BACKOFF_MS;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    atomic_init(&f->stop, false);
    if (pthread_create(&f->thread, NULL, follow_main, f) != 0) {
        pthread_mutex_destroy(&f->mu);
        pthread_cond_destroy(&f->cv);
        free(f->addrs);
        free(f);
        return rp_err(RP_ENOMEM, "follow: cannot start its thread");
    }
    *out = f;
    return 0;
}

void agent_follow_stop(struct agent_follow *f)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->mu);
    atomic_store(&f->stop, true);
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f->addrs);
    free(f);
}
