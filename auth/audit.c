/* auth/audit.c: emitting audit events, batching them through Raft, and the
 * audit API methods (audit_append between auth servers, events for tctl).
 * See auth/audit.h. */
#include "auth/audit.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "state/state.h"

#define BATCH_MAX_BYTES (8u << 20) /* half the command limit: room for the envelope */
#define COMMIT_DEADLINE_MS 10000   /* how long a batch keeps trying to find a leader */
#define STOP_DEADLINE_MS 2000      /* at shutdown */
#define EVENTS_DEFAULT_LIMIT 1000
#define EVENTS_MAX_LIMIT 10000

/* An emitter waiting for its event's batch, on the emitter's stack. Its own mutex:
 * the batcher wakes each waiter without holding the queue's lock, so a woken emitter
 * never queues behind the batcher or the other emitters. */
struct audit_waiter {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool done; /* under mu */
    int rv;
};

struct audit_item {
    struct rp_buf ev;
    struct audit_waiter *w; /* NULL for AUDIT_ASYNC */
    uint64_t term;          /* audit_emit_in_term: the term its batch must commit in */
    struct audit_item *next;
};

struct auth_audit {
    struct auth_server *srv;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* the batcher waits for work */
    struct audit_item *head, *tail;
    size_t n_queued;
    bool stop, started;
    pthread_t thread;
    uint64_t retention_ms;
    struct audit_stats st;
};

/* ---- building events ----------------------------------------------------- */

void audit_event_init(struct audit_event *e, const char *type, const char *code)
{
    rp_buf_init(&e->body);
    rp_mp_packer_init(&e->pk, &e->body);
    e->n_fields = 0;
    audit_event_str(e, "event", type);
    audit_event_str(e, "code", code);
}

void audit_event_str(struct audit_event *e, const char *key, const char *val)
{
    if (val == NULL)
        return;
    rp_mp_kv_str(&e->pk, key, val);
    e->n_fields++;
}

void audit_event_u64(struct audit_event *e, const char *key, uint64_t val)
{
    rp_mp_kv_u64(&e->pk, key, val);
    e->n_fields++;
}

void audit_event_bool(struct audit_event *e, const char *key, bool val)
{
    rp_mp_kv_bool(&e->pk, key, val);
    e->n_fields++;
}

