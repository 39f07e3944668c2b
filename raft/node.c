/* raft/node.c: one Raft server on its own loop thread, behind a blocking API.
 *
 * libraft is not thread-safe: every raft_* call and every FSM callback runs on
 * the node's loop thread. Other threads queue a request (struct node_req) and
 * wake the loop with uv_async_send; the loop serves it and signals the caller's
 * condition variable. A request is reference counted (caller + loop), so a caller
 * that gives up at its deadline leaves nothing dangling: the loop finishes the
 * request later and the last reference frees it.
 *
 * raft_* functions are only called from our own libuv callbacks (the wake async,
 * the monitor prepare handle, timers), never from inside a libraft callback:
 * libraft fails pending requests while it is still clearing leader state, and
 * re-entering it there would act on a half-converted server.
 *
 * On 0.15 a new leader does not commit a no-op of its own, so after every
 * election the monitor issues a barrier and reports ready only once it applied.
 * Barrier callers are batched: those arriving while one is in flight wait for the
 * next one, which is issued after their call and so covers every write
 * acknowledged before it. */
#include "raft/rp_raft.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"

#define RECONCILE_INTERVAL_MS 300
#define RECONCILE_RETRY_MS 1000
#define CATCH_UP_SLACK 128 /* entries a standby may lag and still be promoted */
#define MAX_CATCH_UP_ROUNDS 100
#define MAX_CATCH_UP_ROUND_MS 50000
#define ADDR_LEN 64
/* Entries of grouped writes in flight at once. While this many are appended
 * and not yet applied, new writes gather into the next group instead of each
 * becoming an entry: the group grows by as many writes as arrive during one
 * commit. With nothing in flight a write goes at once, so a lone client waits
 * for nobody. Two keep the disk and the followers busy while the next gathers. */
#define GROUP_INFLIGHT_MAX 2
/* Large commands (above grouping.max_bytes) in flight at once while small writes
 * are about: a small write (or a read's barrier) waits behind this many large
 * entries at most. With neither for SMALL_QUIET_MS, a second large entry may follow the first, so
 * that its transfer and checksums overlap the first one's disk writes: 1 MiB puts
 * alone went from 50/s to 57/s; beside 16 clients of small puts, a second large
 * entry in flight had halved their rate (804/s to 440/s), hence the condition. */
#define LARGE_INFLIGHT_MAX 1
#define LARGE_INFLIGHT_QUIET 2
#define SMALL_QUIET_MS 100
/* libraft's open segments (its default is 8 MiB). Moving to a new segment cost an
 * entry of 1 MiB over 100 ms here (the first direct write into a freshly allocated
 * file waits on the previous segment's close and the file system's journal): at 32
 * MiB that happens four times less often, and 1 MiB puts went from 43/s to 57/s. */
#define SEGMENT_SIZE (32u << 20)

enum req_type { REQ_APPLY, REQ_BARRIER, REQ_ADD, REQ_REMOVE, REQ_TRANSFER, REQ_STATUS };

struct node_req {
    enum req_type type;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int refs;       /* caller + loop; under mu */
    bool done;      /* under mu */
    bool abandoned; /* caller stopped waiting; under mu */
    int rv;
    char errmsg[200];
    struct node_req *next; /* queue link, then waiter-list link (loop) */
    struct rp_node *node;  /* apply: set when submitted to libraft */
    bool large;            /* apply: in the large lane (see struct group_build) */

    /* apply */
    struct raft_apply apply;
    struct raft_buffer buf; /* owned until raft_apply takes it */
    size_t cmd_len;         /* bytes of the command in buf (before the padding) */
    uint64_t group_key;     /* 0: alone; else may share an entry with other keys */
    raft_term term;         /* the term the entry was appended in */
    void (*copy_result)(void *arg, void *fsm_result);
    void *copy_arg;
    /* add / remove / transfer */
    uint64_t id;
    char address[ADDR_LEN];
    /* status */
    struct rp_node_status status;
};

/* One group entry in flight and the apply requests it answers, in member order. */
struct apply_group {
    struct raft_apply apply;
    struct rp_node *n;
    unsigned n_members;
    struct node_req *members[];
};

/* The group being gathered while the loop drains its queue (loop thread). */
struct group_build {
    struct node_req **members; /* grouping.max_members slots */
    struct raft_buffer *cmds;  /* the members' commands, for encode (as many slots) */
    unsigned n;
    size_t bytes;
    /* Commands too large to group, in arrival order, appended one at a time: a
     * small write then waits behind one large entry at most, never a queue of them. */
    struct node_req *large, *large_tail;
    unsigned large_inflight;
    uint64_t small_seen_ms; /* when the last small write or barrier was queued */
};

/* One raft_barrier in flight and the callers it answers. */
struct barrier_batch {
    struct raft_barrier req;
    struct rp_node *n;
    struct node_req *waiters;
    raft_term term;
};

struct rp_node {
    /* Configuration, immutable after start. */
    uint64_t id;
    char *address;
    char *dir;
    unsigned election_timeout_ms;
    unsigned heartbeat_timeout_ms;
    unsigned snapshot_threshold;
    unsigned snapshot_trailing;
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
    bool bootstrap;
    struct raft_fsm *(*make_fsm)(void *arg, struct raft *r);
    void *make_fsm_arg;
    rp_raft_peer_check_fn peer_check;
    void *peer_check_arg;
    bool grouping_on;
    struct rp_node_grouping grouping;
    struct group_build gb;
    unsigned group_inflight; /* grouped writes' entries appended, not yet answered (loop) */

    pthread_t thread;
    uv_loop_t loop;
    uv_async_t wake;
    uv_prepare_t monitor;
    uv_timer_t tick;
    uv_timer_t stop_timer;
    struct raft raft;
    struct raft_io io;
    struct raft_uv_transport transport;
    struct raft_fsm *fsm;
    bool transport_inited, io_inited, raft_inited;

    /* Shared with callers, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t start_cond;
    bool start_done;
    int start_rv;
    char start_err[256];
    bool stopping; /* no more requests accepted */
    struct node_req *q_head, *q_tail;

    atomic_bool is_leader;
    _Atomic uint64_t ready_term; /* leader_term once ready, else 0 */
    _Atomic uint64_t leader_id;  /* as the monitor last saw it, 0 if unknown */

    /* Loop thread only. */
    bool closing;      /* stop in progress: new requests get RP_ECLOSED */
    bool raft_closing; /* raft_close issued */
    bool ready;
    raft_term leader_term; /* term we lead in, 0 when not leader */
    raft_id last_leader_seen;
    struct barrier_batch *barrier_inflight;
    struct node_req *barrier_next; /* waiting for the next barrier */
    struct raft_change change;
    bool change_busy;
    struct node_req *change_owner; /* NULL when the reconciler made the change */
    char change_desc[128];
    struct raft_transfer transfer;
    bool transfer_busy;
    struct node_req *transfer_owner;
    uint64_t reconcile_not_before;
    uint64_t standby_log_at;
};

