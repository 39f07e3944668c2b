/* tests/test_raft_node.c: rp_node's blocking API over real TLS on 127.0.0.1:
 * bootstrap and restart, leader-only operations, barrier batching, outcomes
 * without quorum, membership errors, and catch-up by snapshot. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"
#include "raft/rp_raft.h"
#include "tests/lib/raft_helpers.h"

static struct rt_cluster C;

static void teardown(void)
{
    if (C.root != NULL)
        rt_cluster_destroy(&C);
}

static struct rp_node_status status_of(unsigned i)
{
    struct rp_node_status st;
    cr_assert_eq(rp_node_status(C.nodes[i].node, &st), 0, "status: %s", rp_errmsg());
    return st;
}

static const struct rp_member *member(const struct rp_node_status *st, uint64_t id)
{
    for (unsigned i = 0; i < st->n_members; i++) {
        if (st->members[i].id == id)
            return &st->members[i];
    }
    return NULL;
}

/* Starts node 1 (bootstrap) and nodes 2..n joined as voters; returns the leader. */
static unsigned start_cluster(unsigned n)
{
    cr_assert_eq(rt_node_start(&C, 0, true), 0, "start node 1: %s", rp_errmsg());
    int l = rt_wait_leader(&C, 10000);
    cr_assert_eq(l, 0, "node 1 did not become a ready leader");
    for (unsigned i = 1; i < n; i++) {
        cr_assert_eq(rt_node_start(&C, i, false), 0, "start node %u: %s", i + 1, rp_errmsg());
        int rv = rt_add_voter(&C, 0, i, 20000);
        cr_assert_eq(rv, 0, "node %u did not become a voter: %s (%s)", i + 1, rp_strerror(rv),
                     rp_errmsg());
    }
    return 0;
}

Test(raft_node, single_node_bootstraps_applies_and_replays_after_restart, .fini = teardown,
     .timeout = 60)
{
    rt_cluster_init(&C, 1, "single");
    start_cluster(1);

    struct rp_node_status st = status_of(0);
    cr_assert_eq(st.state, RAFT_LEADER);
    cr_assert(st.ready);
    cr_assert_eq(st.leader_id, 1);
    cr_assert_str_eq(st.leader_address, C.nodes[0].addr);
    cr_assert_eq(st.n_members, 1);
    cr_assert_eq(st.members[0].role, RP_MEMBER_VOTER);
    cr_assert_str_eq(rp_raft_state_name(st.state), "leader");
    cr_assert_str_eq(rp_member_role_name(st.members[0].role), "voter");
    cr_assert(rp_node_is_leader(C.nodes[0].node));

    for (uint64_t i = 1; i <= 10; i++) {
        uint64_t result = 0;
        cr_assert_eq(rt_apply_u64(C.nodes[0].node, i, 5000, &result), 0, "%s", rp_errmsg());
        cr_assert_eq(result, i, "the FSM result is copied back on the loop thread");
    }
    cr_assert_eq(rp_node_barrier(C.nodes[0].node, 5000), 0, "%s", rp_errmsg());
    st = status_of(0);
    cr_assert_geq(st.last_applied, 11, "bootstrap config + 10 commands applied");
    cr_assert_eq(st.commit_index, st.last_index);

    /* A restart with bootstrap still set is fine: the dir is not pristine. */
    rt_node_stop(&C, 0);
    cr_assert_eq(rt_node_start(&C, 0, true), 0, "restart: %s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 0);
    cr_assert(rt_wait_count(&C, 10, 5000), "the log is replayed into the FSM after restart");
    uint64_t sum;
    rt_fsm_read(&C.nodes[0].fsm, NULL, &sum);
    cr_assert_eq(sum, 55);
}

Test(raft_node, followers_refuse_leader_operations_with_not_leader, .fini = teardown, .timeout = 60)
{
    rt_cluster_init(&C, 2, "follower");
    start_cluster(2);
    struct rp_node *leader = C.nodes[0].node, *follower = C.nodes[1].node;

    cr_assert_eq(rt_apply_u64(follower, 1, 2000, NULL), RP_ENOTLEADER);
    cr_assert_eq(rp_node_barrier(follower, 2000), RP_ENOTLEADER);
    cr_assert_eq(rp_node_add(follower, 7, "127.0.0.1:1", 2000), RP_ENOTLEADER);
    cr_assert_eq(rp_node_remove(follower, 1, 2000), RP_ENOTLEADER);
    cr_assert_eq(rp_node_transfer(follower, 0, 2000), RP_ENOTLEADER);
    cr_assert_not(rp_node_is_leader(follower));

    cr_assert_eq(rt_apply_u64(leader, 5, 5000, NULL), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_node_barrier(leader, 5000), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 1, 5000));

    /* The follower knows who leads; the leader sees the follower's progress. */
    struct rp_node_status fs = status_of(1), ls = status_of(0);
    cr_assert_eq(fs.state, RAFT_FOLLOWER);
    cr_assert_not(fs.ready);
    cr_assert_eq(fs.leader_id, 1);
    cr_assert_str_eq(fs.leader_address, C.nodes[0].addr);
    const struct rp_member *m = member(&ls, 2);
    cr_assert_not_null(m);
    cr_assert_eq(m->role, RP_MEMBER_VOTER);
    cr_assert_gt(m->match_index, 0);

    /* Hand leadership over explicitly; the old leader then refuses writes. */
    cr_assert_eq(rp_node_transfer(leader, 2, 10000), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 1);
    cr_assert_eq(rt_apply_u64(leader, 1, 2000, NULL), RP_ENOTLEADER);
    cr_assert_eq(rt_apply_u64(follower, 7, 5000, NULL), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 2, 5000));
}

