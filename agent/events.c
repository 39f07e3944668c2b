/* agent/events.c: audit events on their way to auth (emit_events), for the node agent's
 * SSH server and the proxy alike: a bounded queue (the oldest go first when auth stays
 * away long enough to fill it) drained by a thread of its own, so that no session or
 * request ever waits for auth. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/agent.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define EVENT_QUEUE_MAX 10000 /* audit events waiting for auth; the oldest go first */
#define EVENT_MAX_BYTES AUTH_EMIT_MAX_EVENT_BYTES

struct queued_event {
    uint8_t *p;
    size_t len;
};

struct agent_events {
    const char *who; /* "agent", "proxy": the log lines' tag */
    struct agent_ident *id;
    const char *const *addrs;
    size_t n_addrs;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct queued_event *q; /* ring of EVENT_QUEUE_MAX */
    size_t head, n;
    uint64_t dropped;
    bool stop;
    pthread_t thread;
};

/* ---- audit events ------------------------------------------------------------------ */

int agent_emit(void *arg, const void *event, size_t len)
{
    struct agent_events *s = arg;
    if (len == 0 || len > EVENT_MAX_BYTES)
        return rp_err(RP_ETOOBIG, "audit event of %zu bytes (1 to %d)", len, EVENT_MAX_BYTES);
    uint8_t *copy = malloc(len);
    if (copy == NULL)
        return rp_err(RP_ENOMEM, "audit event");
    memcpy(copy, event, len);
    pthread_mutex_lock(&s->mu);
    if (s->n == EVENT_QUEUE_MAX) {
        free(s->q[s->head].p);
        s->head = (s->head + 1) % EVENT_QUEUE_MAX;
        s->n--;
        s->dropped++;
    }
    s->q[(s->head + s->n) % EVENT_QUEUE_MAX] = (struct queued_event){copy, len};
    s->n++;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Sends up to EVENT_BATCH_MAX queued events in one emit_events; removes them on
 * success. Called without the lock held. */
static int send_batch(struct agent_events *s, struct auth_client *c)
{
    struct rp_buf arr;
    msgpack_packer pk;
    rp_buf_init(&arr);
    rp_mp_packer_init(&pk, &arr);
    pthread_mutex_lock(&s->mu);
    size_t n = s->n < AUTH_EMIT_MAX_EVENTS ? s->n : AUTH_EMIT_MAX_EVENTS;
    msgpack_pack_array(&pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const struct queued_event *e = &s->q[(s->head + i) % EVENT_QUEUE_MAX];
        rp_buf_append(&arr, e->p, e->len);
    }
    pthread_mutex_unlock(&s->mu);
    int rv = auth_client_emit_events(c, arr.data, arr.len, NULL);
    rp_buf_free(&arr);
    if (rv != 0 && rv != RP_EINVAL && rv != RP_EDENIED && rv != RP_ETOOBIG)
        return rv; /* auth away: keep them for the next try */
    if (rv != 0)
        rp_warn(s->who, "auth refused %zu audit events (%s); dropped", n, rp_errmsg());
    /* Only the first n can have been sent: emit only appends, and drops from the
     * head only when full, which may have dropped some of ours: take what is left. */
    pthread_mutex_lock(&s->mu);
    for (size_t i = 0; i < n && s->n > 0; i++) {
        free(s->q[s->head].p);
        s->head = (s->head + 1) % EVENT_QUEUE_MAX;
        s->n--;
    }
    pthread_mutex_unlock(&s->mu);
    return 0;
}

static void *events_main(void *arg)
{
    struct agent_events *s = arg;
    struct auth_client *c = NULL;
    uint64_t generation = 0, backoff = 500;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->n == 0)
            pthread_cond_wait(&s->cv, &s->mu);
        if (s->n == 0)
            break; /* stopping with nothing left */
        if (s->dropped > 0) {
            rp_warn(s->who,
                    "%llu audit events were dropped: auth was away and the queue "
                    "holds %d",
                    (unsigned long long)s->dropped, EVENT_QUEUE_MAX);
            s->dropped = 0;
        }
        bool stopping = s->stop;
        pthread_mutex_unlock(&s->mu);
        uint64_t gen;
        SSL_CTX *ctx = agent_ident_ctx(s->id, &gen);
        if (c == NULL || gen != generation) {
            auth_client_free(c);
            c = NULL;
            if (auth_client_new(&c, ctx, s->addrs, s->n_addrs) == 0)
                auth_client_set_timeout(c, 5000);
            generation = gen;
        }
        SSL_CTX_free(ctx);
        int rv = c ? send_batch(s, c) : RP_ENOMEM;
        if (rv != 0) {
            if (stopping) {
                rp_warn(s->who, "stopping with audit events auth did not take: %s", rp_errmsg());
                pthread_mutex_lock(&s->mu);
                break;
            }
            uint64_t d = rp_jitter_ms(backoff);
            backoff = backoff * 2 > 30000 ? 30000 : backoff * 2;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += (time_t)(d / 1000);
            ts.tv_nsec += (long)(d % 1000) * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&s->mu);
            if (!s->stop)
                pthread_cond_timedwait(&s->cv, &s->mu, &ts);
            continue;
        }
        backoff = 500;
        pthread_mutex_lock(&s->mu);
    }
    for (; s->n > 0; s->n--) {
        free(s->q[s->head].p);
        s->head = (s->head + 1) % EVENT_QUEUE_MAX;
    }
    pthread_mutex_unlock(&s->mu);
    auth_client_free(c);
    return NULL;
}

int agent_events_start(struct agent_events **out, const char *who, struct agent_ident *id,
                       const char *const *addrs, size_t n_addrs)
{
    struct agent_events *s = calloc(1, sizeof *s);
    if (s == NULL)
        return rp_err(RP_ENOMEM, "audit queue");
    s->who = who;
    s->id = id;
    s->addrs = addrs;
    s->n_addrs = n_addrs;
    if ((s->q = calloc(EVENT_QUEUE_MAX, sizeof *s->q)) == NULL) {
        free(s);
        return rp_err(RP_ENOMEM, "audit queue");
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    if (pthread_create(&s->thread, NULL, events_main, s) != 0) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv);
        free(s->q);
        free(s);
        return rp_err(RP_ENOMEM, "audit sender thread");
    }
    *out = s;
    return 0;
}

void agent_events_stop(struct agent_events *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->q);
    free(s);
}