/* ---- requests ------------------------------------------------------------ */

static struct node_req *req_new(enum req_type type)
{
    struct node_req *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->type = type;
    q->refs = 2;
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cond, NULL);
    return q;
}

static void req_free(struct node_req *q)
{
    if (q->buf.base != NULL)
        raft_free(q->buf.base);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cond);
    free(q);
}

/* Drops one reference; called with q->mu held, releases it. */
static void req_unref_locked(struct node_req *q)
{
    bool last = --q->refs == 0;
    pthread_mutex_unlock(&q->mu);
    if (last)
        req_free(q);
}

/* Loop side: answers @q (once) and drops the loop's reference. For a successful
 * apply, @result is handed to the caller's copy function first, unless the caller
 * has already given up (its @arg may be gone). */
static void req_finish(struct node_req *q, int rv, void *result, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void req_finish(struct node_req *q, int rv, void *result, const char *fmt, ...)
{
    pthread_mutex_lock(&q->mu);
    if (q->done) {
        pthread_mutex_unlock(&q->mu);
        return;
    }
    if (rv == 0 && q->type == REQ_APPLY && q->copy_result != NULL && !q->abandoned)
        q->copy_result(q->copy_arg, result);
    q->done = true;
    q->rv = rv;
    q->errmsg[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(q->errmsg, sizeof q->errmsg, fmt, ap);
        va_end(ap);
    }
    pthread_cond_signal(&q->cond);
    req_unref_locked(q);
}

static bool req_abandoned(struct node_req *q)
{
    pthread_mutex_lock(&q->mu);
    bool a = q->abandoned;
    pthread_mutex_unlock(&q->mu);
    return a;
}

/* Caller side: queues @q and waits for its answer until @timeout_ms (<= 0: no
 * deadline). Returns the loop's answer, or @timeout_rv if the deadline passed.
 * For REQ_STATUS, copies the status into @status_out. Consumes the caller's
 * reference. */
static int req_submit_wait(struct rp_node *n, struct node_req *q, int timeout_ms, int timeout_rv,
                           const char *what, struct rp_node_status *status_out, uint64_t *term_out)
{
    int rv;
    /* From the loop thread (an FSM callback, copy_result) this would wait on
     * itself forever. */
    bool on_loop = pthread_equal(pthread_self(), n->thread);
    pthread_mutex_lock(&n->mu);
    if (n->stopping || on_loop) {
        pthread_mutex_unlock(&n->mu);
        q->refs = 1; /* the loop never saw it */
        pthread_mutex_lock(&q->mu);
        req_unref_locked(q);
        if (on_loop)
            return rp_err(RP_EINVAL, "%s called from the raft loop thread", what);
        return rp_err(RP_ECLOSED, "raft node %llu is stopping", (unsigned long long)n->id);
    }
    q->next = NULL;
    if (n->q_tail != NULL)
        n->q_tail->next = q;
    else
        n->q_head = q;
    n->q_tail = q;
    /* Sent under mu: rp_node_stop sets stopping under mu before the loop may close
     * the handle, so the handle is open here. */
    uv_async_send(&n->wake);
    pthread_mutex_unlock(&n->mu);

    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    if (timeout_ms > 0) {
        deadline.tv_sec += timeout_ms / 1000;
        deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (deadline.tv_nsec >= 1000000000L) {
            deadline.tv_sec++;
            deadline.tv_nsec -= 1000000000L;
        }
    }
    pthread_mutex_lock(&q->mu);
    while (!q->done) {
        if (timeout_ms > 0) {
            /* clockwait names the clock per call: libfaketime (the Jepsen clock
             * nemesis) wraps pthread_cond_timedwait and, with the monotonic clock
             * left alone, makes a monotonic condvar time out at once. */
            int w = pthread_cond_clockwait(&q->cond, &q->mu, CLOCK_MONOTONIC, &deadline);
            if (w == ETIMEDOUT && !q->done) {
                q->abandoned = true;
                break;
            }
        } else {
            pthread_cond_wait(&q->cond, &q->mu);
        }
    }
    if (q->done) {
        rv = q->rv;
        if (rv != 0)
            rp_err(rv, "%s", q->errmsg);
        if (rv == 0 && status_out != NULL)
            *status_out = q->status;
        if (rv == 0 && term_out != NULL)
            *term_out = q->term;
    } else {
        rv = rp_err(timeout_rv, "%s: no answer within %d ms", what, timeout_ms);
    }
    req_unref_locked(q);
    return rv;
}

/* ---- helpers on the loop thread ---------------------------------------------- */

static int raft_rv_to_rp(int rv)
{
    switch (rv) {
    case 0:
        return 0;
    case RAFT_NOTLEADER:
        return RP_ENOTLEADER;
    case RAFT_LEADERSHIPLOST:
        return RP_EUNKNOWN;
    case RAFT_NOMEM:
        return RP_ENOMEM;
    case RAFT_CANTCHANGE:
    case RAFT_BUSY:
        return RP_EBUSY;
    case RAFT_DUPLICATEID:
    case RAFT_DUPLICATEADDRESS:
        return RP_EEXISTS;
    case RAFT_BADID:
    case RAFT_NOTFOUND:
        return RP_ENOTFOUND;
    case RAFT_BADROLE:
    case RAFT_INVALID:
    case RAFT_MALFORMED:
        return RP_EINVAL;
    case RAFT_SHUTDOWN:
    case RAFT_CANCELED:
        return RP_ECLOSED;
    case RAFT_NOSPACE:
        return RP_ENOSPC;
    case RAFT_NOCONNECTION:
        return RP_EUNAVAILABLE;
    default:
        return RP_EIO;
    }
}

static void fail_list(struct node_req **list, int rv, const char *msg)
{
    struct node_req *q = *list, *next;
    *list = NULL;
    for (; q != NULL; q = next) {
        next = q->next;
        req_finish(q, rv, NULL, "%s", msg);
    }
}

static bool has_other_voter(struct rp_node *n)
{
    const struct raft_configuration *c = &n->raft.configuration;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].id != n->id && c->servers[i].role == RAFT_VOTER)
            return true;
    }
    return false;
}

static const struct raft_server *find_server(struct rp_node *n, uint64_t id, unsigned *index)
{
    const struct raft_configuration *c = &n->raft.configuration;
    for (unsigned i = 0; i < c->n; i++) {
        if (c->servers[i].id == id) {
            if (index != NULL)
                *index = i;
            return &c->servers[i];
        }
    }
    return NULL;
}

static const char *role_name(int role)
{
    switch (role) {
    case RAFT_VOTER:
        return "voter";
    case RAFT_STANDBY:
        return "standby";
    case RAFT_SPARE:
        return "spare";
    default:
        return "?";
    }
}

/* ---- barriers ------------------------------------------------------------------ */