static uint64_t apply_term_of(struct rp_node *n, uint64_t v)
{
    uint8_t b[8];
    uint64_t result = 0, term = 0;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (56 - 8 * i));
    cr_assert_eq(rp_node_apply_term(n, b, sizeof b, 5000, rt_copy_u64, &result, &term), 0, "%s",
                 rp_errmsg());
    return term;
}

/* Polls until @n's read term is @want (the monitor updates it once per loop turn). */
static bool read_term_becomes(struct rp_node *n, uint64_t want, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 10) {
        if (rp_node_read_term(n) == want)
            return true;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return rp_node_read_term(n) == want;
}

/* Reads without a barrier rest on two facts (raft/rp_raft.h): the read term is the
 * term of a ready leadership and 0 otherwise, and a write reports the term it was
 * appended in, so a caller can tell whether its read and its write shared one
 * leadership. */
Test(raft_node, read_term_is_the_ready_leaders_term_and_writes_report_theirs, .fini = teardown,
     .timeout = 60)
{
    rt_cluster_init(&C, 2, "readterm");
    start_cluster(2);
    struct rp_node *a = C.nodes[0].node, *b = C.nodes[1].node;
    struct rp_node_status st = status_of(0);
    cr_assert(read_term_becomes(a, st.term, 5000), "leader read term %llu, status term %llu",
              (unsigned long long)rp_node_read_term(a), (unsigned long long)st.term);
    cr_assert_eq(rp_node_read_term(b), 0, "a follower has no read term");
    cr_assert_eq(apply_term_of(a, 3), st.term);

    cr_assert_eq(rp_node_transfer(a, 2, 10000), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 1);
    struct rp_node_status st2 = status_of(1);
    cr_assert_gt(st2.term, st.term);
    cr_assert(read_term_becomes(a, 0, 5000), "the old leader keeps read term %llu",
              (unsigned long long)rp_node_read_term(a));
    cr_assert(read_term_becomes(b, st2.term, 5000), "new leader read term %llu, term %llu",
              (unsigned long long)rp_node_read_term(b), (unsigned long long)st2.term);
    cr_assert_eq(apply_term_of(b, 4), st2.term, "an entry reports the term it was appended in");
}

struct barrier_arg {
    struct rp_node *n;
    pthread_barrier_t *start;
    int rv;
};

static void *barrier_thread(void *p)
{
    struct barrier_arg *a = p;
    pthread_barrier_wait(a->start);
    a->rv = rp_node_barrier(a->n, 10000);
    return NULL;
}

Test(raft_node, concurrent_barriers_share_raft_barriers, .fini = teardown, .timeout = 60)
{
    enum { N = 16 };
    rt_cluster_init(&C, 1, "barrier");
    start_cluster(1);
    struct rp_node *n = C.nodes[0].node;

    struct rp_node_status before = status_of(0);
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, N);
    pthread_t th[N];
    struct barrier_arg args[N];
    for (int i = 0; i < N; i++) {
        args[i] = (struct barrier_arg){.n = n, .start = &start, .rv = -100};
        pthread_create(&th[i], NULL, barrier_thread, &args[i]);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        cr_assert_eq(args[i].rv, 0, "barrier %d: %s", i, rp_strerror(args[i].rv));
    }
    pthread_barrier_destroy(&start);
    struct rp_node_status after = status_of(0);
    uint64_t entries = after.last_index - before.last_index;
    cr_log_info("%d concurrent barriers appended %llu entries", N, (unsigned long long)entries);
    cr_assert_geq(entries, 1);
    cr_assert_lt(entries, N, "%d concurrent callers appended %llu barrier entries", N,
                 (unsigned long long)entries);
}