void audit_event_strs(struct audit_event *e, const char *key, const char *const *vals, size_t n)
{
    rp_mp_pack_str(&e->pk, key);
    msgpack_pack_array(&e->pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        rp_mp_pack_str(&e->pk, vals[i]);
    e->n_fields++;
}

void audit_event_free(struct audit_event *e)
{
    rp_buf_free(&e->body);
}

/* The stored form: {uid, time, server_id, <fields>}. */
static int finish_event(struct auth_server *s, struct audit_event *e, struct rp_buf *out)
{
    char uid[33];
    if (rp_random_hex(uid, 16) != 0)
        return rp_err(RP_EIO, "no randomness for an event id");
    msgpack_packer pk;
    rp_buf_init(out);
    rp_mp_packer_init(&pk, out);
    msgpack_pack_map(&pk, e->n_fields + 3);
    rp_mp_kv_str(&pk, "uid", uid);
    rp_mp_kv_u64(&pk, "time", rp_now_ms());
    rp_mp_kv_str(&pk, "server_id", s->id.host_id);
    return rp_buf_append(out, e->body.data, e->body.len);
}

/* ---- the batcher ----------------------------------------------------------- */

static bool transient(int rv)
{
    return rv == RP_ENOTLEADER || rv == RP_EUNAVAILABLE || rv == RP_EUNKNOWN ||
           rv == RP_ETIMEDOUT || rv == RP_EBUSY;
}

/* Reads an API answer: 0 if ok, else its error code (message set). */
static int answer_code(const struct rp_buf *ans)
{
    msgpack_unpacked u;
    if (rp_mp_parse(ans->data, ans->len, &u) != 0)
        return rp_err(RP_EPROTO, "malformed answer to audit_append");
    bool ok = false;
    int rv = 0;
    if (rp_mp_get_bool(&u.data, "ok", &ok) != 0 || !ok) {
        const char *code = "internal", *msg = "";
        size_t cn = 8, mn = 0;
        char cb[32];
        rp_mp_get_str(&u.data, "code", &code, &cn);
        rp_mp_get_str(&u.data, "error", &msg, &mn);
        snprintf(cb, sizeof cb, "%.*s", (int)cn, code);
        rv = rp_err(rp_error_from_name(cb), "leader: %.*s", (int)mn, msg);
    }
    msgpack_unpacked_destroy(&u);
    return rv;
}

/* Commits @events (n encoded maps back to back) under one request id, as leader
 * or through the leader, retrying while leadership moves. */
static int commit_batch(struct auth_audit *a, const struct rp_buf *events, uint32_t n,
                        uint64_t deadline, uint64_t *term)
{
    struct auth_server *s = a->srv;
    char rid[40] = "audit-";
    if (rp_random_hex(rid + 6, 16) != 0)
        return rp_err(RP_EIO, "no randomness for a request id");
    struct rp_buf cmd, ans;
    rp_buf_init(&cmd);
    rp_buf_init(&ans);
    unsigned backoff = 20;
    int rv;
    for (;;) {
        rp_buf_reset(&cmd);
        *term = 0; /* forwarded batches commit in no term of ours */
        if (auth_is_leader(s)) {
            struct state_cmd c = {.op = "audit",
                                  .rid = rid,
                                  .events = events->data,
                                  .events_len = events->len,
                                  .n_events = n};
            struct state_result sr;
            rv = state_cmd_encode(&c, &cmd);
            if (rv == 0)
                rv = auth_propose_term(s, cmd.data, cmd.len, &sr, term);
            if (rv == 0 && sr.code != 0)
                rv = rp_err(sr.code, "%s", sr.message);
        } else {
            msgpack_packer pk;
            struct rp_mp_map m;
            rp_mp_packer_init(&pk, &cmd);
            rp_mp_map_begin(&pk, &m);
            rp_mp_map_str(&m, "m", "audit_append");
            rp_mp_map_str(&m, "rid", rid);
            msgpack_pack_array(rp_mp_map_key(&m, "events"), n);
            rv = rp_buf_append(&cmd, events->data, events->len);
            rp_mp_map_end(&m);
            rp_buf_reset(&ans);
            if (rv == 0)
                rv = auth_forward(s, cmd.data, cmd.len, &ans);
            if (rv == 0)
                rv = answer_code(&ans);
        }
        if (rv == 0 || !transient(rv) || rp_mono_ms() + backoff >= deadline)
            break;
        struct timespec ts = {0, (long)backoff * 1000000L};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 > 500 ? 500 : backoff * 2;
    }
    rp_buf_free(&cmd);
    rp_buf_free(&ans);
    return rv;
}

static void *batcher_main(void *arg)
{
    struct auth_audit *a = arg;
    struct rp_buf events;
    rp_buf_init(&events);
    pthread_mutex_lock(&a->mu);
    for (;;) {
        while (a->head == NULL && !a->stop)
            pthread_cond_wait(&a->cv, &a->mu);
        if (a->head == NULL)
            break;
        /* Take what has gathered: everything emitted while the last batch was in flight. */
        struct audit_item *batch = a->head, *last = a->head;
        uint32_t n = 1;
        size_t bytes = a->head->ev.len;
        while (last->next && n < STATE_MAX_AUDIT && bytes + last->next->ev.len < BATCH_MAX_BYTES) {
            last = last->next;
            bytes += last->ev.len;
            n++;
        }
        a->head = last->next;
        if (a->head == NULL)
            a->tail = NULL;
        last->next = NULL;
        a->n_queued -= n;
        bool stopping = a->stop;
        pthread_mutex_unlock(&a->mu);

        rp_buf_reset(&events);
        for (struct audit_item *it = batch; it; it = it->next)
            rp_buf_append(&events, it->ev.data, it->ev.len);
        uint64_t deadline = rp_mono_ms() + (stopping ? STOP_DEADLINE_MS : COMMIT_DEADLINE_MS);
        uint64_t term = 0;
        int rv = commit_batch(a, &events, n, deadline, &term);
        if (rv != 0)
            rp_error("audit", "%u audit events could not be written: %s", n, rp_errmsg());

        pthread_mutex_lock(&a->mu);
        a->st.batches++;
        if (rv == 0)
            a->st.events += n;
        else
            a->st.failed += n;
        pthread_mutex_unlock(&a->mu);
        while (batch) {
            struct audit_item *next = batch->next;
            struct audit_waiter *w = batch->w;
            if (w) {
                /* The waiter returns (and its stack goes) once it sees done: nothing
                 * of it is touched after this unlock. */
                pthread_mutex_lock(&w->mu);
                w->rv = rv;
                if (rv == 0 && batch->term != 0 && batch->term != term)
                    w->rv = RP_ENOTLEADER;
                w->done = true;
                pthread_cond_signal(&w->cv);
                pthread_mutex_unlock(&w->mu);
            }
            rp_buf_free(&batch->ev);
            free(batch);
            batch = next;
        }
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    rp_buf_free(&events);
    return NULL;
}

static int emit(struct auth_server *s, struct audit_event *e, enum audit_mode mode, uint64_t term)
{
    struct auth_audit *a = s->audit;
    if (a == NULL) {
        audit_event_free(e);
        return rp_err(RP_EUNAVAILABLE, "the audit log is not running");
    }
    struct audit_item *it = calloc(1, sizeof *it);
    int rv = it ? finish_event(s, e, &it->ev) : rp_err(RP_ENOMEM, "audit event");
    audit_event_free(e);
    if (rv != 0) {
        if (it)
            rp_buf_free(&it->ev);
        free(it);
        return rv;
    }
    struct audit_waiter w = {.done = false, .rv = 0};
    if (mode == AUDIT_WAIT) {
        pthread_mutex_init(&w.mu, NULL);
        pthread_cond_init(&w.cv, NULL);
    }
    pthread_mutex_lock(&a->mu);
    if (!a->started || a->stop) {
        rv = rp_err(RP_EUNAVAILABLE, "the audit log is not running");
    } else if (mode == AUDIT_ASYNC && a->n_queued >= AUDIT_MAX_QUEUED) {
        a->st.dropped++;
        rv = rp_err(RP_EBUSY, "audit queue full (%d events): event dropped", AUDIT_MAX_QUEUED);
    }
    if (rv != 0) {
        pthread_mutex_unlock(&a->mu);
        if (mode == AUDIT_WAIT) {
            pthread_cond_destroy(&w.cv);
            pthread_mutex_destroy(&w.mu);
        }
        rp_buf_free(&it->ev);
        free(it);
        return rv;
    }
    if (mode == AUDIT_WAIT) {
        it->w = &w;
        it->term = term;
    }
    if (a->tail)
        a->tail->next = it;
    else
        a->head = it;
    a->tail = it;
    a->n_queued++;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    if (mode != AUDIT_WAIT)
        return 0;
    pthread_mutex_lock(&w.mu);
    while (!w.done)
        pthread_cond_wait(&w.cv, &w.mu);
    int result = w.rv;
    pthread_mutex_unlock(&w.mu);
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (term != 0 && result == RP_ENOTLEADER)
        return rp_err(result, "leadership moved while the request was served: retry");
    if (result != 0)
        return rp_err(result, "audit event not written: %s", rp_strerror(result));
    return 0;
}

int audit_emit(struct auth_server *s, struct audit_event *e, enum audit_mode mode)
{
    return emit(s, e, mode, 0);
}

int audit_emit_in_term(struct auth_server *s, struct audit_event *e, uint64_t term)
{
    return emit(s, e, AUDIT_WAIT, term);
}

int audit_start(struct auth_server *s, uint64_t retention_ms)
{
    struct auth_audit *a = calloc(1, sizeof *a);
    if (a == NULL)
        return rp_err(RP_ENOMEM, "audit log");
    a->srv = s;
    a->retention_ms = retention_ms ? retention_ms : AUDIT_DEFAULT_RETENTION_MS;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    s->audit = a;
    if (pthread_create(&a->thread, NULL, batcher_main, a) != 0) {
        s->audit = NULL;
        free(a);
        return rp_err(RP_ENOMEM, "cannot start the audit batcher");
    }
    a->started = true;
    return 0;
}

void audit_stop(struct auth_server *s)
{
    struct auth_audit *a = s->audit;
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    a->stop = true;
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
    pthread_join(a->thread, NULL);
    pthread_mutex_lock(&a->mu);
    a->started = false; /* later emits fail at once */
    pthread_mutex_unlock(&a->mu);
}

void audit_free(struct auth_server *s)
{
    struct auth_audit *a = s->audit;
    if (a == NULL)
        return;
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    s->audit = NULL;
    free(a);
}

void audit_get_stats(struct auth_server *s, struct audit_stats *out)
{
    struct auth_audit *a = s->audit;
    memset(out, 0, sizeof *out);
    if (a == NULL)
        return;
    pthread_mutex_lock(&a->mu);
    *out = a->st;
    pthread_mutex_unlock(&a->mu);
}

int audit_trim_due(struct auth_server *s)
{
    struct auth_audit *a = s->audit;
    uint64_t now = rp_now_ms();
    if (a == NULL || !auth_is_leader(s) || now <= a->retention_ms)
        return 0;
    struct state_cmd c = {.op = "audit_trim", .before = now - a->retention_ms};
    struct rp_buf cmd;
    struct state_result sr;
    rp_buf_init(&cmd);
    int rv = state_cmd_encode(&c, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, &sr);
    if (rv == 0 && sr.n_changed > 0)
        rp_info("audit", "trimmed %u events older than the retention", sr.n_changed);
    rp_buf_free(&cmd);
    return rv;
}

/* ---- JSON output ------------------------------------------------------------ */

int audit_event_to_json(const msgpack_object *ev, struct rp_buf *out)
{
    if (ev->type != MSGPACK_OBJECT_MAP)
        return rp_json_from_mp(out, ev, 0);
    rp_buf_append_str(out, "{");
    for (uint32_t i = 0; i < ev->via.map.size; i++) {
        const msgpack_object_kv *kv = &ev->via.map.ptr[i];
        if (i)
            rp_buf_append_str(out, ",");
        rp_json_from_mp(out, &kv->key, 0);
        rp_buf_append_str(out, ":");
        if (rp_mp_str_eq(&kv->key, "time") && kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
            uint64_t ms = kv->val.via.u64;
            time_t secs = (time_t)(ms / 1000);
            struct tm tm;
            char ts[48];
            gmtime_r(&secs, &tm);
            size_t l = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
            snprintf(ts + l, sizeof ts - l, ".%03uZ", (unsigned)(ms % 1000));
            rp_json_str(out, ts, strlen(ts));
        } else {
            rp_json_from_mp(out, &kv->val, 0);
        }
    }
    return rp_buf_append_str(out, "}");
}

/* ---- API methods ------------------------------------------------------------- */

int auth_h_audit_append(struct auth_req *r, struct rp_buf *out)
{
    if (!r->from_peer)
        return rp_err(RP_EDENIED, "audit_append is for auth servers only");
    if (!auth_is_leader(r->srv))
        return rp_err(RP_ENOTLEADER, "not the leader");
    char rid[80];
    int rv = auth_arg_str(r->args, "rid", rid, sizeof rid, true);
    if (rv != 0)
        return rv;
    const msgpack_object *evs = rp_mp_get(r->args, "events");
    if (evs == NULL || evs->type != MSGPACK_OBJECT_ARRAY || evs->via.array.size == 0)
        return rp_err(RP_EINVAL, "argument 'events' (a non-empty array) is required");
    struct rp_buf packed;
    rp_buf_init(&packed);
    for (uint32_t i = 0; i < evs->via.array.size && rv == 0; i++)
        rv = rp_mp_pack_object(&packed, &evs->via.array.ptr[i]);
    if (rv == 0)
        rv = audit_append_answer(r->srv, rid, &packed, evs->via.array.size, out);
    rp_buf_free(&packed);
    return rv;
}

int audit_append_answer(struct auth_server *s, const char *rid, const struct rp_buf *events,
                        uint32_t n, struct rp_buf *out)
{
    uint64_t rev = 0;
    int rv = audit_append_events(s, rid, events->data, events->len, n, &rev);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_u64(&m, "rev", rev);
        rp_mp_map_end(&m);
    }
    return rv;
}

int audit_append_events(struct auth_server *s, const char *rid, const void *events, size_t len,
                        uint32_t n, uint64_t *rev)
{
    if (!auth_is_leader(s))
        return rp_err(RP_ENOTLEADER, "not the leader");
    struct rp_buf cmd;
    rp_buf_init(&cmd);
    struct state_cmd c = {
        .op = "audit", .rid = rid, .events = events, .events_len = len, .n_events = n};
    struct state_result sr;
    int rv = state_cmd_encode(&c, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, &sr);
    if (rv == 0 && sr.code != 0)
        rv = rp_err(sr.code, "%s", sr.message);
    if (rv == 0)
        *rev = sr.revision;
    rp_buf_free(&cmd);
    return rv;
}

struct events_ctx {
    struct rp_buf items;
    uint32_t n;
};

static int events_cb(void *arg, const void *ev, size_t len)
{
    struct events_ctx *ec = arg;
    if (ec->items.len + len > RP_FRAME_MAX - 65536)
        return rp_err(RP_ETOOBIG, "the events found exceed one answer: narrow the query or "
                                  "lower the limit");
    ec->n++;
    return rp_buf_append(&ec->items, ev, len);
}

int auth_h_events(struct auth_req *r, struct rp_buf *out)
{
    char type[72], user[256], sid[256];
    struct state_audit_query q = {.limit = EVENTS_DEFAULT_LIMIT};
    uint64_t limit = 0;
    int rv;
    if ((rv = auth_arg_str(r->args, "type", type, sizeof type, false)) != 0 ||
        (rv = auth_arg_str(r->args, "user", user, sizeof user, false)) != 0 ||
        (rv = auth_arg_str(r->args, "sid", sid, sizeof sid, false)) != 0)
        return rv;
    if (rp_mp_get_u64(r->args, "from", &q.from_ms) == RP_EINVAL ||
        rp_mp_get_u64(r->args, "to", &q.to_ms) == RP_EINVAL ||
        rp_mp_get_u64(r->args, "limit", &limit) == RP_EINVAL ||
        rp_mp_get_bool(r->args, "newest_first", &q.newest_first) == RP_EINVAL)
        return rp_err(RP_EINVAL, "from, to and limit must be non-negative integers (ms, count), "
                                 "newest_first a boolean");
    if (limit > EVENTS_MAX_LIMIT)
        return rp_err(RP_EINVAL, "limit %llu is above the maximum of %d", (unsigned long long)limit,
                      EVENTS_MAX_LIMIT);
    if (limit)
        q.limit = (unsigned)limit;
    q.type = type[0] ? type : NULL;
    q.user = user[0] ? user : NULL;
    q.sid = sid[0] ? sid : NULL;
    /* Routed by the method table (AUTH_ROUTE_READ) before this handler runs. */
    struct events_ctx ec = {.n = 0};
    uint64_t rev = 0;
    rp_buf_init(&ec.items);
    rv = state_audit_query(r->srv->state, &q, events_cb, &ec, &rev);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        msgpack_pack_array(rp_mp_map_key(&m, "items"), ec.n);
        rp_buf_append(out, ec.items.data, ec.items.len);
        rp_mp_map_u64(&m, "rev", rev);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&ec.items);
    return rv;
}