static void on_barrier_done(struct raft_barrier *req, int status)
{
    struct barrier_batch *b = req->data;
    struct rp_node *n = b->n;
    n->barrier_inflight = NULL;
    if (status == 0) {
        if (!n->ready && raft_state(&n->raft) == RAFT_LEADER && b->term == n->leader_term) {
            n->ready = true;
            atomic_store(&n->ready_term, (uint64_t)b->term);
            rp_info("raft", "node %llu: leader ready in term %llu (barrier applied at %llu)",
                    (unsigned long long)n->id, (unsigned long long)b->term,
                    (unsigned long long)req->index);
        }
        fail_list(&b->waiters, 0, "");
    } else if (n->closing) {
        fail_list(&b->waiters, RP_ECLOSED, "raft node is stopping");
    } else if (status == RAFT_LEADERSHIPLOST) {
        fail_list(&b->waiters, RP_ENOTLEADER, "leadership lost before the barrier applied");
    } else {
        char msg[160];
        snprintf(msg, sizeof msg, "barrier failed: %s", raft_strerror(status));
        fail_list(&b->waiters, RP_EUNKNOWN, msg);
    }
    free(b);
    /* The next barrier, if callers wait, is issued by the monitor on the next
     * loop iteration: never re-enter libraft from its own callback. */
}

static void maybe_start_barrier(struct rp_node *n)
{
    struct raft *r = &n->raft;
    if (n->barrier_inflight != NULL || n->closing)
        return;
    if (n->ready && n->barrier_next == NULL)
        return;
    struct barrier_batch *b = calloc(1, sizeof *b);
    if (b == NULL) {
        fail_list(&n->barrier_next, RP_ENOMEM, "out of memory");
        return;
    }
    b->n = n;
    b->term = r->current_term;
    b->req.data = b;
    b->waiters = n->barrier_next;
    n->barrier_next = NULL;
    int rv = raft_barrier(r, &b->req, on_barrier_done);
    if (rv != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "raft_barrier: %s", raft_strerror(rv));
        fail_list(&b->waiters, rv == RAFT_NOTLEADER ? RP_ENOTLEADER : RP_EIO, msg);
        free(b);
        return;
    }
    n->barrier_inflight = b;
}

/* ---- membership ----------------------------------------------------------------- */

static void on_change_done(struct raft_change *req, int status)
{
    struct rp_node *n = req->data;
    struct node_req *owner = n->change_owner;
    n->change_busy = false;
    n->change_owner = NULL;
    if (status == 0) {
        rp_info("raft", "node %llu: %s: done", (unsigned long long)n->id, n->change_desc);
    } else {
        rp_warn("raft", "node %llu: %s: failed: %s%s", (unsigned long long)n->id, n->change_desc,
                raft_strerror(status), owner == NULL ? " (will retry)" : "");
        n->reconcile_not_before = rp_mono_ms() + RECONCILE_RETRY_MS;
    }
    if (owner != NULL) {
        int rv = status == 0 ? 0 : n->closing ? RP_ECLOSED : raft_rv_to_rp(status);
        req_finish(owner, rv, NULL, "%s: %s", n->change_desc, raft_strerror(status));
    }
}

/* Promotes one member a step: spare -> standby at once (a standby is replicated
 * to but has no vote, so an unreachable one costs nothing), standby -> voter once
 * it has answered recently and is nearly caught up, so a dead server never
 * enters the quorum and no promotion blocks other changes for long. */
static void reconcile(struct rp_node *n)
{
    struct raft *r = &n->raft;
    if (n->closing || raft_state(r) != RAFT_LEADER || !n->ready || n->change_busy ||
        r->transfer != NULL || r->configuration_uncommitted_index != 0 ||
        r->leader_state.promotee_id != 0)
        return;
    uint64_t now = rp_mono_ms();
    if (now < n->reconcile_not_before)
        return;

    const struct raft_configuration *c = &r->configuration;
    const struct raft_server *target = NULL;
    int role = RAFT_VOTER;
    for (unsigned i = 0; i < c->n && target == NULL; i++) {
        if (c->servers[i].role == RAFT_SPARE) {
            target = &c->servers[i];
            role = RAFT_STANDBY;
        }
    }
    raft_index last = raft_last_index(r);
    for (unsigned i = 0; i < c->n && target == NULL; i++) {
        if (c->servers[i].role != RAFT_STANDBY || r->leader_state.progress == NULL)
            continue;
        const struct raft_progress *p = &r->leader_state.progress[i];
        if (p->recent_recv && p->match_index > 0 && p->match_index + CATCH_UP_SLACK >= last) {
            target = &c->servers[i];
            role = RAFT_VOTER;
        } else if (now >= n->standby_log_at) {
            n->standby_log_at = now + 10000;
            rp_info("raft",
                    "node %llu: standby %llu (%s) not promoted yet: match index %llu of %llu%s",
                    (unsigned long long)n->id, (unsigned long long)c->servers[i].id,
                    c->servers[i].address, (unsigned long long)p->match_index,
                    (unsigned long long)last, p->recent_recv ? "" : ", not heard from recently");
        }
    }
    if (target == NULL)
        return;

    snprintf(n->change_desc, sizeof n->change_desc, "promote %llu (%.64s) from %s to %s",
             (unsigned long long)target->id, target->address, role_name(target->role),
             role_name(role));
    n->change.data = n;
    int rv = raft_assign(r, &n->change, target->id, role, on_change_done);
    if (rv != 0) {
        rp_warn("raft", "node %llu: %s: %s (will retry)", (unsigned long long)n->id, n->change_desc,
                raft_errmsg(r));
        n->reconcile_not_before = now + RECONCILE_RETRY_MS;
        return;
    }
    n->change_busy = true;
    n->change_owner = NULL;
    rp_info("raft", "node %llu: %s", (unsigned long long)n->id, n->change_desc);
}

/* ---- request dispatch ---------------------------------------------------------- */

static void on_apply_done(struct raft_apply *req, int status, void *result)
{
    struct node_req *q = req->data;
    if (q->large)
        q->node->gb.large_inflight--;
    else if (q->group_key != 0)
        q->node->group_inflight--;
    if (status == 0)
        req_finish(q, 0, result, NULL);
    else
        req_finish(q, RP_EUNKNOWN, NULL, "entry submitted but its outcome is unknown: %s",
                   raft_strerror(status));
}

static void on_stop_timer(uv_timer_t *t);

static void on_transfer_done(struct raft_transfer *req)
{
    struct rp_node *n = req->data;
    struct node_req *owner = n->transfer_owner;
    raft_id leader_id = 0;
    const char *leader_addr = NULL;
    n->transfer_busy = false;
    n->transfer_owner = NULL;
    raft_leader(&n->raft, &leader_id, &leader_addr);
    bool moved = raft_state(&n->raft) != RAFT_LEADER;
    rp_info("raft", "node %llu: leadership transfer %s", (unsigned long long)n->id,
            moved ? "completed" : "did not complete in time");
    if (owner != NULL) {
        if (moved)
            req_finish(owner, 0, NULL, NULL);
        else
            req_finish(owner, RP_ETIMEDOUT, NULL, "leadership transfer did not complete");
    }
    if (n->closing && !n->raft_closing) {
        /* Continue the stop from a timer, outside libraft's callback. */
        uv_timer_start(&n->stop_timer, on_stop_timer, 0, 0);
    }
}