Test(raft_node, writes_without_quorum_are_unknown_and_changes_busy, .fini = teardown, .timeout = 90)
{
    rt_cluster_init(&C, 2, "quorum");
    /* A long election timeout keeps the isolated leader in office for a while. */
    C.election_ms = 3000;
    C.heartbeat_ms = 100;
    start_cluster(2);
    struct rp_node *leader = C.nodes[0].node;
    cr_assert_eq(rt_apply_u64(leader, 1, 5000, NULL), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 1, 5000));

    rt_node_stop(&C, 1);
    /* The entry is appended but cannot commit: the caller learns "unknown",
     * never "failed". */
    cr_assert_eq(rt_apply_u64(leader, 2, 300, NULL), RP_EUNKNOWN, "%s", rp_errmsg());
    int rv = rp_node_add(leader, 9, "127.0.0.1:1", 300);
    cr_assert_eq(rv, RP_EUNKNOWN, "add without quorum: %s (%s)", rp_strerror(rv), rp_errmsg());
    rv = rp_node_add(leader, 10, "127.0.0.1:2", 300);
    cr_assert(rv == RP_EBUSY || rv == RP_ENOTLEADER, "second change: %s", rp_strerror(rv));
    rv = rp_node_barrier(leader, 300);
    cr_assert(rv == RP_ETIMEDOUT || rv == RP_ENOTLEADER, "barrier without quorum: %s",
              rp_strerror(rv));

    /* Once the peer is back the "unknown" write turns out committed. */
    cr_assert_eq(rt_node_start(&C, 1, false), 0, "%s", rp_errmsg());
    cr_assert_geq(rt_wait_leader(&C, 20000), 0);
    cr_assert(rt_wait_count(&C, 2, 20000), "the unknown write committed after all");
    uint64_t sum;
    rt_fsm_read(&C.nodes[1].fsm, NULL, &sum);
    cr_assert_eq(sum, 3);
}

static bool member_is_standby(void *arg)
{
    struct rp_node_status st;
    (void)arg;
    if (rp_node_status(C.nodes[0].node, &st) != 0)
        return false;
    const struct rp_member *m = member(&st, 5);
    return m != NULL && m->role == RP_MEMBER_STANDBY;
}

Test(raft_node, membership_errors_and_unreachable_member_stays_non_voting, .fini = teardown,
     .timeout = 60)
{
    rt_cluster_init(&C, 1, "members");
    start_cluster(1);
    struct rp_node *n = C.nodes[0].node;

    cr_assert_eq(rp_node_add(n, 1, "127.0.0.1:1", 2000), RP_EEXISTS);
    cr_assert_eq(rp_node_add(n, 2, C.nodes[0].addr, 2000), RP_EEXISTS);
    cr_assert_eq(rp_node_add(n, 0, "127.0.0.1:1", 2000), RP_EINVAL);
    cr_assert_eq(rp_node_add(n, 2, "no-port", 2000), RP_EINVAL);
    cr_assert_eq(rp_node_remove(n, 7, 2000), RP_ENOTFOUND);
    cr_assert_eq(rp_node_transfer(n, 0, 2000), RP_ENOTFOUND, "no other voter to transfer to");

    /* Nothing listens there: the member becomes a standby (no vote) but never a
     * voter, so it cannot cost the cluster its quorum. */
    char dead[64];
    snprintf(dead, sizeof dead, "127.0.0.1:%d", rt_free_port());
    cr_assert_eq(rp_node_add(n, 5, dead, 5000), 0, "%s", rp_errmsg());
    cr_assert(rt_wait(member_is_standby, NULL, 5000), "spare promoted to standby");
    struct rp_raft_transport_stats ts;
    uint64_t start = rt_now_ms();
    do {
        rp_node_transport_stats(n, &ts);
    } while (ts.connect_failed < 3 && rt_now_ms() - start < 10000);
    cr_assert_geq(ts.connect_failed, 3, "the leader keeps trying to reach the standby");
    struct rp_node_status st = status_of(0);
    const struct rp_member *m = member(&st, 5);
    cr_assert_not_null(m);
    cr_assert_eq(m->role, RP_MEMBER_STANDBY);
    cr_assert_eq(m->match_index, 0);
    cr_assert_eq(rt_apply_u64(n, 1, 5000, NULL), 0, "writes still commit: %s", rp_errmsg());

    int rv;
    do {
        rv = rp_node_remove(n, 5, 5000);
    } while (rv == RP_EBUSY);
    cr_assert_eq(rv, 0, "%s", rp_errmsg());
    st = status_of(0);
    cr_assert_null(member(&st, 5));
    cr_assert_eq(st.n_members, 1);
}