static void fill_status(struct rp_node *n, struct rp_node_status *s)
{
    struct raft *r = &n->raft;
    raft_id lid = 0;
    const char *laddr = NULL;
    memset(s, 0, sizeof *s);
    s->id = n->id;
    s->state = raft_state(r);
    s->ready = s->state == RAFT_LEADER && n->ready;
    s->term = r->current_term;
    raft_leader(r, &lid, &laddr);
    s->leader_id = lid;
    if (laddr != NULL)
        snprintf(s->leader_address, sizeof s->leader_address, "%s", laddr);
    s->commit_index = r->commit_index;
    s->last_applied = raft_last_applied(r);
    s->last_index = raft_last_index(r);
    s->snapshot_index = r->log.snapshot.last_index;
    for (unsigned i = 0; i < r->configuration.n && i < RP_MAX_MEMBERS; i++) {
        const struct raft_server *srv = &r->configuration.servers[i];
        struct rp_member *m = &s->members[i];
        m->id = srv->id;
        snprintf(m->address, sizeof m->address, "%s", srv->address);
        m->role = srv->role == RAFT_VOTER     ? RP_MEMBER_VOTER
                  : srv->role == RAFT_STANDBY ? RP_MEMBER_STANDBY
                                              : RP_MEMBER_SPARE;
        if (s->state == RAFT_LEADER && r->leader_state.progress != NULL)
            m->match_index =
                srv->id == n->id ? raft_last_index(r) : r->leader_state.progress[i].match_index;
        s->n_members++;
    }
}

static void dispatch_membership(struct rp_node *n, struct node_req *q)
{
    struct raft *r = &n->raft;
    int rv;
    if (raft_state(r) != RAFT_LEADER) {
        req_finish(q, RP_ENOTLEADER, NULL, "node %llu is not the leader",
                   (unsigned long long)n->id);
        return;
    }
    if (n->change_busy || r->configuration_uncommitted_index != 0 ||
        r->leader_state.promotee_id != 0) {
        req_finish(q, RP_EBUSY, NULL, "another membership change is in flight");
        return;
    }
    n->change.data = n;
    if (q->type == REQ_ADD) {
        for (unsigned i = 0; i < r->configuration.n; i++) {
            const struct raft_server *srv = &r->configuration.servers[i];
            if (srv->id == q->id || strcmp(srv->address, q->address) == 0) {
                req_finish(q, RP_EEXISTS, NULL, "member %llu (%s) already present",
                           (unsigned long long)srv->id, srv->address);
                return;
            }
        }
        snprintf(n->change_desc, sizeof n->change_desc, "add %llu (%s) as spare",
                 (unsigned long long)q->id, q->address);
        rv = raft_add(r, &n->change, q->id, q->address, on_change_done);
    } else {
        if (find_server(n, q->id, NULL) == NULL) {
            req_finish(q, RP_ENOTFOUND, NULL, "%llu is not a member", (unsigned long long)q->id);
            return;
        }
        snprintf(n->change_desc, sizeof n->change_desc, "remove %llu", (unsigned long long)q->id);
        rv = raft_remove(r, &n->change, q->id, on_change_done);
    }
    if (rv != 0) {
        req_finish(q, raft_rv_to_rp(rv), NULL, "%s: %s", n->change_desc, raft_errmsg(r));
        return;
    }
    n->change_busy = true;
    n->change_owner = q;
    rp_info("raft", "node %llu: %s", (unsigned long long)n->id, n->change_desc);
}

static void dispatch(struct rp_node *n, struct node_req *q)
{
    struct raft *r = &n->raft;
    int rv;

    if (n->closing) {
        req_finish(q, RP_ECLOSED, NULL, "raft node %llu is stopping", (unsigned long long)n->id);
        return;
    }
    /* Nobody waits: never submit a write whose caller has already given up. */
    if (req_abandoned(q)) {
        req_finish(q, RP_ETIMEDOUT, NULL, "abandoned");
        return;
    }
    switch (q->type) {
    case REQ_APPLY:
        q->apply.data = q;
        q->node = n;
        q->term = r->current_term; /* a leader appends in its current term */
        rv = raft_apply(r, &q->apply, &q->buf, 1, on_apply_done);
        if (rv != 0) {
            req_finish(q, raft_rv_to_rp(rv), NULL, "raft_apply: %s", raft_errmsg(r));
            return;
        }
        if (q->large)
            n->gb.large_inflight++;
        else if (q->group_key != 0)
            n->group_inflight++;
        q->buf.base = NULL; /* libraft owns it now */
        q->buf.len = 0;
        return;
    case REQ_BARRIER:
        if (raft_state(r) != RAFT_LEADER) {
            req_finish(q, RP_ENOTLEADER, NULL, "node %llu is not the leader",
                       (unsigned long long)n->id);
            return;
        }
        q->next = n->barrier_next;
        n->barrier_next = q;
        maybe_start_barrier(n);
        return;
    case REQ_ADD:
    case REQ_REMOVE:
        dispatch_membership(n, q);
        return;
    case REQ_TRANSFER:
        if (raft_state(r) != RAFT_LEADER) {
            req_finish(q, RP_ENOTLEADER, NULL, "node %llu is not the leader",
                       (unsigned long long)n->id);
            return;
        }
        if (n->transfer_busy) {
            req_finish(q, RP_EBUSY, NULL, "a leadership transfer is in flight");
            return;
        }
        n->transfer.data = n;
        rv = raft_transfer(r, &n->transfer, q->id, on_transfer_done);
        if (rv != 0) {
            req_finish(q, raft_rv_to_rp(rv), NULL, "raft_transfer: %s", raft_errmsg(r));
            return;
        }
        n->transfer_busy = true;
        n->transfer_owner = q;
        return;
    case REQ_STATUS:
        fill_status(n, &q->status);
        req_finish(q, 0, NULL, NULL);
        return;
    }
}

/* ---- group commit ---------------------------------------------------------------- */

static void on_group_done(struct raft_apply *req, int status, void *result)
{
    struct apply_group *g = req->data;
    struct rp_node *n = g->n;
    n->group_inflight--;
    for (unsigned i = 0; i < g->n_members; i++) {
        struct node_req *q = g->members[i];
        if (status == 0)
            req_finish(q, 0, n->grouping.member_result(n->grouping.arg, result, i), NULL);
        else
            req_finish(q, RP_EUNKNOWN, NULL, "entry submitted but its outcome is unknown: %s",
                       raft_strerror(status));
    }
    free(g);
}

/* Appends the group gathered so far as one entry (a group of one goes as the
 * plain command it is). */
static void group_flush(struct rp_node *n)
{
    struct group_build *gb = &n->gb;
    struct raft *r = &n->raft;
    unsigned count = 0;
    /* Callers that gave up are answered now, like dispatch does. */
    for (unsigned i = 0; i < gb->n; i++) {
        struct node_req *q = gb->members[i];
        if (n->closing)
            req_finish(q, RP_ECLOSED, NULL, "raft node %llu is stopping",
                       (unsigned long long)n->id);
        else if (req_abandoned(q))
            req_finish(q, RP_ETIMEDOUT, NULL, "abandoned");
        else
            gb->members[count++] = q;
    }
    gb->n = 0;
    gb->bytes = 0;
    if (count == 0)
        return;
    if (count == 1) {
        dispatch(n, gb->members[0]);
        return;
    }

    struct apply_group *g = malloc(sizeof *g + count * sizeof g->members[0]);
    struct raft_buffer *cmds = gb->cmds;
    struct raft_buffer entry = {NULL, 0};
    int rv = RP_ENOMEM;
    const char *why = "out of memory";
    if (g != NULL) {
        for (unsigned i = 0; i < count; i++) {
            cmds[i].base = gb->members[i]->buf.base;
            cmds[i].len = gb->members[i]->cmd_len;
        }
        rv = n->grouping.encode(n->grouping.arg, cmds, count, &entry);
        why = rv != 0 ? rp_errmsg() : NULL;
    }
    if (rv == 0) {
        g->apply.data = g;
        g->n = n;
        g->n_members = count;
        memcpy(g->members, gb->members, count * sizeof g->members[0]);
        rv = raft_apply(r, &g->apply, &entry, 1, on_group_done);
        if (rv != 0) {
            raft_free(entry.base);
            why = raft_errmsg(r);
            rv = raft_rv_to_rp(rv);
        }
    }
    if (rv != 0) {
        for (unsigned i = 0; i < count; i++)
            req_finish(gb->members[i], rv, NULL, "raft_apply of a group: %s", why);
        free(g);
        return;
    }
    n->group_inflight++;
    /* The entry holds copies now: each member's own buffer is no longer needed. */
    for (unsigned i = 0; i < count; i++) {
        struct node_req *q = gb->members[i];
        q->term = r->current_term;
        raft_free(q->buf.base);
        q->buf.base = NULL;
        q->buf.len = 0;
    }
}

/* Appends the next large command unless one is in flight. */
static void large_next(struct rp_node *n)
{
    struct group_build *gb = &n->gb;
    if (gb->large == NULL)
        return;
    bool quiet = gb->n == 0 && rp_mono_ms() - gb->small_seen_ms >= SMALL_QUIET_MS;
    unsigned max = quiet ? LARGE_INFLIGHT_QUIET : LARGE_INFLIGHT_MAX;
    while (gb->large_inflight < max && gb->large != NULL) {
        struct node_req *q = gb->large;
        gb->large = q->next;
        if (gb->large == NULL)
            gb->large_tail = NULL;
        dispatch(n, q); /* sets large_inflight once libraft took it */
    }
}

/* Adds @q to the group being gathered, first appending the group if @q does not
 * fit in it (its key already there, or no room). */
static void group_add(struct rp_node *n, struct node_req *q)
{
    struct group_build *gb = &n->gb;
    if (q->cmd_len > n->grouping.max_bytes) {
        q->large = true;
        q->next = NULL;
        if (gb->large_tail != NULL)
            gb->large_tail->next = q;
        else
            gb->large = q;
        gb->large_tail = q;
        return;
    }
    bool fits = gb->n < n->grouping.max_members && gb->bytes + q->cmd_len <= n->grouping.max_bytes;
    for (unsigned i = 0; fits && i < gb->n; i++)
        fits = gb->members[i]->group_key != q->group_key;
    if (!fits)
        group_flush(n);
    gb->members[gb->n++] = q;
    gb->bytes += q->cmd_len;
}

/* ---- stopping ------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    (void)h;
}

static void close_handles(struct rp_node *n)
{
    uv_close((uv_handle_t *)&n->wake, on_handle_closed);
    uv_close((uv_handle_t *)&n->monitor, on_handle_closed);
    uv_close((uv_handle_t *)&n->tick, on_handle_closed);
    uv_close((uv_handle_t *)&n->stop_timer, on_handle_closed);
}

/* Answers everything still outstanding once libraft can no longer call back. */
static void fail_outstanding(struct rp_node *n)
{
    struct node_req *q;
    if (n->change_owner != NULL) {
        q = n->change_owner;
        n->change_owner = NULL;
        req_finish(q, RP_ECLOSED, NULL, "raft node stopped");
    }
    if (n->transfer_owner != NULL) {
        q = n->transfer_owner;
        n->transfer_owner = NULL;
        req_finish(q, RP_ECLOSED, NULL, "raft node stopped");
    }
    if (n->barrier_inflight != NULL) {
        fail_list(&n->barrier_inflight->waiters, RP_ECLOSED, "raft node stopped");
        free(n->barrier_inflight);
        n->barrier_inflight = NULL;
    }
    fail_list(&n->barrier_next, RP_ECLOSED, "raft node stopped");
    for (unsigned i = 0; i < n->gb.n; i++)
        req_finish(n->gb.members[i], RP_ECLOSED, NULL, "raft node stopped");
    n->gb.n = 0;
    fail_list(&n->gb.large, RP_ECLOSED, "raft node stopped");
    n->gb.large_tail = NULL;
    n->gb.bytes = 0;
    pthread_mutex_lock(&n->mu);
    q = n->q_head;
    n->q_head = n->q_tail = NULL;
    pthread_mutex_unlock(&n->mu);
    fail_list(&q, RP_ECLOSED, "raft node stopped");
}

static void on_raft_closed(struct raft *r)
{
    struct rp_node *n = r->data;
    raft_uv_close(&n->io);
    rp_raft_tls_transport_close(&n->transport);
    fail_outstanding(n);
    close_handles(n);
    rp_info("raft", "node %llu: stopped", (unsigned long long)n->id);
}

static void begin_close(struct rp_node *n)
{
    if (n->raft_closing)
        return;
    n->raft_closing = true;
    n->closing = true;
    uv_timer_stop(&n->tick);
    uv_timer_stop(&n->stop_timer);
    uv_prepare_stop(&n->monitor);
    atomic_store(&n->is_leader, false);
    fail_list(&n->barrier_next, RP_ECLOSED, "raft node is stopping");
    raft_close(&n->raft, on_raft_closed);
}

static void on_stop_timer(uv_timer_t *t)
{
    struct rp_node *n = t->data;
    if (n->transfer_busy)
        rp_warn("raft", "node %llu: leadership transfer still pending at stop; closing anyway",
                (unsigned long long)n->id);
    begin_close(n);
}

/* The voter to hand leadership to at stop: one we heard from recently and that
 * holds our whole log, else the best of the rest; 0 lets libraft choose. Picking
 * a peer that is down would only delay the stop by an election timeout. */