Test(raft_node, restarted_follower_catches_up_by_snapshot, .fini = teardown, .timeout = 120)
{
    rt_cluster_init(&C, 3, "snapshot");
    C.threshold = 16;
    C.trailing = 32;
    /* 1 MiB snapshots: the install goes through the TLS pump in many pieces. */
    for (unsigned i = 0; i < 3; i++)
        C.nodes[i].fsm.pad = 1 << 20;
    unsigned l = start_cluster(3);
    for (uint64_t i = 1; i <= 20; i++)
        cr_assert_eq(rt_apply_u64(C.nodes[l].node, i, 5000, NULL), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 20, 10000));

    unsigned f = (l + 1) % 3;
    rt_node_stop(&C, f);
    struct rp_node_status before = status_of(l);

    for (uint64_t i = 21; i <= 220; i++)
        cr_assert_eq(rt_apply_u64(C.nodes[l].node, i, 5000, NULL), 0, "%s", rp_errmsg());
    struct rp_node_status after = status_of(l);
    cr_assert_gt(after.snapshot_index, before.last_index + 32,
                 "the leader's log no longer holds what the follower lacks "
                 "(snapshot at %llu, follower stopped at %llu)",
                 (unsigned long long)after.snapshot_index, (unsigned long long)before.last_index);

    cr_assert_eq(rt_node_start(&C, f, false), 0, "%s", rp_errmsg());
    cr_assert(rt_wait_count(&C, 220, 30000), "all replicas reach the same state");
    uint64_t sum, restored;
    rt_fsm_read(&C.nodes[f].fsm, NULL, &sum);
    cr_assert_eq(sum, 220ull * 221 / 2);
    pthread_mutex_lock(&C.nodes[f].fsm.mu);
    restored = C.nodes[f].fsm.last_restored_count;
    pthread_mutex_unlock(&C.nodes[f].fsm.mu);
    cr_assert_gt(restored, 20, "the follower was sent a snapshot (restored count %llu)",
                 (unsigned long long)restored);
}

Test(raft_node, start_fails_cleanly_on_bad_config_or_busy_port, .fini = teardown, .timeout = 60)
{
    rt_cluster_init(&C, 1, "badstart");
    struct rt_node *nd = &C.nodes[0];
    struct rp_node *n = NULL;
    struct rp_node_config cfg = {
        .id = 1,
        .address = nd->addr,
        .dir = "/nonexistent/raft",
        .election_timeout_ms = 600,
        .heartbeat_timeout_ms = 60,
        .snapshot_threshold = 64,
        .snapshot_trailing = 128,
        .server_ctx = nd->server_ctx,
        .client_ctx = nd->client_ctx,
        .bootstrap = true,
        .make_fsm = rt_make_fsm,
        .make_fsm_arg = &nd->fsm,
    };
    cr_assert_eq(rp_node_start(&n, &cfg), RP_EINVAL);
    cr_assert_null(n);
    cr_assert(strstr(rp_errmsg(), "/nonexistent/raft") != NULL, "%s", rp_errmsg());
    cfg.dir = nd->dir;
    cfg.snapshot_trailing = 10;
    cr_assert_eq(rp_node_start(&n, &cfg), RP_EINVAL, "trailing < threshold");
    cfg.snapshot_trailing = 128;
    cfg.id = 0;
    cr_assert_eq(rp_node_start(&n, &cfg), RP_EINVAL, "id 0");
    cfg.id = 1;

    /* The peer port is taken: start fails with a message, leaving nothing behind. */
    int busy = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(strrchr(nd->addr, ':') + 1))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert_eq(bind(busy, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(busy, 1), 0);
    int rv = rp_node_start(&n, &cfg);
    cr_assert_neq(rv, 0, "start on a busy port must fail");
    cr_assert_null(n);
    cr_log_info("busy port: %s: %s", rp_strerror(rv), rp_errmsg());
    close(busy);

    /* And the same dir starts fine afterwards. */
    cr_assert_eq(rp_node_start(&nd->node, &cfg), 0, "%s", rp_errmsg());
    cr_assert_eq(rt_wait_leader(&C, 10000), 0);
}