static raft_id pick_transferee(struct rp_node *n)
{
    struct raft *r = &n->raft;
    const struct raft_configuration *c = &r->configuration;
    raft_index last = raft_last_index(r);
    raft_id best = 0;
    int best_score = -1;
    if (r->leader_state.progress == NULL)
        return 0;
    for (unsigned i = 0; i < c->n; i++) {
        const struct raft_progress *p = &r->leader_state.progress[i];
        if (c->servers[i].id == n->id || c->servers[i].role != RAFT_VOTER)
            continue;
        int score = (p->recent_recv ? 2 : 0) + (p->match_index == last ? 1 : 0);
        if (score > best_score) {
            best_score = score;
            best = c->servers[i].id;
        }
    }
    return best;
}

static void start_stop(struct rp_node *n)
{
    if (n->closing)
        return;
    n->closing = true;
    atomic_store(&n->ready_term, 0);
    fail_list(&n->barrier_next, RP_ECLOSED, "raft node is stopping");
    if (raft_state(&n->raft) == RAFT_LEADER && has_other_voter(n)) {
        if (!n->transfer_busy) {
            raft_id to = pick_transferee(n);
            n->transfer.data = n;
            int rv = raft_transfer(&n->raft, &n->transfer, to, on_transfer_done);
            if (rv == 0) {
                n->transfer_busy = true;
                rp_info("raft", "node %llu: stopping: transferring leadership to %llu",
                        (unsigned long long)n->id, (unsigned long long)n->transfer.id);
            } else {
                rp_warn("raft", "node %llu: stopping: cannot transfer leadership: %s",
                        (unsigned long long)n->id, raft_errmsg(&n->raft));
            }
        }
        if (n->transfer_busy) {
            /* Bounded: libraft gives up after an election timeout itself. */
            uv_timer_start(&n->stop_timer, on_stop_timer, 2 * n->election_timeout_ms + 500, 0);
            return;
        }
    }
    begin_close(n);
}

/* ---- loop callbacks ---------------------------------------------------------------- */

static void on_wake(uv_async_t *h)
{
    struct rp_node *n = h->data;
    struct node_req *q, *next;
    bool stop;
    pthread_mutex_lock(&n->mu);
    q = n->q_head;
    n->q_head = n->q_tail = NULL;
    stop = n->stopping;
    pthread_mutex_unlock(&n->mu);
    for (; q != NULL; q = next) {
        next = q->next;
        /* Small writes and reads' barriers keep large entries to one in flight. */
        if (q->type == REQ_BARRIER ||
            (q->type == REQ_APPLY && (!n->grouping_on || q->cmd_len <= n->grouping.max_bytes)))
            n->gb.small_seen_ms = rp_mono_ms();
        if (q->type == REQ_APPLY && q->group_key != 0 && n->grouping_on)
            group_add(n, q);
        else
            dispatch(n, q);
    }
    /* Otherwise the monitor appends the group once an entry in flight is done. */
    if (n->group_inflight < GROUP_INFLIGHT_MAX)
        group_flush(n);
    /* Large commands after the small ones queued with them. */
    large_next(n);
    if (stop)
        start_stop(n);
}

static void on_monitor(uv_prepare_t *h)
{
    struct rp_node *n = h->data;
    struct raft *r = &n->raft;
    if (n->raft_closing)
        return;
    if (n->gb.n > 0 && n->group_inflight < GROUP_INFLIGHT_MAX)
        group_flush(n);
    large_next(n);
    int state = raft_state(r);
    atomic_store(&n->is_leader, state == RAFT_LEADER);
    if (state == RAFT_LEADER) {
        atomic_store(&n->leader_id, n->id);
        if (n->leader_term != r->current_term) {
            n->leader_term = r->current_term;
            n->ready = false;
            atomic_store(&n->ready_term, 0);
            rp_info("raft", "node %llu: became leader in term %llu", (unsigned long long)n->id,
                    (unsigned long long)r->current_term);
        }
        if (r->transfer == NULL)
            maybe_start_barrier(n);
        return;
    }
    if (n->leader_term != 0) {
        rp_info("raft", "node %llu: no longer leader (now %s, term %llu)",
                (unsigned long long)n->id, rp_raft_state_name(state),
                (unsigned long long)r->current_term);
        n->leader_term = 0;
    }
    n->ready = false;
    atomic_store(&n->ready_term, 0);
    if (n->barrier_next != NULL)
        fail_list(&n->barrier_next, RP_ENOTLEADER, "leadership lost before the barrier was issued");
    raft_id lid = 0;
    const char *laddr = NULL;
    raft_leader(r, &lid, &laddr);
    atomic_store(&n->leader_id, (uint64_t)lid);
    if (lid != n->last_leader_seen) {
        n->last_leader_seen = lid;
        if (lid != 0)
            rp_info("raft", "node %llu: following leader %llu (%s) in term %llu",
                    (unsigned long long)n->id, (unsigned long long)lid, laddr ? laddr : "?",
                    (unsigned long long)r->current_term);
    }
}

static void on_tick(uv_timer_t *t)
{
    reconcile(t->data);
}

/* ---- start ---------------------------------------------------------------------- */

static void start_failed(struct rp_node *n, int rv, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void start_failed(struct rp_node *n, int rv, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n->start_err, sizeof n->start_err, fmt, ap);
    va_end(ap);
    n->start_rv = rv;
}

static void walk_close(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Everything from the loop to raft_start, on the loop thread. On failure,
 * records the error and undoes what was done (running the loop to let handles
 * close). */
static int node_open(struct rp_node *n)
{
    struct raft *r = &n->raft;
    int rv;

    rv = uv_loop_init(&n->loop);
    if (rv != 0) {
        start_failed(n, RP_EIO, "uv_loop_init: %s", uv_strerror(rv));
        return -1;
    }
    uv_async_init(&n->loop, &n->wake, on_wake);
    n->wake.data = n;
    uv_prepare_init(&n->loop, &n->monitor);
    n->monitor.data = n;
    uv_timer_init(&n->loop, &n->tick);
    n->tick.data = n;
    uv_timer_init(&n->loop, &n->stop_timer);
    n->stop_timer.data = n;

    rv = rp_raft_tls_transport_init(&n->transport, &n->loop, n->server_ctx, n->client_ctx);
    if (rv != 0) {
        start_failed(n, rv, "raft transport: %s", rp_errmsg());
        goto err_loop;
    }
    n->transport_inited = true;
    if (n->peer_check != NULL)
        rp_raft_tls_transport_set_peer_check(&n->transport, n->peer_check, n->peer_check_arg);

    rv = rp_raft_repair_open_segments(n->dir);
    if (rv != 0) {
        start_failed(n, rv, "checking the open segments: %s", rp_errmsg());
        goto err_loop;
    }
    rv = raft_uv_init(&n->io, &n->loop, n->dir, &n->transport);
    if (rv == 0)
        raft_uv_set_segment_size(&n->io, SEGMENT_SIZE);
    if (rv != 0) {
        start_failed(n, RP_EIO, "raft_uv_init(%s): %s", n->dir, n->io.errmsg);
        goto err_loop;
    }
    n->io_inited = true;

    n->fsm = n->make_fsm(n->make_fsm_arg, r);
    if (n->fsm == NULL) {
        start_failed(n, RP_EINVAL, "make_fsm returned no state machine");
        goto err_loop;
    }
    rv = raft_init(r, &n->io, n->fsm, n->id, n->address);
    if (rv != 0) {
        /* raft_errmsg says why (e.g. which FSM feature the I/O lacks); the code alone
         * often reads "unknown error". */
        const char *why = raft_errmsg(r);
        start_failed(n, raft_rv_to_rp(rv), "raft_init: %s",
                     why && why[0] ? why : raft_strerror(rv));
        goto err_loop;
    }
    n->raft_inited = true;
    r->data = n;

    raft_set_election_timeout(r, n->election_timeout_ms);
    raft_set_heartbeat_timeout(r, n->heartbeat_timeout_ms);
    raft_set_snapshot_threshold(r, n->snapshot_threshold);
    raft_set_snapshot_trailing(r, n->snapshot_trailing);
    raft_set_pre_vote(r, true);
    /* A follower busy with its own snapshot refuses an InstallSnapshot (RAFT_BUSY);
     * libraft's leader then waits this long before sending it again. The default 30 s
     * stalls catch-up for that long; a few election timeouts still leave room for a
     * large snapshot to travel on a LAN. */
    unsigned snap_timeout = 5 * n->election_timeout_ms;
    raft_set_install_snapshot_timeout(r, snap_timeout < 3000 ? 3000 : snap_timeout);
    raft_set_max_catch_up_rounds(r, MAX_CATCH_UP_ROUNDS);
    raft_set_max_catch_up_round_duration(r, MAX_CATCH_UP_ROUND_MS);

    if (n->bootstrap) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        rv = raft_configuration_add(&conf, n->id, n->address, RAFT_VOTER);
        if (rv == 0)
            rv = raft_bootstrap(r, &conf);
        raft_configuration_close(&conf);
        if (rv == RAFT_CANTBOOTSTRAP) {
            rp_info("raft", "node %llu: data dir already initialised, not bootstrapping",
                    (unsigned long long)n->id);
        } else if (rv != 0) {
            start_failed(n, raft_rv_to_rp(rv), "raft_bootstrap: %s", raft_errmsg(r));
            goto err_raft;
        } else {
            rp_info("raft", "node %llu: bootstrapped a cluster of one at %s",
                    (unsigned long long)n->id, n->address);
        }
    }

    rv = raft_start(r);
    if (rv != 0) {
        /* libraft does not always carry the I/O layer's reason up: look there. */
        const char *why = raft_errmsg(r);
        if (why == NULL || why[0] == '\0')
            why = n->io.errmsg;
        if (why == NULL || why[0] == '\0')
            why = n->transport.errmsg;
        start_failed(n, raft_rv_to_rp(rv), "raft_start: %s", why[0] ? why : raft_strerror(rv));
        goto err_raft;
    }
    uv_prepare_start(&n->monitor, on_monitor);
    uv_timer_start(&n->tick, on_tick, RECONCILE_INTERVAL_MS, RECONCILE_INTERVAL_MS);
    rp_info("raft", "node %llu: started at %s (data %s)", (unsigned long long)n->id, n->address,
            n->dir);
    return 0;

err_raft:
    n->closing = true;
    n->raft_closing = true;
    raft_close(r, on_raft_closed);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    uv_loop_close(&n->loop);
    return -1;

err_loop:
    if (n->io_inited)
        raft_uv_close(&n->io);
    if (n->transport_inited)
        rp_raft_tls_transport_close(&n->transport);
    uv_walk(&n->loop, walk_close, NULL);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    uv_loop_close(&n->loop);
    return -1;
}

static void *loop_main(void *arg)
{
    struct rp_node *n = arg;
    sigset_t set;
    /* Writes to a peer that went away fail with EPIPE; never kill the process. */
    sigemptyset(&set);
    sigaddset(&set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    int rv = node_open(n);
    pthread_mutex_lock(&n->mu);
    n->start_done = true;
    if (rv == 0)
        n->start_rv = 0;
    pthread_cond_broadcast(&n->start_cond);
    pthread_mutex_unlock(&n->mu);
    if (rv != 0)
        return NULL;

    uv_run(&n->loop, UV_RUN_DEFAULT);
    rv = uv_loop_close(&n->loop);
    if (rv != 0)
        rp_warn("raft", "node %llu: loop closed with handles open: %s", (unsigned long long)n->id,
                uv_strerror(rv));
    return NULL;
}

static void node_free(struct rp_node *n)
{
    if (n->server_ctx != NULL)
        SSL_CTX_free(n->server_ctx);
    if (n->client_ctx != NULL)
        SSL_CTX_free(n->client_ctx);
    free(n->address);
    free(n->dir);
    free(n->gb.members);
    free(n->gb.cmds);
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->start_cond);
    free(n);
}

int rp_node_start(struct rp_node **out, const struct rp_node_config *cfg)
{
    struct rp_node *n;
    struct stat st;
    int rv;

    *out = NULL;
    if (cfg->id == 0)
        return rp_err(RP_EINVAL, "raft node id must be > 0");
    if (cfg->address == NULL || strlen(cfg->address) >= ADDR_LEN ||
        rp_check_hostport(cfg->address) != 0)
        return rp_err(RP_EINVAL, "raft address \"%s\" must be host:port, under %d bytes",
                      cfg->address ? cfg->address : "", ADDR_LEN);
    if (cfg->dir == NULL || stat(cfg->dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return rp_err(RP_EINVAL, "raft data dir \"%s\" does not exist", cfg->dir ? cfg->dir : "");
    if (cfg->server_ctx == NULL || cfg->client_ctx == NULL || cfg->make_fsm == NULL)
        return rp_err(RP_EINVAL, "raft node needs TLS contexts and make_fsm");
    if (cfg->heartbeat_timeout_ms == 0 || cfg->election_timeout_ms <= cfg->heartbeat_timeout_ms)
        return rp_err(RP_EINVAL, "raft election timeout (%u ms) must exceed heartbeat (%u ms)",
                      cfg->election_timeout_ms, cfg->heartbeat_timeout_ms);
    if (cfg->snapshot_threshold == 0 || cfg->snapshot_trailing < cfg->snapshot_threshold)
        return rp_err(RP_EINVAL,
                      "raft snapshot trailing (%u) must be >= threshold (%u), threshold > 0",
                      cfg->snapshot_trailing, cfg->snapshot_threshold);

    if (cfg->grouping != NULL &&
        (cfg->grouping->encode == NULL || cfg->grouping->member_result == NULL ||
         cfg->grouping->max_members < 2 || cfg->grouping->max_bytes == 0))
        return rp_err(RP_EINVAL, "raft grouping needs encode, member_result, max_members >= 2 "
                                 "and max_bytes > 0");

    n = calloc(1, sizeof *n);
    if (n == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    if (cfg->grouping != NULL) {
        n->grouping_on = true;
        n->grouping = *cfg->grouping;
        n->gb.members = calloc(n->grouping.max_members, sizeof *n->gb.members);
        n->gb.cmds = calloc(n->grouping.max_members, sizeof *n->gb.cmds);
        if (n->gb.members == NULL || n->gb.cmds == NULL) {
            free(n->gb.members);
            free(n->gb.cmds);
            free(n);
            return rp_err(RP_ENOMEM, "out of memory");
        }
    }
    n->id = cfg->id;
    n->address = strdup(cfg->address);
    n->dir = strdup(cfg->dir);
    n->election_timeout_ms = cfg->election_timeout_ms;
    n->heartbeat_timeout_ms = cfg->heartbeat_timeout_ms;
    n->snapshot_threshold = cfg->snapshot_threshold;
    n->snapshot_trailing = cfg->snapshot_trailing;
    n->bootstrap = cfg->bootstrap;
    n->make_fsm = cfg->make_fsm;
    n->make_fsm_arg = cfg->make_fsm_arg;
    n->peer_check = cfg->peer_check;
    n->peer_check_arg = cfg->peer_check_arg;
    SSL_CTX_up_ref(cfg->server_ctx);
    n->server_ctx = cfg->server_ctx;
    SSL_CTX_up_ref(cfg->client_ctx);
    n->client_ctx = cfg->client_ctx;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->start_cond, NULL);
    atomic_init(&n->is_leader, false);
    if (n->address == NULL || n->dir == NULL) {
        node_free(n);
        return rp_err(RP_ENOMEM, "out of memory");
    }

    rv = pthread_create(&n->thread, NULL, loop_main, n);
    if (rv != 0) {
        node_free(n);
        return rp_err(RP_ENOMEM, "pthread_create: %s", strerror(rv));
    }
    pthread_mutex_lock(&n->mu);
    while (!n->start_done)
        pthread_cond_wait(&n->start_cond, &n->mu);
    rv = n->start_rv;
    pthread_mutex_unlock(&n->mu);
    if (rv != 0) {
        pthread_join(n->thread, NULL);
        rv = rp_err(rv, "raft node %llu: %s", (unsigned long long)cfg->id, n->start_err);
        node_free(n);
        return rv;
    }
    *out = n;
    return 0;
}

void rp_node_stop(struct rp_node *n)
{
    if (n == NULL)
        return;
    pthread_mutex_lock(&n->mu);
    n->stopping = true;
    uv_async_send(&n->wake);
    pthread_mutex_unlock(&n->mu);
    pthread_join(n->thread, NULL);
    node_free(n);
}

/* ---- blocking API ------------------------------------------------------------------ */

int rp_node_apply(struct rp_node *n, const void *buf, size_t len, int timeout_ms,
                  void (*copy_result)(void *arg, void *fsm_result), void *arg)
{
    return rp_node_apply_term(n, buf, len, timeout_ms, copy_result, arg, NULL);
}

int rp_node_apply_term(struct rp_node *n, const void *buf, size_t len, int timeout_ms,
                       void (*copy_result)(void *arg, void *fsm_result), void *arg,
                       uint64_t *term_out)
{
    return rp_node_apply_grouped(n, buf, len, 0, timeout_ms, copy_result, arg, term_out);
}

int rp_node_apply_grouped(struct rp_node *n, const void *buf, size_t len, uint64_t group_key,
                          int timeout_ms, void (*copy_result)(void *arg, void *fsm_result),
                          void *arg, uint64_t *term_out)
{
    struct node_req *q = req_new(REQ_APPLY);
    if (q == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    /* libraft 0.15's segment loader cannot read back entries whose length is not a
     * multiple of 8 (canonical/raft#180, #304: "short read" at raft_start), so every
     * entry is padded with zero bytes to the next multiple of 8 (at least 8). */
    size_t padded = len == 0 ? 8 : (len + 7) / 8 * 8;
    q->buf.base = raft_malloc(padded);
    if (q->buf.base == NULL) {
        q->refs = 1;
        pthread_mutex_lock(&q->mu);
        req_unref_locked(q);
        return rp_err(RP_ENOMEM, "out of memory for a %zu byte entry", len);
    }
    if (len > 0)
        memcpy(q->buf.base, buf, len);
    memset((char *)q->buf.base + len, 0, padded - len);
    q->buf.len = padded;
    q->cmd_len = len;
    q->group_key = group_key;
    q->copy_result = copy_result;
    q->copy_arg = arg;
    return req_submit_wait(n, q, timeout_ms, RP_EUNKNOWN, "apply", NULL, term_out);
}

int rp_node_barrier(struct rp_node *n, int timeout_ms)
{
    struct node_req *q = req_new(REQ_BARRIER);
    if (q == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    return req_submit_wait(n, q, timeout_ms, RP_ETIMEDOUT, "barrier", NULL, NULL);
}

static int membership_call(struct rp_node *n, enum req_type type, uint64_t id, const char *address,
                           int timeout_ms, const char *what)
{
    struct node_req *q = req_new(type);
    if (q == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    q->id = id;
    if (address != NULL)
        snprintf(q->address, sizeof q->address, "%s", address);
    /* A change that timed out may still be applied: the outcome is unknown. */
    return req_submit_wait(n, q, timeout_ms, type == REQ_TRANSFER ? RP_ETIMEDOUT : RP_EUNKNOWN,
                           what, NULL, NULL);
}

int rp_node_add(struct rp_node *n, uint64_t id, const char *address, int timeout_ms)
{
    if (id == 0)
        return rp_err(RP_EINVAL, "raft id must be > 0");
    if (address == NULL || strlen(address) >= ADDR_LEN || rp_check_hostport(address) != 0)
        return rp_err(RP_EINVAL, "raft address \"%s\" must be host:port, under %d bytes",
                      address ? address : "", ADDR_LEN);
    return membership_call(n, REQ_ADD, id, address, timeout_ms, "add member");
}

int rp_node_remove(struct rp_node *n, uint64_t id, int timeout_ms)
{
    if (id == 0)
        return rp_err(RP_EINVAL, "raft id must be > 0");
    return membership_call(n, REQ_REMOVE, id, NULL, timeout_ms, "remove member");
}

int rp_node_transfer(struct rp_node *n, uint64_t id, int timeout_ms)
{
    return membership_call(n, REQ_TRANSFER, id, NULL, timeout_ms, "transfer leadership");
}

int rp_node_status(struct rp_node *n, struct rp_node_status *out)
{
    struct node_req *q = req_new(REQ_STATUS);
    if (q == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    return req_submit_wait(n, q, 5000, RP_ETIMEDOUT, "status", out, NULL);
}

uint64_t rp_node_leader_id(struct rp_node *n)
{
    return atomic_load(&n->leader_id);
}

uint64_t rp_node_read_term(struct rp_node *n)
{
    return atomic_load(&n->ready_term);
}

bool rp_node_is_leader(struct rp_node *n)
{
    return atomic_load(&n->is_leader);
}

void rp_node_transport_stats(struct rp_node *n, struct rp_raft_transport_stats *out)
{
    rp_raft_tls_transport_stats(&n->transport, out);
}
